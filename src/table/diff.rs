//! What changed between two configs: shown in `/status` and logged in one
//! line per applied reload.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::config::Config;

/// Names added, removed and changed in one kind of item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    fn between<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Self {
        let mut c = Self::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
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
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.to_string(), l.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let routes = |c: &Config| {
            c.routes
                .iter()
                .map(|r| {
                    (
                        format!("{} {}{}", r.listener, r.host, r.path_prefix),
                        r.backend.clone(),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let backends = |c: &Config| {
            c.backends
                .iter()
                .map(|b| (b.name.to_string(), b.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let servers = |c: &Config| {
            c.backends
                .iter()
                .flat_map(|b| {
                    b.servers()
                        .iter()
                        .map(move |s| (format!("{}/{}", b.name, s.addr), s.weight))
                })
                .collect::<BTreeMap<_, _>>()
        };
        Self {
            listeners: Changes::between(&listeners(old), &listeners(new)),
            routes: Changes::between(&routes(old), &routes(new)),
            backends: Changes::between(&backends(old), &backends(new)),
            servers: Changes::between(&servers(old), &servers(new)),
        }
    }

    /// Everything in `config`, as added: the diff of the first load.
    pub fn initial(config: &Config) -> Self {
        let empty = Config {
            files: Vec::new(),
            admin_bind: config.admin_bind,
            timeouts: config.timeouts,
            shutdown_grace: config.shutdown_grace,
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
