//! HTTP/1.1 on byte slices, for the upstream side: request heads out,
//! response heads and bodies in. No I/O and no timers, so every rule here
//! can be tested (and fuzzed) on bytes alone; [`super::conn`] moves the
//! bytes.
//!
//! Response framing follows RFC 9112 §6.3:
//!
//! - no body for a response to HEAD, for 1xx, 204 and 304;
//! - with `Transfer-Encoding`, `Content-Length` is ignored and never
//!   forwarded; the body is chunked when chunked is the final coding, and
//!   lasts until the server closes otherwise; a message with both fields,
//!   or with `Transfer-Encoding` in an HTTP/1.0 response (faulty framing,
//!   §6.1), is never followed by another on the same connection;
//! - in HTTP/1.1, a coding other than `chunked` and the no-op `identity`,
//!   or `chunked` twice or before another coding, is an error (see
//!   [`TransferCodings`]);
//! - else `Content-Length` (several equal values are one; different ones
//!   are an error);
//! - else until close.
//!
//! 1xx interim responses are skipped (the requests sent here have no body
//! to wait for). Hop-by-hop fields are read for what they say (`Connection:
//! close`, `Keep-Alive: timeout=N`, the framing) and never copied into the
//! header map that is forwarded. Header values are slices of the read
//! buffer, not copies.

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};

use crate::headers;

/// Response heads (and chunked trailers) longer than this are refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields in one response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line longer than this is malformed (HAProxy and nginx
/// accept far shorter ones).
const MAX_CHUNK_LINE: usize = 4096;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("the server closed the connection before the body ended")]
    Truncated,
}

/// A parsed response head and what it says about the body and connection.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and the end-to-end header fields.
    pub response: Response<()>,
    pub framing: Framing,
    /// The server allows another request on the connection after this one.
    pub keep_alive: bool,
    /// The server's `Keep-Alive: timeout=N`: it closes idle connections
    /// after this long.
    pub idle_hint: Option<Duration>,
}

/// How the rest of a response body arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing (more) to read.
    Done,
    /// This many bytes.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the server closes.
    UntilClose,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// What [`Framing::decode`] took off the buffer.
#[derive(Debug, PartialEq)]
pub enum BodyStep {
    Data(Bytes),
    /// The body ended with these trailer fields.
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Writes the request line (origin form) and header fields, then `extra`
/// fields. The request has no body, so no framing field is added.
pub fn encode_request_head<B>(
    out: &mut Vec<u8>,
    req: &Request<B>,
    extra: &[Option<(&HeaderName, &HeaderValue)>],
) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers().iter().chain(extra.iter().flatten().copied()) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a complete response head off the front of `buf`, skipping 1xx
/// interim responses; `None` when more bytes are needed.
pub fn parse_response_head(
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Option<ResponseHead>, CodecError> {
    loop {
        let mut storage = header_storage();
        let mut fields = [FieldAt::default(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, buf, &mut storage)
            .map_err(CodecError::Parse)?
        {
            // The limit holds however the bytes arrived: a head that came
            // whole in one read is judged as one that came in pieces.
            httparse::Status::Complete(len) if len > MAX_HEAD_BYTES => {
                return Err(CodecError::HeadTooLarge);
            }
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => {
                return Err(CodecError::HeadTooLarge);
            }
            httparse::Status::Partial => return Ok(None),
        };
        let code = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let status = StatusCode::from_u16(code).map_err(|_| CodecError::Invalid("status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(CodecError::Invalid(
                    "101 to a request that asked no upgrade",
                ));
            }
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        for (at, h) in fields.iter_mut().zip(parsed.headers.iter()) {
            *at = FieldAt::of(base, h);
        }
        let head = buf.split_to(len).freeze();
        let mut hop = HopByHop::default();
        let mut headers = HeaderMap::with_capacity(count);
        fill_header_map(&mut headers, &head, &fields[..count], Some(&mut hop))?;
        let (framing, keep_alive) = framing_of(status, version, &mut headers, &hop, is_head)?;
        if hop.codings.present {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3);
            // a stale length must not reach the client.
            headers.remove(header::CONTENT_LENGTH);
        }
        for name in hop.named_by_connection {
            headers.remove(name);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(ResponseHead {
            response,
            framing,
            keep_alive,
            idle_hint: hop.idle_hint,
        }));
    }
}

/// Where one header field sits in the head's bytes (offset, length).
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (u32, u32),
    value: (u32, u32),
}

impl FieldAt {
    /// Heads are at most [`MAX_HEAD_BYTES`], so offsets fit in `u32`.
    fn of(base: usize, h: &httparse::Header<'_>) -> Self {
        let span = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        Self {
            name: span(h.name.as_bytes()),
            value: span(h.value),
        }
    }
}

/// Header storage for httparse, left uninitialised until parsed into.
fn header_storage<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// What a response head said in its hop-by-hop fields, which are read
/// here and never copied into the header map that is forwarded.
#[derive(Default)]
struct HopByHop {
    close: bool,
    keep_alive: bool,
    /// The Transfer-Encoding fields, read together.
    codings: TransferCodings,
    /// `Keep-Alive: timeout=N`.
    idle_hint: Option<Duration>,
    /// Fields the Connection header names (rare; no allocation otherwise).
    named_by_connection: Vec<HeaderName>,
}

