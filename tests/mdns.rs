//! mDNS discovery and registration over real multicast, kept on this
//! machine: each test runs again inside a network namespace of its own
//! (`unshare --net`), whose only interface is loopback with multicast on
//! and a route for 224.0.0.0/4, so no packet reaches a shared network and
//! tests running at once do not hear each other.
//!
//! go-micro's side is `mdns/gomicro.rs` (its server and client as they act
//! on the wire); DNS-SD's is the mdns-sd crate.

#[path = "mdns/gomicro.rs"]
mod gomicro;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Backend, Load, Switchyard, eventually, get};

const WAIT: Duration = Duration::from_secs(15);
/// Set in the child process that runs inside the namespace.
const INSIDE: &str = "SWITCHYARD_TEST_NETNS";

/// In the test process: runs the test `name` again inside a new network
/// namespace, checks that it passed there, and returns `false`. Inside
/// that namespace: sets up loopback and returns `true`, to run the body.
fn in_netns(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("`ip` (iproute2) runs");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    // As root a network namespace is enough; otherwise a user namespace
    // maps us to root in it.
    let root = nix_geteuid() == 0;
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.arg("--user").arg("--map-root-user");
    }
    let out = cmd
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("`unshare` (util-linux) runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} in its namespace:\n{text}");
    assert!(
        text.contains("1 passed"),
        "{name} did not run in its namespace:\n{text}"
    );
    false
}

