-- Gateways (e.g. MCP servers) that create and serve tasks for the party that asked them, and the
-- results of a task's work, kept for a while after it ends.
--
-- Gateway: CreateTask with on_behalf_of makes the task the requester's (owner_spiffe_id: the
-- requester's SPIFFE ID, or the gateway's own with the requester as principal) and records the
-- caller as its gateway. The gateway may then do what an owner may on the task (tb_lock_owned
-- finds the row for it too); which requester it answers for is checked by the broker before the
-- operation, against facts that never change.
--
-- Results: CompleteTask may store the work's result (task_results, one row per task, written in
-- the same statement as the completion and its event). GetTask with operation 'result' hands it
-- out while it is retained (retain_until, cut shorter by the policy in force at the read), each
-- read an event of its own (task.result_read); the sweeper deletes results past retain_until.
--
-- Statements end with ';' at the end of a line; function bodies are dollar-quoted ($$ … $$).

ALTER TABLE tasks ADD COLUMN gateway text;
-- NULL: no result stored; else whether the stored result is a failure.
ALTER TABLE tasks ADD COLUMN result_failed boolean;
-- ListOwnTasks of a gateway for a requester, newest first.
CREATE INDEX tasks_by_gateway ON tasks (gateway, owner_spiffe_id, created_at DESC, task_id DESC) WHERE gateway IS NOT NULL;

CREATE TABLE task_results (
  task_id text PRIMARY KEY REFERENCES tasks (task_id),
  result text NOT NULL,
  failed boolean NOT NULL,
  stored_at timestamptz NOT NULL,
  retain_until timestamptz NOT NULL
);
CREATE INDEX task_results_by_retention ON task_results (retain_until);

-- As in 0005, and the task's gateway finds it as its owner does.
CREATE OR REPLACE FUNCTION tb_lock_owned(p jsonb, OUT p_row tasks, OUT p_ended jsonb) LANGUAGE plpgsql AS $$
DECLARE
  v_root text;
  v_end jsonb;
BEGIN
  p_ended := '[]';
  IF p ? 'root' THEN
    v_root := nullif(p->>'root', '');
  ELSE
    SELECT root_task_id INTO v_root FROM tasks WHERE task_id = p->>'task_id';
  END IF;
  IF v_root IS NOT NULL THEN
    PERFORM 1 FROM tasks WHERE task_id = v_root FOR UPDATE;
  END IF;
  SELECT * INTO p_row FROM tasks WHERE task_id = p->>'task_id'
    AND (owner_spiffe_id = p->>'actor' OR gateway = p->>'actor'
      OR (coalesce((p->>'delegator_read')::boolean, false) AND delegators ? (p->>'actor')))
    FOR UPDATE;
  IF p_row.task_id IS NULL OR p_row.state NOT IN ('PENDING_APPROVAL', 'ACTIVE') OR p_row.expires_at > (p->>'at')::timestamptz THEN
    RETURN;
  END IF;
  v_end := tb_end_task(p_row, 'EXPIRED', p->>'issuer', 'task ttl elapsed', 'task.expired', p->>'issuer', NULL, p->>'req', (p->>'at')::timestamptz, NULL);
  p_ended := jsonb_build_array(jsonb_build_object('state', 'EXPIRED', 'revoked', v_end->'own_revoked')) || tb_ended_descendants(v_end);
  SELECT * INTO p_row FROM tasks WHERE task_id = p_row.task_id;
END
$$;

