//! Reads a client's TLS ClientHello without terminating TLS, for routing
//! on its SNI name (HAProxy's `req.ssl_sni`). The bytes are read ahead
//! into the connection's [`Rewind`] and stay there, so the backend that
//! does the handshake receives them unchanged.
//!
//! rustls' `Acceptor` parses the hello (records, fragments, extensions),
//! so no TLS parsing is written here.

use tokio::io::AsyncRead;
use tokio::time::Instant;

use crate::proxy::rewind::Rewind;

/// Why no ClientHello was read; the reasons of
/// `switchyard_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHello {
    Timeout,
    NotTls,
    Closed,
    /// Records that are TLS but not a usable ClientHello, or one larger
    /// than the read-ahead limit.
    Malformed,
}

impl NoHello {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::NotTls => "not_tls",
            Self::Closed => "closed",
            Self::Malformed => "handshake",
        }
    }
}

/// Reads ahead on `stream` until a whole ClientHello is in, by `deadline`;
/// returns its SNI name, if it has one. Nothing is consumed.
pub async fn read_client_hello<S>(
    stream: &mut Rewind<S>,
    deadline: Instant,
) -> Result<Option<String>, NoHello>
where
    S: AsyncRead + Unpin,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        let ahead = stream.buffered();
        if let Some(&first) = ahead.first()
            && first != 0x16
        {
            return Err(NoHello::NotTls);
        }
        let mut new = &ahead[fed..];
        fed = ahead.len();
        while !new.is_empty() {
            if acceptor.read_tls(&mut new).is_err() {
                return Err(NoHello::Malformed);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_owned));
            }
            Ok(None) => {}
            Err(_) => return Err(NoHello::Malformed),
        }
        match tokio::time::timeout_at(deadline, stream.fill()).await {
            Err(_) => return Err(NoHello::Timeout),
            Ok(Ok(0)) => return Err(NoHello::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(NoHello::Malformed),
        }
    }
}
