//! Live endpoint state and the connections to upstream servers.
//!
//! Everything here lives per (backend, address) and outlives config swaps:
//! a [`state::EndpointState`] holds in-flight counts, health, ejection and
//! pooled connections; the immutable snapshots in `table` point at it.
//!
//! ```text
//! table::Backend ─▶ select::EndpointSet ─pick─▶ state::EndpointState
//!                                                  ├─ health: checks, ejection
//!                                                  └─ pools ─▶ connections
//! ```
//!
//! - `state`: the per-endpoint state and its in-flight guard;
//! - `health`: active health checks and passive ejection, together;
//! - `select`: endpoint sets and the balancing algorithms;
//! - `body`: the request body sent upstream;
//! - `connect`: TCP connects, hyper's client connections, the pools;
//! - `pool`: most-recent-first idle connections, per thread;
//! - `h1`: our HTTP/1.1 client of body-less requests (codec, connection).
//!
//! Nothing here knows about routes, listeners or tables.

pub mod body;
pub mod connect;
pub mod h1;
pub mod health;
pub mod pool;
pub mod select;
pub mod state;
pub mod tls;
