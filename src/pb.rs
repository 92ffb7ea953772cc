//! Code generated from `proto/syncstore/v1/*.proto` by `build.rs`.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("syncstore.v1");

/// Encoded `FileDescriptorSet` of the whole API, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/syncstore_descriptor.bin"));
