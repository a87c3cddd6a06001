//! End-to-end tests: the real `appld` binary, the real demo model, a real gRPC client.
//!
//! Each test starts its own daemon on port 0 and a temporary Unix socket, so tests run in
//! parallel and leave nothing behind.

mod audit;
mod audit_rpc;
mod bad_input;
mod batching;
mod bench;
mod diagnose;
mod generate;
mod gpu_health;
mod harness;
mod http_client;
mod import;
mod lifecycle;
mod models_admin;
mod monitoring;
mod openai;
mod ops_common;
mod queue;
mod recovery;
mod reflection;
mod security;
mod sharing;
mod sizing;
mod startup;
mod systemd;
