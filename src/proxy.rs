//! The data plane: listeners, the HTTP and TCP proxies, balancing and
//! upstream connections. Nothing here changes configuration; it only reads
//! the published [`crate::table::Table`].

pub mod balance;
pub mod body;
pub mod gateway;
pub mod health;
pub mod http;
pub mod inline;
pub mod io;
pub mod listener;
pub mod tcp;
pub mod upstream;
