//! Time from a KV change to the first request served by the route it
//! makes, through a template included in Switchyard's own config: the kv
//! directory, then Consul KV (the Consul-compatible test server the tests
//! use). No `wait`: renders happen as soon as a change is seen.
//!
//! Switchyard runs in-process with `templates/routes.toml.tera` rendered
//! into an included file; the key `switchyard/routes/probe` routes
//! `/probe/` to responder `a` or `b`. Each round flips the key and measures,
//! from the moment the write returned, until a keep-alive client sending
//! `GET /probe/` back to back gets the other responder's answer.
//!
//! Changes are spaced a random 100–300 ms apart, as isolated edits are. A
//! last series sends Consul changes 20–100 ms apart: faster than the ten
//! requests a second a watch allows itself after a burst of two (the
//! pacing consul-template also applies), so some changes wait up to 100 ms
//! for their turn; that row shows the price of the pacing.
//!
//! Run: `cargo bench --bench template_convergence` (about 90 s).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::consul::ConsulServer;
use support::{HttpClient, Switchyard};

const ROUNDS: usize = 200;

fn config(source: &str) -> String {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/routes.toml.tera");
    let mut c = format!(
        "include = [\"out/routes.toml\"]\n{source}\n[[templates]]\nsource = \"{}\"\n\
         destination = \"out/routes.toml\"\n\n[[listeners]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\ndefault_backend = \"a\"\n",
        template.display()
    );
    for name in ["a", "b"] {
        c.push_str(&format!(
            "[[backends]]\nname = \"{name}\"\nrespond = {{ status = 200, body = \"{name}\" }}\n"
        ));
    }
    c
}

fn route(backend: &str) -> String {
    format!("path_prefix = \"/probe/\"\nbackend = \"{backend}\"\n")
}

/// Flips the route `ROUNDS` times with `write` and returns each
/// convergence time, sorted.
async fn measure(
    sy: &Switchyard,
    spacing_ms: std::ops::Range<u64>,
    mut write: impl FnMut(&str),
) -> Vec<Duration> {
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let backend = if round % 2 == 0 { "b" } else { "a" };
        tokio::time::sleep(Duration::from_millis(fastrand::u64(spacing_ms.clone()))).await;
        write(backend);
        let changed = Instant::now();
        loop {
            let (status, _, body) = client.get("/probe/", None).await.expect("proxy answers");
            assert!(status.is_success(), "request failed: {status}");
            if body == backend {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(10),
                "route did not change in 10 s"
            );
        }
        times.push(changed.elapsed());
    }
    times.sort();
    times
}

fn row(source: &str, t: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {source} | {ROUNDS} | {:.1} | {:.1} | {:.1} |",
        ms(t[t.len() / 2]),
        ms(t[t.len() * 99 / 100]),
        ms(t[t.len() - 1])
    );
}

fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The kv directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("kv/switchyard/routes/probe");
    std::fs::create_dir_all(key.parent().unwrap()).expect("kv dir");
    put(&key, &route("a"));
    let sy = Switchyard::start_in(dir, &config("[kv]\ndir = \"kv\"")).await;
    let kv_dir = measure(&sy, 100..300, |backend| put(&key, &route(backend))).await;
    drop(sy);

    // Consul KV.
    let consul = ConsulServer::start().await;
    consul.kv_put("switchyard/routes/probe", route("a"));
    let sy = Switchyard::start_in(
        tempfile::tempdir().expect("tempdir"),
        &config(&format!("[consul]\naddress = \"{}\"", consul.url())),
    )
    .await;
    let from_consul = measure(&sy, 100..300, |backend| {
        consul.kv_put("switchyard/routes/probe", route(backend));
    })
    .await;
    let consul_fast = measure(&sy, 20..100, |backend| {
        consul.kv_put("switchyard/routes/probe", route(backend));
    })
    .await;

    println!(
        "\nKV change to the first request on the new route (template included in the config, no wait)\n"
    );
    println!("| source | changes | p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    row("kv directory", &kv_dir);
    row("Consul KV (test server)", &from_consul);
    row("Consul KV, changes 20–100 ms apart", &consul_fast);
}
