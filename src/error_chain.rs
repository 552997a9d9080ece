//! An error together with its causes, for logs and `/status`.
//!
//! `std::error::Error` keeps the causes in [`source()`](Error::source), but
//! `Display` shows only the outermost message: "connecting to 10.0.0.1:80"
//! without the "connection refused" below it. [`ErrorChain`] writes the
//! whole chain on one line; [`sources`] walks it, for the "is this error
//! caused by X" checks (`downcast_ref` on each link).
//!
//! A leaf module: it knows no other part of Switchyard, so any module can
//! use it without an import cycle.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `: `,
/// as in `connecting to 10.0.0.1:80: Connection refused (os error 111)`.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain = sources(self.0);
        if let Some(first) = chain.next() {
            write!(f, "{first}")?;
        }
        chain.try_for_each(|cause| write!(f, ": {cause}"))
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `error`, then its source, then that one's source, and so on.
pub fn sources<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to {0}")]
    struct Connect(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Request(#[source] Connect);

    fn refused() -> Request {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        Request(Connect("10.0.0.1:80", io))
    }

    #[test]
    fn displays_every_cause_in_order() {
        let e = refused();
        assert_eq!(
            ErrorChain(&e).to_string(),
            "request failed: connecting to 10.0.0.1:80: refused"
        );
        let alone = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&alone).to_string(), "alone");
    }

    #[test]
    fn sources_find_a_cause_by_type() {
        let e = refused();
        assert_eq!(sources(&e).count(), 3);
        let io = sources(&e).find_map(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(!sources(&e).any(|e| e.is::<std::fmt::Error>()));
    }
}
