use std::io::Write;

use super::*;

/// Writes `files` (name, text) into a temp dir and loads the first.
fn load_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, ConfigErrors>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let mut f = std::fs::File::create(dir.path().join(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
    let result = load(&dir.path().join(files[0].0));
    (dir, result)
}

fn errors_of(text: &str) -> Vec<String> {
    let (_dir, result) = load_files(&[("main.toml", text)]);
    let errors = result.expect_err("config should be rejected");
    errors
        .0
        .iter()
        .map(|e| format!("`{}`: {}", e.key, e.problem))
        .collect()
}

/// One HTTP listener whose default backend is `app`.
const WEB_LISTENER: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_backend = "app"
"#;

const BASE: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;

#[test]
fn a_valid_file_gets_defaults() {
    let (_dir, result) = load_files(&[("main.toml", BASE)]);
    let c = result.unwrap();
    assert_eq!(c.admin_bind.to_string(), DEFAULT_ADMIN_BIND);
    assert_eq!(c.timeouts.client_idle, DEFAULT_CLIENT_IDLE_TIMEOUT);
    assert_eq!(c.listeners[0].mode, Mode::Http);
    let servers = c.backends[0].servers();
    assert_eq!((servers[0].weight, servers[1].weight), (1, 3));
    assert_eq!(c.backends[0].balance, Balance::RoundRobin);
    assert_eq!(c.backends[0].protocol, Protocol::Http1);
}

#[test]
fn syntax_errors_give_the_line() {
    let errors = errors_of("[[listeners]\nname = 1\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("syntax error"), "{errors:?}");
    assert!(errors[0].contains("line 1"), "{errors:?}");
}

#[test]
fn unknown_keys_give_their_path() {
    let errors = errors_of(&BASE.replace("default_backend", "defualt_backend"));
    assert!(
        errors[0].starts_with("`listeners[0].defualt_backend`"),
        "{errors:?}"
    );
    assert!(errors[0].contains("unknown field"), "{errors:?}");
    let errors = errors_of(&format!("{BASE}\n[timeouts]\nconect = \"1s\"\n"));
    assert!(errors[0].starts_with("`timeouts.conect`"), "{errors:?}");
}

#[test]
fn type_errors_give_their_path() {
    let errors = errors_of(&format!("{BASE}\n[timeouts]\nconnect = 5\n"));
    assert!(errors[0].starts_with("`timeouts.connect`"), "{errors:?}");
    let errors = errors_of(&BASE.replace("\"127.0.0.1:9001\"", "9001"));
    assert!(
        errors[0].starts_with("`backends[0].servers[0]`"),
        "{errors:?}"
    );
    assert!(errors[0].contains("ip:port"), "{errors:?}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_backend = "missing"

[[listeners]]
name = "web2"
bind = "127.0.0.1:8080"

[[listeners]]
name = "raw"
bind = "not an address"
mode = "tcp"

[[routes]]
listener = "web"
host = "*.bad*.com"
path_prefix = "api"
backend = "nope"

[[routes]]
listener = "raw"
backend = "app"

[[backends]]
name = "app"
hash_header = "x-user"
servers = ["127.0.0.1:9001", "127.0.0.1:9001", "web internal:80", { address = "127.0.0.1:1", weight = 0 }]

[[backends]]
name = "app"
respond = { status = 200 }

[[backends]]
name = "empty"
"#;
    let errors = errors_of(text).join("\n");
    for expected in [
        "`listeners[0].default_backend`: no backend named `missing`",
        "`listeners[1].bind`: 127.0.0.1:8080 is already bound by",
        "`listeners[2].bind`: \"not an address\" is not a bind address",
        "`listeners[2].default_backend`: a tcp listener needs",
        "`routes[0].host`",
        "`routes[0].path_prefix`: must start with `/`",
        "`routes[0].backend`: no backend named `nope`",
        "`routes[1].listener`: listener `raw` is a tcp listener",
        "`backends[0].hash_header`: only used with balance = \"hash\"",
        "`backends[0].servers[1]`: 127.0.0.1:9001 is listed twice",
        "`backends[0].servers[2]`: \"web internal:80\": a host name has only letters",
        "`backends[0].servers[3].weight`: must be between 1 and 256",
        "`backends[1].name`: backend `app` is already defined",
        "`backends[2]`: set one of `servers`",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn routes_need_a_listener_when_there_are_several() {
    let text = format!(
        "{BASE}\n[[listeners]]\nname = \"other\"\nbind = \"127.0.0.1:8081\"\n\n[[routes]]\nbackend = \"app\"\n"
    );
    let errors = errors_of(&text);
    assert_eq!(
        errors,
        vec!["`routes[0].listener`: required: there is more than one http listener"]
    );
}

#[test]
fn includes_append_and_errors_name_the_included_file() {
    let main = format!("include = [\"routes.toml\"]\n{BASE}");
    let routes = r#"
[[routes]]
host = "API.example.com"
backend = "api"

[[backends]]
name = "api"
respond = { body = "hi" }
"#;
    let (_dir, result) = load_files(&[("main.toml", &main), ("routes.toml", routes)]);
    let c = result.unwrap();
    assert_eq!(c.files.len(), 2);
    assert_eq!(
        c.routes[0].host,
        HostPattern::Exact("api.example.com".into())
    );
    assert_eq!(c.routes[0].listener.as_ref(), "web");

    let bad = "[[routes]]\nbackend = \"nope\"\n";
    let (_dir, result) = load_files(&[("main.toml", &main), ("routes.toml", bad)]);
    let e = result.unwrap_err();
    assert!(e.0[0].file.ends_with("routes.toml"), "{e}");
    assert_eq!(e.0[0].key, "routes[0].backend");

    let (_dir, result) = load_files(&[("main.toml", &main)]);
    let e = result.unwrap_err().to_string();
    assert!(
        e.contains("routes.toml") && e.contains("cannot read file"),
        "{e}"
    );

    let nested = "[admin]\nbind = \"127.0.0.1:1\"\n";
    let (_dir, result) = load_files(&[("main.toml", &main), ("routes.toml", nested)]);
    let e = result.unwrap_err();
    assert!(
        e.0[0].file.ends_with("routes.toml") && e.0[0].key == "admin",
        "{e}"
    );
}

#[test]
fn an_item_defined_twice_across_files_names_both() {
    let main = format!("include = [\"more.toml\"]\n{BASE}");
    let more = "[[backends]]\nname = \"app\"\nrespond = {}\n";
    let (_dir, result) = load_files(&[("main.toml", &main), ("more.toml", more)]);
    let e = result.unwrap_err().to_string();
    assert!(e.contains("more.toml: `backends[0].name`"), "{e}");
    assert!(e.contains("main.toml `backends[0]`"), "{e}");
}

#[test]
fn servers_may_be_addresses_host_names_or_srv_names() {
    let text = [
        r#"
[resolver]
nameservers = ["127.0.0.1:8600", "10.0.0.2"]
min_ttl = "2s"
hold_nx = "5s"
"#,
        WEB_LISTENER,
        r#"
[[backends]]
name = "app"
servers = [
    "[::1]:9000",
    "Web.Internal:8080",
    "_web._tcp.service.consul",
    { address = "tasks.web:80", weight = 2, required = true },
]
"#,
    ]
    .concat();
    let (_dir, result) = load_files(&[("main.toml", &text)]);
    let c = result.expect("valid");
    let targets: Vec<String> = c.backends[0]
        .servers()
        .iter()
        .map(|s| s.target.to_string())
        .collect();
    assert_eq!(
        targets,
        [
            "[::1]:9000",
            "web.internal:8080",
            "_web._tcp.service.consul",
            "tasks.web:80"
        ]
    );
    assert!(matches!(
        c.backends[0].servers()[2].target,
        ServerTarget::Srv { .. }
    ));
    let last = &c.backends[0].servers()[3];
    assert!(last.required && last.weight == 2);
    assert_eq!(
        c.resolver.nameservers,
        Some(vec![
            "127.0.0.1:8600".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap()
        ])
    );
    assert_eq!(c.resolver.min_ttl, Duration::from_secs(2));
    assert_eq!(c.resolver.hold_nx, Duration::from_secs(5));
    assert_eq!(c.resolver.hold_valid, DEFAULT_HOLD_VALID);
}

#[test]
fn bad_server_names_and_resolver_settings_are_reported() {
    let text = [
        r#"
[resolver]
nameservers = ["dns.example.com"]
min_ttl = "10s"
max_ttl = "1s"
attempts = 0
"#,
        WEB_LISTENER,
        r#"
[[backends]]
name = "app"
servers = [
    "web.internal",
    "web..internal:80",
    "web.internal:http",
    { address = "127.0.0.1:80", required = true },
    "web.internal:80",
    "WEB.internal:80",
]
"#,
    ]
    .concat();
    let errors = errors_of(&text).join("\n");
    for expected in [
        "`resolver.nameservers[0]`: \"dns.example.com\" is not a nameserver address",
        "`resolver.max_ttl`: must not be less than `min_ttl`",
        "`resolver.attempts`: must be between 1 and 10",
        "`backends[0].servers[0]`: \"web.internal\" has no port",
        "`backends[0].servers[1]`: \"web..internal:80\": each part of a host name",
        "`backends[0].servers[2]`: \"web.internal:http\": bad port",
        "`backends[0].servers[3].required`: only a host name or SRV name",
        "`backends[0].servers[5]`: web.internal:80 is listed twice",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn consul_backends_and_settings() {
    let text = [
        r#"
[consul]
address = "https://consul.internal:8501"
token_file = "secrets/token"
stale = true
wait = "30s"
state_file = "state/consul.json"
"#,
        WEB_LISTENER,
        r#"
[[backends]]
name = "app"
consul_service = "api"
consul_tag = "v2"
"#,
    ]
    .concat();
    let (dir, result) = load_files(&[("main.toml", &text)]);
    let c = result.expect("valid");
    let consul = c.consul.expect("consul section");
    assert_eq!(consul.address, "https://consul.internal:8501");
    assert_eq!(consul.token_file, Some(dir.path().join("secrets/token")));
    assert_eq!(
        consul.state_file,
        Some(dir.path().join("state/consul.json"))
    );
    assert!(consul.stale);
    assert_eq!(consul.wait, Duration::from_secs(30));
    assert_eq!(consul.retry_min, DEFAULT_CONSUL_RETRY_MIN);
    let BackendTarget::Consul(target) = &c.backends[0].target else {
        panic!("a consul backend");
    };
    assert_eq!(
        (&*target.service, target.tag.as_deref()),
        ("api", Some("v2"))
    );

    let bad = [
        r#"
[consul]
address = "consul:8500/v1"
wait = "20m"
"#,
        WEB_LISTENER,
        r#"
[[backends]]
name = "app"
consul_service = "api service"
servers = ["127.0.0.1:80"]

[[backends]]
name = "other"
servers = ["127.0.0.1:81"]
consul_tag = "v2"
"#,
    ]
    .concat();
    let errors = errors_of(&bad).join("\n");
    for expected in [
        "`consul.address`: \"http://consul:8500/v1\" is not a Consul address",
        "`consul.wait`: must be between 1ms and 10m",
        "`backends[0]`: set only one of `servers`, `respond`, `consul_service` and `mdns_service`",
        "`backends[1].consul_tag`: only used with `consul_service`",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn consul_fleet_settings_defaults_and_bounds() {
    let consul_only = |section: &str| {
        [
            section,
            WEB_LISTENER,
            "[[backends]]\nname = \"app\"\nconsul_service = \"api\"\n",
        ]
        .concat()
    };
    let (_dir, result) = load_files(&[("main.toml", &consul_only("[consul]\n"))]);
    let consul = result.expect("valid").consul.expect("consul section");
    assert!(consul.stale, "stale reads by default, as consul-template");
    assert_eq!(consul.max_stale, DEFAULT_CONSUL_MAX_STALE);
    assert!(!consul.cached);
    assert_eq!(consul.change_jitter, Duration::ZERO, "off unless asked for");
    assert_eq!(consul.empty_confirm_wait, DEFAULT_CONSUL_EMPTY_CONFIRM_WAIT);

    let set = "[consul]\nstale = false\nmax_stale = \"0s\"\ncached = true\n\
               change_jitter = \"500ms\"\nempty_confirm_wait = \"5s\"\n";
    let (_dir, result) = load_files(&[("main.toml", &consul_only(set))]);
    let consul = result.expect("valid").consul.expect("consul section");
    assert!(!consul.stale && consul.cached);
    assert_eq!(consul.max_stale, Duration::ZERO);
    assert_eq!(consul.change_jitter, Duration::from_millis(500));
    assert_eq!(consul.empty_confirm_wait, Duration::from_secs(5));

    let bad = consul_only(
        "[consul]\nwait = \"1s\"\nchange_jitter = \"2s\"\nempty_confirm_wait = \"0s\"\n",
    );
    let errors = errors_of(&bad).join("\n");
    for expected in [
        "`consul.change_jitter`: must not exceed `wait`",
        "`consul.empty_confirm_wait`: must be between 1ms and 10m",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn templates_and_the_kv_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("kv")).unwrap();
    let main = format!(
        r#"include = ["out/routes.toml"]
[kv]
dir = "kv"

[[templates]]
source = "routes.tera"
destination = "out/routes.toml"
perms = "0600"
command = "true"
wait = {{ min = "2s" }}

[[templates]]
source = "/abs/other.tera"
destination = "/tmp/other.conf"
perms = 0o640
backup = true
error_on_missing_key = true
command_timeout = "5s"
{BASE}"#
    );
    std::fs::write(dir.path().join("main.toml"), main).unwrap();
    // The rendered include does not exist on disk: it counts as empty.
    let c = load(&dir.path().join("main.toml")).unwrap();
    assert_eq!(c.kv.as_ref().unwrap().dir, dir.path().join("kv"));
    let (a, b) = (&c.templates[0], &c.templates[1]);
    assert_eq!(&*a.name, "routes.tera");
    assert_eq!(a.source, dir.path().join("routes.tera"));
    assert_eq!(a.destination, dir.path().join("out/routes.toml"));
    assert!(a.included && !b.included);
    assert_eq!((a.perms, b.perms), (0o600, 0o640));
    assert_eq!(
        a.wait,
        Some(Wait {
            min: Duration::from_secs(2),
            max: Duration::from_secs(8)
        })
    );
    assert_eq!(a.command_timeout, DEFAULT_COMMAND_TIMEOUT);
    assert_eq!(b.command_timeout, Duration::from_secs(5));
    assert!(b.backup && b.error_on_missing_key && b.wait.is_none());
    // Templates need Consul's defaults for service() and, with no kv dir, key().
    assert!(c.consul.is_some());
    // Sources are watched; the rendered include is not (it is applied in
    // process after each render).
    assert!(c.files.contains(&dir.path().join("routes.tera")));
    assert!(!c.files.contains(&dir.path().join("out/routes.toml")));

    // The render's text is what the include holds.
    let rendered: Arc<str> = "[[routes]]\npath_prefix = \"/r/\"\nbackend = \"app\"\n".into();
    let c = load_with(&dir.path().join("main.toml"), &|p| {
        (p == dir.path().join("out/routes.toml")).then(|| rendered.clone())
    })
    .unwrap();
    assert_eq!(c.routes[0].path_prefix, "/r/");
}

#[test]
fn bad_template_settings_are_reported() {
    let errors = errors_of(&format!(
        r#"[kv]
dir = "no/such/dir"
[[templates]]
source = ""
destination = "a"
perms = "999"
wait = {{ min = "2s", max = "1s" }}
command = " "
command_timeout = "0s"
[[templates]]
source = "b"
destination = "a"
{BASE}"#
    ));
    let expect = [
        "`kv.dir`: ",
        "`templates[0].source`: must not be empty",
        "`templates[0].perms`: expected a file mode",
        "`templates[0].wait.max`: must not be less than `wait.min`",
        "`templates[0].command_timeout`: must be greater than zero",
        "`templates[0].command`: must not be empty",
        "`templates[1].destination`: ",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "{e} in {errors:#?}"
        );
    }
}

#[test]
fn health_checks_outlier_retries_and_limits() {
    let text = r#"[limits]
max_header_bytes = 16384
max_body_bytes = 1000

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_backend = "app"
max_connections = 10
queue_timeout = "250ms"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
health_check = { type = "http", path = "/healthz", expect_status = "200", interval = "5s", rise = 1, fall = 2 }
fail_open = true
outlier = { consecutive_failures = 3 }
retries = 1
retry_on = ["connect", "reset"]
retry_budget = { percent = 50 }
max_connections_per_server = 7
"#;
    let (_dir, result) = load_files(&[("main.toml", text)]);
    let c = result.unwrap();
    assert_eq!(c.limits.max_header_bytes, 16384);
    assert_eq!(c.limits.max_body_bytes, Some(1000));
    assert_eq!(c.listeners[0].queue_timeout, Duration::from_millis(250));
    let b = &c.backends[0];
    let h = b.health_check.as_ref().unwrap();
    assert_eq!(
        h.kind,
        CheckKind::Http {
            path: "/healthz".into(),
            host: None,
            expect: (200, 200)
        }
    );
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(5), DEFAULT_CHECK_TIMEOUT, 1, 2)
    );
    assert_eq!(h.jitter, Duration::from_millis(500));
    assert!(b.fail_open);
    let o = b.outlier;
    assert_eq!(o.consecutive_failures, 3);
    assert_eq!(
        o.consecutive_connect_failures,
        DEFAULT_CONSECUTIVE_CONNECT_FAILURES
    );
    assert_eq!(o.base_ejection, DEFAULT_BASE_EJECTION);
    assert_eq!(b.retry.retries, 1);
    assert!(b.retry.on_reset);
    assert_eq!(b.retry.budget_percent, 50);
    assert_eq!(b.retry.budget_min_per_second, DEFAULT_RETRY_MIN_PER_SECOND);
    assert_eq!(b.max_connections_per_server, Some(7));

    // Defaults: no checks, ejection after connect failures only, two
    // retries on connect failures.
    let (_dir, result) = load_files(&[("main.toml", BASE)]);
    let c = result.unwrap();
    let b = &c.backends[0];
    assert!(b.health_check.is_none() && !b.fail_open);
    assert_eq!(b.outlier, OutlierSpec::default());
    assert_eq!(b.outlier.consecutive_failures, 0);
    assert_eq!(b.outlier.consecutive_connect_failures, 3);
    assert_eq!(b.retry, RetrySpec::default());
    assert_eq!(c.limits, Limits::default());
}

#[test]
fn bad_health_and_limit_settings_are_reported() {
    let errors = errors_of(
        r#"[limits]
max_header_bytes = 100

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
default_backend = "app"
queue_timeout = "1s"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
health_check = { type = "tcp", path = "/x", rise = 0 }
outlier = { consecutive_failures = 0, base_ejection = "10s", max_ejection = "1s", max_ejected_percent = 101 }
retries = 11
retry_on = ["timeout"]
max_connections_per_server = 0

[[backends]]
name = "web2"
servers = ["127.0.0.1:9002"]
health_check = { type = "http", path = "nope", expect_status = "999" }
"#,
    );
    let expect = [
        "`limits.max_header_bytes`: must be at least 8192",
        "`listeners[0].queue_timeout`: only used with `max_connections`",
        "`backends[0].health_check.path`: only used with type = \"http\"",
        "`backends[0].health_check`: `rise` and `fall` must be at least 1",
        "`backends[0].outlier.max_ejection`: must not be less than `base_ejection`",
        "`backends[0].outlier.max_ejected_percent`: must be between 0 and 100",
        "`backends[0].retries`: must be between 0 and 10",
        "`backends[0].retry_on[0]`: \"timeout\": expected \"connect\" or \"reset\"",
        "`backends[0].max_connections_per_server`: must be at least 1",
        "`backends[1].health_check.path`: \"nope\" is not a path",
        "`backends[1].health_check.expect_status`: expected a status",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "{e} in {errors:#?}"
        );
    }
}

#[test]
fn registrations_gateway_routes_and_tag_routes() {
    let text = r#"
[[register]]
name = "users"
port = 8081
tags = ["v1"]
check = { type = "ttl", ttl = "9s", path = "/health" }

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
consul_tag_routes = true

[[routes]]
path_prefix = "/api/"
service_from = "path"
strip_service = true

[[routes]]
service_from = "host"
domain = "svc.local"
idle_timeout = "1m"
"#;
    let (_dir, result) = load_files(&[("main.toml", text)]);
    let c = result.unwrap();
    let r = &c.register[0];
    assert!(
        r.id.starts_with("users-") && r.id.ends_with("-8081"),
        "{}",
        r.id
    );
    assert_eq!(r.interval, Duration::from_secs(30));
    let check = r.check.as_ref().unwrap();
    assert_eq!(
        check.kind,
        RegisterCheckKind::Ttl {
            ttl: Duration::from_secs(9),
            path: Some("/health".into())
        }
    );
    assert_eq!(check.interval, Duration::from_secs(3));
    assert_eq!(r.local_addr().to_string(), "127.0.0.1:8081");
    assert!(c.listeners[0].consul_tag_routes);
    assert!(
        c.consul.is_some(),
        "registration and gateway routes need Consul"
    );
    assert_eq!(c.routes[1].host, HostPattern::Suffix(".svc.local".into()));
    let gateways: Vec<&GatewaySpec> = c
        .backends
        .iter()
        .filter_map(|b| match &b.target {
            BackendTarget::Gateway(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(gateways.len(), 2);
    assert!(gateways[0].strip_service && gateways[0].from == ServiceFrom::Path);
    assert_eq!(gateways[1].idle_timeout, Duration::from_secs(60));
}

/// Gateway routes look names up in one registry: Consul when the file
/// has `[consul]` (or neither section), mDNS only with `[mdns]` and no
/// `[consul]` (README, "Gateway routes by service name").
#[test]
fn gateway_routes_use_mdns_only_without_consul() {
    let route = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"

[[routes]]
service_from = "path"
"#;
    for (sections, by_mdns, consul) in [
        ("", false, true),
        ("[consul]\n", false, true),
        ("[mdns]\n", true, false),
        ("[mdns]\n[consul]\n", false, true),
    ] {
        let (_dir, result) = load_files(&[("main.toml", &format!("{sections}{route}"))]);
        let c = result.unwrap();
        let gateway = c
            .backends
            .iter()
            .find_map(|b| match &b.target {
                BackendTarget::Gateway(g) => Some(g),
                _ => None,
            })
            .unwrap();
        assert_eq!(gateway.mdns, by_mdns, "{sections:?}");
        assert_eq!(c.consul.is_some(), consul, "{sections:?}");
    }
}

#[test]
fn bad_registrations_and_gateway_routes_are_reported() {
    let errors = errors_of(
        r#"
[[register]]
name = ""
port = 0
address = "0.0.0.0"
meta = { "consul-x" = "1" }
check = { type = "http", path = "health", ttl = "5s" }

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"

[[routes]]
service_from = "host"

[[routes]]
path_prefix = "/x/"
backend = "nope"
service_from = "path"

[[routes]]
path_prefix = "/y/"
"#,
    );
    let expect = [
        "`register[0].name`: must be a service name",
        "`register[0].port`: must be a port number",
        "`register[0].address`: must be an address others can reach",
        "`register[0].meta`: \"consul-x\"",
        "`register[0].check.ttl`: only used with type = \"ttl\"",
        "`register[0].check.path`: \"health\" is not a path",
        "`routes[0].domain`: required with service_from = \"host\"",
        "`routes[1]`: set `backend` or `service_from`, not both",
        "`routes[2].backend`: required (or `service_from`)",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "{e} in {errors:#?}"
        );
    }
}
