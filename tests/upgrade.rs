//! Binary upgrade in place, from the real binary to the real binary: the
//! listening sockets move to the new process, nothing is refused or lost,
//! and a new process that fails leaves the old one serving.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use support::*;

/// Where the running binary lives, and the two builds put there in turn:
/// the cargo-built binary (hard-linked) and a copy of it.
struct Binaries {
    dir: tempfile::TempDir,
    builds: [PathBuf; 2],
}

impl Binaries {
    fn new() -> Self {
        // In the target directory, so hard links work (same filesystem).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let built = Path::new(env!("CARGO_BIN_EXE_switchyard"));
        let first = dir.path().join("switchyard-a");
        std::fs::hard_link(built, &first)
            .or_else(|_| std::fs::copy(built, &first).map(|_| ()))
            .expect("first build");
        let second = dir.path().join("switchyard-b");
        std::fs::copy(built, &second).expect("second build");
        let bin = Self {
            dir,
            builds: [first, second],
        };
        bin.install(0);
        bin
    }

    /// The path the process runs from, as a package would install it.
    fn path(&self) -> PathBuf {
        self.dir.path().join("switchyard")
    }

    /// Replaces the file at [`Binaries::path`] with build `n`, atomically.
    fn install(&self, n: usize) {
        let tmp = self.dir.path().join(".switchyard.new");
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&self.builds[n % 2], &tmp).expect("link build");
        std::fs::rename(&tmp, self.path()).expect("install build");
    }

    /// Installs a shell script in place of the binary (a slow or broken
    /// new version); it runs `body` with the arguments in "$@".
    fn install_script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.path().join(".switchyard.script");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, self.path()).expect("install script");
    }
}

/// Every process the upgrades started, stopped by PID at the end (the
/// first is the test's child; each later one the child of its predecessor).
struct Processes(std::sync::Mutex<Vec<i32>>);

impl Processes {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            // SAFETY: kill(2) on a PID this test's processes started; one
            // that has exited already makes this a harmless ESRCH.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

/// Starts the installed binary with `config`; every process the test's
/// upgrades start is to be added to the returned [`Processes`].
fn start(config: &str, args: &[&str]) -> (Binaries, SwitchyardProcess, Processes) {
    let bin = Binaries::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let sy = SwitchyardProcess::start_exe_in(dir, &bin.path(), config, args);
    let processes = Processes(std::sync::Mutex::new(vec![sy.pid()]));
    (bin, sy, processes)
}

/// `switchyard upgrade -c CONFIG --admin ADDR`, run from the installed
/// path (the tests' admin servers bind port 0, which the config cannot
/// tell).
async fn upgrade_command(bin: &Path, config: &Path, admin: SocketAddr) -> std::process::Output {
    tokio::process::Command::new(bin)
        .args(["upgrade", "-c"])
        .arg(config)
        .arg("--admin")
        .arg(admin.to_string())
        .output()
        .await
        .expect("run switchyard upgrade")
}

fn new_pid(out: &std::process::Output) -> i32 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("process ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {text:?}"))
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = get(admin, "/status", None).await;
    assert_eq!(code, StatusCode::OK);
    serde_json::from_str(&body).expect("status json")
}

/// Requests that must all succeed while upgrades run.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    refused: AtomicUsize,
    stop: AtomicBool,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 10 {
            failures.push(what);
        }
    }

    /// A keep-alive client: one connection until it is told to close.
    async fn keep_alive(self: Arc<Self>, addr: SocketAddr) {
        'connections: while !self.stop.load(Ordering::Relaxed) {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut client = HttpClient::over(stream).await;
            while !self.stop.load(Ordering::Relaxed) {
                match client.get("/", None).await {
                    Ok((StatusCode::OK, headers, _)) => {
                        self.ok.fetch_add(1, Ordering::Relaxed);
                        if headers.get("connection").is_some_and(|v| v == "close") {
                            continue 'connections;
                        }
                    }
                    Ok((status, _, body)) => self.fail(format!("{status} {body}")),
                    Err(error) => {
                        self.fail(format!("keep-alive: {error}"));
                        continue 'connections;
                    }
                }
            }
        }
    }

    /// A client that opens a new connection for every request.
    async fn new_connections(self: Arc<Self>, addr: SocketAddr) {
        while !self.stop.load(Ordering::Relaxed) {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut client = HttpClient::over(stream).await;
            match client.get("/", None).await {
                Ok((StatusCode::OK, _, _)) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, _, body)) => self.fail(format!("{status} {body}")),
                Err(error) => self.fail(format!("new connection: {error}")),
            }
        }
    }
}

