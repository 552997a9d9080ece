//! Prometheus registry and the metric handles the data plane increments.
//!
//! Label lookups (`with_label_values`) take a lock inside the prometheus
//! crate, so they happen when a table is compiled, never per request: the
//! compiled table holds ready handles ([`RequestMetrics`], [`ListenerMetrics`])
//! and the hot path only does atomic adds. Per-endpoint gauges are not kept as
//! series at all; [`LiveCollector`] reads them from the live table at
//! scrape time, so endpoints that leave leave no stale series behind.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Request duration buckets in seconds, from sub-millisecond loopback hops to
/// slow upstreams.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
#[error("registering metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric family Switchyard exports, registered once per process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_connect_errors: IntCounterVec,
    listener_connections: IntGaugeVec,
    listener_connections_total: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_bytes: IntCounterVec,
    pub config_version: IntGauge,
    config_reloads: IntCounterVec,
    upgrades: IntCounterVec,
    /// Connections the process this one replaced still serves.
    pub upgrade_predecessor_connections: IntGauge,
    /// DNS lookups by name and result; incremented by the resolver tasks
    /// (a few per TTL, so resolving the label set each time is fine).
    pub dns_lookups: IntCounterVec,
    /// Endpoint sets replaced by discovery (DNS or Consul), one per backend
    /// per applied change: how many rebuilds a burst of changes caused.
    pub discovery_updates: IntCounter,
    /// Template renders by template and result (written, unchanged, held,
    /// error, rejected: an included output whose reload was rejected).
    pub template_renders: IntCounterVec,
    /// Template commands by template and result (success, failure, timeout).
    pub template_commands: IntCounterVec,
    /// Health checks by backend and result (success, failure).
    pub health_checks: IntCounterVec,
    /// Connections served by each data-plane worker.
    pub worker_connections: IntCounterVec,
    upstream_retries: IntCounterVec,
    outlier_ejections: IntCounterVec,
    /// Connections over a listener's `max_connections` that waited past
    /// `queue_timeout` and were turned away.
    listener_rejected: IntCounterVec,
    client_stalls: IntCounterVec,
    upstream_stalls: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    tls_sni_fallbacks: IntCounterVec,
    tls_certificate_expiry: IntGaugeVec,
    proxy_protocol_failures: IntCounterVec,
    access_log_lines: IntCounterVec,
    access_log_dropped: IntCounterVec,
}

/// A listener's PROXY header refusals, by reason.
pub struct ProxyProtocolFailures([IntCounter; 4]);

impl ProxyProtocolFailures {
    pub fn count(&self, refused: crate::proxy::proxy_protocol::HeaderRefused) {
        use crate::proxy::proxy_protocol::HeaderRefused;
        let i = HeaderRefused::REASONS
            .iter()
            .position(|r| *r == refused.reason())
            .unwrap_or(0);
        self.0[i].inc();
    }
}

/// The reasons of `switchyard_tls_handshake_failures_total`, in the order
/// of [`TlsMetrics::failures`].
pub const TLS_FAILURE_REASONS: [&str; 5] =
    ["timeout", "plain_http", "not_tls", "closed", "handshake"];

/// Counters of one TLS listener, resolved when its table is compiled.
pub struct TlsMetrics {
    /// By version (1.2, 1.3) and then resumed (no, yes).
    pub handshakes: [[IntCounter; 2]; 2],
    /// By [`TLS_FAILURE_REASONS`].
    pub failures: [IntCounter; 5],
}

impl TlsMetrics {
    pub fn failure(&self, reason: &str) {
        if let Some(i) = TLS_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.failures[i].inc();
        }
    }
}

/// Counters of one backend, resolved once per compiled backend.
#[derive(Clone)]
pub struct BackendCounters {
    pub connect_errors: IntCounter,
    /// Retries after a failed connect (never reached a server, outside the
    /// retry budget) and after a broken exchange (within it).
    pub retries_after_connect: IntCounter,
    pub retries_after_reset: IntCounter,
    /// Ejections after failed connects, and after failed requests.
    pub ejected_connect: IntCounter,
    pub ejected_failing: IntCounter,
}

