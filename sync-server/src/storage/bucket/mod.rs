//! The shared content backend: an S3-compatible bucket, with small content
//! inline in PostgreSQL.