fn nix_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The instances `/status` lists for an mDNS service: (name, address).
async fn instances(sy: &Switchyard, service: &str) -> Vec<(String, String)> {
    let status = sy.status().await;
    let watch = status["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "mdns" && w["service"] == service)
        .cloned();
    let Some(watch) = watch else {
        return Vec::new();
    };
    watch["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["addr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn routed(backend: &str, top: &str) -> String {
    format!(
        r#"{top}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "greeter"

[[backends]]
name = "greeter"
{backend}
"#
    )
}

/// After instance `name` of `service` said goodbye: waits until
/// Switchyard lets it go, stops its server (`stop`) once requests sent
/// before the goodbye arrived are answered, and checks that `load` lost
/// no request. Returns how many it sent.
async fn left_without_a_failed_request(
    sy: &Switchyard,
    service: &str,
    name: &str,
    stop: impl FnOnce(),
    load: Load,
) -> usize {
    eventually(&format!("{name} leaves on its goodbye"), WAIT, || async {
        instances(sy, service).await.iter().all(|(n, _)| n != name)
    })
    .await;
    // Load, not a condition: requests keep flowing across each step.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, failed) = load.finish().await;
    println!("{service} goodbye of {name}: {failed} of {sent} requests failed");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    sent
}

/// A Switchyard whose only `[[register]]` (in `register`, without its
/// `port`) announces `local`'s port, started and waited for until the
/// registration is announced.
async fn registered(register: &str, local: &Backend) -> Switchyard {
    let config = format!(
        r#"{register}port = {port}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "b"

[[backends]]
name = "b"
respond = {{ status = 200, body = "b" }}
"#,
        port = local.addr.port()
    );
    let sy = Switchyard::start(&config).await;
    eventually("the registration is announced", WAIT, || async {
        sy.status().await["registrations"][0]["state"] == "announced"
    })
    .await;
    sy
}

/// Names answering at `addr`, over `n` requests.
async fn answers(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = get(addr, "/", None).await;
        let key = if status.is_success() {
            body
        } else {
            status.to_string()
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

#[test]
fn go_micro_instances_come_and_leave_by_goodbye_and_by_ttl() {
    if !in_netns("go_micro_instances_come_and_leave_by_goodbye_and_by_ttl") {
        return;
    }
    runtime().block_on(async {
        let (a, b) = (Backend::start("a").await, Backend::start("b").await);
        // a lives 120 s (go-micro's TTL) and says goodbye; b's records
        // live 4 s and it vanishes without one.
        let node_a =
            gomicro::Node::start("greeter", "greeter-a", a.addr.port(), "latest", 120).await;
        let node_b = gomicro::Node::start("greeter", "greeter-b", b.addr.port(), "latest", 4).await;
        let sy = Switchyard::start(&routed(
            r#"mdns_service = "greeter""#,
            "[mdns]\nquery_interval = \"60s\"\n",
        ))
        .await;
        let web = sy.addr("web");
        eventually("both instances are found", WAIT, || async {
            instances(&sy, "greeter").await.len() == 2
        })
        .await;
        let seen = answers(web, 20).await;
        assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
        assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
        let status = sy.status().await;
        let watch = status["watches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == "mdns")
            .unwrap()
            .clone();
        assert_eq!(watch["flavour"], "go-micro");
        assert_eq!(watch["instances"][0]["version"], "latest");
        assert_eq!(watch["instances"][0]["metadata"]["protocol"], "http");
        assert!(watch["last_change"].is_string(), "{watch}");
        assert!(
            watch["staleness_seconds"].as_f64().unwrap() < 10.0,
            "{watch}"
        );
        let endpoint_origins: Vec<&str> = status["backends"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["origin"].as_str().unwrap())
            .collect();
        assert_eq!(endpoint_origins, ["mdns", "mdns"]);
        assert_eq!(
            sy.metric(r#"switchyard_mdns_instances{service="greeter"}"#)
                .await,
            Some(2.0)
        );

        // Goodbye: traffic leaves a, with no request failing on the way.
        let load = Load::start(web, 4);
        tokio::time::sleep(Duration::from_millis(200)).await;
        node_a.goodbye().await;
        // Its process ends after deregistering, as go-micro's does.
        let sent =
            left_without_a_failed_request(&sy, "greeter", "greeter-a", || drop(a), load).await;
        assert!(sent > 50, "{sent} requests");
        assert_eq!(answers(web, 5).await.get("b"), Some(&5));

        // No goodbye: b is still served, until its records expire.
        node_b.vanish();
        let vanished = Instant::now();
        assert_eq!(instances(&sy, "greeter").await.len(), 1);
        eventually("b leaves when its TTL runs out", WAIT, || async {
            instances(&sy, "greeter").await.is_empty()
        })
        .await;
        // Listed right after it vanished (so no goodbye took it), gone
        // once the last records it sent (4 s) ran out.
        println!("b left {:?} after vanishing", vanished.elapsed());
        let (status, _) = get(web, "/", None).await;
        assert_eq!(status, 503);
        assert_eq!(
            sy.metric(r#"switchyard_mdns_instances{service="greeter"}"#)
                .await,
            Some(0.0)
        );
    });
}

#[test]
fn a_refused_connect_asks_again_and_drops_an_instance_that_does_not_answer() {
    if !in_netns("a_refused_connect_asks_again_and_drops_an_instance_that_does_not_answer") {
        return;
    }
    runtime().block_on(async {
        let (a, b) = (Backend::start("a").await, Backend::start("b").await);
        let node_a =
            gomicro::Node::start("greeter", "greeter-a", a.addr.port(), "latest", 120).await;
        let _node_b =
            gomicro::Node::start("greeter", "greeter-b", b.addr.port(), "latest", 120).await;
        let sy = Switchyard::start(&routed(r#"mdns_service = "greeter""#, "")).await;
        eventually("both instances are found", WAIT, || async {
            instances(&sy, "greeter").await.len() == 2
        })
        .await;
        // a's process dies: no goodbye, and its records would live 120 s.
        node_a.vanish();
        drop(a);
        let died = Instant::now();
        let web = sy.addr("web");
        // The failed connect is retried on b, so clients see no error.
        let seen = answers(web, 10).await;
        assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
        eventually("a is dropped after failing to answer", WAIT, || async {
            instances(&sy, "greeter")
                .await
                .iter()
                .all(|(n, _)| n != "greeter-a")
        })
        .await;
        println!("a dropped {:?} after its process died", died.elapsed());
        assert!(
            died.elapsed() < Duration::from_secs(60),
            "{:?}",
            died.elapsed()
        );
        assert_eq!(instances(&sy, "greeter").await.len(), 1);
    });
}

#[test]
fn a_registration_is_announced_the_go_micro_way_found_and_withdrawn() {
    if !in_netns("a_registration_is_announced_the_go_micro_way_found_and_withdrawn") {
        return;
    }
    runtime().block_on(async {
        let local = Backend::start("local").await;
        let sy = registered(
            r#"[mdns]
ttl = "30s"

[[register]]
name = "greeter"
id = "greeter-sy"
registry = "mdns"
version = "1.2.3"
meta = { protocol = "http" }
"#,
            &local,
        )
        .await;

        // go-micro's GetService finds it, TXT and all.
        let found = gomicro::browse("greeter", Duration::from_secs(1)).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].id, "greeter-sy");
        assert_eq!(found[0].addr, local.addr);
        assert_eq!(found[0].txt["Service"], "greeter");
        assert_eq!(found[0].txt["Version"], "1.2.3");
        assert_eq!(found[0].txt["Metadata"]["protocol"], "http");
        assert_eq!(found[0].txt["Metadata"]["registry"], "mdns");

        // Another Switchyard routes to it by mDNS.
        let client = Switchyard::start(&routed(r#"mdns_service = "greeter""#, "")).await;
        eventually("the other Switchyard finds it", WAIT, || async {
            instances(&client, "greeter").await.len() == 1
        })
        .await;
        assert_eq!(answers(client.addr("web"), 3).await.get("local"), Some(&3));

        // Removed by a reload: a goodbye, and the other one lets go.
        let listener = gomicro::Listener::start();
        sy.write_config(&routed(
            r#"respond = { status = 200, body = "b" }"#,
            "[mdns]\nttl = \"30s\"\n",
        ));
        assert_eq!(
            sy.reload().await.result,
            switchyard::control::ReloadResult::Success
        );
        assert!(
            listener
                .goodbye_of("greeter-sy.greeter.micro.", Duration::from_secs(5))
                .await,
            "no goodbye heard"
        );
        eventually("the other Switchyard lets go", WAIT, || async {
            instances(&client, "greeter").await.is_empty()
        })
        .await;
    });
}

#[test]
fn gateway_routes_find_go_micro_services_by_mdns() {
    if !in_netns("gateway_routes_find_go_micro_services_by_mdns") {
        return;
    }
    runtime().block_on(async {
        let a = Backend::start("a").await;
        let _node =
            gomicro::Node::start("greeter", "greeter-a", a.addr.port(), "latest", 120).await;
        let sy = Switchyard::start(
            r#"[mdns]

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
service_from = "path"
strip_service = true
"#,
        )
        .await;
        let web = sy.addr("web");
        let (status, body) = get(web, "/greeter/hello", None).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
        let (status, _) = get(web, "/nosuch/hello", None).await;
        assert_eq!(status, 404);
        let status = sy.status().await;
        assert_eq!(status["gateway_backends"][0]["kind"], "mdns", "{status}");
        // No Consul was set up for it.
        assert!(
            !status["watches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["kind"] == "consul"),
            "{status}"
        );
    });
}

#[test]
fn dns_sd_services_are_followed_and_announced_with_mdns_sd() {
    if !in_netns("dns_sd_services_are_followed_and_announced_with_mdns_sd") {
        return;
    }
    runtime().block_on(async {
        use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
        let (a, b) = (Backend::start("a").await, Backend::start("b").await);
        let peer = ServiceDaemon::new().unwrap();
        let host = format!("{}.local.", gomicro::hostname());
        for (name, backend) in [("web-a", &a), ("web-b", &b)] {
            let info = ServiceInfo::new(
                "_http._tcp.local.",
                name,
                &host,
                "127.0.0.1",
                backend.addr.port(),
                &[("path", "/")][..],
            )
            .unwrap();
            peer.register(info).unwrap();
        }
        let local = Backend::start("local").await;
        let sy = Switchyard::start(&format!(
            r#"[[register]]
name = "_switchyard._tcp.local."
id = "sy-1"
registry = "mdns"
port = {port}
meta = {{ role = "test" }}

{rest}"#,
            port = local.addr.port(),
            rest = routed(r#"mdns_service = "_http._tcp.local.""#, "")
        ))
        .await;
        eventually("both DNS-SD instances are found", WAIT, || async {
            instances(&sy, "_http._tcp.local.").await.len() == 2
        })
        .await;
        let web = sy.addr("web");
        let seen = answers(web, 10).await;
        assert_eq!(
            (seen.get("a"), seen.get("b")),
            (Some(&5), Some(&5)),
            "{seen:?}"
        );

        // One unregisters (a goodbye): traffic leaves it.
        let load = Load::start(web, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = peer
            .unregister("web-a._http._tcp.local.")
            .unwrap()
            .recv_async()
            .await;
        let sent =
            left_without_a_failed_request(&sy, "_http._tcp.local.", "web-a", || drop(a), load)
                .await;
        assert!(sent > 20, "{sent} requests");

        // Switchyard's own DNS-SD registration, seen by an mdns-sd browser.
        let events = peer.browse("_switchyard._tcp.local.").unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let resolved = loop {
            let event = tokio::time::timeout_at(deadline, events.recv_async())
                .await
                .expect("Switchyard's service is found in time")
                .unwrap();
            if let ServiceEvent::ServiceResolved(info) = event {
                break info;
            }
        };
        assert_eq!(resolved.fullname, "sy-1._switchyard._tcp.local.");
        assert_eq!(resolved.port, local.addr.port());
        assert_eq!(
            resolved.txt_properties.get_property_val_str("role"),
            Some("test")
        );
        assert!(
            resolved
                .addresses
                .iter()
                .any(|ip| ip.to_ip_addr() == local.addr.ip()),
            "{:?}",
            resolved.addresses
        );
        let _ = peer.shutdown();
    });
}

/// `tests/mdns/peer.go` built with Debian's Go and HashiCorp's mDNS
/// library (`golang-go`, `golang-github-hashicorp-mdns-dev`; `.ci/run`
/// installs both), in GOPATH mode: no module download.
fn go_peer() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(format!("mdns-peer-{}", std::process::id()));
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mdns/peer.go"))
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("go-cache"))
        .output()
        .expect("`go` runs (Debian: golang-go golang-github-hashicorp-mdns-dev)");
    assert!(
        built.status.success(),
        "go build tests/mdns/peer.go: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// A Go process on a real Go mDNS stack (HashiCorp's, which go-micro's
/// util/mdns was forked from) with go-micro's TXT encoding: Switchyard
/// finds and routes to the node it announces, and the Go client finds
/// Switchyard's registration and decodes its description.
#[test]
fn a_go_mdns_stack_and_switchyard_find_each_other() {
    if !in_netns("a_go_mdns_stack_and_switchyard_find_each_other") {
        return;
    }
    let peer = go_peer();
    // Go's mDNS client and server also use IPv6 (ff02::fb): give the
    // namespace's loopback a route for it, or their sends fail.
    let route = Command::new("ip")
        .args([
            "-6", "route", "add", "ff00::/8", "dev", "lo", "table", "local",
        ])
        .output()
        .expect("`ip` runs");
    assert!(
        route.status.success(),
        "{}",
        String::from_utf8_lossy(&route.stderr)
    );
    runtime().block_on(async {
        use tokio::io::AsyncBufReadExt;
        let node = Backend::start("go-node").await;
        let mut serve = tokio::process::Command::new(&peer)
            .args(["serve", "greeter", "go-1"])
            .arg(node.addr.port().to_string())
            .arg("1.0.0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Go peer");
        let stdout = serve.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(WAIT, lines.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
            "{ready:?}"
        );

        // Switchyard finds the Go node by its go-micro name and routes to it.
        let sy = Switchyard::start(&routed(r#"mdns_service = "greeter""#, "")).await;
        eventually("Switchyard finds the Go node", WAIT, || async {
            instances(&sy, "greeter").await == [("go-1".to_string(), node.addr.to_string())]
        })
        .await;
        assert_eq!(answers(sy.addr("web"), 3).await.get("go-node"), Some(&3));

        // The Go client finds Switchyard's registration, TXT decoded.
        let local = Backend::start("local").await;
        let _reg = registered(
            r#"[[register]]
name = "echo"
id = "echo-sy"
registry = "mdns"
version = "2.0.0"
"#,
            &local,
        )
        .await;
        let browsed = tokio::process::Command::new(&peer)
            .args(["browse", "echo", "2"])
            .output()
            .await
            .expect("run the Go browser");
        let text = String::from_utf8_lossy(&browsed.stdout).to_string();
        assert!(
            browsed.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&browsed.stderr)
        );
        let found: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let ours: Vec<&serde_json::Value> = found
            .iter()
            .filter(|e| e["name"] == "echo-sy.echo.micro.")
            .collect();
        assert_eq!(ours.len(), 1, "{text}");
        assert_eq!(ours[0]["port"], local.addr.port());
        assert_eq!(ours[0]["addr"], "127.0.0.1");
        assert_eq!(ours[0]["txt"]["Service"], "echo", "{text}");
        assert_eq!(ours[0]["txt"]["Version"], "2.0.0", "{text}");
        drop(serve.stdin.take());
        let _ = tokio::time::timeout(WAIT, serve.wait()).await;
    });
    let _ = std::fs::remove_file(peer);
}

#[test]
fn bad_mdns_settings_are_reported_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[mdns]
interfaces = ["fe80::1", "not an interface"]
domain = "mi cro"
query_interval = "10ms"
ttl = "1500ms"

[[register]]
name = "greeter"
registry = "mdns"
port = 9000
tags = ["v1"]
address = "my-host"
deregister_critical_after = "1m"

[[register]]
name = "users"
port = 9001
version = "1.0"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "x"

[[backends]]
name = "x"
mdns_service = "bad name!"

[[backends]]
name = "y"
mdns_service = "_much-too-long-service._tcp.local."

[[backends]]
name = "z"
mdns_service = "greeter"
consul_service = "greeter"
"#,
    )
    .unwrap();
    let errors = switchyard::config::load(&path).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "mdns.interfaces[0]",
        "mdns.interfaces[1]",
        "mdns.domain",
        "mdns.query_interval",
        "mdns.ttl",
        "register[0].tags",
        "register[0].address",
        "register[0].deregister_critical_after",
        "register[1].version",
        "backends[0].mdns_service",
        "backends[1].mdns_service",
        "backends[2]",
    ] {
        assert!(keys.contains(&key), "no error at {key}: {errors}");
    }
    assert!(errors.to_string().contains("IPv4 only"), "{errors}");

    // An interface that is not there: the start fails and says which key.
    let rt = runtime();
    rt.block_on(async {
        let error = Switchyard::try_start(&routed(
            r#"mdns_service = "greeter""#,
            "[mdns]\ninterfaces = [\"nosuch9\"]\n",
        ))
        .await
        .err()
        .expect("the start fails");
        assert!(error.contains("mdns.interfaces"), "{error}");
        assert!(error.contains("nosuch9"), "{error}");
    });
}
