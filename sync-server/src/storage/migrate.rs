//! `sync-server migrate`: copies an embedded data folder (SQLite and a blob
//! folder) into the shared backend (PostgreSQL and a bucket), so that the
//! new servers continue the same history: the same history id, seqs, change
//! log, versions, labels, locks and tombstones, and the share links. Clients that synced with the
//! old server go on against the new one without a RESET.
//!
//! Content first, then metadata:
//! - Every stored content is copied (verified as it is read) unless the
//!   bucket holds it already, so a migration that stopped half-way resumes
//!   where it was: the content is the slow part.
//! - The metadata goes in one PostgreSQL transaction: every table is
//!   emptied and filled again from the SQLite file (binary `COPY`), and the
//!   log's head is set; a migration that stops before its commit leaves
//!   nothing of it, one that ran again replaces it whole.
//!
//! The copy is by column name: each PostgreSQL table takes the columns the
//! SQLite table of the same name has (the two schemas mirror each other,
//! see `postgres/schema.rs`), converted to the PostgreSQL column's type.
//! The source must not be served meanwhile: its data folder's lock is held
//! for the whole copy.

use std::{path::Path, sync::Arc};

use rusqlite::types::Value;
use syncstore::ContentHash;
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::ToSql, types::Type};

use syncstore::chunks::{Chunker, WHOLE_MAX};

use super::{
    Store, StoreOptions,
    bucket::BucketContent,
    content::{ContentStore, Durability},
    meta::{MetaStore, Recipe},
    postgres::PgMeta,
};
use crate::error::{Error, Result};

/// The tables copied, in an order that satisfies every reference.
const TABLES: &[&str] = &[
    "meta",
    "files",
    "changes",
    "locks",
    "recipes",
    "recipe_chunks",
    "versions",
    "labels",
    "retention",
    "shares",
];

/// `meta` keys that belong to one database and are not copied.
const LOCAL_META_KEYS: &[&str] = &["schema_version", "head_floor"];

/// The `meta` key that names the history a migration into this database
/// copies (set before the content, kept after): a second run resumes only
/// the same history.
const MIGRATED_FROM: &str = "migrated_from";

/// Rows read from SQLite and sent to PostgreSQL at a time.
const ROW_BATCH: usize = 1024;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationSummary {
    /// The history id both sides now have.
    pub history_id: String,
    /// The head (last seq) both sides now have.
    pub head: u64,
    /// Contents copied into the bucket by this run.
    pub contents_copied: u64,
    /// Contents the bucket held already (from an earlier, stopped run).
    pub contents_present: u64,
    /// Bytes of content copied by this run.
    pub bytes_copied: u64,
    /// Rows copied per table, in [`TABLES`] order.
    pub rows: Vec<(String, u64)>,
}

/// Copies the embedded data folder `from` into the shared backend at
/// `meta_url` + `content_url` (see the module docs).
pub async fn migrate(from: &Path, meta_url: &str, content_url: &str) -> Result<MigrationSummary> {
    if !from.join("meta.db").is_file() {
        return Err(Error::NotFound(format!("{} holds no syncstore data", from.display())));
    }
    // Holds the data folder's lock: no server may write it meanwhile.
    let source = Store::open(from, StoreOptions::default()).await?;
    let source_content = source.content_store();
    let pg = PgMeta::connect(meta_url).await?;
    let pool = pg.pool();
    let bucket = BucketContent::open(content_url, pool.clone()).await?;
    let history_id = source.history_id();
    let head = source.head();

    let client = pool.get().await.map_err(|e| Error::Unavailable(format!("the metadata database: {e}")))?;
    claim_target(&client, &history_id).await?;
    drop(client);

    let mut summary = MigrationSummary { history_id: history_id.clone(), head, ..Default::default() };
    let recipes = copy_content(source_content, &bucket, &mut summary).await?;

    let mut client =
        pool.get().await.map_err(|e| Error::Unavailable(format!("the metadata database: {e}")))?;
    let tx = client.transaction().await?;
    // Ordered with every writer of the log: no server may be running on
    // the target while it is filled.
    tx.execute("SELECT head FROM feed_head FOR UPDATE", &[]).await?;
    for table in TABLES.iter().rev() {
        if *table == "meta" {
            tx.execute(
                "DELETE FROM meta WHERE key <> $1 AND key <> ALL($2)",
                &[&MIGRATED_FROM, &LOCAL_META_KEYS],
            )
            .await?;
        } else {
            tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
        }
    }
    let db = from.join("meta.db");
    for table in TABLES {
        let rows = copy_table(&tx, &db, table).await?;
        tracing::info!(table, rows, "metadata copied");
        summary.rows.push(((*table).to_owned(), rows));
    }
    let head_i64 = i64::try_from(head).map_err(|_| Error::Internal(format!("head {head} out of range")))?;
    tx.execute("UPDATE feed_head SET head = $1", &[&head_i64]).await?;
    tx.commit().await?;
    // Content stored whole by a release before chunking, now cut into
    // chunks: its recipe (a run that stops here is run again).
    for recipe in recipes {
        pg.put_recipe(recipe).await?;
    }
    Ok(summary)
}

