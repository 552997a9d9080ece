//! gRPC through Switchyard: a real tonic server behind it and a real tonic
//! client in front, over h2c and over TLS (h2 by ALPN). Unary and the three
//! streaming kinds, large messages, statuses with details and metadata,
//! trailers, deadlines, cancellation both ways, Switchyard's own failures
//! as gRPC statuses, a reload storm, and gRPC health checks.
//!
//! The messages are prost structs written here and the service is routed
//! by hand (as tonic's generated code does), so nothing needs protoc.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{Ca, verifying_client};
use support::*;
use switchyard::control::ReloadResult;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::Service;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_prost::ProstCodec;

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    /// Which server answered.
    #[prost(string, tag = "3")]
    server: String,
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.into(),
        ..Msg::default()
    }
}

const MIB: usize = 1024 * 1024;
/// Messages up to this size pass (tonic's default limit is 4 MiB).
const MAX_MESSAGE: usize = 64 * MIB;

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send + 'static>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

// === the test service, served by tonic ===

/// What servers saw: calls started, and handlers (or their response
/// streams) dropped, which for a call that never ends means cancelled.
#[derive(Default)]
struct Events {
    started: AtomicUsize,
    dropped: AtomicUsize,
}

impl Events {
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts its drop in [`Events::dropped`].
struct DropGuard(Arc<Events>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// `test.Echo`: `Unary`, `ServerStream`, `ClientStream` and `Bidi`.
#[derive(Clone)]
struct Echo {
    name: &'static str,
    events: Arc<Events>,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl Echo {
    /// Echoes the message, signed by the server, and the `x-client`
    /// header as `x-client-seen`. `fail` answers a status with details
    /// and metadata; `hang` never answers. A server named `unavailable…`
    /// answers every call UNAVAILABLE.
    async fn unary(self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        self.events.started.fetch_add(1, Ordering::SeqCst);
        let seen = req.metadata().get("x-client").cloned();
        let m = req.into_inner();
        if self.name.starts_with("unavailable") {
            return Err(Status::unavailable("overloaded"));
        }
        match m.text.as_str() {
            "fail" => return Err(custom_status()),
            "hang" => {
                let _guard = DropGuard(self.events.clone());
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        let mut resp = tonic::Response::new(Msg {
            text: m.text,
            data: m.data,
            server: self.name.into(),
        });
        if let Some(seen) = seen {
            resp.metadata_mut().insert("x-client-seen", seen);
        }
        Ok(resp)
    }

    /// `"COUNT SIZE [fail|hang]"`: COUNT messages of SIZE bytes, then a
    /// failing status with metadata (in real trailers, after data), or a
    /// stream that never ends.
    fn server_stream(self, req: tonic::Request<Msg>) -> Result<tonic::Response<MsgStream>, Status> {
        self.events.started.fetch_add(1, Ordering::SeqCst);
        let text = req.into_inner().text;
        let mut words = text.split(' ');
        let count: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
        let size: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let mode = words.next().unwrap_or("").to_string();
        let name = self.name;
        let items = futures_util::stream::iter((0..count).map(move |i| {
            Ok(Msg {
                text: i.to_string(),
                data: vec![i as u8; size],
                server: name.into(),
            })
        }));
        let stream: MsgStream = match mode.as_str() {
            "fail" => {
                let mut metadata = MetadataMap::new();
                metadata.insert("x-why", "late".parse().expect("value"));
                let end = Status::with_metadata(Code::Aborted, "stream failed", metadata);
                Box::pin(items.chain(futures_util::stream::once(async { Err(end) })))
            }
            "hang" => {
                let guard = DropGuard(self.events.clone());
                let never = futures_util::stream::unfold(guard, |guard| async move {
                    std::future::pending::<()>().await;
                    Some((Ok(msg("never")), guard))
                });
                Box::pin(items.chain(never))
            }
            _ => Box::pin(items),
        };
        Ok(tonic::Response::new(stream))
    }

    /// Answers `"COUNT BYTES"` for the messages it was sent.
    async fn client_stream(
        self,
        req: tonic::Request<Streaming<Msg>>,
    ) -> Result<tonic::Response<Msg>, Status> {
        self.events.started.fetch_add(1, Ordering::SeqCst);
        let mut input = req.into_inner();
        let (mut count, mut bytes) = (0usize, 0usize);
        while let Some(m) = input.message().await? {
            count += 1;
            bytes += m.data.len();
        }
        Ok(tonic::Response::new(Msg {
            text: format!("{count} {bytes}"),
            data: Vec::new(),
            server: self.name.into(),
        }))
    }

    /// Echoes each message as it comes; the response stream holds a
    /// [`DropGuard`].
    fn bidi(
        self,
        req: tonic::Request<Streaming<Msg>>,
    ) -> Result<tonic::Response<MsgStream>, Status> {
        self.events.started.fetch_add(1, Ordering::SeqCst);
        let state = (req.into_inner(), DropGuard(self.events.clone()), self.name);
        let stream = futures_util::stream::unfold(state, |(mut input, guard, name)| async move {
            match input.message().await {
                Ok(Some(m)) => Some((
                    Ok(Msg {
                        text: m.text,
                        data: m.data,
                        server: name.into(),
                    }),
                    (input, guard, name),
                )),
                Ok(None) | Err(_) => None,
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// A status with a message that needs percent-encoding, details and
/// metadata (text and binary).
fn custom_status() -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("x-why", "because".parse().expect("value"));
    metadata.insert_bin("x-blob-bin", MetadataValue::from_bytes(&[0, 1, 2, 255]));
    Status::with_details_and_metadata(
        Code::FailedPrecondition,
        "custom failure: ünïcode 100%",
        Bytes::from_static(b"\x08\x09details"),
        metadata,
    )
}

struct UnaryCall(Echo);
impl tonic::server::UnaryService<Msg> for UnaryCall {
    type Response = Msg;
    type Future = BoxFut<Result<tonic::Response<Msg>, Status>>;
    fn call(&mut self, request: tonic::Request<Msg>) -> Self::Future {
        Box::pin(self.0.clone().unary(request))
    }
}

struct ServerStreamCall(Echo);
impl tonic::server::ServerStreamingService<Msg> for ServerStreamCall {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<tonic::Response<MsgStream>, Status>>;
    fn call(&mut self, request: tonic::Request<Msg>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move { echo.server_stream(request) })
    }
}

struct ClientStreamCall(Echo);
impl tonic::server::ClientStreamingService<Msg> for ClientStreamCall {
    type Response = Msg;
    type Future = BoxFut<Result<tonic::Response<Msg>, Status>>;
    fn call(&mut self, request: tonic::Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(self.0.clone().client_stream(request))
    }
}

struct BidiCall(Echo);
impl tonic::server::StreamingService<Msg> for BidiCall {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<tonic::Response<MsgStream>, Status>>;
    fn call(&mut self, request: tonic::Request<Streaming<Msg>>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move { echo.bidi(request) })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(UnaryCall(echo), req).await,
                "/test.Echo/ServerStream" => {
                    grpc.server_streaming(ServerStreamCall(echo), req).await
                }
                "/test.Echo/ClientStream" => {
                    grpc.client_streaming(ClientStreamCall(echo), req).await
                }
                "/test.Echo/Bidi" => grpc.streaming(BidiCall(echo), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server with `test.Echo` and `grpc.health.v1.Health`.
struct GrpcServer {
    addr: SocketAddr,
    events: Arc<Events>,
    health: tonic_health::server::HealthReporter,
    _task: AbortOnDrop,
}

impl GrpcServer {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events = Arc::new(Events::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<Echo>().await;
        let echo = Echo {
            name,
            events: events.clone(),
        };
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(echo)
                .add_service(health_service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("tonic server runs");
        });
        Self {
            addr,
            events,
            health,
            _task: AbortOnDrop(task),
        }
    }
}

// === a raw HTTP/2 server, for what tonic servers do not do ===

/// A gRPC message in its frame.
fn grpc_frame(m: &Msg) -> Bytes {
    let body = prost::Message::encode_to_vec(m);
    let mut buf = BytesMut::with_capacity(5 + body.len());
    buf.put_u8(0);
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    buf.freeze()
}

/// An HTTP/2 server that speaks just enough gRPC to misbehave, and never
/// looks at `grpc-timeout` (so a deadline it meets is Switchyard's):
///
/// - `/raw.Svc/Hang`: never answers;
/// - `/raw.Svc/StreamThenHang`: one message, then nothing, never ending;
/// - `/raw.Svc/Refuse`, `/raw.Svc/Calm`: resets the stream before any
///   head (`REFUSED_STREAM`, `ENHANCE_YOUR_CALM`);
/// - `/raw.Svc/ResetMidStream`: one message, then `ENHANCE_YOUR_CALM` once
///   the client has ended its side (so the client has the head by then: a
///   reset right behind a head can overtake it in the client's h2).
async fn raw_backend(events: Arc<Events>) -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let events = events.clone();
            let service = service_fn(move |req: Request<Incoming>| raw_call(req, events.clone()));
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service),
            );
        }
    });
    (addr, AbortOnDrop(task))
}

type RawBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn raw_call(
    req: Request<Incoming>,
    events: Arc<Events>,
) -> Result<Response<RawBody>, h2::Error> {
    events.started.fetch_add(1, Ordering::SeqCst);
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let first = futures_util::stream::iter([Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
        Frame::data(grpc_frame(&msg("first"))),
    )]);
    let path = req.uri().path().to_string();
    let body: Pin<Box<dyn Stream<Item = Item> + Send>> = match path.as_str() {
        "/raw.Svc/Hang" => {
            let _guard = DropGuard(events);
            std::future::pending::<()>().await;
            unreachable!("never answers")
        }
        "/raw.Svc/Refuse" => return Err(h2::Reason::REFUSED_STREAM.into()),
        "/raw.Svc/Calm" => return Err(h2::Reason::ENHANCE_YOUR_CALM.into()),
        "/raw.Svc/StreamThenHang" => {
            let guard = DropGuard(events);
            Box::pin(
                first.chain(futures_util::stream::unfold(guard, |guard| async move {
                    std::future::pending::<()>().await;
                    Some((Ok(Frame::data(Bytes::new())), guard))
                })),
            )
        }
        "/raw.Svc/ResetMidStream" => {
            let request = req.into_body();
            Box::pin(first.chain(futures_util::stream::once(async move {
                let _ = request.collect().await;
                Err(Box::new(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)) as Box<_>)
            })))
        }
        _ => return Err(h2::Reason::PROTOCOL_ERROR.into()),
    };
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    Ok(resp)
}

// === clients ===

type Client = tonic::client::Grpc<Channel>;

async fn client(addr: SocketAddr) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to switchyard");
    grpc_client(channel)
}

