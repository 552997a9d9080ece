//! The `/status` document: the live table and the control plane's records.
//!
//! Built on each request from the published table and the status board;
//! the status page (`admin/ui`) polls it and renders what it gets, so
//! every rule the page shows (a backend's `state`, say) is decided here.

use serde::Serialize;

use super::{BoardState, ReloadRecord};
use crate::config::{BackendTarget, Balance, Protocol, RouteSpec};
use crate::table::{Backend, Table};
use crate::upstream::health::EjectReason;
use crate::upstream::select::Origin;
use crate::upstream::state::EndpointState;

#[derive(Serialize)]
pub struct Status<'a> {
    pub version: u64,
    pub config_files: Vec<String>,
    pub shutting_down: bool,
    /// Where this process stands in a binary upgrade, and the last one.
    pub pid: u32,
    pub upgrade: &'a super::UpgradeState,
    pub last_upgrade: Option<&'a super::UpgradeRecord>,
    /// The process this one replaced, while it drains.
    pub predecessor: Option<&'a super::PredecessorStatus>,
    pub last_reload: Option<&'a ReloadRecord>,
    pub last_failure: Option<&'a ReloadRecord>,
    /// The latest reload attempts (at most [`super::RELOAD_HISTORY`]),
    /// newest first, failures included.
    pub reloads: Vec<&'a ReloadRecord>,
    pub listeners: Vec<ListenerStatus>,
    pub backends: Vec<BackendStatus>,
    /// Endpoints that left their backend and still have work in flight.
    pub draining_endpoints: Vec<EndpointStatus>,
    /// Discovery watches (DNS, Consul, mDNS); none in a static config.
    pub watches: Vec<serde_json::Value>,
    /// Templates: state, what a held one waits for, last error and command.
    pub templates: &'a [crate::template::TemplateStatus],
    pub kv_dir: Option<&'a super::templating::KvDirStatus>,
    /// Backends gateway routes made on demand, by service.
    pub gateway_backends: Vec<BackendStatus>,
    /// Services registered in Consul or announced by mDNS.
    pub registrations: Vec<crate::discovery::register::RegistrationStatus>,
}

#[derive(Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub bind: String,
    pub local_addr: Option<String>,
    /// `http`, `https`, `tcp` or `tls`.
    pub mode: &'static str,
    pub default_backend: Option<String>,
    /// How many routes the listener has (`route_list` has them).
    pub routes: usize,
    /// The routes, in the order they are written.
    pub route_list: Vec<RouteStatus>,
    pub max_connections: Option<usize>,
    pub active_connections: i64,
    /// For `https` and `tls` listeners: the certificates new handshakes get.
    pub tls: Option<TlsStatus>,
}

/// One route of a listener.
#[derive(Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    /// The host pattern: `*` for any host, `*.example.com` for a suffix.
    pub host: String,
    pub path: String,
    pub backend: String,
}

#[derive(Serialize)]
pub struct TlsStatus {
    pub min_version: &'static str,
    pub unknown_sni: &'static str,
    pub sni_host_check: bool,
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Serialize)]
pub struct CertificateStatus {
    pub cert_file: String,
    pub key_file: String,
    pub names: Vec<String>,
    pub not_after: String,
}