/// Refuses a target that holds another history (or a history not copied
/// by a migration), and marks it as the target of this one.
async fn claim_target(c: &tokio_postgres::Client, history_id: &str) -> Result<()> {
    let marked: Option<String> =
        c.query_opt("SELECT value FROM meta WHERE key = $1", &[&MIGRATED_FROM]).await?.map(|r| r.get(0));
    let head: i64 = c.query_one("SELECT head FROM feed_head", &[]).await?.get(0);
    let files: i64 = c.query_one("SELECT count(*) FROM (SELECT 1 FROM files LIMIT 1) f", &[]).await?.get(0);
    match marked {
        Some(id) if id == history_id => Ok(()),
        Some(id) => Err(Error::FailedPrecondition(format!(
            "the metadata database holds a migration of another history ({id}); use an empty database"
        ))),
        None if head != 0 || files != 0 => Err(Error::FailedPrecondition(
            "the metadata database is in use (it has changes or files); migrate into an empty database"
                .into(),
        )),
        None => {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&MIGRATED_FROM, &history_id],
            )
            .await?;
            Ok(())
        }
    }
}

/// Copies every stored content the bucket lacks, each read verified and
/// streamed (never whole in memory beyond one piece). Content larger than
/// one chunk (stored whole by a release before chunking; a bucket keeps no
/// content that large) goes as its chunks: their recipes are returned, for
/// the metadata once it is copied.
async fn copy_content(
    source: &Arc<dyn ContentStore>,
    target: &BucketContent,
    summary: &mut MigrationSummary,
) -> Result<Vec<Recipe>> {
    let all: Vec<ContentHash> = source.list().await?;
    let total = all.len();
    let mut recipes = Vec::new();
    // Content appended to packs and not durable yet: made durable every
    // so often, and before any metadata is copied.
    let mut pending = Vec::new();
    for (i, hash) in all.into_iter().enumerate() {
        if pending.len() >= 1000 {
            target.ensure_durable(&std::mem::take(&mut pending)).await?;
        }
        let Some(size) = source.head(&hash).await? else { continue };
        if size > WHOLE_MAX {
            let Some(reader) = source.get(&hash, size).await? else { continue };
            recipes.push(copy_chunked(reader, hash, size, target, summary, &mut pending).await?);
            continue;
        }
        if target.head(&hash).await? == Some(size) {
            summary.contents_present += 1;
            continue;
        }
        let Some(mut reader) = source.get(&hash, size).await? else { continue };
        let mut upload = target.upload().await?;
        while let Some(piece) = reader.next_chunk(syncstore::limits::MAX_CHUNK).await? {
            upload.write(piece).await?;
        }
        if upload.complete(hash, size).await?.place().await? == Durability::Pending {
            pending.push(hash);
        }
        summary.contents_copied += 1;
        summary.bytes_copied += size;
        if (i + 1) % 1000 == 0 {
            tracing::info!(done = i + 1, total, "content copied");
        }
    }
    target.ensure_durable(&pending).await?;
    Ok(recipes)
}

/// Cuts content stored whole into chunks as it is read (the same cut a
/// client makes) and stores each chunk the bucket lacks; returns its recipe.
async fn copy_chunked(
    mut reader: Box<dyn super::ContentReader>,
    hash: ContentHash,
    size: u64,
    target: &BucketContent,
    summary: &mut MigrationSummary,
    pending: &mut Vec<ContentHash>,
) -> Result<Recipe> {
    let mut chunker = Chunker::new(size);
    let mut list = Vec::new();
    let mut done = false;
    while !done {
        match reader.next_chunk(syncstore::limits::MAX_CHUNK).await? {
            Some(piece) => chunker.push(&piece),
            None => {
                chunker.finish();
                done = true;
            }
        }
        while let Some(chunk) = chunker.next_chunk() {
            list.push(chunk.chunk);
            match target.put_whole(chunk.chunk.hash, chunk.data).await? {
                Some(durability) => {
                    if durability == Durability::Pending {
                        pending.push(chunk.chunk.hash);
                    }
                    summary.contents_copied += 1;
                    summary.bytes_copied += u64::from(chunk.chunk.size);
                }
                None => summary.contents_present += 1,
            }
        }
    }
    // The reader checked the whole against its name before its last piece.
    debug_assert_eq!(chunker.content(), (hash, size));
    Ok(Recipe { hash, size, list, prev: None })
}

