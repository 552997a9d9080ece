//! The server side of a TLS handshake on an accepted connection: bounded
//! in time, and with a clear outcome for a client that does not speak TLS.
//!
//! The whole handshake must finish within the listener's `header_read`
//! timeout (counted from the accept, as the first request head would be),
//! so a client that connects and stalls mid-handshake holds a socket for no
//! longer than a slowloris would. A plain-HTTP request sent to a TLS port
//! gets a readable 400 (as nginx answers it) rather than a TLS alert that
//! curl prints as garbage.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::rewind::Rewind;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// A TLS record carrying a handshake message starts with this byte.
const HANDSHAKE_RECORD: u8 = 0x16;
/// How long a plain-HTTP client's request is read before and after the 400.
const PLAIN_HTTP_READ: Duration = Duration::from_secs(1);

/// An accepted connection, with what was read of it ahead (the first
/// byte here, a PROXY header before).
pub type Client = Rewind<TcpStream>;

/// Why a connection did not become a TLS session.
#[derive(Debug)]
pub enum Refusal {
    /// The handshake did not finish in time.
    Timeout,
    /// The client sent plain HTTP; [`Refusal::finish`] answers it 400.
    PlainHttp(Client),
    /// The first bytes were neither TLS nor HTTP; closed.
    NotTls,
    /// The client closed before sending anything.
    Closed,
    /// rustls refused the handshake (bad ClientHello, no common
    /// parameters, an unknown SNI on a refusing listener…); it sent an alert.
    Failed(io::Error),
}

impl Refusal {
    /// The `reason` label of `switchyard_tls_handshake_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::PlainHttp(_) => "plain_http",
            Self::NotTls => "not_tls",
            Self::Closed => "closed",
            Self::Failed(_) => "handshake",
        }
    }
}

/// Completes the server handshake on `stream` by `deadline`.
pub async fn handshake(
    mut stream: Client,
    config: Arc<ServerConfig>,
    deadline: Instant,
) -> Result<TlsStream<Client>, Refusal> {
    if stream.buffered().is_empty() {
        match tokio::time::timeout_at(deadline, stream.fill()).await {
            Err(_) => return Err(Refusal::Timeout),
            Ok(Err(error)) => return Err(Refusal::Failed(error)),
            Ok(Ok(0)) => return Err(Refusal::Closed),
            Ok(Ok(_)) => {}
        }
    }
    let first = stream.buffered().first().copied().unwrap_or(0);
    if first != HANDSHAKE_RECORD {
        if first.is_ascii_uppercase() {
            return Err(Refusal::PlainHttp(stream));
        }
        return Err(Refusal::NotTls);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => Err(Refusal::Timeout),
        Ok(Err(error)) => Err(Refusal::Failed(error)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

impl Refusal {
    /// Ends the connection: a plain-HTTP client gets its 400 (a lingering
    /// close, so it can take a second or so); any other is dropped.
    pub async fn finish(self) {
        if let Self::PlainHttp(stream) = self {
            answer_plain_http(stream).await;
        }
    }
}

/// A 400 that says what went wrong, as a lingering close.
async fn answer_plain_http(stream: Client) {
    let answer = crate::lingering::plain_response(
        "400 Bad Request",
        "",
        "This port speaks HTTPS; send the request with https://\n",
    );
    crate::lingering::answer_and_close(stream, Some(answer.as_bytes()), PLAIN_HTTP_READ).await;
}
