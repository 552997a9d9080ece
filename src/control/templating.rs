//! The control task's side of templates: turns data changes into render
//! batches, writes their outputs, runs their commands, and tells the
//! control task when an included output changed (one reload per batch).
//!
//! A changed included output is staged, not written: the control task
//! reloads with it, then calls [`Templating::apply_staged`] (write, run the
//! command) if the reload was applied or [`Templating::discard_staged`] if
//! it was rejected, so the destination file always holds the text the
//! running config was built from.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::StatusBoard;
use crate::config::{ConsulSpec, KvSpec, TemplateSpec};
use crate::discovery::consul::{ConsulWatcher, KeyOwner};
use crate::discovery::kvdir::{KvDir, KvSnapshot};
use crate::error_chain::ErrorChain;
use crate::metrics::Metrics;
use crate::template::TemplatePlan;
use crate::template::output::{run_command, write_if_changed};
use crate::template::{DataView, Dep, Rendered, TemplateSet};

/// Quiet time after the last kv directory event before rescanning: enough
/// for a tool writing several files at once, small against the 50 ms a
/// change may take to reach routing.
const KV_DEBOUNCE: Duration = Duration::from_millis(10);
/// A directory that never goes quiet is still rescanned this often.
const KV_DEBOUNCE_MAX: Duration = Duration::from_millis(100);
/// How long start waits for Consul to answer what templates read.
const FIRST_RENDER_BUDGET: Duration = Duration::from_secs(3);

pub struct Templating {
    pub set: TemplateSet,
    kv: Option<KvDir>,
    kv_events: mpsc::Receiver<()>,
    kv_sender: mpsc::Sender<()>,
    metrics: Metrics,
    board: Arc<StatusBoard>,
}

/// A kv directory to switch to, prepared with a config.
pub enum KvPlan {
    Keep,
    Switch(Option<KvDir>),
}

impl Templating {
    pub fn new(metrics: Metrics, board: Arc<StatusBoard>) -> Self {
        let (kv_sender, kv_events) = mpsc::channel(1);
        Self {
            set: TemplateSet::default(),
            kv: None,
            kv_events,
            kv_sender,
            metrics,
            board,
        }
    }

    /// Starts watching the kv directory of a new config, if it changed.
    pub fn prepare_kv(&self, kv: Option<&KvSpec>) -> Result<KvPlan, String> {
        if self.kv.as_ref().map(KvDir::dir) == kv.map(|k| k.dir.as_path()) {
            return Ok(KvPlan::Keep);
        }
        match kv {
            None => Ok(KvPlan::Switch(None)),
            Some(spec) => KvDir::start(&spec.dir, self.kv_sender.clone())
                .map(|d| KvPlan::Switch(Some(d)))
                .map_err(|e| ErrorChain(&e).to_string()),
        }
    }

    /// Parses a config's templates. Running templates whose source is
    /// broken stop rendering, and `/status` shows it, even though the
    /// reload this is part of is then rejected.
    pub fn prepare(&mut self, specs: &[TemplateSpec]) -> Result<TemplatePlan, Vec<String>> {
        let plan = self.set.prepare(specs);
        self.publish_status();
        plan
    }

    pub fn commit(&mut self, templates: TemplatePlan, kv: KvPlan) {
        let now = Instant::now();
        self.set.commit(templates, now);
        if let KvPlan::Switch(dir) = kv {
            self.kv = dir;
            // Everything read from the old directory may differ.
            self.set.mark_changed(|d| matches!(d, Dep::KvDir(_)), now);
        }
        self.publish_status();
    }

    /// The latest output for an include, for `config::load_with`.
    pub fn output_for(&self, destination: &Path) -> Option<Arc<str>> {
        self.set.output_for(destination)
    }

