//! Share links in PostgreSQL (the `shares` table, migration 2).

use tokio_postgres::{Client, Row, types::Type};

use crate::error::Result;
use crate::storage::Share;

const COLUMNS: &str = "id, namespace, path, folder, created_by, created_ms, expires_ms, password, revoked_ms";

fn from_row(r: &Row) -> Share {
    Share {
        id: r.get(0),
        namespace: r.get(1),
        path: r.get(2),
        folder: r.get(3),
        created_by: r.get(4),
        created_ms: r.get(5),
        expires_ms: r.get(6),
        password: r.get(7),
        revoked_ms: r.get(8),
    }
}

pub(super) async fn put(c: &Client, s: &Share) -> Result<()> {
    c.execute(
        &format!("INSERT INTO shares ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        &[
            &s.id,
            &s.namespace,
            &s.path,
            &s.folder,
            &s.created_by,
            &s.created_ms,
            &s.expires_ms,
            &s.password,
            &s.revoked_ms,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn get(c: &Client, id: &str) -> Result<Option<Share>> {
    let row = c
        .query_typed_opt(&format!("SELECT {COLUMNS} FROM shares WHERE id = $1"), &[(&id, Type::TEXT)])
        .await?;
    Ok(row.as_ref().map(from_row))
}

pub(super) async fn of_namespace(c: &Client, ns: &str) -> Result<Vec<Share>> {
    let rows = c
        .query_typed(
            &format!("SELECT {COLUMNS} FROM shares WHERE namespace = $1 ORDER BY created_ms DESC, id DESC"),
            &[(&ns, Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

pub(super) async fn revoke(c: &Client, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
    c.execute(
        "UPDATE shares SET revoked_ms = $3 WHERE id = $1 AND namespace = $2 AND revoked_ms = 0",
        &[&id, &ns, &at_ms],
    )
    .await?;
    let found: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM shares WHERE id = $1 AND namespace = $2)", &[&id, &ns])
        .await?
        .get(0);
    Ok(found)
}
