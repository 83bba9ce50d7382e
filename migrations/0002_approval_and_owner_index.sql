-- Approvals (who approved a PENDING_APPROVAL task, when, and why), the policy rule that allowed
-- a task, and an index for the admin plane's owner-prefix selectors (RevokeWorkload, ListTasks).

ALTER TABLE tasks ADD COLUMN approved_by text;
ALTER TABLE tasks ADD COLUMN approved_at timestamptz;
ALTER TABLE tasks ADD COLUMN approval_comment text;
ALTER TABLE tasks ADD COLUMN policy_rule text;
CREATE INDEX tasks_live_by_owner_prefix ON tasks (owner_spiffe_id text_pattern_ops) WHERE state IN ('PENDING_APPROVAL', 'ACTIVE');
CREATE INDEX tasks_by_state_created ON tasks (state, created_at, task_id);
CREATE INDEX tasks_by_audience_created ON tasks (audience, created_at, task_id);
