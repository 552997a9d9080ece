//! consul-template style rendering with Tera: templates read Consul and the
//! kv directory through a few functions, are rendered again when what they
//! read changes, and are written atomically, with a command run after a
//! changed output.
//!
//! ```text
//! source ──parse──▶ Compiled ──render(DataView)──▶ text + dependencies read
//!                                  │ held: a dependency has no data yet
//!                                  │ error: previous output kept
//!                                  ▼
//!                    TemplateSet: quiescence, batch, write, command
//! ```
//!
//! Templates can only read what the functions give (Consul, the kv
//! directory, environment variables; Tera's `get_env` is the same as
//! `env`): Tera's date and random functions are compiled out, it has no
//! function that reads a file or runs a program, and `include` / `import`
//! only see the template itself.

mod functions;
pub mod once;
pub mod output;
mod set;

use std::collections::BTreeSet;

use tera::Tera;

use crate::config::TemplateSpec;
use crate::error_chain::sources;
pub use functions::{DataView, Dep, RenderScope};
pub use set::{Rendered, TemplatePlan, TemplateSet, TemplateStatus, digest};

/// A parsed template, ready to render any number of times.
pub struct Compiled {
    tera: Tera,
    name: String,
    /// For locating render errors by line.
    text: String,
}

/// What one render gave.
#[derive(Debug)]
pub enum RenderOutcome {
    Ready(String),
    /// Some dependency had no data yet, or a `key()` does not exist.
    Held(BTreeSet<String>),
    Failed(String),
}

/// A template's source text; the error names the template and the file.
fn read_source(spec: &TemplateSpec) -> Result<String, String> {
    std::fs::read_to_string(&spec.source).map_err(|e| {
        format!(
            "template {}: cannot read {}: {e}",
            spec.name,
            spec.source.display()
        )
    })
}

impl Compiled {
    /// Reads and parses the template source; the error names the template
    /// and the line.
    pub fn load(spec: &TemplateSpec) -> Result<Self, String> {
        Self::parse(&spec.name, read_source(spec)?)
    }

