//! Backends named by DNS, against an in-process DNS server whose records
//! change while clients run.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::RecordType;
use http::StatusCode;
use support::dns::{DnsServer, SrvRecord};
use support::{Backend, HttpClient, Load, Switchyard, eventually, get, web_config};
use switchyard::control::ReloadResult;

const WAIT: Duration = Duration::from_secs(15);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One HTTP listener `web` in front of backend `b`, whose servers are
/// `servers` (TOML array items), resolved through `dns`.
fn config(dns: &DnsServer, resolver_extra: &str, servers: &str) -> String {
    let resolver = format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\nattempts = 1\n\
         retry_min = \"100ms\"\nretry_max = \"400ms\"\n{resolver_extra}",
        dns.addr
    );
    web_config(&resolver, "", &format!("servers = [{servers}]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_a_record_change_with_no_failed_requests() {
    let dns = DnsServer::start().await;
    let (a, b) = Backend::pair_on_one_port(("127.0.0.2", "a"), ("127.0.0.3", "b")).await;
    let port = a.addr.port();
    dns.set_addresses("web.test", &[ip("127.0.0.2")], 1);
    let sy = Switchyard::start(&config(&dns, "", &format!("\"web.test:{port}\""))).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));

    let load = Load::start(addr, 4);
    eventually("load reaches a", WAIT, || async { a.hits() > 50 }).await;
    let changed_at = Instant::now();
    dns.set_addresses("web.test", &[ip("127.0.0.3")], 1);
    eventually("traffic reaches b", WAIT, || async { b.hits() > 0 }).await;
    let moved_after = changed_at.elapsed();
    // Once b is in, a is out: a few requests already routed may still land
    // on a, then nothing more.
    eventually("a stops receiving traffic", WAIT, || async {
        let before = a.hits();
        let b_before = b.hits();
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.hits() == before && b.hits() > b_before + 20
    })
    .await;
    let (sent, failed) = load.finish().await;
    eprintln!("record change to traffic on b: {moved_after:?}; {sent} requests, {failed} failed");
    assert_eq!(failed, 0, "no request may fail during the move");
    let status = sy.status().await;
    let endpoints = &status["backends"][0]["endpoints"];
    assert_eq!(endpoints.as_array().unwrap().len(), 1);
    assert_eq!(endpoints[0]["address"], format!("127.0.0.3:{port}"));
    assert_eq!(endpoints[0]["origin"], "dns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_respected_and_one_lookup_serves_every_backend() {
    let dns = DnsServer::start().await;
    let web = Backend::start("web").await;
    dns.set_addresses("web.test", &[ip("127.0.0.1")], 1);
    // Two backends list the same name: one resolver task serves both.
    let cfg = format!(
        "{}\n[[backends]]\nname = \"other\"\nservers = [\"web.test:{port}\"]\n",
        config(&dns, "", &format!("\"web.test:{}\"", web.addr.port())),
        port = web.addr.port()
    );
    let sy = Switchyard::start(&cfg).await;
    let addr = sy.addr("web");
    let since = Instant::now();
    // Traffic does not cause lookups.
    let mut client = HttpClient::connect(addr).await;
    for _ in 0..200 {
        assert_eq!(client.get("/", None).await.unwrap().0, StatusCode::OK);
    }
    // Refreshes keep coming (the answer is never kept past its TTL)...
    eventually("four refreshes", WAIT, || async {
        dns.queries_since("web.test", RecordType::A, since) >= 4
    })
    .await;
    let elapsed = since.elapsed();
    let a_queries = dns.queries_since("web.test", RecordType::A, since);
    // ...but no faster than the TTL allows: with a 1 s TTL, four refreshes
    // take at least three seconds, whatever the traffic and however many
    // backends share the name.
    assert!(
        elapsed >= Duration::from_millis(2900),
        "{a_queries} A queries in {elapsed:?}: faster than the 1 s TTL allows"
    );
    assert!(
        a_queries as f64 <= elapsed.as_secs_f64() + 2.0,
        "{a_queries} A queries in {elapsed:?}: more than one per TTL"
    );
    let status = sy.status().await;
    let watches = status["watches"].as_array().unwrap();
    assert_eq!(
        watches.len(),
        1,
        "one watch for the shared name: {watches:?}"
    );
    assert_eq!(watches[0]["name"], "web.test");
    assert_eq!(watches[0]["query"], "A/AAAA");
    assert_eq!(watches[0]["state"], "resolved");
    assert_eq!(watches[0]["addresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(watches[0]["ttl_seconds"], 1.0);
    assert!(watches[0]["next_refresh"].is_string());
    let success = sy
        .metric(r#"switchyard_dns_lookups_total{name="web.test",result="success"}"#)
        .await
        .unwrap();
    assert!(success >= 4.0, "lookups counted: {success}");
    assert_eq!(
        sy.metric(r#"switchyard_backend_endpoints{backend="other"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sy.metric(r#"switchyard_dns_addresses{name="web.test"}"#)
            .await,
        Some(1.0)
    );
    assert!(
        sy.metric(r#"switchyard_dns_seconds_since_change{name="web.test"}"#)
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_holds_the_last_answer_nxdomain_ends_it_and_recovery_follows() {
    let dns = DnsServer::start().await;
    let web = Backend::start("web").await;
    dns.set_addresses("web.test", &[ip("127.0.0.1")], 1);
    let resolver = "hold_valid = \"60s\"\nhold_nx = \"1s\"";
    let sy = Switchyard::start(&config(
        &dns,
        resolver,
        &format!("\"web.test:{}\"", web.addr.port()),
    ))
    .await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await.0, StatusCode::OK);

    // SERVFAIL: the last answer is held (hold_valid is long).
    dns.set_servfail("web.test");
    eventually("servfail seen twice", WAIT, || async {
        sy.metric(r#"switchyard_dns_lookups_total{name="web.test",result="servfail"}"#)
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "web".into()));
    let status = sy.status().await;
    assert_eq!(status["watches"][0]["state"], "holding");
    assert!(
        status["watches"][0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("servfail")
    );

    // NXDOMAIN: held for hold_nx (1 s), then the addresses go: 503.
    dns.remove("web.test");
    eventually("503 once the hold ends", WAIT, || async {
        get(addr, "/", None).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let status = sy.status().await;
    assert_eq!(status["watches"][0]["state"], "failed");
    assert_eq!(status["backends"][0]["endpoints"], serde_json::json!([]));

    // The name comes back: so does the traffic.
    dns.set_addresses("web.test", &[ip("127.0.0.1")], 1);
    eventually("200 after recovery", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "web".into())
    })
    .await;
}

/// Issue 15: the nameserver stops answering (timeouts, not SERVFAIL). The
/// hold counts from the TTL expiry of the last confirmed answer and ends on
/// a timer, while the first lookup is still waiting on its timeouts
/// (2 s × 2 attempts, longer than the 3 s hold from when it was due).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nameserver_is_held_from_ttl_expiry_and_the_hold_ends_on_time() {
    const HOLD: Duration = Duration::from_secs(3);
    let dns = DnsServer::start().await;
    let web = Backend::start("web").await;
    dns.set_addresses("web.test", &[ip("127.0.0.1")], 1);
    let resolver = format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\nattempts = 2\n\
         min_ttl = \"1s\"\nmax_ttl = \"1s\"\nhold_valid = \"3s\"\n\
         retry_min = \"100ms\"\nretry_max = \"400ms\"\n",
        dns.addr
    );
    let servers = format!("servers = [\"web.test:{}\"]", web.addr.port());
    let sy = Switchyard::start(&web_config(&resolver, "", &servers)).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "web".into()));
    let watch = || async { sy.status().await["watches"][0].clone() };

    // Go silent right after a refresh was answered (A and AAAA go out in
    // parallel), so the next refresh, one TTL later, is the first to get
    // no answer: that is when the answer stopped being confirmed.
    let since = Instant::now();
    eventually("a refresh", WAIT, || async {
        dns.queries_since("web.test", RecordType::A, since) > 0
            && dns.queries_since("web.test", RecordType::AAAA, since) > 0
    })
    .await;
    dns.set_silent("web.test");
    let silenced = Instant::now();
    eventually("the next refresh", WAIT, || async {
        dns.first_query_since("web.test", RecordType::A, silenced)
            .is_some()
    })
    .await;
    let due = dns
        .first_query_since("web.test", RecordType::A, silenced)
        .unwrap();

    // Overdue: `holding` within the grace, long before the lookup's first
    // attempt (2 s) has timed out.
    eventually("holding", WAIT, || async {
        watch().await["state"] == "holding"
    })
    .await;
    let holding_after = due.elapsed();
    assert!(
        holding_after < Duration::from_millis(1500),
        "`holding` only {holding_after:?} after the refresh was due"
    );
    let held = watch().await;
    let hold_until = humantime::parse_rfc3339(held["hold_until"].as_str().unwrap()).unwrap();
    let expected = SystemTime::now() - due.elapsed() + HOLD;
    let off = hold_until
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_millis(300),
        "hold_until {held:?} is {off:?} off the refresh's due time + hold_valid"
    );
    assert_eq!(held["addresses"], serde_json::json!(["127.0.0.1"]));

    // 200 while held, 503 once the hold ends. The switch is timed from the
    // first unanswered query, which reaches the server a few ms after the
    // refresh was due: hence 100 ms of slack below hold_valid.
    eventually("503 once the hold ends", WAIT, || async {
        match get(addr, "/", None).await {
            (StatusCode::OK, body) => {
                assert_eq!(body, "web");
                false
            }
            (status, body) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                true
            }
        }
    })
    .await;
    let switched = due.elapsed();
    eprintln!("holding after {holding_after:?}, 503 after {switched:?}");
    assert!(
        switched >= HOLD - Duration::from_millis(100) && switched <= HOLD + Duration::from_secs(2),
        "503 after {switched:?}, expected hold_valid ({HOLD:?}) after the refresh was due"
    );
    // The timer ended the hold: no lookup has failed yet, the first one is
    // still waiting on its timeouts.
    let (_, metrics) = sy.admin_get("/metrics").await;
    let failures: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with(r#"switchyard_dns_lookups_total{name="web.test""#))
        .filter(|l| !l.contains(r#"result="success""#))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    let failed = watch().await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["hold_until"], serde_json::Value::Null);
    assert_eq!(failed["addresses"], serde_json::json!([]));

    // The name answers again: the addresses and the traffic come back.
    dns.set_addresses("web.test", &[ip("127.0.0.1")], 1);
    eventually("200 after recovery", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "web".into())
    })
    .await;
    let resolved = watch().await;
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["addresses"], serde_json::json!(["127.0.0.1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_balance_over_their_targets_and_aaaa_works() {
    let dns = DnsServer::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let backup = Backend::start("backup").await;
    let v6 = Backend::start_at("::1", "v6").await;
    dns.set_addresses("one.test", &[ip("127.0.0.1")], 30);
    dns.set_addresses("two.test", &[ip("127.0.0.1")], 30);
    dns.set_addresses("v6.test", &[ip("::1")], 30);
    let srv = |target: &str, priority, weight, port| SrvRecord {
        priority,
        weight,
        port,
        target: target.into(),
    };
    dns.set_srv(
        "_web._tcp.test",
        vec![
            // SRV weights become balancing weights: 3 to 1.
            srv("one.test", 1, 30, one.addr.port()),
            srv("two.test", 1, 10, two.addr.port()),
            // A higher priority number is only for when the others are gone.
            srv("one.test", 5, 10, backup.addr.port()),
        ],
        30,
    );
    let cfg = format!(
        "{}\n[[listeners]]\nname = \"v6\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"v6\"\n\n\
         [[backends]]\nname = \"v6\"\nservers = [\"v6.test:{}\"]\n",
        config(&dns, "", "\"_web._tcp.test\""),
        v6.addr.port()
    );
    let sy = Switchyard::start(&cfg).await;
    let addr = sy.addr("web");
    let mut client = HttpClient::connect(addr).await;
    for _ in 0..20 {
        assert_eq!(client.get("/", None).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!((one.hits(), two.hits(), backup.hits()), (15, 5, 0));
    let status = sy.status().await;
    let srv_watch = status["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["query"] == "SRV")
        .unwrap()
        .clone();
    assert_eq!(srv_watch["addresses"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(sy.addr("v6"), "/", None).await,
        (StatusCode::OK, "v6".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_triggers_an_early_lookup() {
    let dns = DnsServer::start().await;
    let (a, b) = Backend::pair_on_one_port(("127.0.0.2", "a"), ("127.0.0.3", "b")).await;
    let port = a.addr.port();
    // A long TTL: without early re-resolution the move would take minutes.
    dns.set_addresses("web.test", &[ip("127.0.0.2")], 300);
    let sy = Switchyard::start(&config(&dns, "", &format!("\"web.test:{port}\""))).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));
    dns.set_addresses("web.test", &[ip("127.0.0.3")], 300);
    let queries_before = dns.queries("web.test");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "a".into()));
    assert_eq!(dns.queries("web.test"), queries_before, "TTL not over yet");

    drop(a); // the instance dies; the record already points elsewhere
    eventually("traffic moves to b", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "b".into())
    })
    .await;
    assert!(dns.queries("web.test") > queries_before);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_stay_keep_their_state_and_leavers_drain() {
    let dns = DnsServer::start().await;
    let (a, _b) = Backend::held_pair_on_one_port(("127.0.0.2", "a"), ("127.0.0.3", "b")).await;
    let port = a.addr.port();
    let a_addr = format!("127.0.0.2:{port}");
    dns.set_addresses("web.test", &[ip("127.0.0.2")], 1);
    let sy = Switchyard::start(&config(&dns, "", &format!("\"web.test:{port}\""))).await;
    let addr = sy.addr("web");
    let in_flight = tokio::spawn(async move { get(addr, "/slow", None).await });
    eventually("request parked on a", WAIT, || async { a.arrived() == 1 }).await;

    // a stays, b joins: a keeps its in-flight count.
    dns.set_addresses("web.test", &[ip("127.0.0.2"), ip("127.0.0.3")], 1);
    eventually("b joins", WAIT, || async {
        sy.status().await["backends"][0]["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let status = sy.status().await;
    let a_state = status["backends"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == a_addr)
        .unwrap()
        .clone();
    assert_eq!(a_state["active_connections"], 1);

    // a leaves: it drains, its request still completes.
    dns.set_addresses("web.test", &[ip("127.0.0.3")], 1);
    eventually("a drains", WAIT, || async {
        sy.status().await["draining_endpoints"][0]["address"] == a_addr
    })
    .await;
    assert_eq!(
        sy.status().await["draining_endpoints"][0]["active_connections"],
        1
    );
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "b".into()));
    a.release(1);
    assert_eq!(
        in_flight.await.unwrap(),
        (StatusCode::OK, "a".into()),
        "the request on the leaving address completes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_do_not_resolve_block_start_only_when_required() {
    let dns = DnsServer::start().await;
    let web = Backend::start("web").await;
    let server = format!("\"missing.test:{}\"", web.addr.port());

    // Not required: starts, answers 503, recovers when the name appears.
    let sy = Switchyard::start(&config(&dns, "", &server)).await;
    let addr = sy.addr("web");
    assert_eq!(
        get(addr, "/", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    dns.set_addresses("missing.test", &[ip("127.0.0.1")], 1);
    eventually("resolves later", WAIT, || async {
        get(addr, "/", None).await == (StatusCode::OK, "web".into())
    })
    .await;

    // Required: start fails with the reason.
    let required = format!(
        "{{ address = \"gone.test:{}\", required = true }}",
        web.addr.port()
    );
    let err = Switchyard::try_start(&config(&dns, "", &required))
        .await
        .err()
        .expect("start fails");
    assert!(
        err.contains("required server name gone.test A/AAAA does not resolve: nxdomain"),
        "{err}"
    );

    // A reload that adds a required name that does not resolve changes nothing.
    let version = sy.app.table().version;
    sy.write_config(&config(&dns, "", &format!("{server}, {required}")));
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Failure);
    assert!(
        record.errors[0].contains("gone.test"),
        "{:?}",
        record.errors
    );
    assert_eq!(sy.app.table().version, version);
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "web".into()));
    assert_eq!(sy.status().await["watches"].as_array().unwrap().len(), 1);
}
