//! Consul services as backends, and the blocking-query watches behind them,
//! against the Consul-compatible test server in `support::consul`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::consul::{
    AclOptions, AclToken, ConsulOptions, ConsulServer, Fault, Policy, ServiceInstance,
    restartable_port,
};
use support::{
    Backend, HttpClient, Load, Switchyard, SwitchyardProcess, eventually, get, web_config,
};
use switchyard::config::ConsulSpec;
use switchyard::discovery::consul::watch::WatchTask;
use switchyard::discovery::consul::{
    ConsulClient, ConsulWatch, KvPair, WatchData, WatchKey, WatchPolicy,
};

const WAIT: Duration = Duration::from_secs(15);
const SERVICE_PATH: &str = "/v1/health/service/web";

/// `web` instance `id` on 127.0.0.1 at `backend`'s port.
fn instance(id: &str, backend: &Backend) -> ServiceInstance {
    ServiceInstance::on_loopback("web", id, backend.addr.port())
}

/// One HTTP listener `web` whose default backend `b` is the `web` service.
fn config(consul: SocketAddr, consul_extra: &str) -> String {
    let section = format!(
        "[consul]\naddress = \"http://{consul}\"\nwait = \"2s\"\n\
         retry_min = \"50ms\"\nretry_max = \"400ms\"\n{consul_extra}"
    );
    web_config(&section, "", "consul_service = \"web\"")
}

