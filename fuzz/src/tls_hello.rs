//! The TLS ClientHello a `tcp` listener with `sni_routes` reads ahead to
//! route on its SNI name without terminating TLS (`tls::hello`, records
//! parsed by rustls' `Acceptor`).
//!
//! Input: the first bytes of a connection. Checked: an SNI name or a
//! reason, never a panic and never a hang; nothing is consumed (the
//! backend must get every byte); the same bytes in small pieces give the
//! same answer.

use switchyard::tls::hello::read_client_hello;
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
        let split = self.rt.block_on(read(data, 5));
        assert_eq!(whole, split, "one read and many reads disagree");
        assert_eq!(whole.1, data, "the hello was consumed or changed");
        if let Ok(Some(name)) = &whole.0 {
            assert!(!name.is_empty());
        }
    }
}

/// Reads a ClientHello off `data` arriving `piece` bytes at a time; the
/// result and what the connection holds after it.
async fn read(data: &[u8], piece: usize) -> (Result<Option<String>, &'static str>, Vec<u8>) {
    super::read_ahead(data, piece, async |conn, deadline| {
        read_client_hello(conn, deadline)
            .await
            .map_err(|e| e.reason())
    })
    .await
}
