//! Gives the raw file its meaning and collects every problem with its key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::raw::{
    RawBackend, RawBalance, RawCheckKind, RawClientAuth, RawConfig, RawConsul, RawFragment,
    RawHealthCheck, RawListener, RawMdns, RawMode, RawOnly, RawOutlier, RawPerms, RawProtocol,
    RawRegister, RawRegisterCheckKind, RawRegistry, RawResolver, RawRespond, RawRetryBudget,
    RawRoute, RawSendProxy, RawServer, RawTemplate, RawTlsVersion, RawUnknownSni,
};
use super::*;
use crate::proxy::proxy_protocol::SendProxy;
use crate::tls::{Certificate, TlsServerSpec, TlsVersion, UnknownSni};

/// Reads a file the config refers to (see [`validate`]): `Ok(None)` for a
/// template's output that is not there yet on the first reading, which
/// only learns what to render.
pub(super) type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<Option<Vec<u8>>, String>;

/// Problems found so far; validation goes on after each so all are reported.
struct Problems(Vec<ConfigError>);

impl Problems {
    fn at(&mut self, file: &Arc<Path>, key: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ConfigError {
            file: file.clone(),
            key: key.into(),
            problem: problem.into(),
        });
    }
}

/// Where an item was defined, for messages about a second definition.
struct Origin<'a> {
    file: &'a Arc<Path>,
    key: String,
}

