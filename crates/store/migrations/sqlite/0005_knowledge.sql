-- Knowledge bases, their documents (the uploaded bytes, with the ingestion
-- status) and chunks (text, heading and the embedding as little-endian f32).
-- Times are unix microseconds. Children reference their parent by
-- (tenant_id, id). Chunk ids are AUTOINCREMENT, never reused: in-memory
-- indexes key on them. `generation` changes whenever a base's chunks do.
--
-- Full text: an FTS5 index over chunk text (external content), kept in step
-- by triggers — also on the cascades that delete a document or a base.

CREATE TABLE knowledge_bases (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    embedding_model  TEXT NOT NULL,
    dims             INTEGER NOT NULL,
    chunk_tokens     INTEGER NOT NULL,
    chunk_overlap    INTEGER NOT NULL,
    generation       INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE kb_documents (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kb_id           TEXT NOT NULL,
    name            TEXT NOT NULL,
    format          TEXT NOT NULL,
    content         BLOB NOT NULL,
    sha256          TEXT NOT NULL,
    bytes           INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    error           TEXT,
    chunks          INTEGER NOT NULL DEFAULT 0,
    progress_done   INTEGER NOT NULL DEFAULT 0,
    progress_total  INTEGER NOT NULL DEFAULT 0,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    ingested_at     INTEGER,
    UNIQUE (tenant_id, kb_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, kb_id) REFERENCES knowledge_bases (tenant_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX kb_documents_pending ON kb_documents (status) WHERE status IN ('queued', 'processing');

CREATE TABLE kb_chunks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kb_id      TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    ord        INTEGER NOT NULL,
    text       TEXT NOT NULL,
    tokens     INTEGER NOT NULL,
    heading    TEXT,
    embedding  BLOB NOT NULL,
    FOREIGN KEY (tenant_id, doc_id) REFERENCES kb_documents (tenant_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX kb_chunks_kb ON kb_chunks (tenant_id, kb_id);
CREATE INDEX kb_chunks_doc ON kb_chunks (doc_id);

CREATE VIRTUAL TABLE kb_chunks_fts USING fts5 (
    text,
    content = 'kb_chunks',
    content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN
    INSERT INTO kb_chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN
    INSERT INTO kb_chunks_fts (kb_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