/// Copies one table from the SQLite file `db` into the transaction's
/// table of the same name: the columns both have, converted to the
/// PostgreSQL column's type. Returns the rows copied.
async fn copy_table(tx: &tokio_postgres::Transaction<'_>, db: &Path, table: &str) -> Result<u64> {
    let pg_columns: Vec<(String, Type)> = {
        let rows = tx
            .query(
                "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table],
            )
            .await?;
        rows.iter()
            .filter_map(|r| {
                let oid: u32 = r.get(1);
                Type::from_oid(oid).map(|t| (r.get::<_, String>(0), t))
            })
            .collect()
    };
    let (path, name) = (db.to_owned(), table.to_owned());
    let sqlite_columns: Vec<String> = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{name}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(names)
    })
    .await??;
    let columns: Vec<(String, Type)> =
        pg_columns.into_iter().filter(|(c, _)| sqlite_columns.iter().any(|s| s == c)).collect();
    if columns.is_empty() {
        return Ok(0);
    }
    let names = columns.iter().map(|(c, _)| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let filter = if table == "meta" {
        let keys =
            LOCAL_META_KEYS.iter().chain([&MIGRATED_FROM]).map(|k| format!("'{k}'")).collect::<Vec<_>>();
        format!(" WHERE key NOT IN ({})", keys.join(", "))
    } else {
        String::new()
    };
    let select = format!("SELECT {names} FROM {table}{filter}");

    // A blocking reader streams the rows over a bounded channel.
    let (rows_tx, mut rows_rx) = tokio::sync::mpsc::channel::<Result<Vec<Vec<Value>>>>(4);
    let (db, width) = (db.to_owned(), columns.len());
    let reader = tokio::task::spawn_blocking(move || {
        let read = || -> Result<()> {
            let conn =
                rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let mut stmt = conn.prepare(&select)?;
            let mut rows = stmt.query([])?;
            let mut batch = Vec::with_capacity(ROW_BATCH);
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(row.get::<_, Value>(i)?);
                }
                batch.push(values);
                if batch.len() == ROW_BATCH && rows_tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err()
                {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = rows_tx.blocking_send(Ok(batch));
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = rows_tx.blocking_send(Err(e));
        }
    });

    let types: Vec<Type> = columns.iter().map(|(_, t)| t.clone()).collect();
    let sink = tx.copy_in(&format!("COPY {table} ({names}) FROM STDIN BINARY")).await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let mut count = 0u64;
    while let Some(batch) = rows_rx.recv().await {
        for values in batch? {
            let converted = values
                .into_iter()
                .zip(&columns)
                .map(|(v, (column, ty))| convert(table, column, ty, v))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> =
                converted.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&refs).await?;
            count += 1;
        }
    }
    reader.await?;
    writer.finish().await?;
    Ok(count)
}

/// One SQLite value as the PostgreSQL column type `ty` takes it.
fn convert(table: &str, column: &str, ty: &Type, value: Value) -> Result<Box<dyn ToSql + Sync + Send>> {
    let bad = |v: &Value| Error::Internal(format!("{table}.{column}: cannot copy {v:?} into a {ty} column"));
    Ok(match (value, ty) {
        (Value::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Value::Null, t) if *t == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Value::Null, t) if *t == Type::TEXT => Box::new(None::<String>),
        (Value::Integer(i), t) if *t == Type::INT8 => Box::new(i),
        (Value::Integer(i), t) if *t == Type::BOOL => Box::new(i != 0),
        (Value::Integer(i), t) if *t == Type::TEXT => Box::new(i.to_string()),
        (Value::Blob(b), t) if *t == Type::BYTEA => Box::new(b),
        (Value::Text(s), t) if *t == Type::TEXT => Box::new(s),
        (Value::Text(s), t) if *t == Type::BYTEA => Box::new(s.into_bytes()),
        (v, _) => return Err(bad(&v)),
    })
}
