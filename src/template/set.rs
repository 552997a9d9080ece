//! The running templates: which to render when (dependencies and
//! quiescence), their latest outputs, and what `/status` shows of them.
//!
//! A change of data marks the templates that read it. A template without
//! `wait`, or one that has never rendered, is due at once; one with `wait`
//! is due `min` after the latest change but never later than `max` after the
//! first one (consul-template's quiescence). Every template due at one
//! moment renders in one batch, so a change read by several templates makes
//! one batch, and at most one config reload.
//!
//! An included template's new output is *staged*: [`TemplateSet::output_for`]
//! gives it to the reload that tries it, and it becomes the template's
//! output ([`TemplateSet::apply_staged`]) only if that reload is applied;
//! otherwise it is dropped ([`TemplateSet::discard_staged`]), so the file,
//! the included text and the live table never disagree. A template whose
//! source on disk does not parse is not rendered at all until a reload
//! reads a good one: rendering it with the older compiled source would
//! write a file its author no longer means.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::{Compiled, DataView, Dep, RenderOutcome};
use crate::config::TemplateSpec;
use crate::discovery::consul::WatchKey;
use crate::metrics::Metrics;

/// The templates of the running config.
#[derive(Default)]
pub struct TemplateSet {
    templates: Vec<Running>,
}

struct Running {
    spec: TemplateSpec,
    compiled: Compiled,
    deps: BTreeSet<Dep>,
    /// What the destination holds as far as Switchyard is concerned: the
    /// latest render of a plain template; for an included one, the latest
    /// render the running config was built from (a rejected one is not).
    output: Option<Arc<str>>,
    /// An included render waiting for the reload that tries it; cleared by
    /// `apply_staged` or `discard_staged` when that reload ends.
    staged: Option<Arc<str>>,
    /// Set while the source on disk cannot be read or parsed; the template
    /// is not rendered meanwhile. Cleared when a reload reads it fine.
    source_error: Option<SourceError>,
    due: Option<Instant>,
    /// Quiescence: the latest moment a burst of changes may delay a render.
    deadline: Option<Instant>,
    status: TemplateStatus,
    /// Written by the command's task when it ends.
    command: Arc<Mutex<Option<String>>>,
}

/// Why a running template's source cannot be used, since when.
#[derive(Debug, Clone)]
struct SourceError {
    message: String,
    since: String,
}

/// `/status` view of one template.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TemplateStatus {
    pub template: String,
    pub destination: String,
    /// pending (not rendered yet), held (waiting for data), rendered, error,
    /// rejected (an included output whose reload was rejected: not applied,
    /// not written), source_error (the source does not parse: not rendered).
    pub state: &'static str,
    /// Why a held template is not written: dependencies without data yet,
    /// keys that do not exist.
    pub waiting_for: Vec<String>,
    pub dependencies: Vec<String>,
    pub renders: u64,
    pub writes: u64,
    pub last_render: Option<String>,
    pub last_write: Option<String>,
    pub last_error: Option<String>,
    /// The read or syntax error of the source on disk (template name and
    /// line); the template does not render until it is fixed.
    pub source_error: Option<String>,
    /// When that error was first seen (RFC 3339).
    pub source_error_since: Option<String>,
    /// Its output is one of the config's includes.
    pub included: bool,
    /// For an included template, the FNV-1a 64 digest of the text the
    /// running config was built from (`fnv1a64:<hex>`): equal to the
    /// destination file's unless someone else wrote it.
    pub applied_digest: Option<String>,
    pub command: Option<String>,
    /// How the last command run ended.
    pub last_command: Option<String>,
}

/// One render that produced text, for the caller to write.
pub struct Rendered {
    pub index: usize,
    pub name: Arc<str>,
    pub destination: PathBuf,
    pub text: Arc<str>,
    pub perms: u32,
    pub backup: bool,
    pub command: Option<String>,
    pub command_timeout: std::time::Duration,
    /// An included output that differs from the applied one: staged, and
    /// written only once the reload it causes is applied.
    pub reloads_config: bool,
}

