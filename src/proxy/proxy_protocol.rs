//! The PROXY protocol (HAProxy's; v1 text, v2 binary with TLVs), read on
//! listeners behind another load balancer and written to backends that
//! want the client's address.
//!
//! Parsing and encoding are the `ppp` crate's; this module decides who may
//! send a header (only the listener's `trusted` networks: anyone else could
//! claim any address) and turns the header into the client address used for
//! logs, `X-Forwarded-For` and `hash` balancing.

use std::io;
use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::rewind::Rewind;

/// Why a connection's PROXY header was not accepted; the reasons of
/// `switchyard_proxy_protocol_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefused {
    /// The connection came from outside the listener's `trusted` networks.
    Untrusted,
    Timeout,
    Closed,
    /// Not a PROXY header, or a broken one.
    Malformed,
}

impl HeaderRefused {
    pub const REASONS: [&'static str; 4] = ["untrusted", "timeout", "closed", "malformed"];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Malformed => "malformed",
        }
    }
}

/// Reads the PROXY header at the start of `stream` by `deadline`. Returns
/// the client's address, or `None` when the header names none (v1
/// `UNKNOWN`, v2 `LOCAL`: a load balancer's own health check), in which
/// case the connection's own peer is the client.
pub async fn read_header<S>(
    stream: &mut Rewind<S>,
    deadline: Instant,
) -> Result<Option<SocketAddr>, HeaderRefused>
where
    S: AsyncRead + Unpin,
{
    loop {
        let buffered = stream.buffered();
        let judge = match v1_line(buffered) {
            V1Line::Broken => return Err(HeaderRefused::Malformed),
            V1Line::Open => false,
            V1Line::Whole | V1Line::NotV1 => !buffered.is_empty(),
        };
        if judge {
            let parsed = HeaderResult::parse(buffered);
            if !parsed.is_incomplete() {
                let (length, client) = match parsed {
                    HeaderResult::V1(Ok(header)) => (header.header.len(), v1_client(&header)),
                    HeaderResult::V2(Ok(header)) => (header.header.len(), v2_client(&header)),
                    HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
                        return Err(HeaderRefused::Malformed);
                    }
                };
                stream.consume(length);
                return Ok(client);
            }
        }
        match tokio::time::timeout_at(deadline, stream.fill()).await {
            Err(_) => return Err(HeaderRefused::Timeout),
            Ok(Ok(0)) => return Err(HeaderRefused::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(HeaderRefused::Malformed),
        }
    }
}

/// The longest v1 header line, CRLF included (the spec's limit, and ppp's).
const V1_MAX_LENGTH: usize = 107;
/// How a v2 header starts.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Where the v1 line at the start of a connection stands.
enum V1Line {
    /// A v2 header (or the start of one), or nothing yet: for ppp.
    NotV1,
    /// Neither `PROXY` nor a v2 signature: no header.
    Broken,
    /// `PROXY…`, still without the end that ppp looks at.
    Open,
    /// `PROXY…` up to the byte after its first CR, or at the length limit.
    Whole,
}

/// Judges v1 lines here before ppp, whose answer on a partial buffer
/// depends on where it was cut: some prefixes of a valid header (cut right
/// after the source port's space) are "invalid", and some text that is no
/// header at all is "partial", because ppp looks at the byte after the
/// first CR. A line handed to ppp only once that byte has arrived gets
/// the same answer however the network split it.
fn v1_line(buffered: &[u8]) -> V1Line {
    let n = buffered.len();
    if buffered[..n.min(V2_SIGNATURE.len())] == V2_SIGNATURE[..n.min(V2_SIGNATURE.len())] {
        return V1Line::NotV1;
    }
    if buffered[..n.min(5)] != b"PROXY"[..n.min(5)] {
        return V1Line::Broken;
    }
    let ended = buffered
        .iter()
        .position(|&b| b == b'\r')
        .is_some_and(|cr| cr + 1 < n);
    if ended || n >= V1_MAX_LENGTH {
        V1Line::Whole
    } else {
        V1Line::Open
    }
}

fn v1_client(header: &v1::Header<'_>) -> Option<SocketAddr> {
    match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// Which header a backend is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

/// The header telling a backend that `client` connected to `local`.
pub fn encode(version: SendProxy, client: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
    // Both must be of one family; a v4 client on a v6 socket is mapped.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => match l.ip().to_ipv4_mapped() {
            Some(ip) => (client, SocketAddr::new(ip.into(), l.port())),
            None => (to_v6(client), local),
        },
        (SocketAddr::V6(_), SocketAddr::V4(_)) => (client, to_v6(local)),
        _ => (client, local),
    };
    match version {
        SendProxy::V1 => {
            let addresses = match (client, local) {
                (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                    v1::Addresses::new_tcp4(*c.ip(), *l.ip(), c.port(), l.port())
                }
                (c, l) => {
                    let (SocketAddr::V6(c6), SocketAddr::V6(l6)) = (to_v6(c), to_v6(l)) else {
                        return Err(io::Error::other("mixed address families"));
                    };
                    v1::Addresses::new_tcp6(*c6.ip(), *l6.ip(), c6.port(), l6.port())
                }
            };
            Ok(addresses.to_string().into_bytes())
        }
        SendProxy::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build(),
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderRefused>, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut a, bytes)
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(b);
        let result = read_header(&mut r, Instant::now() + std::time::Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest).await;
        (result, rest)
    }

    #[tokio::test]
    async fn headers_written_are_read_back_and_what_follows_is_kept() {
        let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:443".parse().unwrap();
        for version in [SendProxy::V1, SendProxy::V2] {
            let mut bytes = encode(version, client, local).unwrap();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (result, rest) = parse(&bytes).await;
            assert_eq!(result, Ok(Some(client)), "{version:?}");
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let bytes = encode(SendProxy::V1, v6, local).unwrap();
        assert_eq!(parse(&bytes).await.0, Ok(Some(v6)));
    }

    #[tokio::test]
    async fn unknown_local_and_broken_headers() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\nx").await.0, Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n").await.0,
            Err(HeaderRefused::Malformed)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").await.0,
            Err(HeaderRefused::Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4").await.0,
            Err(HeaderRefused::Closed)
        );
        assert_eq!(parse(b"").await.0, Err(HeaderRefused::Closed));
    }

    /// Found by fuzzing (fuzz/regressions/proxy_protocol/): a v1 header
    /// arriving in pieces was refused when one ended right after the
    /// source port's space.
    #[tokio::test]
    async fn a_v1_header_split_anywhere_is_read() {
        /// Hands out one piece per read, as the network may.
        struct Pieces(Vec<Vec<u8>>);
        impl AsyncRead for Pieces {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                if !self.0.is_empty() {
                    let piece = self.0.remove(0);
                    buf.put_slice(&piece);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        let header = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET";
        let client: SocketAddr = "192.168.0.1:56324".parse().unwrap();
        for cut in 1..header.len() {
            let pieces = Pieces(vec![header[..cut].to_vec(), header[cut..].to_vec()]);
            let mut r = Rewind::new(pieces);
            let deadline = Instant::now() + std::time::Duration::from_secs(1);
            let result = read_header(&mut r, deadline).await;
            assert_eq!(result, Ok(Some(client)), "cut after {cut} bytes");
        }
        // Not a header, whatever comes after its first CR: ppp took the
        // whole of it for a partial header ("P" after the CR), and waited.
        assert_eq!(
            parse(b"P TCP4 192.168\rPROXY UNKNOWN\r\n").await.0,
            Err(HeaderRefused::Malformed)
        );
    }
}
