//! The status page in a real browser: Debian's headless Chromium, driven
//! over WebDriver by chromedriver (through the `fantoccini` crate), loads
//! `/` from a running Switchyard, and the test reads the DOM: every
//! listener, backend and endpoint of the config with its state, request
//! counts and rates, a backend killed and then reloaded in, all without
//! the page being reloaded, and no console error. Screenshots go to
//! `target/test-artifacts/`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); the
//! tests fail, not skip, without them.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fantoccini::{Client, ClientBuilder};
use http::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use support::tls::Ca;
use support::*;

/// Where Debian's packages put them.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long any one state may take to show on the page: health checks run
/// every 100 ms and the page polls every second.
const SHOWS_WITHIN: Duration = Duration::from_secs(15);

// === the browser ===

/// A chromedriver we started, and the Chromium processes it starts, all in
/// one process group of their own; the group is ended when this drops.
struct Driver {
    child: Child,
    addr: SocketAddr,
    /// chromedriver's and Chromium's TMPDIR: what they leave when killed
    /// goes with it.
    _tmp: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Self {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the status page test needs Debian's `chromium` and \
                 `chromium-driver` (`apt-get install -y chromium chromium-driver`, as .ci/run \
                 does); package {package}"
            );
        }
        let port = free_port();
        let tmp = tempfile::tempdir().expect("tempdir");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: Chromium's processes join it, and Drop ends
            // them all by this group's ID, whatever state the test left.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _tmp: tmp,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(driver.addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {} within 20 s",
                driver.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new headless Chromium window of `width` × `height` CSS pixels.
    async fn browser(&self, width: u32, height: u32) -> Browser {
        self.browser_with(width, height, None).await
    }

    /// A phone's screen: headless Chromium keeps windows at least 500
    /// pixels wide, so the viewport is emulated (as its device toolbar
    /// does), at twice the pixels.
    async fn phone(&self, width: u32, height: u32) -> Browser {
        let metrics = json!({ "width": width, "height": height, "pixelRatio": 2.0, "touch": true });
        self.browser_with(width, height, Some(json!({ "deviceMetrics": metrics })))
            .await
    }

    async fn browser_with(&self, width: u32, height: u32, mobile: Option<Value>) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            // The console, read back with `console_errors`.
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        if let Some(mobile) = mobile {
            caps["goog:chromeOptions"]["mobileEmulation"] = mobile;
        }
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("chromedriver starts a Chromium session");
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        Browser {
            client,
            driver: self.addr,
            session,
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test created (its ID is
        // the PID of the chromedriver child spawned above, still unreaped).
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever of the group is still there goes now.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now, for chromedriver's `--port`.
fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

struct Browser {
    client: Client,
    driver: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// Reads what the page shows, through its `data-*` hooks and text.
const SNAPSHOT: &str = r#"
const all = (sel, root) => Array.from((root || document).querySelectorAll(sel));
const updated = document.getElementById('updated');
const endpoint = (e) => ({
  addr: e.dataset.endpoint,
  health: e.dataset.health,
  requests: Number(e.dataset.requests),
  failures: Number(e.dataset.failures),
  rps: e.dataset.rps === '' ? null : Number(e.dataset.rps),
  text: e.textContent,
});
return {
  marker: window.__pageLoadMarker === 42,
  polls: Number(updated.dataset.polls),
  updated: updated.textContent,
  offline: !document.getElementById('offline').hidden,
  offline_text: document.getElementById('offline').textContent,
  listeners: all('[data-listener]').map((l) => ({ name: l.dataset.listener, text: l.textContent })),
  backends: all('#backends [data-backend]').map((b) => ({
    name: b.dataset.backend,
    state: b.dataset.state,
    text: b.textContent,
    endpoints: all('[data-endpoint]', b).map(endpoint),
  })),
  reloads: all('[data-reload]').map((r) => ({
    result: r.dataset.result, trigger: r.dataset.trigger, text: r.textContent,
  })),
  scroll_width: document.documentElement.scrollWidth,
  inner_width: window.innerWidth,
  cell_display: (() => { const td = document.querySelector('td'); return td ? getComputedStyle(td).display : null; })(),
};
"#;

impl Browser {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("page loads");
    }

    async fn snapshot(&self) -> Value {
        self.client
            .execute(SNAPSHOT, Vec::new())
            .await
            .expect("snapshot script runs")
    }

    /// Polls the page until `check` holds, within [`SHOWS_WITHIN`]; fails
    /// with the last snapshot.
    async fn wait_for(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + SHOWS_WITHIN;
        loop {
            let page = self.snapshot().await;
            if check(&page) {
                return page;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page did not show {what} within {SHOWS_WITHIN:?}; it shows:\n{page:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The console entries of level SEVERE (errors, failed loads, uncaught
    /// exceptions) since the last call. chromedriver keeps the browser log
    /// for `goog:loggingPrefs`; fantoccini has no call for it, so this asks
    /// chromedriver's log endpoint directly.
    async fn console_errors(&self) -> Vec<Value> {
        let mut http = HttpClient::connect(self.driver).await;
        let req = Request::post(format!("/session/{}/se/log", self.session))
            .header("content-type", "application/json")
            .header("host", self.driver.to_string())
            .body(full(r#"{"type":"browser"}"#))
            .expect("request");
        let (status, _, body) = http.send(req).await.expect("chromedriver answers");
        assert_eq!(status, StatusCode::OK, "browser log: {body}");
        let log: Value = serde_json::from_str(&body).expect("log is JSON");
        log["value"]
            .as_array()
            .expect("log entries")
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .cloned()
            .collect()
    }

    /// Saves what the window shows as a PNG.
    async fn screenshot(&self, to: &[PathBuf]) {
        let png = self.client.screenshot().await.expect("screenshot");
        for path in to {
            std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
            std::fs::write(path, &png).expect("write screenshot");
        }
    }

    /// Saves the whole page (the window grown to its height) as a PNG.
    async fn full_page_screenshot(&self, width: u32, to: &[PathBuf]) {
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight", Vec::new())
            .await
            .expect("page height")
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 4000) as u32;
        self.client
            .set_window_size(width, height)
            .await
            .expect("resize");
        self.screenshot(to).await;
    }

    async fn close(self) {
        self.client.close().await.expect("session ends");
    }
}

fn artifacts() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts")
}

// === the page's view of things ===

fn backend<'a>(page: &'a Value, name: &str) -> Option<&'a Value> {
    page["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)
}

fn state_of(page: &Value, name: &str) -> Option<String> {
    backend(page, name).and_then(|b| b["state"].as_str().map(str::to_string))
}

fn endpoint_of<'a>(page: &'a Value, name: &str, addr: SocketAddr) -> Option<&'a Value> {
    backend(page, name)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["addr"] == addr.to_string())
}

fn health_of(page: &Value, name: &str, addr: SocketAddr) -> Option<String> {
    endpoint_of(page, name, addr).and_then(|e| e["health"].as_str().map(str::to_string))
}

fn requests_of(page: &Value, name: &str) -> u64 {
    backend(page, name)
        .and_then(|b| b["endpoints"].as_array())
        .map_or(0, |eps| {
            eps.iter()
                .map(|e| e["requests"].as_u64().unwrap_or(0))
                .sum()
        })
}

// === the config ===

/// Two listeners (one https with a certificate), a checked backend, an
/// unchecked one and a built-in responder; with `search`, a fourth
/// backend and its route.
fn config(web: [SocketAddr; 2], api: [SocketAddr; 2], search: Option<[SocketAddr; 2]>) -> String {
    let mut text = format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
default_backend = "web"

[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "web"
certs = [{{ cert = "shop.pem", key = "shop.key" }}]

[[routes]]
listener = "public"
path_prefix = "/api/"
backend = "api"

[[routes]]
listener = "public"
host = "static.shop.example"
path_prefix = "/"
backend = "static"

[[backends]]
name = "web"
servers = ["{}", "{}"]
health_check = {{ type = "http", path = "/health", interval = "100ms", timeout = "500ms", rise = 2, fall = 1 }}

[[backends]]
name = "api"
servers = ["{}", "{}"]

[[backends]]
name = "static"
respond = {{ status = 200, body = "static\n" }}
"#,
        web[0], web[1], api[0], api[1]
    );
    if let Some(search) = search {
        text.push_str(&format!(
            r#"
[[routes]]
listener = "public"
path_prefix = "/search/"
backend = "search"

[[backends]]
name = "search"
servers = ["{}", "{}"]
"#,
            search[0], search[1]
        ));
    }
    text
}

/// A Switchyard on `config` in a directory that holds its certificate,
/// valid for 60 more days.
async fn start(config: &str) -> Switchyard {
    let dir = tempfile::tempdir().expect("tempdir");
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let leaf = Ca::new().leaf_with(&["shop.example", "www.shop.example"], |p| {
        p.not_after =
            rcgen::date_time_ymd(1970, 1, 1) + since_epoch + Duration::from_secs(60 * 86_400);
    });
    leaf.write(dir.path(), "shop");
    Switchyard::start_in(dir, config).await
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_part_of_the_config_and_follows_changes_without_a_reload() {
    let web = [Backend::start("web-1").await, Backend::start("web-2").await];
    let api = [Backend::start("api-1").await, Backend::start("api-2").await];
    let [web1, web2] = [web[0].addr, web[1].addr];
    let [api1, api2] = [api[0].addr, api[1].addr];
    let sy = start(&config([web1, web2], [api1, api2], None)).await;
    let admin = sy.app.admin_addr();
    let public = sy.addr("public");

    // The files: their types, no caching, same-origin only.
    let mut http = HttpClient::connect(admin).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let (status, headers, _) = http.get(path, None).await.expect("admin answers");
        assert_eq!(status, StatusCode::OK, "{path}");
        let header = |name: &str| headers[name].to_str().unwrap_or_default().to_string();
        assert!(header("content-type").starts_with(kind), "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert!(header("content-security-policy").contains("connect-src 'self'"));
    }

    let driver = Driver::start().await;
    let browser = driver.browser(1280, 900).await;
    browser.open(&format!("http://{admin}/")).await;
    browser
        .client
        .execute("window.__pageLoadMarker = 42; return true", Vec::new())
        .await
        .expect("mark the page");

    // Every listener, backend and endpoint, each with its state.
    let page = browser
        .wait_for("the first status", |p| p["polls"].as_u64() >= Some(2))
        .await;
    assert!(page["updated"].as_str().unwrap().starts_with("Updated "));
    assert_eq!(page["offline"], false);
    let listeners: Vec<&str> = page["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(listeners, ["public", "secure"]);
    let public_row = page["listeners"][0]["text"].as_str().unwrap();
    for shown in [
        "/api/",
        "static.shop.example/",
        "default",
        &public.to_string(),
    ] {
        assert!(public_row.contains(shown), "{shown} in {public_row}");
    }
    let secure_row = page["listeners"][1]["text"].as_str().unwrap();
    assert!(
        secure_row.contains("shop.example, www.shop.example") && secure_row.contains("(59 days)"),
        "{secure_row}"
    );
    for (name, addrs) in [("web", [web1, web2]), ("api", [api1, api2])] {
        assert_eq!(state_of(&page, name).as_deref(), Some("up"), "{name}");
        for addr in addrs {
            let e = endpoint_of(&page, name, addr).unwrap_or_else(|| panic!("{addr} shown"));
            assert_eq!(e["health"], "healthy");
            assert!(e["text"].as_str().unwrap().contains("healthy"));
            assert!(e["text"].as_str().unwrap().contains("static"), "origin");
        }
    }
    assert_eq!(state_of(&page, "static").as_deref(), Some("up"));
    assert_eq!(page["reloads"][0]["trigger"], "start");

    // Requests show as counts and as a rate.
    for i in 0..30 {
        let path = if i % 3 == 0 { "/api/items" } else { "/" };
        assert_eq!(get(public, path, None).await.0, StatusCode::OK);
    }
    let page = browser
        .wait_for("request counts and a rate", |p| {
            requests_of(p, "web") >= 20
                && requests_of(p, "api") >= 10
                && endpoint_of(p, "web", web1).is_some_and(|e| e["rps"].as_f64() > Some(0.0))
        })
        .await;
    let row = endpoint_of(&page, "web", web1).unwrap();
    assert!(
        row["text"]
            .as_str()
            .unwrap()
            .contains(&row["requests"].to_string()),
        "{row}"
    );

    // One checked server dies: its health checks fail, the backend degrades.
    let [web_1, web_2] = web;
    drop(web_1);
    browser
        .wait_for("web-1 unhealthy and web degraded", |p| {
            health_of(p, "web", web1).as_deref() == Some("unhealthy")
                && health_of(p, "web", web2).as_deref() == Some("healthy")
                && state_of(p, "web").as_deref() == Some("degraded")
        })
        .await;

    // An unchecked server dies: failed connects eject it.
    let [api_1, api_2] = api;
    drop(api_1);
    eventually("api-1 ejected", SHOWS_WITHIN, || async {
        get(public, "/api/items", None).await;
        // `api` sorts first among the backends.
        endpoint(&sy.status().await, api1)["ejected"] == true
    })
    .await;
    let page = browser
        .wait_for("api-1 ejected with its failures", |p| {
            health_of(p, "api", api1).as_deref() == Some("ejected")
                && state_of(p, "api").as_deref() == Some("degraded")
                && endpoint_of(p, "api", api1).is_some_and(|e| e["failures"].as_u64() >= Some(3))
        })
        .await;
    let ejected = endpoint_of(&page, "api", api1).unwrap()["text"]
        .as_str()
        .unwrap();
    assert!(ejected.contains("connect failures until"), "{ejected}");

    // Every server of a backend dies: it is down, not "success".
    drop(web_2);
    browser
        .wait_for("web down", |p| {
            state_of(p, "web").as_deref() == Some("down")
                && health_of(p, "web", web2).as_deref() == Some("unhealthy")
        })
        .await;

    // A reload adds a backend: it appears, and so does the reload.
    let search = [
        Backend::start("search-1").await,
        Backend::start("search-2").await,
    ];
    sy.write_config(&config(
        [web1, web2],
        [api1, api2],
        Some([search[0].addr, search[1].addr]),
    ));
    let (status, body) = sy.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = browser
        .wait_for("the search backend and the reload", |p| {
            state_of(p, "search").as_deref() == Some("up")
                && p["reloads"][0]["trigger"] == "admin"
                && p["reloads"][0]["result"] == "success"
        })
        .await;
    let reload = page["reloads"][0]["text"].as_str().unwrap();
    assert!(reload.contains("+search"), "{reload}");
    for addr in [search[0].addr, search[1].addr] {
        assert_eq!(health_of(&page, "search", addr).as_deref(), Some("healthy"));
    }
    assert!(
        page["listeners"][0]["text"]
            .as_str()
            .unwrap()
            .contains("/search/")
    );

    // All of it without loading the page again, and without an error.
    assert_eq!(page["marker"], true, "the page was reloaded");
    assert_eq!(page["offline"], false);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // Healthy (search, static), degraded (api) and down (web) at once.
    let mut shots = vec![artifacts().join("status-page.png")];
    if std::env::var_os("SWITCHYARD_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        shots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png"));
    }
    browser.full_page_screenshot(1280, &shots).await;
    browser.close().await;
    drop(driver);
    drop(api_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_sized_window_everything_shows_without_sideways_scrolling() {
    let web = [Backend::start("web-1").await, Backend::start("web-2").await];
    let api = [Backend::start("api-1").await, Backend::start("api-2").await];
    let web_addrs = [web[0].addr, web[1].addr];
    let api_addrs = [api[0].addr, api[1].addr];
    let sy = start(&config(web_addrs, api_addrs, None)).await;

    let driver = Driver::start().await;
    let browser = driver.phone(375, 812).await;
    browser
        .open(&format!("http://{}/ui", sy.app.admin_addr()))
        .await;
    let page = browser
        .wait_for("every backend and endpoint", |p| {
            p["polls"].as_u64() >= Some(1)
                && web_addrs
                    .iter()
                    .all(|a| health_of(p, "web", *a).as_deref() == Some("healthy"))
                && api_addrs
                    .iter()
                    .all(|a| health_of(p, "api", *a).as_deref() == Some("healthy"))
        })
        .await;
    assert_eq!(page["listeners"].as_array().map(Vec::len), Some(2));
    assert!(page["inner_width"].as_u64() <= Some(400), "{page}");
    assert_eq!(page["cell_display"], "grid", "the narrow layout applies");
    assert!(
        page["scroll_width"].as_u64() <= page["inner_width"].as_u64(),
        "the page scrolls sideways: {page}"
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser
        .screenshot(&[artifacts().join("status-page-phone.png")])
        .await;
    browser
        .client
        .execute(
            "document.getElementById('h-backends').scrollIntoView(); return true",
            Vec::new(),
        )
        .await
        .expect("scroll to the backends");
    browser
        .screenshot(&[artifacts().join("status-page-phone-backends.png")])
        .await;

    // /status out of reach: a banner says so, and goes once it answers.
    browser
        .client
        .execute(
            "window.__realFetch = window.fetch; \
             window.fetch = () => Promise.reject(new Error('unreachable in this test')); \
             return true",
            Vec::new(),
        )
        .await
        .expect("cut /status off");
    let page = browser
        .wait_for("the connection-lost banner", |p| p["offline"] == true)
        .await;
    assert!(
        page["offline_text"]
            .as_str()
            .unwrap()
            .contains("unreachable in this test"),
        "{page}"
    );
    assert!(
        page["updated"]
            .as_str()
            .unwrap()
            .starts_with("Last updated ")
    );
    let polls = page["polls"].as_u64().unwrap();
    browser
        .client
        .execute("window.fetch = window.__realFetch; return true", Vec::new())
        .await
        .expect("restore /status");
    browser
        .wait_for("the banner gone", |p| {
            p["offline"] == false && p["polls"].as_u64() > Some(polls)
        })
        .await;
    // The check above can see an error: one made on purpose shows.
    browser
        .client
        .execute(
            "console.error('probe from the test'); return true",
            Vec::new(),
        )
        .await
        .expect("console.error runs");
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("probe from the test"))),
        "the browser log misses a console.error: {errors:#?}"
    );
    browser.close().await;
}
