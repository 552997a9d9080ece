//! The Consul test server (`tests/support/consul`) against the wire contract
//! it stands in for, over real sockets: KV, blocking queries, health and
//! catalog shapes, agent registration and TTL checks, ACLs, leader loss,
//! snapshot restore and injected faults.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::consul::{
    Access, AclOptions, AclToken, ConsulOptions, ConsulServer, Fault, Policy, ServiceInstance,
};
use support::{Answer, HttpClient, eventually, full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upper bound for anything that should happen "at once".
const PROMPTLY: Duration = Duration::from_secs(3);

// === helpers ===

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut client = HttpClient::connect(addr).await;
    send_on(&mut client, method, path, body, headers)
        .await
        .expect("consul answers")
}

async fn send_on(
    client: &mut HttpClient,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Result<Answer, hyper::Error> {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send(request.body(full(body)).expect("request"))
        .await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, "", &[]).await
}

async fn put(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Answer {
    send(addr, "PUT", path, body, &[]).await
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .1
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn index_of(answer: &Answer) -> u64 {
    header(answer, "x-consul-index")
        .parse()
        .unwrap_or_else(|_| panic!("X-Consul-Index missing: {:?}", answer.1))
}

fn body_json(answer: &Answer) -> Value {
    serde_json::from_str(&answer.2).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", answer.2))
}

fn instance(name: &str, id: &str, status: &'static str) -> ServiceInstance {
    ServiceInstance {
        status,
        ..ServiceInstance::new(name, id)
    }
}

fn ids(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Writes one raw request and reads until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer))
        .await
        .expect("server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

// === KV ===

#[tokio::test]
async fn kv_put_then_get_returns_entry_with_indexes_and_headers() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    assert_eq!(consul.index(), 1, "nothing written yet");

    let written = put(addr, "/v1/kv/switchyard/routes/api", "pool=api\n").await;
    assert_eq!((written.0, written.2.as_str()), (StatusCode::OK, "true"));
    assert_eq!(header(&written, "content-type"), "application/json");
    assert_eq!(
        header(&written, "x-consul-index"),
        "",
        "writes carry no index"
    );

    let read = get(addr, "/v1/kv/switchyard/routes/api").await;
    assert_eq!(read.0, StatusCode::OK);
    assert_eq!(header(&read, "content-type"), "application/json");
    assert_eq!(header(&read, "x-consul-knownleader"), "true");
    assert_eq!(header(&read, "x-consul-lastcontact"), "0");
    assert_eq!(header(&read, "x-consul-default-acl-policy"), "allow");
    let index = index_of(&read);
    assert_eq!(index, consul.index());
    assert_eq!(
        body_json(&read),
        json!([{
            "LockIndex": 0, "Key": "switchyard/routes/api", "Flags": 0,
            "Value": "cG9vbD1hcGkK", "CreateIndex": index, "ModifyIndex": index,
        }])
    );
    assert!(!read.2.ends_with('\n'), "compact JSON, no newline");
    assert!(
        get(addr, "/v1/kv/switchyard/routes/api?pretty")
            .await
            .2
            .ends_with("}\n]\n")
    );

    // An identical write advances the Raft index but not the entry's.
    put(addr, "/v1/kv/switchyard/routes/api", "pool=api\n").await;
    assert!(consul.index() > index);
    assert_eq!(
        index_of(&get(addr, "/v1/kv/switchyard/routes/api").await),
        index
    );

    // Flags are set by `flags` and reset by a PUT without it.
    put(addr, "/v1/kv/switchyard/routes/api?flags=42", "pool=api\n").await;
    let flagged = body_json(&get(addr, "/v1/kv/switchyard/routes/api").await);
    assert_eq!(flagged[0]["Flags"], 42);
    assert_eq!(flagged[0]["CreateIndex"], index);
    put(addr, "/v1/kv/switchyard/routes/api", "pool=api\n").await;
    assert_eq!(
        body_json(&get(addr, "/v1/kv/switchyard/routes/api").await)[0]["Flags"],
        0
    );

    // An empty value is null; `raw` gives the exact bytes as text/plain.
    put(addr, "/v1/kv/switchyard/", "").await;
    assert_eq!(
        body_json(&get(addr, "/v1/kv/switchyard/").await)[0]["Value"],
        Value::Null
    );
    let raw = get(addr, "/v1/kv/switchyard/routes/api?raw").await;
    assert_eq!((raw.0, raw.2.as_str()), (StatusCode::OK, "pool=api\n"));
    assert_eq!(header(&raw, "content-type"), "text/plain");
    assert_eq!(header(&raw, "x-content-type-options"), "nosniff");

    // Test hooks see and make the same state.
    assert_eq!(
        consul.kv_get("switchyard/routes/api").as_deref(),
        Some(&b"pool=api\n"[..])
    );
    let hooked = consul.kv_put("switchyard/limits", "250");
    let limits = get(addr, "/v1/kv/switchyard/limits?raw").await;
    assert_eq!((index_of(&limits), limits.2.as_str()), (hooked, "250"));
}

#[tokio::test]
async fn kv_missing_key_is_404_with_query_meta_and_missing_name_is_400() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let empty_store = get(addr, "/v1/kv/nope").await;
    assert_eq!(
        (empty_store.0, empty_store.2.as_str()),
        (StatusCode::NOT_FOUND, "")
    );
    assert_eq!(index_of(&empty_store), 1, "never 0");
    assert_eq!(header(&empty_store, "x-consul-knownleader"), "true");
    assert_eq!(header(&empty_store, "x-consul-lastcontact"), "0");
    assert_eq!(header(&empty_store, "x-consul-default-acl-policy"), "allow");

    let high_water = consul.kv_put("other", "x");
    assert_eq!(index_of(&get(addr, "/v1/kv/nope").await), high_water);

    let missing = get(addr, "/v1/kv/").await;
    assert_eq!(
        (missing.0, missing.2.as_str()),
        (StatusCode::BAD_REQUEST, "Missing key name")
    );
    assert_eq!(
        header(&missing, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(put(addr, "/v1/kv/", "x").await.2, "Missing key name");
    assert_eq!(
        send(addr, "DELETE", "/v1/kv/", "", &[]).await.2,
        "Missing key name"
    );
}

#[tokio::test]
async fn kv_recurse_and_keys_with_separator() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let empty_root = get(addr, "/v1/kv/?keys").await;
    assert_eq!(
        (empty_root.0, body_json(&empty_root)),
        (StatusCode::OK, json!([]))
    );
    assert_eq!(get(addr, "/v1/kv/?recurse").await.0, StatusCode::NOT_FOUND);

    for key in ["switchyard/routes/web", "switchyard/", "switchyard/limits"] {
        consul.kv_put(key, "v");
    }
    let last = consul.kv_put("switchyard/routes/api", "v");
    consul.kv_put("switchyardx", "v");

    let grouped = get(addr, "/v1/kv/switchyard/?keys&separator=/").await;
    assert_eq!(
        body_json(&grouped),
        json!(["switchyard/", "switchyard/limits", "switchyard/routes/"])
    );
    assert_eq!(index_of(&grouped), last, "max ModifyIndex under the prefix");
    let misspelt = get(addr, "/v1/kv/switchyard/?keys&seperator=/").await;
    assert_eq!(body_json(&misspelt), body_json(&grouped));
    assert_eq!(
        body_json(&get(addr, "/v1/kv/?keys=false").await)
            .as_array()
            .map(Vec::len),
        Some(5),
        "flags are on whatever their value"
    );

    let tree = body_json(&get(addr, "/v1/kv/switchyard/routes/?recurse").await);
    let keys: Vec<&str> = tree
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["Key"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(keys, ["switchyard/routes/api", "switchyard/routes/web"]);
    assert_eq!(
        get(addr, "/v1/kv/nothing/?recurse").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(addr, "/v1/kv/nothing/?keys").await.0,
        StatusCode::NOT_FOUND
    );
    let plain_prefix = body_json(&get(addr, "/v1/kv/switchyard?keys").await);
    assert_eq!(
        plain_prefix.as_array().map(Vec::len),
        Some(5),
        "string prefix, not path"
    );
}

#[tokio::test]
async fn kv_cas_flags_and_limits() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    assert_eq!(put(addr, "/v1/kv/k?cas=0", "1").await.2, "true");
    assert_eq!(
        put(addr, "/v1/kv/k?cas=0", "2").await.2,
        "false",
        "create-only"
    );
    let index = index_of(&get(addr, "/v1/kv/k").await);
    assert_eq!(
        put(addr, &format!("/v1/kv/k?cas={}", index + 100), "3")
            .await
            .2,
        "false"
    );
    let applied = put(addr, &format!("/v1/kv/k?cas={index}"), "3").await;
    assert_eq!((applied.0, applied.2.as_str()), (StatusCode::OK, "true"));
    assert_eq!(consul.kv_get("k").as_deref(), Some(&b"3"[..]));
    assert_eq!(put(addr, "/v1/kv/missing?cas=5", "x").await.2, "false");

    let conflict = put(addr, "/v1/kv/k?release=abc&cas=1", "x").await;
    assert_eq!(
        (conflict.0, conflict.2.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Conflicting flags: cas=1&release=abc\n"
        )
    );
    assert_eq!(
        put(addr, "/v1/kv/k?flags=abc", "x").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let acquire = put(addr, "/v1/kv/k?acquire=nope", "x").await;
    assert_eq!(acquire.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        acquire.2.contains("invalid session \"nope\""),
        "{}",
        acquire.2
    );

    let too_large = put(addr, "/v1/kv/big", vec![b'x'; 512 * 1024 + 1]).await;
    assert_eq!(too_large.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_large
            .2
            .starts_with("Request body(524289 bytes) too large, max size: 524288 bytes.")
    );
    assert_eq!(
        put(addr, "/v1/kv/big", vec![b'x'; 512 * 1024]).await.2,
        "true"
    );
}

#[tokio::test]
async fn kv_delete_semantics_and_tombstones_raise_the_prefix_index() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    consul.kv_put("app/a", "1");
    let b_index = consul.kv_put("app/b", "2");
    consul.kv_put("other", "x");
    assert_eq!(index_of(&get(addr, "/v1/kv/app/?recurse").await), b_index);

    let before = consul.index();
    assert_eq!(
        send(addr, "DELETE", "/v1/kv/app/none", "", &[]).await.2,
        "true"
    );
    assert_eq!(
        index_of(&get(addr, "/v1/kv/app/?recurse").await),
        b_index,
        "deleting nothing changes no KV index"
    );
    assert!(consul.index() > before, "but is a Raft entry");

    assert_eq!(
        send(addr, "DELETE", "/v1/kv/app/a?cas=999", "", &[])
            .await
            .2,
        "false"
    );
    assert_eq!(
        send(addr, "DELETE", "/v1/kv/app/a?cas=0", "", &[]).await.2,
        "false"
    );
    assert_eq!(
        send(addr, "DELETE", "/v1/kv/app/gone?cas=7", "", &[])
            .await
            .2,
        "true"
    );
    let a_index = body_json(&get(addr, "/v1/kv/app/a").await)[0]["ModifyIndex"]
        .as_u64()
        .expect("index");
    let deleted = send(
        addr,
        "DELETE",
        &format!("/v1/kv/app/a?cas={a_index}"),
        "",
        &[],
    )
    .await;
    assert_eq!(deleted.2, "true");

    // The tombstone of app/a is now the newest thing under app/.
    let after_delete = index_of(&get(addr, "/v1/kv/app/?recurse").await);
    assert!(after_delete > b_index, "{after_delete} > {b_index}");
    assert_eq!(
        index_of(&get(addr, "/v1/kv/app/a").await),
        after_delete,
        "KV high-water"
    );

    consul.reap_tombstones();
    assert_eq!(
        index_of(&get(addr, "/v1/kv/app/?recurse").await),
        b_index,
        "after reaping the prefix index goes down"
    );

    let conflict = send(addr, "DELETE", "/v1/kv/app/?recurse&cas=1", "", &[]).await;
    assert_eq!(conflict.0, StatusCode::BAD_REQUEST);
    assert!(conflict.2.starts_with("Conflicting flags: "));
    assert_eq!(
        send(addr, "DELETE", "/v1/kv/app/?recurse", "", &[]).await.2,
        "true"
    );
    assert_eq!(
        get(addr, "/v1/kv/app/?recurse").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(consul.kv_get("other").as_deref(), Some(&b"x"[..]));
}

// === blocking queries ===

#[tokio::test]
async fn blocking_get_returns_on_a_write_with_the_new_index() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let first = consul.kv_put("app/x", "1");
    let path = format!("/v1/kv/app/x?index={first}&wait=5s");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;

    consul.kv_put("unrelated", "y");
    let second = consul.kv_put("app/x", "2");
    let answer = tokio::time::timeout(PROMPTLY, blocked)
        .await
        .expect("released by the write")
        .expect("task");
    assert_eq!(index_of(&answer), second);
    assert_eq!(body_json(&answer)[0]["Value"], "Mg==");
    assert_eq!(consul.open_blocking(), 0);
    assert_eq!(consul.blocking_requests("/v1/kv/app/x"), 1);
    assert_eq!(consul.requests("/v1/kv/"), 1);
}

#[tokio::test]
async fn blocking_get_times_out_with_the_same_index_and_missing_keys_keep_waiting() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let index = consul.kv_put("k", "v");
    let started = Instant::now();
    let answer = get(addr, &format!("/v1/kv/k?index={index}&wait=200ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((answer.0, index_of(&answer)), (StatusCode::OK, index));

    // A missing key: the first read answers with the KV high-water index;
    // blocking on it, writes to other keys do not release the read.
    let missing = get(addr, "/v1/kv/later").await;
    let high_water = index_of(&missing);
    let path = format!("/v1/kv/later?index={high_water}&wait=400ms");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;
    let other = consul.kv_put("elsewhere", "x");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        consul.open_blocking(),
        1,
        "still waiting after an unrelated write"
    );
    let answer = blocked.await.expect("task");
    assert_eq!(answer.0, StatusCode::NOT_FOUND);
    assert_eq!(index_of(&answer), other);
}

#[tokio::test]
async fn client_index_ahead_blocks_the_full_wait_and_gets_the_lower_index() {
    let consul = ConsulServer::start().await;
    let index = consul.kv_put("k", "v");
    let started = Instant::now();
    let answer = get(
        consul.addr(),
        &format!("/v1/kv/k?index={}&wait=300ms", index + 1000),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((answer.0, index_of(&answer)), (StatusCode::OK, index));
}

#[tokio::test]
async fn wait_and_index_parameters_are_validated() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let bad_wait = get(addr, "/v1/kv/k?index=1&wait=soon").await;
    assert_eq!(
        (bad_wait.0, bad_wait.2.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid wait time")
    );
    let bad_index = get(addr, "/v1/kv/k?index=x").await;
    assert_eq!(
        (bad_index.0, bad_index.2.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid index")
    );
    let conflict = get(addr, "/v1/health/service/x?stale&consistent").await;
    assert_eq!(
        conflict.2,
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
    let started = Instant::now();
    let answer = get(addr, "/v1/kv/k?index=1&wait=0.1s").await;
    assert_eq!(answer.0, StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        get(addr, "/v1/kv/k?dc=elsewhere").await.2,
        "No path to datacenter"
    );
}

#[tokio::test]
async fn lower_index_wakes_a_blocked_query_with_a_lower_index() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    consul.kv_put("a", "1");
    consul.kv_put("b", "2");
    let index = consul.kv_put("k", "v");
    let path = format!("/v1/kv/k?index={index}&wait=30s");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;

    consul.lower_index(2);
    let answer = tokio::time::timeout(PROMPTLY, blocked)
        .await
        .expect("released by the restore")
        .expect("task");
    assert_eq!((answer.0, index_of(&answer)), (StatusCode::OK, 2));
    assert_eq!(consul.index(), 2);
    assert!(
        consul.kv_put("k", "w") > 2,
        "writes continue from the lowered index"
    );
}

#[tokio::test]
async fn disconnected_clients_and_shutdown_release_blocked_queries() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let index = consul.kv_put("k", "v");

    let mut client = HttpClient::connect(addr).await;
    let path = format!("/v1/kv/k?index={index}&wait=30s");
    let pending = tokio::spawn(async move {
        let _ = send_on(&mut client, "GET", &path, "", &[]).await;
    });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;
    pending.abort();
    eventually("the dropped client's read ends", PROMPTLY, || async {
        consul.open_blocking() == 0
    })
    .await;

    let path = format!("/v1/kv/k?index={index}&wait=30s");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;
    consul.shutdown().await;
    let answer = tokio::time::timeout(PROMPTLY, blocked)
        .await
        .expect("released by shutdown")
        .expect("task");
    assert_eq!((answer.0, index_of(&answer)), (StatusCode::OK, index));

    // The port is free again: a new server (a restarted Consul) takes it.
    let restarted = ConsulServer::start_with(ConsulOptions {
        port: Some(addr.port()),
        ..ConsulOptions::default()
    })
    .await;
    assert_eq!(restarted.addr(), addr);
    let fresh = get(addr, "/v1/kv/k").await;
    assert_eq!((fresh.0, index_of(&fresh)), (StatusCode::NOT_FOUND, 1));
}

#[tokio::test]
async fn a_server_can_start_at_a_chosen_index() {
    let consul = ConsulServer::start_with(ConsulOptions {
        initial_index: 50,
        ..ConsulOptions::default()
    })
    .await;
    assert_eq!(consul.index(), 50);
    assert_eq!(index_of(&get(consul.addr(), "/v1/catalog/nodes").await), 50);
    assert_eq!(consul.register(instance("api", "api-1", "passing")), 51);
    assert_eq!(consul.kv_put("k", "v"), 52);
    assert_eq!(
        index_of(&get(consul.addr(), "/v1/health/service/api").await),
        51
    );
}

// === health and catalog ===

#[tokio::test]
async fn health_service_entries_have_the_consul_shape() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let index = consul.register(ServiceInstance {
        node: "edge-1".into(),
        node_address: "10.20.0.11".into(),
        tags: vec!["v2".into(), "blue".into()],
        meta: [("version".to_string(), "2.4.1".to_string())].into(),
        port: 7000,
        ..ServiceInstance::new("api", "api-7f3a")
    });

    let answer = get(addr, "/v1/health/service/api").await;
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(index_of(&answer), index);
    assert_eq!(header(&answer, "x-consul-effective-consistency"), "leader");
    let entries = body_json(&answer);
    let entry = &entries[0];
    assert_eq!(entries.as_array().map(Vec::len), Some(1));
    assert_eq!(entry["Node"]["Node"], "edge-1");
    assert_eq!(entry["Node"]["Address"], "10.20.0.11");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    assert_eq!(entry["Node"]["TaggedAddresses"]["lan"], "10.20.0.11");
    assert_eq!(entry["Service"]["ID"], "api-7f3a");
    assert_eq!(entry["Service"]["Service"], "api");
    assert_eq!(
        entry["Service"]["Address"], "",
        "no fallback to the node address"
    );
    assert_eq!(entry["Service"]["Port"], 7000);
    assert_eq!(entry["Service"]["Tags"], json!(["v2", "blue"]));
    assert_eq!(entry["Service"]["Meta"], json!({"version": "2.4.1"}));
    assert_eq!(
        entry["Service"]["Weights"],
        json!({"Passing": 1, "Warning": 1})
    );
    let checks = entry["Checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["CheckID"], "serfHealth");
    assert_eq!(checks[0]["ServiceID"], "");
    assert_eq!(checks[0]["ServiceTags"], json!([]));
    assert_eq!(checks[1]["CheckID"], "service:api-7f3a");
    assert_eq!(checks[1]["Name"], "Service 'api' check");
    assert_eq!(checks[1]["Status"], "passing");
    assert_eq!(checks[1]["ServiceTags"], json!(["v2", "blue"]));

    let unknown = get(addr, "/v1/health/service/nope").await;
    assert_eq!(
        (unknown.0, body_json(&unknown)),
        (StatusCode::OK, json!([]))
    );
    assert!(index_of(&unknown) >= 1);
    assert_eq!(
        get(addr, "/v1/health/service/").await.2,
        "Missing service name"
    );

    // A weighted instance with its own address; tags `[]` when none.
    consul.register(ServiceInstance {
        address: "10.20.5.40".into(),
        port: 7001,
        weights: Some((3, 1)),
        ..ServiceInstance::new("api", "api-2")
    });
    let entries = body_json(&get(addr, "/v1/health/service/api").await);
    let second = &entries[1]["Service"];
    assert_eq!(second["Address"], "10.20.5.40");
    assert_eq!(second["Tags"], json!([]));
    assert_eq!(second["Weights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(
        second["TaggedAddresses"]["lan_ipv4"],
        json!({"Address": "10.20.5.40", "Port": 7001})
    );

    // Catalog forms of the same data.
    let flat = body_json(&get(addr, "/v1/catalog/service/api").await);
    assert_eq!(flat[0]["ServiceID"], "api-7f3a");
    assert_eq!(flat[0]["ServiceAddress"], "");
    assert_eq!(flat[0]["Address"], "10.20.0.11");
    assert_eq!(flat[0]["ServiceTags"], json!(["v2", "blue"]));
    let services = get(addr, "/v1/catalog/services").await;
    assert_eq!(body_json(&services), json!({"api": ["blue", "v2"]}));
    let nodes = body_json(&get(addr, "/v1/catalog/nodes").await);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["Node"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["consul-test", "edge-1", "node-1"]);
    assert_eq!(
        body_json(&get(addr, "/v1/catalog/service/nope").await),
        json!([])
    );
    assert_eq!(
        body_json(&get(addr, "/v1/catalog/datacenters").await),
        json!(["dc1"])
    );
    let checks = body_json(&get(addr, "/v1/health/checks/api").await);
    assert_eq!(
        checks.as_array().map(Vec::len),
        Some(2),
        "service checks only"
    );
}

#[tokio::test]
async fn health_passing_and_tag_filters() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    consul.register(ServiceInstance {
        tags: vec!["blue".into(), "v2".into()],
        ..instance("api", "a-pass", "passing")
    });
    consul.register(ServiceInstance {
        tags: vec!["blue".into()],
        ..instance("api", "b-warn", "warning")
    });
    consul.register(instance("api", "c-crit", "critical"));
    consul.register(ServiceInstance {
        node: "sick".into(),
        ..instance("api", "d-node-down", "passing")
    });
    consul.set_node_status("sick", "critical");

    let all = body_json(&get(addr, "/v1/health/service/api").await);
    assert_eq!(ids(&all), ["a-pass", "b-warn", "c-crit", "d-node-down"]);
    for passing in ["passing", "passing=1", "passing=true", "passing=T"] {
        let only = body_json(&get(addr, &format!("/v1/health/service/api?{passing}")).await);
        assert_eq!(ids(&only), ["a-pass"], "?{passing}");
    }
    let off = body_json(&get(addr, "/v1/health/service/api?passing=false").await);
    assert_eq!(ids(&off).len(), 4);
    let invalid = get(addr, "/v1/health/service/api?passing=yes").await;
    assert_eq!(
        (invalid.0, invalid.2.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid value for ?passing")
    );

    let blue = body_json(&get(addr, "/v1/health/service/api?tag=blue").await);
    assert_eq!(ids(&blue), ["a-pass", "b-warn"]);
    let both = body_json(&get(addr, "/v1/health/service/api?tag=blue&tag=v2").await);
    assert_eq!(ids(&both), ["a-pass"]);

    let filtered = get(
        addr,
        "/v1/health/service/api?filter=%22v2%22%20in%20Service.Tags",
    )
    .await;
    assert_eq!(ids(&body_json(&filtered)), ["a-pass"]);
    let by_check = get(
        addr,
        "/v1/health/service/api?filter=Checks.Status%20%3D%3D%20%22warning%22%20or%20Service.ID%20%3D%3D%20%60c-crit%60",
    )
    .await;
    assert_eq!(ids(&body_json(&by_check)), ["b-warn", "c-crit"]);
    let unsupported = get(
        addr,
        "/v1/health/service/api?filter=Service.ID%20matches%20%22a%22",
    )
    .await;
    assert_eq!(unsupported.0, StatusCode::BAD_REQUEST);

    let critical = body_json(&get(addr, "/v1/health/state/critical").await);
    let critical_ids: Vec<&str> = critical
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(critical_ids, ["service:c-crit", "serfHealth"]);
}

#[tokio::test]
async fn health_reads_block_on_their_own_service_index() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let index = consul.register(instance("api", "api-1", "passing"));
    let path = format!("/v1/health/service/api?index={index}&wait=5s");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;

    consul.register(instance("web", "web-1", "passing"));
    consul.set_service_status("web-1", "critical");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        consul.open_blocking(),
        1,
        "other services do not move api's index"
    );

    let changed = consul.set_service_status("api-1", "warning");
    let answer = tokio::time::timeout(PROMPTLY, blocked)
        .await
        .expect("released by the status change")
        .expect("task");
    assert_eq!(index_of(&answer), changed);
    assert_eq!(body_json(&answer)[0]["Checks"][1]["Status"], "warning");
    assert_eq!(
        index_of(&get(addr, "/v1/catalog/services").await),
        consul.index() - 2,
        "catalog/services moves with services, not check status"
    );

    let gone = consul.deregister("api-1");
    let after = get(addr, "/v1/health/service/api").await;
    assert_eq!((body_json(&after), index_of(&after)), (json!([]), gone));
}

// === agent ===

#[tokio::test]
async fn agent_register_with_lowercase_keys_and_a_ttl_check() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let body = r#"{"name":"web","id":"web-1","port":8080,"tags":["edge"],
                   "meta":{"build":"1"},"check":{"ttl":"30s","notes":"heartbeat"}}"#;
    let registered = put(addr, "/v1/agent/service/register", body).await;
    assert_eq!((registered.0, registered.2.as_str()), (StatusCode::OK, ""));
    assert_eq!(header(&registered, "content-type"), "");
    assert_eq!(
        consul.check_status("service:web-1").as_deref(),
        Some("critical")
    );

    let entries = body_json(&get(addr, "/v1/health/service/web").await);
    assert_eq!(entries[0]["Node"]["Node"], "consul-test");
    assert_eq!(entries[0]["Service"]["Port"], 8080);
    assert_eq!(entries[0]["Service"]["Tags"], json!(["edge"]));
    let check = &entries[0]["Checks"][1];
    assert_eq!(check["CheckID"], "service:web-1");
    assert_eq!(check["Name"], "Service 'web' check");
    assert_eq!(check["Type"], "ttl");
    assert_eq!(check["Notes"], "heartbeat");

    let before = consul.index();
    let passed = put(addr, "/v1/agent/check/pass/service:web-1?note=alive", "").await;
    assert_eq!((passed.0, passed.2.as_str()), (StatusCode::OK, ""));
    assert!(consul.index() > before);
    let entries = body_json(&get(addr, "/v1/health/service/web?passing").await);
    assert_eq!(entries[0]["Checks"][1]["Output"], "alive");

    let warned = put(addr, "/v1/agent/check/warn/service%3Aweb-1", "").await;
    assert_eq!(warned.0, StatusCode::OK);
    assert_eq!(
        consul.check_status("service:web-1").as_deref(),
        Some("warning")
    );
    let update = r#"{"status":"passing","output":"fine"}"#;
    assert_eq!(
        put(addr, "/v1/agent/check/update/service:web-1", update)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        consul.check_status("service:web-1").as_deref(),
        Some("passing")
    );
    let bad_update = put(
        addr,
        "/v1/agent/check/update/service:web-1",
        r#"{"Status":"meh"}"#,
    )
    .await;
    assert_eq!(bad_update.2, "Invalid check status: 'meh'");

    let fail = put(addr, "/v1/agent/check/fail/service:web-1?note=down", "").await;
    assert_eq!(fail.0, StatusCode::OK);
    assert_eq!(
        consul.check_status("service:web-1").as_deref(),
        Some("critical")
    );

    let wrong_method = get(addr, "/v1/agent/check/pass/service:web-1").await;
    assert_eq!(wrong_method.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&wrong_method, "allow"), "OPTIONS,PUT");
    assert_eq!(wrong_method.2, "method GET not allowed");
    let unknown = put(addr, "/v1/agent/check/pass/web-1", "").await;
    assert_eq!(
        (unknown.0, unknown.2.as_str()),
        (
            StatusCode::NOT_FOUND,
            "Unknown check ID \"web-1\". Ensure that the check ID is passed, not the check name."
        )
    );

    let services = body_json(&get(addr, "/v1/agent/services").await);
    assert_eq!(services["web-1"]["Service"], "web");
    assert_eq!(
        services["web-1"]["Weights"],
        json!({"Passing": 1, "Warning": 1})
    );
    let agent = body_json(&get(addr, "/v1/agent/self").await);
    assert_eq!(agent["Config"]["NodeName"], "consul-test");
    assert_eq!(agent["Config"]["Datacenter"], "dc1");
}

