//! Lingering close: answer a client that is turned away and close without
//! destroying the answer (nginx's `lingering_close`).
//!
//! Closing a socket with unread input makes the kernel send a reset, which
//! can overtake and destroy an answer still in flight. So the request head
//! is read before the answer goes out, and after our FIN the socket is
//! drained until the client closes, each for at most `limit`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads the request head (when an `answer` is to be sent), writes it,
/// shuts the write side and drains what the client still sends.
pub async fn answer_and_close<S>(mut stream: S, answer: Option<&[u8]>, limit: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(answer) = answer {
        let mut head = [0u8; 4096];
        let mut read = 0;
        let _ = tokio::time::timeout(limit, async {
            while read < head.len() {
                match stream.read(&mut head[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
                if head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        let _ = stream.write_all(answer).await;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A complete `Connection: close` response with a plain-text body.
pub fn plain_response(status_line: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}
