//! The data plane: listeners, the HTTP and TCP proxies, balancing and
//! upstream connections. Nothing here changes configuration; it only reads
//! the published [`crate::table::Table`].

pub mod body;
pub mod gateway;
pub mod http;
pub mod io;
pub mod listener;
pub mod tcp;
