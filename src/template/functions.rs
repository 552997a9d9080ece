//! The functions templates call, with consul-template's meaning, and the
//! record of what one render read.
//!
//! Every function reads through a [`RenderScope`]: the data available when
//! the render started plus two sets it fills in, the dependencies read and
//! the ones that had no data yet. A render that found anything missing is
//! held (not written); its dependencies are watched, and their first answer
//! renders it again, as consul-template's runner does.
//!
//! | function | reads | result |
//! | --- | --- | --- |
//! | `key(path)` | one key | its value; holds the render while the key does not exist |
//! | `key_or_default(path, default)` | one key | its value, or `default` when missing or empty; never holds |
//! | `ls(prefix)` | pairs under prefix | `{key, path, value}` directly under it, by key |
//! | `tree(prefix)` | pairs under prefix | `{key, path, value}` at any depth, by key |
//! | `service(name, tag?, dc?, passing?)` | Consul health | instances, by node then ID |
//! | `services(dc?)` | Consul catalog | `{name, tags}`, by name, tags sorted |
//! | `env(name)` | the environment | the value, or `""` |

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tera::{Tera, Value};

use crate::discovery::consul::{ConsulWatch, Instance, KvPair, WatchData, WatchKey};
use crate::discovery::kvdir::KvSnapshot;

/// One thing a template read: a Consul query or a query of the kv directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    Consul(WatchKey),
    KvDir(WatchKey),
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Consul(k) => write!(f, "{k}"),
            Self::KvDir(k) => write!(f, "kvdir:{k}"),
        }
    }
}

/// The data a render may read: the Consul watches running now and the kv
/// directory's latest snapshot.
#[derive(Clone, Default)]
pub struct DataView {
    pub consul: HashMap<WatchKey, Arc<ConsulWatch>>,
    /// `Some` when `[kv] dir` is set: then `key`, `ls` and friends read the
    /// directory instead of Consul KV.
    pub kv: Option<Arc<KvSnapshot>>,
}

impl DataView {
    /// `None` while there is no data yet (a watch not started or not
    /// answered).
    pub fn get(&self, dep: &Dep) -> Option<Arc<WatchData>> {
        match dep {
            Dep::Consul(k) => self.consul.get(k)?.data(),
            Dep::KvDir(k) => self.kv.as_ref()?.query(k).map(Arc::new),
        }
    }

    fn kv_dep(&self, key: WatchKey) -> Dep {
        if self.kv.is_some() {
            Dep::KvDir(key)
        } else {
            Dep::Consul(key)
        }
    }
}

/// One render's view of the data and what it read.
pub struct RenderScope {
    view: DataView,
    strict: bool,
    record: Mutex<Record>,
}

#[derive(Default)]
struct Record {
    used: BTreeSet<Dep>,
    /// Why the render cannot be written yet, e.g. `key app/x (does not exist)`.
    missing: BTreeSet<String>,
}

impl RenderScope {
    /// `strict`: a missing `key()` is an error rather than a hold
    /// (`error_on_missing_key`).
    pub fn new(view: DataView, strict: bool) -> Arc<Self> {
        Arc::new(Self {
            view,
            strict,
            record: Mutex::default(),
        })
    }

    /// The dependencies read and what was missing, after the render.
    pub fn finish(&self) -> (BTreeSet<Dep>, BTreeSet<String>) {
        let mut r = self.lock();
        (std::mem::take(&mut r.used), std::mem::take(&mut r.missing))
    }

    /// Records `dep` as used and returns its data, or records it as
    /// missing.
    fn read(&self, dep: Dep) -> Option<Arc<WatchData>> {
        let data = self.view.get(&dep);
        let mut r = self.lock();
        if data.is_none() {
            r.missing.insert(format!("{dep} (no data yet)"));
        }
        r.used.insert(dep);
        data
    }

    /// Like `read`, for functions that do not hold the render.
    fn read_optional(&self, dep: Dep) -> Option<Arc<WatchData>> {
        let data = self.view.get(&dep);
        self.lock().used.insert(dep);
        data
    }

