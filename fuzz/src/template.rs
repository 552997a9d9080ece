//! Templates: Tera text through `template::Compiled::parse` and a render
//! whose functions (`key`, `key_or_default`, `ls`, `tree`, `service`,
//! `services`, `env`) read Consul watches, or the kv directory, holding
//! a little data. What the functions get as arguments is whatever the
//! template passes: strings, numbers, maps, nothing.
//!
//! Input: one flags byte (bit 0: read the kv directory instead of Consul;
//! bit 1: `error_on_missing_key`), then the template text.
//!
//! Checked: never a panic (a parse error or a failed render is an error
//! naming the template); a render that reads nothing missing is ready.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard::discovery::consul::{ConsulWatch, Instance, KvPair, WatchData, WatchKey};
use switchyard::discovery::kvdir::KvSnapshot;
use switchyard::template::{Compiled, DataView, RenderOutcome};

pub struct Harness {
    consul: DataView,
    kv: DataView,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (key, value) in [
            ("app/a", "1"),
            ("app/b/c", "two"),
            ("app/", ""),
            ("x", "\u{e9}"),
        ] {
            let path = dir.path().join(key);
            if key.ends_with('/') {
                std::fs::create_dir_all(&path).expect("kv dir");
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).expect("kv dir");
                std::fs::write(&path, value).expect("kv file");
            }
        }
        let snapshot = KvSnapshot::scan(dir.path()).expect("scan kv dir");
        let pairs = |keys: &[(&str, &[u8])]| {
            WatchData::Kv(
                keys.iter()
                    .map(|(k, v)| KvPair {
                        key: k.to_string(),
                        value: v.to_vec(),
                        flags: 0,
                    })
                    .collect(),
            )
        };
        let instance = |id: &str, port| Instance {
            id: id.into(),
            service: "web".into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            port,
            tags: vec!["b".into(), "a".into()],
            meta: [("k".to_string(), "v".to_string())].into(),
            weight: 1,
            status: "passing".into(),
        };
        let data: Vec<(WatchKey, WatchData)> = vec![
            (WatchKey::Key("app/a".into()), pairs(&[("app/a", b"1")])),
            (WatchKey::Key("bin".into()), pairs(&[("bin", b"\xff\x00")])),
            (
                WatchKey::Prefix("app".into()),
                pairs(&[("app/a", b"1"), ("app/b/c", b"two"), ("app/", b"")]),
            ),
            (
                WatchKey::Service {
                    name: "web".into(),
                    tag: None,
                    datacenter: None,
                    passing_only: true,
                },
                WatchData::Service(vec![instance("w1", 80), instance("w2", 0)]),
            ),
            (
                WatchKey::Catalog { datacenter: None },
                WatchData::Catalog([("web".to_string(), vec!["a".to_string()])].into()),
            ),
        ];
        let mut consul = HashMap::new();
        for (key, data) in data {
            let watch = ConsulWatch::new(key.clone());
            watch.seed(data);
            consul.insert(key, Arc::new(watch));
        }
        Self {
            consul: DataView {
                consul: consul.clone(),
                kv: None,
            },
            kv: DataView {
                consul,
                kv: Some(Arc::new(snapshot)),
            },
            _dir: dir,
        }
    }

    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, text)) = data.split_first() else {
            return;
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return; // template sources are read as UTF-8 text
        };
        let mut compiled = match Compiled::parse("fuzz.tera", text.to_string()) {
            Ok(c) => c,
            Err(e) => {
                assert!(e.starts_with("template fuzz.tera"), "{e}");
                return;
            }
        };
        let view = if flags & 1 == 1 {
            &self.kv
        } else {
            &self.consul
        };
        let (outcome, _deps) = compiled.render(view.clone(), flags & 2 == 2);
        match outcome {
            RenderOutcome::Failed(e) => assert!(e.starts_with("template fuzz.tera"), "{e}"),
            RenderOutcome::Held(missing) => assert!(!missing.is_empty()),
            RenderOutcome::Ready(_) => {}
        }
    }
}
