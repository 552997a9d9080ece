//! Switchyard: a load-balancer sidecar that reconfigures itself while it runs.
//!
//! ```text
//!  config file ─▶ control (load → validate → compile → publish) ─ArcSwap─▶ proxy
//!                        │                                                  │
//!                        └──────────────▶ admin (status, metrics) ◀─────────┘
//! ```
//!
//! [`app::App`] runs everything in-process; `main.rs` is only the command line.

pub mod admin;
pub mod app;
pub mod atomic_file;
pub mod backoff;
pub mod config;
pub mod control;
pub mod discovery;
pub mod error_chain;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod stall;
pub mod table;
pub mod template;
pub mod upstream;
