-- One round trip per call, many calls per commit.
--
-- Each RPC that changes state (CreateTask, GetTask, IssueToken, VerifyToken, CompleteTask,
-- CancelTask) is one operation handed to tb_apply(ops jsonb): a single statement that, for each
-- operation in turn, locks, checks, writes and appends its audit event. The broker batches the
-- operations of concurrent calls into one tb_apply (group commit: one commit, one WAL flush);
-- each operation still gets its own result. Expected refusals (not found, wrong state, policy)
-- are results, not errors; an unexpected error fails the statement, nothing of the batch is
-- committed, and the broker runs the operations again one by one.
--
-- Audit hash chains, format 2: the database computes each event's hash as
--   base64url(SHA-256(UTF-8 of tb_event_document(...))),
-- a JSON array (jsonb text form) of the format tag, chain, sequence number, task, event type,
-- actor, actor's certificate thumbprint, request ID, time (UTC, microseconds), details and the
-- previous hash. Events written before this migration keep format 1 (RFC 8785 over the same
-- fields, computed by the broker); hash_version says which format an event uses.
--
-- Statements end with ';' at the end of a line; function bodies are dollar-quoted ($$ … $$).

ALTER TABLE audit_events ADD COLUMN hash_version smallint NOT NULL DEFAULT 1;

CREATE FUNCTION tb_b64url(b bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT rtrim(translate(encode(b, 'base64'), E'+/\n', '-_'), '=')
$$;

CREATE FUNCTION tb_event_document(p_chain text, p_seq integer, p_task text, p_type text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb, p_prev text)
RETURNS text LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_array('task-broker.audit.v2', p_chain, p_seq, p_task, p_type, p_actor, p_thumb, p_request,
    to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), p_details, p_prev)::text
$$;