/// `fragments` are the included files, each flagged when its text is a
/// template's output rather than a file read from disk.
/// `read` reads a file the config refers to (a certificate), or gives the
/// latest output of the template whose destination it is.
pub(super) fn validate(
    main: Sourced<RawConfig>,
    fragments: Vec<(Sourced<RawFragment>, bool)>,
    read: ReadFile<'_>,
) -> Result<Config, ConfigErrors> {
    let mut p = Problems(Vec::new());
    let file = &main.file;
    let raw = &main.raw;

    let admin_bind = match &raw.admin {
        Some(admin) => parse_bind(&admin.bind)
            .map_err(|e| p.at(file, "admin.bind", e))
            .ok(),
        None => DEFAULT_ADMIN_BIND.parse().ok(),
    };
    let t = &raw.timeouts;
    let pick = |d: &Option<ConfigDuration>, default| d.map_or(default, |d| d.0);
    let timeouts = Timeouts {
        header_read: pick(&t.header_read, DEFAULT_HEADER_READ_TIMEOUT),
        client_idle: pick(&t.client_idle, DEFAULT_CLIENT_IDLE_TIMEOUT),
        client_stall: pick(&t.client_stall, DEFAULT_CLIENT_STALL_TIMEOUT),
    };
    let upstream_defaults = UpstreamTimeouts {
        connect: pick(&t.connect, DEFAULT_CONNECT_TIMEOUT),
        idle: pick(&t.upstream_idle, DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        request: pick(&t.request, DEFAULT_REQUEST_TIMEOUT),
        stall: pick(&t.upstream_stall, DEFAULT_UPSTREAM_STALL_TIMEOUT),
    };
    for (key, d) in [
        ("timeouts.connect", upstream_defaults.connect),
        ("timeouts.header_read", timeouts.header_read),
        ("timeouts.client_idle", timeouts.client_idle),
        ("timeouts.client_stall", timeouts.client_stall),
        ("timeouts.request", upstream_defaults.request),
        ("timeouts.upstream_stall", upstream_defaults.stall),
    ] {
        if d.is_zero() {
            p.at(file, key, "must be greater than zero");
        }
    }

    let resolver = check_resolver(file, &raw.resolver, &mut p);
    let limits = Limits {
        max_header_bytes: raw
            .limits
            .max_header_bytes
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_body_bytes: raw.limits.max_body_bytes,
    };
    if limits.max_header_bytes < MIN_MAX_HEADER_BYTES {
        p.at(file, "limits.max_header_bytes", "must be at least 8192");
    }

    // Every section from every file, each with its file for messages.
    let mut listeners: Vec<(&Arc<Path>, usize, &RawListener)> = Vec::new();
    let mut routes: Vec<(&Arc<Path>, usize, &RawRoute)> = Vec::new();
    let mut backends: Vec<(&Arc<Path>, usize, &RawBackend)> = Vec::new();
    let sections = std::iter::once((file, &raw.listeners, &raw.routes, &raw.backends)).chain(
        fragments
            .iter()
            .map(|(f, _)| (&f.file, &f.raw.listeners, &f.raw.routes, &f.raw.backends)),
    );
    for (f, ls, rs, bs) in sections {
        listeners.extend(ls.iter().enumerate().map(|(i, l)| (f, i, l)));
        routes.extend(rs.iter().enumerate().map(|(i, r)| (f, i, r)));
        backends.extend(bs.iter().enumerate().map(|(i, b)| (f, i, b)));
    }

    // Certificate and key files: watched, or staged when a template's.
    let mut tls_files: Vec<PathBuf> = Vec::new();
    // Backends first: listeners and routes refer to them.
    let mut backend_specs = Vec::with_capacity(backends.len());
    let mut backend_origin: HashMap<&str, Origin<'_>> = HashMap::new();
    for &(f, i, b) in &backends {
        let key = format!("backends[{i}]");
        if let Some(first) = backend_origin.get(b.name.as_str()) {
            p.at(
                f,
                format!("{key}.name"),
                format!(
                    "backend `{}` is already defined at {} `{}`",
                    b.name,
                    first.file.display(),
                    first.key
                ),
            );
            continue;
        }
        backend_origin.insert(
            &b.name,
            Origin {
                file: f,
                key: key.clone(),
            },
        );
        if let Some(spec) = check_backend(
            f,
            &key,
            b,
            upstream_defaults,
            (read, &mut tls_files),
            &mut p,
        ) {
            backend_specs.push(spec);
        }
    }
    let backend_kind: HashMap<&str, bool> = backends
        .iter()
        .map(|(_, _, b)| (b.name.as_str(), b.respond.is_none()))
        .collect();

    let mut listener_specs = Vec::with_capacity(listeners.len());
    let mut listener_origin: HashMap<&str, Origin<'_>> = HashMap::new();
    let mut bind_origin: HashMap<SocketAddr, Origin<'_>> = HashMap::new();
    for &(f, i, l) in &listeners {
        let key = format!("listeners[{i}]");
        if let Some(first) = listener_origin.get(l.name.as_str()) {
            p.at(
                f,
                format!("{key}.name"),
                format!(
                    "listener `{}` is already defined at {} `{}`",
                    l.name,
                    first.file.display(),
                    first.key
                ),
            );
            continue;
        }
        listener_origin.insert(
            &l.name,
            Origin {
                file: f,
                key: key.clone(),
            },
        );
        let before = p.0.len();
        let bind = match parse_bind(&l.bind) {
            Ok(bind) => {
                // Port 0 asks the kernel for a fresh port each time: never a clash.
                if bind.port() != 0 {
                    if let Some(first) = bind_origin.get(&bind) {
                        p.at(
                            f,
                            format!("{key}.bind"),
                            format!(
                                "{bind} is already bound by {} `{}`",
                                first.file.display(),
                                first.key
                            ),
                        );
                    } else {
                        bind_origin.insert(
                            bind,
                            Origin {
                                file: f,
                                key: key.clone(),
                            },
                        );
                    }
                }
                Some(bind)
            }
            Err(e) => {
                p.at(f, format!("{key}.bind"), e);
                None
            }
        };
        if l.name.is_empty() {
            p.at(f, format!("{key}.name"), "must not be empty");
        }
        let sni_routes = check_sni_routes(f, &key, l, &backend_kind, &mut p);
        match (&l.default_backend, l.mode.inner()) {
            (None, Mode::Tcp) if !l.sni_routes.is_empty() => {}
            (None, Mode::Tcp) => p.at(
                f,
                format!("{key}.default_backend"),
                "a tcp listener needs `default_backend`: the backend it forwards to",
            ),
            (Some(b), mode) => match backend_kind.get(b.as_str()) {
                None => p.at(
                    f,
                    format!("{key}.default_backend"),
                    format!("no backend named `{b}`"),
                ),
                Some(false) if mode == Mode::Tcp => p.at(
                    f,
                    format!("{key}.default_backend"),
                    format!("backend `{b}` is a `respond` backend, which only speaks HTTP"),
                ),
                _ => {}
            },
            (None, Mode::Http) => {}
        }
        if l.max_connections == Some(0) {
            p.at(f, format!("{key}.max_connections"), "must be at least 1");
        }
        if l.forwarded_headers.is_some() && l.mode.inner() == Mode::Tcp {
            p.at(
                f,
                format!("{key}.forwarded_headers"),
                "headers are for http listeners",
            );
        }
        if l.consul_tag_routes && l.mode.inner() == Mode::Tcp {
            p.at(
                f,
                format!("{key}.consul_tag_routes"),
                "routes are for http listeners",
            );
        }
        let queue_timeout = l.queue_timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.0);
        if l.queue_timeout.is_some() && l.max_connections.is_none() {
            p.at(
                f,
                format!("{key}.queue_timeout"),
                "only used with `max_connections`",
            );
        }
        let tls = check_tls(f, &key, l, read, &mut p, &mut tls_files);
        let proxy_protocol = check_proxy_protocol(f, &key, l, &mut p);
        let access_log = check_access_log(f, &key, l, &mut p);
        let (request_id, start_traces) = check_request_ids(f, &key, l, &mut p);
        if let (Some(bind), true) = (bind, p.0.len() == before) {
            listener_specs.push(ListenerSpec {
                location: Location {
                    file: f.clone(),
                    key: format!("{key}.bind"),
                },
                name: l.name.as_str().into(),
                bind,
                mode: l.mode.inner(),
                tls,
                sni_routes,
                proxy_protocol,
                default_backend: l.default_backend.as_deref().map(Into::into),
                max_connections: l.max_connections,
                queue_timeout,
                drain_timeout: l.drain_timeout.map(|d| d.0),
                consul_tag_routes: l.consul_tag_routes,
                forwarded_headers: l.forwarded_headers.unwrap_or(true),
                access_log,
                request_id,
                start_traces,
            });
        }
    }

    let http_listeners: Vec<&str> = listeners
        .iter()
        .filter(|(_, _, l)| l.mode.inner() == Mode::Http)
        .map(|(_, _, l)| l.name.as_str())
        .collect();
    let listener_mode: HashMap<&str, Mode> = listeners
        .iter()
        .map(|(_, _, l)| (l.name.as_str(), l.mode.inner()))
        .collect();
    // Gateway routes find go-micro services by mDNS when the file sets up
    // mDNS and not Consul.
    let gateway_mdns = raw.mdns.is_some() && raw.consul.is_none();
    let mut route_specs = Vec::with_capacity(routes.len());
    let mut route_origin: HashMap<(String, HostPattern, String), Origin<'_>> = HashMap::new();
    for &(f, i, r) in &routes {
        let key = format!("routes[{i}]");
        let before = p.0.len();
        let listener = match &r.listener {
            Some(name) => match listener_mode.get(name.as_str()) {
                Some(Mode::Http) => Some(name.as_str()),
                Some(Mode::Tcp) => {
                    p.at(
                        f,
                        format!("{key}.listener"),
                        format!("listener `{name}` is a tcp listener; routes are for http"),
                    );
                    None
                }
                None => {
                    p.at(
                        f,
                        format!("{key}.listener"),
                        format!("no listener named `{name}`"),
                    );
                    None
                }
            },
            None => match http_listeners.as_slice() {
                [only] => Some(*only),
                [] => {
                    p.at(f, &key, "there is no http listener for this route");
                    None
                }
                _ => {
                    p.at(
                        f,
                        format!("{key}.listener"),
                        "required: there is more than one http listener",
                    );
                    None
                }
            },
        };
        let mut host = match r.host.as_deref().map(parse_host).transpose() {
            Ok(h) => h.unwrap_or(HostPattern::Any),
            Err(e) => {
                p.at(f, format!("{key}.host"), e);
                HostPattern::Any
            }
        };
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            p.at(f, format!("{key}.path_prefix"), "must start with `/`");
        }
        let gateway = check_gateway_route(f, &key, r, &mut host, gateway_mdns, &mut p);
        match (&r.backend, &gateway) {
            (Some(b), None) if !backend_kind.contains_key(b.as_str()) => {
                p.at(
                    f,
                    format!("{key}.backend"),
                    format!("no backend named `{b}`"),
                );
            }
            (Some(_), Some(_)) => p.at(f, &key, "set `backend` or `service_from`, not both"),
            (None, None) => p.at(f, format!("{key}.backend"), "required (or `service_from`)"),
            _ => {}
        }
        let (Some(listener), true) = (listener, p.0.len() == before) else {
            continue;
        };
        let ident = (listener.to_string(), host.clone(), path_prefix.clone());
        if let Some(first) = route_origin.get(&ident) {
            p.at(
                f,
                &key,
                format!(
                    "the same listener, host and path_prefix are already routed by {} `{}`",
                    first.file.display(),
                    first.key
                ),
            );
            continue;
        }
        route_origin.insert(ident, Origin { file: f, key });
        let backend: Arc<str> = match gateway {
            Some(spec) => {
                // The route's own backend: it finds the service per request.
                let name: Arc<str> = format!("gateway:{listener}:{host}{path_prefix}").into();
                backend_specs.push(BackendSpec::with_defaults(
                    name.clone(),
                    BackendTarget::Gateway(spec),
                    upstream_defaults,
                ));
                name
            }
            None => r.backend.as_deref().unwrap_or_default().into(),
        };
        route_specs.push(RouteSpec {
            listener: listener.into(),
            host,
            path_prefix,
            backend,
        });
    }

    // Templates may call service() and, without a kv directory, key():
    // Consul with its defaults (CONSUL_HTTP_ADDR), as consul-template.
    let mdns_registry = |r: &RawRegister| r.registry == Some(RawRegistry::Mdns);
    let uses_consul = backends.iter().any(|(_, _, b)| b.consul_service.is_some())
        || !raw.templates.is_empty()
        || raw.register.iter().any(|r| !mdns_registry(r))
        || raw.listeners.iter().any(|l| l.consul_tag_routes)
        || (!gateway_mdns && routes.iter().any(|(_, _, r)| r.service_from.is_some()));
    let uses_mdns = backends.iter().any(|(_, _, b)| b.mdns_service.is_some())
        || raw.register.iter().any(mdns_registry);
    // A PROXY header names one client per connection; an HTTP/2
    // connection carries the requests of many.
    for spec in backend_specs
        .iter()
        .filter(|b| b.send_proxy.is_some() && b.protocol == Protocol::Http2)
    {
        let by_http = route_specs.iter().any(|r| r.backend == spec.name)
            || listener_specs
                .iter()
                .any(|l| l.mode == Mode::Http && l.default_backend.as_ref() == Some(&spec.name));
        if by_http && let Some(origin) = backend_origin.get(&*spec.name) {
            p.at(
                origin.file,
                format!("{}.send_proxy", origin.key),
                "not with `protocol = \"http2\"`: an HTTP/2 connection carries many clients' requests, and a PROXY header names one",
            );
        }
    }
    let register = check_register(file, &raw.register, &mut p);
    let consul = check_consul(file, raw.consul.as_ref(), uses_consul, &mut p);
    let mdns = check_mdns(file, raw.mdns.as_ref(), uses_mdns, &mut p);
    let kv = raw.kv.as_ref().and_then(|kv| {
        let dir = super::absolute(&relative_to(file, &kv.dir));
        if dir.is_dir() {
            Some(KvSpec { dir })
        } else {
            p.at(
                file,
                "kv.dir",
                format!("{} is not a directory", dir.display()),
            );
            None
        }
    });
    // Outputs the config is built from: a template writing one is staged
    // and tried by a reload before it is written.
    let included: Vec<&Path> = fragments
        .iter()
        .filter(|(_, rendered)| *rendered)
        .map(|(f, _)| &*f.file)
        .chain(tls_files.iter().map(PathBuf::as_path))
        .collect();
    let templates = check_templates(file, &raw.templates, &included, &mut p);
    let (Some(admin_bind), true) = (admin_bind, p.0.is_empty()) else {
        return Err(ConfigErrors(p.0));
    };
    let mut files = vec![main.file.to_path_buf()];
    files.extend(
        fragments
            .iter()
            .filter(|(_, rendered)| !rendered)
            .map(|(f, _)| f.file.to_path_buf()),
    );
    files.extend(templates.iter().map(|t| t.source.clone()));
    files.extend(
        tls_files
            .iter()
            .filter(|f| !templates.iter().any(|t| t.destination == **f))
            .cloned(),
    );
    Ok(Config {
        files,
        admin_bind,
        timeouts,
        shutdown_grace: raw.shutdown.grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        limits,
        resolver,
        consul,
        mdns,
        kv,
        templates,
        register,
        listeners: listener_specs,
        routes: route_specs,
        backends: backend_specs,
    })
}