fn tls_status(spec: &crate::tls::TlsServerSpec) -> TlsStatus {
    TlsStatus {
        min_version: match spec.min_version {
            crate::tls::TlsVersion::V1_2 => "1.2",
            crate::tls::TlsVersion::V1_3 => "1.3",
        },
        unknown_sni: match spec.unknown_sni {
            crate::tls::UnknownSni::Default => "default",
            crate::tls::UnknownSni::Refuse => "refuse",
        },
        sni_host_check: spec.sni_host_check,
        certificates: spec
            .certs
            .iter()
            .map(|c| CertificateStatus {
                cert_file: c.cert_file.display().to_string(),
                key_file: c.key_file.display().to_string(),
                names: c.names.clone(),
                not_after: crate::tls::certs::rfc3339(c.not_after),
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub kind: &'static str,
    pub balance: &'static str,
    pub protocol: Protocol,
    /// `up`, `degraded` or `down`; see [`BackendState`].
    pub state: BackendState,
    pub endpoints: Vec<EndpointStatus>,
}

/// What a backend's endpoints add up to, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Every endpoint in rotation (healthy and not ejected); always for
    /// `respond` and gateway backends, which have no endpoints of their own.
    Up,
    /// Some endpoints in rotation, some unhealthy or ejected.
    Degraded,
    /// No endpoint in rotation, or none at all: every request to it fails,
    /// or goes to an endpoint known to fail.
    Down,
}

impl BackendState {
    /// `in_rotation` says, for each endpoint, whether it is healthy and not
    /// ejected. An ejected endpoint still gets trial requests (and every
    /// request when all are ejected), but it is failing: a backend whose
    /// every endpoint fails is down, never up.
    pub fn of(in_rotation: impl IntoIterator<Item = bool>) -> Self {
        let (mut up, mut out) = (0usize, 0usize);
        for ok in in_rotation {
            if ok {
                up += 1;
            } else {
                out += 1;
            }
        }
        match (up, out) {
            (0, _) => Self::Down,
            (_, 0) => Self::Up,
            _ => Self::Degraded,
        }
    }
}

#[derive(Serialize)]
pub struct EndpointStatus {
    pub backend: String,
    pub address: String,
    /// `None` for a draining endpoint: it left the set it came from.
    pub origin: Option<Origin>,
    pub weight: Option<u32>,
    pub healthy: bool,
    /// Out of rotation after failing connects or requests in a row
    /// (passive ejection); `ejection` says why and until when.
    pub ejected: bool,
    pub ejection: Option<EjectionStatus>,
    pub draining: bool,
    /// Requests (HTTP) or connections (TCP) in flight.
    pub active_connections: usize,
    /// Attempts sent to this endpoint since it appeared (retries each
    /// count), kept across reloads; the page's request rate is its change.
    pub requests_total: u64,
    /// Of those, the ones that failed: a failed connect, a broken or
    /// timed-out exchange, a 5xx answer.
    pub failures_total: u64,
    /// Active health checks, when the backend has them.
    pub health_checks: Option<CheckStatus>,
}

#[derive(Serialize)]
pub struct CheckStatus {
    pub checks: u64,
    pub successes_in_a_row: u32,
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
    /// The latest state changes: after which check, and to what.
    pub changes: Vec<CheckChange>,
}

#[derive(Serialize)]
pub struct EjectionStatus {
    pub reason: EjectReason,
    pub since: String,
    /// End of the period; the next request after it is a trial, whose
    /// success puts the endpoint back in rotation.
    pub until: String,
    /// Ejections in the current series (each period is longer).
    pub ejections: u32,
}

#[derive(Serialize)]
pub struct CheckChange {
    pub check: u64,
    pub healthy: bool,
}

impl EndpointStatus {
    fn of(state: &EndpointState, origin: Option<Origin>, weight: Option<u32>) -> Self {
        let record = state.record();
        let ejected = state.is_ejected();
        let time = |t| humantime::format_rfc3339_millis(t).to_string();
        let (requests_total, failures_total) = state.attempts();
        Self {
            backend: state.backend.to_string(),
            address: state.addr.to_string(),
            origin,
            weight,
            healthy: state.is_healthy(),
            ejected,
            ejection: record
                .ejection
                .as_ref()
                .filter(|_| ejected)
                .map(|e| EjectionStatus {
                    reason: e.reason,
                    since: time(e.since),
                    until: time(e.until),
                    ejections: record.ejections,
                }),
            draining: state.is_draining(),
            active_connections: state.active(),
            requests_total,
            failures_total,
            health_checks: record.checks.as_ref().map(|c| CheckStatus {
                checks: c.checks,
                successes_in_a_row: c.successes_in_a_row,
                failures_in_a_row: c.failures_in_a_row,
                last_error: c.last_error.clone(),
                changes: c
                    .changes
                    .iter()
                    .map(|&(check, healthy)| CheckChange { check, healthy })
                    .collect(),
            }),
        }
    }
}

pub fn build<'a>(table: &Table, board: &'a BoardState) -> Status<'a> {
    let listeners = table
        .listeners
        .iter()
        .map(|l| ListenerStatus {
            name: l.spec.name.to_string(),
            bind: l.spec.bind.to_string(),
            local_addr: board
                .listener_addrs
                .iter()
                .find(|(n, _)| *n == l.spec.name)
                .map(|(_, a)| a.to_string()),
            mode: l.spec.mode_name(),
            default_backend: l.spec.default_backend.as_deref().map(str::to_string),
            routes: table
                .config
                .routes
                .iter()
                .filter(|r| r.listener == l.spec.name)
                .count(),
            route_list: route_list(&table.config.routes, &l.spec.name),
            max_connections: l.spec.max_connections,
            active_connections: l.metrics.active.get(),
            tls: l.spec.tls.as_deref().map(tls_status),
        })
        .collect();
    let mut sorted: Vec<_> = table.backends.values().collect();
    sorted.sort_unstable_by(|a, b| a.name().cmp(b.name()));
    let backends = sorted.into_iter().map(|b| backend_status(b)).collect();
    Status {
        version: table.version,
        config_files: table
            .config
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        shutting_down: board.shutting_down,
        pid: std::process::id(),
        upgrade: &board.upgrade,
        last_upgrade: board.last_upgrade.as_ref(),
        predecessor: board.predecessor.as_ref(),
        last_reload: board.last_reload.as_ref(),
        last_failure: board.last_failure.as_ref(),
        reloads: board.reloads.iter().rev().collect(),
        listeners,
        backends,
        draining_endpoints: board
            .draining
            .iter()
            .map(|s| EndpointStatus::of(s, None, None))
            .collect(),
        watches: board
            .dns
            .iter()
            .filter_map(|n| serde_json::to_value(n.status()).ok())
            .chain(
                board
                    .consul
                    .iter()
                    .filter_map(|w| serde_json::to_value(w.status()).ok()),
            )
            .chain(
                board
                    .mdns
                    .iter()
                    .filter_map(|w| serde_json::to_value(w.status()).ok()),
            )
            .collect(),
        templates: &board.templates,
        kv_dir: board.kv_dir.as_ref(),
        gateway_backends: board
            .gateway
            .iter()
            .flat_map(|g| g.backends())
            .map(|b| backend_status(&b))
            .collect(),
        registrations: board
            .registrations
            .iter()
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect(),
    }
}