impl Rendered {
    /// The render of template `index` (its `spec`) giving `text`.
    fn of(index: usize, spec: &TemplateSpec, text: Arc<str>, reloads_config: bool) -> Self {
        Self {
            index,
            name: spec.name.clone(),
            destination: spec.destination.clone(),
            text,
            perms: spec.perms,
            backup: spec.backup,
            command: spec.command.clone(),
            command_timeout: spec.command_timeout,
            reloads_config,
        }
    }
}

/// What [`TemplateSet::prepare`] decided for each template of a config.
pub struct TemplatePlan(Vec<Slot>);

enum Slot {
    /// Same spec and source text as a running template.
    Keep(usize),
    New(Box<(TemplateSpec, Compiled)>),
}

impl TemplateSet {
    /// Parses the templates of a new config; running templates whose spec
    /// and source are unchanged are kept as they are. Fails, changing
    /// nothing but the source errors `/status` shows, if any source cannot
    /// be read or parsed.
    pub fn prepare(&mut self, specs: &[TemplateSpec]) -> Result<TemplatePlan, Vec<String>> {
        let mut slots = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            let slot = self.prepare_one(spec);
            self.note_source(&spec.source, slot.as_ref().err());
            match slot {
                Ok(slot) => slots.push(slot),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(TemplatePlan(slots))
        } else {
            Err(errors)
        }
    }

    fn prepare_one(&self, spec: &TemplateSpec) -> Result<Slot, String> {
        let text = super::read_source(spec)?;
        let same = self
            .templates
            .iter()
            .position(|t| t.spec == *spec && t.compiled.text() == text);
        match same {
            Some(i) => Ok(Slot::Keep(i)),
            None => Compiled::parse(&spec.name, text)
                .map(|compiled| Slot::New(Box::new((spec.clone(), compiled)))),
        }
    }

    /// Records whether `source`, as read now, is usable by the running
    /// templates made from it. The first error starts `since`; a source
    /// that parses again lets them render.
    fn note_source(&mut self, source: &Path, error: Option<&String>) {
        for t in self
            .templates
            .iter_mut()
            .filter(|t| t.spec.source == source)
        {
            match error {
                Some(message) => {
                    let since = match t.source_error.take() {
                        Some(previous) => previous.since,
                        None => {
                            tracing::warn!(template = %t.spec.name, error = %message, "Template source broken; not rendering it until it is fixed");
                            timestamp()
                        }
                    };
                    t.source_error = Some(SourceError {
                        message: message.clone(),
                        since,
                    });
                }
                None => {
                    if t.source_error.take().is_some() {
                        tracing::info!(template = %t.spec.name, "Template source parses again");
                    }
                }
            }
        }
    }

