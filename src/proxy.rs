//! The data plane's client side: listeners and the HTTP and TCP proxies
//! that serve the connections they accept.
//!
//! ```text
//! listener ─accept─▶ http | tcp ─route (Table)─▶ crate::upstream ─▶ server
//!                        ▲                              │
//!                        └──── body.rs: response ◀──────┘
//! ```
//!
//! Each request (HTTP) or connection (TCP) loads the published
//! [`crate::table::Table`] once and is routed by it to the end; nothing here
//! compiles or publishes a table. Choosing an endpoint and talking to it
//! (balancing, health, pools, the HTTP/1 client) is [`crate::upstream`]'s
//! job. The control task meets this module at two points only: it binds,
//! keeps and drains the [`listener`] set on each reload, and it makes the
//! backends that gateway routes ask for (`table::gateway`).

pub mod body;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod io;
pub mod listener;
pub mod proxy_protocol;
pub mod rewind;
pub mod tcp;
pub mod trace;
pub mod workers;
