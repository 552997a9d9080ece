//! The upstream HTTP/1.1 response parser and body framing
//! (`switchyard::upstream::h1::codec`): heads, 1xx, HEAD/204/304,
//! Content-Length, chunked with extensions and trailers, until-close.
//!
//! Input: one flags byte, then the bytes a server sends. Bit 0 of the
//! flags: the request was HEAD; the rest seed the sizes of the reads.
//!
//! Each input is read twice, the way `upstream::h1::conn` reads: once as
//! one read, once in reads of varying size. Both must say the same (a
//! parser that decides differently on a split is a smuggling hole: the
//! network picks the split), and what is forwarded must be consistent:
//! no hop-by-hop field, one Content-Length and only with the body it
//! announces, no empty data frame, never a panic.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use switchyard::upstream::h1::codec::{self, BodyStep, CodecError, Framing};

/// What one reading of a response gave.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The server closed before a whole head.
    NoHead,
    Failed(CodecError),
    Read {
        status: u16,
        headers: Box<HeaderMap>,
        keep_alive: bool,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// The body ended before the input did: what a next response on
        /// the connection would start with.
        rest: Vec<u8>,
        /// The body was delimited by its framing, not by the close.
        framed: bool,
        /// Content-Length said this (after the parser's checks).
        length: Option<u64>,
    },
}

pub fn run(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let is_head = flags & 1 == 1;
    let whole = read(bytes, is_head, &mut || usize::MAX);
    let mut seed = u32::from(flags >> 1) | 1;
    let mut sizes = move || {
        // A small LCG: reads of 1 to 16 bytes, and now and then 1 KiB.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        match (seed >> 16) % 20 {
            0 => 1024,
            n => (n as usize % 16) + 1,
        }
    };
    let split = read(bytes, is_head, &mut sizes);
    assert_eq!(whole, split, "one read and many reads disagree");
    if let Outcome::Read {
        headers,
        body,
        framed,
        length,
        status,
        ..
    } = &whole
    {
        for name in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::TE,
            header::TRAILER,
            header::UPGRADE,
            header::PROXY_AUTHENTICATE,
        ] {
            assert!(!headers.contains_key(&name), "hop-by-hop {name} forwarded");
        }
        assert!(!headers.contains_key("keep-alive"), "keep-alive forwarded");
        let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
        let bodiless = is_head || *status == 204 || *status == 304;
        if let (Some(n), false) = (length, bodiless) {
            // A framed body is exactly as long as announced, and the
            // client is told that one length.
            assert!(*framed);
            assert_eq!(
                body.len() as u64,
                *n,
                "body length differs from Content-Length"
            );
            assert_eq!(lengths, 1, "Content-Length forwarded {lengths} times");
            // The one value is forwarded as the server wrote it, leading
            // zeros included (RFC 9110 §8.6 allows them; every reader
            // takes "01" for 1).
            let forwarded = headers[header::CONTENT_LENGTH].to_str().unwrap_or("");
            assert!(
                forwarded.bytes().all(|b| b.is_ascii_digit()),
                "Content-Length {forwarded:?}"
            );
            assert_eq!(
                forwarded.parse::<u64>().ok(),
                Some(*n),
                "Content-Length {forwarded:?}"
            );
        }
        if !bodiless && length.is_none() {
            assert_eq!(lengths, 0, "Content-Length forwarded with another framing");
        }
    }
}

/// Reads `bytes` as a server's answer, `next_read()` bytes at a time, as
/// the connection does: heads first (1xx skipped), then the body until it
/// ends or the input does (the server's close).
fn read(bytes: &[u8], is_head: bool, next_read: &mut dyn FnMut() -> usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut fill = |buf: &mut BytesMut| -> bool {
        if at == bytes.len() {
            return false;
        }
        let n = next_read().min(bytes.len() - at);
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        true
    };
    let head = loop {
        if !buf.is_empty() {
            match codec::parse_response_head(&mut buf, is_head) {
                Err(e) => return Outcome::Failed(e),
                Ok(Some(head)) => break head,
                Ok(None) => {}
            }
        }
        if !fill(&mut buf) {
            return Outcome::NoHead;
        }
    };
    let mut framing = head.framing;
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Done => head
            .response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        _ => None,
    };
    let mut body = Vec::new();
    let mut trailers = None;
    let mut framed = true;
    loop {
        let step = match framing.decode(&mut buf) {
            Err(e) => return Outcome::Failed(e),
            Ok(BodyStep::NeedMore) if !fill(&mut buf) => {
                framed = false;
                match framing.decode_eof() {
                    Err(e) => return Outcome::Failed(e),
                    Ok(step) => step,
                }
            }
            Ok(step) => step,
        };
        match step {
            BodyStep::Data(d) => {
                assert!(!d.is_empty(), "empty data frame");
                body.extend_from_slice(&d);
            }
            BodyStep::Trailers(t) => {
                trailers = Some(t);
                break;
            }
            BodyStep::End => break,
            BodyStep::NeedMore => {}
        }
    }
    assert!(framing.is_done(), "the body ended but its framing did not");
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&bytes[at..]);
    Outcome::Read {
        status: head.response.status().as_u16(),
        headers: Box::new(head.response.headers().clone()),
        keep_alive: head.keep_alive,
        body,
        trailers,
        rest,
        framed,
        length,
    }
}
