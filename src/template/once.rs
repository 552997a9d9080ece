//! `switchyard render --once [--dry]`: every template rendered once, like
//! `consul-template -once [-dry]`, without starting the proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::output::{run_command, write_if_changed};
use super::{DataView, Dep, TemplateSet};
use crate::config::{self, ConfigErrors};
use crate::discovery::consul::ConsulWatcher;
use crate::discovery::kvdir::KvSnapshot;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RenderOnceError {
    #[error("invalid config:\n{0}")]
    Config(ConfigErrors),
    #[error("{}", .0.join("\n"))]
    Templates(Vec<String>),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

impl From<ConfigErrors> for RenderOnceError {
    fn from(e: ConfigErrors) -> Self {
        Self::Config(e)
    }
}

/// One template's result.
#[derive(Debug)]
pub struct OnceOutput {
    pub destination: PathBuf,
    pub text: String,
    /// Without `dry`: the file changed (and its command ran).
    pub written: bool,
}

/// Renders every template of `config_path` once, waiting up to `timeout`
/// for the data they read. With `dry`, nothing is written and no command
/// runs. Fails listing every template that errored or was still waiting.
pub async fn render_once(
    config_path: &Path,
    dry: bool,
    timeout: Duration,
) -> Result<Vec<OnceOutput>, RenderOnceError> {
    let config = config::load(config_path)?;
    let metrics = Metrics::new()?;
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut consul = ConsulWatcher::new(changed_tx);
    let mut set = TemplateSet::default();
    let plan = set
        .prepare(&config.templates)
        .map_err(RenderOnceError::Templates)?;
    set.commit(plan, Instant::now());
    let kv = match &config.kv {
        Some(spec) => Some(std::sync::Arc::new(
            KvSnapshot::scan(&spec.dir)
                .map_err(|e| RenderOnceError::Templates(vec![e.to_string()]))?,
        )),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut outputs: BTreeMap<usize, OnceOutput> = BTreeMap::new();
    loop {
        let view = DataView {
            consul: consul.watch_map(),
            kv: kv.clone(),
        };
        for r in set.render_due(Instant::now(), &view, &metrics) {
            outputs.insert(
                r.index,
                OnceOutput {
                    destination: r.destination,
                    text: r.text.to_string(),
                    written: false,
                },
            );
        }
        consul.set_keys(
            crate::discovery::consul::KeyOwner::Templates,
            set.consul_keys(),
            config.consul.as_ref(),
        );
        if !set.any_held() {
            break;
        }
        match tokio::time::timeout_at(deadline, changed.recv()).await {
            Ok(Some(key)) => {
                let mut keys = vec![key];
                while let Ok(k) = changed.try_recv() {
                    keys.push(k);
                }
                set.mark_changed(
                    |d| matches!(d, Dep::Consul(k) if keys.contains(k)),
                    Instant::now(),
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
    let problems: Vec<String> = set
        .statuses()
        .into_iter()
        .filter_map(|s| match s.state {
            "error" => s.last_error,
            "held" | "pending" => Some(format!(
                "template {}: not rendered, waiting for: {}",
                s.template,
                s.waiting_for.join(", ")
            )),
            _ => None,
        })
        .collect();
    if !problems.is_empty() {
        return Err(RenderOnceError::Templates(problems));
    }
    if !dry {
        for (index, out) in outputs.iter_mut() {
            let result = write_if_changed(
                &out.destination,
                &out.text,
                config.templates[*index].perms,
                config.templates[*index].backup,
            );
            out.written = result.map_err(|e| {
                RenderOnceError::Templates(vec![format!(
                    "writing {}: {e}",
                    out.destination.display()
                )])
            })?;
            let spec = &config.templates[*index];
            if let (true, Some(command)) = (out.written, &spec.command) {
                let outcome = run_command(command, spec.command_timeout).await;
                if outcome.label() != "success" {
                    tracing::error!(template = %spec.name, %command, %outcome, "Template command failed");
                }
            }
        }
    }
    Ok(outputs.into_values().collect())
}