#[tokio::test]
async fn ttl_checks_without_updates_turn_critical_with_an_index_bump() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let body = r#"{"Name":"beat","Check":{"TTL":"300ms","Status":"passing"}}"#;
    assert_eq!(
        put(addr, "/v1/agent/service/register", body).await.0,
        StatusCode::OK
    );
    let registered = consul.index();
    eventually("the TTL expires", PROMPTLY, || async {
        consul.check_status("service:beat").as_deref() == Some("critical")
    })
    .await;
    assert!(consul.index() > registered);
    let agent_checks = body_json(&get(addr, "/v1/agent/checks").await);
    assert_eq!(agent_checks["service:beat"]["Output"], "TTL expired");
    assert_eq!(agent_checks["service:beat"]["Status"], "critical");
    let health = get(addr, "/v1/health/service/beat").await;
    assert_eq!(index_of(&health), consul.index());
}

#[tokio::test]
async fn agent_register_checks_defaults_validation_and_deregister() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let body = r#"{"Name":"lb","Address":"10.0.0.5","Port":80,
        "Checks":[{"CheckID":"lb-ttl","TTL":"15s","Status":"passing","DeregisterCriticalServiceAfter":"5m"},
                  {"Name":"admin","HTTP":"http://10.0.0.5:9900/healthz","Interval":"1m30s","Timeout":2000000000},
                  {"tcp":"10.0.0.5:80","interval":"250ms"}]}"#;
    assert_eq!(
        put(addr, "/v1/agent/service/register", body).await.0,
        StatusCode::OK
    );
    let checks = body_json(&get(addr, "/v1/health/checks/lb").await);
    let summary: Vec<(String, String, String, String)> = checks
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let text = |f: &str| c[f].as_str().unwrap_or("").to_string();
            (
                text("CheckID"),
                text("Status"),
                text("Interval"),
                text("Timeout"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("lb-ttl".into(), "passing".into(), "".into(), "".into()),
            (
                "service:lb:2".into(),
                "critical".into(),
                "1m30s".into(),
                "2s".into()
            ),
            (
                "service:lb:3".into(),
                "critical".into(),
                "250ms".into(),
                "".into()
            ),
        ]
    );
    let http_check = put(addr, "/v1/agent/check/pass/service:lb:2", "").await;
    assert_eq!(
        (http_check.0, http_check.2.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "CheckID \"service:lb:2\" does not have associated TTL"
        )
    );

    // Re-registering the same definition changes nothing.
    let index = consul.index();
    put(addr, "/v1/agent/service/register", body).await;
    assert_eq!(consul.index(), index);

    let problems = [
        (r#"{"Port":1}"#, "Missing service name"),
        (
            r#"{"Name":"x","Address":"0.0.0.0"}"#,
            "Invalid service address",
        ),
        (
            r#"{"Name":"x","Check":{"HTTP":"http://x"}}"#,
            "Invalid check: ",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"1s","Status":"ok"}}"#,
            "Status for checks must",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"soon"}}"#,
            "Request decode failed: ",
        ),
        (r#"{"Name":"x","Port":"80"}"#, "Request decode failed: "),
        (
            r#"{"Name":"x","Meta":{"consul-x":"1"}}"#,
            "Invalid Service Meta: ",
        ),
    ];
    for (body, expected) in problems {
        let answer = put(addr, "/v1/agent/service/register", body).await;
        assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{body}");
        assert!(answer.2.starts_with(expected), "{body}: {}", answer.2);
    }

    let standalone = r#"{"Name":"disk","TTL":"30s","ServiceID":"lb"}"#;
    assert_eq!(
        put(addr, "/v1/agent/check/register", standalone).await.0,
        StatusCode::OK
    );
    assert_eq!(consul.check_status("disk").as_deref(), Some("critical"));
    let orphan = put(
        addr,
        "/v1/agent/check/register",
        r#"{"Name":"x","TTL":"1s","ServiceID":"no"}"#,
    )
    .await;
    assert_eq!(
        (orphan.0, orphan.2.as_str()),
        (StatusCode::NOT_FOUND, "ServiceID \"no\" does not exist")
    );
    assert_eq!(
        put(addr, "/v1/agent/check/deregister/disk", "").await.0,
        StatusCode::OK
    );
    assert_eq!(consul.check_status("disk"), None);

    assert_eq!(
        put(addr, "/v1/agent/service/deregister/lb", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        body_json(&get(addr, "/v1/health/service/lb").await),
        json!([])
    );
    assert_eq!(
        body_json(&get(addr, "/v1/health/checks/lb").await),
        json!([])
    );
    let again = put(addr, "/v1/agent/service/deregister/lb", "").await;
    assert_eq!(
        (again.0, again.2.as_str()),
        (
            StatusCode::NOT_FOUND,
            "Unknown service ID \"lb\". Ensure that the service ID is passed, not the service name."
        )
    );
}

