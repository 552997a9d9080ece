//! The upstream HTTP/1.1 client of body-less requests, written for the
//! proxy's hot path.
//!
//! Most requests a proxy sees have no body. For those, hyper's client
//! connection was the most expensive part of a proxied request: each
//! request went through a channel and a oneshot to the connection's
//! dispatcher, and every response on a kept-alive connection got a fresh
//! 8 KiB read buffer. Profiled, it was 42 % of the user-space instructions
//! per request. So this client is ours, in two parts:
//!
//! - [`codec`]: heads and body framing on byte slices (no I/O), built on
//!   `httparse`, the parser hyper uses;
//! - [`conn`]: the connection, generic over the stream, its timers, and
//!   the response body read from it.
//!
//! Requests with a body, upgrades and HTTP/2 upstreams use hyper's client
//! (`connect.rs`); its full-duplex body handling is not repeated here.

pub mod codec;
pub mod conn;
