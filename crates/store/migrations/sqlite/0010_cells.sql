-- Cells: other Bulkhead deployments, each with its own store, that serve
-- the control plane's `dedicated` tenants. The control plane keeps the
-- registry and the routing table; the tenant's data lives in its cell.
--
-- `credential` is an operator key of the cell, sealed with the platform's
-- master key (ChaCha20-Poly1305, the cell's name as associated data); no
-- column holds it in plaintext. `credential_prefix` is the key's visible
-- start, for people.
--
-- `tenant_placements` is platform data about a tenant (where it is
-- served), not the tenant's own data: it stays on the control plane when
-- the tenant's rows move to a cell, so its column is `tenant`, not
-- `tenant_id`, and it is never part of a tenant's export. A cell that
-- still has tenants placed in it cannot be removed (RESTRICT).
CREATE TABLE cells (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    base_url           TEXT NOT NULL,
    credential         BLOB NOT NULL,
    credential_nonce   BLOB NOT NULL,
    credential_prefix  TEXT NOT NULL,
    created_at         TEXT NOT NULL
) STRICT;

CREATE TABLE tenant_placements (
    tenant     TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    cell_id    TEXT NOT NULL REFERENCES cells (id) ON DELETE RESTRICT,
    placed_at  TEXT NOT NULL
) STRICT;

CREATE INDEX tenant_placements_cell ON tenant_placements (cell_id);