-- As in 0005, plus the gateway: a task with task.gateway is owned by task.owner_spiffe_id (the
-- requester), with the requester's certificate thumbprint; the actor (the gateway) is who acted.
-- A gateway's idempotency keys come prefixed with its SPIFFE ID (p.idem), so they never collide
-- with the owner's own; the replay event names the key as given (details.idempotency_key).
CREATE OR REPLACE FUNCTION tb_op_create(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  t jsonb := p->'task';
  v_gateway text := nullif(t->>'gateway', '');
  v_owner text := CASE WHEN v_gateway IS NULL THEN p->>'actor' ELSE t->>'owner_spiffe_id' END;
  v_row tasks;
BEGIN
  INSERT INTO tasks (task_id, owner_spiffe_id, owner_trust_domain, spec, task_hash, action, audience, scopes, ttl_seconds, state, policy_rule, idempotency_key, owner_cert_thumbprint, created_at, expires_at, principal, principal_claims, gateway)
    VALUES (t->>'task_id', v_owner, t->>'owner_trust_domain', t->'spec', t->>'task_hash', t->>'action', t->>'audience', t->'scopes', (t->>'ttl_seconds')::integer, t->>'state', t->>'policy_rule', p->>'idem',
      CASE WHEN v_gateway IS NULL THEN p->>'thumb' ELSE t->>'owner_cert_thumbprint' END, (p->>'at')::timestamptz, (t->>'expires_at')::timestamptz,
      nullif(t->'principal', 'null'::jsonb), nullif(t->'principal_claims', 'null'::jsonb), v_gateway)
    ON CONFLICT (owner_spiffe_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO v_row;
  IF FOUND THEN
    PERFORM tb_append_event(v_row.task_id, 'task.created', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
    RETURN jsonb_build_object('created', true);
  END IF;
  SELECT * INTO v_row FROM tasks WHERE owner_spiffe_id = v_owner AND idempotency_key = p->>'idem' FOR UPDATE;
  IF v_row.task_hash <> t->>'task_hash' OR v_row.gateway IS DISTINCT FROM v_gateway THEN
    RETURN tb_refuse(p, v_row.task_id, 'already-exists', 'idempotency_key was already used for a task with a different spec',
      jsonb_build_object('operation', 'CreateTask', 'reason', 'idempotency key reused with a different spec', 'task_hash', t->>'task_hash'), '[]');
  END IF;
  PERFORM tb_append_event(v_row.task_id, 'task.create_replayed', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz,
    jsonb_strip_nulls(jsonb_build_object('idempotency_key', p->'details'->>'idempotency_key', 'requester', p->'details'->'requester', 'gateway', v_gateway)));
  RETURN jsonb_build_object('replayed', true, 'task', to_jsonb(v_row));
END
$$;

-- GetTask. As in 0005, plus p.operation: 'result' is a result read (task.result_read), whose
-- answer carries the stored result while it is retained: until retain_until, and no longer than
-- p.retention_s (the policy in force now) after the task ended. p.details adds to the event.
CREATE OR REPLACE FUNCTION tb_op_get(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_by_delegator boolean;
  v_result_read boolean := coalesce(p->>'operation', '') = 'result';
  v_result task_results;
  v_until timestamptz;
  v_out jsonb;
  v_event jsonb;
BEGIN
  SELECT * INTO v_owned FROM tb_lock_owned(p);
  v_row := v_owned.p_row;
  v_ended := v_owned.p_ended;
  IF v_row.task_id IS NULL THEN
    RETURN jsonb_build_object('refused', 'not-found', 'ended', v_ended);
  END IF;
  IF p ? 'deny' THEN
    RETURN tb_refuse(p, v_row.task_id, p->'deny'->>'kind', p->'deny'->>'message', p->'deny'->'details', v_ended);
  END IF;
  v_by_delegator := v_row.owner_spiffe_id <> p->>'actor' AND v_row.gateway IS DISTINCT FROM p->>'actor';
  v_out := jsonb_build_object('task', to_jsonb(v_row), 'ended', v_ended);
  v_event := jsonb_build_object('state', v_row.state, 'policy_rule', p->>'rule');
  IF v_result_read THEN
    SELECT * INTO v_result FROM task_results WHERE task_id = v_row.task_id;
    IF v_result.task_id IS NOT NULL THEN
      v_until := v_result.retain_until;
      IF p ? 'retention_s' AND v_row.ended_at IS NOT NULL THEN
        v_until := least(v_until, v_row.ended_at + make_interval(secs => (p->>'retention_s')::integer));
      END IF;
      IF v_until > (p->>'at')::timestamptz THEN
        v_out := v_out || jsonb_build_object('result', jsonb_build_object('json', v_result.result, 'failed', v_result.failed, 'stored_at', v_result.stored_at, 'retain_until', v_until));
        v_event := v_event || jsonb_build_object('result', 'handed out', 'result_failed', v_result.failed, 'retained_until', v_until);
      ELSE
        v_out := v_out || jsonb_build_object('result_expired', true);
        v_event := v_event || jsonb_build_object('result', 'retention ended', 'retained_until', v_until);
      END IF;
    ELSIF v_row.result_failed IS NOT NULL THEN
      v_out := v_out || jsonb_build_object('result_expired', true);
      v_event := v_event || jsonb_build_object('result', 'retention ended');
    ELSE
      v_event := v_event || jsonb_build_object('result', CASE WHEN v_row.state IN ('PENDING_APPROVAL', 'ACTIVE') THEN 'not yet' ELSE 'none stored' END);
    END IF;
  END IF;
  PERFORM tb_append_event(v_row.task_id,
    CASE WHEN v_result_read THEN 'task.result_read' WHEN v_by_delegator THEN 'task.read_by_delegator' ELSE 'task.polled' END,
    p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, v_event || coalesce(p->'details', '{}'::jsonb));
  RETURN v_out;
END
$$;

-- CompleteTask and CancelTask. As in 0005, plus p.details on the ending event, and for a
-- completion p.result ({json, failed}) stored for p.retention_s seconds from now.
CREATE OR REPLACE FUNCTION tb_op_finish(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_cancel boolean := (p->>'cancel')::boolean;
  v_op text := CASE WHEN v_cancel THEN 'CancelTask' ELSE 'CompleteTask' END;
  v_state text := CASE WHEN v_cancel THEN 'CANCELLED' ELSE 'COMPLETED' END;
  v_end jsonb;
  v_task jsonb;
  v_details jsonb := nullif(coalesce(p->'details', '{}'::jsonb), '{}'::jsonb);
  v_store boolean := NOT v_cancel AND p ? 'result';
BEGIN
  SELECT * INTO v_owned FROM tb_lock_owned(p);
  v_row := v_owned.p_row;
  v_ended := v_owned.p_ended;
  IF v_row.task_id IS NULL THEN
    RETURN jsonb_build_object('refused', 'not-found', 'ended', v_ended);
  END IF;
  IF NOT (v_row.state = 'ACTIVE' OR (v_cancel AND v_row.state = 'PENDING_APPROVAL')) THEN
    RETURN tb_refuse(p, v_row.task_id, 'failed-precondition',
      'task is ' || v_row.state || '; only a ' || CASE WHEN v_cancel THEN 'PENDING_APPROVAL or ACTIVE task can be cancelled' ELSE 'ACTIVE task can be completed' END,
      jsonb_build_object('operation', v_op, 'reason', 'task is ' || v_row.state, 'state', v_row.state) || coalesce(v_details, '{}'::jsonb), v_ended);
  END IF;
  IF v_store THEN
    v_details := coalesce(v_details, '{}'::jsonb) || jsonb_build_object('result_stored', true, 'result_failed', (p->'result'->>'failed')::boolean,
      'result_bytes', octet_length(p->'result'->>'json'), 'result_retained_until', (p->>'at')::timestamptz + make_interval(secs => (p->>'retention_s')::integer));
  END IF;
  v_end := tb_end_task(v_row, v_state, p->>'actor', p->>'reason', CASE WHEN v_cancel THEN 'task.cancelled' ELSE 'task.completed' END,
    p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, v_details);
  v_task := v_end->'task';
  IF v_store THEN
    INSERT INTO task_results (task_id, result, failed, stored_at, retain_until)
      VALUES (v_row.task_id, p->'result'->>'json', (p->'result'->>'failed')::boolean, (p->>'at')::timestamptz, (p->>'at')::timestamptz + make_interval(secs => (p->>'retention_s')::integer));
    UPDATE tasks SET result_failed = (p->'result'->>'failed')::boolean WHERE task_id = v_row.task_id;
    v_task := v_task || jsonb_build_object('result_failed', (p->'result'->>'failed')::boolean);
  END IF;
  RETURN jsonb_build_object('task', v_task, 'revoked', v_end->'revoked', 'descendants', v_end->'descendants',
    'ended', v_ended || jsonb_build_array(jsonb_build_object('state', v_state, 'revoked', v_end->'own_revoked')) || tb_ended_descendants(v_end));
END
$$;
