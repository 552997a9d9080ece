//! Replays the fuzz targets' inputs under `cargo test`: every seed in
//! `fuzz/corpus/<target>/` and every input that once broke a target in
//! `fuzz/regressions/<target>/`, through the same checks AFL++ runs
//! (`fuzz/src/`, included here as a module, so the two cannot drift).
//! Fuzzing itself is `fuzz/run.sh` (README, "Fuzzing").

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

/// The files in `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every seed and regression input of `target`; fails naming each
/// input that broke a check.
fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = inputs(&root.join("corpus").join(target));
    assert!(
        !seeds.is_empty(),
        "no seeds for {target} in fuzz/corpus/{target}/"
    );
    let regressions = inputs(&root.join("regressions").join(target));
    let mut run = fuzz::start(target);
    let mut failed = Vec::new();
    for file in seeds.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("read a fuzz input");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(
                file.strip_prefix(&root)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs failed (the panics are printed above): {failed:?}",
        failed.len(),
        seeds.len() + regressions.len()
    );
}

#[test]
fn h1_response() {
    replay("h1_response");
}

#[test]
fn http_proxy() {
    replay("http_proxy");
}

#[test]
fn request_heads() {
    replay("request_heads");
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol");
}

#[test]
fn tls_hello() {
    replay("tls_hello");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn template() {
    replay("template");
}

#[test]
fn consul_answer() {
    replay("consul_answer");
}

#[test]
fn dns_answer() {
    replay("dns_answer");
}

#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    let tested = [
        "h1_response",
        "http_proxy",
        "request_heads",
        "proxy_protocol",
        "tls_hello",
        "config",
        "template",
        "consul_answer",
        "dns_answer",
    ];
    assert_eq!(names, tested, "a target without its replay test above");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .expect("read fuzz/Cargo.toml");
    for name in names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} has no binary in fuzz/Cargo.toml"
        );
    }
}