    /// Functions run on the rendering thread only; a poisoned lock still
    /// holds a usable record.
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Installs the functions on `tera`, reading through `scope`; done before
/// each render (registering replaces the previous render's functions).
pub fn register(tera: &mut Tera, scope: &Arc<RenderScope>) {
    let s = scope.clone();
    tera.register_function("key", move |args: &HashMap<String, Value>| {
        let path = key_path(str_arg(args, "key", "path")?);
        let data = s.read(s.view.kv_dep(WatchKey::Key(path.clone())));
        let Some(data) = data else {
            return Ok(Value::from(""));
        };
        match kv_value(&data, &path) {
            Some(v) => Ok(Value::from(v)),
            None if s.strict => Err(tera::Error::msg(format!(
                "key({path:?}): the key does not exist (error_on_missing_key)"
            ))),
            None => {
                s.lock()
                    .missing
                    .insert(format!("key {path} (does not exist)"));
                Ok(Value::from(""))
            }
        }
    });
    let s = scope.clone();
    tera.register_function("key_or_default", move |args: &HashMap<String, Value>| {
        let path = key_path(str_arg(args, "key_or_default", "path")?);
        let default = str_arg(args, "key_or_default", "default")?;
        let data = s.read_optional(s.view.kv_dep(WatchKey::Key(path.clone())));
        let value = data
            .and_then(|d| kv_value(&d, &path))
            .filter(|v| !v.is_empty());
        Ok(Value::from(value.unwrap_or_else(|| default.to_string())))
    });
    // ls: direct children only; tree: any depth, folder keys left out.
    let listing: [(&'static str, KeepKey); 2] = [
        ("ls", |rel| !rel.is_empty() && !rel.contains('/')),
        ("tree", |rel| !rel.is_empty() && !rel.ends_with('/')),
    ];
    for (name, keep) in listing {
        let s = scope.clone();
        tera.register_function(name, move |args: &HashMap<String, Value>| {
            let prefix = key_path(str_arg(args, name, "prefix")?);
            let data = s.read(s.view.kv_dep(WatchKey::Prefix(prefix.clone())));
            Ok(pairs_under(data.as_deref(), &prefix, keep))
        });
    }
    let s = scope.clone();
    tera.register_function("service", move |args: &HashMap<String, Value>| {
        let key = WatchKey::Service {
            name: str_arg(args, "service", "name")?.to_string(),
            tag: opt_str_arg(args, "service", "tag")?,
            datacenter: opt_str_arg(args, "service", "dc")?,
            passing_only: match args.get("passing") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(tera::Error::msg(
                        "service(): `passing` must be true or false",
                    ));
                }
            },
        };
        let data = s.read(Dep::Consul(key));
        let instances: Vec<ServiceView> = match data.as_deref() {
            Some(WatchData::Service(list)) => list.iter().map(ServiceView::from).collect(),
            _ => Vec::new(),
        };
        to_value(&instances)
    });
    let s = scope.clone();
    tera.register_function("services", move |args: &HashMap<String, Value>| {
        let key = WatchKey::Catalog {
            datacenter: opt_str_arg(args, "services", "dc")?,
        };
        let data = s.read(Dep::Consul(key));
        let list: Vec<CatalogView<'_>> = match data.as_deref() {
            Some(WatchData::Catalog(map)) => map
                .iter()
                .map(|(name, tags)| CatalogView { name, tags })
                .collect(),
            _ => Vec::new(),
        };
        to_value(&list)
    });
    tera.register_function("env", |args: &HashMap<String, Value>| {
        let name = str_arg(args, "env", "name")?;
        Ok(Value::from(std::env::var(name).unwrap_or_default()))
    });
}

/// Which keys under a prefix a listing function keeps, by relative name.
type KeepKey = fn(&str) -> bool;

/// consul-template trims a leading `/` from key paths.
fn key_path(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

fn str_arg<'a>(args: &'a HashMap<String, Value>, func: &str, name: &str) -> tera::Result<&'a str> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(tera::Error::msg(format!(
            "{func}(): `{name}` must be a string"
        ))),
        None => Err(tera::Error::msg(format!(
            "{func}(): missing argument `{name}`"
        ))),
    }
}

fn opt_str_arg(
    args: &HashMap<String, Value>,
    func: &str,
    name: &str,
) -> tera::Result<Option<String>> {
    match args.get(name) {
        None => Ok(None),
        Some(_) => str_arg(args, func, name).map(|s| Some(s.to_string())),
    }
}

fn kv_value(data: &WatchData, path: &str) -> Option<String> {
    match data {
        WatchData::Kv(pairs) => pairs
            .iter()
            .find(|p| p.key == path)
            .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
        _ => None,
    }
}

/// Pairs under `prefix` (a plain string prefix, as Consul's), named
/// relative to it with a leading `/` trimmed, kept when `keep(relative)`.
fn pairs_under(data: Option<&WatchData>, prefix: &str, keep: impl Fn(&str) -> bool) -> Value {
    let Some(WatchData::Kv(pairs)) = data else {
        return Value::Array(Vec::new());
    };
    let list = pairs
        .iter()
        .filter_map(|p: &KvPair| {
            let rel = p.key.strip_prefix(prefix)?.trim_start_matches('/');
            keep(rel).then(|| {
                serde_json::json!({
                    "key": rel,
                    "path": p.key,
                    "value": String::from_utf8_lossy(&p.value),
                    "flags": p.flags,
                })
            })
        })
        .collect();
    Value::Array(list)
}

fn to_value<T: Serialize>(v: &T) -> tera::Result<Value> {
    serde_json::to_value(v).map_err(|e| tera::Error::msg(e.to_string()))
}

/// A service instance as templates see it.
#[derive(Serialize)]
struct ServiceView<'a> {
    id: &'a str,
    name: &'a str,
    node: &'a str,
    address: &'a str,
    port: u16,
    /// A sorted copy, as consul-template gives.
    tags: Vec<&'a str>,
    meta: &'a std::collections::BTreeMap<String, String>,
    weight: u32,
    status: &'a str,
}

impl<'a> From<&'a Instance> for ServiceView<'a> {
    fn from(i: &'a Instance) -> Self {
        let mut tags: Vec<&str> = i.tags.iter().map(String::as_str).collect();
        tags.sort_unstable();
        Self {
            id: &i.id,
            name: &i.service,
            node: &i.node,
            address: &i.address,
            port: i.port,
            tags,
            meta: &i.meta,
            weight: i.weight,
            status: &i.status,
        }
    }
}

#[derive(Serialize)]
struct CatalogView<'a> {
    name: &'a str,
    tags: &'a [String],
}