fn grpc_client(channel: Channel) -> Client {
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

async fn ready(c: &mut Client) -> Result<(), Status> {
    c.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))
}

async fn unary(c: &mut Client, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
    ready(c).await?;
    c.unary(req, PathAndQuery::from_static("/test.Echo/Unary"), codec())
        .await
}

async fn server_stream(
    c: &mut Client,
    path: &'static str,
    req: tonic::Request<Msg>,
) -> Result<tonic::Response<Streaming<Msg>>, Status> {
    ready(c).await?;
    c.server_streaming(req, PathAndQuery::from_static(path), codec())
        .await
}

async fn client_stream(c: &mut Client, messages: Vec<Msg>) -> Result<tonic::Response<Msg>, Status> {
    ready(c).await?;
    let req = tonic::Request::new(futures_util::stream::iter(messages));
    c.client_streaming(
        req,
        PathAndQuery::from_static("/test.Echo/ClientStream"),
        codec(),
    )
    .await
}

/// Opens a bidi call; messages go in through the returned sender.
async fn bidi(c: &mut Client) -> Result<(tokio::sync::mpsc::Sender<Msg>, Streaming<Msg>), Status> {
    ready(c).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = tonic::Request::new(ReceiverStream::new(rx));
    let resp = c
        .streaming(req, PathAndQuery::from_static("/test.Echo/Bidi"), codec())
        .await?;
    Ok((tx, resp.into_inner()))
}

