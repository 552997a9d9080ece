//! Sidecar registration: the services of `[[register]]` are registered with
//! the local Consul agent, kept registered, and deregistered at shutdown;
//! or, with `registry = "mdns"`, announced on the local network the
//! go-micro way (or as DNS-SD) and withdrawn with a goodbye.
//!
//! One task per service. With Consul:
//!
//! ```text
//! local service healthy? ──no──▶ wait and check again
//!        │ yes
//!        ▼
//! PUT /v1/agent/service/register ──▶ every `interval`: still in
//!        ▲                            /v1/agent/services? no → register
//!        └── TTL update gets 404 ◀── ttl checks: check the service,
//!            (the agent lost us)      PUT check/pass or check/fail
//! ```
//!
//! Registering only once the local service answers keeps a starting
//! service out of everyone's rotation; re-registering when the agent's
//! catalog no longer has us covers agent restarts, which forget services
//! registered over the API.
//!
//! With mDNS there is no agent: once the local service answers it is
//! announced; with a `check`, Switchyard checks it every `check.interval`,
//! withdraws it (a goodbye) while it fails and announces it again when it
//! passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::consul::ConsulClient;
use super::consul::client::escape_path;
use super::mdns::{Announcing, Runtime};
use crate::backoff::Backoff;
use crate::config::{CheckKind, RegisterCheckKind, RegisterSpec, Registry};
use crate::upstream::health::probe;

/// How long shutdown waits for the deregistrations.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(5);
/// Pause between checks of a local service that is not up yet, and the
/// shortest pause between failed registrations.
const RETRY: Duration = Duration::from_secs(1);
/// The longest pause between failed registrations.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The registrations of the running config.
#[derive(Default)]
pub struct Registrations {
    running: HashMap<String, Running>,
}

struct Running {
    spec: RegisterSpec,
    registrar: Registrar,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<RegistrationStatus>>,
    /// mDNS: the live announcement (its drop sends the goodbye), here
    /// rather than in the task so that shutdown can wait for the goodbye.
    announced: Arc<Mutex<Option<Announcing>>>,
}

/// Where a registration goes.
#[derive(Clone)]
enum Registrar {
    Consul(Arc<ConsulClient>),
    Mdns(Arc<Runtime>),
}

