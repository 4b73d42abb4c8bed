-- The usage ledger, its daily aggregates, budgets with reservations, and
-- per-tenant settings. Times of events are unix microseconds (as in SQLite);
-- money is nano-USD. Every table is tenant-owned and has an RLS policy.
CREATE TABLE usage_events (
    seq                  bigserial PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                   text NOT NULL,
    ts                   bigint NOT NULL,
    day                  text NOT NULL,
    kind                 text NOT NULL,
    name                 text NOT NULL,
    input_tokens         bigint NOT NULL,
    output_tokens        bigint NOT NULL,
    cached_input_tokens  bigint NOT NULL,
    quantity             bigint NOT NULL,
    unit                 text,
    cost                 bigint NOT NULL,
    run_id               uuid,
    agent_id             uuid,
    request_id           text,
    attributes           jsonb NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, id)
);
CREATE INDEX usage_events_tenant_ts ON usage_events (tenant_id, ts);

CREATE TABLE usage_daily (
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day                  text NOT NULL,
    kind                 text NOT NULL,
    name                 text NOT NULL,
    agent_id             text NOT NULL,
    events               bigint NOT NULL,
    input_tokens         bigint NOT NULL,
    output_tokens        bigint NOT NULL,
    cached_input_tokens  bigint NOT NULL,
    quantity             bigint NOT NULL,
    cost                 bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, kind, name, agent_id)
);

CREATE TABLE budgets (
    tenant_id           uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    monthly_limit       bigint,
    daily_limit         bigint,
    soft_alert_percent  integer,
    updated_at          bigint NOT NULL
);

CREATE TABLE budget_reservations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    amount      bigint NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL
);
CREATE INDEX budget_reservations_tenant ON budget_reservations (tenant_id, expires_at);

CREATE TABLE budget_alerts (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period      text NOT NULL,
    kind        text NOT NULL,
    threshold   bigint NOT NULL,
    spent       bigint NOT NULL,
    crossed_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, period, kind)
);

CREATE TABLE tenant_settings (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    limits      jsonb NOT NULL DEFAULT '{}',
    pricing     jsonb NOT NULL DEFAULT '{}',
    updated_at  bigint NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_events', 'usage_daily', 'budgets', 'budget_reservations',
                             'budget_alerts', 'tenant_settings']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
END $$;