-- Appends one event to its chain (the task's, or the actor's when it concerns no task). Locks the
-- chain head; a caller that also locks a task row locks it first.
CREATE FUNCTION tb_append_event(p_task text, p_type text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_chain text := coalesce(p_task, 'actor:' || p_actor);
  v_seq integer;
  v_prev text;
  v_hash text;
  v_id bigint;
BEGIN
  SELECT last_seq, last_hash INTO v_seq, v_prev FROM audit_chains WHERE chain_id = v_chain FOR UPDATE;
  IF NOT FOUND THEN
    -- A new chain (a new task, an actor's first event): its head is written with its first event.
    v_hash := tb_b64url(sha256(convert_to(tb_event_document(v_chain, 1, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, ''), 'UTF8')));
    INSERT INTO audit_chains (chain_id, last_seq, last_hash) VALUES (v_chain, 1, v_hash) ON CONFLICT (chain_id) DO NOTHING;
    IF FOUND THEN
      INSERT INTO audit_events (chain_id, seq, task_id, event_type, actor_spiffe_id, actor_cert_thumbprint, request_id, occurred_at, details, prev_hash, hash, hash_version)
        VALUES (v_chain, 1, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, '', v_hash, 2)
        RETURNING event_id INTO v_id;
      RETURN v_id;
    END IF;
    -- Created concurrently by another transaction (now committed): append after its events.
    SELECT last_seq, last_hash INTO v_seq, v_prev FROM audit_chains WHERE chain_id = v_chain FOR UPDATE;
  END IF;
  v_seq := v_seq + 1;
  v_hash := tb_b64url(sha256(convert_to(tb_event_document(v_chain, v_seq, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, v_prev), 'UTF8')));
  INSERT INTO audit_events (chain_id, seq, task_id, event_type, actor_spiffe_id, actor_cert_thumbprint, request_id, occurred_at, details, prev_hash, hash, hash_version)
    VALUES (v_chain, v_seq, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, v_prev, v_hash, 2)
    RETURNING event_id INTO v_id;
  UPDATE audit_chains SET last_seq = v_seq, last_hash = v_hash WHERE chain_id = v_chain;
  RETURN v_id;
END
$$;

-- Moves a live task to a final state, revokes its tokens and records the event, all in the
-- caller's transaction. The task row must be locked by the caller.
CREATE FUNCTION tb_end_task(p_task tasks, p_state text, p_by text, p_reason text, p_event text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_row tasks;
  v_revoked integer;
BEGIN
  UPDATE tasks SET state = p_state, ended_at = p_at, ended_by = p_by, end_reason = p_reason
    WHERE task_id = p_task.task_id RETURNING * INTO v_row;
  UPDATE tokens SET revoked_at = p_at, revoke_reason = 'task ' || lower(p_state)
    WHERE task_id = p_task.task_id AND revoked_at IS NULL;
  GET DIAGNOSTICS v_revoked = ROW_COUNT;
  PERFORM tb_append_event(p_task.task_id, p_event, p_actor, p_thumb, p_request, p_at,
    jsonb_build_object('from_state', p_task.state, 'to_state', p_state, 'reason', p_reason, 'revoked_tokens', v_revoked) || coalesce(p_details, '{}'::jsonb));
  RETURN jsonb_build_object('task', to_jsonb(v_row), 'revoked', v_revoked);
END
$$;

-- The owner's task, locked: p_row has all fields NULL when the task does not exist or belongs to
-- someone else (the two look the same from outside). A live task past its expiry becomes EXPIRED
-- first, whoever touches it (or the sweeper); p_ended lists the endings caused here ('[]' or one),
-- for the broker's metrics. p: task_id, actor, req, at, issuer.
CREATE FUNCTION tb_lock_owned(p jsonb, OUT p_row tasks, OUT p_ended jsonb) LANGUAGE plpgsql AS $$
DECLARE
  v_end jsonb;
BEGIN
  p_ended := '[]';
  SELECT * INTO p_row FROM tasks WHERE task_id = p->>'task_id' AND owner_spiffe_id = p->>'actor' FOR UPDATE;
  IF p_row.task_id IS NULL OR p_row.state NOT IN ('PENDING_APPROVAL', 'ACTIVE') OR p_row.expires_at > (p->>'at')::timestamptz THEN
    RETURN;
  END IF;
  v_end := tb_end_task(p_row, 'EXPIRED', p->>'issuer', 'task ttl elapsed', 'task.expired', p->>'issuer', NULL, p->>'req', (p->>'at')::timestamptz, NULL);
  p_ended := jsonb_build_array(jsonb_build_object('state', 'EXPIRED', 'revoked', v_end->'revoked'));
  SELECT * INTO p_row FROM tasks WHERE task_id = p_row.task_id;
END
$$;

-- A refusal on record: the access.denied event, and the result the caller turns into an error.
CREATE FUNCTION tb_refuse(p jsonb, p_task text, p_kind text, p_message text, p_details jsonb, p_ended jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  PERFORM tb_append_event(p_task, 'access.denied', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p_details);
  RETURN jsonb_build_object('refused', p_kind, 'message', p_message, 'ended', p_ended);
END
$$;

-- CreateTask. p: task (the row's values), details (of task.created), idem (idempotency key or null).
CREATE FUNCTION tb_op_create(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  t jsonb := p->'task';
  v_row tasks;
BEGIN
  INSERT INTO tasks (task_id, owner_spiffe_id, owner_trust_domain, spec, task_hash, action, audience, scopes, ttl_seconds, state, policy_rule, idempotency_key, owner_cert_thumbprint, created_at, expires_at)
    VALUES (t->>'task_id', p->>'actor', t->>'owner_trust_domain', t->'spec', t->>'task_hash', t->>'action', t->>'audience', t->'scopes', (t->>'ttl_seconds')::integer, t->>'state', t->>'policy_rule', p->>'idem', p->>'thumb', (p->>'at')::timestamptz, (t->>'expires_at')::timestamptz)
    ON CONFLICT (owner_spiffe_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO v_row;
  IF FOUND THEN
    PERFORM tb_append_event(v_row.task_id, 'task.created', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
    RETURN jsonb_build_object('created', true);
  END IF;
  -- The same owner used this idempotency key before: replay, or refuse a different spec.
  SELECT * INTO v_row FROM tasks WHERE owner_spiffe_id = p->>'actor' AND idempotency_key = p->>'idem' FOR UPDATE;
  IF v_row.task_hash <> t->>'task_hash' THEN
    RETURN tb_refuse(p, v_row.task_id, 'already-exists', 'idempotency_key was already used for a task with a different spec',
      jsonb_build_object('operation', 'CreateTask', 'reason', 'idempotency key reused with a different spec', 'task_hash', t->>'task_hash'), '[]');
  END IF;
  PERFORM tb_append_event(v_row.task_id, 'task.create_replayed', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, jsonb_build_object('idempotency_key', p->>'idem'));
  RETURN jsonb_build_object('replayed', true, 'task', to_jsonb(v_row));
END
$$;

-- GetTask. p: task_id, deny (a policy refusal decided by the broker: kind, message, details) or rule.
CREATE FUNCTION tb_op_get(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
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
  PERFORM tb_append_event(v_row.task_id, 'task.polled', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz,
    jsonb_build_object('state', v_row.state, 'policy_rule', p->>'rule'));
  RETURN jsonb_build_object('task', to_jsonb(v_row), 'ended', v_ended);
END
$$;

-- IssueToken. p: task_id, deny (scopes, policy or lifetime refusal decided by the broker),
-- approval (the rule requires an approval on record), token (the row's values), details.
CREATE FUNCTION tb_op_issue(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  k jsonb := p->'token';
BEGIN
  SELECT * INTO v_owned FROM tb_lock_owned(p);
  v_row := v_owned.p_row;
  v_ended := v_owned.p_ended;
  IF v_row.task_id IS NULL THEN
    RETURN jsonb_build_object('refused', 'not-found', 'ended', v_ended);
  END IF;
  IF v_row.state <> 'ACTIVE' THEN
    RETURN tb_refuse(p, v_row.task_id, 'failed-precondition', 'task is ' || v_row.state || ', not ACTIVE: no token can be issued',
      jsonb_build_object('operation', 'IssueToken', 'reason', 'task is ' || v_row.state || ', not ACTIVE: no token can be issued', 'state', v_row.state), v_ended);
  END IF;
  IF p ? 'deny' THEN
    RETURN tb_refuse(p, v_row.task_id, p->'deny'->>'kind', p->'deny'->>'message', p->'deny'->'details', v_ended);
  END IF;
  IF (p->>'approval')::boolean AND v_row.approved_by IS NULL THEN
    RETURN tb_refuse(p, v_row.task_id, 'permission-denied', 'denied by policy: ' || (p->'approval_denial'->>'reason'),
      jsonb_build_object('operation', 'IssueToken', 'reason', 'policy: ' || (p->'approval_denial'->>'reason'), 'policy_digest', p->'approval_denial'->>'digest'), v_ended);
  END IF;
  INSERT INTO tokens (jti, task_id, kid, subject, audience, scopes, cnf_thumbprint, issued_at, expires_at)
    VALUES (k->>'jti', v_row.task_id, k->>'kid', v_row.owner_spiffe_id, v_row.audience, k->'scopes', p->>'thumb', (k->>'issued_at')::timestamptz, (k->>'expires_at')::timestamptz);
  PERFORM tb_append_event(v_row.task_id, 'token.issued', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
  RETURN jsonb_build_object('issued', true, 'ended', v_ended);
END
$$;

-- CompleteTask and CancelTask. p: task_id, cancel (boolean), reason.
CREATE FUNCTION tb_op_finish(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_cancel boolean := (p->>'cancel')::boolean;
  v_op text := CASE WHEN v_cancel THEN 'CancelTask' ELSE 'CompleteTask' END;
  v_state text := CASE WHEN v_cancel THEN 'CANCELLED' ELSE 'COMPLETED' END;
  v_end jsonb;
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
      jsonb_build_object('operation', v_op, 'reason', 'task is ' || v_row.state, 'state', v_row.state), v_ended);
  END IF;
  v_end := tb_end_task(v_row, v_state, p->>'actor', p->>'reason', CASE WHEN v_cancel THEN 'task.cancelled' ELSE 'task.completed' END,
    p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, NULL);
  RETURN jsonb_build_object('task', v_end->'task', 'revoked', v_end->'revoked',
    'ended', v_ended || jsonb_build_array(jsonb_build_object('state', v_state, 'revoked', v_end->'revoked')));
END
$$;

-- VerifyToken, for a token whose signature verified (expired or not). p: task_id, jti, expired
-- (detail, or null), aud, sub, task_hash, cnf, expected_hash, presenter, bearer (binding check
-- skipped on the caller's request). The task's chain head is locked first: every change to the
-- task appends to that chain in the transaction that makes it, so the task and token rows read
-- after the lock are never between the steps of such a change.
CREATE FUNCTION tb_op_verify(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_at timestamptz := (p->>'at')::timestamptz;
  v_task tasks;
  v_token record;
  v_reason text;
  v_detail text;
  v_checked boolean := p ? 'presenter';
  v_bearer boolean := NOT (p ? 'presenter') AND coalesce((p->>'bearer')::boolean, false);
  v_chain_task text;
  v_details jsonb;
BEGIN
  PERFORM 1 FROM audit_chains WHERE chain_id = p->>'task_id' FOR UPDATE;
  IF FOUND THEN
    SELECT * INTO v_task FROM tasks WHERE task_id = p->>'task_id';
  END IF;
  v_chain_task := v_task.task_id;
  IF p->>'expired' IS NOT NULL THEN
    v_reason := 'expired'; v_detail := p->>'expired';
  ELSIF p->>'aud' <> p->>'actor' THEN
    v_reason := 'audience-mismatch'; v_detail := 'the token is for ' || (p->>'aud') || ', not for the caller ' || (p->>'actor');
  ELSIF v_task.task_id IS NULL THEN
    v_reason := 'revoked'; v_detail := 'the token names a task that is not on record';
  ELSE
    SELECT revoked_at, revoke_reason, task_id INTO v_token FROM tokens WHERE jti = p->>'jti';
    IF NOT FOUND OR v_token.task_id <> v_task.task_id THEN
      v_reason := 'revoked'; v_detail := 'the token is not on record';
    ELSIF v_token.revoked_at IS NOT NULL THEN
      v_reason := 'revoked'; v_detail := 'the token was revoked (' || coalesce(v_token.revoke_reason, 'no reason recorded') || ')';
    ELSIF v_task.state <> 'ACTIVE' OR v_task.expires_at <= v_at THEN
      v_reason := 'task-not-active'; v_detail := 'the task is ' || CASE WHEN v_task.state = 'ACTIVE' THEN 'past its expiry' ELSE v_task.state END;
    ELSIF p->>'task_hash' <> v_task.task_hash OR p->>'sub' <> v_task.owner_spiffe_id THEN
      v_reason := 'task-hash-mismatch'; v_detail := 'the token does not match its task on record';
    ELSIF p ? 'expected_hash' AND p->>'expected_hash' <> p->>'task_hash' THEN
      v_reason := 'task-hash-mismatch'; v_detail := 'the task hash differs from the expected one';
    ELSIF v_checked AND p->>'presenter' <> p->>'cnf' THEN
      v_reason := 'binding-mismatch'; v_detail := 'the presenter''s certificate is not the one the token is bound to (cnf x5t#S256)';
    ELSIF NOT v_checked AND NOT v_bearer THEN
      v_reason := 'presenter-required';
      v_detail := 'no presenter certificate was given: the token is bound to a certificate (cnf x5t#S256); pass the presenter''s certificate, or set skip_binding_check to verify it as a bearer token';
    ELSE
      v_reason := 'valid';
      v_detail := CASE WHEN v_checked THEN 'valid and bound to the presenter' ELSE 'valid as a bearer token (binding check skipped at the caller''s request)' END;
    END IF;
  END IF;
  v_details := jsonb_build_object('result', v_reason, 'detail', v_detail, 'token_id', p->'jti', 'binding_checked', v_checked);
  IF v_bearer THEN
    v_details := v_details || '{"binding_check_skipped": true}'::jsonb;
  END IF;
  PERFORM tb_append_event(v_chain_task, 'token.verified', p->>'actor', p->>'thumb', p->>'req', v_at, v_details);
  RETURN jsonb_build_object('reason', v_reason, 'detail', v_detail);
END
$$;

-- An event the broker decided on its own (a denial, the verification of a token that is not
-- authentic). p: task_id (or null: the actor's chain), type, details.
CREATE FUNCTION tb_op_event(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  PERFORM tb_append_event(p->>'task_id', p->>'type', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
  RETURN jsonb_build_object('recorded', true);
END
$$;

-- The one statement the broker sends per batch: every operation in order, one result each.
CREATE FUNCTION tb_apply(p_ops jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
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
    END);
    IF v_out->-1 IS NULL OR v_out->-1 = 'null'::jsonb THEN
      RAISE EXCEPTION 'tb_apply: unknown operation %', v_op->>'op';
    END IF;
  END LOOP;
  RETURN v_out;
END
$$;
