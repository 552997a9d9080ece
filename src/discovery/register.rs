//! Sidecar registration: the services of `[[register]]` are registered with
//! the local Consul agent, kept registered, and deregistered at shutdown.
//!
//! One task per service:
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::consul::ConsulClient;
use super::consul::client::escape_path;
use crate::backoff::Backoff;
use crate::config::{CheckKind, RegisterCheckKind, RegisterSpec};
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
    client: Arc<ConsulClient>,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<RegistrationStatus>>,
}

/// `/status` view of one registration.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegistrationStatus {
    pub service: String,
    pub id: String,
    /// waiting_for_service, registered
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
    /// removed ones are deregistered.
    pub fn apply(&mut self, specs: &[RegisterSpec], client: Option<Arc<ConsulClient>>) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|id| !specs.iter().any(|s| &s.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = self.running.remove(&id) {
                let client = old.client.clone();
                drop(old);
                tokio::spawn(async move { deregister(&client, &id).await });
            }
        }
        let Some(client) = client else { return };
        for spec in specs {
            if self.running.get(&spec.id).is_some_and(|r| r.spec == *spec) {
                continue;
            }
            let status = Arc::new(Mutex::new(RegistrationStatus {
                service: spec.name.clone(),
                id: spec.id.clone(),
                state: "waiting_for_service",
                ..Default::default()
            }));
            let task = tokio::spawn(keep_registered(
                spec.clone(),
                client.clone(),
                status.clone(),
            ));
            self.running.insert(
                spec.id.clone(),
                Running {
                    spec: spec.clone(),
                    client: client.clone(),
                    task,
                    status,
                },
            );
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
                deregister(&r.client, &r.spec.id).await;
            }
        };
        if tokio::time::timeout(DEREGISTER_BUDGET, work).await.is_err() {
            tracing::warn!("Consul did not confirm every deregistration in time");
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
