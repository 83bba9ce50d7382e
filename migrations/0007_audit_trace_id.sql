-- Tracing: the W3C trace id of a call in every audit event the call writes.
--
-- A call that carries a trace context (a valid traceparent from the caller, or the broker's own
-- server span when tracing is on) has its trace id recorded as details.trace_id in each event it
-- appends, beside its request id. In details, so the event's hash (tb_event_document) covers it
-- like every other recorded field; no new column.
--
-- The trace id reaches tb_append_event through the transaction-local setting taskbroker.trace_id,
-- so every path that appends (an operation's own event, an expiry on the way, the events of a
-- tree's descendants ended with it) records it without each function passing it along:
--   * tb_apply sets it per operation from the operation's `trace` field (and clears it for an
--     operation without one: a batch holds the operations of many calls);
--   * the admin plane's transactions set it themselves (set_config(..., true)) before ending tasks.
-- Unset or empty: the event records no trace id, as before.
--
-- As in 0005, with the trace id added first.
CREATE OR REPLACE FUNCTION tb_append_event(p_task text, p_type text, p_actor text, p_thumb text, p_request text, p_at timestamptz, p_details jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_chain text := coalesce(p_task, 'actor:' || p_actor);
  v_seq integer;
  v_prev text;
  v_hash text;
  v_id bigint;
  v_principal jsonb;
  v_trace text := nullif(current_setting('taskbroker.trace_id', true), '');
BEGIN
  IF v_trace IS NOT NULL THEN
    p_details := coalesce(p_details, '{}'::jsonb) || jsonb_build_object('trace_id', v_trace);
  END IF;
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

-- As in 0005, with the operation's trace id set around each operation.
CREATE OR REPLACE FUNCTION tb_apply(p_ops jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_op jsonb;
  v_out jsonb := '[]';
  v_traced boolean := false;
BEGIN
  FOR v_op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
    -- Each operation's events carry its own call's trace id, or none (never the one before it).
    IF v_op ? 'trace' OR v_traced THEN
      PERFORM set_config('taskbroker.trace_id', coalesce(v_op->>'trace', ''), true);
      v_traced := v_op ? 'trace';
    END IF;
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
  IF v_traced THEN
    PERFORM set_config('taskbroker.trace_id', '', true);
  END IF;
  RETURN v_out;
END
$$;