    /// Makes the plan's templates the running set. A new or changed
    /// template is due at once; it keeps the previous output and counters
    /// of the template that wrote the same destination.
    pub fn commit(&mut self, plan: TemplatePlan, now: Instant) {
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.templates)
            .into_iter()
            .map(Some)
            .collect();
        for slot in plan.0 {
            let running = match slot {
                Slot::Keep(i) => old[i].take(),
                Slot::New(new) => {
                    let (spec, compiled) = *new;
                    let previous = old
                        .iter_mut()
                        .find(|o| {
                            o.as_ref()
                                .is_some_and(|o| o.spec.destination == spec.destination)
                        })
                        .and_then(Option::take);
                    let mut status = previous
                        .as_ref()
                        .map(|p| p.status.clone())
                        .unwrap_or_default();
                    if previous.is_none() {
                        status.state = "pending";
                    }
                    Some(Running {
                        compiled,
                        deps: BTreeSet::new(),
                        output: previous.as_ref().and_then(|p| p.output.clone()),
                        // The reload that commits this may be the one
                        // trying the staged text: it is applied after.
                        staged: previous.as_ref().and_then(|p| p.staged.clone()),
                        source_error: None,
                        due: Some(now),
                        deadline: None,
                        status,
                        command: previous.map(|p| p.command).unwrap_or_default(),
                        spec,
                    })
                }
            };
            self.templates.extend(running);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The output of the template writing `destination`: the staged one
    /// while a reload tries it, else the applied one.
    pub fn output_for(&self, destination: &Path) -> Option<Arc<str>> {
        self.templates
            .iter()
            .find(|t| t.spec.destination == destination)
            .and_then(|t| t.staged.clone().or_else(|| t.output.clone()))
    }

    /// Templates that read a dependency for which `changed` holds become
    /// due, now or after their quiescence.
    pub fn mark_changed(&mut self, changed: impl Fn(&Dep) -> bool, now: Instant) {
        for t in &mut self.templates {
            if !t.deps.iter().any(&changed) {
                continue;
            }
            match (t.spec.wait, &t.output) {
                (Some(wait), Some(_)) => {
                    let deadline = *t.deadline.get_or_insert(now + wait.max);
                    t.due = Some((now + wait.min).min(deadline));
                }
                _ => t.due = Some(now),
            }
        }
    }

    /// When the next render is due. A template with a broken source keeps
    /// its due time (the change it missed) for when the source is fixed.
    pub fn next_due(&self) -> Option<Instant> {
        self.templates
            .iter()
            .filter(|t| t.source_error.is_none())
            .filter_map(|t| t.due)
            .min()
    }

    /// Templates whose last output was rejected render again, so that what
    /// changed since is applied after a reload that succeeded. One that
    /// renders the applied text again causes no reload, so this converges.
    pub fn mark_rejected_due(&mut self, now: Instant) {
        for t in &mut self.templates {
            if t.status.state == "rejected" {
                t.due = Some(t.due.map_or(now, |due| due.min(now)));
            }
        }
    }

    /// Renders every template due by `now`; returns the ones that produced
    /// text (changed or not: the caller compares with the file on disk).
    pub fn render_due(
        &mut self,
        now: Instant,
        view: &DataView,
        metrics: &Metrics,
    ) -> Vec<Rendered> {
        let mut ready = Vec::new();
        for (index, t) in self.templates.iter_mut().enumerate() {
            if t.source_error.is_some() || t.due.is_none_or(|due| due > now) {
                continue;
            }
            t.due = None;
            t.deadline = None;
            let (outcome, deps) = t.compiled.render(view.clone(), t.spec.error_on_missing_key);
            t.deps = deps;
            let s = &mut t.status;
            s.renders += 1;
            s.last_render = Some(timestamp());
            s.dependencies = t.deps.iter().map(ToString::to_string).collect();
            let result = match outcome {
                RenderOutcome::Ready(text) => {
                    s.state = "rendered";
                    s.waiting_for.clear();
                    s.last_error = None;
                    let text: Arc<str> = text.into();
                    let changed = t.output.as_deref() != Some(&*text);
                    if t.spec.included && changed {
                        t.staged = Some(text.clone());
                    } else {
                        t.output = Some(text.clone());
                    }
                    ready.push(Rendered::of(
                        index,
                        &t.spec,
                        text,
                        changed && t.spec.included,
                    ));
                    // Written or unchanged is known after the write.
                    None
                }
                RenderOutcome::Held(missing) => {
                    s.state = "held";
                    s.waiting_for = missing.into_iter().collect();
                    tracing::debug!(template = %t.spec.name, waiting_for = ?s.waiting_for, "Template held: waiting for data");
                    Some("held")
                }
                RenderOutcome::Failed(error) => {
                    tracing::error!(%error, "Template render failed; keeping the previous output");
                    s.state = "error";
                    s.last_error = Some(error);
                    Some("error")
                }
            };
            if let Some(result) = result {
                metrics
                    .template_renders
                    .with_label_values(&[&t.spec.name, result])
                    .inc();
            }
        }
        ready
    }

    /// Makes every staged output the applied one, after the reload built
    /// from them was applied; returns them for writing.
    pub fn apply_staged(&mut self) -> Vec<Rendered> {
        let mut applied = Vec::new();
        for (index, t) in self.templates.iter_mut().enumerate() {
            let Some(text) = t.staged.take() else {
                continue;
            };
            t.output = Some(text.clone());
            applied.push(Rendered::of(index, &t.spec, text, true));
        }
        applied
    }

    /// Drops every staged output, after the reload built from them was
    /// rejected for `reason`: the applied output stays, and `/status` says
    /// why the new one is not there.
    pub fn discard_staged(&mut self, reason: &str, metrics: &Metrics) {
        for t in &mut self.templates {
            if t.staged.take().is_none() {
                continue;
            }
            let error = format!("not applied: config rejected: {reason}");
            tracing::warn!(template = %t.spec.name, %error, "Template output not applied; keeping the applied one");
            t.status.state = "rejected";
            t.status.last_error = Some(error);
            metrics
                .template_renders
                .with_label_values(&[&t.spec.name, "rejected"])
                .inc();
        }
    }

    /// Records how writing a render ended: `Ok(true)` written, `Ok(false)`
    /// the file already held it.
    pub fn record_write(
        &mut self,
        index: usize,
        result: &std::io::Result<bool>,
        metrics: &Metrics,
    ) {
        let Some(t) = self.templates.get_mut(index) else {
            return;
        };
        let label = match result {
            Ok(true) => {
                t.status.writes += 1;
                t.status.last_write = Some(timestamp());
                "written"
            }
            Ok(false) => "unchanged",
            Err(e) => {
                let error = format!(
                    "template {}: writing {}: {e}",
                    t.spec.name,
                    t.spec.destination.display()
                );
                tracing::error!(%error, "Template output not written");
                t.status.state = "error";
                t.status.last_error = Some(error);
                "error"
            }
        };
        metrics
            .template_renders
            .with_label_values(&[&t.spec.name, label])
            .inc();
    }

    /// Where the command of template `index` reports how it ended.
    pub fn command_slot(&self, index: usize) -> Option<Arc<Mutex<Option<String>>>> {
        self.templates.get(index).map(|t| t.command.clone())
    }

    /// Every Consul query the templates read.
    pub fn consul_keys(&self) -> std::collections::HashSet<WatchKey> {
        self.templates
            .iter()
            .flat_map(|t| &t.deps)
            .filter_map(|d| match d {
                Dep::Consul(k) => Some(k.clone()),
                Dep::KvDir(_) => None,
            })
            .collect()
    }

    /// Every kv directory query the templates read.
    pub fn kv_dir_deps(&self) -> BTreeSet<Dep> {
        self.templates
            .iter()
            .flat_map(|t| &t.deps)
            .filter(|d| matches!(d, Dep::KvDir(_)))
            .cloned()
            .collect()
    }

    /// Some template has not been written because data is missing.
    pub fn any_held(&self) -> bool {
        self.templates
            .iter()
            .any(|t| t.output.is_none() && t.staged.is_none() && t.status.state != "error")
    }

    pub fn statuses(&self) -> Vec<TemplateStatus> {
        self.templates
            .iter()
            .map(|t| {
                let status = TemplateStatus {
                    // What the spec says is filled in here, not kept twice.
                    template: t.spec.name.to_string(),
                    destination: t.spec.destination.display().to_string(),
                    included: t.spec.included,
                    applied_digest: t.output.as_deref().filter(|_| t.spec.included).map(digest),
                    command: t.spec.command.clone(),
                    last_command: lock(&t.command).clone(),
                    ..t.status.clone()
                };
                match &t.source_error {
                    // Overlaid, not stored: the last render's state is
                    // still right once the source is fixed.
                    Some(e) => TemplateStatus {
                        state: "source_error",
                        source_error: Some(e.message.clone()),
                        source_error_since: Some(e.since.clone()),
                        ..status
                    },
                    None => status,
                }
            })
            .collect()
    }
}

/// `fnv1a64:<hex>` of `text`: enough to tell two texts apart in `/status`
/// without a hashing dependency (not a security measure).
pub fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("fnv1a64:{hash:016x}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
