//! Switchyard as one of many sidecars on one Consul (issue 21): the rule
//! that a suspect empty answer is confirmed by a second read before it
//! replaces a non-empty set (no known leader, right after an index reset,
//! right after an agent restart: consul-template #1131, #1713), stale
//! reads bounded by `max_stale`, agent caching, and leader elections and
//! agent restarts under load. Against the Consul-compatible test server.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::consul::{ConsulServer, Fault, ServiceInstance, restartable_port};
use support::{Backend, Load, Switchyard, eventually, get, web_config};

const WAIT: Duration = Duration::from_secs(15);
const SERVICE_PATH: &str = "/v1/health/service/web";

/// `web` instance `id` on 127.0.0.1 at `backend`'s port.
fn instance(id: &str, backend: &Backend) -> ServiceInstance {
    ServiceInstance::on_loopback("web", id, backend.addr.port())
}

/// Listener `web` whose backend `b` is the `web` service; stale reads (the
/// default) and a 1 s confirming read.
fn config(consul: SocketAddr, consul_extra: &str) -> String {
    let section = format!(
        "[consul]\naddress = \"http://{consul}\"\nwait = \"2s\"\n\
         retry_min = \"50ms\"\nretry_max = \"400ms\"\nempty_confirm_wait = \"1s\"\n{consul_extra}"
    );
    web_config(&section, "", "consul_service = \"web\"")
}

/// Endpoints of backend `b` in the table in use now.
fn endpoints(sy: &Switchyard) -> usize {
    sy.app
        .table()
        .backends
        .get("b")
        .map_or(0, |b| b.endpoint_states().count())
}