fn check_backend(
    f: &Arc<Path>,
    key: &str,
    b: &RawBackend,
    defaults: UpstreamTimeouts,
    (read, files): (ReadFile<'_>, &mut Vec<PathBuf>),
    p: &mut Problems,
) -> Option<BackendSpec> {
    let before = p.0.len();
    if b.name.is_empty() {
        p.at(f, format!("{key}.name"), "must not be empty");
    }
    let set = [
        !b.servers.is_empty(),
        b.respond.is_some(),
        b.consul_service.is_some(),
        b.mdns_service.is_some(),
    ];
    let target = match set {
        [true, false, false, false] => {
            Some(BackendTarget::Servers(check_servers(f, key, &b.servers, p)))
        }
        [false, true, false, false] => b
            .respond
            .as_ref()
            .and_then(|r| check_respond(f, key, r, p))
            .map(BackendTarget::Respond),
        [false, false, true, false] => check_consul_target(f, key, b, p).map(BackendTarget::Consul),
        [false, false, false, true] => {
            let name = b.mdns_service.as_deref().unwrap_or_default();
            match check_mdns_service(name) {
                Ok(target) => Some(BackendTarget::Mdns(target)),
                Err(e) => {
                    p.at(f, format!("{key}.mdns_service"), e);
                    None
                }
            }
        }
        [false, false, false, false] => {
            p.at(
                f,
                key,
                "set one of `servers` (at least one \"ip:port\"), `respond`, `consul_service` or `mdns_service`",
            );
            None
        }
        _ => {
            p.at(
                f,
                key,
                "set only one of `servers`, `respond`, `consul_service` and `mdns_service`",
            );
            None
        }
    };
    if b.consul_service.is_none() {
        for (name, set) in [
            ("consul_tag", b.consul_tag.is_some()),
            ("consul_datacenter", b.consul_datacenter.is_some()),
        ] {
            if set {
                p.at(
                    f,
                    format!("{key}.{name}"),
                    "only used with `consul_service`",
                );
            }
        }
    }
    let hash_on = match &b.hash_header {
        Some(h) if b.balance != RawBalance::Hash => {
            p.at(
                f,
                format!("{key}.hash_header"),
                format!("only used with balance = \"hash\" (here \"{h}\" would be ignored)"),
            );
            HashOn::ClientAddr
        }
        Some(h) => match HeaderName::try_from(h.as_str()) {
            Ok(name) => HashOn::Header(name),
            Err(_) => {
                p.at(
                    f,
                    format!("{key}.hash_header"),
                    format!("{h:?} is not a header name"),
                );
                HashOn::ClientAddr
            }
        },
        None => HashOn::ClientAddr,
    };
    let balance = match b.balance {
        RawBalance::RoundRobin => Balance::RoundRobin,
        RawBalance::LeastConn => Balance::LeastConn,
        RawBalance::P2c => Balance::P2c,
        RawBalance::Hash => Balance::Hash(hash_on),
    };
    let t = &b.timeouts;
    let timeouts = UpstreamTimeouts {
        connect: t.connect.map_or(defaults.connect, |d| d.0),
        idle: t.upstream_idle.map_or(defaults.idle, |d| d.0),
        request: t.request.map_or(defaults.request, |d| d.0),
        stall: t.upstream_stall.map_or(defaults.stall, |d| d.0),
    };
    if timeouts.connect.is_zero() || timeouts.request.is_zero() || timeouts.stall.is_zero() {
        p.at(
            f,
            format!("{key}.timeouts"),
            "timeouts must be greater than zero",
        );
    }
    let health_check = b
        .health_check
        .as_ref()
        .and_then(|h| check_health(f, key, h, p));
    let outlier = b
        .outlier
        .as_ref()
        .map_or_else(OutlierSpec::default, |o| check_outlier(f, key, o, p));
    let retry = check_retry(f, key, b, p);
    if b.max_connections_per_server == Some(0) {
        p.at(
            f,
            format!("{key}.max_connections_per_server"),
            "must be at least 1",
        );
    }
    let target = target?;
    if matches!(target, BackendTarget::Respond(_)) {
        for (name, set) in [
            ("health_check", b.health_check.is_some()),
            ("outlier", b.outlier.is_some()),
            (
                "max_connections_per_server",
                b.max_connections_per_server.is_some(),
            ),
        ] {
            if set {
                p.at(
                    f,
                    format!("{key}.{name}"),
                    "a `respond` backend has no servers",
                );
            }
        }
    }
    let protocol = match b.protocol {
        None | Some(RawProtocol::Http1) => Protocol::Http1,
        Some(RawProtocol::Http2) => Protocol::Http2,
    };
    if protocol != Protocol::Http2
        && health_check
            .as_ref()
            .is_some_and(|h| matches!(h.kind, CheckKind::Grpc { .. }))
    {
        p.at(
            f,
            format!("{key}.health_check"),
            "type = \"grpc\" needs protocol = \"http2\" (gRPC is HTTP/2)",
        );
    }
    let tls = b
        .tls
        .as_ref()
        .and_then(|t| check_upstream_tls(f, key, t, protocol, read, files, p));
    (p.0.len() == before).then(|| BackendSpec {
        name: b.name.as_str().into(),
        balance,
        target,
        protocol,
        timeouts,
        health_check,
        fail_open: b.fail_open,
        outlier,
        retry,
        max_connections_per_server: b.max_connections_per_server,
        tls,
        send_proxy: b.send_proxy.map(|v| match v {
            RawSendProxy::V1 => SendProxy::V1,
            RawSendProxy::V2 => SendProxy::V2,
        }),
    })
}

/// A backend's `health_check`.
fn check_health(
    f: &Arc<Path>,
    key: &str,
    h: &RawHealthCheck,
    p: &mut Problems,
) -> Option<HealthCheckSpec> {
    let key = format!("{key}.health_check");
    let before = p.0.len();
    if h.kind != RawCheckKind::Grpc && h.service.is_some() {
        p.at(
            f,
            format!("{key}.service"),
            "only used with type = \"grpc\"",
        );
    }
    let kind = match h.kind {
        RawCheckKind::Tcp => {
            for (name, set) in [
                ("path", h.path.is_some()),
                ("host", h.host.is_some()),
                ("expect_status", h.expect_status.is_some()),
            ] {
                if set {
                    p.at(f, format!("{key}.{name}"), "only used with type = \"http\"");
                }
            }
            CheckKind::Tcp
        }
        RawCheckKind::Grpc => {
            for (name, set) in [
                ("path", h.path.is_some()),
                ("expect_status", h.expect_status.is_some()),
            ] {
                if set {
                    p.at(
                        f,
                        format!("{key}.{name}"),
                        "only used with type = \"http\" (a gRPC check asks grpc.health.v1.Health/Check)",
                    );
                }
            }
            if let Some(host) = &h.host
                && http::uri::Authority::try_from(host.as_str()).is_err()
            {
                p.at(f, format!("{key}.host"), format!("{host:?} is not a host"));
            }
            CheckKind::Grpc {
                service: h.service.clone().unwrap_or_default(),
                host: h.host.clone(),
            }
        }
        RawCheckKind::Http => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                p.at(
                    f,
                    format!("{key}.path"),
                    format!("{path:?} is not a path such as \"/healthz\""),
                );
            }
            if let Some(host) = &h.host
                && HeaderValue::from_str(host).is_err()
            {
                p.at(f, format!("{key}.host"), format!("{host:?} is not a host"));
            }
            let expect = match &h.expect_status {
                None => Some((200, 399)),
                Some(text) => parse_status_range(text),
            };
            if expect.is_none() {
                p.at(
                    f,
                    format!("{key}.expect_status"),
                    "expected a status such as \"200\" or a range such as \"200-399\"",
                );
            }
            CheckKind::Http {
                path,
                host: h.host.clone(),
                expect: expect.unwrap_or((200, 399)),
            }
        }
    };
    let pick = |v: &Option<ConfigDuration>, default: Duration| v.map_or(default, |v| v.0);
    let interval = pick(&h.interval, DEFAULT_CHECK_INTERVAL);
    let spec = HealthCheckSpec {
        kind,
        interval,
        timeout: pick(&h.timeout, DEFAULT_CHECK_TIMEOUT.min(interval)),
        rise: h.rise.unwrap_or(DEFAULT_RISE),
        fall: h.fall.unwrap_or(DEFAULT_FALL),
        jitter: pick(&h.jitter, interval / 10),
    };
    if spec.interval.is_zero() || spec.timeout.is_zero() {
        p.at(
            f,
            &key,
            "`interval` and `timeout` must be greater than zero",
        );
    }
    if spec.rise == 0 || spec.fall == 0 {
        p.at(f, &key, "`rise` and `fall` must be at least 1");
    }
    (p.0.len() == before).then_some(spec)
}

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