/// The routes of `listener`, as written.
fn route_list(routes: &[RouteSpec], listener: &str) -> Vec<RouteStatus> {
    routes
        .iter()
        .filter(|r| &*r.listener == listener)
        .map(|r| RouteStatus {
            host: r.host.to_string(),
            path: r.path_prefix.clone(),
            backend: r.backend.to_string(),
        })
        .collect()
}

fn backend_status(b: &Backend) -> BackendStatus {
    let endpoints: Vec<EndpointStatus> = b
        .endpoints
        .load()
        .endpoints
        .iter()
        .map(|e| EndpointStatus::of(&e.state, Some(e.origin), Some(e.weight)))
        .collect();
    let state = match b.spec.target {
        BackendTarget::Respond(_) | BackendTarget::Gateway(_) => BackendState::Up,
        BackendTarget::Servers(_) | BackendTarget::Consul(_) | BackendTarget::Mdns(_) => {
            BackendState::of(endpoints.iter().map(|e| e.healthy && !e.ejected))
        }
    };
    BackendStatus {
        name: b.name().to_string(),
        kind: match b.spec.target {
            BackendTarget::Servers(_) => "servers",
            BackendTarget::Respond(_) => "respond",
            BackendTarget::Consul(_) => "consul",
            BackendTarget::Mdns(_) => "mdns",
            BackendTarget::Gateway(_) => "gateway",
        },
        balance: match b.spec.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::P2c => "p2c",
            Balance::Hash(_) => "hash",
        },
        protocol: b.spec.protocol,
        state,
        endpoints,
    }
}

#[cfg(test)]
mod tests;