    pub fn parse(name: &str, text: String) -> Result<Self, String> {
        let mut tera = Tera::default();
        // Output is config files, never HTML.
        tera.autoescape_on(Vec::new());
        tera.add_raw_template(name, &text)
            .map_err(|e| describe(name, &text, &e))?;
        Ok(Self {
            tera,
            name: name.to_string(),
            text,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Renders with `view`; returns the outcome and every dependency read.
    pub fn render(&mut self, view: DataView, strict: bool) -> (RenderOutcome, BTreeSet<Dep>) {
        let scope = RenderScope::new(view, strict);
        functions::register(&mut self.tera, &scope);
        let rendered = self.tera.render(&self.name, &tera::Context::new());
        let (deps, missing) = scope.finish();
        let outcome = match rendered {
            Err(e) => RenderOutcome::Failed(describe(&self.name, &self.text, &e)),
            Ok(_) if !missing.is_empty() => RenderOutcome::Held(missing),
            Ok(text) => RenderOutcome::Ready(text),
        };
        (outcome, deps)
    }
}

/// `template NAME: line N: what went wrong`. Tera gives a position for
/// syntax errors; for render errors it names the variable, function or
/// filter in backquotes, and the first line using it is shown (written by
/// hand: Tera 1 keeps no positions after parsing).
fn describe(name: &str, text: &str, error: &tera::Error) -> String {
    // Tera's outer "Failed to render/parse 'NAME'" links repeat what the
    // prefix already says; the causes below them are the news.
    let chain: Vec<String> = sources(error)
        .map(ToString::to_string)
        .filter(|m| !m.starts_with("Failed to render") && !m.starts_with("Failed to parse"))
        .collect();
    let detail = chain.join(": ");
    let line = parse_position(&detail).or_else(|| first_use(text, &detail));
    let detail = one_line(&detail);
    match line {
        Some(line) => format!("template {name}: line {line}: {detail}"),
        None => format!("template {name}: {detail}"),
    }
}

/// The line of a pest position marker ` --> 3:8`.
fn parse_position(detail: &str) -> Option<usize> {
    let at = detail.find("--> ")? + 4;
    let digits: String = detail[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The first line of `text` that uses what `detail` names: a failed
/// function call (`Function call 'key' failed`) or a backquoted variable or
/// filter.
fn first_use(text: &str, detail: &str) -> Option<usize> {
    let quoted = |open: &str, close: char| -> Option<&str> {
        let start = detail.find(open)? + open.len();
        let len = detail[start..].find(close)?;
        Some(&detail[start..start + len])
    };
    let token = match quoted("Function call '", '\'') {
        Some(function) => format!("{function}("),
        None => quoted("`", '`')?.to_string(),
    };
    if token.is_empty() || token == "(" {
        return None;
    }
    let token = token.as_str();
    text.lines().position(|l| l.contains(token)).map(|i| i + 1)
}

/// Pest's multi-line pointer drawings, squeezed into one log-friendly line.
fn one_line(detail: &str) -> String {
    detail
        .lines()
        .map(|l| l.trim().trim_start_matches('=').trim())
        .filter(|l| {
            let source_echo = l
                .split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !l.starts_with('|') && !l.starts_with("-->") && !source_echo
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::consul::WatchKey;
    use crate::discovery::kvdir::KvSnapshot;
    use std::sync::Arc;

    fn kv_view(files: &[(&str, &str)]) -> DataView {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in files {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        DataView {
            consul: Default::default(),
            kv: Some(Arc::new(KvSnapshot::scan(dir.path()).unwrap())),
        }
    }

    #[test]
    fn syntax_errors_name_the_template_and_line() {
        let err = Compiled::parse("routes.tera", "a\nb\n{{ key(path= }}\n".into())
            .err()
            .unwrap();
        assert!(
            err.starts_with("template routes.tera: line 3: expected"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn render_errors_point_at_the_first_use() {
        let mut t = Compiled::parse("t", "ok\n{{ nothing.here }}\n".into()).unwrap();
        let (outcome, _) = t.render(kv_view(&[]), false);
        let RenderOutcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(err.starts_with("template t: line 2: "), "{err}");
        assert!(err.contains("nothing.here"), "{err}");
    }

    #[test]
    fn functions_read_the_kv_directory_with_consul_template_semantics() {
        let view = kv_view(&[
            ("app/b", "2"),
            ("app/a", "1"),
            ("app/sub/c", "3"),
            ("app/empty", ""),
        ]);
        let src = "{{ key(path=\"/app/a\") }}|{{ key_or_default(path=\"app/empty\", default=\"d\") }}|\
                   {{ key_or_default(path=\"app/none\", default=\"z\") }}|\
                   {% for p in ls(prefix=\"app/\") %}{{ p.key }}={{ p.value }},{% endfor %}|\
                   {% for p in tree(prefix=\"app\") %}{{ p.key }},{% endfor %}";
        let mut t = Compiled::parse("t", src.into()).unwrap();
        let (outcome, deps) = t.render(view, false);
        let RenderOutcome::Ready(text) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(text, "1|d|z|a=1,b=2,empty=,|a,b,empty,sub/c,");
        assert!(deps.contains(&Dep::KvDir(WatchKey::Key("app/a".into()))));
        assert!(deps.contains(&Dep::KvDir(WatchKey::Prefix("app/".into()))));
    }

    #[test]
    fn a_missing_key_holds_or_fails_when_strict() {
        let mut t = Compiled::parse("t", "{{ key(path=\"x\") }}".into()).unwrap();
        let (outcome, deps) = t.render(kv_view(&[]), false);
        let RenderOutcome::Held(why) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(why.iter().next().unwrap(), "key x (does not exist)");
        assert_eq!(deps.len(), 1);
        let (outcome, _) = t.render(kv_view(&[]), true);
        let RenderOutcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(err.starts_with("template t: line 1: "), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        let (outcome, _) = t.render(kv_view(&[("x", "here")]), false);
        assert!(matches!(outcome, RenderOutcome::Ready(t) if t == "here"));
    }

    #[test]
    fn consul_functions_hold_until_their_watch_answers() {
        let mut t = Compiled::parse(
            "t",
            "{% for s in service(name=\"web\") %}{{ s.address }}{% endfor %}".into(),
        )
        .unwrap();
        let (outcome, deps) = t.render(DataView::default(), false);
        assert!(matches!(outcome, RenderOutcome::Held(_)), "{outcome:?}");
        assert_eq!(
            deps.into_iter().collect::<Vec<_>>(),
            vec![Dep::Consul(WatchKey::Service {
                name: "web".into(),
                tag: None,
                datacenter: None,
                passing_only: true
            })]
        );
    }

    #[test]
    fn no_file_access_beyond_the_functions() {
        for src in [
            "{% include \"/etc/passwd\" %}",
            "{% import \"/etc/passwd\" as m %}",
            "{{ now() }}",
        ] {
            let outcome =
                Compiled::parse("t", src.into()).map(|mut t| t.render(kv_view(&[]), false).0);
            assert!(
                !matches!(outcome, Ok(RenderOutcome::Ready(_))),
                "{src} rendered: {outcome:?}"
            );
        }
    }
}
