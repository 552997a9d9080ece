use super::*;
use http::Method;

/// Parses `bytes` as one response (to a GET, or a HEAD) and decodes its
/// body; the body ends at the end of `bytes` when it is until-close.
fn read(
    bytes: &[u8],
    is_head: bool,
) -> Result<(ResponseHead, Vec<u8>, Option<HeaderMap>), CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut head = parse_response_head(&mut buf, is_head)?.expect("a complete head");
    let (data, trailers) = decode_all(&mut head.framing, &mut buf, true)?;
    Ok((head, data, trailers))
}

/// Decodes what `buf` holds; with `eof`, the connection ends after it.
fn decode_all(
    framing: &mut Framing,
    buf: &mut BytesMut,
    eof: bool,
) -> Result<(Vec<u8>, Option<HeaderMap>), CodecError> {
    let mut data = Vec::new();
    loop {
        let step = match framing.decode(buf)? {
            BodyStep::NeedMore if eof => framing.decode_eof()?,
            step => step,
        };
        match step {
            BodyStep::Data(d) => data.extend_from_slice(&d),
            BodyStep::Trailers(t) => return Ok((data, Some(t))),
            BodyStep::End => return Ok((data, None)),
            BodyStep::NeedMore => panic!("needs more bytes than the test gave"),
        }
    }
}

fn names(head: &ResponseHead) -> Vec<&str> {
    head.response
        .headers()
        .keys()
        .map(HeaderName::as_str)
        .collect()
}

#[test]
fn content_length_bodies_are_read_to_their_length() {
    let (head, data, _) = read(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        false,
    )
    .unwrap();
    assert_eq!(head.response.status(), StatusCode::OK);
    assert_eq!(head.response.headers()["x-a"], "1");
    assert_eq!(data, b"hello");
    assert!(head.keep_alive);
    // Bytes after the body belong to no response: left in the buffer.
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"[..]);
    let mut head = parse_response_head(&mut buf, false).unwrap().unwrap();
    assert_eq!(
        decode_all(&mut head.framing, &mut buf, false).unwrap().0,
        b"ok"
    );
    assert_eq!(&buf[..], b"EXTRA");
}

#[test]
fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
    let (head, data, trailers) = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n0a\r\n0123456789\r\n0\r\nX-Sum: 7\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(data, b"abc0123456789");
    assert_eq!(trailers.unwrap()["x-sum"], "7");
    assert!(head.keep_alive);
    assert!(names(&head).is_empty(), "{:?}", names(&head));
    // Regression: leading zeros past 16 digits were refused (1*HEXDIG
    // allows them); whitespace before `;` is allowed (BWS).
    let (_, data, _) = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          000000000000000000003\r\nabc\r\n2 \t;x=\"y\"\r\nde\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(data, b"abcde");
}

