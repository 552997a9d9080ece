//! The TLS ClientHello a `tcp` listener with `sni_routes` reads ahead to
//! route on its SNI name without terminating TLS (`tls::hello`, records
//! parsed by rustls' `Acceptor`).
//!
//! Input: the first bytes of a connection. Checked: an SNI name or a
//! reason, never a panic and never a hang; nothing is consumed (the
//! backend must get every byte); the same bytes in small pieces give the
//! same answer.

use std::time::Duration;

use switchyard::proxy::rewind::Rewind;
use switchyard::tls::hello::read_client_hello;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::time::Instant;

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

async fn read(data: &[u8], piece: usize) -> (Result<Option<String>, &'static str>, Vec<u8>) {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let mut conn = Rewind::new(rx);
    let deadline = Instant::now() + Duration::from_secs(1);
    let send = async {
        for chunk in data.chunks(piece) {
            if tx.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        drop(tx);
    };
    let (result, ()) = tokio::join!(read_client_hello(&mut conn, deadline), send);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    (result.map_err(|e| e.reason()), rest)
}
