//! The checks behind Switchyard's fuzz targets, one module a target.
//!
//! Each module takes one input (`&[u8]`) and panics when Switchyard
//! breaks a promise on it (a panic of its own, a wrong answer, an
//! inconsistency between two readings). The binaries in `src/bin/` hand
//! them AFL++'s inputs; `tests/fuzz_regressions.rs` in the main crate
//! includes this file as a module and replays every seed and regression
//! input through the same functions under `cargo test`. So this file and
//! the modules use only what the main crate's tests have too, and refer to
//! each other with `super::`, never `crate::`.
//!
//! A target with state to set up (a runtime, servers, a running
//! Switchyard) has a `Harness`: `start()` once, `run(input)` per input.

pub mod config;
pub mod consul_answer;
pub mod dns_answer;
pub mod h1_response;
pub mod http_proxy;
pub mod proxy_protocol;
pub mod request_heads;
pub mod template;
pub mod tls_hello;

/// The runtime a harness drives its async parts on: one thread, so a run
/// is as repeatable as the code under test allows, and nothing is running
/// between inputs but what the harness left.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Runs `reader` on a connection whose first bytes are `data`, arriving
/// `piece` bytes at a time, as a listener's read-ahead meets them (with a
/// 1 s deadline); its result and what the connection holds after it.
pub async fn read_ahead<T>(
    data: &[u8],
    piece: usize,
    reader: impl AsyncFnOnce(
        &mut switchyard::proxy::rewind::Rewind<tokio::io::DuplexStream>,
        tokio::time::Instant,
    ) -> T,
) -> (T, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let mut conn = switchyard::proxy::rewind::Rewind::new(rx);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    let send = async {
        for chunk in data.chunks(piece) {
            if tx.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        drop(tx);
    };
    let (result, ()) = tokio::join!(reader(&mut conn, deadline), send);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    (result, rest)
}

/// Runs one input through a target that is set up.
pub type Runner = Box<dyn FnMut(&[u8])>;

/// Sets a target up (its runtime, servers, files) and returns its runner.
pub type Start = fn() -> Runner;

/// Every target by name, with what sets it up.
pub const TARGETS: [(&str, Start); 9] = [
    ("h1_response", || Box::new(h1_response::run)),
    ("http_proxy", || {
        let mut h = http_proxy::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("request_heads", || Box::new(request_heads::run)),
    ("proxy_protocol", || {
        let mut h = proxy_protocol::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("tls_hello", || {
        let mut h = tls_hello::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("config", || {
        let mut h = config::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("template", || {
        let mut h = template::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("consul_answer", || {
        let mut h = consul_answer::Harness::start();
        Box::new(move |d| h.run(d))
    }),
    ("dns_answer", || {
        let mut h = dns_answer::Harness::start();
        Box::new(move |d| h.run(d))
    }),
];

/// Sets up the target called `name`.
///
/// # Panics
///
/// When there is no such target (a binary or test naming one wrongly).
pub fn start(name: &str) -> Runner {
    let (_, start) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    start()
}