impl BackendCounters {
    pub fn retries(&self, after_connect: bool) -> &IntCounter {
        if after_connect {
            &self.retries_after_connect
        } else {
            &self.retries_after_reset
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_http_requests_total",
                "HTTP requests answered, by listener, backend and status class",
            ),
            &["listener", "backend", "class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_http_request_duration_seconds",
                "Time from request head to the end of the response body",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["listener", "backend"],
        )?;
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_connect_errors_total",
                "Failed or timed out connection attempts to a backend's servers",
            ),
            &["backend"],
        )?;
        let listener_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_listener_active_connections",
                "Client connections open on a listener",
            ),
            &["listener"],
        )?;
        let listener_connections_total = IntCounterVec::new(
            Opts::new(
                "switchyard_listener_connections_total",
                "Client connections accepted by a listener",
            ),
            &["listener"],
        )?;
        let received_bytes = IntCounterVec::new(
            Opts::new(
                "switchyard_listener_received_bytes_total",
                "Bytes read from clients",
            ),
            &["listener"],
        )?;
        let sent_bytes = IntCounterVec::new(
            Opts::new(
                "switchyard_listener_sent_bytes_total",
                "Bytes written to clients",
            ),
            &["listener"],
        )?;
        let config_version = IntGauge::new(
            "switchyard_config_version",
            "Version of the routing table in use; grows by one per applied change",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Config reload attempts by result (success, failure)",
            ),
            &["result"],
        )?;
        let upgrades = IntCounterVec::new(
            Opts::new(
                "switchyard_upgrades_total",
                "Binary upgrades this process started, by result (success, failure)",
            ),
            &["result"],
        )?;
        let upgrade_predecessor_connections = IntGauge::new(
            "switchyard_upgrade_predecessor_connections",
            "Connections the process this one replaced by a binary upgrade still serves while it drains (0 when none)",
        )?;
        let dns_lookups = IntCounterVec::new(
            Opts::new(
                "switchyard_dns_lookups_total",
                "DNS lookups of backend names by result (success, nxdomain, no_records, timeout, servfail, error)",
            ),
            &["name", "result"],
        )?;
        registry.register(Box::new(dns_lookups.clone()))?;
        let discovery_updates = IntCounter::new(
            "switchyard_discovery_updates_total",
            "Backend endpoint sets replaced because DNS or Consul data changed",
        )?;
        registry.register(Box::new(discovery_updates.clone()))?;
        let template_renders = IntCounterVec::new(
            Opts::new(
                "switchyard_template_renders_total",
                "Template renders by result (written, unchanged, held, error, rejected)",
            ),
            &["template", "result"],
        )?;
        registry.register(Box::new(template_renders.clone()))?;
        let template_commands = IntCounterVec::new(
            Opts::new(
                "switchyard_template_commands_total",
                "Template commands run after a changed render, by result (success, failure, timeout)",
            ),
            &["template", "result"],
        )?;
        registry.register(Box::new(template_commands.clone()))?;
        let health_checks = IntCounterVec::new(
            Opts::new(
                "switchyard_health_checks_total",
                "Active health checks by backend and result (success, failure)",
            ),
            &["backend", "result"],
        )?;
        registry.register(Box::new(health_checks.clone()))?;
        let worker_connections = IntCounterVec::new(
            Opts::new(
                "switchyard_worker_connections_total",
                "Client connections served, by data-plane worker (after accepted connections are balanced over the workers)",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(worker_connections.clone()))?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_retries_total",
                "Requests sent again to another endpoint, by cause (connect: a failed connect, reset: a broken exchange)",
            ),
            &["backend", "reason"],
        )?;
        registry.register(Box::new(upstream_retries.clone()))?;
        let outlier_ejections = IntCounterVec::new(
            Opts::new(
                "switchyard_outlier_ejections_total",
                "Endpoints ejected, by reason (connect_failures, failing_requests)",
            ),
            &["backend", "reason"],
        )?;
        registry.register(Box::new(outlier_ejections.clone()))?;
        let listener_rejected = IntCounterVec::new(
            Opts::new(
                "switchyard_listener_rejected_connections_total",
                "Connections over max_connections turned away after queue_timeout",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(listener_rejected.clone()))?;
        let client_stalls = IntCounterVec::new(
            Opts::new(
                "switchyard_client_stalls_total",
                "Exchanges cut because the client took no response byte, or sent no request body byte, for client_stall",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(client_stalls.clone()))?;
        let upstream_stalls = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_stalls_total",
                "Responses cut because the upstream sent no body byte for upstream_stall",
            ),
            &["listener", "backend"],
        )?;
        registry.register(Box::new(upstream_stalls.clone()))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_handshakes_total",
                "TLS handshakes completed on a listener, by protocol version and whether the session was resumed",
            ),
            &["listener", "version", "resumed"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_handshake_failures_total",
                "Connections to a TLS listener that did not become a TLS session, by reason (timeout, plain_http, not_tls, closed, handshake)",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        let tls_sni_fallbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_sni_fallbacks_total",
                "Handshakes whose SNI was absent or named no certificate: given the default certificate, or refused",
            ),
            &["listener", "outcome"],
        )?;
        registry.register(Box::new(tls_sni_fallbacks.clone()))?;
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "switchyard_tls_certificate_expiry_timestamp_seconds",
                "When each certificate in use expires, in seconds since the Unix epoch",
            ),
            &["listener", "cert_file", "name"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        let proxy_protocol_failures = IntCounterVec::new(
            Opts::new(
                "switchyard_proxy_protocol_failures_total",
                "Connections closed because their PROXY header was refused: untrusted source, timeout, closed, malformed",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(proxy_protocol_failures.clone()))?;
        let access_log_lines = IntCounterVec::new(
            Opts::new(
                "switchyard_access_log_lines_total",
                "Access log lines written",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(access_log_lines.clone()))?;
        let access_log_dropped = IntCounterVec::new(
            Opts::new(
                "switchyard_access_log_dropped_total",
                "Access log lines dropped: queue_full (the writer could not keep up) or write_error (full disk, closed pipe, file that cannot be opened)",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_connect_errors.clone()))?;
        registry.register(Box::new(listener_connections.clone()))?;
        registry.register(Box::new(listener_connections_total.clone()))?;
        registry.register(Box::new(received_bytes.clone()))?;
        registry.register(Box::new(sent_bytes.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        // Both results exist from the start so `rate()` works before the first failure.
        config_reloads.with_label_values(&["success"]);
        config_reloads.with_label_values(&["failure"]);
        registry.register(Box::new(upgrades.clone()))?;
        registry.register(Box::new(upgrade_predecessor_connections.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_connect_errors,
            listener_connections,
            listener_connections_total,
            received_bytes,
            sent_bytes,
            config_version,
            config_reloads,
            upgrades,
            upgrade_predecessor_connections,
            dns_lookups,
            discovery_updates,
            template_renders,
            template_commands,
            health_checks,
            worker_connections,
            upstream_retries,
            outlier_ejections,
            listener_rejected,
            client_stalls,
            upstream_stalls,
            tls_handshakes,
            tls_handshake_failures,
            tls_sni_fallbacks,
            tls_certificate_expiry,
            proxy_protocol_failures,
            access_log_lines,
            access_log_dropped,
        })
    }

    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), MetricsError> {
        Ok(self.registry.register(collector)?)
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn upgrade(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.upgrades.with_label_values(&[result]).inc();
    }

    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            active: self.listener_connections.with_label_values(&[listener]),
            accepted: self
                .listener_connections_total
                .with_label_values(&[listener]),
            received_bytes: self.received_bytes.with_label_values(&[listener]),
            sent_bytes: self.sent_bytes.with_label_values(&[listener]),
            rejected: self.listener_rejected.with_label_values(&[listener]),
            client_stalls: self.client_stalls.with_label_values(&[listener]),
        }
    }

    pub fn tls(&self, listener: &str) -> TlsMetrics {
        let handshakes = |version| {
            [
                self.tls_handshakes
                    .with_label_values(&[listener, version, "false"]),
                self.tls_handshakes
                    .with_label_values(&[listener, version, "true"]),
            ]
        };
        TlsMetrics {
            handshakes: [handshakes("1.2"), handshakes("1.3")],
            failures: TLS_FAILURE_REASONS.map(|reason| {
                self.tls_handshake_failures
                    .with_label_values(&[listener, reason])
            }),
        }
    }

    pub fn access_log(&self, listener: &str) -> crate::access_log::AccessLogCounters {
        crate::access_log::AccessLogCounters {
            lines: self.access_log_lines.with_label_values(&[listener]),
            dropped_queue_full: self
                .access_log_dropped
                .with_label_values(&[listener, "queue_full"]),
            dropped_write_error: self
                .access_log_dropped
                .with_label_values(&[listener, "write_error"]),
        }
    }

    pub fn proxy_protocol_failures(&self, listener: &str) -> ProxyProtocolFailures {
        use crate::proxy::proxy_protocol::HeaderRefused;
        ProxyProtocolFailures(HeaderRefused::REASONS.map(|reason| {
            self.proxy_protocol_failures
                .with_label_values(&[listener, reason])
        }))
    }

    pub fn tls_sni_counters(&self, listener: &str) -> crate::tls::SniCounters {
        crate::tls::SniCounters {
            defaulted: self
                .tls_sni_fallbacks
                .with_label_values(&[listener, "default"]),
            refused: self
                .tls_sni_fallbacks
                .with_label_values(&[listener, "refused"]),
        }
    }

    /// Sets the expiry series to the certificates of `config`'s listeners,
    /// and only those.
    pub fn set_certificates(&self, config: &crate::config::Config) {
        self.tls_certificate_expiry.reset();
        for listener in &config.listeners {
            for cert in listener.tls.iter().flat_map(|t| &t.certs) {
                let file = cert.cert_file.display().to_string();
                let name = cert.names.first().map_or("", String::as_str);
                self.tls_certificate_expiry
                    .with_label_values(&[&*listener.name, &file, name])
                    .set(cert.not_after);
            }
        }
    }

    /// Handles for requests of `listener` answered by `backend` (empty when
    /// Switchyard answered itself, e.g. no route).
    pub fn requests(&self, listener: &str, backend: &str) -> RequestMetrics {
        let class = |c| self.requests.with_label_values(&[listener, backend, c]);
        RequestMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self
                .request_duration
                .with_label_values(&[listener, backend]),
            upstream_stalls: self.upstream_stalls.with_label_values(&[listener, backend]),
        }
    }

    pub fn backend_counters(&self, backend: &str) -> BackendCounters {
        BackendCounters {
            connect_errors: self.upstream_connect_errors.with_label_values(&[backend]),
            retries_after_connect: self
                .upstream_retries
                .with_label_values(&[backend, "connect"]),
            retries_after_reset: self.upstream_retries.with_label_values(&[backend, "reset"]),
            ejected_connect: self
                .outlier_ejections
                .with_label_values(&[backend, "connect_failures"]),
            ejected_failing: self
                .outlier_ejections
                .with_label_values(&[backend, "failing_requests"]),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure here would be a
        // malformed metric, which we report in the body instead of panicking.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Per-listener handles, taken once per connection.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: IntGauge,
    pub accepted: IntCounter,
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
    pub rejected: IntCounter,
    /// Exchanges cut because the client stopped reading or sending.
    pub client_stalls: IntCounter,
}

/// Per (listener, backend) handles, resolved when a table is compiled.
pub struct RequestMetrics {
    by_class: [IntCounter; 5],
    pub duration: prometheus::Histogram,
    /// Responses cut because the upstream stopped sending the body.
    pub upstream_stalls: IntCounter,
}

impl RequestMetrics {
    pub fn count(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
    }
}

/// One endpoint's gauges as seen at scrape time.
pub struct EndpointSample {
    pub backend: Arc<str>,
    pub addr: String,
    pub active: i64,
    pub healthy: bool,
    pub draining: bool,
}

/// Everything read from the live table when Prometheus scrapes.
#[derive(Default)]
pub struct LiveSample {
    pub endpoints: Vec<EndpointSample>,
    /// Endpoints per backend in the current set.
    pub backends: Vec<(Arc<str>, i64)>,
    /// Per watched DNS name: its addresses now and seconds since they last
    /// changed (`None` before the first answer).
    pub dns: Vec<DnsSample>,
    /// Per Consul watch: its display key, whether its last request
    /// succeeded, and seconds since its last successful answer.
    pub consul: Vec<(String, bool, f64)>,
    /// Per mDNS watch.
    pub mdns: Vec<MdnsSample>,
}

pub struct MdnsSample {
    pub service: String,
    pub instances: i64,
    /// `None` before the instances first changed.
    pub seconds_since_change: Option<f64>,
    pub seconds_since_answer: f64,
}

pub struct DnsSample {
    pub name: String,
    pub addresses: i64,
    pub seconds_since_change: Option<f64>,
}

/// Gauges read from a live source at scrape time, so that series of
/// endpoints, backends and names that left disappear with them.
pub struct LiveCollector<F> {
    descs: Vec<Desc>,
    sample: F,
}

/// (name, help, labels) of every family the live collector exports.
const LIVE_FAMILIES: &[(&str, &str, &[&str])] = &[
    (
        "switchyard_endpoint_active_connections",
        "Requests (HTTP) or connections (TCP) in flight to an endpoint",
        &["backend", "endpoint"],
    ),
    (
        "switchyard_endpoint_up",
        "1 when an endpoint may receive new traffic",
        &["backend", "endpoint"],
    ),
    (
        "switchyard_backend_endpoints",
        "Endpoints in a backend's current set (static, DNS and discovered)",
        &["backend"],
    ),
    (
        "switchyard_dns_addresses",
        "Addresses in a watched DNS name's current answer (0 when none is held)",
        &["name"],
    ),
    (
        "switchyard_dns_seconds_since_change",
        "Seconds since a watched DNS name's answer last changed",
        &["name"],
    ),
    (
        "switchyard_discovery_staleness_seconds",
        "Seconds since a Consul watch last got an answer: alert on stale routing",
        &["watch"],
    ),
    (
        "switchyard_consul_up",
        "1 when the last request of every Consul watch succeeded",
        &[],
    ),
    (
        "switchyard_mdns_instances",
        "Instances of a watched mDNS service (go-micro or DNS-SD) now",
        &["service"],
    ),
    (
        "switchyard_mdns_seconds_since_change",
        "Seconds since a watched mDNS service's instances last changed",
        &["service"],
    ),
    (
        "switchyard_mdns_staleness_seconds",
        "Seconds since a packet last told anything about a watched mDNS service",
        &["service"],
    ),
];

impl<F: Fn() -> LiveSample + Send + Sync> LiveCollector<F> {
    pub fn new(sample: F) -> Result<Self, MetricsError> {
        let descs = LIVE_FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).into(),
                    (*help).into(),
                    labels.iter().map(|l| (*l).to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { descs, sample })
    }
}

impl<F: Fn() -> LiveSample + Send + Sync> Collector for LiveCollector<F> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let int_family = |i: usize| {
            let (name, help, labels) = LIVE_FAMILIES[i];
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let (Ok(active), Ok(up), Ok(backends), Ok(addresses)) =
            (int_family(0), int_family(1), int_family(2), int_family(3))
        else {
            return Vec::new();
        };
        let float_family = |i: usize| {
            let (name, help, labels) = LIVE_FAMILIES[i];
            prometheus::GaugeVec::new(Opts::new(name, help), labels)
        };
        let (Ok(since_change), Ok(staleness), Ok(consul_up)) =
            (float_family(4), float_family(5), int_family(6))
        else {
            return Vec::new();
        };
        let (Ok(mdns_instances), Ok(mdns_since_change), Ok(mdns_staleness)) =
            (int_family(7), float_family(8), float_family(9))
        else {
            return Vec::new();
        };
        let sample = (self.sample)();
        for s in &sample.endpoints {
            let labels = [&*s.backend, s.addr.as_str()];
            active.with_label_values(&labels).add(s.active);
            up.with_label_values(&labels)
                .set(i64::from(s.healthy && !s.draining));
        }
        for (backend, count) in &sample.backends {
            backends.with_label_values(&[&**backend]).set(*count);
        }
        for d in &sample.dns {
            addresses.with_label_values(&[&d.name]).set(d.addresses);
            if let Some(secs) = d.seconds_since_change {
                since_change.with_label_values(&[&d.name]).set(secs);
            }
        }
        for (watch, _, secs) in &sample.consul {
            staleness.with_label_values(&[watch]).set(*secs);
        }
        if !sample.consul.is_empty() {
            let all_ok = sample.consul.iter().all(|(_, ok, _)| *ok);
            consul_up
                .with_label_values::<&str>(&[])
                .set(i64::from(all_ok));
        }
        for m in &sample.mdns {
            let labels = [m.service.as_str()];
            mdns_instances.with_label_values(&labels).set(m.instances);
            if let Some(secs) = m.seconds_since_change {
                mdns_since_change.with_label_values(&labels).set(secs);
            }
            mdns_staleness
                .with_label_values(&labels)
                .set(m.seconds_since_answer);
        }
        let mut families = active.collect();
        families.extend(up.collect());
        families.extend(backends.collect());
        families.extend(addresses.collect());
        families.extend(since_change.collect());
        families.extend(staleness.collect());
        families.extend(consul_up.collect());
        families.extend(mdns_instances.collect());
        families.extend(mdns_since_change.collect());
        families.extend(mdns_staleness.collect());
        families
    }
}