fn watch_status(status: &serde_json::Value) -> serde_json::Value {
    status["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "consul")
        .cloned()
        .expect("a consul watch in /status")
}

/// `backend` gets no more requests while the others keep getting some.
async fn stops_receiving(what: &str, backend: &Backend, others: &[&Backend]) {
    eventually(what, WAIT, || async {
        let before = backend.hits();
        let others_before: usize = others.iter().map(|b| b.hits()).sum();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let others_after: usize = others.iter().map(|b| b.hits()).sum();
        backend.hits() == before && others_after > others_before + 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_registration_deregistration_and_health() {
    let consul = ConsulServer::start().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    consul.register(instance("a", &a));
    consul.register(instance("b", &b));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    let addr = sy.addr("web");
    let load = Load::start(addr, 4);
    eventually("a and b serve", WAIT, || async {
        a.hits() > 20 && b.hits() > 20
    })
    .await;

    consul.register(instance("c", &c));
    eventually("c joins", WAIT, || async { c.hits() > 20 }).await;
    consul.set_service_status("a", "critical");
    stops_receiving("a leaves when critical", &a, &[&b, &c]).await;
    consul.deregister("b");
    stops_receiving("b leaves when deregistered", &b, &[&c]).await;

    let (sent, failed) = load.finish().await;
    eprintln!("{sent} requests while instances came and went");
    assert_eq!(failed, 0, "no request failed");
    let status = sy.status().await;
    let endpoints = status["backends"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["address"], c.addr.to_string());
    assert_eq!(endpoints[0]["origin"], "consul");
    let watch = watch_status(&status);
    assert_eq!(watch["watch"], "health.service(web|passing)");
    assert_eq!(watch["ok"], true);
    assert!(watch["index"].as_u64().unwrap() > 1);
    assert_eq!(sy.metric("switchyard_consul_up").await, Some(1.0));
    assert!(
        sy.metric(r#"switchyard_discovery_staleness_seconds{watch="health.service(web|passing)"}"#)
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_weights_and_node_address_fallback() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut heavy = instance("a", &a);
    heavy.weights = Some((3, 1));
    // Service address set explicitly; the other instance falls back to its
    // node's address.
    heavy.address = "127.0.0.1".into();
    heavy.node_address = "10.255.255.1".into();
    consul.register(heavy);
    consul.register(instance("b", &b));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..40 {
        assert_eq!(client.get("/", None).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_goes_backwards_causes_a_full_reread() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register(instance("a", &a));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    let addr = sy.addr("web");
    eventually("watch blocking", WAIT, || async {
        consul.blocking_requests(SERVICE_PATH) >= 1
    })
    .await;
    let before = watch_status(&sy.status().await)["index"].as_u64().unwrap();
    let plain_before = consul.requests(SERVICE_PATH) - consul.blocking_requests(SERVICE_PATH);

    consul.lower_index(1); // a snapshot restore
    eventually("a non-blocking re-read", WAIT, || async {
        consul.requests(SERVICE_PATH) - consul.blocking_requests(SERVICE_PATH) > plain_before
    })
    .await;
    eventually("the watch follows the lower index", WAIT, || async {
        watch_status(&sy.status().await)["index"].as_u64().unwrap() < before
    })
    .await;
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));
    // And it keeps working from there.
    consul.register(instance("b", &b));
    eventually("b joins after the reset", WAIT, || async {
        get(addr, "/", None).await.1 == "b"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_backs_off_keeps_serving_and_recovers() {
    let consul = ConsulServer::start().await;
    let a = Backend::start("a").await;
    consul.register(instance("a", &a));
    // Leader reads only: one request per attempt (a stale read over
    // `max_stale` would be followed by a leader read, two per attempt).
    let sy = Switchyard::start(&config(consul.addr(), "stale = false")).await;
    let addr = sy.addr("web");
    eventually("consul up", WAIT, || async {
        sy.metric("switchyard_consul_up").await == Some(1.0)
    })
    .await;

    consul.set_leader(false);
    eventually("consul down", WAIT, || async {
        sy.metric("switchyard_consul_up").await == Some(0.0)
    })
    .await;
    let status = sy.status().await;
    assert!(
        watch_status(&status)["last_error"]
            .as_str()
            .unwrap()
            .contains("no cluster leader"),
        "{status}"
    );
    // Backing off: 50 ms doubling to 400 ms gives a handful of requests per
    // second, not hundreds.
    let since = Instant::now();
    let count = consul.requests(SERVICE_PATH);
    eventually("a few retries", WAIT, || async {
        consul.requests(SERVICE_PATH) >= count + 3
    })
    .await;
    let retries = consul.requests(SERVICE_PATH) - count;
    assert!(
        since.elapsed() >= Duration::from_millis(300),
        "{retries} retries in {:?}: no backoff",
        since.elapsed()
    );
    // The last data still routes.
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));

    consul.set_leader(true);
    eventually("consul up again", WAIT, || async {
        sy.metric("switchyard_consul_up").await == Some(1.0)
    })
    .await;
}

/// A slow failure: a Consul that takes a blocking read and never answers
/// it. The read is cut off at `wait` + wait/16 + 5 s (the room Consul's own
/// jitter needs), the last data keeps serving meanwhile, and the next
/// read picks up what changed during the hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_that_hangs_is_cut_off_while_the_last_data_serves() {
    let consul = ConsulServer::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    consul.register(instance("a", &a));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));

    let before = consul.requests(SERVICE_PATH);
    consul.fail_next_on(SERVICE_PATH, 1, Fault::Delay(Duration::from_secs(120)));
    eventually("a read is hanging", WAIT, || async {
        consul.requests(SERVICE_PATH) > before
    })
    .await;
    let load = Load::start(addr, 2);
    consul.register(instance("b", &b));
    eventually("the hung read is cut off", WAIT, || async {
        watch_status(&sy.status().await)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer in time"))
    })
    .await;
    eventually("b joins after the hang", WAIT, || async {
        get(addr, "/", None).await.1 == "b"
    })
    .await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the hang"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_consul_restarts() {
    let port = restartable_port();
    let consul = ConsulServer::on_port(port).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register(instance("a", &a));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));

    consul.shutdown().await;
    eventually("consul seen down", WAIT, || async {
        sy.metric("switchyard_consul_up").await == Some(0.0)
    })
    .await;
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));

    // A new server on the same address, with different data (and indexes
    // that start over).
    let consul = ConsulServer::on_port(port).await;
    consul.register(instance("b", &b));
    eventually("traffic follows the restarted consul", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "b".into())
    })
    .await;
    eventually("consul up again", WAIT, || async {
        sy.metric("switchyard_consul_up").await == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_gives_few_rebuilds() {
    let consul = ConsulServer::start().await;
    let (a, x) = (Backend::start("a").await, Backend::start("x").await);
    consul.register(instance("a", &a));
    let sy = Switchyard::start(&config(consul.addr(), "")).await;
    eventually("watch blocking", WAIT, || async {
        consul.blocking_requests(SERVICE_PATH) >= 1
    })
    .await;
    let updates_before = sy
        .metric("switchyard_discovery_updates_total")
        .await
        .unwrap();
    const CHANGES: u32 = 500;
    for i in 1..=CHANGES {
        let mut changed = instance("x", &x);
        changed.weights = Some((i % 7 + 1, 1));
        consul.register(changed);
    }
    let final_weight = CHANGES % 7 + 1;
    eventually("the last change is applied", WAIT, || async {
        let status = sy.status().await;
        status["backends"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == x.addr.to_string() && e["weight"] == final_weight)
    })
    .await;
    let rebuilds = sy
        .metric("switchyard_discovery_updates_total")
        .await
        .unwrap()
        - updates_before;
    eprintln!("{CHANGES} changes in a burst: {rebuilds} endpoint rebuilds");
    assert!((1.0..=25.0).contains(&rebuilds), "{rebuilds} rebuilds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_backends_on_one_service_share_one_watch() {
    let consul = ConsulServer::start().await;
    let a = Backend::start("a").await;
    consul.register(instance("a", &a));
    let mut cfg = config(consul.addr(), "");
    for i in 0..10 {
        cfg.push_str(&format!(
            "\n[[backends]]\nname = \"copy{i}\"\nconsul_service = \"web\"\n"
        ));
    }
    let sy = Switchyard::start(&cfg).await;
    eventually("one blocking query open", WAIT, || async {
        consul.open_blocking() == 1
    })
    .await;
    // One initial read and one long poll (a 2 s wait) so far: not eleven.
    let requests = consul.requests(SERVICE_PATH);
    assert!(requests <= 3, "{requests} requests for eleven backends");
    let watches = sy.status().await["watches"].as_array().unwrap().len();
    assert_eq!(watches, 1);
    assert_eq!(
        sy.metric(r#"switchyard_backend_endpoints{backend="copy9"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_lets_switchyard_start_while_consul_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("consul-state.json");
    let extra = format!("state_file = {:?}", state.display().to_string());
    let port = restartable_port();
    let consul = ConsulServer::on_port(port).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register(instance("a", &a));
    {
        let first = Switchyard::start(&config(consul.addr(), &extra)).await;
        assert_eq!(
            get(first.addr("web"), "/", None).await,
            (StatusCode::OK, "a".into())
        );
        eventually("state saved", WAIT, || async {
            std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&a.addr.port().to_string()))
        })
        .await;
        first.app.shutdown().await;
    }
    consul.shutdown().await;

    // Consul is down: start from the state file.
    let second = Switchyard::start(&config(consul_addr(port), &extra)).await;
    let addr = second.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));
    let watch = watch_status(&second.status().await);
    assert_eq!(watch["stale_from_state_file"], true);
    assert_eq!(watch["ok"], false);

    // Consul comes back with newer data: Switchyard catches up.
    let consul = ConsulServer::on_port(port).await;
    consul.register(instance("b", &b));
    eventually("caught up", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "b".into())
    })
    .await;
    let watch = watch_status(&second.status().await);
    assert_eq!(watch["stale_from_state_file"], false);
    assert_eq!(watch["ok"], true);
}