#[tokio::test]
async fn critical_services_are_deregistered_after_their_deadline() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let body = r#"{"Name":"short","Check":{"TTL":"10s","DeregisterCriticalServiceAfter":"200ms"}}"#;
    assert_eq!(
        put(addr, "/v1/agent/service/register", body).await.0,
        StatusCode::OK
    );
    eventually("the critical service is reaped", PROMPTLY, || async {
        body_json(&get(addr, "/v1/health/service/short").await) == json!([])
    })
    .await;
}

// === routing ===

#[tokio::test]
async fn methods_options_and_unknown_paths() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let post = send(addr, "POST", "/v1/kv/x", "", &[]).await;
    assert_eq!(post.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&post, "allow"), "OPTIONS,GET,PUT,DELETE");
    assert_eq!(post.2, "method POST not allowed");
    assert_eq!(header(&post, "x-consul-default-acl-policy"), "allow");

    let options = send(addr, "OPTIONS", "/v1/health/service/x", "", &[]).await;
    assert_eq!((options.0, options.2.as_str()), (StatusCode::OK, ""));
    assert_eq!(header(&options, "allow"), "OPTIONS,GET");
    assert_eq!(
        send(addr, "PUT", "/v1/catalog/services", "", &[]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let unknown = get(addr, "/v1/nope").await;
    assert_eq!(
        (unknown.0, unknown.2.as_str()),
        (
            StatusCode::NOT_FOUND,
            "Invalid URL path: not a recognized HTTP API endpoint\n"
        )
    );
    assert_eq!(header(&unknown, "x-consul-default-acl-policy"), "");
    assert_eq!(
        get(addr, "/v1/catalog/services/x").await.0,
        StatusCode::NOT_FOUND
    );

    let unprintable = get(addr, "/v1/kv/a%0Ab").await;
    assert_eq!(
        (unprintable.0, unprintable.2.as_str()),
        (StatusCode::BAD_REQUEST, "")
    );

    let bare = get(addr, "/v1/kv?recurse").await;
    assert_eq!(bare.0, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&bare, "location"), "/v1/kv/?recurse");
    assert_eq!(
        header(&get(addr, "/v1/kv//a").await, "location"),
        "/v1/kv/a"
    );

    assert_eq!(
        body_json(&get(addr, "/v1/status/leader").await),
        json!("127.0.0.1:8300")
    );
    assert_eq!(
        body_json(&get(addr, "/v1/status/peers").await),
        json!(["127.0.0.1:8300"])
    );

    // Go writes canonical header names; clients must match them either way.
    let raw = raw_exchange(
        addr,
        "GET /v1/kv/x HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404 Not Found\r\n"), "{raw}");
    for name in [
        "X-Consul-Index: 1",
        "X-Consul-Knownleader: true",
        "X-Consul-Default-Acl-Policy: allow",
    ] {
        assert!(raw.contains(name), "{name} in {raw}");
    }

    // Keep-alive: several requests on one connection.
    let mut client = HttpClient::connect(addr).await;
    for _ in 0..3 {
        let answer = send_on(&mut client, "GET", "/v1/status/leader", "", &[]).await;
        assert_eq!(answer.expect("kept alive").0, StatusCode::OK);
    }
}