/// Tokio's count of alive tasks on each of the process's runtimes (the
/// control plane's and each worker's), read at scrape time: under steady
/// load it stays flat, so a count that climbs with uptime is a task leak
/// (the soak, bench/soak.rs, watches it).
pub struct RuntimeCollector {
    desc: Desc,
    runtimes: Vec<(String, tokio::runtime::Handle)>,
}

/// Name and help of the runtime task gauge.
const RUNTIME_TASKS: (&str, &str) = (
    "switchyard_runtime_tasks",
    "Tasks alive on a tokio runtime of the process",
);

impl RuntimeCollector {
    /// `runtimes`: a label (`control`, `worker-0`, ...) and a handle each.
    pub fn new(runtimes: Vec<(String, tokio::runtime::Handle)>) -> Result<Self, MetricsError> {
        let desc = Desc::new(
            RUNTIME_TASKS.0.into(),
            RUNTIME_TASKS.1.into(),
            vec!["runtime".into()],
            Default::default(),
        )?;
        Ok(Self { desc, runtimes })
    }
}

impl Collector for RuntimeCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(tasks) = IntGaugeVec::new(Opts::new(RUNTIME_TASKS.0, RUNTIME_TASKS.1), &["runtime"])
        else {
            return Vec::new();
        };
        for (name, handle) in &self.runtimes {
            let alive = handle.metrics().num_alive_tasks();
            tasks
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        tasks.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauge follows the runtime's live tasks: up while tasks wait,
    /// back down once they end.
    #[test]
    fn runtime_tasks_follow_the_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Metrics::new().unwrap();
        let runtimes = vec![("worker-0".to_string(), runtime.handle().clone())];
        metrics
            .register(Box::new(RuntimeCollector::new(runtimes).unwrap()))
            .unwrap();
        let series = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("switchyard_runtime_tasks{runtime=\"worker-0\"} "))
                .map(|v| v.parse::<i64>().unwrap())
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting: Vec<_> = (0..3)
            .map(|_| runtime.spawn(std::future::pending::<()>()))
            .collect();
        let ender = runtime.spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(series(&metrics.render()), Some(4));
        for task in &waiting {
            task.abort();
        }
        tx.send(()).unwrap();
        runtime.block_on(async {
            let _ = ender.await;
            for task in waiting {
                let _ = task.await;
            }
        });
        assert_eq!(series(&metrics.render()), Some(0));
    }
}
