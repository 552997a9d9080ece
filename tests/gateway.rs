//! Service-name gateway routes and tag routes against the Consul-compatible
//! test server: `/{service}/rest` and `{service}.{domain}` reach Consul
//! services with no route per service; `urlprefix-` tags make routes.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::consul::{ConsulServer, ServiceInstance};
use support::{Backend, HttpClient, Switchyard, eventually, get};

const WAIT: Duration = Duration::from_secs(10);

fn instance(service: &str, id: &str, backend: &Backend, tags: &[&str]) -> ServiceInstance {
    let mut i = ServiceInstance::on_loopback(service, id, backend.addr.port());
    i.tags = tags.iter().map(|t| t.to_string()).collect();
    i
}

fn consul_section(consul: &ConsulServer) -> String {
    format!(
        "[consul]\naddress = \"{}\"\nwait = \"2s\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n",
        consul.url()
    )
}

/// (status, body, path the backend saw)
async fn fetch(addr: SocketAddr, path: &str, host: Option<&str>) -> (StatusCode, String, String) {
    let mut c = HttpClient::connect(addr).await;
    let (status, headers, body) = c.get(path, host).await.expect("answer");
    let seen = headers
        .get("x-seen-path")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, body, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_host_gateway_routes_reach_services_by_name() {
    let consul = ConsulServer::start().await;
    let users = Backend::start("users").await;
    consul.register(instance("users", "users-1", &users, &[]));
    let config = format!(
        "{}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nhost = \"api.local\"\nservice_from = \"path\"\nstrip_service = true\n\n\
         [[routes]]\nservice_from = \"host\"\ndomain = \"svc.local\"\n",
        consul_section(&consul)
    );
    let sy = Switchyard::start(&config).await;
    let addr = sy.addr("web");

    // /users/profile/7 reaches `users` at /profile/7.
    assert_eq!(
        fetch(addr, "/users/profile/7?x=1", Some("api.local")).await,
        (StatusCode::OK, "users".into(), "/profile/7?x=1".into())
    );
    // By host, path untouched.
    assert_eq!(
        fetch(addr, "/profile/7", Some("users.svc.local")).await,
        (StatusCode::OK, "users".into(), "/profile/7".into())
    );
    // Unknown services: 404 with a short body.
    let (status, body, _) = fetch(addr, "/nope/x", Some("api.local")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "unknown service\n")
    );
    assert_eq!(
        get(addr, "/", Some("nope.svc.local")).await,
        (StatusCode::NOT_FOUND, "unknown service\n".into())
    );

    // A service registered mid-run is routable with no config change.
    let orders = Backend::start("orders").await;
    consul.register(instance("orders", "orders-1", &orders, &[]));
    eventually("orders routable", WAIT, || async {
        fetch(addr, "/orders/list", Some("api.local")).await
            == (StatusCode::OK, "orders".into(), "/list".into())
    })
    .await;
    // Its instances follow Consul health like any Consul backend.
    let orders2 = Backend::start("orders2").await;
    consul.register(instance("orders", "orders-2", &orders2, &[]));
    consul.set_service_status("orders-1", "critical");
    eventually("orders-1 out, orders-2 in", WAIT, || async {
        fetch(addr, "/orders/x", Some("api.local")).await.1 == "orders2"
            && fetch(addr, "/orders/x", Some("api.local")).await.1 == "orders2"
    })
    .await;
    let status = sy.status().await;
    assert_eq!(status["version"], 1, "no config swap: {status}");
    let made: Vec<&str> = status["gateway_backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(
        made.contains(&"users") && made.contains(&"orders"),
        "{made:?}"
    );
    assert!(!made.contains(&"nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urlprefix_tags_make_routes_that_come_and_go() {
    let consul = ConsulServer::start().await;
    let users = Backend::start("users").await;
    consul.register(instance("users", "users-1", &users, &[]));
    let config = format!(
        "{}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"fallback\"\n\
         consul_tag_routes = true\n\n\
         [[backends]]\nname = \"fallback\"\nrespond = {{ status = 200, body = \"fallback\" }}\n",
        consul_section(&consul)
    );
    let sy = Switchyard::start(&config).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/users/1", None).await.1, "fallback");

    // The tag appears: its route with it.
    consul.register(instance("users", "users-1", &users, &["urlprefix-/users/"]));
    eventually("the tag route", WAIT, || async {
        get(addr, "/users/1", None).await.1 == "users"
    })
    .await;
    consul.register(instance(
        "users",
        "users-2",
        &users,
        &["urlprefix-users.local/"],
    ));
    eventually("the host tag route", WAIT, || async {
        get(addr, "/anything", Some("users.local")).await.1 == "users"
    })
    .await;

    // The tag goes: the route goes; a request in flight finishes.
    let slow = Backend::held("slow").await;
    consul.register(instance("slow", "slow-1", &slow, &["urlprefix-/slow/"]));
    let deadline = tokio::time::Instant::now() + WAIT;
    let in_flight = loop {
        let before = slow.arrived();
        let request = tokio::spawn(async move { get(addr, "/slow/x", None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.arrived() > before {
            break request;
        }
        assert_eq!(request.await.unwrap().1, "fallback");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow route never came"
        );
    };
    consul.register(instance("slow", "slow-1", &slow, &[]));
    eventually("the slow route gone", WAIT, || async {
        // A probe that still lands on the held backend waits: give up on it.
        matches!(
            tokio::time::timeout(Duration::from_millis(300), get(addr, "/slow/y", None)).await,
            Ok((_, body)) if body == "fallback"
        )
    })
    .await;
    slow.release(100);
    assert_eq!(in_flight.await.unwrap(), (StatusCode::OK, "slow".into()));
    consul.register(instance("users", "users-1", &users, &[]));
    consul.deregister("users-2");
    eventually("the users routes gone", WAIT, || async {
        get(addr, "/users/1", None).await.1 == "fallback"
    })
    .await;
}
