//! Templates: rendering from the kv directory and from Consul KV and
//! health, dependency tracking, quiescence, commands, config includes of
//! rendered files, errors, and `switchyard render --once`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use support::consul::{ConsulServer, ServiceInstance};
use support::{Load, Switchyard, eventually, get};
use switchyard::app::AppOptions;
use switchyard::control::ReloadResult;

const WAIT: Duration = Duration::from_secs(10);

/// A file of the repository's `templates/` directory.
fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("templates")
        .join(name)
        .display()
        .to_string()
}

/// Writes `text` at `dir/rel` as tools should: a temporary file renamed
/// over the old one, so no reader sees half a file.
fn put(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn read(dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(rel)).ok()
}

/// A temp directory with an empty `kv/`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("kv")).unwrap();
    dir
}

/// One HTTP listener `web` (default backend `fallback`) and three
/// responders whose body is their name; `top` goes first.
fn responders(top: &str) -> String {
    let mut config = format!(
        "{top}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"fallback\"\n"
    );
    for name in ["fallback", "a", "b"] {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"{name}\"\nrespond = {{ status = 200, body = \"{name}\" }}\n"
        ));
    }
    config
}

/// The shipped routes template rendered into `out/routes.toml` and
/// included; `source` is `[kv] dir = "kv"` or a `[consul]` section.
fn routes_config(source: &str) -> String {
    responders(&format!(
        "include = [\"out/routes.toml\"]\n{source}\n\
         [[templates]]\nsource = \"{}\"\ndestination = \"out/routes.toml\"\n",
        shipped("routes.toml.tera")
    ))
}

fn consul_section(consul: &ConsulServer) -> String {
    format!(
        "[consul]\naddress = \"{}\"\nwait = \"2s\"\nretry_min = \"50ms\"\nretry_max = \"400ms\"\n",
        consul.url()
    )
}