fn check_outlier(f: &Arc<Path>, key: &str, o: &RawOutlier, p: &mut Problems) -> OutlierSpec {
    let key = format!("{key}.outlier");
    let pick = |v: &Option<ConfigDuration>, default: Duration| v.map_or(default, |v| v.0);
    let spec = OutlierSpec {
        consecutive_failures: o
            .consecutive_failures
            .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES),
        consecutive_connect_failures: o
            .consecutive_connect_failures
            .unwrap_or(DEFAULT_CONSECUTIVE_CONNECT_FAILURES),
        base_ejection: pick(&o.base_ejection, DEFAULT_BASE_EJECTION),
        max_ejection: pick(&o.max_ejection, DEFAULT_MAX_EJECTION),
        max_ejected_percent: o.max_ejected_percent.unwrap_or(DEFAULT_MAX_EJECTED_PERCENT),
    };
    if spec.base_ejection.is_zero() {
        p.at(
            f,
            format!("{key}.base_ejection"),
            "must be greater than zero",
        );
    }
    if spec.max_ejection < spec.base_ejection {
        p.at(
            f,
            format!("{key}.max_ejection"),
            "must not be less than `base_ejection`",
        );
    }
    if spec.max_ejected_percent > 100 {
        p.at(
            f,
            format!("{key}.max_ejected_percent"),
            "must be between 0 and 100",
        );
    }
    spec
}

fn check_retry(f: &Arc<Path>, key: &str, b: &RawBackend, p: &mut Problems) -> RetrySpec {
    let mut spec = RetrySpec::default();
    if let Some(r) = b.retries {
        if r > 10 {
            p.at(f, format!("{key}.retries"), "must be between 0 and 10");
        }
        spec.retries = r;
    }
    if let Some(on) = &b.retry_on {
        spec.on_reset = false;
        for (i, what) in on.iter().enumerate() {
            match what.as_str() {
                "connect" => {}
                "reset" => spec.on_reset = true,
                other => p.at(
                    f,
                    format!("{key}.retry_on[{i}]"),
                    format!("{other:?}: expected \"connect\" or \"reset\""),
                ),
            }
        }
    }
    if let Some(RawRetryBudget {
        percent,
        min_per_second,
    }) = &b.retry_budget
    {
        spec.budget_percent = percent.unwrap_or(DEFAULT_RETRY_PERCENT);
        spec.budget_min_per_second = min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND);
        if spec.budget_percent > 100 {
            p.at(
                f,
                format!("{key}.retry_budget.percent"),
                "must be between 0 and 100",
            );
        }
    }
    spec
}

fn check_servers(f: &Arc<Path>, key: &str, raw: &[RawServer], p: &mut Problems) -> Vec<ServerSpec> {
    let mut seen = HashSet::new();
    let mut servers = Vec::with_capacity(raw.len());
    for (j, s) in raw.iter().enumerate() {
        let (address, weight, required, at) = match s {
            RawServer::Address(a) => (a, None, false, format!("{key}.servers[{j}]")),
            RawServer::Detailed(d) => (
                &d.address,
                d.weight,
                d.required,
                format!("{key}.servers[{j}].address"),
            ),
        };
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            p.at(
                f,
                format!("{key}.servers[{j}].weight"),
                format!("must be between 1 and {MAX_WEIGHT}"),
            );
        }
        let target = match parse_server(address) {
            Ok(target) => target,
            Err(problem) => {
                p.at(f, &at, problem);
                continue;
            }
        };
        if required && matches!(target, ServerTarget::Addr(_)) {
            p.at(
                f,
                format!("{key}.servers[{j}].required"),
                "only a host name or SRV name can be required",
            );
        }
        if !seen.insert(target.clone()) {
            p.at(f, at, format!("{target} is listed twice"));
            continue;
        }
        servers.push(ServerSpec {
            target,
            weight,
            required,
        });
    }
    servers
}

/// `"ip:port"`, `"host:port"`, or an SRV name (`"_web._tcp.example.com"`).
fn parse_server(address: &str) -> Result<ServerTarget, String> {
    const EXPECTED: &str =
        "expected \"ip:port\", \"host:port\" or an SRV name such as \"_web._tcp.service.consul\"";
    if let Ok(addr) = address.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0 is not a server port".into());
        }
        return Ok(ServerTarget::Addr(addr));
    }
    if address.starts_with('_') && !address.contains(':') {
        return check_dns_name(address)
            .map(|name| ServerTarget::Srv { name })
            .map_err(|e| format!("{address:?}: {e}"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} has no port; {EXPECTED}"));
    };
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("port 0 is not a server port".into()),
        Ok(port) => port,
        Err(_) => return Err(format!("{address:?}: bad port; {EXPECTED}")),
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') || host.contains(':') {
        return Err(format!("{address:?} is not an address; {EXPECTED}"));
    }
    check_dns_name(host)
        .map(|name| ServerTarget::Host { name, port })
        .map_err(|e| format!("{address:?}: {e}; {EXPECTED}"))
}

/// A syntactically valid DNS name, lowercased (DNS is case-insensitive, and
/// one spelling means one resolver task).
fn check_dns_name(name: &str) -> Result<Arc<str>, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err("a host name has 1 to 253 characters".into());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each part of a host name has 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a host name has only letters, digits, `-`, `_` and dots".into());
        }
    }
    Ok(name.to_ascii_lowercase().into())
}

fn check_consul_target(
    f: &Arc<Path>,
    key: &str,
    b: &RawBackend,
    p: &mut Problems,
) -> Option<ConsulTarget> {
    let service = b.consul_service.as_deref().unwrap_or_default();
    // Consul service names and tags are DNS-label-like; a slash or a space
    // would break the request path.
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    let before = p.0.len();
    for (name, value) in [
        ("consul_service", Some(service)),
        ("consul_tag", b.consul_tag.as_deref()),
        ("consul_datacenter", b.consul_datacenter.as_deref()),
    ] {
        if let Some(v) = value
            && !valid(v)
        {
            p.at(
                f,
                format!("{key}.{name}"),
                format!("{v:?}: use letters, digits, `-`, `_` and `.`"),
            );
        }
    }
    (p.0.len() == before).then(|| ConsulTarget {
        service: service.into(),
        tag: b.consul_tag.as_deref().map(Into::into),
        datacenter: b.consul_datacenter.as_deref().map(Into::into),
    })
}

/// A route's gateway settings, if it has `service_from`; a host route
/// matches `*.{domain}`.
fn check_gateway_route(
    f: &Arc<Path>,
    key: &str,
    r: &RawRoute,
    host: &mut HostPattern,
    mdns: bool,
    p: &mut Problems,
) -> Option<GatewaySpec> {
    use super::raw::RawServiceFrom;
    let Some(from) = r.service_from else {
        for (name, set) in [
            ("domain", r.domain.is_some()),
            ("strip_service", r.strip_service),
            ("idle_timeout", r.idle_timeout.is_some()),
        ] {
            if set {
                p.at(f, format!("{key}.{name}"), "only used with `service_from`");
            }
        }
        return None;
    };
    let from = match from {
        RawServiceFrom::Path => {
            if r.domain.is_some() {
                p.at(
                    f,
                    format!("{key}.domain"),
                    "only used with service_from = \"host\"",
                );
            }
            ServiceFrom::Path
        }
        RawServiceFrom::Host => {
            let Some(domain) = r
                .domain
                .as_deref()
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
            else {
                p.at(
                    f,
                    format!("{key}.domain"),
                    "required with service_from = \"host\"",
                );
                return None;
            };
            if r.host.is_some() {
                p.at(
                    f,
                    format!("{key}.host"),
                    "with service_from = \"host\" the host is `*.{domain}`",
                );
            }
            if r.strip_service {
                p.at(
                    f,
                    format!("{key}.strip_service"),
                    "only used with service_from = \"path\"",
                );
            }
            *host = HostPattern::Suffix(format!(".{domain}"));
            ServiceFrom::Host { domain }
        }
    };
    Some(GatewaySpec {
        from,
        strip_service: r.strip_service,
        idle_timeout: r.idle_timeout.map_or(DEFAULT_GATEWAY_IDLE, |d| d.0),
        mdns,
    })
}

