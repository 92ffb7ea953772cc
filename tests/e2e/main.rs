//! End-to-end tests: real servers and real clients on loopback sockets and
//! temp folders, waiting on conditions with deadlines.

// A test binary exports nothing; its helpers are `pub` for its modules.
#![allow(unreachable_pub)]

mod api;
mod badinput;
mod bandwidth;
mod browser;
mod chunked_server;
mod contract;
mod control;
mod delta;
mod diskfull;
mod edges;
mod folder;
mod grpcurl;
mod harness;
mod history;
mod history_client;
mod history_moves;
mod history_replica;
mod integrity;
mod lanes;
mod locks;
mod malicious;
mod migrate;
mod model;
mod modes;
mod ops;
mod python;
mod replica_link;
mod replication;
mod replication_chunks;
mod scaleout;
mod security;
mod selective;
mod sync;
mod upgrade;
mod uploads;
mod web;