#[test]
fn transfer_encoding_overrides_content_length_and_ends_reuse() {
    // Both: read as chunked, the length never forwarded, the connection
    // not reused.
    let (head, data, _) = read(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(data, b"ok");
    assert!(!head.response.headers().contains_key(header::CONTENT_LENGTH));
    assert!(!head.keep_alive);
    // `identity` alone (no coding, chunked not final): until close, no
    // length, no reuse.
    let (head, data, _) = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nuntil the close",
        false,
    )
    .unwrap();
    assert_eq!(head.framing, Framing::Done, "read to the end");
    assert_eq!(data, b"until the close");
    assert!(!head.response.headers().contains_key(header::CONTENT_LENGTH));
    assert!(!head.keep_alive);
    // `identity, chunked`: chunked.
    let (_, data, _) = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(data, b"ok");
    // Regression: a coding the proxy would drop without decoding (the
    // client got gzip bytes labelled as plain), chunked twice (read once)
    // or before another coding: refused.
    for codings in [
        &b"Transfer-Encoding: gzip"[..],
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, identity",
        b"Transfer-Encoding: x\xffchunked",
    ] {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend_from_slice(codings);
        buf.extend_from_slice(b"\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        assert_eq!(
            parse_response_head(&mut buf, false).unwrap_err(),
            CodecError::Invalid("transfer coding other than chunked"),
            "{:?}",
            String::from_utf8_lossy(codings)
        );
    }
    // In an HTTP/1.0 response: faulty framing, read until close.
    let (head, data, _) = read(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(data, b"2\r\nok\r\n0\r\n\r\n");
    assert!(!head.response.headers().contains_key(header::CONTENT_LENGTH));
    assert!(!head.keep_alive);
}

#[test]
fn hop_by_hop_fields_are_read_but_not_forwarded() {
    let (head, data, trailers) = read(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5, max=100\r\n\
          X-Private: 1\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nX-Public: 2\r\n\r\n\
          2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(names(&head), ["x-public"]);
    assert_eq!(head.idle_hint, Some(Duration::from_secs(5)));
    assert_eq!(data, b"ok");
    assert!(trailers.is_none());
    assert!(head.keep_alive);
}

#[test]
fn bodies_without_framing_last_until_close() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\nuntil"[..]);
    let mut head = parse_response_head(&mut buf, false).unwrap().unwrap();
    assert!(!head.keep_alive);
    assert_eq!(
        head.framing.decode(&mut buf).unwrap(),
        BodyStep::Data(Bytes::from_static(b"until"))
    );
    assert_eq!(head.framing.decode(&mut buf).unwrap(), BodyStep::NeedMore);
    assert_eq!(head.framing.decode_eof().unwrap(), BodyStep::End);
    assert!(head.framing.is_done());
}

#[test]
fn head_204_304_have_no_body_and_interim_answers_are_skipped() {
    let (head, data, _) = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
    assert_eq!((head.framing, data.len()), (Framing::Done, 0));
    let (head, _, _) = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(head.response.status(), StatusCode::NO_CONTENT);
    assert!(head.keep_alive);
    let (head, _, _) = read(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(head.framing, Framing::Done);
}

#[test]
fn close_and_http10_answers_are_not_kept_alive() {
    for (answer, kept) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"[..],
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
            true,
        ),
    ] {
        let (head, _, _) = read(answer, false).unwrap();
        assert_eq!(
            head.keep_alive,
            kept,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn malformed_heads_and_bodies_are_errors_not_panics() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 2x0 Odd\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"nonsense\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(answer);
        assert!(
            parse_response_head(&mut buf, false).is_err(),
            "{:?} must be refused",
            String::from_utf8_lossy(answer)
        );
    }
    let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(
        parse_response_head(&mut BytesMut::from(huge.as_bytes()), false).unwrap_err(),
        CodecError::HeadTooLarge
    );
    for (answer, error) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            CodecError::Invalid("chunked encoding"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            CodecError::Invalid("chunked encoding"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
            CodecError::Invalid("chunked encoding"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            CodecError::Invalid("chunked encoding"),
        ),
        // Regressions: a size followed by something other than whitespace
        // and `;` was read as the size; a control byte in an extension.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
            CodecError::Invalid("chunked encoding"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
            CodecError::Invalid("chunked encoding"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            CodecError::Truncated,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            CodecError::Truncated,
        ),
    ] {
        assert_eq!(
            read(answer, false).unwrap_err(),
            error,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn a_response_fed_byte_by_byte_reads_the_same() {
    let whole: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=3\r\n\r\n\
          4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nX-T: 1\r\n\r\n";
    let mut buf = BytesMut::new();
    let mut head = None;
    let mut data = Vec::new();
    let mut trailers = None;
    for &byte in whole {
        buf.extend_from_slice(&[byte]);
        let Some(h) = head.as_mut() else {
            head = parse_response_head(&mut buf, false).unwrap();
            continue;
        };
        let h: &mut ResponseHead = h;
        loop {
            match h.framing.decode(&mut buf).unwrap() {
                BodyStep::Data(d) => data.extend_from_slice(&d),
                BodyStep::Trailers(t) => trailers = Some(t),
                BodyStep::End | BodyStep::NeedMore => break,
            }
        }
    }
    let head = head.unwrap();
    assert_eq!(data, b"abcdefg");
    assert_eq!(trailers.unwrap()["x-t"], "1");
    assert_eq!(head.idle_hint, Some(Duration::from_secs(3)));
    assert!(head.framing.is_done() && buf.is_empty());
}

#[test]
fn request_heads_are_encoded_in_origin_form() {
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = "/x?y=1".parse().unwrap();
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example"));
    let mut out = Vec::new();
    let value = HeaderValue::from_static("10.0.0.1");
    let name = HeaderName::from_static("x-forwarded-for");
    encode_request_head(&mut out, &req, &[None, Some((&name, &value))]);
    assert_eq!(
        out,
        b"GET /x?y=1 HTTP/1.1\r\nhost: example\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
    );
}

#[test]
fn keep_alive_timeouts_are_read_from_their_parameter() {
    let t = |v: &'static str| keep_alive_timeout(&HeaderValue::from_static(v));
    assert_eq!(t("timeout=5"), Some(Duration::from_secs(5)));
    assert_eq!(t("max=100, Timeout = 2"), Some(Duration::from_secs(2)));
    assert_eq!(t("max=100"), None);
    assert_eq!(t("timeout=soon"), None);
}

/// Feeds `whole` in reads of `piece` bytes, as a connection would, and
/// decodes the response (to a GET) to its end.
fn read_in_pieces(whole: &[u8], piece: usize) -> Result<Vec<u8>, CodecError> {
    let mut buf = BytesMut::new();
    let mut head: Option<ResponseHead> = None;
    let mut data = Vec::new();
    for part in whole.chunks(piece) {
        buf.extend_from_slice(part);
        let h = match head.as_mut() {
            Some(h) => h,
            None => match parse_response_head(&mut buf, false)? {
                Some(h) => head.insert(h),
                None => continue,
            },
        };
        loop {
            match h.framing.decode(&mut buf)? {
                BodyStep::Data(d) => data.extend_from_slice(&d),
                BodyStep::Trailers(_) | BodyStep::End => return Ok(data),
                BodyStep::NeedMore => break,
            }
        }
    }
    panic!("the response did not end")
}

/// A response whose head is exactly `len` bytes (a padded field).
fn head_of(len: usize) -> Vec<u8> {
    let start = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: ";
    let pad = len - start.len() - "\r\n\r\n".len();
    format!("{start}{}\r\n\r\nok", "a".repeat(pad)).into_bytes()
}

/// A chunked response whose first chunk-size line is `len` bytes before
/// its LF (CR included), made long by an extension.
fn chunk_line_of(len: usize) -> Vec<u8> {
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ext = "a".repeat(len - "2;x=".len() - 1);
    format!("{head}2;x={ext}\r\nok\r\n0\r\n\r\n").into_bytes()
}

/// A chunked response whose trailer section is `len` bytes.
fn trailers_of(len: usize) -> Vec<u8> {
    let start = "X-Pad: ";
    let pad = len - start.len() - "\r\n\r\n".len();
    format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n{start}{}\r\n\r\n",
        "a".repeat(pad)
    )
    .into_bytes()
}

// Regressions found by fuzzing (fuzz/regressions/h1_response/): the head,
// chunk-size line and trailer limits were checked only on a partial parse,
// so the same bytes were refused in small reads and accepted in one.
#[test]
fn size_limits_hold_however_the_bytes_arrive() {
    const BAD_CHUNK: CodecError = CodecError::Invalid("chunked encoding");
    type Case = (&'static str, fn(usize) -> Vec<u8>, usize, CodecError);
    let cases: [Case; 3] = [
        ("head", head_of, MAX_HEAD_BYTES, CodecError::HeadTooLarge),
        ("chunk-size line", chunk_line_of, MAX_CHUNK_LINE, BAD_CHUNK),
        (
            "trailers",
            trailers_of,
            MAX_HEAD_BYTES,
            CodecError::HeadTooLarge,
        ),
    ];
    for (what, make, limit, error) in cases {
        for piece in [usize::MAX, 4096, 1000, 61] {
            let at_limit = make(limit);
            assert_eq!(
                read_in_pieces(&at_limit, piece).as_deref(),
                Ok(&b"ok"[..]),
                "{what} of exactly {limit} bytes in reads of {piece}"
            );
            assert_eq!(
                read_in_pieces(&make(limit + 1), piece),
                Err(error.clone()),
                "{what} of {} bytes in reads of {piece}",
                limit + 1
            );
        }
    }
}