impl Registrar {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            // The Consul client is rebuilt on settings changes; the
            // registration task keeps working with the one it has.
            (Self::Consul(_), Self::Consul(_)) => true,
            (Self::Mdns(a), Self::Mdns(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// `/status` view of one registration.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegistrationStatus {
    pub service: String,
    pub id: String,
    pub registry: Option<Registry>,
    /// waiting_for_service, registered (Consul), announced or withdrawn
    /// (mDNS)
    pub state: &'static str,
    /// Times registered (the first, and after the agent lost us).
    pub registrations: u64,
    pub last_registered: Option<String>,
    /// A TTL check's latest result: passing or critical.
    pub ttl_check: Option<&'static str>,
    pub last_error: Option<String>,
}

fn note(status: &Mutex<RegistrationStatus>, change: impl FnOnce(&mut RegistrationStatus)) {
    change(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registrations {
    /// Makes `specs` the registered services: new or changed ones start,
    /// removed ones are deregistered (Consul) or withdrawn (mDNS).
    pub fn apply(
        &mut self,
        specs: &[RegisterSpec],
        client: Option<Arc<ConsulClient>>,
        mdns: Option<Arc<Runtime>>,
    ) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|id| !specs.iter().any(|s| &s.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = self.running.remove(&id) {
                let registrar = old.registrar.clone();
                // An mDNS announcement says goodbye as it drops.
                drop(old);
                if let Registrar::Consul(client) = registrar {
                    tokio::spawn(async move { deregister(&client, &id).await });
                }
            }
        }
        for spec in specs {
            let registrar = match spec.registry {
                Registry::Consul => client.clone().map(Registrar::Consul),
                Registry::Mdns => mdns.clone().map(Registrar::Mdns),
            };
            let Some(registrar) = registrar else { continue };
            if self
                .running
                .get(&spec.id)
                .is_some_and(|r| r.spec == *spec && r.registrar.same(&registrar))
            {
                continue;
            }
            // The old announcement (a changed spec) says goodbye first.
            self.running.remove(&spec.id);
            let status = Arc::new(Mutex::new(RegistrationStatus {
                service: spec.name.clone(),
                id: spec.id.clone(),
                registry: Some(spec.registry),
                state: "waiting_for_service",
                ..Default::default()
            }));
            let announced = Arc::new(Mutex::new(None));
            let task = match &registrar {
                Registrar::Consul(client) => tokio::spawn(keep_registered(
                    spec.clone(),
                    client.clone(),
                    status.clone(),
                )),
                Registrar::Mdns(runtime) => tokio::spawn(keep_announced(
                    spec.clone(),
                    runtime.clone(),
                    status.clone(),
                    announced.clone(),
                )),
            };
            self.running.insert(
                spec.id.clone(),
                Running {
                    spec: spec.clone(),
                    registrar,
                    task,
                    status,
                    announced,
                },
            );
        }
    }

    /// After a binary upgrade: the successor announces and registers the
    /// same services, so this process stops without a goodbye or a
    /// deregistration (either would take them out from under it).
    pub fn leave_to_successor(&mut self) {
        for (_, r) in self.running.drain() {
            r.task.abort();
            if let Some(announcing) = take(&r.announced) {
                // NB: never dropped, so no goodbye; the process exits soon.
                std::mem::forget(announcing);
            }
        }
    }

    /// The live state of every registration, sorted by ID, for `/status`.
    pub fn statuses(&self) -> Vec<Arc<Mutex<RegistrationStatus>>> {
        let mut all: Vec<(&String, Arc<Mutex<RegistrationStatus>>)> = self
            .running
            .iter()
            .map(|(id, r)| (id, r.status.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Stops every registration task and deregisters the services, within
    /// a few seconds at most: the first thing shutdown does, so clients stop
    /// being sent here before we stop serving them.
    pub async fn deregister_all(&mut self) {
        let all: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        let work = async {
            for r in &all {
                r.task.abort();
                match &r.registrar {
                    Registrar::Consul(client) => deregister(client, &r.spec.id).await,
                    Registrar::Mdns(_) => {
                        if let Some(announcing) = take(&r.announced) {
                            announcing.withdraw().await;
                        }
                    }
                }
            }
        };
        if tokio::time::timeout(DEREGISTER_BUDGET, work).await.is_err() {
            tracing::warn!("Not every deregistration or goodbye was confirmed in time");
        }
    }
}

fn take(slot: &Mutex<Option<Announcing>>) -> Option<Announcing> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// This host's name: the SRV target of mDNS announcements.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Waits until the local service answers its check, noting why not.
async fn wait_for_local(spec: &RegisterSpec, kind: &CheckKind, status: &Mutex<RegistrationStatus>) {
    let mut waiting_logged = false;
    while let Err(error) = local_healthy(spec, kind).await {
        note(status, |s| {
            s.last_error = Some(format!("local service: {error}"))
        });
        if !waiting_logged {
            tracing::info!(service_id = %spec.id, %error, "Waiting for the local service before registering it");
            waiting_logged = true;
        }
        // A fixed pace, not a backoff: this probes our own local service,
        // not a shared server, and should see it up within a second.
        let pause = spec.check.as_ref().map_or(RETRY, |c| c.interval.min(RETRY));
        tokio::time::sleep(pause).await;
    }
}

/// Keeps `spec` announced by mDNS while the local service passes its
/// check (if it has one).
async fn keep_announced(
    spec: RegisterSpec,
    runtime: Arc<Runtime>,
    status: Arc<Mutex<RegistrationStatus>>,
    slot: Arc<Mutex<Option<Announcing>>>,
) {
    let kind = local_check(&spec);
    let mut backoff = Backoff::new(RETRY, RETRY_MAX);
    loop {
        wait_for_local(&spec, &kind, &status).await;
        match runtime.announce(&spec) {
            Ok(announcing) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(announcing);
                backoff.reset();
                note(&status, |s| {
                    s.state = "announced";
                    s.registrations += 1;
                    s.last_registered =
                        Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                    s.last_error = None;
                });
            }
            Err(error) => {
                tracing::warn!(service_id = %spec.id, %error, "Cannot announce by mDNS");
                note(&status, |s| s.last_error = Some(error));
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        let Some(every) = spec.check.as_ref().map(|c| c.interval) else {
            // Nothing to watch: announced until the registration goes.
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            if let Err(error) = local_healthy(&spec, &kind).await {
                tracing::warn!(service_id = %spec.id, %error, "Local service failing: withdrawing it from mDNS");
                if let Some(announcing) = take(&slot) {
                    announcing.withdraw().await;
                }
                note(&status, |s| {
                    s.state = "withdrawn";
                    s.last_error = Some(format!("local service: {error}"));
                });
                break;
            }
        }
    }
}

async fn deregister(client: &ConsulClient, id: &str) {
    let path = format!("agent/service/deregister/{}", escape_path(id));
    match client.put(&path, None).await {
        Ok(_) => tracing::info!(service_id = id, "Deregistered from Consul"),
        Err(error) => tracing::warn!(service_id = id, %error, "Consul deregistration failed"),
    }
}

/// The check Switchyard runs on the local service before registering it,
/// and for a TTL check: the check's HTTP path, else a connect.
fn local_check(spec: &RegisterSpec) -> CheckKind {
    let path = match spec.check.as_ref().map(|c| &c.kind) {
        Some(RegisterCheckKind::Http { path }) => Some(path.clone()),
        Some(RegisterCheckKind::Ttl { path, .. }) => path.clone(),
        _ => None,
    };
    match path {
        Some(path) => CheckKind::Http {
            path,
            host: None,
            expect: (200, 399),
        },
        None => CheckKind::Tcp,
    }
}

async fn local_healthy(spec: &RegisterSpec, kind: &CheckKind) -> Result<(), String> {
    let timeout = spec
        .check
        .as_ref()
        .map_or(Duration::from_secs(2), |c| c.timeout);
    match tokio::time::timeout(timeout, probe(spec.local_addr(), kind, None, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn keep_registered(
    spec: RegisterSpec,
    client: Arc<ConsulClient>,
    status: Arc<Mutex<RegistrationStatus>>,
) {
    let kind = local_check(&spec);
    let mut waiting_logged = false;
    while let Err(error) = local_healthy(&spec, &kind).await {
        note(&status, |s| {
            s.last_error = Some(format!("local service: {error}"))
        });
        if !waiting_logged {
            tracing::info!(service_id = %spec.id, %error, "Waiting for the local service before registering it");
            waiting_logged = true;
        }
        // A fixed pace, not a backoff: this probes our own local service,
        // not a shared server, and should see it up within a second.
        tokio::time::sleep(RETRY).await;
    }
    register_until_done(&spec, &client, &status).await;
    let ttl = match spec.check.as_ref().map(|c| (&c.kind, c.interval)) {
        Some((RegisterCheckKind::Ttl { .. }, every)) => Some(every),
        _ => None,
    };
    let mut verify = tokio::time::interval(spec.interval);
    verify.tick().await; // the first tick is immediate; we just registered
    let mut update = tokio::time::interval(ttl.unwrap_or(Duration::from_secs(3600)));
    let mut last_passing = None;
    loop {
        tokio::select! {
            _ = verify.tick() => {
                if !is_registered(&client, &spec.id).await {
                    tracing::warn!(service_id = %spec.id, "The Consul agent lost our registration; registering again");
                    register_until_done(&spec, &client, &status).await;
                }
            }
            _ = update.tick(), if ttl.is_some() => {
                let result = local_healthy(&spec, &kind).await;
                let passing = result.is_ok();
                note(&status, |s| {
                    s.ttl_check = Some(if passing { "passing" } else { "critical" });
                    s.last_error = result.as_ref().err().map(|e| format!("local service: {e}"));
                });
                if last_passing != Some(passing) {
                    match &result {
                        Ok(()) => tracing::info!(service_id = %spec.id, "Local service healthy: TTL check passing"),
                        Err(error) => tracing::warn!(service_id = %spec.id, %error, "Local service failing: TTL check critical"),
                    }
                    last_passing = Some(passing);
                }
                if !update_ttl(&client, &spec.id, result).await {
                    tracing::warn!(service_id = %spec.id, "The Consul agent lost our check; registering again");
                    register_until_done(&spec, &client, &status).await;
                }
            }
        }
    }
}

async fn register_until_done(
    spec: &RegisterSpec,
    client: &ConsulClient,
    status: &Mutex<RegistrationStatus>,
) {
    let body = registration(spec).to_string().into_bytes();
    // Jittered: when the agent comes back, the services registered here
    // (one task each) do not all retry in the same instant.
    let mut backoff = Backoff::new(RETRY, RETRY_MAX);
    loop {
        match client
            .put(
                "agent/service/register?replace-existing-checks",
                Some(body.clone()),
            )
            .await
        {
            Ok(reply) if reply.status.is_success() => {
                tracing::info!(service = %spec.name, service_id = %spec.id, "Registered with Consul");
                note(status, |s| {
                    s.state = "registered";
                    s.registrations += 1;
                    s.last_registered =
                        Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                    s.last_error = None;
                });
                return;
            }
            Ok(reply) => {
                tracing::warn!(service_id = %spec.id, status = %reply.status, "Consul refused the registration");
                note(status, |s| {
                    s.last_error = Some(format!("Consul answered {}", reply.status))
                });
            }
            Err(error) => {
                tracing::warn!(service_id = %spec.id, %error, "Consul registration failed");
                note(status, |s| s.last_error = Some(error.to_string()));
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Whether the local agent still lists the service; an error counts as yes
/// (an unreachable agent is no reason to re-register).
async fn is_registered(client: &ConsulClient, id: &str) -> bool {
    match client.get("agent/services", &[], 0).await {
        Ok(reply) if reply.status.is_success() => {
            serde_json::from_slice::<HashMap<String, serde_json::Value>>(&reply.body)
                .map_or(true, |services| services.contains_key(id))
        }
        _ => true,
    }
}

/// Passes or fails the TTL check; `false` when the agent does not know the
/// check any more.
async fn update_ttl(client: &ConsulClient, id: &str, result: Result<(), String>) -> bool {
    let check = escape_path(&format!("service:{id}"));
    let path = match &result {
        Ok(()) => format!("agent/check/pass/{check}"),
        Err(error) => format!(
            "agent/check/fail/{check}?note={}",
            percent_encoding::utf8_percent_encode(error, percent_encoding::NON_ALPHANUMERIC)
        ),
    };
    match client.put(&path, None).await {
        Ok(reply) => reply.status != http::StatusCode::NOT_FOUND,
        Err(error) => {
            tracing::debug!(service_id = id, %error, "TTL update failed");
            true
        }
    }
}

/// Consul wants Go durations; milliseconds are exact and always valid.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The `/v1/agent/service/register` body.
fn registration(spec: &RegisterSpec) -> serde_json::Value {
    let mut body = json!({
        "ID": spec.id,
        "Name": spec.name,
        "Port": spec.port,
        "Tags": spec.tags,
        "Meta": spec.meta,
    });
    if let Some(address) = &spec.address {
        body["Address"] = json!(address);
    }
    if let Some(check) = &spec.check {
        let local = spec.local_addr();
        let mut c = match &check.kind {
            RegisterCheckKind::Http { path } => json!({
                "HTTP": format!("http://{local}{path}"),
                "Interval": go_duration(check.interval),
                "Timeout": go_duration(check.timeout),
            }),
            RegisterCheckKind::Tcp => json!({
                "TCP": local.to_string(),
                "Interval": go_duration(check.interval),
                "Timeout": go_duration(check.timeout),
            }),
            // Registered passing: we only register a service that answers.
            RegisterCheckKind::Ttl { ttl, .. } => json!({
                "CheckID": format!("service:{}", spec.id),
                "TTL": go_duration(*ttl),
                "Status": "passing",
            }),
        };
        c["Name"] = json!(format!("Service '{}' check", spec.name));
        if let Some(after) = spec.deregister_critical_after {
            c["DeregisterCriticalServiceAfter"] = json!(go_duration(after));
        }
        body["Check"] = c;
    }
    body
}
