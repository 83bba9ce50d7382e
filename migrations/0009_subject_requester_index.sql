-- A gateway's list of one bearer-token requester's tasks (ListOwnTasks, MCP tasks/list) reads the
-- tasks the gateway owns for that person: gateway, principal iss and sub, newest first. The
-- tasks_by_gateway index cannot tell those requesters apart (their owner is always the gateway),
-- so without this one every list walked all the subject tasks the gateway ever created.
-- The expressions are the ones TaskRows.listOwn filters on.
CREATE INDEX tasks_by_gateway_principal ON tasks (gateway, (principal->>'iss'), (principal->>'sub'), created_at DESC, task_id DESC)
  WHERE gateway IS NOT NULL AND principal IS NOT NULL;
