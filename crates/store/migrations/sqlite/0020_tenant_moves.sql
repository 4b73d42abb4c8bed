-- Live tier moves: while a move runs, the tier it is heading to. Every
-- process that routes the tenant re-reads this (at least once per route
-- TTL) and holds the tenant's calls until it clears.
ALTER TABLE tenants ADD COLUMN moving_to TEXT CHECK (moving_to IN ('shared', 'isolated', 'dedicated'));
