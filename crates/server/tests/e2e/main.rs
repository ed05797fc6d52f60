//! End-to-end tests: real WebSocket clients against a real server on port 0.

mod common;
// Private instances of the services, for tests that restart one (shared with the adapters' tests).
#[path = "../../../backends/tests/support/mod.rs"]
mod private_services;

mod api;
mod auth;
mod binary;
mod cluster;
mod deflate;
mod failover;
mod faults;
mod history;
mod hostile;
mod kafka;
mod lifecycle;
mod limits;
mod malformed;
mod mysql_store;
mod rooms;
mod session;
mod shared_redis;
mod slow;
mod store;
mod web;
mod wire;
