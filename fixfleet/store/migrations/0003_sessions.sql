-- The records of every Claude session (planner, executor, answers to `explain`): one row per
-- session, made before the CLI starts, and its messages in order, written as it runs.

CREATE TABLE sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id         bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('planner', 'executor')),
    purpose         text NOT NULL CHECK (purpose IN ('work', 'answer')),
    attempt         integer NOT NULL,
    plan_version    integer,                 -- the plan it wrote (planner) or served (executor, answer)
    agent           text NOT NULL,           -- the agent (replica) that ran it
    model           text,
    cli_session_id  text NOT NULL UNIQUE,    -- the claude CLI's own session id
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ended', 'cut_short')),
    outcome         text,                    -- how an ended session ended: success, timeout, error_max_turns, ...
    error           text,                    -- why it failed, or why it was cut short
    cost_usd        numeric(12, 6) NOT NULL DEFAULT 0,
    input_tokens    bigint NOT NULL DEFAULT 0,
    output_tokens   bigint NOT NULL DEFAULT 0,
    turns           integer NOT NULL DEFAULT 0,
    messages        integer NOT NULL DEFAULT 0,  -- messages written
    dropped         integer NOT NULL DEFAULT 0,  -- messages the recorder could not write (the store was away)
    pruned          integer NOT NULL DEFAULT 0,  -- messages removed since by the retention setting
    started_at      timestamptz NOT NULL DEFAULT now(),
    beat_at         timestamptz NOT NULL DEFAULT now(),  -- the recorder's last word: a live session's stays fresh
    ended_at        timestamptz
);
CREATE INDEX sessions_task_idx ON sessions (task_id, id);
CREATE INDEX sessions_running_idx ON sessions (beat_at) WHERE status = 'running';
CREATE INDEX sessions_prunable_idx ON sessions (ended_at) WHERE messages > pruned;

CREATE TABLE session_messages (
    session_id   bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq          integer NOT NULL,           -- 1, 2, ... in the order the session produced them; a gap is a dropped one
    at           timestamptz NOT NULL,       -- when the runner saw it
    kind         text NOT NULL,              -- prompt, system, text, thinking, tool_use, tool_result, user, result
    name         text,                       -- the tool's name (tool_use), the subtype (system, result)
    tool_use_id  text,                       -- tool_use and its tool_result share it
    is_error     boolean NOT NULL DEFAULT false,
    content      text NOT NULL,              -- redacted, cut to the recording limit
    full_size    integer NOT NULL,           -- bytes of the whole (redacted) content before the cut
    PRIMARY KEY (session_id, seq)
);
