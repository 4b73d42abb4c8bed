-- Knowledge bases, their documents and chunks, with RLS like every tenant
-- table. Times are unix microseconds (as in SQLite).
--
-- Each tenant's chunks live in a list partition of their own
-- (`kb_chunks_<tenant id without dashes>`), created on the tenant's first
-- knowledge base by `bulkhead_kb_partition()` — a SECURITY DEFINER function
-- that only ever creates the partition of the tenant in scope, because the
-- application role owns no tables and cannot run DDL itself. The HNSW
-- indexes (one per vector dimension, partial on `dims`, over
-- `embedding::vector(dims)`) and the full-text GIN index are declared on the
-- parent, so every partition gets its own: a tenant's vector search is
-- pruned to its partition and walks a graph of its own rows only.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE knowledge_bases (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    embedding_model  text NOT NULL,
    dims             integer NOT NULL,
    chunk_tokens     integer NOT NULL,
    chunk_overlap    integer NOT NULL,
    generation       bigint NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE kb_documents (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kb_id           uuid NOT NULL,
    name            text NOT NULL,
    format          text NOT NULL,
    content         bytea NOT NULL,
    sha256          text NOT NULL,
    bytes           bigint NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    error           text,
    chunks          bigint NOT NULL DEFAULT 0,
    progress_done   bigint NOT NULL DEFAULT 0,
    progress_total  bigint NOT NULL DEFAULT 0,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    ingested_at     bigint,
    UNIQUE (tenant_id, kb_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, kb_id) REFERENCES knowledge_bases (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX kb_documents_pending ON kb_documents (status) WHERE status IN ('queued', 'processing');

CREATE SEQUENCE kb_chunks_id_seq;

CREATE TABLE kb_chunks (
    id         bigint NOT NULL DEFAULT nextval('kb_chunks_id_seq'),
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kb_id      uuid NOT NULL,
    doc_id     uuid NOT NULL,
    ord        integer NOT NULL,
    text       text NOT NULL,
    tokens     integer NOT NULL,
    heading    text,
    dims       integer NOT NULL,
    embedding  vector NOT NULL,
    tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, doc_id) REFERENCES kb_documents (tenant_id, id) ON DELETE CASCADE
) PARTITION BY LIST (tenant_id);
ALTER SEQUENCE kb_chunks_id_seq OWNED BY kb_chunks.id;
CREATE INDEX kb_chunks_kb ON kb_chunks (tenant_id, kb_id);
CREATE INDEX kb_chunks_doc ON kb_chunks (tenant_id, doc_id);
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
-- all-MiniLM-L6-v2, the embedded default; other sizes get theirs from
-- bulkhead_kb_vector_index(dims).
CREATE INDEX kb_chunks_hnsw_384 ON kb_chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WHERE dims = 384;

-- The partition of the tenant in scope; created if missing. Returns its name.
CREATE FUNCTION bulkhead_kb_partition() RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    t uuid := bulkhead_current_tenant();
    part text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'bulkhead_kb_partition: no tenant in scope';
    END IF;
    part := 'kb_chunks_' || replace(t::text, '-', '');
    IF to_regclass(part) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext(part));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF kb_chunks FOR VALUES IN (%L)', part, t);
            -- Reached directly (not through the parent), the partition
            -- filters like every tenant table.
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
            EXECUTE format(
                'CREATE POLICY %I ON %I FOR ALL
                     USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                     WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
                part || '_isolation', part);
        END IF;
    END IF;
    RETURN part;
END $$;

-- Drops a deleted tenant's (empty) partition; platform scope only.
CREATE FUNCTION bulkhead_kb_drop_partition(t uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF NOT bulkhead_platform_scope() THEN
        RAISE EXCEPTION 'bulkhead_kb_drop_partition: platform scope only';
    END IF;
    IF EXISTS (SELECT 1 FROM tenants WHERE id = t) THEN
        RAISE EXCEPTION 'bulkhead_kb_drop_partition: the tenant still exists';
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'kb_chunks_' || replace(t::text, '-', ''));
END $$;

-- An HNSW index for vectors of `d` dimensions, on every partition.
CREATE FUNCTION bulkhead_kb_vector_index(d integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF d < 1 OR d > 2000 THEN
        RAISE EXCEPTION 'bulkhead_kb_vector_index: dims out of range';
    END IF;
    IF to_regclass('kb_chunks_hnsw_' || d) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('kb_chunks_hnsw_' || d));
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON kb_chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) WHERE dims = %s',
            'kb_chunks_hnsw_' || d, d, d);
    END IF;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['knowledge_bases', 'kb_documents', 'kb_chunks']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
END $$;
