//! The `roomcast` server: configuration, adapter wiring, HTTP and WebSocket, and the command
//! line. The library form exists so that end-to-end tests can start a real server in-process.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod keys;
pub mod roles;
pub mod secret;
pub mod web;