impl HopByHop {
    fn read(&mut self, name: &HeaderName, value: HeaderValue) {
        if name == header::CONNECTION {
            for token in headers::elements(&value) {
                if token.eq_ignore_ascii_case("close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    self.keep_alive = true;
                }
            }
            self.named_by_connection
                .extend(headers::named_by_connection(&value));
        } else if name == header::TRANSFER_ENCODING {
            self.codings.add(&value);
        } else if name == headers::KEEP_ALIVE {
            self.idle_hint = keep_alive_timeout(&value).or(self.idle_hint);
        }
    }
}

/// What a response's `Transfer-Encoding` fields say, read together (a
/// coding in an earlier field was applied before those in a later one).
///
/// The proxy never forwards the field, so it may only accept codings it
/// removes: `chunked`, which its own framing replaces, and `identity`,
/// which codes nothing. Content still in another coding (`gzip`) would
/// reach the client labelled as plain, and RFC 9112 §6.1 lets an
/// intermediary drop a coding only by decoding it; `chunked` applied
/// twice or followed by another coding is invalid there too.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransferCodings {
    /// At least one Transfer-Encoding field came.
    pub present: bool,
    /// `chunked` came, as the last coding so far.
    pub chunked: bool,
    /// A coding the proxy cannot pass on (see above).
    pub invalid: bool,
}

impl TransferCodings {
    /// Reads all the Transfer-Encoding fields of `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut codings = Self::default();
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            codings.add(value);
        }
        codings
    }

    /// Reads one more Transfer-Encoding field.
    pub fn add(&mut self, value: &HeaderValue) {
        self.present = true;
        // `elements` yields nothing for a value that is not visible ASCII.
        self.invalid |= value.to_str().is_err();
        for coding in headers::elements(value) {
            if self.chunked {
                self.invalid = true;
            }
            if coding.eq_ignore_ascii_case("chunked") {
                self.chunked = true;
            } else if !coding.eq_ignore_ascii_case("identity") {
                self.invalid = true;
            }
        }
    }
}

/// The server's idle timeout, from the `Keep-Alive` field of a response
/// read by hyper (which leaves hop-by-hop fields in the map).
pub fn idle_hint(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(&headers::KEEP_ALIVE)
        .iter()
        .find_map(keep_alive_timeout)
}

/// The `timeout=N` parameter of a `Keep-Alive` field, in seconds.
fn keep_alive_timeout(value: &HeaderValue) -> Option<Duration> {
    headers::elements(value).find_map(|param| {
        let (key, seconds) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        seconds.trim().parse().ok().map(Duration::from_secs)
    })
}

/// Appends `fields` to `headers`, values sharing `head`'s bytes. With
/// `hop`, hop-by-hop fields are recorded there instead of appended.
fn fill_header_map(
    headers: &mut HeaderMap,
    head: &Bytes,
    fields: &[FieldAt],
    mut hop: Option<&mut HopByHop>,
) -> Result<(), CodecError> {
    let range = |(at, len): (u32, u32)| at as usize..(at + len) as usize;
    for at in fields {
        let name = HeaderName::from_bytes(&head[range(at.name)])
            .map_err(|_| CodecError::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(range(at.value)))
            .map_err(|_| CodecError::Invalid("header value"))?;
        if let Some(hop) = hop.as_deref_mut()
            && headers::is_hop_by_hop(&name)
        {
            hop.read(&name, value);
            continue;
        }
        headers.append(name, value);
    }
    Ok(())
}

