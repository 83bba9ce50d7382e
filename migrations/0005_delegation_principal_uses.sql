-- Delegation trees, the principal behind a task, and use-limited tokens.
--
-- Delegation: DelegateTask makes a child task owned by the delegatee; the child names its parent
-- and root, its depth below the root and its delegators (most recent first). Every operation on
-- a task of a tree locks the tree's root row first, then the task (lock order: root, then
-- descendants by depth and task ID), so a task ending and an operation on one of its
-- descendants never wait on each other in a cycle. Ending a task (tb_end_task: complete, cancel,
-- expiry, admin revoke, revoke-workload) ends every live descendant in the same transaction:
-- each gets its own event and revocation log row; the ended task's event counts them.
--
-- Principal: the verified subject token's issuer, sub and sid (principal), and its claims
-- (principal_claims, for request-time policy), inherited by delegated tasks.
--
-- Use-limited tokens: tokens.max_uses and tokens.uses; tb_op_verify counts an accepted use under
-- the task's chain lock and refuses the token once it is used up ('uses-exhausted').
--
-- Statements end with ';' at the end of a line; function bodies are dollar-quoted ($$ … $$).

ALTER TABLE tasks ADD COLUMN parent_task_id text REFERENCES tasks (task_id);
-- NULL for a root task (its own root).
ALTER TABLE tasks ADD COLUMN root_task_id text;
ALTER TABLE tasks ADD COLUMN depth smallint NOT NULL DEFAULT 0 CHECK (depth >= 0);
ALTER TABLE tasks ADD COLUMN delegators jsonb NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN principal jsonb;
ALTER TABLE tasks ADD COLUMN principal_claims jsonb;
ALTER TABLE tasks ADD COLUMN approver jsonb;
-- Set on a task the first time something is delegated from it: ending a task without it looks for no descendants.
ALTER TABLE tasks ADD COLUMN has_delegated boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD CONSTRAINT tasks_tree_shape CHECK ((parent_task_id IS NULL) = (root_task_id IS NULL) AND (parent_task_id IS NULL) = (depth = 0));
CREATE INDEX tasks_by_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX tasks_by_root ON tasks (root_task_id, depth, task_id) WHERE root_task_id IS NOT NULL;

ALTER TABLE tokens ADD COLUMN max_uses integer CHECK (max_uses > 0);
ALTER TABLE tokens ADD COLUMN uses integer NOT NULL DEFAULT 0;