/// The `[[register]]` blocks.
fn check_register(f: &Arc<Path>, raw: &[RawRegister], p: &mut Problems) -> Vec<RegisterSpec> {
    let host = hostname();
    let mut specs: Vec<RegisterSpec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = |k: &str| format!("register[{i}].{k}");
        if r.name.is_empty() || r.name.contains('/') {
            p.at(f, key("name"), "must be a service name (not empty, no `/`)");
        }
        let registry = match r.registry {
            Some(RawRegistry::Mdns) => Registry::Mdns,
            Some(RawRegistry::Consul) | None => Registry::Consul,
        };
        if registry == Registry::Mdns {
            check_mdns_registration(f, i, r, p);
        } else if r.version.is_some() {
            p.at(
                f,
                key("version"),
                "only used with registry = \"mdns\" (go-micro's TXT record)",
            );
        }
        if r.port == 0 {
            p.at(f, key("port"), "must be a port number (1-65535)");
        }
        if let Some(a) = &r.address
            && (a.is_empty() || a == "0.0.0.0" || a == "::")
        {
            p.at(
                f,
                key("address"),
                "must be an address others can reach (not empty, 0.0.0.0 or ::)",
            );
        }
        for k in r.meta.keys() {
            if registry == Registry::Consul
                && (k.starts_with("consul-") || k.is_empty() || k.len() > 128)
            {
                p.at(
                    f,
                    key("meta"),
                    format!("{k:?}: keys are 1-128 characters and may not start with `consul-`"),
                );
            }
        }
        let id = r.id.clone().unwrap_or_else(|| {
            let id = format!("{}-{host}-{}", r.name, r.port);
            match registry {
                // One DNS label: the instance name before the service's.
                Registry::Mdns => id.replace('.', "-").chars().take(63).collect(),
                Registry::Consul => id,
            }
        });
        if specs.iter().any(|s| s.id == id) {
            p.at(
                f,
                key("id"),
                format!("the service ID {id:?} is registered twice"),
            );
        }
        let pick = |v: &Option<ConfigDuration>, default: Duration| v.map_or(default, |v| v.0);
        let check = r.check.as_ref().map(|c| {
            let kind = match c.kind {
                RawRegisterCheckKind::Http => RegisterCheckKind::Http {
                    path: c.path.clone().unwrap_or_else(|| "/".into()),
                },
                RawRegisterCheckKind::Tcp => RegisterCheckKind::Tcp,
                RawRegisterCheckKind::Ttl => {
                    let ttl = c.ttl.map_or(Duration::from_secs(15), |d| d.0);
                    if ttl < Duration::from_secs(1) {
                        p.at(f, key("check.ttl"), "must be at least 1s");
                    }
                    RegisterCheckKind::Ttl {
                        ttl,
                        path: c.path.clone(),
                    }
                }
            };
            if c.ttl.is_some() && c.kind != RawRegisterCheckKind::Ttl {
                p.at(f, key("check.ttl"), "only used with type = \"ttl\"");
            }
            if let Some(path) = &c.path
                && !path.starts_with('/')
            {
                p.at(
                    f,
                    key("check.path"),
                    format!("{path:?} is not a path such as \"/health\""),
                );
            }
            let interval = match &kind {
                // Three updates per TTL: one lost update does not fail it.
                RegisterCheckKind::Ttl { ttl, .. } => pick(&c.interval, *ttl / 3),
                _ => pick(&c.interval, Duration::from_secs(10)),
            };
            if interval.is_zero() {
                p.at(f, key("check.interval"), "must be greater than zero");
            }
            RegisterCheck {
                kind,
                interval,
                timeout: pick(&c.timeout, Duration::from_secs(2)),
            }
        });
        let interval = pick(&r.interval, Duration::from_secs(30));
        if interval.is_zero() {
            p.at(f, key("interval"), "must be greater than zero");
        }
        specs.push(RegisterSpec {
            name: r.name.clone(),
            id,
            registry,
            version: r
                .version
                .clone()
                .unwrap_or_else(|| DEFAULT_MDNS_VERSION.into()),
            address: r.address.clone(),
            port: r.port,
            tags: r.tags.clone(),
            meta: r.meta.clone(),
            check,
            deregister_critical_after: r.deregister_critical_after.map(|d| d.0),
            interval,
        });
    }
    specs
}

/// What an mDNS registration cannot have: Consul-only settings, an address
/// that is not an IPv4 address (it becomes an A record), an ID that is not
/// one DNS label.
fn check_mdns_registration(f: &Arc<Path>, i: usize, r: &RawRegister, p: &mut Problems) {
    let key = |k: &str| format!("register[{i}].{k}");
    if !r.tags.is_empty() {
        p.at(
            f,
            key("tags"),
            "go-micro's mDNS registry has no tags; use `meta` (node metadata)",
        );
    }
    if r.deregister_critical_after.is_some() {
        p.at(
            f,
            key("deregister_critical_after"),
            "only used with registry = \"consul\"; with mdns a failing check withdraws the service at once",
        );
    }
    if let Some(a) = &r.address
        && a.parse::<std::net::Ipv4Addr>().is_err()
    {
        p.at(
            f,
            key("address"),
            format!(
                "{a:?}: with registry = \"mdns\" the address is an IPv4 address (its A record)"
            ),
        );
    }
    if let Some(id) = &r.id
        && (id.is_empty() || id.len() > 63 || id.contains('.'))
    {
        p.at(
            f,
            key("id"),
            format!("{id:?}: an mDNS instance name is one DNS label: 1-63 characters, no dots"),
        );
    }
    if let MdnsTarget::GoMicro(_) = MdnsTarget::parse(&r.name)
        && let Err(e) = check_mdns_service(&r.name)
    {
        p.at(f, key("name"), e);
    }
    if let Some(v) = &r.version
        && (v.is_empty() || v.len() > 128)
    {
        p.at(f, key("version"), "must be 1-128 characters");
    }
}

/// An `mdns_service`: a go-micro service name, or a DNS-SD service type.
fn check_mdns_service(name: &str) -> Result<MdnsTarget, String> {
    let target = MdnsTarget::parse(name);
    let labels_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 200
            && n.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    match &target {
        MdnsTarget::GoMicro(n) if labels_ok(n) => Ok(target),
        MdnsTarget::GoMicro(n) => Err(format!(
            "{n:?}: a go-micro service name has letters, digits, `-`, `_` and dots between them; a DNS-SD type looks like \"_http._tcp.local.\""
        )),
        MdnsTarget::DnsSd(ty) => {
            // `_name._tcp.local.`: one service label of 1-15 characters
            // after its underscore (RFC 6763 §7).
            let service = ty.split('.').next().unwrap_or_default();
            let bare = service.strip_prefix('_').unwrap_or_default();
            let ok = ty.split('.').count() == 4
                && !bare.is_empty()
                && bare.len() <= 15
                && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !bare.starts_with('-')
                && !bare.ends_with('-');
            if ok {
                Ok(target)
            } else {
                Err(format!(
                    "{name:?}: a DNS-SD service type is \"_name._tcp.local.\" with a name of 1-15 letters, digits and `-`"
                ))
            }
        }
    }
}

