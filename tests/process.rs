//! The binary: command line, signals, exit codes.

mod support;

use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::*;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard")
}

fn one_backend(addr: std::net::SocketAddr, top: &str) -> String {
    single_backend(addr, top, "")
}

#[test]
fn version_and_help() {
    let out = switchyard(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
    let out = switchyard(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["run", "check", "--log-format"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
}

#[test]
fn check_prints_a_summary_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, one_backend("127.0.0.1:9001".parse().unwrap(), "")).unwrap();
    let out = switchyard(&["check", "-c", good.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("OK") && stdout.contains("1 listener(s)"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    let text = one_backend("127.0.0.1:9001".parse().unwrap(), "").replace(
        "default_backend = \"b\"",
        "default_backend = \"missing\"\ncolour = \"red\"",
    );
    std::fs::write(&bad, text).unwrap();
    let out = switchyard(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml: `listeners[0].colour`: unknown field"),
        "{stderr}"
    );

    std::fs::write(
        &bad,
        one_backend("127.0.0.1:9001".parse().unwrap(), "")
            .replace("default_backend = \"b\"", "default_backend = \"missing\""),
    )
    .unwrap();
    let out = switchyard(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`listeners[0].default_backend`: no backend named `missing`"),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem"), "{stderr}");

    let out = switchyard(&[
        "check",
        "-c",
        dir.path().join("absent.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read file"));
}

#[test]
fn run_with_an_invalid_config_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listeners]]\nname = \"x\"\n").unwrap();
    let out = switchyard(&["run", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listeners[0]`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let sy = SwitchyardProcess::start_with_args(&one_backend(one.addr, ""), &["--no-watch"]);
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await.1, "one");
    sy.write_config(&one_backend(two.addr, ""));
    sy.signal(libc::SIGHUP);
    eventually(
        "SIGHUP applies the new config",
        Duration::from_secs(10),
        || async { get(addr, "/", None).await.1 == "two" },
    )
    .await;
    // The table is published before the line is logged: wait for it too.
    eventually(
        "the swap is logged in one line",
        Duration::from_secs(10),
        || async {
            sy.log_lines()
                .iter()
                .any(|l| l.contains("Config applied") && l.contains("Signal"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits_zero() {
    sigterm_drains("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_worker_then_exits_zero() {
    sigterm_drains("2").await;
}

/// Idle keep-alive clients (spread over the workers) and one request in
/// flight when SIGTERM comes: every one answered, the idle ones told to
/// close, then a clean exit.
async fn sigterm_drains(threads: &str) {
    let slow = Backend::held("slow").await;
    let mut sy = SwitchyardProcess::start_with_args(
        &one_backend(slow.addr, "[shutdown]\ngrace = \"30s\"\n"),
        &["--threads", threads],
    );
    let addr = sy.addr("web");
    let admin = sy.admin;

    let mut idle = Vec::new();
    for _ in 0..6 {
        let mut client = HttpClient::connect(addr).await;
        slow.release(1);
        assert_eq!(client.get("/", None).await.unwrap().2, "slow");
        idle.push(client);
    }
    let in_flight = tokio::spawn(async move { get(addr, "/", None).await });
    eventually("request in flight", Duration::from_secs(5), || async {
        slow.arrived() == 7
    })
    .await;

    sy.signal(libc::SIGTERM);
    eventually(
        "listener stops accepting",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    let (health, _) = get(admin, "/healthz", None).await;
    assert_eq!(
        health,
        StatusCode::SERVICE_UNAVAILABLE,
        "healthz reports draining"
    );

    // Each idle client's next request is answered, and told to close; one
    // more permit is for the request already in flight.
    slow.release(idle.len() + 1);
    for client in &mut idle {
        let (status, headers, body) = client
            .get("/", None)
            .await
            .expect("no request lost to the drain");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
        assert_eq!(headers["connection"], "close");
    }

    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
    assert_eq!(sy.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        sy.log_lines()
            .iter()
            .any(|l| l.contains("All connections finished"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_what_outlives_the_grace_period() {
    let stuck = Backend::held("stuck").await;
    let mut sy =
        SwitchyardProcess::start(&one_backend(stuck.addr, "[shutdown]\ngrace = \"300ms\"\n"));
    let addr = sy.addr("web");
    let in_flight = tokio::spawn(async move {
        let mut c = HttpClient::connect(addr).await;
        c.get("/", None).await
    });
    eventually("request in flight", Duration::from_secs(5), || async {
        stuck.arrived() == 1
    })
    .await;
    sy.signal(libc::SIGTERM);
    assert_eq!(sy.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the stuck request was cut"
    );
    assert!(
        sy.log_lines()
            .iter()
            .any(|l| l.contains("Grace period over"))
    );
}

/// Every example config the README points to passes `switchyard check`.
#[test]
fn every_example_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut configs = Vec::new();
    for dir in [root.clone(), root.join("consul"), root.join("gateway")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                configs.push(path);
            }
        }
    }
    assert!(configs.len() >= 6, "{configs:?}");
    for config in configs {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
