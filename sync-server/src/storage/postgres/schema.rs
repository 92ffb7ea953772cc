//! The PostgreSQL schema of the shared metadata, and its versioned
//! migrations.
//!
//! The tables mirror the SQLite ones (`storage/sqlite/schema.rs`, version 8)
//! with PostgreSQL types: `bigint` for seqs, sizes, times and codes,
//! `boolean` for flags, `bytea` for hashes and packed lists, `text` for
//! names. Besides them: `schema_version`, `feed_head` (the one row whose
//! lock orders the writers of every process, see [`super::PgTx`]) and
//! `processes` (who is alive). The history tables are `history.rs`'s, the
//! `contents` table the bucket's; migration 1 creates them all, so that the
//! database has one schema version.
//!
//! Migrations run in one transaction under an advisory lock, so any number
//! of processes may start at once: the first applies what is missing, the
//! others wait for it and find nothing to do.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The schema version this server writes; a database with a newer one is
/// refused.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// The advisory lock key migrations hold (any constant no other user of
/// the database takes; "syncstor" in ASCII).
const MIGRATION_LOCK: i64 = 0x7379_6e63_7374_6f72;

/// Migration 1: everything but the history and content tables.
const META_SCHEMA: &str = "
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- The head of the change log as committed by any process: writers lock
-- this row first (SELECT ... FOR UPDATE) and set it at their commit, so
-- seqs are assigned and become visible in the same order.
CREATE TABLE feed_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    head bigint  NOT NULL
);
INSERT INTO feed_head (one, head) VALUES (true, 0);

-- The manifest: one row per path per namespace, live or tombstone.
CREATE TABLE files (
    namespace  text    NOT NULL,
    path       text    COLLATE \"C\" NOT NULL,
    version    bigint  NOT NULL,
    deleted    boolean NOT NULL,
    size       bigint  NOT NULL,
    hash       bytea,
    mtime_ns   bigint  NOT NULL,
    executable boolean NOT NULL,
    client_id  text    NOT NULL,
    symlink    boolean NOT NULL DEFAULT false,
    folder     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, path)
);
CREATE INDEX files_by_hash ON files (hash) WHERE hash IS NOT NULL;

-- The change log (see the SQLite schema for the columns' meaning).
CREATE TABLE changes (
    seq          bigint  PRIMARY KEY,
    namespace    text    NOT NULL,
    path         text    COLLATE \"C\" NOT NULL,
    deleted      boolean NOT NULL,
    size         bigint  NOT NULL,
    hash         bytea,
    mtime_ns     bigint  NOT NULL,
    executable   boolean NOT NULL,
    client_id    text    NOT NULL,
    committed_ms bigint  NOT NULL,
    kind         bigint  NOT NULL DEFAULT 0,
    symlink      boolean NOT NULL DEFAULT false,
    folder       boolean NOT NULL DEFAULT false,
    lock_id          text,
    lock_client_id   text,
    lock_principal   text,
    lock_holder      text,
    lock_note        text,
    lock_acquired_ms bigint,
    lock_expires_ms  bigint,
    lock_ttl_seconds bigint,
    lock_token       bigint,
    lock_end                bigint,
    lock_ended_by_client_id text,
    lock_ended_by_principal text,
    principal     text   NOT NULL DEFAULT '',
    version_kind  bigint NOT NULL DEFAULT 0,
    moved_from    text,
    moved_to      text,
    restored_from bigint,
    detail        text
);
CREATE INDEX changes_by_namespace ON changes (namespace, seq);

-- Live locks: at most one per path.
CREATE TABLE locks (
    namespace   text   NOT NULL,
    path        text   COLLATE \"C\" NOT NULL,
    lock_id     text   NOT NULL UNIQUE,
    client_id   text   NOT NULL,
    holder      text   NOT NULL,
    note        text   NOT NULL,
    acquired_ms bigint NOT NULL,
    expires_ms  bigint NOT NULL,
    ttl_seconds bigint NOT NULL,
    token       bigint NOT NULL,
    principal   text   NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, path)
);
CREATE INDEX locks_by_expiry ON locks (expires_ms);

-- Content larger than one chunk: its chunk list.
CREATE TABLE recipes (
    hash      bytea  PRIMARY KEY,
    size      bigint NOT NULL,
    list      bytea  NOT NULL,
    prev      bytea,
    prev_runs bytea
);

CREATE TABLE recipe_chunks (
    chunk  bytea NOT NULL,
    recipe bytea NOT NULL,
    PRIMARY KEY (chunk, recipe)
);

-- The server processes over this database, as their heartbeats last said.
CREATE TABLE processes (
    id      text        PRIMARY KEY,
    address text        NOT NULL,
    head    bigint      NOT NULL,
    seen    timestamptz NOT NULL
);
";

/// Migration 2: share links (`storage/share.rs`), as SQLite's `shares`.
const SHARES_SCHEMA: &str = "
CREATE TABLE shares (
    id         text    PRIMARY KEY,
    namespace  text    NOT NULL,
    path       text    NOT NULL,
    folder     boolean NOT NULL,
    created_by text    NOT NULL,
    created_ms bigint  NOT NULL,
    expires_ms bigint  NOT NULL,
    password   text    NOT NULL,
    revoked_ms bigint  NOT NULL
);
CREATE INDEX shares_by_namespace ON shares (namespace, created_ms);
";

/// Brings the database to [`SCHEMA_VERSION`]: in one transaction under
/// [`MIGRATION_LOCK`], applies every migration it lacks; refuses a
/// database of a newer schema.
pub(super) async fn migrate(c: &mut Client) -> Result<()> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL)").await?;
    let current: i64 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "the metadata database has schema version {current}; this server understands up to {SCHEMA_VERSION}"
        )));
    }
    if current < 1 {
        tx.batch_execute(META_SCHEMA).await?;
        tx.batch_execute(super::history::SCHEMA).await?;
        tx.batch_execute(crate::storage::bucket::SCHEMA).await?;
        tracing::info!(version = 1, "created the metadata schema");
    }
    if current < 2 {
        tx.batch_execute(SHARES_SCHEMA).await?;
        tracing::info!(version = 2, "added share links to the metadata schema");
    }
    if current < 3 {
        tx.batch_execute(crate::storage::bucket::PACKS_SCHEMA).await?;
        tracing::info!(version = 3, "added content packs to the metadata schema");
    }
    if current < SCHEMA_VERSION {
        tx.execute("DELETE FROM schema_version", &[]).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION]).await?;
    }
    tx.commit().await?;
    Ok(())
}