/// The `[mdns]` section, or its defaults when only backends or
/// registrations use mDNS.
fn check_mdns(
    f: &Arc<Path>,
    raw: Option<&RawMdns>,
    used: bool,
    p: &mut Problems,
) -> Option<MdnsSpec> {
    if raw.is_none() && !used {
        return None;
    }
    let default = RawMdns::default();
    let r = raw.unwrap_or(&default);
    let mut spec = MdnsSpec::default();
    if let Some(list) = &r.interfaces {
        if list.is_empty() {
            p.at(
                f,
                "mdns.interfaces",
                "must not be empty; leave it out to use every IPv4 interface",
            );
        }
        for (i, name) in list.iter().enumerate() {
            let key = format!("mdns.interfaces[{i}]");
            if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
                spec.interfaces.push(MdnsInterface::Addr(ip));
            } else if name.parse::<std::net::IpAddr>().is_ok() {
                p.at(f, key, format!("{name:?}: mDNS is used over IPv4 only (224.0.0.251); give an IPv4 address or an interface name"));
            } else if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', ':']) {
                p.at(
                    f,
                    key,
                    format!("{name:?} is neither an interface name (such as \"eth0\") nor an IPv4 address"),
                );
            } else {
                spec.interfaces.push(MdnsInterface::Name(name.clone()));
            }
        }
    }
    if let Some(domain) = &r.domain {
        let d = domain.trim_matches('.').to_ascii_lowercase();
        let ok = !d.is_empty()
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if ok {
            spec.domain = d;
        } else {
            p.at(
                f,
                "mdns.domain",
                format!("{domain:?} is not a domain such as \"micro\" (go-micro's)"),
            );
        }
    }
    if let Some(d) = r.query_interval {
        if d.0 < Duration::from_secs(1) {
            p.at(f, "mdns.query_interval", "must be at least 1s");
        }
        spec.query_interval = d.0;
    }
    if let Some(d) = r.ttl {
        if d.0 < Duration::from_secs(1)
            || d.0 > Duration::from_secs(3600)
            || d.0.subsec_nanos() != 0
        {
            p.at(
                f,
                "mdns.ttl",
                "must be whole seconds between 1s and 1h (DNS TTLs are seconds)",
            );
        }
        spec.ttl = d.0;
    }
    Some(spec)
}

/// This host's name, for default service IDs (a container's ID in Docker).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A path from the file `f`, relative to the file's directory.
fn relative_to(f: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    f.parent().map_or(path.to_path_buf(), |dir| dir.join(path))
}

/// A backend's `tls`, with its files read and the client configs built.
fn check_upstream_tls(
    f: &Arc<Path>,
    key: &str,
    t: &super::raw::RawUpstreamTls,
    protocol: Protocol,
    read: ReadFile<'_>,
    files: &mut Vec<PathBuf>,
    p: &mut Problems,
) -> Option<Arc<crate::upstream::tls::UpstreamTls>> {
    use crate::upstream::tls::{UpstreamTls, UpstreamTlsFiles, UpstreamTlsSettings};
    let key = format!("{key}.tls");
    let before = p.0.len();
    let mut load = |name: &str, path: &Option<String>| -> Option<(PathBuf, Vec<u8>)> {
        let file = super::absolute(&relative_to(f, path.as_deref()?));
        files.push(file.clone());
        match read(&file) {
            Ok(Some(bytes)) => Some((file, bytes)),
            Ok(None) => None,
            Err(e) => {
                p.at(
                    f,
                    format!("{key}.{name}"),
                    format!("{}: {e}", file.display()),
                );
                None
            }
        }
    };
    let ca = load("ca_file", &t.ca_file);
    let cert = load("client_cert", &t.client_cert);
    let client_key = load("client_key", &t.client_key);
    if t.client_cert.is_some() != t.client_key.is_some() {
        p.at(
            f,
            format!("{key}.client_cert"),
            "`client_cert` and `client_key` go together",
        );
    }
    let verify = t.verify.unwrap_or(true);
    if !verify && t.ca_file.is_some() {
        p.at(
            f,
            format!("{key}.ca_file"),
            "not used with `verify = false`",
        );
    }
    if p.0.len() != before {
        return None;
    }
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for (_, bytes) in [&ca, &cert, &client_key].into_iter().flatten() {
        digest.update(bytes);
    }
    let settings = UpstreamTlsSettings {
        ca_file: ca.as_ref().map(|(file, _)| file.clone()),
        server_name: t.server_name.clone(),
        client_cert: cert.as_ref().map(|(file, _)| file.clone()),
        verify,
        digest: digest.digest(),
    };
    fn pair(x: &Option<(PathBuf, Vec<u8>)>) -> Option<(&Path, &[u8])> {
        x.as_ref().map(|(f, b)| (f.as_path(), b.as_slice()))
    }
    let built = UpstreamTls::new(
        settings,
        UpstreamTlsFiles {
            ca: pair(&ca),
            client: pair(&cert).zip(pair(&client_key)),
        },
        match protocol {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
        },
    );
    match built {
        Ok(tls) => {
            if !verify {
                tracing::warn!(backend_key = %key, "Upstream TLS without verification: any certificate is accepted");
            }
            Some(Arc::new(tls))
        }
        Err(problem) => {
            p.at(f, key, problem);
            None
        }
    }
}

/// `proxy_protocol` and `trusted`: the trusted networks when on.
fn check_proxy_protocol(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    p: &mut Problems,
) -> Option<Arc<[ipnet::IpNet]>> {
    if !l.proxy_protocol {
        if !l.trusted.is_empty() {
            p.at(
                f,
                format!("{key}.trusted"),
                "only used with `proxy_protocol = true`",
            );
        }
        return None;
    }
    if l.trusted.is_empty() {
        p.at(
            f,
            format!("{key}.trusted"),
            "`proxy_protocol = true` needs the networks allowed to send PROXY headers, e.g. trusted = [\"10.0.0.0/8\"]; anyone else could claim any client address",
        );
        return None;
    }
    let mut nets = Vec::with_capacity(l.trusted.len());
    for (j, t) in l.trusted.iter().enumerate() {
        let parsed = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => p.at(
                f,
                format!("{key}.trusted[{j}]"),
                format!("`{t}` is not a network (10.0.0.0/8, fd00::/8) or an address"),
            ),
        }
    }
    Some(nets.into())
}

/// The `sni_routes` of a `tcp` listener.
fn check_sni_routes(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    backend_kind: &HashMap<&str, bool>,
    p: &mut Problems,
) -> Vec<SniRoute> {
    if l.sni_routes.is_empty() {
        return Vec::new();
    }
    if l.mode != RawMode::Tcp {
        p.at(
            f,
            format!("{key}.sni_routes"),
            "only for `tcp` listeners, which pass TLS through; an https or tls listener chooses by routes or certificates",
        );
        return Vec::new();
    }
    let mut routes: Vec<SniRoute> = Vec::with_capacity(l.sni_routes.len());
    for (j, r) in l.sni_routes.iter().enumerate() {
        let sni = r.sni.trim_end_matches('.').to_ascii_lowercase();
        if !crate::tls::names::valid_pattern(&sni) {
            p.at(
                f,
                format!("{key}.sni_routes[{j}].sni"),
                format!("`{}` is not a DNS name or `*.domain`", r.sni),
            );
        } else if let Some(first) = routes.iter().position(|x| x.sni == sni) {
            p.at(
                f,
                format!("{key}.sni_routes[{j}].sni"),
                format!("`{sni}` is already routed by `sni_routes[{first}]`"),
            );
        }
        match backend_kind.get(r.backend.as_str()) {
            None => p.at(
                f,
                format!("{key}.sni_routes[{j}].backend"),
                format!("no backend named `{}`", r.backend),
            ),
            Some(false) => p.at(
                f,
                format!("{key}.sni_routes[{j}].backend"),
                format!(
                    "backend `{}` is a `respond` backend, which only speaks HTTP",
                    r.backend
                ),
            ),
            Some(true) => {}
        }
        routes.push(SniRoute {
            sni,
            backend: r.backend.as_str().into(),
        });
    }
    routes
}

