//! Real services the tests and benchmarks run a scaled-out server against,
//! started on loopback in a temp folder and stopped with their handle (or,
//! should the test process die, by a watcher that outlives it by at most a
//! second): PostgreSQL 15 from the distribution ([`postgres`]) and an
//! S3-compatible server built from crates.io ([`s3`]). Not used by the
//! server itself.

pub mod postgres;
pub mod s3;
