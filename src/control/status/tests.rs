//! `/status` built from a compiled table: backend states, routes, counters
//! and the reload history.

use std::sync::Arc;

use super::*;
use crate::control::{RELOAD_HISTORY, ReloadResult, Trigger};
use crate::metrics::Metrics;
use crate::table::{self, CompileContext};

const CONFIG: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "pool"

[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "pool"

[[routes]]
listener = "web"
host = "*.example.com"
path_prefix = "/api/"
backend = "pool"

[[routes]]
listener = "web"
path_prefix = "/hello"
backend = "hello"

[[backends]]
name = "pool"
servers = ["127.0.0.1:1", "127.0.0.1:2"]

[[backends]]
name = "hello"
respond = { status = 200, body = "hi" }
"#;

fn table() -> Table {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let config = crate::config::load(&path).unwrap();
    table::compile(
        Arc::new(config),
        1,
        None,
        &CompileContext::STATIC,
        &Metrics::new().unwrap(),
    )
    .unwrap()
}

fn json(table: &Table, board: &BoardState) -> serde_json::Value {
    serde_json::to_value(build(table, board)).unwrap()
}

fn backend<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap()
}

#[test]
fn backend_state_counts_endpoints_in_rotation() {
    use BackendState::*;
    assert_eq!(BackendState::of([true, true]), Up);
    assert_eq!(BackendState::of([true, false]), Degraded);
    assert_eq!(BackendState::of([false, false]), Down);
    assert_eq!(BackendState::of([]), Down, "no endpoint at all is down");
}

#[test]
fn a_backend_whose_every_endpoint_fails_is_down() {
    let table = table();
    let board = BoardState::default();
    let status = json(&table, &board);
    assert_eq!(backend(&status, "pool")["state"], "up");
    assert_eq!(backend(&status, "hello")["state"], "up", "respond is up");

    let set = table.backends["pool"].endpoints.load_full();
    set.endpoints[0].state.set_healthy(false);
    assert_eq!(backend(&json(&table, &board), "pool")["state"], "degraded");
    // Unhealthy and ejected alike take an endpoint out.
    let outlier = crate::config::OutlierSpec {
        consecutive_connect_failures: 1,
        max_ejected_percent: 100,
        ..Default::default()
    };
    let eject = set.endpoints[1].state.report(
        crate::upstream::health::Outcome::ConnectFailed,
        &outlier,
        &table.backends["pool"].endpoints,
    );
    assert!(eject.is_some());
    let status = json(&table, &board);
    assert_eq!(backend(&status, "pool")["state"], "down");
    let ep = &backend(&status, "pool")["endpoints"][1];
    assert_eq!(ep["ejected"], true);
    assert_eq!(
        (ep["requests_total"].as_u64(), ep["failures_total"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn listeners_list_their_routes() {
    let status = json(&table(), &BoardState::default());
    let web = &status["listeners"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["routes"], 2);
    assert_eq!(
        web["route_list"],
        serde_json::json!([
            { "host": "*.example.com", "path": "/api/", "backend": "pool" },
            { "host": "*", "path": "/hello", "backend": "hello" },
        ])
    );
    let raw = &status["listeners"][1];
    assert_eq!(
        (
            raw["routes"].as_u64(),
            raw["route_list"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn reloads_keep_the_latest_newest_first() {
    let table = table();
    let mut board = BoardState::default();
    let record = |version, result| ReloadRecord {
        at: String::new(),
        trigger: Trigger::Admin,
        result,
        version,
        errors: Vec::new(),
        diff: None,
    };
    for version in 1..=RELOAD_HISTORY as u64 + 3 {
        let result = if version == 5 {
            ReloadResult::Failure
        } else {
            ReloadResult::Success
        };
        board.record_reload(&record(version, result));
    }
    let status = json(&table, &board);
    let versions: Vec<u64> = status["reloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    let newest = RELOAD_HISTORY as u64 + 3;
    assert_eq!(versions, (4..=newest).rev().collect::<Vec<_>>());
    assert_eq!(status["last_reload"]["version"], newest);
    assert_eq!(status["last_failure"]["version"], 5);
}