/// The TLS settings of listener `l` (`key`), with its certificates loaded
/// and checked; `None` for a listener without TLS or with a problem.
fn check_tls(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    read: ReadFile<'_>,
    p: &mut Problems,
    files: &mut Vec<PathBuf>,
) -> Option<Arc<TlsServerSpec>> {
    let before = p.0.len();
    if !l.mode.terminates_tls() {
        for (name, set) in [
            ("client_ca", l.client_ca.is_some()),
            ("client_auth", l.client_auth.is_some()),
            ("client_subject_header", l.client_subject_header.is_some()),
            ("certs", !l.certs.is_empty()),
            ("min_version", l.min_version.is_some()),
            ("unknown_sni", l.unknown_sni.is_some()),
            ("sni_host_check", l.sni_host_check.is_some()),
        ] {
            if set {
                p.at(
                    f,
                    format!("{key}.{name}"),
                    "only for `https` and `tls` listeners",
                );
            }
        }
        return None;
    }
    if l.sni_host_check.is_some() && l.mode == RawMode::Tls {
        p.at(
            f,
            format!("{key}.sni_host_check"),
            "Host headers are for https listeners",
        );
    }
    if l.certs.is_empty() {
        p.at(
            f,
            format!("{key}.certs"),
            "an https or tls listener needs a certificate: certs = [{ cert = \"site.pem\", key = \"site.key\" }]",
        );
        return None;
    }
    let now = std::time::SystemTime::now();
    let mut certs = Vec::with_capacity(l.certs.len());
    let mut unrendered = 0;
    for (j, c) in l.certs.iter().enumerate() {
        let cert_file = super::absolute(&relative_to(f, &c.cert));
        let key_file = super::absolute(&relative_to(f, c.key.as_deref().unwrap_or(&c.cert)));
        files.push(cert_file.clone());
        files.push(key_file.clone());
        let mut contents = |name: &str, file: &Path| match read(file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                p.at(
                    f,
                    format!("{key}.certs[{j}].{name}"),
                    format!("{}: {e}", file.display()),
                );
                None
            }
        };
        let (Some(cert_pem), Some(key_pem)) =
            (contents("cert", &cert_file), contents("key", &key_file))
        else {
            continue;
        };
        let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
            // A template's output, not rendered yet: the first reading.
            unrendered += 1;
            continue;
        };
        match Certificate::from_pem(&cert_file, &cert_pem, &key_file, &key_pem, now) {
            Ok(cert) => certs.push(cert),
            Err(e) => p.at(f, format!("{key}.certs[{j}]"), e.to_string()),
        }
    }
    let client_auth = check_client_auth(f, key, l, read, p, files);
    if certs.len() + unrendered != l.certs.len() || p.0.len() != before || certs.is_empty() {
        return None;
    }
    Some(Arc::new(TlsServerSpec {
        certs,
        min_version: match l.min_version {
            None | Some(RawTlsVersion::V1_2) => TlsVersion::V1_2,
            Some(RawTlsVersion::V1_3) => TlsVersion::V1_3,
        },
        unknown_sni: match l.unknown_sni {
            None | Some(RawUnknownSni::Default) => UnknownSni::Default,
            Some(RawUnknownSni::Refuse) => UnknownSni::Refuse,
        },
        sni_host_check: l.mode == RawMode::Https && l.sni_host_check.unwrap_or(true),
        alpn: match l.mode {
            RawMode::Https => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            _ => Vec::new(),
        },
        client_auth,
    }))
}

/// `client_ca`, `client_auth` and `client_subject_header` of a TLS listener.
fn check_client_auth(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    read: ReadFile<'_>,
    p: &mut Problems,
    files: &mut Vec<PathBuf>,
) -> Option<crate::tls::ClientAuth> {
    let Some(ca) = &l.client_ca else {
        for (name, set) in [
            ("client_auth", l.client_auth.is_some()),
            ("client_subject_header", l.client_subject_header.is_some()),
        ] {
            if set {
                p.at(f, format!("{key}.{name}"), "only used with `client_ca`");
            }
        }
        return None;
    };
    let subject_header = match &l.client_subject_header {
        None => None,
        Some(_) if l.mode != RawMode::Https => {
            p.at(
                f,
                format!("{key}.client_subject_header"),
                "headers are for https listeners",
            );
            None
        }
        Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                p.at(
                    f,
                    format!("{key}.client_subject_header"),
                    format!("`{name}` is not a header name"),
                );
                None
            }
        },
    };
    let file = super::absolute(&relative_to(f, ca));
    files.push(file.clone());
    let pem = match read(&file) {
        Ok(Some(pem)) => pem,
        Ok(None) => return None,
        Err(e) => {
            p.at(
                f,
                format!("{key}.client_ca"),
                format!("{}: {e}", file.display()),
            );
            return None;
        }
    };
    let roots = match crate::tls::roots_from_pem(&file, &pem) {
        Ok(roots) => roots,
        Err(e) => {
            p.at(f, format!("{key}.client_ca"), e);
            return None;
        }
    };
    Some(crate::tls::ClientAuth {
        ca_file: file,
        roots: Arc::new(roots),
        required: l.client_auth != Some(RawClientAuth::Optional),
        subject_header,
        digest: xxhash_rust::xxh3::xxh3_64(&pem),
    })
}

/// The `[[templates]]` blocks; `included` are the includes that are
/// template outputs.
fn check_templates(
    f: &Arc<Path>,
    raw: &[RawTemplate],
    included: &[&Path],
    p: &mut Problems,
) -> Vec<TemplateSpec> {
    let mut specs: Vec<TemplateSpec> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let key = |k: &str| format!("templates[{i}].{k}");
        let destination = super::absolute(&relative_to(f, &t.destination));
        if t.source.is_empty() {
            p.at(f, key("source"), "must not be empty");
        }
        if t.destination.is_empty() {
            p.at(f, key("destination"), "must not be empty");
        } else if let Some(j) = specs.iter().position(|s| s.destination == destination) {
            p.at(
                f,
                key("destination"),
                format!(
                    "{} is already the destination of `templates[{j}]`",
                    destination.display()
                ),
            );
        }
        let perms = match &t.perms {
            None => DEFAULT_TEMPLATE_PERMS,
            Some(RawPerms::Number(n)) => *n,
            Some(RawPerms::Octal(s)) => u32::from_str_radix(s, 8).unwrap_or(u32::MAX),
        };
        if perms > 0o7777 {
            p.at(
                f,
                key("perms"),
                "expected a file mode such as \"0644\" or 0o644",
            );
        }
        let wait = t.wait.as_ref().map(|w| Wait {
            min: w.min.0,
            max: w.max.map_or(w.min.0 * 4, |m| m.0),
        });
        if let Some(w) = wait
            && w.max < w.min
        {
            p.at(f, key("wait.max"), "must not be less than `wait.min`");
        }
        let command_timeout = t.command_timeout.map_or(DEFAULT_COMMAND_TIMEOUT, |d| d.0);
        if command_timeout.is_zero() {
            p.at(f, key("command_timeout"), "must be greater than zero");
        }
        if t.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            p.at(f, key("command"), "must not be empty");
        }
        specs.push(TemplateSpec {
            name: t.source.as_str().into(),
            source: super::absolute(&relative_to(f, &t.source)),
            included: included.iter().any(|inc| **inc == *destination),
            destination,
            perms,
            backup: t.backup,
            command: t.command.clone(),
            command_timeout,
            wait: wait.filter(|w| !w.min.is_zero()),
            error_on_missing_key: t.error_on_missing_key,
        });
    }
    specs
}

