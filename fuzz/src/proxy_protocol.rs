//! The PROXY protocol header a trusted load balancer sends first on a
//! connection (`proxy::proxy_protocol`, v1 text and v2 binary with TLVs,
//! parsed by the `ppp` crate), read the way a listener reads it: through
//! the connection's read-ahead buffer, as the bytes arrive.
//!
//! Input: the first bytes of a connection. Checked: a header is accepted
//! or refused, never a panic; what follows an accepted header is left
//! untouched for the HTTP or TCP proxy; and reading the same bytes in
//! small pieces gives the same result.

use switchyard::proxy::proxy_protocol::read_header;
use tokio::runtime::Runtime;

pub struct Harness {
    rt: Runtime,
}

impl Harness {
    pub fn start() -> Self {
        Self {
            rt: super::runtime(),
        }
    }

    pub fn run(&mut self, data: &[u8]) {
        // More than the read-ahead limit (16 KiB) is never looked at; the
        // cap keeps every byte within the pipe's capacity.
        let data = &data[..data.len().min(32 * 1024)];
        let whole = self.rt.block_on(read(data, data.len().max(1)));
        let split = self.rt.block_on(read(data, 7));
        assert_eq!(whole, split, "one read and many reads disagree");
        if let (Ok(_), rest) = &whole {
            assert!(data.ends_with(rest), "bytes after the header were changed");
        }
    }
}

/// Reads a header off `data` arriving `piece` bytes at a time; the result
/// and what the connection holds after it.
async fn read(
    data: &[u8],
    piece: usize,
) -> (Result<Option<std::net::SocketAddr>, &'static str>, Vec<u8>) {
    super::read_ahead(data, piece, async |conn, deadline| {
        read_header(conn, deadline).await.map_err(|e| e.reason())
    })
    .await
}