/// One call by a plain HTTP/2 client (h2c), which, unlike tonic's, does not
/// enforce `grpc_timeout` itself: whatever ends the call is Switchyard.
async fn raw_grpc_call(
    addr: SocketAddr,
    path: &str,
    grpc_timeout: Option<&str>,
) -> Response<Incoming> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&msg("hi"))))
        .expect("request");
    if let Some(t) = grpc_timeout {
        req.headers_mut()
            .insert("grpc-timeout", t.parse().expect("value"));
    }
    within("the response head", 10, sender.send_request(req))
        .await
        .expect("answered")
}

/// A trailers-only response with `status` and `message`.
fn assert_trailers_only(resp: &Response<Incoming>, status: &str, message: &str) {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(
        resp.headers()["grpc-status"],
        status,
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.headers()["grpc-message"], message);
    assert!(http_body::Body::is_end_stream(resp.body()), "trailers-only");
}

/// A deadline for a whole test step.
async fn within<T>(what: &str, secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {secs} s"))
}

// === configs ===

/// One http listener `web` with backend `b` over `protocol`, `extra` lines
/// in the backend.
fn config(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    web_config(
        "",
        "",
        &format!(
            "protocol = \"http2\"\nservers = [{}]\n{extra}",
            list.join(", ")
        ),
    )
}

// === the calls themselves ===

