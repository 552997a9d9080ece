//! The config loader: TOML text through parsing and validation
//! (`switchyard::config::load`), and a validated config through
//! `table::compile`, as a reload does.
//!
//! Input: the text of the main config file, in a directory that also
//! holds an include (`more.toml`), a template source (`routes.tera`) and a
//! kv directory (`kv/`), so includes and templates can resolve.
//!
//! Checked: never a panic; a rejected file gets at least one error, each
//! with a problem and either a key path or a message that names what is
//! wrong (a syntax error with its line, or a field in backquotes); an
//! accepted one compiles or fails with an error, and its durations are
//! ones a deadline can be computed from (`Instant::now() + d`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::config::{self, Config};
use switchyard::metrics::Metrics;
use switchyard::table::{self, CompileContext};

pub struct Harness {
    /// Holds the include, template and kv directory the config refers to.
    _dir: tempfile::TempDir,
    path: PathBuf,
    metrics: Metrics,
}

impl Harness {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        std::fs::write(
            at("more.toml"),
            "[[backends]]\nname = \"more\"\nservers = [\"127.0.0.1:1\"]\n",
        )
        .expect("write include");
        std::fs::write(
            at("routes.tera"),
            "{% for r in ls(prefix=\"routes\") %}{% endfor %}\n",
        )
        .expect("write template");
        std::fs::create_dir_all(at("kv/routes")).expect("kv dir");
        std::fs::write(at("kv/routes/a"), "path_prefix = \"/a\"\n").expect("kv key");
        Self {
            path: at("switchyard.toml"),
            _dir: dir,
            metrics: Metrics::new().expect("metrics"),
        }
    }

    pub fn run(&mut self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return; // the loader reads UTF-8 text; other bytes fail at the read
        };
        std::fs::write(&self.path, text).expect("write config");
        match config::load(&self.path) {
            Err(errors) => {
                assert!(!errors.0.is_empty(), "rejected with no error");
                for e in &errors.0 {
                    assert!(
                        !e.problem.trim().is_empty(),
                        "an error with no problem: {e:?}"
                    );
                    let located = !e.key.is_empty()
                        || e.problem.starts_with("syntax error")
                        || e.problem.contains('`');
                    assert!(located, "an error that names no key: {e:?}");
                }
            }
            Ok(config) => {
                check_durations(&config);
                let config = Arc::new(config);
                let _ = table::compile(config, 1, None, &CompileContext::STATIC, &self.metrics);
            }
        }
    }
}

/// Every duration the data path adds to a clock reading must fit: an
/// `Instant` plus a duration that overflows panics.
fn check_durations(c: &Config) {
    let mut all: Vec<(&str, Duration)> = vec![
        ("timeouts.header_read", c.timeouts.header_read),
        ("timeouts.client_idle", c.timeouts.client_idle),
        ("timeouts.client_stall", c.timeouts.client_stall),
        ("shutdown.grace", c.shutdown_grace),
        ("resolver.min_ttl", c.resolver.min_ttl),
        ("resolver.max_ttl", c.resolver.max_ttl),
        ("resolver.hold_valid", c.resolver.hold_valid),
        ("resolver.hold_nx", c.resolver.hold_nx),
        ("resolver.timeout", c.resolver.timeout),
        ("resolver.retry_max", c.resolver.retry_max),
    ];
    for l in &c.listeners {
        all.push(("listeners[].queue_timeout", l.queue_timeout));
        all.extend(l.drain_timeout.map(|d| ("listeners[].drain_timeout", d)));
    }
    for b in &c.backends {
        all.push(("backends[].timeouts.connect", b.timeouts.connect));
        all.push(("backends[].timeouts.idle", b.timeouts.idle));
        all.push(("backends[].timeouts.request", b.timeouts.request));
        all.push(("backends[].timeouts.stall", b.timeouts.stall));
        if let Some(h) = &b.health_check {
            all.push(("backends[].health_check.interval", h.interval));
            all.push(("backends[].health_check.timeout", h.timeout));
        }
    }
    for t in &c.templates {
        all.push(("templates[].command_timeout", t.command_timeout));
        if let Some(w) = &t.wait {
            all.push(("templates[].wait.max", w.max));
        }
    }
    if let Some(consul) = &c.consul {
        all.push(("consul.wait", consul.wait));
        all.push(("consul.retry_max", consul.retry_max));
    }
    let now = Instant::now();
    for (key, d) in all {
        assert!(
            now.checked_add(d).is_some(),
            "`{key}` = {d:?} accepted: a deadline from it overflows"
        );
    }
}