fn consul_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_bad_token_is_reported_once_and_never_logged() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let secret = "6a1e1d3b-0000-4000-8000-00000000dead";
        let consul = ConsulServer::start_with(ConsulOptions {
            acl: Some(
                AclOptions::new(Policy::Deny)
                    .token(AclToken::management("11111111-2222-3333-4444-555555555555")),
            ),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{secret}\n")).unwrap();
        let cfg = config(
            consul.addr(),
            &format!("token_file = {:?}", token_file.display().to_string()),
        );
        let mut sy = SwitchyardProcess::start(&cfg);
        eventually("several refused attempts", WAIT, || async {
            consul.requests(SERVICE_PATH) >= 4
        })
        .await;
        assert_eq!(consul.last_token(SERVICE_PATH).as_deref(), Some(secret));
        sy.signal(libc::SIGTERM);
        sy.wait_exit(WAIT).await;
        let logs = sy.log_lines();
        let refused: Vec<&String> = logs
            .iter()
            .filter(|l| l.contains("Consul refused the watch"))
            .collect();
        assert_eq!(refused.len(), 1, "reported once: {logs:#?}");
        assert!(refused[0].contains("ACL token"), "{}", refused[0]);
        assert!(
            logs.iter().all(|l| !l.contains(secret)),
            "the token must never be logged"
        );
    });
}

