//! The shared metadata backend: PostgreSQL, written by any number of
//! server processes at once (see [`super::meta::SharedMeta`]).
