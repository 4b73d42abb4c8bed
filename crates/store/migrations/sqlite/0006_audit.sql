-- The audit log: one append-only hash chain per tenant (`audit_entries`,
-- with its head in `audit_heads`) and one platform chain
-- (`platform_audit_entries`, head in `platform_audit_head`). Each entry
-- carries the hash of its predecessor and its own hash (computed by the
-- store); the head row moves in the same transaction as each append, so
-- removing the last entries is detected as well. Times are unix
-- microseconds; details are the exact canonical JSON text that was hashed.
-- A tenant's chain goes with the tenant; the platform chain outlives the
-- tenants it mentions.

CREATE TABLE audit_entries (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL CHECK (seq > 0),
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    via_operator  INTEGER NOT NULL CHECK (via_operator IN (0, 1)),
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    details       TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT;

CREATE TABLE audit_heads (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    last_seq   INTEGER NOT NULL,
    last_hash  TEXT NOT NULL
) STRICT;

CREATE TABLE platform_audit_entries (
    -- Always 'platform': gives both kinds of chain the same shape.
    chain         TEXT NOT NULL DEFAULT 'platform' CHECK (chain = 'platform'),
    seq           INTEGER NOT NULL CHECK (seq > 0),
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    via_operator  INTEGER NOT NULL CHECK (via_operator IN (0, 1)),
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    details       TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT;

CREATE TABLE platform_audit_head (
    chain      TEXT PRIMARY KEY CHECK (chain = 'platform'),
    last_seq   INTEGER NOT NULL,
    last_hash  TEXT NOT NULL
) STRICT;
