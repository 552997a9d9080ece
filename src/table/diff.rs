//! What changed between two configs: shown in `/status` and logged in one
//! line per applied reload.

use std::fmt;
use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

use serde::Serialize;

use crate::config::{BackendSpec, Config, HostPattern, ListenerSpec, ServerTarget};

/// Names added, removed and changed in one kind of item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    /// Compares two keyed collections; `name` renders the keys that made it
    /// into the result, so a large unchanged config formats nothing.
    fn between<K, V>(
        old: impl Iterator<Item = (K, V)>,
        new: impl Iterator<Item = (K, V)>,
        name: impl Fn(&K) -> String,
    ) -> Self
    where
        K: Hash + Eq,
        V: PartialEq,
    {
        let mut old: HashMap<K, V> = old.collect();
        let mut c = Self::default();
        for (k, v) in new {
            match old.remove(&k) {
                None => c.added.push(name(&k)),
                Some(o) if o != v => c.changed.push(name(&k)),
                Some(_) => {}
            }
        }
        c.removed = old.keys().map(&name).collect();
        for list in [&mut c.added, &mut c.removed, &mut c.changed] {
            list.sort_unstable();
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{} -{} ~{}",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    pub listeners: Changes,
    pub routes: Changes,
    pub backends: Changes,
    /// Servers as `backend/address`; a weight change counts as changed.
    pub servers: Changes,
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config) -> Self {
        fn listeners(c: &Config) -> impl Iterator<Item = (&str, &ListenerSpec)> {
            c.listeners.iter().map(|l| (&*l.name, l))
        }
        type RouteKey<'a> = (&'a str, &'a HostPattern, &'a str);
        fn routes(c: &Config) -> impl Iterator<Item = (RouteKey<'_>, &str)> {
            c.routes
                .iter()
                .map(|r| ((&*r.listener, &r.host, &*r.path_prefix), &*r.backend))
        }
        fn backends(c: &Config) -> impl Iterator<Item = (&str, &BackendSpec)> {
            c.backends.iter().map(|b| (&*b.name, b))
        }
        fn servers(c: &Config) -> impl Iterator<Item = ((&str, &ServerTarget), (u32, bool))> {
            c.backends.iter().flat_map(|b| {
                b.servers()
                    .iter()
                    .map(move |s| ((&*b.name, &s.target), (s.weight, s.required)))
            })
        }
        Self {
            listeners: Changes::between(listeners(old), listeners(new), |n| n.to_string()),
            routes: Changes::between(routes(old), routes(new), |(l, host, path)| {
                format!("{l} {host}{path}")
            }),
            backends: Changes::between(backends(old), backends(new), |n| n.to_string()),
            servers: Changes::between(servers(old), servers(new), |(b, addr)| {
                format!("{b}/{addr}")
            }),
        }
    }

    /// Everything in `config`, as added: the diff of the first load.
    pub fn initial(config: &Config) -> Self {
        let empty = Config {
            files: Vec::new(),
            admin_bind: config.admin_bind,
            timeouts: config.timeouts,
            shutdown_grace: config.shutdown_grace,
            limits: config.limits,
            resolver: config.resolver.clone(),
            consul: config.consul.clone(),
            mdns: config.mdns.clone(),
            kv: config.kv.clone(),
            templates: config.templates.clone(),
            register: config.register.clone(),
            listeners: Vec::new(),
            routes: Vec::new(),
            backends: Vec::new(),
        };
        Self::between(&empty, config)
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.routes.is_empty()
            && self.backends.is_empty()
            && self.servers.is_empty()
    }
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listeners {} routes {} backends {} servers {}",
            self.listeners, self.routes, self.backends, self.servers
        )
    }
}
