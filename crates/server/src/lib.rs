//! switchyard's server: the OpenAI-compatible HTTP API over the engines and
//! the router. A library so that handlers can be tested in-process; the
//! `switchyard` binary (`main.rs`) is the CLI over it.
//!
//! Floors run one way: `routes → preview → routed → remote → job → record → state →
//! pool → {openai, config, error, metrics, eval}`.

pub mod access;
pub mod cascade;
pub mod config;
pub mod error;
pub mod eval;
pub mod job;
pub mod metrics;
pub mod openai;
#[cfg(feature = "otel")]
pub mod otel;
pub mod pool;
pub mod preview;
pub mod record;
pub mod remote;
pub mod routed;
pub mod routes;
pub mod startup;
pub mod state;