    /// Resolves when the kv directory reported a change (never without one).
    pub async fn kv_changed(&mut self) {
        if self.kv.is_none() || self.kv_events.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Rescans the kv directory after a short quiet period and marks the
    /// templates whose reads now give different data.
    pub async fn rescan_kv(&mut self) {
        let started = Instant::now();
        loop {
            let quiet = tokio::time::timeout(KV_DEBOUNCE, self.kv_events.recv()).await;
            if quiet.is_err() || started.elapsed() >= KV_DEBOUNCE_MAX {
                break;
            }
        }
        let Some(kv) = self.kv.as_mut() else { return };
        let old = kv.rescan().await;
        let new = kv.snapshot();
        let changed: BTreeSet<Dep> = self
            .set
            .kv_dir_deps()
            .into_iter()
            .filter(|d| differs(&old, &new, d))
            .collect();
        if !changed.is_empty() {
            tracing::debug!(changed = changed.len(), "kv directory changed");
            self.set
                .mark_changed(|d| changed.contains(d), Instant::now());
        }
    }

    /// The data templates render from now.
    pub fn view(&self, consul: &ConsulWatcher) -> DataView {
        DataView {
            consul: consul.watch_map(),
            kv: self.kv.as_ref().map(KvDir::snapshot),
        }
    }

    /// Renders what is due, writes, runs commands and updates what Consul
    /// watches. Returns whether an included output changed: it is staged
    /// for a reload, and not written yet.
    pub async fn render_due(
        &mut self,
        consul: &mut ConsulWatcher,
        consul_spec: Option<&ConsulSpec>,
    ) -> bool {
        self.render_batch(consul, consul_spec).await.0
    }

    /// At start: renders every template, waiting (a few seconds at most)
    /// for Consul to answer the queries they read, so that included
    /// outputs are there before the first table is compiled.
    pub async fn render_initial(
        &mut self,
        consul: &mut ConsulWatcher,
        consul_spec: Option<&ConsulSpec>,
    ) {
        let deadline = tokio::time::Instant::now() + FIRST_RENDER_BUDGET;
        loop {
            let (_, started) = self.render_batch(consul, consul_spec).await;
            if started.is_empty() || !self.set.any_held() {
                return;
            }
            let answered = tokio::time::timeout_at(deadline, async {
                for w in &started {
                    w.first_answer().await;
                }
            })
            .await;
            let keys: Vec<_> = started.iter().map(|w| w.key.clone()).collect();
            self.set.mark_changed(
                |d| matches!(d, Dep::Consul(k) if keys.contains(k)),
                Instant::now(),
            );
            if answered.is_err() {
                // Render once more with what did answer, then go on.
                self.render_batch(consul, consul_spec).await;
                return;
            }
        }
    }

    async fn render_batch(
        &mut self,
        consul: &mut ConsulWatcher,
        consul_spec: Option<&ConsulSpec>,
    ) -> (bool, Vec<Arc<crate::discovery::consul::ConsulWatch>>) {
        let view = self.view(consul);
        let rendered = self.set.render_due(Instant::now(), &view, &self.metrics);
        let started = consul.set_keys(KeyOwner::Templates, self.set.consul_keys(), consul_spec);
        self.board.lock().consul = consul.watches();
        // Staged outputs stay in the set until their reload has ended.
        let (staged, now): (Vec<_>, Vec<_>) = rendered.into_iter().partition(|r| r.reloads_config);
        if !now.is_empty() {
            self.write(now).await;
        }
        self.publish_status();
        (!staged.is_empty(), started)
    }

    /// The reload built from the staged outputs was applied (or found the
    /// config unchanged): they become the applied ones and are written.
    pub async fn apply_staged(&mut self) {
        let applied = self.set.apply_staged();
        if !applied.is_empty() {
            self.write(applied).await;
        }
        self.publish_status();
    }

    /// The reload built from the staged outputs was rejected with
    /// `errors`: they are dropped, and the files keep the applied text.
    pub fn discard_staged(&mut self, errors: &[String]) {
        let reason = errors.first().map_or("", String::as_str);
        self.set.discard_staged(reason, &self.metrics);
        self.publish_status();
    }

    /// After a reload that was applied: the outputs rejected before render
    /// again, so that what changed in between is applied now.
    pub fn retry_rejected(&mut self) {
        self.set.mark_rejected_due(Instant::now());
    }

    /// Writes the renders off the async threads, then starts the commands
    /// of the outputs that changed on disk (each distinct command once).
    async fn write(&mut self, rendered: Vec<Rendered>) {
        let jobs: Vec<(std::path::PathBuf, Arc<str>, u32, bool)> = rendered
            .iter()
            .map(|r| (r.destination.clone(), r.text.clone(), r.perms, r.backup))
            .collect();
        let results = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(dest, text, perms, backup)| write_if_changed(&dest, &text, perms, backup))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut commands: Vec<&str> = Vec::new();
        for (r, result) in rendered.iter().zip(&results) {
            self.set.record_write(r.index, result, &self.metrics);
            if let Ok(true) = result {
                tracing::info!(template = %r.name, destination = %r.destination.display(), "Template rendered");
                if let Some(command) = r.command.as_deref()
                    && !commands.contains(&command)
                {
                    commands.push(command);
                    self.spawn_command(r, command);
                }
            }
        }
    }

    fn spawn_command(&self, r: &Rendered, command: &str) {
        let Some(slot) = self.set.command_slot(r.index) else {
            return;
        };
        let (name, command, timeout) = (r.name.clone(), command.to_string(), r.command_timeout);
        let metrics = self.metrics.clone();
        let board = self.board.clone();
        let destination = r.destination.display().to_string();
        tokio::spawn(async move {
            let outcome = run_command(&command, timeout).await;
            if outcome.label() != "success" {
                tracing::error!(template = %name, %command, %outcome, "Template command failed");
            }
            metrics
                .template_commands
                .with_label_values(&[&name, outcome.label()])
                .inc();
            let text = outcome.to_string();
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.clone());
            let mut b = board.lock();
            if let Some(t) = b
                .templates
                .iter_mut()
                .find(|t| t.destination == destination)
            {
                t.last_command = Some(text);
            }
        });
    }

    fn publish_status(&self) {
        let mut b = self.board.lock();
        b.templates = self.set.statuses();
        b.kv_dir = self.kv.as_ref().map(|k| KvDirStatus {
            dir: k.dir().display().to_string(),
            keys: k.snapshot().len(),
        });
    }
}

/// `/status` view of the kv directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvDirStatus {
    pub dir: String,
    pub keys: usize,
}

fn differs(old: &KvSnapshot, new: &KvSnapshot, dep: &Dep) -> bool {
    match dep {
        Dep::KvDir(key) => old.query(key) != new.query(key),
        Dep::Consul(_) => false,
    }
}
