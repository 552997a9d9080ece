//! The running templates: which to render when (dependencies and
//! quiescence), their latest outputs, and what `/status` shows of them.
//!
//! A change of data marks the templates that read it. A template without
//! `wait`, or one that has never rendered, is due at once; one with `wait`
//! is due `min` after the latest change but never later than `max` after the
//! first one (consul-template's quiescence). Every template due at one
//! moment renders in one batch, so a change read by several templates makes
//! one batch, and at most one config reload.

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
    /// The latest successful render.
    output: Option<Arc<str>>,
    due: Option<Instant>,
    /// Quiescence: the latest moment a burst of changes may delay a render.
    deadline: Option<Instant>,
    status: TemplateStatus,
    /// Written by the command's task when it ends.
    command: Arc<Mutex<Option<String>>>,
}

/// `/status` view of one template.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TemplateStatus {
    pub template: String,
    pub destination: String,
    /// pending (not rendered yet), held (waiting for data), rendered, error.
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
    /// Its output is one of the config's includes.
    pub included: bool,
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
    /// The output differs from the previous render's and is an include.
    pub reloads_config: bool,
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
    /// nothing, if any source cannot be read or parsed.
    pub fn prepare(&self, specs: &[TemplateSpec]) -> Result<TemplatePlan, Vec<String>> {
        let mut slots = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            let text = match std::fs::read_to_string(&spec.source) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!(
                        "template {}: cannot read {}: {e}",
                        spec.name,
                        spec.source.display()
                    ));
                    continue;
                }
            };
            let same = self
                .templates
                .iter()
                .position(|t| t.spec == *spec && t.compiled.text() == text);
            match same {
                Some(i) => slots.push(Slot::Keep(i)),
                None => match Compiled::parse(&spec.name, text) {
                    Ok(compiled) => slots.push(Slot::New(Box::new((spec.clone(), compiled)))),
                    Err(e) => errors.push(e),
                },
            }
        }
        if errors.is_empty() {
            Ok(TemplatePlan(slots))
        } else {
            Err(errors)
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

    /// The latest output of the template writing `destination`.
    pub fn output_for(&self, destination: &Path) -> Option<Arc<str>> {
        self.templates
            .iter()
            .find(|t| t.spec.destination == destination)
            .and_then(|t| t.output.clone())
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

    /// When the next render is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.templates.iter().filter_map(|t| t.due).min()
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
            if t.due.is_none_or(|due| due > now) {
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
                    t.output = Some(text.clone());
                    ready.push(Rendered {
                        index,
                        name: t.spec.name.clone(),
                        destination: t.spec.destination.clone(),
                        text,
                        perms: t.spec.perms,
                        backup: t.spec.backup,
                        command: t.spec.command.clone(),
                        command_timeout: t.spec.command_timeout,
                        reloads_config: changed && t.spec.included,
                    });
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
            .any(|t| t.output.is_none() && t.status.state != "error")
    }

    pub fn statuses(&self) -> Vec<TemplateStatus> {
        self.templates
            .iter()
            .map(|t| TemplateStatus {
                // What the spec says is filled in here, not kept twice.
                template: t.spec.name.to_string(),
                destination: t.spec.destination.display().to_string(),
                included: t.spec.included,
                command: t.spec.command.clone(),
                last_command: lock(&t.command).clone(),
                ..t.status.clone()
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