// === ACLs ===

async fn acl_server(rpc_error_prefix: bool) -> ConsulServer {
    let server = ConsulServer::start_with(ConsulOptions {
        acl: Some(
            AclOptions::new(Policy::Deny)
                .token(
                    AclToken::new("reader")
                        .key_prefix("app/", Access::Read)
                        .service_prefix("web", Access::Read)
                        .node_prefix("", Access::Read),
                )
                .token(AclToken::management("root")),
        ),
        rpc_error_prefix,
        ..ConsulOptions::default()
    })
    .await;
    server.kv_put("app/a", "1");
    server.kv_put("secret/b", "2");
    server.register(instance("api", "api-1", "passing"));
    server.register(instance("web", "web-1", "passing"));
    server
}

#[tokio::test]
async fn acl_tokens_errors_and_filtering() {
    let consul = acl_server(false).await;
    let addr = consul.addr();
    let reader = [("x-consul-token", "reader")];

    let unknown = send(
        addr,
        "GET",
        "/v1/kv/app/a",
        "",
        &[("x-consul-token", "nope")],
    )
    .await;
    assert_eq!(
        (unknown.0, unknown.2.as_str()),
        (StatusCode::FORBIDDEN, "ACL not found")
    );
    assert_eq!(header(&unknown, "x-consul-default-acl-policy"), "deny");

    assert_eq!(
        send(addr, "GET", "/v1/kv/app/a", "", &reader).await.0,
        StatusCode::OK
    );
    let denied = send(addr, "GET", "/v1/kv/secret/b", "", &reader).await;
    assert_eq!(denied.0, StatusCode::FORBIDDEN);
    assert!(denied.2.starts_with("Permission denied"), "{}", denied.2);
    assert!(denied.2.contains("'key:read'"), "{}", denied.2);
    let write = send(addr, "PUT", "/v1/kv/app/a", "x", &reader).await;
    assert_eq!(write.0, StatusCode::FORBIDDEN);
    let anonymous = get(addr, "/v1/kv/app/a").await;
    assert!(anonymous.2.contains("anonymous token"), "{}", anonymous.2);

    let hidden = send(addr, "GET", "/v1/kv/secret/?recurse", "", &reader).await;
    assert_eq!((hidden.0, hidden.2.as_str()), (StatusCode::NOT_FOUND, ""));
    let partial = send(addr, "GET", "/v1/kv/?recurse", "", &reader).await;
    assert_eq!(body_json(&partial).as_array().map(Vec::len), Some(1));
    assert_eq!(
        header(&partial, "x-consul-results-filtered-by-acls"),
        "true"
    );
    let keys = send(addr, "GET", "/v1/kv/?keys", "", &reader).await;
    assert_eq!(body_json(&keys), json!(["app/a"]));

    let api = send(addr, "GET", "/v1/health/service/api", "", &reader).await;
    assert_eq!((api.0, body_json(&api)), (StatusCode::OK, json!([])));
    assert_eq!(header(&api, "x-consul-results-filtered-by-acls"), "true");
    let anonymous_api = get(addr, "/v1/health/service/api").await;
    assert_eq!(body_json(&anonymous_api), json!([]));
    assert_eq!(
        header(&anonymous_api, "x-consul-results-filtered-by-acls"),
        ""
    );
    let web = send(addr, "GET", "/v1/health/service/web", "", &reader).await;
    assert_eq!(ids(&body_json(&web)), ["web-1"]);
    let services = send(addr, "GET", "/v1/catalog/services", "", &reader).await;
    assert_eq!(body_json(&services), json!({"web": []}));

    // Token sources: query, header, bearer (scheme case-insensitive).
    for (path, headers) in [
        ("/v1/kv/app/a?token=reader", vec![]),
        ("/v1/kv/app/a", vec![("authorization", "bearer reader")]),
        ("/v1/kv/app/a", vec![("Authorization", "Bearer reader")]),
    ] {
        let answer = send(addr, "GET", path, "", &headers).await;
        assert_eq!(answer.0, StatusCode::OK, "{path} {headers:?}");
        assert_eq!(consul.last_token("/v1/kv/app/").as_deref(), Some("reader"));
    }
    let root = [("x-consul-token", "root")];
    assert_eq!(
        send(addr, "PUT", "/v1/kv/secret/c", "3", &root).await.2,
        "true"
    );
    assert_eq!(consul.last_token("/v1/kv/"), Some("root".to_string()));

    let register = send(
        addr,
        "PUT",
        "/v1/agent/service/register",
        r#"{"Name":"web"}"#,
        &reader,
    )
    .await;
    assert_eq!(register.0, StatusCode::FORBIDDEN);
    assert_eq!(
        send(addr, "GET", "/v1/agent/self", "", &reader).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(addr, "/v1/status/leader").await.0,
        StatusCode::OK,
        "needs no token"
    );
}