-- As in 0003, and every event of a task bound to a principal names it (details.principal), so
-- each event of the trail says on whose behalf it happened. The chain head keeps the principal
-- (read once, when the task's chain starts with its task.created event), so appending costs no
-- extra read.
ALTER TABLE audit_chains ADD COLUMN principal jsonb;

CREATE OR REPLACE FUNCTION tb_append_event(p_task text, p_type text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_chain text := coalesce(p_task, 'actor:' || p_actor);
  v_seq integer;
  v_prev text;
  v_hash text;
  v_id bigint;
  v_principal jsonb;
BEGIN
  SELECT last_seq, last_hash, principal INTO v_seq, v_prev, v_principal FROM audit_chains WHERE chain_id = v_chain FOR UPDATE;
  IF NOT FOUND THEN
    IF p_task IS NOT NULL THEN
      SELECT principal INTO v_principal FROM tasks WHERE task_id = p_task;
    END IF;
    IF v_principal IS NOT NULL AND NOT (coalesce(p_details, '{}'::jsonb) ? 'principal') THEN
      p_details := coalesce(p_details, '{}'::jsonb) || jsonb_build_object('principal', v_principal);
    END IF;
    v_hash := tb_b64url(sha256(convert_to(tb_event_document(v_chain, 1, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, ''), 'UTF8')));
    INSERT INTO audit_chains (chain_id, last_seq, last_hash, principal) VALUES (v_chain, 1, v_hash, v_principal) ON CONFLICT (chain_id) DO NOTHING;
    IF FOUND THEN
      INSERT INTO audit_events (chain_id, seq, task_id, event_type, actor_spiffe_id, actor_cert_thumbprint, request_id, occurred_at, details, prev_hash, hash, hash_version)
        VALUES (v_chain, 1, p_task, p_type, p_actor, p_thumb, p_request, p_at, p_details, '', v_hash, 2)
        RETURNING event_id INTO v_id;
      RETURN v_id;
    END IF;
    -- Created concurrently by another transaction (now committed): append after its events.
    SELECT last_seq, last_hash, principal INTO v_seq, v_prev, v_principal FROM audit_chains WHERE chain_id = v_chain FOR UPDATE;
  ELSIF v_principal IS NOT NULL AND NOT (coalesce(p_details, '{}'::jsonb) ? 'principal') THEN
    p_details := coalesce(p_details, '{}'::jsonb) || jsonb_build_object('principal', v_principal);
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

-- Moves one live task row to a final state and revokes its tokens (with the revocation log row
-- when it revoked any). No event: the caller appends it. p_task must be locked by the caller.
CREATE FUNCTION tb_end_row(p_task tasks, p_state text, p_by text, p_reason text, p_at timestamptz)
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
  RETURN jsonb_build_object('task', to_jsonb(v_row), 'revoked', v_revoked);
END
$$;

-- Ends a live task and, in the same transaction, every live task delegated below it: a
-- descendant of a task that was completed or cancelled is CANCELLED, of one revoked REVOKED, of
-- one expired EXPIRED, each with its own event ('ended_with' names the task whose end caused it).
-- The ended task's event comes last and counts them. A task that is no longer live is left as it
-- is ('noop': an ancestor's end reached it first). 'revoked' counts the tokens of the whole subtree.
CREATE OR REPLACE FUNCTION tb_end_task(p_task tasks, p_state text, p_by text, p_reason text, p_event text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_own jsonb;
  v_child tasks;
  v_child_state text := CASE WHEN p_state IN ('COMPLETED', 'CANCELLED') THEN 'CANCELLED' ELSE p_state END;
  v_child_event text := 'task.' || lower(CASE WHEN p_state IN ('COMPLETED', 'CANCELLED') THEN 'CANCELLED' ELSE p_state END);
  v_child_reason text := 'task ' || p_task.task_id || ' was ' || lower(p_state) || ': every task delegated from it ends with it';
  v_r jsonb;
  v_desc jsonb := '[]';
  v_desc_tokens integer := 0;
  v_extra jsonb := '{}';
BEGIN
  IF p_task.state NOT IN ('PENDING_APPROVAL', 'ACTIVE') THEN
    RETURN jsonb_build_object('task', to_jsonb(p_task), 'revoked', 0, 'own_revoked', 0, 'descendants', '[]'::jsonb, 'noop', true);
  END IF;
  v_own := tb_end_row(p_task, p_state, p_by, p_reason, p_at);
  -- has_delegated is set on the parent in the transaction that delegates, under its lock: a task
  -- nothing was delegated from has no descendants to look for.
  IF p_task.has_delegated THEN
    FOR v_child IN
      SELECT t.* FROM tasks t
        WHERE t.task_id IN (
          WITH RECURSIVE d(task_id) AS (
            SELECT c.task_id FROM tasks c WHERE c.parent_task_id = p_task.task_id
            UNION ALL
            SELECT c.task_id FROM tasks c JOIN d ON c.parent_task_id = d.task_id
          ) SELECT task_id FROM d)
        AND t.state IN ('PENDING_APPROVAL', 'ACTIVE')
        ORDER BY t.depth, t.task_id
        FOR UPDATE OF t
    LOOP
      CONTINUE WHEN v_child.state NOT IN ('PENDING_APPROVAL', 'ACTIVE');
      v_r := tb_end_row(v_child, v_child_state, p_by, v_child_reason, p_at);
      PERFORM tb_append_event(v_child.task_id, v_child_event, p_actor, p_thumb, p_request, p_at,
        jsonb_build_object('from_state', v_child.state, 'to_state', v_child_state, 'reason', v_child_reason,
          'revoked_tokens', v_r->'revoked', 'ended_with', p_task.task_id));
      v_desc := v_desc || jsonb_build_array(jsonb_build_object('task_id', v_child.task_id, 'state', v_child_state, 'revoked', v_r->'revoked'));
      v_desc_tokens := v_desc_tokens + (v_r->>'revoked')::integer;
    END LOOP;
  END IF;
  IF jsonb_array_length(v_desc) > 0 THEN
    v_extra := jsonb_build_object('descendants_ended', jsonb_array_length(v_desc), 'descendant_tokens_revoked', v_desc_tokens);
  END IF;
  PERFORM tb_append_event(p_task.task_id, p_event, p_actor, p_thumb, p_request, p_at,
    jsonb_build_object('from_state', p_task.state, 'to_state', p_state, 'reason', p_reason, 'revoked_tokens', v_own->'revoked')
      || v_extra || coalesce(p_details, '{}'::jsonb));
  RETURN jsonb_build_object('task', v_own->'task', 'revoked', (v_own->>'revoked')::integer + v_desc_tokens, 'own_revoked', v_own->'revoked', 'descendants', v_desc);
END
$$;

-- The endings of descendants in a tb_end_task result, as the broker's metrics count them: [{state, revoked}].
CREATE FUNCTION tb_ended_descendants(p_end jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object('state', d->'state', 'revoked', d->'revoked')), '[]'::jsonb) FROM jsonb_array_elements(p_end->'descendants') d
$$;

-- As in 0003, with the tree's lock order (root first) and delegators' reads: p_row is the task
-- locked when the caller owns it, or, with p.delegator_read, when the caller is one of its
-- delegators.
CREATE OR REPLACE FUNCTION tb_lock_owned(p jsonb, OUT p_row tasks, OUT p_ended jsonb) LANGUAGE plpgsql AS $$
DECLARE
  v_root text;
  v_end jsonb;
BEGIN
  p_ended := '[]';
  -- The root is immutable: the broker sends it from the task's facts (p.root, '' for a root task).
  IF p ? 'root' THEN
    v_root := nullif(p->>'root', '');
  ELSE
    SELECT root_task_id INTO v_root FROM tasks WHERE task_id = p->>'task_id';
  END IF;
  IF v_root IS NOT NULL THEN
    PERFORM 1 FROM tasks WHERE task_id = v_root FOR UPDATE;
  END IF;
  SELECT * INTO p_row FROM tasks WHERE task_id = p->>'task_id'
    AND (owner_spiffe_id = p->>'actor' OR (coalesce((p->>'delegator_read')::boolean, false) AND delegators ? (p->>'actor')))
    FOR UPDATE;
  IF p_row.task_id IS NULL OR p_row.state NOT IN ('PENDING_APPROVAL', 'ACTIVE') OR p_row.expires_at > (p->>'at')::timestamptz THEN
    RETURN;
  END IF;
  v_end := tb_end_task(p_row, 'EXPIRED', p->>'issuer', 'task ttl elapsed', 'task.expired', p->>'issuer', NULL, p->>'req', (p->>'at')::timestamptz, NULL);
  p_ended := jsonb_build_array(jsonb_build_object('state', 'EXPIRED', 'revoked', v_end->'own_revoked')) || tb_ended_descendants(v_end);
  SELECT * INTO p_row FROM tasks WHERE task_id = p_row.task_id;
END
$$;

-- As in 0003, plus the principal of the new row.
CREATE OR REPLACE FUNCTION tb_op_create(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  t jsonb := p->'task';
  v_row tasks;
BEGIN
  INSERT INTO tasks (task_id, owner_spiffe_id, owner_trust_domain, spec, task_hash, action, audience, scopes, ttl_seconds, state, policy_rule, idempotency_key, owner_cert_thumbprint, created_at, expires_at, principal, principal_claims)
    VALUES (t->>'task_id', p->>'actor', t->>'owner_trust_domain', t->'spec', t->>'task_hash', t->>'action', t->>'audience', t->'scopes', (t->>'ttl_seconds')::integer, t->>'state', t->>'policy_rule', p->>'idem', p->>'thumb', (p->>'at')::timestamptz, (t->>'expires_at')::timestamptz,
      nullif(t->'principal', 'null'::jsonb), nullif(t->'principal_claims', 'null'::jsonb))
    ON CONFLICT (owner_spiffe_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO v_row;
  IF FOUND THEN
    PERFORM tb_append_event(v_row.task_id, 'task.created', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
    RETURN jsonb_build_object('created', true);
  END IF;
  SELECT * INTO v_row FROM tasks WHERE owner_spiffe_id = p->>'actor' AND idempotency_key = p->>'idem' FOR UPDATE;
  IF v_row.task_hash <> t->>'task_hash' THEN
    RETURN tb_refuse(p, v_row.task_id, 'already-exists', 'idempotency_key was already used for a task with a different spec',
      jsonb_build_object('operation', 'CreateTask', 'reason', 'idempotency key reused with a different spec', 'task_hash', t->>'task_hash'), '[]');
  END IF;
  PERFORM tb_append_event(v_row.task_id, 'task.create_replayed', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, jsonb_build_object('idempotency_key', p->>'idem'));
  RETURN jsonb_build_object('replayed', true, 'task', to_jsonb(v_row));
END
$$;

-- DelegateTask. p: task_id (the parent), deny (a refusal decided by the broker), child (the new
-- row's values; owner = child.owner_spiffe_id), idem (the child's stored idempotency key or
-- null), details (of task.delegated), child_details (of the child's task.created). The parent
-- (and its root) is locked; it must be ACTIVE and outlive the child.
CREATE FUNCTION tb_op_delegate(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_child tasks;
  c jsonb := p->'child';
BEGIN
  SELECT * INTO v_owned FROM tb_lock_owned(p);
  v_row := v_owned.p_row;
  v_ended := v_owned.p_ended;
  IF v_row.task_id IS NULL THEN
    RETURN jsonb_build_object('refused', 'not-found', 'ended', v_ended);
  END IF;
  IF v_row.state <> 'ACTIVE' THEN
    RETURN tb_refuse(p, v_row.task_id, 'failed-precondition', 'task is ' || v_row.state || ', not ACTIVE: nothing can be delegated from it',
      jsonb_build_object('operation', 'DelegateTask', 'reason', 'task is ' || v_row.state, 'state', v_row.state), v_ended);
  END IF;
  IF p ? 'deny' THEN
    RETURN tb_refuse(p, v_row.task_id, p->'deny'->>'kind', p->'deny'->>'message', p->'deny'->'details', v_ended);
  END IF;
  IF (c->>'expires_at')::timestamptz > v_row.expires_at THEN
    RETURN tb_refuse(p, v_row.task_id, 'permission-denied', 'widening refused: the delegated task would outlive its parent (expires ' || to_char(v_row.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ')',
      jsonb_build_object('operation', 'DelegateTask', 'reason', 'widening: ttl beyond the parent''s remaining lifetime', 'delegatee', c->>'owner_spiffe_id'), v_ended);
  END IF;
  IF p->>'idem' IS NOT NULL THEN
    SELECT * INTO v_child FROM tasks WHERE owner_spiffe_id = c->>'owner_spiffe_id' AND idempotency_key = p->>'idem' FOR UPDATE;
    IF FOUND THEN
      IF v_child.task_hash <> c->>'task_hash' THEN
        RETURN tb_refuse(p, v_row.task_id, 'already-exists', 'idempotency_key was already used for a delegation with a different spec',
          jsonb_build_object('operation', 'DelegateTask', 'reason', 'idempotency key reused with a different spec', 'task_hash', c->>'task_hash'), v_ended);
      END IF;
      PERFORM tb_append_event(v_child.task_id, 'task.create_replayed', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, jsonb_build_object('idempotency_key', p->'details'->'idempotency_key'));
      RETURN jsonb_build_object('replayed', true, 'task', to_jsonb(v_child), 'ended', v_ended);
    END IF;
  END IF;
  INSERT INTO tasks (task_id, owner_spiffe_id, owner_trust_domain, spec, task_hash, action, audience, scopes, ttl_seconds, state, policy_rule, idempotency_key, owner_cert_thumbprint, created_at, expires_at,
      parent_task_id, root_task_id, depth, delegators, principal, principal_claims)
    VALUES (c->>'task_id', c->>'owner_spiffe_id', c->>'owner_trust_domain', c->'spec', c->>'task_hash', v_row.action, c->>'audience', c->'scopes', (c->>'ttl_seconds')::integer, 'ACTIVE', v_row.policy_rule, p->>'idem', '', (p->>'at')::timestamptz, (c->>'expires_at')::timestamptz,
      v_row.task_id, coalesce(v_row.root_task_id, v_row.task_id), v_row.depth + 1, jsonb_build_array(p->>'actor') || v_row.delegators, v_row.principal, v_row.principal_claims)
    RETURNING * INTO v_child;
  IF NOT v_row.has_delegated THEN
    UPDATE tasks SET has_delegated = true WHERE task_id = v_row.task_id;
  END IF;
  PERFORM tb_append_event(v_row.task_id, 'task.delegated', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details' || jsonb_build_object('child_task_id', v_child.task_id));
  PERFORM tb_append_event(v_child.task_id, 'task.created', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'child_details');
  RETURN jsonb_build_object('created', true, 'task', to_jsonb(v_child), 'ended', v_ended);
END
$$;

-- GetTask. As in 0003; with p.delegator_read the caller may be one of the task's delegators (the
-- policy let it read its children), recorded as task.read_by_delegator.
CREATE OR REPLACE FUNCTION tb_op_get(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_by_delegator boolean;
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
  v_by_delegator := v_row.owner_spiffe_id <> p->>'actor';
  PERFORM tb_append_event(v_row.task_id, CASE WHEN v_by_delegator THEN 'task.read_by_delegator' ELSE 'task.polled' END, p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz,
    jsonb_build_object('state', v_row.state, 'policy_rule', p->>'rule') || coalesce(p->'details', '{}'::jsonb));
  RETURN jsonb_build_object('task', to_jsonb(v_row), 'ended', v_ended);
END
$$;

-- IssueToken. As in 0003, plus max_uses, and the approval check on the root of a tree
-- (p.approval_of: the task whose approval counts).
CREATE OR REPLACE FUNCTION tb_op_issue(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_owned record;
  v_ended jsonb;
  v_row tasks;
  v_approved text;
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
  IF (p->>'approval')::boolean THEN
    SELECT approved_by INTO v_approved FROM tasks WHERE task_id = coalesce(v_row.root_task_id, v_row.task_id);
    IF v_approved IS NULL THEN
      RETURN tb_refuse(p, v_row.task_id, 'permission-denied', 'denied by policy: ' || (p->'approval_denial'->>'reason'),
        jsonb_build_object('operation', 'IssueToken', 'reason', 'policy: ' || (p->'approval_denial'->>'reason'), 'policy_digest', p->'approval_denial'->>'digest'), v_ended);
    END IF;
  END IF;
  INSERT INTO tokens (jti, task_id, kid, subject, audience, scopes, cnf_thumbprint, issued_at, expires_at, max_uses)
    VALUES (k->>'jti', v_row.task_id, k->>'kid', v_row.owner_spiffe_id, v_row.audience, k->'scopes', p->>'thumb', (k->>'issued_at')::timestamptz, (k->>'expires_at')::timestamptz, (k->>'max_uses')::integer);
  PERFORM tb_append_event(v_row.task_id, 'token.issued', p->>'actor', p->>'thumb', p->>'req', (p->>'at')::timestamptz, p->'details');
  RETURN jsonb_build_object('issued', true, 'ended', v_ended);
END
$$;

-- CompleteTask and CancelTask. As in 0003; 'ended' also lists the descendants that ended with the task.
CREATE OR REPLACE FUNCTION tb_op_finish(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
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
  RETURN jsonb_build_object('task', v_end->'task', 'revoked', v_end->'revoked', 'descendants', v_end->'descendants',
    'ended', v_ended || jsonb_build_array(jsonb_build_object('state', v_state, 'revoked', v_end->'own_revoked')) || tb_ended_descendants(v_end));
END
$$;

-- VerifyToken. As in 0003, plus use-limited tokens: a token with max_uses is accepted while
-- uses < max_uses, each acceptance counted here (under the task's chain lock, so replicas count
-- one after another); then 'uses-exhausted'.
CREATE OR REPLACE FUNCTION tb_op_verify(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
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
  v_left integer;
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
    SELECT revoked_at, revoke_reason, task_id, max_uses, uses INTO v_token FROM tokens WHERE jti = p->>'jti';
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
    ELSIF v_token.max_uses IS NOT NULL AND v_token.uses >= v_token.max_uses THEN
      v_reason := 'uses-exhausted'; v_detail := 'the token may be used ' || v_token.max_uses || ' time(s) and has been';
    ELSE
      v_reason := 'valid';
      v_detail := CASE WHEN v_checked THEN 'valid and bound to the presenter' ELSE 'valid as a bearer token (binding check skipped at the caller''s request)' END;
      IF v_token.max_uses IS NOT NULL THEN
        UPDATE tokens SET uses = uses + 1 WHERE jti = p->>'jti';
        v_left := v_token.max_uses - v_token.uses - 1;
      END IF;
    END IF;
  END IF;
  v_details := jsonb_build_object('result', v_reason, 'detail', v_detail, 'token_id', p->'jti', 'binding_checked', v_checked);
  IF v_bearer THEN
    v_details := v_details || '{"binding_check_skipped": true}'::jsonb;
  END IF;
  IF v_left IS NOT NULL THEN
    v_details := v_details || jsonb_build_object('use', v_token.uses + 1, 'max_uses', v_token.max_uses);
  END IF;
  PERFORM tb_append_event(v_chain_task, 'token.verified', p->>'actor', p->>'thumb', p->>'req', v_at, v_details);
  RETURN jsonb_build_object('reason', v_reason, 'detail', v_detail, 'uses_left', v_left);
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
      WHEN 'delegate' THEN tb_op_delegate(v_op)
    END);
    IF v_out->-1 IS NULL OR v_out->-1 = 'null'::jsonb THEN
      RAISE EXCEPTION 'tb_apply: unknown operation %', v_op->>'op';
    END IF;
  END LOOP;
  RETURN v_out;
END
$$;