/// Every kind of call, checked end to end through `c`.
async fn every_kind_of_call(c: &mut Client, server: &str) {
    // Unary, with request metadata in and response metadata out.
    let mut req = tonic::Request::new(msg("hello"));
    req.metadata_mut()
        .insert("x-client", "tonic-test".parse().expect("value"));
    let resp = unary(c, req).await.expect("unary call");
    assert_eq!(
        resp.metadata()
            .get("x-client-seen")
            .map(|v| v.to_str().expect("ascii")),
        Some("tonic-test")
    );
    let answer = resp.into_inner();
    assert_eq!(
        (answer.text.as_str(), answer.server.as_str()),
        ("hello", server)
    );

    // A large message (8 MiB) there and back.
    let big: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    let req = tonic::Request::new(Msg {
        text: "big".into(),
        data: big.clone(),
        server: String::new(),
    });
    let answer = unary(c, req).await.expect("8 MiB unary").into_inner();
    assert!(answer.data == big, "8 MiB came back intact");

    // A handler's own status: code, message, details and metadata intact
    // (a trailers-only response from tonic).
    let status = unary(c, tonic::Request::new(msg("fail")))
        .await
        .expect_err("the handler fails");
    assert_custom_status(&status);

    // Server streaming: 3 messages of 8 MiB, then OK.
    let mut stream = server_stream(
        c,
        "/test.Echo/ServerStream",
        tonic::Request::new(msg(&format!("3 {}", 8 * MIB))),
    )
    .await
    .expect("server-streaming call")
    .into_inner();
    for i in 0..3u8 {
        let m = stream.message().await.expect("message").expect("not ended");
        assert_eq!(m.text, i.to_string());
        assert!(m.data.len() == 8 * MIB && m.data.iter().all(|&b| b == i));
    }
    assert!(stream.message().await.expect("clean end").is_none());

    // Server streaming that ends with a failing status in real trailers,
    // after the data, metadata included.
    let mut stream = server_stream(
        c,
        "/test.Echo/ServerStream",
        tonic::Request::new(msg("2 10 fail")),
    )
    .await
    .expect("server-streaming call")
    .into_inner();
    for _ in 0..2 {
        stream.message().await.expect("message").expect("not ended");
    }
    let status = stream.message().await.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "stream failed");
    assert_eq!(
        status
            .metadata()
            .get("x-why")
            .map(|v| v.to_str().expect("ascii")),
        Some("late"),
        "trailer metadata"
    );

    // Client streaming: 9 messages of 1 MiB.
    let messages: Vec<Msg> = (0..9)
        .map(|i| Msg {
            text: i.to_string(),
            data: vec![7; MIB],
            server: String::new(),
        })
        .collect();
    let answer = client_stream(c, messages)
        .await
        .expect("client-streaming call")
        .into_inner();
    assert_eq!(answer.text, format!("9 {}", 9 * MIB));

    // Bidi: each message answered before the next is sent (interleaved,
    // so nothing is buffered whole on the way).
    let (tx, mut rx) = bidi(c).await.expect("bidi call");
    for i in 0..20 {
        tx.send(msg(&format!("ping {i}"))).await.expect("send");
        let m = rx.message().await.expect("echo").expect("not ended");
        assert_eq!(m.text, format!("ping {i}"));
        assert_eq!(m.server, server);
    }
    drop(tx);
    assert!(rx.message().await.expect("clean end").is_none());
}

