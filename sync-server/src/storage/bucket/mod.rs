//! The shared content backend: an S3-compatible bucket, with small content
//! inline in PostgreSQL.

/// PLACEHOLDER until the bucket backend is merged (that branch owns this
/// file): the `contents` table's DDL, which the metadata migration runs.
pub(crate) const SCHEMA: &str = "";