/// Reads the live table every millisecond until `done`; returns (samples,
/// samples with no endpoint).
async fn sample_endpoints(sy: &Switchyard, done: &AtomicBool) -> (usize, usize) {
    let (mut samples, mut empty) = (0, 0);
    while !done.load(Ordering::SeqCst) {
        samples += 1;
        if endpoints(sy) == 0 {
            empty += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (samples, empty)
}

/// Runs `scenario` while sampling the table; asserts no sample was empty.
async fn never_empty(sy: &Switchyard, scenario: impl Future<Output = ()>) {
    let done = AtomicBool::new(false);
    let run = async {
        scenario.await;
        done.store(true, Ordering::SeqCst);
    };
    let ((), (samples, empty)) = tokio::join!(run, sample_endpoints(sy, &done));
    eprintln!("{samples} samples of the routing table, {empty} empty");
    assert!(samples > 0);
    assert_eq!(
        empty, 0,
        "the routing table was empty in {empty} of {samples} samples"
    );
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

/// The watch took a real answer since its last fault (a held answer or an
/// error leaves its index at 0), holds `items` instances and blocks again:
/// no confirming read is still pending.
async fn whole(sy: &Switchyard, consul: &ConsulServer, items: u64) -> bool {
    let status = watch_status(&sy.status().await);
    status["ok"] == true
        && status["index"].as_u64().is_some_and(|i| i > 0)
        && status["items"].as_u64() == Some(items)
        && consul.open_blocking() == 1
}

async fn held(sy: &Switchyard) -> u64 {
    watch_status(&sy.status().await)["empty_answers_held"]
        .as_u64()
        .expect("empty_answers_held")
}

/// Starts Switchyard on `consul` with `a` registered; returns once `a`
/// serves and the watch is blocking.
async fn start(consul: &ConsulServer, a: &Backend, extra: &str) -> Switchyard {
    consul.register(instance("a", a));
    let sy = Switchyard::start(&config(consul.addr(), extra)).await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "a".into())
    );
    eventually("the watch blocks", WAIT, || async {
        consul.open_blocking() == 1
    })
    .await;
    sy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_without_a_known_leader_waits_for_a_second_read() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let sy = start(&consul, &a, "").await;

    never_empty(&sy, async {
        // The next request (the one after the change below) is answered
        // empty by a server that knows no leader.
        consul.fail_next_on(
            SERVICE_PATH,
            1,
            Fault::Empty {
                known_leader: false,
            },
        );
        let blocking = consul.blocking_requests(SERVICE_PATH);
        consul.register(instance("b", &b));
        eventually("b joins and the watch blocks again", WAIT, || async {
            endpoints(&sy) == 2 && consul.blocking_requests(SERVICE_PATH) > blocking
        })
        .await;
        consul.set_service_status("b", "critical");
        // The empty answer is held; the second read (from the leader) shows a.
        eventually("the confirming read shows a alone", WAIT, || async {
            endpoints(&sy) == 1 && held(&sy).await == 1
        })
        .await;
    })
    .await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "a".into())
    );

    // An empty answer with a leader, not after a reset or a failure, is a
    // real change: it applies at once, well within the 1 s a confirming
    // read could block.
    let since = Instant::now();
    consul.deregister("a");
    eventually("the deregistration applies", WAIT, || async {
        endpoints(&sy) == 0
    })
    .await;
    assert!(
        since.elapsed() < Duration::from_millis(900),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(held(&sy).await, 1);
    assert_eq!(
        get(sy.addr("web"), "/", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_right_after_an_index_reset_waits_for_a_second_read() {
    let consul = ConsulServer::start().await;
    let a = Backend::start("a").await;
    let sy = start(&consul, &a, "").await;

    never_empty(&sy, async {
        // A snapshot restore: the blocked query returns a lower index, the
        // re-read that follows is answered empty.
        consul.fail_next_on(SERVICE_PATH, 1, Fault::Empty { known_leader: true });
        consul.lower_index(1);
        eventually("the empty re-read is held", WAIT, || async {
            held(&sy).await == 1
        })
        .await;
        eventually(
            "the confirming read answers and the watch blocks",
            WAIT,
            || async {
                watch_status(&sy.status().await)["ok"] == true && consul.open_blocking() == 1
            },
        )
        .await;
    })
    .await;
    assert_eq!(endpoints(&sy), 1);

    // Confirmed: the re-read and the second read are both empty. It
    // applies, after the second read (which blocks its 1 s on an index
    // that does not move). First a change, so that there is an index to
    // go back from.
    let blocking = consul.blocking_requests(SERVICE_PATH);
    let mut tagged = instance("a", &a);
    tagged.tags = vec!["v2".into()];
    consul.register(tagged);
    eventually("the watch blocks on the new index", WAIT, || async {
        consul.blocking_requests(SERVICE_PATH) > blocking && consul.open_blocking() == 1
    })
    .await;
    consul.fail_next_on(SERVICE_PATH, 2, Fault::Empty { known_leader: true });
    let since = Instant::now();
    consul.lower_index(1);
    eventually("the confirmed empty answer applies", WAIT, || async {
        endpoints(&sy) == 0
    })
    .await;
    assert!(
        since.elapsed() >= Duration::from_millis(900),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(held(&sy).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_right_after_an_agent_restart_waits_for_a_second_read() {
    let consul = ConsulServer::on_port(restartable_port()).await;
    let a = Backend::start("a").await;
    let sy = start(&consul, &a, "").await;

    never_empty(&sy, async {
        // Connections drop, then are refused for 300 ms; the agent comes
        // back and answers empty for 500 ms, before it has synced.
        consul
            .restart_agent(Duration::from_millis(300), Duration::from_millis(500))
            .await;
        eventually(
            "the empty answer after the restart is held",
            WAIT,
            || async { held(&sy).await >= 1 },
        )
        .await;
        eventually("the watch is whole again", WAIT, || async {
            whole(&sy, &consul, 1).await
        })
        .await;
    })
    .await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "a".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_leader_elections_and_three_agent_restarts_under_load() {
    let consul = ConsulServer::on_port(restartable_port()).await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    consul.register(instance("b", &b));
    let sy = start(&consul, &a, "").await;
    let load = Load::start(sy.addr("web"), 2);

    never_empty(&sy, async {
        for election in 0..10 {
            // Stale reads come from a follower that restored an empty
            // snapshot and has heard from no leader for 200 ms: within
            // `max_stale`, so only the empty-answer rule stands between
            // that answer and the routing table.
            let before = held(&sy).await;
            consul.begin_election(Duration::from_millis(200), true);
            eventually("the watch meets the empty follower", WAIT, || async {
                held(&sy).await > before
            })
            .await;
            consul.end_election();
            eventually("the watch is whole again", WAIT, || async {
                whole(&sy, &consul, 2).await
            })
            .await;
            eprintln!("election {election}: done");
        }
        for restart in 0..3 {
            let before = held(&sy).await;
            consul
                .restart_agent(Duration::from_millis(200), Duration::from_millis(300))
                .await;
            eventually("the watch meets the unsynced agent", WAIT, || async {
                held(&sy).await > before
            })
            .await;
            eventually("the watch is whole again", WAIT, || async {
                whole(&sy, &consul, 2).await
            })
            .await;
            eprintln!("agent restart {restart}: done");
        }
        // And it still follows Consul.
        consul.register(instance("c", &c));
        eventually("c joins", WAIT, || async { c.hits() > 0 }).await;
    })
    .await;

    let (sent, failed) = load.finish().await;
    eprintln!("{sent} requests through 10 elections and 3 agent restarts");
    assert!(sent > 100, "{sent} requests");
    assert_eq!(failed, 0, "no request failed");
    assert!(a.hits() > 0 && b.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_over_max_stale_is_read_again_from_the_leader() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let sy = start(&consul, &a, "").await;
    assert_eq!(consul.leader_reads(), 0, "every read so far was stale");

    // The answering server is 3 s behind: over the 2 s default bound.
    consul.set_stale_lag(Duration::from_secs(3));
    consul.register(instance("b", &b));
    eventually("b joins, read from the leader", WAIT, || async {
        endpoints(&sy) == 2
    })
    .await;
    let status = watch_status(&sy.status().await);
    assert!(status["stale_retries"].as_u64().unwrap() >= 1, "{status}");
    assert!(consul.leader_reads() >= 1);

    // Within the bound, stale reads are used as they are.
    consul.set_stale_lag(Duration::from_millis(500));
    let retries = watch_status(&sy.status().await)["stale_retries"]
        .as_u64()
        .unwrap();
    consul.set_service_status("b", "critical");
    eventually("b leaves", WAIT, || async { endpoints(&sy) == 1 }).await;
    let status = watch_status(&sy.status().await);
    assert_eq!(
        status["stale_retries"].as_u64().unwrap(),
        retries,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_agent_share_its_cache() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register(instance("a", &a));
    let cfg = config(consul.addr(), "cached = true");
    let (one, two) = (Switchyard::start(&cfg).await, Switchyard::start(&cfg).await);
    eventually("both watches block", WAIT, || async {
        consul.open_blocking() == 2
    })
    .await;
    let (requests, server_reads) = (
        consul.requests(SERVICE_PATH),
        consul.server_read_times("/v1/").len(),
    );

    consul.register(instance("b", &b));
    eventually("b joins both", WAIT, || async {
        endpoints(&one) == 2 && endpoints(&two) == 2 && consul.open_blocking() == 2
    })
    .await;
    // Each sidecar asked again (its blocked query returned, then it blocked
    // anew), but the servers refreshed the agent's entry once.
    assert_eq!(consul.requests(SERVICE_PATH) - requests, 2);
    assert_eq!(consul.server_read_times("/v1/").len() - server_reads, 1);
    assert_eq!(consul.leader_reads(), 0, "cached reads are stale reads");
}
