//! A stream with bytes read ahead of its reader: the PROXY protocol header
//! and the first byte of a TLS handshake are looked at before the
//! connection's protocol takes over, and what follows them must still
//! reach that protocol. Reads are served from the bytes read ahead first,
//! then from the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How much is read ahead at most: a PROXY v2 header with TLVs, or a
/// whole ClientHello (the largest seen, with post-quantum key shares, are
/// a few KiB).
const READ_AHEAD: usize = 16 * 1024;
/// How much one read asks for.
const READ_CHUNK: usize = 4096;

#[derive(Debug)]
pub struct Rewind<S> {
    inner: S,
    ahead: Vec<u8>,
    /// Bytes of `ahead` already handed to the reader.
    taken: usize,
}

impl<S> Rewind<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ahead: Vec::new(),
            taken: 0,
        }
    }

    /// The bytes read ahead and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.ahead[self.taken..]
    }

    /// Drops `n` bytes read ahead (a header that has been parsed).
    pub fn consume(&mut self, n: usize) {
        self.taken = (self.taken + n).min(self.ahead.len());
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> Rewind<S> {
    /// Reads more bytes ahead; `Ok(0)` when the peer closed, an error when
    /// [`READ_AHEAD`] bytes are held already.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let held = self.ahead.len() - self.taken;
        if held >= READ_AHEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many bytes before the connection's protocol starts",
            ));
        }
        if self.taken > 0 {
            self.ahead.drain(..self.taken);
            self.taken = 0;
        }
        let start = self.ahead.len();
        self.ahead
            .resize(start + READ_CHUNK.min(READ_AHEAD - held), 0);
        let read = self.inner.read(&mut self.ahead[start..]).await;
        self.ahead.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.ahead.len() {
            let ahead = &this.ahead[this.taken..];
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            this.taken += n;
            if this.taken == this.ahead.len() {
                // Served whole: the buffer is not needed again.
                this.ahead = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_ahead_bytes_come_first_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"HEADERbody")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(b);
        while r.buffered().len() < 6 {
            assert!(r.fill().await.unwrap() > 0);
        }
        assert!(r.buffered().starts_with(b"HEADER"));
        r.consume(6);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"body");
    }
}