/// How the body is delimited (RFC 9112 §6.3) and whether the connection
/// may carry another request after it. Several equal lengths (`5, 5`, or
/// the field twice) are left as one value for the client.
fn framing_of(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    hop: &HopByHop,
    is_head: bool,
) -> Result<(Framing, bool), CodecError> {
    let keep_alive = !hop.close && (version == Version::HTTP_11 || hop.keep_alive);
    if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Done, keep_alive));
    }
    let codings = hop.codings;
    if codings.present {
        if version == Version::HTTP_10 {
            // Faulty framing (§6.1): read what comes, then close.
            return Ok((Framing::UntilClose, false));
        }
        if codings.invalid {
            return Err(CodecError::Invalid("transfer coding other than chunked"));
        }
        let chunked = codings.chunked;
        // Both fields: a sign of smuggling (§6.1); this message is read by
        // Transfer-Encoding, and nothing more is read on the connection.
        let both = headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), keep_alive && !both)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length: Option<u64> = None;
    let mut values = 0;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("").split(',').map(str::trim) {
            values += 1;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CodecError::Invalid("Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| CodecError::Invalid("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(CodecError::Invalid("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    if let (2.., Some(n)) = (values, length) {
        // Forwarded as received, a client could read the list otherwise
        // (RFC 9110 §8.6 allows the one value in its place).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(match length {
        Some(0) => (Framing::Done, keep_alive),
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

impl Framing {
    /// Takes the next piece of the body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<BodyStep, CodecError> {
        loop {
            match self {
                Self::Done => return Ok(BodyStep::End),
                Self::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(BodyStep::NeedMore);
                    }
                    let data = split_data(buf, remaining);
                    if *remaining == 0 {
                        *self = Self::Done;
                    }
                    return Ok(BodyStep::Data(data));
                }
                Self::UntilClose => {
                    return Ok(if buf.is_empty() {
                        BodyStep::NeedMore
                    } else {
                        BodyStep::Data(buf.split().freeze())
                    });
                }
                Self::Chunked(chunk) => match chunk_step(chunk, buf)? {
                    ChunkStep::Continue => {}
                    ChunkStep::Data(data) => return Ok(BodyStep::Data(data)),
                    ChunkStep::NeedMore => return Ok(BodyStep::NeedMore),
                    ChunkStep::End(trailers) => {
                        *self = Self::Done;
                        return Ok(match trailers {
                            Some(t) => BodyStep::Trailers(t),
                            None => BodyStep::End,
                        });
                    }
                },
            }
        }
    }

    /// The server closed the connection: the end of an until-close body,
    /// and a truncated body otherwise.
    pub fn decode_eof(&mut self) -> Result<BodyStep, CodecError> {
        match self {
            Self::Done => Ok(BodyStep::End),
            Self::UntilClose => {
                *self = Self::Done;
                Ok(BodyStep::End)
            }
            Self::Length(_) | Self::Chunked(_) => Err(CodecError::Truncated),
        }
    }

    /// How many bytes the next read may usefully ask for, up to `max`.
    pub fn wanted(&self, max: usize) -> usize {
        match self {
            Self::Length(remaining) => usize::try_from(*remaining).unwrap_or(max).min(max),
            _ => max,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }
}

/// Takes up to `remaining` buffered body bytes off the front of `buf`.
fn split_data(buf: &mut BytesMut, remaining: &mut u64) -> Bytes {
    let n = buf
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    *remaining -= n as u64;
    buf.split_to(n).freeze()
}

/// What the chunked decoder did with the buffered bytes.
enum ChunkStep {
    Data(Bytes),
    /// Moved to another state; call again.
    Continue,
    NeedMore,
    /// The last chunk and the trailer section were read.
    End(Option<HeaderMap>),
}

fn chunk_step(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<ChunkStep, CodecError> {
    const BAD: CodecError = CodecError::Invalid("chunked encoding");
    match chunk {
        Chunk::Size => {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err(BAD)
                } else {
                    Ok(ChunkStep::NeedMore)
                };
            };
            // The same limit as while no LF is buffered, so a line that
            // arrived in one read is not let through.
            if end > MAX_CHUNK_LINE {
                return Err(BAD);
            }
            let line = buf.split_to(end + 1);
            let line = line.strip_suffix(b"\r\n").ok_or(BAD)?;
            // The size, then optional whitespace and `;extensions`, ignored.
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            // Leading zeros are valid (1*HEXDIG) and cannot overflow; more
            // than 16 digits after them would.
            let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
            if digits == 0 || digits - zeros > 16 {
                return Err(BAD);
            }
            // Only whitespace before `;` (RFC 9112 §7.1.1's BWS): a size
            // followed by anything else ("5 x") is not one. Extensions are
            // ignored, but a control byte in one (a bare CR, which another
            // parser may take for a line end) is refused, as hyper does.
            let rest = &line[digits..];
            let blank = rest
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            if !matches!(rest.get(blank), None | Some(b';'))
                || rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(BAD);
            }
            let size = std::str::from_utf8(&line[..digits])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(BAD)?;
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(ChunkStep::Continue)
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(ChunkStep::NeedMore);
            }
            let data = split_data(buf, remaining);
            if *remaining == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(ChunkStep::Data(data))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(ChunkStep::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(BAD);
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(ChunkStep::Continue)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(ChunkStep::End(None));
            }
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut fields = [FieldAt::default(); MAX_HEADERS];
            let (len, count) =
                match httparse::parse_headers(buf, &mut storage).map_err(CodecError::Parse)? {
                    httparse::Status::Complete((len, _)) if len > MAX_HEAD_BYTES => {
                        return Err(CodecError::HeadTooLarge);
                    }
                    httparse::Status::Complete((len, parsed)) => {
                        let base = buf.as_ptr() as usize;
                        for (at, h) in fields.iter_mut().zip(parsed.iter()) {
                            *at = FieldAt::of(base, h);
                        }
                        (len, parsed.len())
                    }
                    httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
                        return Err(CodecError::HeadTooLarge);
                    }
                    httparse::Status::Partial => return Ok(ChunkStep::NeedMore),
                };
            let block = buf.split_to(len).freeze();
            let mut trailers = HeaderMap::with_capacity(count);
            fill_header_map(&mut trailers, &block, &fields[..count], None)?;
            Ok(ChunkStep::End((!trailers.is_empty()).then_some(trailers)))
        }
    }
}

#[cfg(test)]
mod tests;
