//! Sources that change a backend's endpoints while Switchyard runs.
//!
//! Discovery never rebuilds routes: it replaces the endpoint set of the
//! backends that use a changed source (the second level of swap in the
//! design), and the control task does the replacing so that config reloads
//! and discovery updates are applied one at a time, in order.

pub mod consul;
pub mod dns;
