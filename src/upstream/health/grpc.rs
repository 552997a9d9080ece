//! The gRPC health check: one `grpc.health.v1.Health/Check` call over a
//! fresh HTTP/2 connection, which passes only when the server answers
//! SERVING for the service asked about.
//!
//! The two messages are a string and an enum; prost's derive encodes them
//! from the structs below (field numbers from the `grpc.health.v1` proto),
//! with no generated code and no protoc. A server without the health
//! service answers `UNIMPLEMENTED`, one that does not know the service
//! `NOT_FOUND`: both fail the check, as NOT_SERVING and UNKNOWN do.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::upstream::tls::UpstreamStream;

/// The path of the call (service `grpc.health.v1.Health`, method `Check`).
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// The answer is a few bytes; anything much longer is not a health answer.
const MAX_ANSWER: usize = 16 * 1024;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` is the `ServingStatus`
/// enum, which is an int32 on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// Asks the server on `stream` (already connected, with TLS when the
/// backend has it) whether `service` is SERVING.
pub async fn check(
    stream: UpstreamStream,
    authority: &str,
    tls: bool,
    service: &str,
) -> Result<(), String> {
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let uri = format!(
        "{}://{authority}{CHECK_PATH}",
        if tls { "https" } else { "http" }
    );
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "switchyard-health-check")
        .body(Full::new(frame(service)))
        .map_err(|e| format!("request: {e}"))?;
    let call = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (head, body) = resp.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", head.status.as_u16()));
        }
        let answer = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        // A trailers-only answer carries its status in the head.
        let trailers = answer.trailers().cloned();
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"));
        match status.map(http::HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(code) => {
                let message = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .or_else(|| head.headers.get("grpc-message"))
                    .and_then(|m| m.to_str().ok())
                    .unwrap_or("");
                return Err(format!(
                    "grpc-status {} {message}",
                    String::from_utf8_lossy(code)
                ));
            }
            None => return Err("no grpc-status in the answer".into()),
        }
        let status = serving_status(answer.to_bytes())?;
        if status == SERVING {
            Ok(())
        } else {
            Err(format!("status {}", status_name(status)))
        }
    };
    tokio::pin!(conn, call);
    tokio::select! {
        result = &mut call => result,
        ended = &mut conn => match ended {
            // Ended cleanly (a GOAWAY) before the call did: nothing more
            // will come.
            Ok(()) => Err("the server closed the connection".into()),
            Err(e) => Err(format!("connection: {e}")),
        },
    }
}

/// The request message in its gRPC frame: no compression, 4-byte length.
fn frame(service: &str) -> Bytes {
    let message = HealthCheckRequest {
        service: service.to_string(),
    };
    let len = prost::Message::encoded_len(&message);
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    // The length fits: a service name is a config string, far below 4 GiB.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was sized for the message.
    let _ = prost::Message::encode(&message, &mut buf);
    buf.freeze()
}

/// The `ServingStatus` in a response body of one gRPC frame.
fn serving_status(mut body: Bytes) -> Result<i32, String> {
    if body.len() < 5 {
        return Err("no answer message".into());
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err("the answer is compressed".into());
    }
    if body.len() < len {
        return Err("the answer message is cut short".into());
    }
    let message: HealthCheckResponse = prost::Message::decode(body.split_to(len))
        .map_err(|e| format!("the answer is no HealthCheckResponse: {e}"))?;
    Ok(message.status)
}

fn status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => format!("{n} (not a ServingStatus)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_frame_of_the_health_message() {
        // Field 1, length-delimited (0x0a), 7 bytes: "greeter".
        assert_eq!(
            &frame("greeter")[..],
            b"\x00\x00\x00\x00\x09\x0a\x07greeter"
        );
        // The whole server: an empty message.
        assert_eq!(&frame("")[..], b"\x00\x00\x00\x00\x00");
    }

    #[test]
    fn answers_are_read_from_their_frame() {
        // Field 1, varint (0x08).
        let answer = |status: u8| Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
        assert_eq!(serving_status(answer(1)), Ok(SERVING));
        assert_eq!(serving_status(answer(2)), Ok(2));
        // A default (UNKNOWN) status is an empty message.
        assert_eq!(serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])), Ok(0));
        assert!(serving_status(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
        assert!(serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])).is_err());
        assert!(serving_status(Bytes::from_static(&[0, 0, 0, 0, 1, 0xff])).is_err());
        assert_eq!(status_name(2), "NOT_SERVING");
        assert_eq!(status_name(7), "7 (not a ServingStatus)");
    }
}
