//! Switchyard: a load-balancer sidecar that reconfigures itself while it runs.
//!
//! # Layout
//!
//! A control plane turns the config file and what discovery finds into
//! immutable snapshots; the data plane serves traffic from the snapshot it
//! loaded (one atomic load per request or TCP connection). It waits for
//! the control task in one case only: the first request of a gateway route
//! to a service whose backend is not made yet.
//!
//! ```text
//!  config file ─┐                   Table (ArcSwap)
//!  DNS, Consul ─┼─▶ control ─compile─▶ table ─────────▶ proxy ─pick─▶ upstream ─▶ servers
//!  kv directory ┘   (one task)          └─ EndpointSet (ArcSwap) per backend     │
//!                    │ templates, status board                                  │
//!                    └───────────────────────▶ admin ◀──────── metrics ─────────┘
//! ```
//!
//! Control plane (never in a request's call stack):
//!
//! - [`config`]: the file's serde model and its validation into a
//!   [`config::Config`], every problem at once, each with its key path;
//! - [`control`]: the one task that applies every change in order (SIGHUP,
//!   `POST /reload`, file changes, discovery updates, template renders,
//!   gateway backends) and keeps the last good table when a change is bad;
//! - [`discovery`]: DNS names, Consul watches, the kv directory and tag
//!   routes, which change what is routed to; and the registration of our
//!   own services with the local Consul agent;
//! - [`template`]: consul-template style rendering; an output the config
//!   includes is applied by a reload;
//! - [`table`]: the compiled, immutable snapshot the data plane reads
//!   (listeners, routes, backends) and the registry of gateway backends.
//!
//! Data plane:
//!
//! - [`proxy`]: listeners and the HTTP and TCP proxies; a request or a TCP
//!   connection loads the table once and is routed by that version;
//! - [`upstream`]: live state per (backend, address), which outlives every
//!   swap: in-flight counts, health checks and ejection, balancing,
//!   connections, pools and the HTTP/1 client.
//!
//! Around them: [`app`] wires it all in-process (`main.rs`, which adds the
//! command line and signals, and the tests start it); [`sockets`] owns
//! every listening socket, and [`upgrade`] hands them to a new binary;
//! [`admin`] serves `/metrics`, `/healthz`, `/status`, `POST /reload` and
//! `POST /upgrade`; [`metrics`] holds
//! the Prometheus handles, resolved when a table is compiled; [`logging`]
//! sets up output; [`access_log`] writes one line per request or
//! connection from a thread of its own, off a bounded queue the data path
//! never waits on. Leaves any module may use: [`atomic_file`], [`backoff`],
//! [`error_chain`], [`headers`], [`stall`].
//!
//! Two levels of swap keep the request path cheap. A config or route change
//! (the file, Consul tag routes, an included template output) compiles a
//! new [`table::Table`], binds new listeners, and publishes the table with
//! one atomic store. A change of a backend's addresses (DNS, Consul health)
//! replaces only that backend's endpoint set, with no recompile. Either
//! way, requests under way finish on what they loaded.

pub mod access_log;
pub mod admin;
pub mod allocator;
pub mod app;
pub mod atomic_file;
pub mod backoff;
pub mod config;
pub mod control;
pub mod discovery;
pub mod error_chain;
pub mod headers;
pub mod lingering;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod sockets;
pub mod stall;
pub mod table;
pub mod template;
pub mod tls;
pub mod upgrade;
pub mod upstream;
