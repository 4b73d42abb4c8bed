-- Agents and their versions, threads and messages, runs (the durable run
-- queue) and their steps. Times are unix microseconds; ids are UUIDv7 text,
-- so ORDER BY id is creation order.
--
-- Children reference their parent by (tenant_id, parent id): a row can only
-- ever hang under a parent of its own tenant. Runs keep `agent_id` without a
-- foreign key, so a run's history outlives its agent (deleting an agent with
-- queued or running runs is refused by the store). Deleting a thread removes
-- its messages, runs and steps.

CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    -- The current version; its spec is in agent_versions.
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE agent_versions (
    agent_id    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (agent_id, version),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE threads (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    metadata      TEXT NOT NULL DEFAULT '{}',
    summary       TEXT,
    -- A message of this thread (checked by the store; no foreign key, which
    -- would make threads and messages reference each other).
    summary_upto  TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    thread_id   TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content     TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}',
    -- A run of the same thread (checked by the store); runs go only with
    -- their thread, which takes its messages along.
    run_id      TEXT,
    created_at  INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX messages_thread ON messages (thread_id, id);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    thread_id         TEXT NOT NULL,
    agent_id          TEXT NOT NULL,
    agent_version     INTEGER NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')),
    input             TEXT NOT NULL DEFAULT '{}',
    output            TEXT NOT NULL DEFAULT '{}',
    error             TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    worker            TEXT,
    lease_until       INTEGER,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, id) ON DELETE CASCADE
) STRICT;
-- Claiming (a tenant's oldest queued run; ids are creation order) and queue counts.
CREATE INDEX runs_claim ON runs (tenant_id, status, id);
-- Recovery of runs whose lease lapsed.
CREATE INDEX runs_lease ON runs (status, lease_until);
-- A thread's runs, and the cascade from threads.
CREATE INDEX runs_thread ON runs (thread_id, id);

CREATE TABLE run_steps (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id) ON DELETE CASCADE
) STRICT;
