-- The usage ledger, its daily aggregates, budgets with reservations, and
-- per-tenant settings. Times are unix microseconds; money is nano-USD.
CREATE TABLE usage_events (
    seq                  INTEGER PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                   TEXT NOT NULL,
    ts                   INTEGER NOT NULL,
    day                  TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    name                 TEXT NOT NULL,
    input_tokens         INTEGER NOT NULL,
    output_tokens        INTEGER NOT NULL,
    cached_input_tokens  INTEGER NOT NULL,
    quantity             INTEGER NOT NULL,
    unit                 TEXT,
    cost                 INTEGER NOT NULL,
    run_id               TEXT,
    agent_id             TEXT,
    request_id           TEXT,
    attributes           TEXT NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, id)
) STRICT;
CREATE INDEX usage_events_tenant_ts ON usage_events (tenant_id, ts);

-- tenant × day × kind × name × agent ('' when none): serves both the
-- model-by-day and the agent-by-day views, and budget spend.
CREATE TABLE usage_daily (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day                  TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    name                 TEXT NOT NULL,
    agent_id             TEXT NOT NULL,
    events               INTEGER NOT NULL,
    input_tokens         INTEGER NOT NULL,
    output_tokens        INTEGER NOT NULL,
    cached_input_tokens  INTEGER NOT NULL,
    quantity             INTEGER NOT NULL,
    cost                 INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, kind, name, agent_id)
) STRICT;

CREATE TABLE budgets (
    tenant_id           TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    monthly_limit       INTEGER,
    daily_limit         INTEGER,
    soft_alert_percent  INTEGER,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE budget_reservations (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    amount      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX budget_reservations_tenant ON budget_reservations (tenant_id, expires_at);

CREATE TABLE budget_alerts (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    threshold   INTEGER NOT NULL,
    spent       INTEGER NOT NULL,
    crossed_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, kind)
) STRICT;

CREATE TABLE tenant_settings (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    limits      TEXT NOT NULL DEFAULT '{}',
    pricing     TEXT NOT NULL DEFAULT '{}',
    updated_at  INTEGER NOT NULL
) STRICT;