#[tokio::test]
async fn acl_errors_can_carry_the_rpc_prefix() {
    let consul = acl_server(true).await;
    let unknown = send(
        consul.addr(),
        "GET",
        "/v1/kv/app/a",
        "",
        &[("x-consul-token", "nope")],
    )
    .await;
    assert_eq!(unknown.2, "rpc error making call: ACL not found");
    let bad_index = get(consul.addr(), "/v1/kv/app/a?index=x").await;
    assert_eq!(
        bad_index.2, "Invalid index",
        "HTTP-level errors are not prefixed"
    );
}

// === leader loss ===

#[tokio::test]
async fn without_a_leader_only_stale_reads_answer() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    let index = consul.kv_put("k", "v");
    consul.set_leader(false);

    let read = get(addr, "/v1/kv/k").await;
    assert_eq!(
        (read.0, read.2.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
    );
    assert_eq!(header(&read, "x-consul-knownleader"), "false");
    assert_eq!(
        get(addr, "/v1/health/service/x?consistent").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        put(addr, "/v1/kv/k", "w").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(body_json(&get(addr, "/v1/status/leader").await), json!(""));

    let stale = get(addr, "/v1/kv/k?stale").await;
    assert_eq!((stale.0, index_of(&stale)), (StatusCode::OK, index));
    assert_eq!(header(&stale, "x-consul-knownleader"), "false");
    let last_contact: u64 = header(&stale, "x-consul-lastcontact")
        .parse()
        .expect("number");
    assert!(last_contact >= 60_000, "{last_contact}");
    let catalog = get(addr, "/v1/catalog/services?stale").await;
    assert_eq!(header(&catalog, "x-consul-effective-consistency"), "stale");

    let too_stale = get(addr, "/v1/kv/k?max_stale=2s").await;
    assert_eq!(
        too_stale.2, "No cluster leader",
        "lagging: retried on the leader"
    );

    consul.set_leader(true);
    consul.set_stale_lag(Duration::from_millis(2500));
    let within = get(addr, "/v1/kv/k?max_stale=5s").await;
    assert_eq!(header(&within, "x-consul-lastcontact"), "2500");
    let beyond = get(addr, "/v1/kv/k?max_stale=1s").await;
    assert_eq!(
        header(&beyond, "x-consul-lastcontact"),
        "0",
        "served by the leader"
    );
    let recovered = get(addr, "/v1/kv/k?stale").await;
    assert_eq!(header(&recovered, "x-consul-knownleader"), "true");
    assert_eq!(header(&recovered, "x-consul-lastcontact"), "2500");
    assert_eq!(get(addr, "/v1/kv/k").await.0, StatusCode::OK);

    // A blocked default read fails when the leader goes.
    let path = format!("/v1/kv/k?index={index}&wait=30s");
    let blocked = tokio::spawn(async move { get(addr, &path).await });
    eventually("the read blocks", PROMPTLY, || async {
        consul.open_blocking() == 1
    })
    .await;
    consul.set_leader(false);
    let answer = tokio::time::timeout(PROMPTLY, blocked)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
}

// === faults ===

#[tokio::test]
async fn injected_faults() {
    let consul = ConsulServer::start().await;
    let addr = consul.addr();
    consul.kv_put("k", "v");

    consul.fail_next(1, Fault::Status429);
    let limited = get(addr, "/v1/kv/k").await;
    assert_eq!(limited.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        get(addr, "/v1/kv/k").await.0,
        StatusCode::OK,
        "only the next one"
    );

    consul.fail_next_on("/v1/health/", 2, Fault::Status403AclNotFound);
    assert_eq!(
        get(addr, "/v1/kv/k").await.0,
        StatusCode::OK,
        "other paths unaffected"
    );
    for _ in 0..2 {
        let denied = get(addr, "/v1/health/service/x").await;
        assert_eq!(
            (denied.0, denied.2.as_str()),
            (StatusCode::FORBIDDEN, "ACL not found")
        );
    }
    assert_eq!(get(addr, "/v1/health/service/x").await.0, StatusCode::OK);

    consul.fail_next(1, Fault::Status500NoLeader);
    assert_eq!(get(addr, "/v1/kv/k").await.2, "No cluster leader");

    consul.fail_next(1, Fault::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(get(addr, "/v1/kv/k").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // The connection-limit 429 closes the connection after answering.
    consul.fail_next(1, Fault::RawConnectionLimit429);
    let mut client = HttpClient::connect(addr).await;
    let refused = send_on(&mut client, "GET", "/v1/kv/k", "", &[])
        .await
        .expect("answered");
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.2,
        "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
    );
    assert_eq!(header(&refused, "x-consul-default-acl-policy"), "");
    assert!(
        send_on(&mut client, "GET", "/v1/kv/k", "", &[])
            .await
            .is_err(),
        "closed"
    );

    consul.fail_next(1, Fault::Disconnect);
    let mut client = HttpClient::connect(addr).await;
    assert!(
        send_on(&mut client, "GET", "/v1/kv/k", "", &[])
            .await
            .is_err()
    );
    assert_eq!(consul.requests("/v1/health/service/x"), 3);
}

#[tokio::test]
async fn connections_over_the_per_client_limit_get_the_raw_429() {
    let consul = ConsulServer::start_with(ConsulOptions {
        max_conns_per_client: Some(1),
        ..ConsulOptions::default()
    })
    .await;
    let mut first = HttpClient::connect(consul.addr()).await;
    assert!(
        send_on(&mut first, "GET", "/v1/status/leader", "", &[])
            .await
            .is_ok()
    );
    let refused = raw_exchange(
        consul.addr(),
        "GET /v1/status/leader HTTP/1.1\r\nHost: c\r\n\r\n",
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refused}"
    );
    assert!(refused.contains("Connection: close\r\n"));
    assert!(refused.ends_with("please rate limit your calls\n"));
    drop(first);
    eventually("the slot is free again", PROMPTLY, || async {
        let mut client = HttpClient::connect(consul.addr()).await;
        matches!(
            send_on(&mut client, "GET", "/v1/status/leader", "", &[]).await,
            Ok((StatusCode::OK, _, _))
        )
    })
    .await;
}
