//! The state a running template goes through: staged, applied, rejected
//! and retried; a broken source skipped until it parses again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::discovery::kvdir::KvSnapshot;

/// An included template `t` reading key `x`, its source written in `dir`.
fn included_spec(dir: &Path) -> TemplateSpec {
    std::fs::write(dir.join("t.tera"), "v={{ key(path=\"x\") }}").unwrap();
    TemplateSpec {
        name: "t".into(),
        source: dir.join("t.tera"),
        destination: dir.join("out.toml"),
        perms: 0o644,
        backup: false,
        command: None,
        command_timeout: Duration::from_secs(1),
        wait: None,
        error_on_missing_key: false,
        included: true,
    }
}

/// The data a render sees: key `x` with `value`.
fn view(value: &str) -> DataView {
    let kv = tempfile::tempdir().unwrap();
    std::fs::write(kv.path().join("x"), value).unwrap();
    DataView {
        consul: Default::default(),
        kv: Some(Arc::new(KvSnapshot::scan(kv.path()).unwrap())),
    }
}

fn started(spec: &TemplateSpec) -> TemplateSet {
    let mut set = TemplateSet::default();
    let plan = set.prepare(std::slice::from_ref(spec)).unwrap();
    set.commit(plan, Instant::now());
    set
}

fn output(set: &TemplateSet, spec: &TemplateSpec) -> Option<String> {
    set.output_for(&spec.destination).map(|t| t.to_string())
}

#[test]
fn an_included_render_counts_only_once_its_reload_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let spec = included_spec(dir.path());
    let mut set = started(&spec);
    let metrics = Metrics::new().unwrap();

    // Staged: the reload reads it, nothing is applied yet.
    let rendered = set.render_due(Instant::now(), &view("1"), &metrics);
    assert!(rendered[0].reloads_config);
    assert_eq!(output(&set, &spec).as_deref(), Some("v=1"));
    assert_eq!(set.statuses()[0].applied_digest, None);
    assert_eq!(set.apply_staged().len(), 1);
    assert_eq!(set.statuses()[0].applied_digest, Some(digest("v=1")));

    // Rejected: the applied text stays, and the status says why.
    set.mark_changed(|_| true, Instant::now());
    set.render_due(Instant::now(), &view("2"), &metrics);
    assert_eq!(output(&set, &spec).as_deref(), Some("v=2"));
    set.discard_staged("bad.toml: line 1", &metrics);
    assert_eq!(output(&set, &spec).as_deref(), Some("v=1"));
    assert!(set.apply_staged().is_empty());
    let s = &set.statuses()[0];
    assert_eq!(s.state, "rejected");
    assert_eq!(
        s.last_error.as_deref(),
        Some("not applied: config rejected: bad.toml: line 1")
    );
    assert_eq!(s.applied_digest, Some(digest("v=1")));

    // Retried after a reload that was applied; the data went back to the
    // applied text, so no reload, and nothing left to retry.
    assert_eq!(set.next_due(), None);
    set.mark_rejected_due(Instant::now());
    let rendered = set.render_due(Instant::now(), &view("1"), &metrics);
    assert!(!rendered[0].reloads_config);
    assert_eq!(set.statuses()[0].state, "rendered");
    set.mark_rejected_due(Instant::now());
    assert_eq!(set.next_due(), None);
}

#[test]
fn a_broken_source_stops_renders_until_it_parses_again() {
    let dir = tempfile::tempdir().unwrap();
    let spec = included_spec(dir.path());
    let good = std::fs::read_to_string(&spec.source).unwrap();
    let mut set = started(&spec);
    let metrics = Metrics::new().unwrap();
    set.render_due(Instant::now(), &view("1"), &metrics);
    set.apply_staged();

    std::fs::write(&spec.source, "{{ key(path= }}").unwrap();
    let errors = set.prepare(std::slice::from_ref(&spec)).err().unwrap();
    assert!(errors[0].starts_with("template t: line 1: "), "{errors:?}");
    let s = set.statuses()[0].clone();
    assert_eq!(s.state, "source_error");
    assert_eq!(s.source_error.as_ref(), Some(&errors[0]));
    // A change while broken: remembered, not rendered.
    set.mark_changed(|_| true, Instant::now());
    assert_eq!(set.next_due(), None);
    assert!(
        set.render_due(Instant::now(), &view("2"), &metrics)
            .is_empty()
    );
    assert!(set.prepare(std::slice::from_ref(&spec)).is_err());
    assert_eq!(
        set.statuses()[0].source_error_since,
        s.source_error_since,
        "since the first error"
    );

    // Back to the running text: it renders the change it missed.
    std::fs::write(&spec.source, good).unwrap();
    assert!(set.prepare(std::slice::from_ref(&spec)).is_ok());
    assert_eq!(set.statuses()[0].source_error, None);
    assert!(set.next_due().is_some());
    let rendered = set.render_due(Instant::now(), &view("2"), &metrics);
    assert_eq!(&*rendered[0].text, "v=2");
}
