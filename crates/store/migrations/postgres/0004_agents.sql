-- Agents and their versions, threads and messages, runs (the durable run
-- queue) and their steps. Times are unix microseconds (as in SQLite); ids
-- are UUIDv7, so ORDER BY id is creation order. Every table is tenant-owned
-- and has an RLS policy.
--
-- Children reference their parent by (tenant_id, parent id): foreign-key
-- checks bypass row-level security, so this is what keeps a row from
-- hanging under another tenant's parent. Runs keep `agent_id` without a
-- foreign key, so a run's history outlives its agent (deleting an agent with
-- queued or running runs is refused by the store). Deleting a thread removes
-- its messages, runs and steps.

CREATE TABLE agents (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    -- The current version; its spec is in agent_versions.
    version      integer NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE agent_versions (
    agent_id    uuid NOT NULL,
    version     integer NOT NULL,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    spec        jsonb NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (agent_id, version),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE threads (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    metadata      jsonb NOT NULL DEFAULT '{}',
    summary       text,
    -- A message of this thread (checked by the store; no foreign key, which
    -- would make threads and messages reference each other).
    summary_upto  uuid,
    created_at    bigint NOT NULL,
    UNIQUE (tenant_id, id)
);

CREATE TABLE messages (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    thread_id   uuid NOT NULL,
    role        text NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content     text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    -- A run of the same thread (checked by the store); runs go only with
    -- their thread, which takes its messages along.
    run_id      uuid,
    created_at  bigint NOT NULL,
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX messages_thread ON messages (thread_id, id);

CREATE TABLE runs (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    thread_id         uuid NOT NULL,
    agent_id          uuid NOT NULL,
    agent_version     integer NOT NULL,
    status            text NOT NULL
                      CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')),
    input             jsonb NOT NULL DEFAULT '{}',
    output            jsonb NOT NULL DEFAULT '{}',
    error             text,
    cancel_requested  boolean NOT NULL DEFAULT false,
    attempts          integer NOT NULL DEFAULT 0,
    worker            text,
    lease_until       bigint,
    created_at        bigint NOT NULL,
    started_at        bigint,
    finished_at       bigint,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, id) ON DELETE CASCADE
);
-- Claiming (a tenant's oldest queued run; ids are creation order) and queue counts.
CREATE INDEX runs_claim ON runs (tenant_id, status, id);
-- Recovery of runs whose lease lapsed.
CREATE INDEX runs_lease ON runs (status, lease_until);
-- A thread's runs, and the cascade from threads.
CREATE INDEX runs_thread ON runs (thread_id, id);

CREATE TABLE run_steps (
    run_id      uuid NOT NULL,
    seq         integer NOT NULL,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    created_at  bigint NOT NULL,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (tenant_id, run_id) REFERENCES runs (tenant_id, id) ON DELETE CASCADE
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'agent_versions', 'threads', 'messages', 'runs', 'run_steps']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
END $$;