fn assert_custom_status(status: &Status) {
    let expected = custom_status();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), expected.message());
    assert_eq!(status.details(), expected.details());
    assert_eq!(
        status
            .metadata()
            .get("x-why")
            .map(|v| v.to_str().expect("ascii")),
        Some("because")
    );
    assert_eq!(
        status
            .metadata()
            .get_bin("x-blob-bin")
            .map(|v| v.to_bytes().expect("base64")),
        Some(Bytes::from_static(&[0, 1, 2, 255]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_through_h2c() {
    let server = GrpcServer::start("s1").await;
    let sy = Switchyard::start(&config(&[server.addr], "")).await;
    let mut c = client(sy.addr("web")).await;
    within("the calls", 60, every_kind_of_call(&mut c, "s1")).await;
}

/// A TLS connection to Switchyard offering only `h2`, for tonic.
#[derive(Clone)]
struct TlsConnector {
    addr: SocketAddr,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFut<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let stream = support::tls::connect(addr, Some("grpc.test"), config).await?;
            assert_eq!(
                stream.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "h2 by ALPN"
            );
            Ok(TokioIo::new(stream))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_through_tls_h2() {
    let server = GrpcServer::start("s1").await;
    let ca = Ca::new();
    let leaf = ca.leaf(&["grpc.test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    leaf.write(dir.path(), "site");
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "b"
certs = [{{ cert = "site.pem", key = "site.key" }}]

[[backends]]
name = "b"
protocol = "http2"
servers = ["{}"]
"#,
        server.addr
    );
    let sy = Switchyard::start_in(dir, &config).await;
    let connector = TlsConnector {
        addr: sy.addr("web"),
        config: verifying_client(&ca, &[b"h2"]),
    };
    let channel = Endpoint::from_static("https://grpc.test")
        .connect_with_connector(connector)
        .await
        .expect("TLS connect to switchyard");
    let mut c = grpc_client(channel);
    within("the calls over TLS", 60, every_kind_of_call(&mut c, "s1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyards_own_failures_are_grpc_statuses() {
    // A port nobody listens on: every connect is refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let sy = Switchyard::start(&config(&[dead], "")).await;
    let addr = sy.addr("web");
    let mut c = client(addr).await;
    let status = unary(&mut c, tonic::Request::new(msg("hi")))
        .await
        .expect_err("nothing to connect to");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "cannot connect to upstream server");
    // Streaming calls get the same.
    let status = server_stream(
        &mut c,
        "/test.Echo/ServerStream",
        tonic::Request::new(msg("1 1")),
    )
    .await
    .expect_err("nothing to connect to");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The exact shape, as a plain HTTP/2 client sees it: 200, the gRPC
    // content type, the status in the head, and the stream ended by it
    // (trailers-only).
    let resp = raw_grpc_call(addr, "/test.Echo/Unary", None).await;
    assert_trailers_only(&resp, "14", "cannot connect to upstream server");

    // Not a gRPC call: the plain 502 page as before.
    let (status, body) = get(addr, "/", None).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_GATEWAY,
            "cannot connect to upstream server\n"
        )
    );

    // Counted as the failures they are, not as 2xx.
    let series = r#"switchyard_http_requests_total{backend="b",class="5xx",listener="web"}"#;
    assert_eq!(sy.metric(series).await, Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_an_http1_backend_is_refused_plainly() {
    let server = GrpcServer::start("s1").await;
    let config = web_config("", "", &format!("servers = [\"{}\"]", server.addr));
    let sy = Switchyard::start(&config).await;
    let mut c = client(sy.addr("web")).await;
    let status = unary(&mut c, tonic::Request::new(msg("hi")))
        .await
        .expect_err("an HTTP/1.1 backend");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("protocol = \"http2\""),
        "{status:?}"
    );
    assert_eq!(server.events.started(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_bound_the_wait_and_cancel_upstream() {
    let events = Arc::new(Events::default());
    let (raw, _raw) = raw_backend(events.clone()).await;
    let sy = Switchyard::start(&config(&[raw], "")).await;
    let addr = sy.addr("web");

    // No response head before the deadline: DEADLINE_EXCEEDED from
    // Switchyard (neither this client nor the server looks at
    // grpc-timeout), and the upstream stream is reset.
    let resp = raw_grpc_call(addr, "/raw.Svc/Hang", Some("300m")).await;
    assert_trailers_only(
        &resp,
        "4",
        "deadline (grpc-timeout) exceeded waiting for the upstream server",
    );
    eventually(
        "the server's call is cancelled",
        Duration::from_secs(5),
        || async { events.dropped() == 1 },
    )
    .await;

    // A response under way at the deadline: the message so far arrives,
    // then DEADLINE_EXCEEDED in trailers, and the upstream is reset.
    let resp = raw_grpc_call(addr, "/raw.Svc/StreamThenHang", Some("300000u")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("grpc-status").is_none());
    let mut body = resp.into_body();
    let first = within("the first message", 10, body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.data_ref(), Some(&grpc_frame(&msg("first"))));
    let last = within("the stream's end", 10, body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    let trailers = last.trailers_ref().expect("trailers");
    assert_eq!(trailers["grpc-status"], "4");
    assert_eq!(
        trailers["grpc-message"],
        "deadline (grpc-timeout) exceeded during the response"
    );
    assert!(body.frame().await.is_none(), "the end");
    eventually(
        "the server's stream is cancelled",
        Duration::from_secs(5),
        || async { events.dropped() == 2 },
    )
    .await;

    // tonic's client enforces its own deadline too and reads either end
    // as DEADLINE_EXCEEDED; the server is cancelled the same way.
    let mut c = client(addr).await;
    let mut req = tonic::Request::new(msg("hi"));
    req.set_timeout(Duration::from_millis(300));
    ready(&mut c).await.expect("ready");
    let status = within(
        "a call past its deadline",
        10,
        c.unary(req, PathAndQuery::from_static("/raw.Svc/Hang"), codec()),
    )
    .await
    .expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    eventually(
        "the server's call is cancelled",
        Duration::from_secs(5),
        || async { events.dropped() == 3 },
    )
    .await;

    // Without grpc-timeout the backend's request timeout bounds the wait,
    // as DEADLINE_EXCEEDED too.
    sy.write_config(&config(&[raw], "timeouts = { request = \"200ms\" }"));
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    ready(&mut c).await.expect("ready");
    let status = within(
        "a call past the request timeout",
        10,
        c.unary(
            tonic::Request::new(msg("hi")),
            PathAndQuery::from_static("/raw.Svc/Hang"),
            codec(),
        ),
    )
    .await
    .expect_err("timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "upstream server timed out");
}

/// Passive ejection reads a server's gRPC status in the response head
/// (trailers-only, how servers answer errors) as Envoy does: UNAVAILABLE
/// and the other server-side codes count as failures, a caller's error
/// such as FAILED_PRECONDITION does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_grpc_statuses_eject_the_endpoint_that_answers_them() {
    let good = GrpcServer::start("s1").await;
    let sick = GrpcServer::start("unavailable-1").await;
    let outlier = "outlier = { consecutive_failures = 3 }";
    let sy = Switchyard::start(&config(&[good.addr], outlier)).await;
    let mut c = client(sy.addr("web")).await;
    let series = r#"switchyard_outlier_ejections_total{backend="b",reason="failing_requests"}"#;

    // The caller's errors: never an ejection, however many in a row.
    for _ in 0..10 {
        let status = unary(&mut c, tonic::Request::new(msg("fail")))
            .await
            .expect_err("fails");
        assert_eq!(status.code(), Code::FailedPrecondition);
    }
    assert_eq!(who_answers(&mut c, 4).await, ["s1"]);
    assert_ne!(sy.metric(series).await, Some(1.0), "no ejection yet");

    // A server answering UNAVAILABLE to everything is taken out after
    // three in a row; then every call reaches the good one.
    sy.write_config(&config(&[good.addr, sick.addr], outlier));
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    eventually(
        "the sick server is ejected",
        Duration::from_secs(10),
        || {
            let (mut c, sy) = (c.clone(), &sy);
            async move {
                let _ = unary(&mut c, tonic::Request::new(msg("hi"))).await;
                sy.metric(series).await == Some(1.0)
            }
        },
    )
    .await;
    assert_eq!(who_answers(&mut c, 10).await, ["s1"]);
    assert!(sick.events.started() >= 3);
}

/// A slow failure: a backend that accepts connections and never says a
/// word (no HTTP/2 preface or SETTINGS back). The call is bounded by the
/// request timeout and answered as a gRPC status, and the next call is
/// bounded the same way (nothing waits forever on the half-open
/// connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_and_stays_silent_is_a_grpc_status() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr_silent = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((io, _)) = silent.accept().await {
            open.push(io); // kept open, never read or written
        }
    });
    let sy = Switchyard::start(&config(
        &[addr_silent],
        "timeouts = { request = \"300ms\" }",
    ))
    .await;
    let addr = sy.addr("web");
    // raw_grpc_call gives up after 10 s: an answer at all is the bound.
    for _ in 0..2 {
        let resp = raw_grpc_call(addr, "/test.Echo/Unary", None).await;
        assert_trailers_only(&resp, "4", "upstream server timed out");
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_reach_the_client() {
    let events = Arc::new(Events::default());
    let (raw, _raw) = raw_backend(events.clone()).await;
    let sy = Switchyard::start(&config(&[raw], "")).await;
    let mut c = client(sy.addr("web")).await;
    for (path, code) in [
        ("/raw.Svc/Refuse", Code::Unavailable),
        ("/raw.Svc/Calm", Code::ResourceExhausted),
    ] {
        ready(&mut c).await.expect("ready");
        let status = c
            .unary(
                tonic::Request::new(msg("hi")),
                PathAndQuery::from_static(path),
                codec(),
            )
            .await
            .expect_err("reset before the head");
        assert_eq!(status.code(), code, "{path}: {status:?}");
    }
    // After the head: the reset itself is passed on, with its reason.
    ready(&mut c).await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = tonic::Request::new(ReceiverStream::new(rx));
    let path = PathAndQuery::from_static("/raw.Svc/ResetMidStream");
    let mut stream = c
        .streaming(req, path, codec())
        .await
        .expect("response head")
        .into_inner();
    assert_eq!(
        stream
            .message()
            .await
            .expect("first")
            .expect("message")
            .text,
        "first"
    );
    drop(tx);
    let status = within("the reset", 10, stream.message())
        .await
        .expect_err("reset mid-stream");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "ENHANCE_YOUR_CALM: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancellation_reaches_the_server() {
    let server = GrpcServer::start("s1").await;
    let sy = Switchyard::start(&config(&[server.addr], "")).await;
    let mut c = client(sy.addr("web")).await;

    // A unary call whose client gives up (drops the call: RST_STREAM).
    let mut caller = c.clone();
    let call =
        tokio::spawn(async move { unary(&mut caller, tonic::Request::new(msg("hang"))).await });
    eventually(
        "the call reaches the server",
        Duration::from_secs(5),
        || async { server.events.started() == 1 },
    )
    .await;
    call.abort();
    eventually(
        "the server's handler is cancelled",
        Duration::from_secs(5),
        || async { server.events.dropped() == 1 },
    )
    .await;

    // A bidi stream the client walks away from mid-conversation.
    let (tx, mut rx) = bidi(&mut c).await.expect("bidi call");
    tx.send(msg("one")).await.expect("send");
    assert_eq!(
        rx.message().await.expect("echo").expect("message").text,
        "one"
    );
    assert_eq!(server.events.dropped(), 1, "the stream is still open");
    drop((tx, rx));
    eventually(
        "the server's stream is cancelled",
        Duration::from_secs(5),
        || async { server.events.dropped() == 2 },
    )
    .await;

    // And a server stream the client stops reading.
    let mut stream = server_stream(
        &mut c,
        "/test.Echo/ServerStream",
        tonic::Request::new(msg("1 10 hang")),
    )
    .await
    .expect("server-streaming call")
    .into_inner();
    stream.message().await.expect("message").expect("not ended");
    drop(stream);
    eventually(
        "the server's stream is cancelled",
        Duration::from_secs(5),
        || async { server.events.dropped() == 3 },
    )
    .await;
    // The connection carries on.
    let answer = unary(&mut c, tonic::Request::new(msg("after")))
        .await
        .expect("unary");
    assert_eq!(answer.into_inner().text, "after");
}

/// Clients make unary, streaming and long-lived bidi calls while the
/// config swaps 100 times between two sets of servers: not one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_fails_no_call() {
    const SWAPS: usize = 100;
    const CLIENTS: usize = 6;
    let a = [GrpcServer::start("a1").await, GrpcServer::start("a2").await];
    let b = [GrpcServer::start("b1").await, GrpcServer::start("b2").await];
    let config_a = config(&[a[0].addr, a[1].addr], "");
    let config_b = config(&[b[0].addr, b[1].addr], "");
    let sy = Switchyard::start(&config_a).await;
    let addr = sy.addr("web");
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let names = ["a1", "a2", "b1", "b2"];

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (done, calls) = (done.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut n = 0usize;
            // Bounded: until the swaps are done, and 20,000 calls at most.
            while !done.load(Ordering::SeqCst) && n < 20_000 {
                match i % 3 {
                    0 | 1 => {
                        let text = format!("call {n}");
                        let m = unary(&mut c, tonic::Request::new(msg(&text)))
                            .await
                            .unwrap_or_else(|s| panic!("unary call failed: {s:?}"))
                            .into_inner();
                        assert_eq!(m.text, text);
                        assert!(names.contains(&m.server.as_str()), "{}", m.server);
                    }
                    _ => {
                        let (tx, mut rx) = bidi(&mut c)
                            .await
                            .unwrap_or_else(|s| panic!("bidi call failed: {s:?}"));
                        for j in 0..5 {
                            tx.send(msg(&j.to_string())).await.expect("send");
                            let m = rx
                                .message()
                                .await
                                .unwrap_or_else(|s| panic!("bidi failed: {s:?}"));
                            assert_eq!(m.expect("echo").text, j.to_string());
                        }
                        drop(tx);
                        assert!(rx.message().await.expect("clean end").is_none());
                    }
                }
                n += 1;
                calls.fetch_add(1, Ordering::SeqCst);
            }
            n
        }));
    }
    // One bidi stream that lives through the whole storm: its server
    // leaves the config and comes back 50 times under it.
    let (long_done, long_calls) = (done.clone(), calls.clone());
    let long = tokio::spawn(async move {
        let mut c = client(addr).await;
        let (tx, mut rx) = bidi(&mut c).await.expect("long bidi call");
        let mut n = 0usize;
        while !long_done.load(Ordering::SeqCst) {
            tx.send(msg(&n.to_string())).await.expect("send");
            let m = rx
                .message()
                .await
                .unwrap_or_else(|s| panic!("long stream failed: {s:?}"));
            assert_eq!(m.expect("echo").text, n.to_string());
            n += 1;
            long_calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
        assert!(rx.message().await.expect("clean end").is_none());
        n
    });

    for swap in 1..=SWAPS {
        eventually("calls make progress", Duration::from_secs(30), || async {
            calls.load(Ordering::SeqCst) >= swap * 20
        })
        .await;
        sy.write_config(if swap % 2 == 1 { &config_b } else { &config_a });
        let record = sy.reload().await;
        assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        total += within("a client", 30, t).await.expect("client task");
    }
    let long_messages = within("the long stream", 30, long)
        .await
        .expect("long stream");
    let served: Vec<usize> = a.iter().chain(&b).map(|s| s.events.started()).collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "every server served calls: {served:?}"
    );
    eprintln!(
        "grpc reload storm: {total} calls and a {long_messages}-message stream over {SWAPS} reloads, 0 failed; calls per server {served:?}"
    );
}

/// The servers answering `n` unary calls.
async fn who_answers(c: &mut Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let m = unary(c, tonic::Request::new(msg("who"))).await;
        seen.push(m.map_or_else(|s| format!("{:?}", s.code()), |m| m.into_inner().server));
    }
    seen.sort();
    seen.dedup();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_not_serving_endpoints_out() {
    let one = GrpcServer::start("one").await;
    let two = GrpcServer::start("two").await;
    let check = r#"health_check = { type = "grpc", service = "test.Echo", interval = "100ms", timeout = "1s", rise = 1, fall = 1, jitter = "10ms" }"#;
    let sy = Switchyard::start(&config(&[one.addr, two.addr], check)).await;
    let mut c = client(sy.addr("web")).await;
    assert_eq!(who_answers(&mut c, 4).await, ["one", "two"]);

    one.health.set_not_serving::<Echo>().await;
    eventually("`one` leaves rotation", Duration::from_secs(5), || async {
        endpoint(&sy.status().await, one.addr)["healthy"] == false
    })
    .await;
    let status = sy.status().await;
    let last_error = &endpoint(&status, one.addr)["health_checks"]["last_error"];
    assert_eq!(last_error, "status NOT_SERVING", "{status}");
    assert_eq!(who_answers(&mut c, 6).await, ["two"]);

    // Every endpoint out: UNAVAILABLE, from Switchyard.
    two.health
        .set_service_status("test.Echo", ServingStatus::Unknown)
        .await;
    eventually("`two` leaves rotation", Duration::from_secs(5), || async {
        endpoint(&sy.status().await, two.addr)["healthy"] == false
    })
    .await;
    let status = unary(&mut c, tonic::Request::new(msg("who")))
        .await
        .expect_err("no endpoint");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "no server available");

    // SERVING again: back in rotation.
    one.health.set_serving::<Echo>().await;
    two.health.set_serving::<Echo>().await;
    eventually("both back in rotation", Duration::from_secs(5), || async {
        let status = sy.status().await;
        endpoint(&status, one.addr)["healthy"] == true
            && endpoint(&status, two.addr)["healthy"] == true
    })
    .await;
    assert_eq!(who_answers(&mut c, 4).await, ["one", "two"]);

    // A service the server does not know (NOT_FOUND) fails the check too,
    // and the whole server ("") is asked when no service is named.
    let checks = |service: &str| {
        config(
            &[one.addr],
            &format!(
                r#"health_check = {{ type = "grpc", {service} interval = "100ms", rise = 1, fall = 1, jitter = "10ms" }}"#
            ),
        )
    };
    sy.write_config(&checks(r#"service = "no.Such","#));
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    eventually(
        "an unknown service fails",
        Duration::from_secs(5),
        || async {
            let status = sy.status().await;
            let e = endpoint(&status, one.addr);
            e["healthy"] == false
                && e["health_checks"]["last_error"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("grpc-status 5"))
        },
    )
    .await;
    sy.write_config(&checks(""));
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    eventually(
        "the whole server is SERVING",
        Duration::from_secs(5),
        || async { endpoint(&sy.status().await, one.addr)["healthy"] == true },
    )
    .await;
    one.health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    eventually(
        "the whole server is NOT_SERVING",
        Duration::from_secs(5),
        || async { endpoint(&sy.status().await, one.addr)["healthy"] == false },
    )
    .await;
}

#[tokio::test]
async fn grpc_health_checks_need_http2() {
    let config = web_config(
        "",
        "",
        "servers = [\"127.0.0.1:1\"]\nhealth_check = { type = \"grpc\" }",
    );
    let error = Switchyard::try_start(&config).await.err().expect("refused");
    assert!(
        error.contains("backends[0].health_check") && error.contains("needs protocol = \"http2\""),
        "{error}"
    );
    let config = config_with_check(r#"{ type = "grpc", path = "/x" }"#);
    let error = Switchyard::try_start(&config).await.err().expect("refused");
    assert!(error.contains("health_check.path"), "{error}");
    let config = config_with_check(r#"{ type = "http", service = "x" }"#);
    let error = Switchyard::try_start(&config).await.err().expect("refused");
    assert!(
        error.contains("health_check.service") && error.contains("only used with type = \"grpc\""),
        "{error}"
    );
}

fn config_with_check(check: &str) -> String {
    web_config(
        "",
        "",
        &format!("protocol = \"http2\"\nservers = [\"127.0.0.1:1\"]\nhealth_check = {check}"),
    )
}
