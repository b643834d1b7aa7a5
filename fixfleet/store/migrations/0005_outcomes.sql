-- What became of a completed task's pull request (issue #22): merged (by whom, when), closed
-- unmerged, or still open when last checked. The state machine is unchanged: COMPLETED stays the
-- last state, and the outcome is a fact about the pull request recorded on it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS outcome text CHECK (outcome IN ('open', 'merged', 'closed'));
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS outcome_by text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS outcome_at timestamptz;
-- Seconds from the task's completion (the fix ready for review) to the merge.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS merge_seconds double precision;
-- When the periodic check last asked the forge (installs without webhooks).
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS outcome_checked_at timestamptz;
CREATE INDEX IF NOT EXISTS tasks_outcome_idx ON tasks (outcome, outcome_checked_at) WHERE status = 'COMPLETED';
