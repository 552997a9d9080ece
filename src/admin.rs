//! The admin HTTP server: `/metrics`, `/healthz`, `/status`, `POST /reload`,
//! `POST /upgrade`, and the status page at `/` (files in [`ui`]).
//!
//! Bound to loopback by default. It reads the published table and the
//! control plane's status board, and asks the control task for reloads; it
//! never touches the data plane's state directly.

mod ui;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::control::{ControlMsg, ReloadResult, StatusBoard, Trigger, status};
use crate::error_chain::ErrorChain;
use crate::metrics::Metrics;
use crate::table::TableHandle;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub table: TableHandle,
    pub board: Arc<StatusBoard>,
    pub control: mpsc::Sender<ControlMsg>,
}

/// Serves the admin API until `stop` is cancelled.
pub async fn run(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "Admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if let Some(asset) = ui::asset(req.uri().path()) {
        return match *req.method() {
            // hyper leaves the body out of an answer to HEAD.
            Method::GET | Method::HEAD => page(asset),
            _ => not_allowed(),
        };
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/healthz") => {
            if state.board.lock().shutting_down {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        (&Method::GET, "/status") => {
            let table = state.table.current();
            let board = state.board.lock();
            json(StatusCode::OK, &status::build(&table, &board))
        }
        (&Method::POST, "/reload") => {
            let (reply, answer) = oneshot::channel();
            let msg = ControlMsg::Reload {
                trigger: Trigger::Admin,
                reply: Some(reply),
            };
            if state.control.send(msg).await.is_err() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                );
            }
            match answer.await {
                Ok(record) => {
                    let code = match record.result {
                        ReloadResult::Failure => StatusCode::UNPROCESSABLE_ENTITY,
                        _ => StatusCode::OK,
                    };
                    json(code, &record)
                }
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                ),
            }
        }
        (&Method::POST, "/upgrade") => upgrade(state).await,
        (_, "/metrics" | "/healthz" | "/status" | "/reload" | "/upgrade") => not_allowed(),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try / (status page) /metrics /healthz /status, POST /reload or POST /upgrade\n"
                .into(),
        ),
    }
}

fn not_allowed() -> Response<Full<Bytes>> {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "method not allowed\n".into(),
    )
}

/// A file of the status page. `no-cache`: the browser asks again each
/// time (the files change with the binary), and gets them from memory.
fn page(asset: &ui::Asset) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(ui::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `POST /upgrade`: answers once the new process serves (200), or with
/// why not: 409 when an upgrade runs already or this process has been
/// replaced, 500 when the new process failed (this one keeps serving).
async fn upgrade(state: &AdminState) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct Answer {
        result: &'static str,
        pid: u32,
        new_pid: Option<u32>,
        took_ms: Option<u64>,
        exit_code: Option<i32>,
        error: Option<String>,
    }
    let pid = std::process::id();
    match crate::app::request_upgrade(&state.board, &state.control).await {
        Ok(upgraded) => json(
            StatusCode::OK,
            &Answer {
                result: "success",
                pid,
                new_pid: Some(upgraded.new_pid),
                took_ms: u64::try_from(upgraded.took.as_millis()).ok(),
                exit_code: None,
                error: None,
            },
        ),
        Err(error) => {
            let status = if error.is_refusal() {
                StatusCode::CONFLICT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            json(
                status,
                &Answer {
                    result: if status == StatusCode::CONFLICT {
                        "refused"
                    } else {
                        "failure"
                    },
                    pid,
                    new_pid: None,
                    took_ms: None,
                    exit_code: error.exit_code(),
                    error: Some(ErrorChain(&error).to_string()),
                },
            )
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            text(status, "application/json", body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode status: {e}\n"),
        ),
    }
}
