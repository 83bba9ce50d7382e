-- Revocation is pushed, not polled: the revocation log and offline access reports.
--
-- Every time a task ends with tokens not yet revoked (complete, cancel, expiry, admin revoke,
-- revoke-workload: all go through tb_end_task), one row goes into `revocations` (even when those
-- tokens have just expired: a verifier may still accept them within its clock leeway). Its
-- `seq` is assigned at COMMIT, under the lock of the one-row `revocation_log_head`, by a deferred
-- constraint trigger: so seq order is commit order on every replica, and a reader that has seen
-- seq N has seen every revocation that committed before it (no gaps to wait for). The same
-- trigger sends NOTIFY tb_revocations (delivered at commit) so every replica's listener reads the
-- log at once; the table, not the notification, is the truth, so a missed notification is caught
-- by the next read after a cursor. The head lock is the last lock a transaction takes (at
-- commit), so it cannot be part of a deadlock.
--
-- Offline verifications reported by resource servers (ReportTokenUse) become token.used events
-- on the task's chain; `token_use_reports` remembers each reporter's report ids so a retried
-- report is recorded once. Both tables are pruned with the token rows.
--
-- Statements end with ';' at the end of a line; function bodies are dollar-quoted ($$ … $$).

-- Names this database in the cursors it issues, so a cursor from another database is not taken for one of ours.
CREATE TABLE broker_instance (
  singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  instance_id text    NOT NULL
);
INSERT INTO broker_instance (instance_id) VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));

CREATE TABLE revocation_log_head (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  last_seq  bigint  NOT NULL
);
INSERT INTO revocation_log_head (last_seq) VALUES (0);

CREATE TABLE revocations (
  revocation_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- Commit order; NULL only inside the transaction that inserts the row.
  seq              bigint,
  task_id          text        NOT NULL,
  audience         text        NOT NULL,
  task_state       text        NOT NULL,
  reason           text        NOT NULL,
  revoked_at       timestamptz NOT NULL,
  revoked_tokens   integer     NOT NULL,
  tokens_expire_by timestamptz NOT NULL
);
CREATE UNIQUE INDEX revocations_by_seq ON revocations (seq);
CREATE INDEX revocations_by_audience ON revocations (audience, seq);
CREATE INDEX revocations_by_expiry ON revocations (tokens_expire_by);

CREATE FUNCTION tb_seal_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_seq bigint;
BEGIN
  UPDATE revocation_log_head SET last_seq = last_seq + 1 RETURNING last_seq INTO v_seq;
  UPDATE revocations SET seq = v_seq WHERE revocation_id = NEW.revocation_id;
  PERFORM pg_notify('tb_revocations', v_seq::text);
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER revocations_sealed AFTER INSERT ON revocations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tb_seal_revocation();

-- As in 0003, plus the revocation log row when it revoked tokens.
CREATE OR REPLACE FUNCTION tb_end_task(p_task tasks, p_state text, p_by text, p_reason text, p_event text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_row tasks;
  v_revoked integer;
  v_until timestamptz;
BEGIN
  UPDATE tasks SET state = p_state, ended_at = p_at, ended_by = p_by, end_reason = p_reason
    WHERE task_id = p_task.task_id RETURNING * INTO v_row;
  WITH r AS (
    UPDATE tokens SET revoked_at = p_at, revoke_reason = 'task ' || lower(p_state)
      WHERE task_id = p_task.task_id AND revoked_at IS NULL
      RETURNING expires_at
  )
  SELECT count(*), max(expires_at) INTO v_revoked, v_until FROM r;
  IF v_revoked > 0 THEN
    INSERT INTO revocations (task_id, audience, task_state, reason, revoked_at, revoked_tokens, tokens_expire_by)
      VALUES (p_task.task_id, p_task.audience, p_state, coalesce(p_reason, ''), p_at, v_revoked, v_until);
  END IF;
  PERFORM tb_append_event(p_task.task_id, p_event, p_actor, p_thumb, p_request, p_at,
    jsonb_build_object('from_state', p_task.state, 'to_state', p_state, 'reason', p_reason, 'revoked_tokens', v_revoked) || coalesce(p_details, '{}'::jsonb));
  RETURN jsonb_build_object('task', to_jsonb(v_row), 'revoked', v_revoked);
END
$$;

CREATE TABLE token_use_reports (
  reporter    text        NOT NULL,
  report_id   text        NOT NULL,
  task_id     text        NOT NULL,
  received_at timestamptz NOT NULL,
  PRIMARY KEY (reporter, report_id)
);
CREATE INDEX token_use_reports_by_time ON token_use_reports (received_at);

-- ReportTokenUse, for one task. p: task_id, uses (array of report_id, token_id, outcome,
-- operation, verified_at, presenter). Only the task's audience may report on it; otherwise (or
-- when there is no such task) every use is rejected alike. A report_id this reporter sent before
-- is a duplicate: not recorded again.
CREATE FUNCTION tb_op_used(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_audience text;
  v_use jsonb;
  v_recorded integer := 0;
  v_duplicates integer := 0;
BEGIN
  PERFORM 1 FROM audit_chains WHERE chain_id = p->>'task_id' FOR UPDATE;
  SELECT audience INTO v_audience FROM tasks WHERE task_id = p->>'task_id';
  IF v_audience IS NULL OR v_audience <> p->>'actor' THEN
    RETURN jsonb_build_object('recorded', 0, 'duplicates', 0, 'rejected', jsonb_array_length(p->'uses'));
  END IF;
  FOR v_use IN SELECT value FROM jsonb_array_elements(p->'uses') LOOP
    INSERT INTO token_use_reports (reporter, report_id, task_id, received_at)
      VALUES (p->>'actor', v_use->>'report_id', p->>'task_id', (p->>'at')::timestamptz)
      ON CONFLICT (reporter, report_id) DO NOTHING;
    IF FOUND THEN
      PERFORM tb_append_event(p->>'task_id', 'token.used', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz,
        jsonb_build_object('token_id', v_use->'token_id', 'outcome', v_use->'outcome', 'operation', v_use->'operation',
          'verified_at', v_use->'verified_at', 'report_id', v_use->'report_id', 'presenter_cert_thumbprint', v_use->'presenter', 'verified_offline', true));
      v_recorded := v_recorded + 1;
    ELSE
      v_duplicates := v_duplicates + 1;
    END IF;
  END LOOP;
  RETURN jsonb_build_object('recorded', v_recorded, 'duplicates', v_duplicates, 'rejected', 0);
END
$$;

CREATE OR REPLACE FUNCTION tb_apply(p_ops jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_op jsonb;
  v_out jsonb := '[]';
BEGIN
  FOR v_op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
    v_out := v_out || jsonb_build_array(CASE v_op->>'op'
      WHEN 'create' THEN tb_op_create(v_op)
      WHEN 'get' THEN tb_op_get(v_op)
      WHEN 'issue' THEN tb_op_issue(v_op)
      WHEN 'finish' THEN tb_op_finish(v_op)
      WHEN 'verify' THEN tb_op_verify(v_op)
      WHEN 'event' THEN tb_op_event(v_op)
      WHEN 'used' THEN tb_op_used(v_op)
    END);
    IF v_out->-1 IS NULL OR v_out->-1 = 'null'::jsonb THEN
      RAISE EXCEPTION 'tb_apply: unknown operation %', v_op->>'op';
    END IF;
  END LOOP;
  RETURN v_out;
END
$$;
