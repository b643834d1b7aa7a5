-- Tasks, their audit trail, webhook deliveries seen, and the outbox to the queues.
CREATE TABLE tasks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key           text GENERATED ALWAYS AS ('FF-' || id::text) STORED UNIQUE,
    source        text NOT NULL,
    external_ids  jsonb NOT NULL DEFAULT '{}'::jsonb,
    repo          text NOT NULL,
    title         text NOT NULL,
    body          text NOT NULL DEFAULT '',
    priority      text NOT NULL DEFAULT 'normal'
                  CHECK (priority IN ('critical', 'high', 'normal', 'low')),
    status        text NOT NULL DEFAULT 'RECEIVED',
    version       integer NOT NULL DEFAULT 1,
    attempts      integer NOT NULL DEFAULT 0,
    plan          jsonb,
    plan_version  integer NOT NULL DEFAULT 0,
    branch        text,
    pr_url        text,
    cost_usd      numeric(12, 6) NOT NULL DEFAULT 0,
    tokens        bigint NOT NULL DEFAULT 0,
    context       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_status_idx ON tasks (status, updated_at);
CREATE INDEX tasks_external_ids_idx ON tasks USING gin (external_ids);

CREATE TABLE task_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    from_status  text,
    to_status    text,
    actor        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task_idx ON task_events (task_id, id);

CREATE TABLE webhook_deliveries (
    source       text NOT NULL,
    delivery_id  text NOT NULL,
    task_id      bigint REFERENCES tasks (id) ON DELETE SET NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, delivery_id)
);

CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    queue         text NOT NULL,
    priority      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