/// A watch of any kind, straight on the library.
async fn watch(consul: &ConsulServer, key: WatchKey) -> (Arc<ConsulWatch>, support::AbortOnDrop) {
    let spec = ConsulSpec {
        address: format!("http://{}", consul.addr()),
        wait: Duration::from_secs(2),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..ConsulSpec::default()
    };
    let client = Arc::new(ConsulClient::new(&spec).unwrap());
    let watch = Arc::new(ConsulWatch::new(key));
    let (changed, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(
        WatchTask {
            watch: watch.clone(),
            client,
            changed,
            policy: WatchPolicy::new(&spec),
        }
        .run(),
    );
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    watch.first_answer().await;
    (watch, support::AbortOnDrop(task))
}

async fn data_is(watch: &ConsulWatch, want: WatchData) {
    eventually(&format!("{} data", watch.key), WAIT, || async {
        watch.data().as_deref() == Some(&want)
    })
    .await;
}

fn pair(key: &str, value: &str) -> KvPair {
    KvPair {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_listing_and_catalog_watches() {
    let consul = ConsulServer::start().await;
    let (key, _k) = watch(&consul, WatchKey::Key("app/limit".into())).await;
    let (prefix, _p) = watch(&consul, WatchKey::Prefix("app/".into())).await;
    let (keys, _l) = watch(
        &consul,
        WatchKey::Keys {
            prefix: "app/".into(),
            separator: Some("/".into()),
        },
    )
    .await;
    let (catalog, _c) = watch(&consul, WatchKey::Catalog { datacenter: None }).await;
    // A missing key is empty data, not an error.
    data_is(&key, WatchData::Kv(Vec::new())).await;
    assert!(key.status().ok);

    consul.kv_put("app/limit", b"250");
    consul.kv_put("app/routes/api", b"pool=api");
    data_is(&key, WatchData::Kv(vec![pair("app/limit", "250")])).await;
    data_is(
        &prefix,
        WatchData::Kv(vec![
            pair("app/limit", "250"),
            pair("app/routes/api", "pool=api"),
        ]),
    )
    .await;
    data_is(
        &keys,
        WatchData::Keys(vec!["app/limit".into(), "app/routes/".into()]),
    )
    .await;
    consul.kv_delete("app/limit");
    data_is(&key, WatchData::Kv(Vec::new())).await;
    data_is(
        &prefix,
        WatchData::Kv(vec![pair("app/routes/api", "pool=api")]),
    )
    .await;

    let mut tagged = ServiceInstance::new("api", "api-1");
    tagged.tags = vec!["v2".into(), "blue".into()];
    tagged.port = 7000;
    consul.register(tagged);
    eventually("catalog lists api", WAIT, || async {
        matches!(catalog.data().as_deref(), Some(WatchData::Catalog(m))
            if m.get("api") == Some(&vec!["blue".to_string(), "v2".to_string()]))
    })
    .await;
    let (v1_only, _s) = watch(
        &consul,
        WatchKey::Service {
            name: "api".into(),
            tag: Some("v1".into()),
            datacenter: None,
            passing_only: true,
        },
    )
    .await;
    data_is(&v1_only, WatchData::Service(Vec::new())).await;
}

/// A TLS front for `upstream` with a fresh self-signed certificate for
/// 127.0.0.1: Consul's https listener, as far as the client can tell.
/// Returns its address and the certificate (PEM), which is its own CA.
async fn tls_front(upstream: SocketAddr) -> (SocketAddr, String, support::AbortOnDrop) {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(io).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, cert.cert.pem(), support::AbortOnDrop(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file() {
    let consul = ConsulServer::start().await;
    let a = Backend::start("a").await;
    consul.register(instance("a", &a));
    let (front, ca_pem, _front) = tls_front(consul.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let cfg = config(consul.addr(), "").replace(
        &format!("address = \"http://{}\"", consul.addr()),
        &format!(
            "address = \"https://{front}\"\nca_file = {:?}",
            ca_file.display().to_string()
        ),
    );
    let sy = Switchyard::start(&cfg).await;
    eventually("served through https", WAIT, || async {
        get(sy.addr("web"), "/", None).await == (StatusCode::OK, "a".into())
    })
    .await;
    assert!(consul.requests(SERVICE_PATH) >= 1);

    // Without the CA, the certificate is refused and nothing is routed.
    let untrusted = config(consul.addr(), "").replace(
        &format!("address = \"http://{}\"", consul.addr()),
        &format!("address = \"https://{front}\""),
    );
    let sy = Switchyard::start(&untrusted).await;
    // The refused handshake is recorded when the watch's first request
    // fails, which start does not wait for.
    eventually(
        "the watch reports the refused certificate",
        WAIT,
        || async {
            let status = sy.status().await;
            watch_status(&status)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("certificate"))
        },
    )
    .await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_state_file_consul_down_means_503_until_it_answers() {
    let port = restartable_port();
    let a = Backend::start("a").await;
    let started = Instant::now();
    let sy = Switchyard::start(&config(consul_addr(port), "")).await;
    eprintln!("started with Consul down in {:?}", started.elapsed());
    let addr = sy.addr("web");
    assert_eq!(
        get(addr, "/", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let watch = watch_status(&sy.status().await);
    assert_eq!(watch["ok"], false);
    assert!(
        watch["last_error"]
            .as_str()
            .unwrap()
            .contains("request failed")
    );
    assert_eq!(sy.metric("switchyard_consul_up").await, Some(0.0));

    let consul = ConsulServer::on_port(port).await;
    consul.register(instance("a", &a));
    eventually("serves once Consul answers", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "a".into())
    })
    .await;
}