/// The `[consul]` section, or its defaults when only backends use Consul.
/// The address comes from the file, else CONSUL_HTTP_ADDR, else the default.
fn check_consul(
    f: &Arc<Path>,
    raw: Option<&RawConsul>,
    used: bool,
    p: &mut Problems,
) -> Option<ConsulSpec> {
    if raw.is_none() && !used {
        return None;
    }
    let default = RawConsul::default();
    let r = raw.unwrap_or(&default);
    let (address, key) = match &r.address {
        Some(a) => (a.clone(), "consul.address"),
        None => match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(a) if !a.is_empty() => (a, "consul.address (from CONSUL_HTTP_ADDR)"),
            _ => (DEFAULT_CONSUL_ADDRESS.to_string(), "consul.address"),
        },
    };
    // CONSUL_HTTP_ADDR is often written without a scheme.
    let address = if address.contains("://") {
        address
    } else {
        format!("http://{address}")
    };
    let address = address.trim_end_matches('/').to_string();
    match address.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some()
                && uri.path() == "/" => {}
        _ => p.at(
            f,
            key,
            format!("{address:?} is not a Consul address; expected \"http://host:port\" or \"https://host:port\""),
        ),
    }
    let relative = |path: &str| relative_to(f, path);
    let pick = |v: &Option<ConfigDuration>, default: Duration| v.map_or(default, |v| v.0);
    let spec = ConsulSpec {
        address,
        token_file: r.token_file.as_deref().map(relative),
        ca_file: r.ca_file.as_deref().map(relative),
        datacenter: r.datacenter.clone(),
        stale: r.stale.unwrap_or(true),
        max_stale: pick(&r.max_stale, DEFAULT_CONSUL_MAX_STALE),
        cached: r.cached.unwrap_or(false),
        wait: pick(&r.wait, DEFAULT_CONSUL_WAIT),
        state_file: r.state_file.as_deref().map(relative),
        retry_min: pick(&r.retry_min, DEFAULT_CONSUL_RETRY_MIN),
        retry_max: pick(&r.retry_max, DEFAULT_CONSUL_RETRY_MAX),
        change_jitter: pick(&r.change_jitter, DEFAULT_CONSUL_CHANGE_JITTER),
        empty_confirm_wait: pick(&r.empty_confirm_wait, DEFAULT_CONSUL_EMPTY_CONFIRM_WAIT),
    };
    if spec.wait.is_zero() || spec.wait > Duration::from_secs(600) {
        p.at(
            f,
            "consul.wait",
            "must be between 1ms and 10m (Consul's cap)",
        );
    }
    if spec.retry_min.is_zero() {
        p.at(f, "consul.retry_min", "must be greater than zero");
    }
    if spec.retry_max < spec.retry_min {
        p.at(f, "consul.retry_max", "must not be less than `retry_min`");
    }
    if spec.change_jitter > spec.wait {
        p.at(
            f,
            "consul.change_jitter",
            "must not exceed `wait` (it delays the next blocking query, not the change)",
        );
    }
    if spec.empty_confirm_wait.is_zero() || spec.empty_confirm_wait > Duration::from_secs(600) {
        p.at(
            f,
            "consul.empty_confirm_wait",
            "must be between 1ms and 10m (Consul's cap)",
        );
    }
    Some(spec)
}

/// The `[resolver]` section.
fn check_resolver(f: &Arc<Path>, r: &RawResolver, p: &mut Problems) -> ResolverSpec {
    let d = ResolverSpec::default();
    let pick = |v: &Option<ConfigDuration>, default: Duration| v.map_or(default, |v| v.0);
    let spec = ResolverSpec {
        nameservers: r.nameservers.as_ref().map(|list| {
            if list.is_empty() {
                p.at(
                    f,
                    "resolver.nameservers",
                    "list at least one nameserver, or leave the key out to use /etc/resolv.conf",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, ns)| {
                    parse_nameserver(ns)
                        .map_err(|e| p.at(f, format!("resolver.nameservers[{i}]"), e))
                        .ok()
                })
                .collect()
        }),
        min_ttl: pick(&r.min_ttl, d.min_ttl),
        max_ttl: pick(&r.max_ttl, d.max_ttl),
        hold_valid: pick(&r.hold_valid, d.hold_valid),
        hold_nx: pick(&r.hold_nx, d.hold_nx),
        timeout: pick(&r.timeout, d.timeout),
        attempts: r.attempts.unwrap_or(d.attempts),
        retry_min: pick(&r.retry_min, d.retry_min),
        retry_max: pick(&r.retry_max, d.retry_max),
    };
    for (key, v) in [
        ("resolver.min_ttl", spec.min_ttl),
        ("resolver.timeout", spec.timeout),
        ("resolver.retry_min", spec.retry_min),
    ] {
        if v.is_zero() {
            p.at(f, key, "must be greater than zero");
        }
    }
    if spec.max_ttl < spec.min_ttl {
        p.at(f, "resolver.max_ttl", "must not be less than `min_ttl`");
    }
    if spec.retry_max < spec.retry_min {
        p.at(f, "resolver.retry_max", "must not be less than `retry_min`");
    }
    if !(1..=10).contains(&spec.attempts) {
        p.at(f, "resolver.attempts", "must be between 1 and 10");
    }
    spec
}

/// `"ip:port"`, or `"ip"` for port 53.
fn parse_nameserver(ns: &str) -> Result<SocketAddr, String> {
    ns.parse::<SocketAddr>()
        .or_else(|_| {
            ns.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{ns:?} is not a nameserver address; expected \"ip:port\" or \"ip\""))
}

fn check_respond(
    f: &Arc<Path>,
    key: &str,
    r: &RawRespond,
    p: &mut Problems,
) -> Option<RespondSpec> {
    let before = p.0.len();
    let status = match StatusCode::from_u16(r.status.unwrap_or(200)) {
        Ok(s) => s,
        Err(_) => {
            p.at(
                f,
                format!("{key}.respond.status"),
                "must be an HTTP status, 100 to 999",
            );
            StatusCode::OK
        }
    };
    let mut headers = Vec::with_capacity(r.headers.len());
    for (name, value) in &r.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => p.at(
                f,
                format!("{key}.respond.headers.{name}"),
                "not a valid header name and value",
            ),
        }
    }
    (p.0.len() == before).then(|| RespondSpec {
        status,
        body: Bytes::from(r.body.clone().unwrap_or_default()),
        headers,
    })
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a bind address; expected \"ip:port\" such as \"127.0.0.1:8080\"")
    })
}

fn parse_host(s: &str) -> Result<HostPattern, String> {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let valid_label_chars = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
    };
    if lower.is_empty() || lower == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if valid_label_chars(suffix) && !suffix.contains('*') {
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
    } else if valid_label_chars(&lower) {
        return Ok(HostPattern::Exact(lower));
    }
    Err(format!(
        "{s:?} is not a host pattern; expected \"example.com\" or \"*.example.com\" (no port)"
    ))
}

/// A listener's `access_log`: its format, where it goes, how much of it.
fn check_access_log(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    p: &mut Problems,
) -> Option<crate::access_log::AccessLogSpec> {
    use crate::access_log::{AccessLogSpec, Format, Only, Sink};
    let raw = l.access_log.as_ref()?;
    let before = p.0.len();
    let format = match Format::parse(raw.format.as_deref().unwrap_or("json")) {
        Ok(format) => Some(format),
        Err(e) => {
            p.at(f, format!("{key}.access_log.format"), e.to_string());
            None
        }
    };
    let sink = match raw.path.as_deref() {
        None | Some("-") => Sink::Stdout,
        Some("") => {
            p.at(
                f,
                format!("{key}.access_log.path"),
                "empty path; \"-\" is standard output",
            );
            Sink::Stdout
        }
        Some(path) => {
            let file = super::absolute(&relative_to(f, path));
            if let Err(e) = crate::access_log::writer::check_path(&file) {
                p.at(f, format!("{key}.access_log.path"), e);
            }
            Sink::File(file)
        }
    };
    let sample = raw.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        p.at(
            f,
            format!("{key}.access_log.sample"),
            "must be from 0.0 to 1.0",
        );
    }
    let only = match raw.only {
        None | Some(RawOnly::All) => Only::All,
        Some(RawOnly::Errors) => Only::Errors,
    };
    (p.0.len() == before).then_some(AccessLogSpec {
        format: format?,
        sink,
        sample,
        only,
    })
}

/// A listener's request ID header (on by default for HTTP) and whether it
/// starts traces.
fn check_request_ids(
    f: &Arc<Path>,
    key: &str,
    l: &RawListener,
    p: &mut Problems,
) -> (Option<http::HeaderName>, bool) {
    let http = l.mode.inner() == Mode::Http;
    if !http {
        if l.request_id.is_some() {
            p.at(
                f,
                format!("{key}.request_id"),
                "request IDs are for http listeners",
            );
        }
        if l.trace_context.is_some() {
            p.at(
                f,
                format!("{key}.trace_context"),
                "trace context is for http listeners",
            );
        }
        return (None, false);
    }
    let start = l
        .trace_context
        .as_ref()
        .and_then(|t| t.start)
        .unwrap_or(false);
    let raw = l.request_id.as_ref();
    if raw.and_then(|r| r.enabled) == Some(false) {
        return (None, start);
    }
    let name = raw
        .and_then(|r| r.header.as_deref())
        .unwrap_or("x-request-id");
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(header) if !crate::headers::is_hop_by_hop(&header) => (Some(header), start),
        Ok(_) => {
            p.at(
                f,
                format!("{key}.request_id.header"),
                "a hop-by-hop header cannot carry it",
            );
            (None, start)
        }
        Err(_) => {
            p.at(
                f,
                format!("{key}.request_id.header"),
                format!("`{name}` is not a header name"),
            );
            (None, start)
        }
    }
}