async fn body(addr: SocketAddr, path: &str) -> String {
    let (status, body) = get(addr, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn routed_to(sy: &Switchyard, path: &str, backend: &str) {
    let addr = sy.addr("web");
    eventually(&format!("{path} routed to {backend}"), WAIT, || async {
        body(addr, path).await == backend
    })
    .await;
}

fn template_status(status: &serde_json::Value, index: usize) -> serde_json::Value {
    status["templates"][index].clone()
}

fn route(prefix: &str, backend: &str) -> String {
    format!("path_prefix = \"{prefix}\"\nbackend = \"{backend}\"\n")
}

#[tokio::test]
async fn kv_directory_changes_rerender_and_reroute_without_a_failed_request() {
    let dir = workdir();
    let kv = dir.path().join("kv");
    put(&kv, "switchyard/routes/api", &route("/api/", "a"));
    let sy = Switchyard::start_in(dir, &routes_config("[kv]\ndir = \"kv\"\n")).await;
    // Rendered before the first table: routed from the first request.
    assert_eq!(body(sy.addr("web"), "/api/x").await, "a");
    let version = sy.status().await["version"].as_u64().unwrap();

    let load = Load::start(sy.addr("web"), 4);
    for (i, backend) in ["b", "a", "b", "a", "b"].iter().enumerate() {
        put(&kv, "switchyard/routes/api", &route("/api/", backend));
        routed_to(&sy, "/api/x", backend).await;
        assert_eq!(
            sy.status().await["version"].as_u64().unwrap(),
            version + i as u64 + 1,
            "one swap per change"
        );
    }
    // A new key is a new route; a deleted key takes it away.
    put(&kv, "switchyard/routes/extra", &route("/extra/", "a"));
    routed_to(&sy, "/extra/1", "a").await;
    std::fs::remove_file(kv.join("switchyard/routes/extra")).unwrap();
    routed_to(&sy, "/extra/1", "fallback").await;
    // A value that makes the rendered file invalid: rejected whole, named
    // by file and line, the running routes stay.
    put(
        &kv,
        "switchyard/routes/broken",
        "path_prefix = \"/broken/\"\nbackend = \"nope\"\n",
    );
    eventually("the rejected render in /status", WAIT, || async {
        sy.status().await["last_failure"]["trigger"] == "template"
    })
    .await;
    let failure = sy.status().await["last_failure"].clone();
    let error = failure["errors"][0].as_str().unwrap();
    assert!(
        error.contains("out/routes.toml") && error.contains("no backend named `nope`"),
        "{error}"
    );
    assert_eq!(body(sy.addr("web"), "/api/x").await, "b");
    std::fs::remove_file(kv.join("switchyard/routes/broken")).unwrap();
    put(&kv, "switchyard/routes/api", &route("/api/", "a"));
    routed_to(&sy, "/api/x", "a").await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during swaps");

    // The file is written once the reload built from it is applied, just
    // after routing changed: wait for it.
    eventually("out/routes.toml holds the applied routes", WAIT, || async {
        read(sy.dir.path(), "out/routes.toml")
            .is_some_and(|r| r.contains("backend = \"a\"") && !r.contains("/extra/"))
    })
    .await;
    eventually("the template is rendered", WAIT, || async {
        template_status(&sy.status().await, 0)["state"] == "rendered"
    })
    .await;
    let status = sy.status().await;
    let t = template_status(&status, 0);
    assert_eq!(t["included"], true);
    assert_eq!(
        t["dependencies"],
        serde_json::json!([
            "kvdir:kv.list(switchyard/backends/)",
            "kvdir:kv.list(switchyard/routes/)"
        ])
    );
    assert_eq!(status["kv_dir"]["keys"], 1);
    assert_eq!(status["last_reload"]["trigger"], "template");
}

#[tokio::test]
async fn consul_kv_changes_rerender_and_reroute() {
    let consul = ConsulServer::start().await;
    consul.kv_put("switchyard/routes/api", route("/api/", "a"));
    let sy = Switchyard::start_in(workdir(), &routes_config(&consul_section(&consul))).await;
    assert_eq!(body(sy.addr("web"), "/api/x").await, "a");

    consul.kv_put("switchyard/routes/api", route("/api/", "b"));
    routed_to(&sy, "/api/x", "b").await;
    consul.kv_put(
        "switchyard/backends/c",
        "respond = { status = 200, body = \"c\" }",
    );
    consul.kv_put("switchyard/routes/c", route("/c/", "c"));
    routed_to(&sy, "/c/", "c").await;
    consul.kv_delete("switchyard/routes/api");
    routed_to(&sy, "/api/x", "fallback").await;

    let rendered = read(sy.dir.path(), "out/routes.toml").unwrap();
    assert!(rendered.contains("name = \"c\""), "{rendered}");
    let status = sy.status().await;
    let watches: Vec<&str> = status["watches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["watch"].as_str())
        .collect();
    assert!(
        watches.contains(&"kv.list(switchyard/routes/)"),
        "{watches:?}"
    );
    assert_eq!(
        template_status(&status, 0)["dependencies"],
        serde_json::json!([
            "kv.list(switchyard/backends/)",
            "kv.list(switchyard/routes/)"
        ])
    );
}

/// A template reading one key into `out/value.txt`.
fn value_template(dir: &Path, extra: &str) -> String {
    put(dir, "value.tera", "value={{ key(path=\"app/value\") }}\n");
    format!("[[templates]]\nsource = \"value.tera\"\ndestination = \"out/value.txt\"\n{extra}\n")
}

async fn held_until_the_key_exists(sy: &Switchyard, create: impl FnOnce()) {
    let t = template_status(&sy.status().await, 0);
    assert_eq!(t["state"], "held", "{t}");
    assert_eq!(
        t["waiting_for"],
        serde_json::json!(["key app/value (does not exist)"])
    );
    assert_eq!(read(sy.dir.path(), "out/value.txt"), None);
    create();
    eventually("the held template renders", WAIT, || async {
        read(sy.dir.path(), "out/value.txt").as_deref() == Some("value=here\n")
    })
    .await;
    // `/status` is published after the write finished.
    eventually("the template is rendered in /status", WAIT, || async {
        template_status(&sy.status().await, 0)["state"] == "rendered"
    })
    .await;
    let t = template_status(&sy.status().await, 0);
    assert_eq!(t["waiting_for"], serde_json::json!([]));
}

#[tokio::test]
async fn a_missing_key_holds_the_render_until_it_exists() {
    // kv directory
    let dir = workdir();
    let config = format!("[kv]\ndir = \"kv\"\n{}", value_template(dir.path(), ""));
    let kv = dir.path().join("kv");
    let sy = Switchyard::start_in(dir, &responders(&config)).await;
    held_until_the_key_exists(&sy, || put(&kv, "app/value", "here")).await;

    // Consul
    let consul = ConsulServer::start().await;
    let dir = workdir();
    let config = format!(
        "{}{}",
        consul_section(&consul),
        value_template(dir.path(), "")
    );
    let sy = Switchyard::start_in(dir, &responders(&config)).await;
    held_until_the_key_exists(&sy, || {
        consul.kv_put("app/value", "here");
    })
    .await;
}

fn renders(status: &serde_json::Value) -> u64 {
    template_status(status, 0)["renders"].as_u64().unwrap()
}

#[tokio::test]
async fn a_burst_renders_once_and_the_command_runs_once_per_changed_output() {
    let dir = workdir();
    put(dir.path(), "kv/app/value", "start");
    put(
        dir.path(),
        "value.tera",
        "{% set ignored = key_or_default(path=\"app/ignored\", default=\"\") %}value={{ key(path=\"app/value\") }}\n",
    );
    let log = dir.path().join("command.log");
    let config = format!(
        "[kv]\ndir = \"kv\"\n[[templates]]\nsource = \"value.tera\"\ndestination = \"out/value.txt\"\n\
         command = \"echo ran >> '{}'\"\nwait = {{ min = \"300ms\", max = \"30s\" }}\n",
        log.display()
    );
    let kv = dir.path().join("kv");
    let sy = Switchyard::start_in(dir, &responders(&config)).await;
    let commands = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    eventually("the first render's command", WAIT, || async {
        commands() == 1
    })
    .await;
    let before = renders(&sy.status().await);

    // 100 changes, each well inside wait.min of the previous one.
    for i in 0..100 {
        put(&kv, "app/value", &i.to_string());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually("the last value rendered", WAIT, || async {
        read(sy.dir.path(), "out/value.txt").as_deref() == Some("value=99\n")
    })
    .await;
    eventually("the command of the burst", WAIT, || async {
        commands() == 2
    })
    .await;
    let after_burst = renders(&sy.status().await);
    eprintln!(
        "renders for a burst of 100 changes: {}",
        after_burst - before
    );
    assert!(
        after_burst - before <= 2,
        "{} renders for one burst",
        after_burst - before
    );

    // A change the output does not show: rendered, not written, no command.
    put(&kv, "app/ignored", "x");
    eventually(
        "the render of a change that alters nothing",
        WAIT,
        || async { renders(&sy.status().await) == after_burst + 1 },
    )
    .await;
    let writes = template_status(&sy.status().await, 0)["writes"].clone();

    // Quiet for 5 × wait.min: no render, no command.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = sy.status().await;
    assert_eq!(renders(&status), after_burst + 1);
    assert_eq!(template_status(&status, 0)["writes"], writes);
    assert_eq!(commands(), 2);
    assert_eq!(
        template_status(&status, 0)["last_command"],
        "exited 0",
        "{status}"
    );
}

#[tokio::test]
async fn one_change_read_by_three_templates_swaps_the_table_once() {
    let dir = workdir();
    put(dir.path(), "kv/shared/backend", "a");
    let route_template = |prefix: &str| {
        format!(
            "[[routes]]\npath_prefix = \"{prefix}\"\nbackend = \"{{{{ key(path=\"shared/backend\") }}}}\"\n"
        )
    };
    put(dir.path(), "one.tera", &route_template("/one/"));
    put(dir.path(), "two.tera", &route_template("/two/"));
    put(
        dir.path(),
        "plain.tera",
        "{{ key(path=\"shared/backend\") }}\n",
    );
    let config = "include = [\"out/one.toml\", \"out/two.toml\"]\n[kv]\ndir = \"kv\"\n\
        [[templates]]\nsource = \"one.tera\"\ndestination = \"out/one.toml\"\n\
        [[templates]]\nsource = \"two.tera\"\ndestination = \"out/two.toml\"\n\
        [[templates]]\nsource = \"plain.tera\"\ndestination = \"out/plain.txt\"\n";
    let kv = dir.path().join("kv");
    let sy = Switchyard::start_in(dir, &responders(config)).await;
    let addr = sy.addr("web");
    assert_eq!(body(addr, "/one/").await, "a");
    assert_eq!(body(addr, "/two/").await, "a");
    let version = sy.status().await["version"].as_u64().unwrap();
    let reloads = sy
        .metric("switchyard_config_reloads_total{result=\"success\"}")
        .await
        .unwrap();

    put(&kv, "shared/backend", "b");
    eventually("all three outputs", WAIT, || async {
        read(sy.dir.path(), "out/plain.txt").as_deref() == Some("b\n")
    })
    .await;
    routed_to(&sy, "/one/", "b").await;
    routed_to(&sy, "/two/", "b").await;
    // Give a late second swap the chance to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sy.status().await["version"].as_u64().unwrap(), version + 1);
    assert_eq!(
        sy.metric("switchyard_config_reloads_total{result=\"success\"}")
            .await
            .unwrap(),
        reloads + 1.0
    );
}

#[tokio::test]
async fn template_errors_keep_the_previous_output_and_the_proxy_serving() {
    let dir = workdir();
    put(dir.path(), "kv/switchyard/routes/api", &route("/api/", "a"));
    let routes = std::fs::read_to_string(shipped("routes.toml.tera")).unwrap();
    put(dir.path(), "routes.tera", &routes);
    put(dir.path(), "kv/app/value", "1");
    let config = "include = [\"out/routes.toml\"]\n[kv]\ndir = \"kv\"\n\
        [[templates]]\nsource = \"routes.tera\"\ndestination = \"out/routes.toml\"\n\
        [[templates]]\nsource = \"strict.tera\"\ndestination = \"out/strict.txt\"\nerror_on_missing_key = true\n";
    put(
        dir.path(),
        "strict.tera",
        "first line\nvalue={{ key(path=\"app/value\") }}\n",
    );
    let root = dir.path().to_path_buf();
    let sy = Switchyard::try_start_in(dir, &responders(config), AppOptions::default())
        .await
        .expect("starts");
    let addr = sy.addr("web");
    assert_eq!(body(addr, "/api/").await, "a");
    let before = read(&root, "out/routes.toml").unwrap();

    // A syntax error in a source: the reload is refused, naming the line.
    put(&root, "routes.tera", "ok\n{% for r in %}\n");
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Failure);
    assert!(
        record.errors[0].starts_with("template routes.tera: line 2: "),
        "{:?}",
        record.errors
    );
    assert_eq!(read(&root, "out/routes.toml").unwrap(), before);
    assert_eq!(body(addr, "/api/").await, "a");

    // A render error (a strict key removed): reported, previous output kept.
    std::fs::remove_file(root.join("kv/app/value")).unwrap();
    eventually("the render error in /status", WAIT, || async {
        template_status(&sy.status().await, 1)["state"] == "error"
    })
    .await;
    let t = template_status(&sy.status().await, 1);
    let error = t["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("template strict.tera: line 2: ") && error.contains("app/value"),
        "{error}"
    );
    assert_eq!(
        read(&root, "out/strict.txt").unwrap(),
        "first line\nvalue=1\n"
    );
    assert_eq!(body(addr, "/api/").await, "a");

    // Fixing the source (the config watcher sees template sources) renders.
    put(
        &root,
        "routes.tera",
        &routes.replace("# Rendered", "# Fixed, rendered"),
    );
    eventually("the fixed template renders", WAIT, || async {
        read(&root, "out/routes.toml").is_some_and(|r| r.contains("# Fixed"))
    })
    .await;
    assert_eq!(body(addr, "/api/").await, "a");

    // At start, a syntax error stops the start with the same message.
    let dir = workdir();
    put(dir.path(), "bad.tera", "{{ key(path= }}");
    let err = Switchyard::try_start_in(
        dir,
        &responders("[[templates]]\nsource = \"bad.tera\"\ndestination = \"out\"\n"),
        AppOptions::default(),
    )
    .await
    .err()
    .expect("start fails");
    assert!(err.contains("template bad.tera: line 1: "), "{err}");
}

/// The quickstart's shape in `dir`: the shipped routes template, copied to
/// `routes.tera` so a test can break it, rendered into the included
/// `out/routes.toml` from `kv/`; and a plain template listing the route
/// keys into `out/keys.txt`. Both read the same keys, so they render in one
/// batch: once `keys.txt` shows a change, the routes template has had its
/// turn at it. Returns the config and the routes template's source.
fn quickstart_shape(dir: &Path) -> (String, String) {
    let routes = std::fs::read_to_string(shipped("routes.toml.tera")).unwrap();
    put(dir, "routes.tera", &routes);
    put(
        dir,
        "keys.tera",
        "{% for r in ls(prefix=\"switchyard/routes/\") %}{{ r.key }}\n{% endfor %}",
    );
    put(dir, "kv/switchyard/routes/api", &route("/api/", "a"));
    let config = responders(
        "include = [\"out/routes.toml\"]\n[kv]\ndir = \"kv\"\n\
         [[templates]]\nsource = \"routes.tera\"\ndestination = \"out/routes.toml\"\n\
         [[templates]]\nsource = \"keys.tera\"\ndestination = \"out/keys.txt\"\n",
    );
    (config, routes)
}

/// Starts with the config and template sources watched, as `switchyard
/// run` does.
async fn start_watching_in(dir: tempfile::TempDir, config: &str) -> Switchyard {
    Switchyard::try_start_in(dir, config, AppOptions::default())
        .await
        .expect("starts")
}

/// What `/status` shows as `applied_digest` for `text`: FNV-1a 64.
fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{hash:016x}")
}

/// `out/routes.toml` shows `what`, and the text the running config was
/// built from (the routes template's `applied_digest`) is that file's.
async fn routes_file_applied(sy: &Switchyard, what: &str) -> bool {
    let Some(file) = read(sy.dir.path(), "out/routes.toml") else {
        return false;
    };
    let t = template_status(&sy.status().await, 0);
    file.contains(what) && t["applied_digest"] == digest(&file)
}

/// Issue 15: a kv change while the routes template's source is broken
/// must neither render it with the old source nor write a file the proxy
/// does not route by.
#[tokio::test]
async fn a_broken_template_source_renders_nothing_until_fixed() {
    let dir = workdir();
    let (config, routes) = quickstart_shape(dir.path());
    let sy = start_watching_in(dir, &config).await;
    let (root, addr) = (sy.dir.path().to_path_buf(), sy.addr("web"));
    assert_eq!(body(addr, "/api/x").await, "a");
    let before = read(&root, "out/routes.toml").unwrap();
    let load = Load::start(addr, 4);

    // The source breaks: the reload is rejected, naming template and line.
    put(&root, "routes.tera", "ok\n{% for r in %}\n");
    let (code, answer) = sy.admin_post("/reload").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(
        answer["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("template routes.tera: line 2: ")),
        "{answer}"
    );
    let renders_before = renders(&sy.status().await);

    // A key it reads changes: a new route.
    put(&root, "kv/switchyard/routes/new", &route("/new/", "b"));
    eventually("the batch that read the new key", WAIT, || async {
        read(&root, "out/keys.txt").is_some_and(|k| k.contains("new"))
    })
    .await;
    assert_eq!(
        read(&root, "out/routes.toml").unwrap(),
        before,
        "rendered with the old source and written"
    );
    assert_eq!(body(addr, "/new/x").await, "fallback");
    let status = sy.status().await;
    let t = template_status(&status, 0);
    assert_eq!(t["state"], "source_error", "{t}");
    assert!(
        t["source_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("template routes.tera: line 2: ")),
        "{t}"
    );
    let since = t["source_error_since"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(since).is_ok(), "{since}");
    assert_eq!(t["renders"], renders_before, "rendered with the old source");
    assert_eq!(t["applied_digest"], digest(&before));
    // The plain template, whose source is fine, went on rendering.
    assert_eq!(template_status(&status, 1)["state"], "rendered");

    // Fixed: the file-change reload applies the source, which renders
    // with the current data; file, included text and routing agree.
    put(
        &root,
        "routes.tera",
        &routes.replace("# Rendered", "# Fixed, rendered"),
    );
    routed_to(&sy, "/new/x", "b").await;
    eventually("the fixed render written and applied", WAIT, || async {
        routes_file_applied(&sy, "/new/").await
    })
    .await;
    let rendered = read(&root, "out/routes.toml").unwrap();
    assert!(rendered.contains("# Fixed"), "{rendered}");
    let t = template_status(&sy.status().await, 0);
    assert_eq!(t["state"], "rendered", "{t}");
    assert_eq!(t["source_error"], serde_json::Value::Null, "{t}");
    assert_eq!(body(addr, "/api/x").await, "a");
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

/// The same with the main config file broken: the template renders, its
/// reload is rejected, and its output is dropped rather than written.
#[tokio::test]
async fn a_rejected_reload_writes_no_included_output_until_the_config_is_fixed() {
    let dir = workdir();
    let (config, _) = quickstart_shape(dir.path());
    let sy = start_watching_in(dir, &config).await;
    let (root, addr) = (sy.dir.path().to_path_buf(), sy.addr("web"));
    let before = read(&root, "out/routes.toml").unwrap();
    let load = Load::start(addr, 4);

    sy.write_config(&format!("{config}\n[[listeners]\n"));
    let (code, answer) = sy.admin_post("/reload").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let renders_before = renders(&sy.status().await);

    put(&root, "kv/switchyard/routes/new", &route("/new/", "b"));
    eventually("the routes template renders the change", WAIT, || async {
        renders(&sy.status().await) > renders_before
    })
    .await;
    assert_eq!(
        read(&root, "out/routes.toml").unwrap(),
        before,
        "written though not applied"
    );
    assert_eq!(body(addr, "/new/x").await, "fallback");
    eventually("the rejected output in /status", WAIT, || async {
        template_status(&sy.status().await, 0)["state"] == "rejected"
    })
    .await;
    let status = sy.status().await;
    let t = template_status(&status, 0);
    assert!(
        t["last_error"].as_str().is_some_and(|e| {
            e.starts_with("not applied: config rejected: ") && e.contains("switchyard.toml")
        }),
        "{t}"
    );
    assert_eq!(t["applied_digest"], digest(&before));
    assert_eq!(read(&root, "out/routes.toml").unwrap(), before);
    assert_eq!(body(addr, "/new/x").await, "fallback");

    // Fixed: the reload that applies it renders the rejected template
    // again, and the change it missed is applied and written.
    sy.write_config(&config);
    routed_to(&sy, "/new/x", "b").await;
    eventually("the render written and applied", WAIT, || async {
        routes_file_applied(&sy, "/new/").await
    })
    .await;
    assert_eq!(template_status(&sy.status().await, 0)["state"], "rendered");
    // Converged: nothing left to retry, so no further reload.
    let settled = sy.status().await["last_reload"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sy.status().await["last_reload"], settled);
    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

fn render_command(config: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["render", "-c"])
        .arg(config)
        .arg("--once")
        .args(extra)
        .output()
        .expect("switchyard runs")
}

#[test]
fn render_once_dry_prints_and_writes_nothing() {
    let dir = workdir();
    put(dir.path(), "kv/app/value", "42");
    let marker = dir.path().join("command-ran");
    let template = value_template(
        dir.path(),
        &format!("command = \"touch '{}'\"", marker.display()),
    );
    put(
        dir.path(),
        "switchyard.toml",
        &format!("[kv]\ndir = \"kv\"\n{template}"),
    );
    let config = dir.path().join("switchyard.toml");
    let dest: PathBuf = dir.path().join("out/value.txt");

    let dry = render_command(&config, &["--dry"]);
    assert!(dry.status.success(), "{dry:?}");
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(stdout, format!("> {}\nvalue=42\n", dest.display()));
    assert!(!dest.exists() && !dir.path().join("out").exists());
    assert!(!marker.exists(), "--dry runs no command");

    let real = render_command(&config, &[]);
    assert!(real.status.success(), "{real:?}");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "value=42\n");
    assert!(marker.exists(), "the command runs after a changed output");

    // A key that never appears: non-zero exit naming what it waits for.
    put(dir.path(), "value.tera", "{{ key(path=\"app/never\") }}");
    let held = render_command(&config, &["--dry", "--timeout", "300ms"]);
    assert!(!held.status.success());
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert!(stderr.contains("waiting for: key app/never"), "{stderr}");
}

#[tokio::test]
async fn shipped_haproxy_and_nginx_templates_render_from_consul() {
    let consul = ConsulServer::start().await;
    for (id, port) in [("web-1", 9001), ("web-2", 9002)] {
        let mut i = ServiceInstance::on_loopback("web", id, port);
        i.tags = vec!["http".into()];
        consul.register(i);
    }
    let mut db = ServiceInstance::new("db", "db-1");
    db.port = 5432;
    consul.register(db);
    let dir = workdir();
    put(
        dir.path(),
        "switchyard.toml",
        &format!(
            "{}[[templates]]\nsource = \"{}\"\ndestination = \"haproxy.cfg\"\n\
             [[templates]]\nsource = \"{}\"\ndestination = \"upstreams.conf\"\n",
            consul_section(&consul),
            shipped("haproxy-backend.cfg.tera"),
            shipped("nginx-upstreams.conf.tera"),
        ),
    );
    let outputs = switchyard::template::once::render_once(
        &dir.path().join("switchyard.toml"),
        true,
        Duration::from_secs(10),
    )
    .await
    .expect("renders");
    let haproxy = &outputs[0].text;
    assert!(haproxy.contains("backend web\n"), "{haproxy}");
    assert!(
        haproxy.contains("server node-web-1_web-1 127.0.0.1:9001 check weight 1")
            && haproxy.contains("127.0.0.1:9002"),
        "{haproxy}"
    );
    let nginx = &outputs[1].text;
    assert!(
        nginx.contains("upstream web {\n    server 127.0.0.1:9001 weight=1;\n    server 127.0.0.1:9002 weight=1;\n}"),
        "{nginx}"
    );
    assert!(
        !nginx.contains("upstream db"),
        "untagged services are left out: {nginx}"
    );
}

#[tokio::test]
async fn a_failing_command_is_reported_and_nothing_else_changes() {
    let dir = workdir();
    put(dir.path(), "kv/app/value", "1");
    let config = format!(
        "[kv]\ndir = \"kv\"\n{}",
        value_template(
            dir.path(),
            "command = \"echo cannot reload >&2; exit 3\"\ncommand_timeout = \"5s\""
        )
    );
    let kv = dir.path().join("kv");
    let sy = Switchyard::start_in(dir, &responders(&config)).await;
    eventually("the command's failure in /status", WAIT, || async {
        template_status(&sy.status().await, 0)["last_command"]
            .as_str()
            .is_some_and(|c| c.contains("exit status: 3") && c.contains("cannot reload"))
    })
    .await;
    let failures = "switchyard_template_commands_total{result=\"failure\",template=\"value.tera\"}";
    assert_eq!(sy.metric(failures).await, Some(1.0));
    // Still rendering and serving.
    put(&kv, "app/value", "2");
    eventually("the next render", WAIT, || async {
        read(sy.dir.path(), "out/value.txt").as_deref() == Some("value=2\n")
    })
    .await;
    eventually("the second failure counted", WAIT, || async {
        sy.metric(failures).await == Some(2.0)
    })
    .await;
    assert_eq!(body(sy.addr("web"), "/").await, "fallback");
    assert_eq!(template_status(&sy.status().await, 0)["state"], "rendered");
}
