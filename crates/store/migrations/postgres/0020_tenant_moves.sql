-- Live tier moves and tenant restores.
--
-- `tenants.moving_to`: while a move runs, the tier it is heading to. Every
-- process that routes the tenant re-reads this (at least once per route
-- TTL) and holds the tenant's calls until it clears.
--
-- The application role may not delete audit entries, run DDL or move
-- sequences, so the two steps of a move that need that are SECURITY DEFINER
-- functions, platform scope only: removing a tenant's rows from the store
-- it left (keeping its control row and keys), and moving the sequences past
-- ids a restore brought in.

ALTER TABLE tenants ADD COLUMN moving_to text CHECK (moving_to IN ('shared', 'isolated', 'dedicated'));

CREATE FUNCTION bulkhead_purge_tenant(t uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    tbl text;
BEGIN
    IF NOT bulkhead_platform_scope() THEN
        RAISE EXCEPTION 'bulkhead_purge_tenant: platform scope only';
    END IF;
    FOR tbl IN
        SELECT c.table_name::text FROM information_schema.columns c
        JOIN pg_class r ON r.relname = c.table_name AND r.relnamespace = 'public'::regnamespace
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND NOT r.relispartition
          AND c.table_name NOT IN ('api_keys')
    LOOP
        EXECUTE format('DELETE FROM %I WHERE tenant_id = $1', tbl) USING t;
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'kb_chunks_' || replace(t::text, '-', ''));
END $$;

CREATE FUNCTION bulkhead_sync_sequences() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF NOT bulkhead_platform_scope() THEN
        RAISE EXCEPTION 'bulkhead_sync_sequences: platform scope only';
    END IF;
    PERFORM setval('usage_events_seq_seq',
        greatest((SELECT coalesce(max(seq), 0) FROM usage_events), (SELECT last_value FROM usage_events_seq_seq)), true);
    PERFORM setval('kb_chunks_id_seq',
        greatest((SELECT coalesce(max(id), 0) FROM kb_chunks), (SELECT last_value FROM kb_chunks_id_seq)), true);
END $$;