/// One HTTP listener `web` in front of `backend`, a grace of `grace`, and
/// `listener_extra` in the listener.
fn config_with(backend: SocketAddr, grace: &str, listener_extra: &str) -> String {
    single_backend_with(
        backend,
        &format!("[shutdown]\ngrace = \"{grace}\"\n"),
        listener_extra,
        "",
    )
}

fn config(backend: SocketAddr) -> String {
    config_with(backend, "10s", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_upgrades_under_load_lose_nothing() {
    let backend = Backend::start("app").await;
    let (bin, sy, processes) = start(&config(backend.addr), &["--threads", "2"]);
    let addr = sy.addr("web");
    let admin = sy.admin;

    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(tokio::spawn(load.clone().keep_alive(addr)));
        clients.push(tokio::spawn(load.clone().new_connections(addr)));
    }
    eventually("load is flowing", Duration::from_secs(10), || async {
        load.ok.load(Ordering::Relaxed) > 100
    })
    .await;

    let mut pids = vec![sy.pid()];
    for n in 1..=10 {
        bin.install(n);
        let before = load.ok.load(Ordering::Relaxed);
        let out = upgrade_command(&bin.path(), &sy.config, sy.admin).await;
        assert!(
            out.status.success(),
            "upgrade {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = new_pid(&out);
        processes.add(pid);
        pids.push(pid);
        // The admin port moved with the rest: the new process answers.
        eventually(
            "the new process answers /status",
            Duration::from_secs(10),
            || async { status(admin).await["pid"] == pid },
        )
        .await;
        eventually(
            "requests flow after the upgrade",
            Duration::from_secs(10),
            || async { load.ok.load(Ordering::Relaxed) > before + 50 },
        )
        .await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let ok = load.ok.load(Ordering::Relaxed);
    assert_eq!(
        (
            load.failed.load(Ordering::Relaxed),
            load.refused.load(Ordering::Relaxed)
        ),
        (0, 0),
        "failed or refused during 10 upgrades ({ok} succeeded): {:?}",
        load.failures.lock().unwrap()
    );
    // Every replaced process drained and said so as it exited.
    eventually(
        "each old process logs its exit",
        Duration::from_secs(30),
        || async {
            let lines = sy.log_lines();
            pids[..10].iter().all(|pid| {
                lines.iter().any(|l| {
                    l.contains("Old process exiting") && l.contains(&format!("\"pid\":{pid}"))
                })
            })
        },
    )
    .await;
    for pid in &pids[..10] {
        eventually(
            "the old process is gone",
            Duration::from_secs(30),
            || async {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            },
        )
        .await;
    }
    let last = status(admin).await;
    assert_eq!(last["pid"], pids[10]);
    assert_eq!(last["upgrade"]["state"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_leaves_the_old_one_serving() {
    let backend = Backend::start("app").await;
    let (bin, sy, _processes) = start(&config(backend.addr), &[]);
    let addr = sy.addr("web");

    // The new process finds a config it rejects.
    let good = std::fs::read_to_string(&sy.config).expect("config");
    std::fs::write(&sy.config, good.replace("servers", "srvers")).expect("break config");
    bin.install(1);
    let out = upgrade_command(&bin.path(), &sy.config, sy.admin).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exit status 1")
            && stderr.contains("srvers")
            && stderr.contains("keeps serving"),
        "says why: {stderr}"
    );
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
    let st = status(sy.admin).await;
    assert_eq!(st["pid"], sy.pid());
    assert_eq!(st["last_upgrade"]["result"], "failure");
    assert_eq!(st["last_upgrade"]["exit_code"], 1);
    assert_eq!(st["upgrade"]["state"], "idle");
    let failures = get(sy.admin, "/metrics", None).await.1;
    assert!(failures.contains("switchyard_upgrades_total{result=\"failure\"} 1"));

    // A binary that is not Switchyard at all.
    std::fs::write(&sy.config, &good).expect("restore config");
    bin.install_script("echo 'not a switchyard' >&2; exit 3");
    // The installed command is the script now: ask over the admin API.
    let answer = post(sy.admin, "/upgrade").await;
    assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", answer.1);
    assert!(answer.1.contains("exited with status 3"), "{}", answer.1);
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upgrade_at_a_time_and_a_silent_new_process_times_out() {
    let backend = Backend::start("app").await;
    let (bin, sy, _processes) = start(&config(backend.addr), &["--upgrade-timeout", "2s"]);
    let addr = sy.addr("web");

    // A new version that starts and never answers (it hangs).
    bin.install_script("exec sleep 600");
    let admin = sy.admin;
    let first = tokio::spawn(async move { post(admin, "/upgrade").await });
    eventually(
        "the upgrade is under way",
        Duration::from_secs(5),
        || async { status(admin).await["upgrade"]["state"] == "in_progress" },
    )
    .await;
    let second = post(admin, "/upgrade").await;
    assert_eq!(second.0, StatusCode::CONFLICT, "{}", second.1);
    assert!(second.1.contains("already in progress"), "{}", second.1);
    // Still serving while it waits.
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));

    let (code, body) = first.await.expect("first upgrade");
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("did not report ready within 2s"), "{body}");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
    assert_eq!(status(admin).await["upgrade"]["state"], "idle");

    // And the next upgrade, to a real binary, goes through.
    bin.install(1);
    let new = Processes(std::sync::Mutex::new(Vec::new()));
    let pid = upgrade_ok(admin, &new).await;
    eventually(
        "the new process serves",
        Duration::from_secs(10),
        || async { status(admin).await["pid"] == pid },
    )
    .await;
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades() {
    let backend = Backend::start("app").await;
    let (bin, mut sy, processes) = start(&config(backend.addr), &[]);
    let old = sy.pid();
    bin.install(1);
    sy.signal(libc::SIGUSR2);
    let admin = sy.admin;
    eventually("a new process serves", Duration::from_secs(10), || async {
        let st = status(admin).await;
        st["pid"] != old && st["pid"].is_number()
    })
    .await;
    processes.add(status(admin).await["pid"].as_i64().unwrap() as i32);
    assert_eq!(sy.wait_exit(Duration::from_secs(15)).await, Some(0));
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "app".into())
    );
}

/// `POST /upgrade`, which must succeed; the new process's PID, added to
/// `processes`.
async fn upgrade_ok(admin: SocketAddr, processes: &Processes) -> i32 {
    let (code, body) = post(admin, "/upgrade").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    let pid = answer["new_pid"].as_i64().expect("new pid") as i32;
    processes.add(pid);
    pid
}

async fn post(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let mut client = HttpClient::connect(addr).await;
    let req = http::Request::post(path)
        .header("host", "admin")
        .body(TestBody::default())
        .expect("request");
    let (status, _, body) = client.send(req).await.expect("admin answers");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_across_an_upgrade_runs_until_the_drain_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    let (ws_addr, _ws) = websocket_echo().await;
    let config = config_with(ws_addr, "10s", "drain_timeout = \"1500ms\"");
    let (bin, mut sy, processes) = start(&config, &[]);
    let old = sy.pid();
    let stream = tokio::net::TcpStream::connect(sy.addr("web"))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://echo.test/socket", stream)
        .await
        .expect("websocket through the proxy");
    let mut round_trip = async |n: usize| -> Result<(), String> {
        let text = format!("message {n}");
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(echoed))) if echoed == Message::text(text) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    round_trip(0).await.expect("echo before the upgrade");

    bin.install(1);
    upgrade_ok(sy.admin, &processes).await;
    let upgraded = std::time::Instant::now();

    // The old process still carries the WebSocket, message after message,
    // until its drain timeout.
    let mut sent = 1;
    while upgraded.elapsed() < Duration::from_millis(1000) {
        round_trip(sent)
            .await
            .expect("echo while the old process drains");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then it is closed: an end of stream, not a reset.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None => return None,
                Some(Err(error)) => return Some(error),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed at the drain timeout");
    assert!(
        !matches!(&end, Some(WsError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed cleanly: {end:?}"
    );
    assert!(
        upgraded.elapsed() >= Duration::from_millis(1400),
        "not before the drain timeout"
    );
    assert_eq!(sy.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        sy.log_lines()
            .iter()
            .any(|l| l.contains("Old process exiting") && l.contains(&format!("\"pid\":{old}")))
    );
    // New connections go to the new process.
    let stream = tokio::net::TcpStream::connect(sy.addr("web"))
        .await
        .unwrap();
    let (mut fresh, _) = tokio_tungstenite::client_async("ws://echo.test/socket", stream)
        .await
        .expect("websocket to the new process");
    fresh.send(Message::text("hello")).await.unwrap();
    assert_eq!(fresh.next().await.unwrap().unwrap(), Message::text("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replaced_process_s_drain_shows_and_only_one_drains_at_a_time() {
    let (echo_addr, _echo) = tcp_echo().await;
    // A TCP listener and a long grace: without the rule, each upgrade
    // would leave one more process behind for 60 s.
    let config = config_with(echo_addr, "60s", "mode = \"tcp\"");
    let (bin, mut sy, processes) = start(&config, &[]);
    let first = sy.pid();
    let admin = sy.admin;
    let mut long_lived = tokio::net::TcpStream::connect(sy.addr("web"))
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        long_lived.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        long_lived.read_exact(&mut buf).await.unwrap();
    }

    bin.install(1);
    let second = upgrade_ok(admin, &processes).await;
    eventually(
        "the new process shows the old one draining",
        Duration::from_secs(10),
        || async {
            let st = status(admin).await;
            st["pid"] == second
                && st["predecessor"]["pid"] == first
                && st["predecessor"]["draining_connections"].as_u64() >= Some(1)
        },
    )
    .await;
    let metrics = get(admin, "/metrics", None).await.1;
    assert!(
        metrics.contains("switchyard_upgrade_predecessor_connections 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("predecessor"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The next upgrade asks the first process to finish now.
    bin.install(2);
    upgrade_ok(admin, &processes).await;
    assert_eq!(
        sy.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "the first process exits long before its grace period"
    );
    closed_by_peer(&mut long_lived, "the first process's last connection").await;
    eventually(
        "the second process has gone too",
        Duration::from_secs(10),
        || async { status(admin).await["predecessor"].is_null() },
    )
    .await;
}

/// The nameserver stops answering just before an upgrade: the new process
/// starts from the old one's answers and holds them as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_survive_an_upgrade_while_the_nameserver_is_silent() {
    let dns = support::dns::DnsServer::start().await;
    let backend = Backend::start("app").await;
    dns.set_addresses("app.test", &["127.0.0.1".parse().unwrap()], 1);
    let config = web_config(
        &format!(
            "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\nattempts = 1\nhold_valid = \"60s\"\n",
            dns.addr
        ),
        "",
        &format!("servers = [\"app.test:{}\"]", backend.addr.port()),
    );
    let (bin, sy, processes) = start(&config, &[]);
    let (addr, admin) = (sy.addr("web"), sy.admin);
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));

    dns.set_silent("app.test");
    eventually(
        "the old process holds its answer",
        Duration::from_secs(10),
        || async { status(admin).await["watches"][0]["state"] == "holding" },
    )
    .await;
    bin.install(1);
    let pid = upgrade_ok(admin, &processes).await;
    eventually(
        "the new process serves",
        Duration::from_secs(10),
        || async { status(admin).await["pid"] == pid },
    )
    .await;
    // Its own lookups time out; the handed-over answer is held.
    for _ in 0..20 {
        assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
    }
    let st = status(admin).await;
    assert_eq!(
        st["backends"][0]["endpoints"].as_array().map(Vec::len),
        Some(1),
        "{st}"
    );
    assert!(
        matches!(
            st["watches"][0]["state"].as_str(),
            Some("holding" | "resolved")
        ),
        "{}",
        st["watches"][0]
    );
}

/// systemd socket activation: the listener serves on the socket passed as
/// fd 3 (`LISTEN_FDS=1`, `LISTEN_PID` = its own PID). The test keeps that
/// port bound while Switchyard starts, so binding it anew would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_take_sockets_from_listen_fds() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let backend = Backend::start("app").await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = passed.local_addr().unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("switchyard.toml");
    let config = config(backend.addr).replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(&config_path, with_admin(&config)).expect("write config");
    let fd = passed.as_raw_fd();
    let mut command = std::process::Command::new("/bin/sh");
    // `exec` keeps the shell's PID, which is what LISTEN_PID must name.
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(&config_path)
        .env("LISTEN_FDS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 to
    // put the socket at fd 3 (which also clears close-on-exec).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = std::sync::Mutex::new(command.spawn().expect("spawn"));
    let _processes = Processes(std::sync::Mutex::new(vec![
        child.lock().unwrap().id() as i32
    ]));
    eventually(
        "it serves on the passed socket",
        Duration::from_secs(20),
        || async {
            if let Ok(Some(status)) = child.lock().unwrap().try_wait() {
                panic!("switchyard exited: {status}");
            }
            // The test's own copy of the socket queues connections too: one
            // that nobody accepts gets no answer, hence the timeout.
            let ask = async {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut client = HttpClient::over(stream).await;
                client.get("/", None).await.ok()
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(2), ask).await,
                Ok(Some((StatusCode::OK, _, body))) if body == "app"
            )
        },
    )
    .await;
    // Ours is a copy: closing it leaves Switchyard's open.
    drop(passed);
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "app".into()));
}

/// A server the old process's health checks hold down starts down in the
/// new process too (it needs `rise` good checks, as it would have in the
/// old one), instead of up until `fall` checks fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_held_down_stay_down_across_an_upgrade() {
    let live = Backend::start("live").await;
    // A port with nothing behind it yet.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = spare.local_addr().unwrap();
    drop(spare);
    let config = web_config(
        "",
        "",
        &format!(
            "servers = [\"{}\", \"{down_addr}\"]\n\
             health_check = {{ type = \"tcp\", interval = \"100ms\", timeout = \"100ms\", fall = 1, rise = 50 }}",
            live.addr
        ),
    );
    let (bin, sy, processes) = start(&config, &[]);
    let admin = sy.admin;
    let healthy = |st: &serde_json::Value| endpoint(st, down_addr)["healthy"].as_bool();
    eventually(
        "the old process holds it down",
        Duration::from_secs(10),
        || async { healthy(&status(admin).await) == Some(false) },
    )
    .await;
    // It comes back; the old process would need 50 good checks (5 s).
    let _back = Backend::start_bound(down_addr, "back")
        .await
        .expect("rebind");
    bin.install(1);
    let pid = upgrade_ok(admin, &processes).await;
    let st = status(admin).await;
    assert_eq!(st["pid"], pid);
    assert_eq!(healthy(&st), Some(false), "{}", endpoint(&st, down_addr));
    // And the checks bring it back in their own time.
    eventually(
        "rise good checks bring it back",
        Duration::from_secs(20),
        || async { healthy(&status(admin).await) == Some(true) },
    )
    .await;
}
