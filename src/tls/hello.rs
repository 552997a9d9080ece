//! Reads a client's TLS ClientHello without terminating TLS, for routing
//! on its SNI name (HAProxy's `req.ssl_sni`): the bytes read are kept to
//! be sent on, unchanged, to the backend that will do the handshake.
//!
//! rustls' `Acceptor` parses the hello (records, fragments, extensions),
//! so no TLS parsing is written here.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// A ClientHello larger than this is refused (the largest seen in practice,
/// with post-quantum key shares, are under 4 KiB).
const MAX_HELLO_BYTES: usize = 64 * 1024;

/// What the client sent up to and including its ClientHello.
pub struct Hello {
    /// The SNI name, if the client sent one.
    pub sni: Option<String>,
    /// Every byte read, to be written to the backend first.
    pub bytes: Vec<u8>,
}

/// Why no ClientHello was read; the reasons of
/// `switchyard_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHello {
    Timeout,
    NotTls,
    Closed,
    /// Records that are TLS but not a usable ClientHello.
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

/// Reads from `stream` until a whole ClientHello is in, within `limit`.
pub async fn read_client_hello<S>(stream: &mut S, limit: Duration) -> Result<Hello, NoHello>
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + limit;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(NoHello::Timeout),
            Ok(Err(_) | Ok(0)) => return Err(NoHello::Closed),
            Ok(Ok(n)) => n,
        };
        if bytes.is_empty() && chunk[0] != 0x16 {
            return Err(NoHello::NotTls);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_HELLO_BYTES {
            return Err(NoHello::Malformed);
        }
        let mut fed = &chunk[..n];
        while !fed.is_empty() {
            if acceptor.read_tls(&mut fed).is_err() {
                return Err(NoHello::Malformed);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Hello { sni, bytes });
            }
            Ok(None) => {}
            Err(_) => return Err(NoHello::Malformed),
        }
    }
}
