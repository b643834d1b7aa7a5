-- Steering and correctness: who owns a task, one open task per external thing, entries that
-- know which version of the task they were queued for.

ALTER TABLE tasks ADD COLUMN owner text;
ALTER TABLE outbox ADD COLUMN version integer;
-- What the entry asks of the agent: the task's next step, or a side job (rerun-tests).
ALTER TABLE outbox ADD COLUMN action text NOT NULL DEFAULT 'work';

-- Tasks made twice for one external thing before the database could refuse it: the oldest open
-- one stays, the others are cancelled with the reason in their audit trail.
CREATE TEMP TABLE merged_tasks ON COMMIT DROP AS
SELECT t.id, min(o.id) AS kept
FROM tasks t
JOIN tasks o ON o.id < t.id
 AND o.status NOT IN ('COMPLETED', 'FAILED', 'REJECTED', 'CANCELLED')
 AND (   (t.external_ids ? 'sentry_issue' AND o.external_ids ->> 'sentry_issue' = t.external_ids ->> 'sentry_issue')
      OR (t.external_ids ? 'jira' AND o.external_ids ->> 'jira' = t.external_ids ->> 'jira')
      OR (t.external_ids ? 'github_issue' AND o.external_ids ->> 'github_issue' = t.external_ids ->> 'github_issue'))
WHERE t.status NOT IN ('COMPLETED', 'FAILED', 'REJECTED', 'CANCELLED')
GROUP BY t.id;

INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data)
SELECT t.id, t.status, 'CANCELLED', 'migration', 'a duplicate of FF-' || m.kept, jsonb_build_object('kept', m.kept)
FROM tasks t JOIN merged_tasks m USING (id);
UPDATE tasks t SET status = 'CANCELLED', version = version + 1, updated_at = now()
FROM merged_tasks m WHERE t.id = m.id;

CREATE UNIQUE INDEX tasks_one_open_per_sentry_issue ON tasks ((external_ids ->> 'sentry_issue'))
    WHERE external_ids ? 'sentry_issue' AND status NOT IN ('COMPLETED', 'FAILED', 'REJECTED', 'CANCELLED');
CREATE UNIQUE INDEX tasks_one_open_per_jira ON tasks ((external_ids ->> 'jira'))
    WHERE external_ids ? 'jira' AND status NOT IN ('COMPLETED', 'FAILED', 'REJECTED', 'CANCELLED');
CREATE UNIQUE INDEX tasks_one_open_per_github_issue ON tasks ((external_ids ->> 'github_issue'))
    WHERE external_ids ? 'github_issue' AND status NOT IN ('COMPLETED', 'FAILED', 'REJECTED', 'CANCELLED');
