//! Share links in SQLite (the `shares` table).

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Result;
use crate::storage::Share;

const COLUMNS: &str = "id, namespace, path, folder, created_by, created_ms, expires_ms, password, revoked_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Share> {
    Ok(Share {
        id: r.get(0)?,
        namespace: r.get(1)?,
        path: r.get(2)?,
        folder: r.get(3)?,
        created_by: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        password: r.get(7)?,
        revoked_ms: r.get(8)?,
    })
}

pub(super) fn put(c: &Connection, s: &Share) -> Result<()> {
    c.execute(
        &format!("INSERT INTO shares ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            s.id,
            s.namespace,
            s.path,
            s.folder,
            s.created_by,
            s.created_ms,
            s.expires_ms,
            s.password,
            s.revoked_ms
        ],
    )?;
    Ok(())
}

pub(super) fn get(c: &Connection, id: &str) -> Result<Option<Share>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM shares WHERE id = ?1"))?;
    Ok(stmt.query_row([id], from_row).optional()?)
}

pub(super) fn of_namespace(c: &Connection, ns: &str) -> Result<Vec<Share>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM shares WHERE namespace = ?1 ORDER BY created_ms DESC, id DESC"
    ))?;
    let rows = stmt.query_map([ns], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn revoke(c: &Connection, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
    c.execute(
        "UPDATE shares SET revoked_ms = ?3 WHERE id = ?1 AND namespace = ?2 AND revoked_ms = 0",
        params![id, ns, at_ms],
    )?;
    let found: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM shares WHERE id = ?1 AND namespace = ?2)",
        params![id, ns],
        |r| r.get(0),
    )?;
    Ok(found)
}
