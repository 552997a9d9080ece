//! Sidecar registration with the Consul-compatible test server: register
//! once the local service answers, again after the agent forgets us,
//! deregister on SIGTERM; TTL checks that follow the local service.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::consul::{ConsulServer, restartable_port};
use support::{Backend, Switchyard, SwitchyardProcess, eventually, get};

const WAIT: Duration = Duration::from_secs(15);

/// The service IDs the agent lists.
async fn agent_services(consul: SocketAddr) -> Vec<String> {
    let (status, body) = get(consul, "/v1/agent/services", None).await;
    assert!(status.is_success(), "{status}: {body}");
    let services: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&body).expect("agent/services JSON");
    services.keys().cloned().collect()
}

/// A config registering the service at `local` as `users`.
fn config(consul: SocketAddr, local: SocketAddr, check: &str) -> String {
    format!(
        r#"[consul]
address = "http://{consul}"
retry_min = "50ms"
retry_max = "200ms"

[[register]]
name = "users"
id = "users-1"
address = "127.0.0.1"
port = {port}
tags = ["v1"]
meta = {{ version = "7" }}
check = {check}
deregister_critical_after = "1m"
interval = "300ms"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "b"

[[backends]]
name = "b"
respond = {{ status = 200, body = "b" }}
"#,
        port = local.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_when_healthy_again_after_the_agent_restarts_and_gone_on_sigterm() {
    let port = restartable_port();
    let consul_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let consul = ConsulServer::on_port(port).await;
    let users = Backend::start("users").await;
    let mut sy = SwitchyardProcess::start(&config(
        consul_addr,
        users.addr,
        r#"{ type = "http", path = "/health", interval = "1s", timeout = "500ms" }"#,
    ));
    eventually("users-1 registered", WAIT, || async {
        agent_services(consul_addr)
            .await
            .contains(&"users-1".to_string())
    })
    .await;
    // The check Consul runs, with the critical-deregistration timer.
    let (_, checks) = get(consul_addr, "/v1/agent/checks", None).await;
    let checks: serde_json::Value = serde_json::from_str(&checks).unwrap();
    let check = &checks["service:users-1"];
    assert_eq!(check["ServiceID"], "users-1", "{checks}");
    assert_eq!(check["Type"], "http", "{checks}");
    let (_, services) = get(consul_addr, "/v1/agent/services", None).await;
    let services: serde_json::Value = serde_json::from_str(&services).unwrap();
    assert_eq!(services["users-1"]["Tags"], serde_json::json!(["v1"]));
    assert_eq!(services["users-1"]["Meta"]["version"], "7");
    assert_eq!(services["users-1"]["Port"], users.addr.port());
    // And in the catalog, with its check, for everyone to find.
    let (_, catalog) = get(consul_addr, "/v1/catalog/services", None).await;
    let catalog: serde_json::Value = serde_json::from_str(&catalog).unwrap();
    assert_eq!(catalog["users"], serde_json::json!(["v1"]), "{catalog}");
    let (_, health) = get(consul_addr, "/v1/health/service/users", None).await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let checks: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["CheckID"].as_str())
        .collect();
    assert!(checks.contains(&"service:users-1"), "{health}");

    // The agent restarts and forgets its services: registered again within
    // one interval (300 ms) plus the reconnect.
    consul.shutdown().await;
    let consul = ConsulServer::on_port(port).await;
    let restarted = std::time::Instant::now();
    assert!(agent_services(consul_addr).await.is_empty());
    eventually("users-1 registered again", WAIT, || async {
        agent_services(consul_addr)
            .await
            .contains(&"users-1".to_string())
    })
    .await;
    eprintln!(
        "registered again {:?} after the restart",
        restarted.elapsed()
    );

    // SIGTERM: deregistered before the process is gone.
    sy.signal(libc::SIGTERM);
    assert_eq!(sy.wait_exit(WAIT).await, Some(0));
    assert!(agent_services(consul_addr).await.is_empty());
    drop(consul);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_follows_the_local_service() {
    let consul = ConsulServer::start().await;
    // The local service is not up yet: nothing is registered.
    let port = restartable_port();
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    let sy = Switchyard::start(&config(
        consul.addr(),
        local,
        r#"{ type = "ttl", ttl = "3s", interval = "100ms", path = "/health" }"#,
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(agent_services(consul.addr()).await.is_empty());
    let status = sy.status().await;
    assert_eq!(
        status["registrations"][0]["state"], "waiting_for_service",
        "{status}"
    );

    let users = Backend::start_bound(local, "users")
        .await
        .expect("port free");
    eventually("registered and passing", WAIT, || async {
        consul.check_status("service:users-1").as_deref() == Some("passing")
    })
    .await;
    drop(users);
    eventually("critical once the local service stops", WAIT, || async {
        consul.check_status("service:users-1").as_deref() == Some("critical")
    })
    .await;
    let registration = sy.status().await["registrations"][0].clone();
    assert_eq!(registration["state"], "registered", "{registration}");
    assert_eq!(registration["ttl_check"], "critical", "{registration}");
    assert!(
        registration["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("local service"))
    );
    let users = Backend::restart_at(local, "users").await;
    eventually("passing again", WAIT, || async {
        consul.check_status("service:users-1").as_deref() == Some("passing")
    })
    .await;
    drop((users, sy));
}
