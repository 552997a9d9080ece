//! The local key/value directory (`[kv] dir`): a file's path under the
//! directory is its key, the file's bytes its value. It answers the same
//! queries as Consul KV, so templates read it through the same functions.
//!
//! The directory is scanned whole into memory (a few hundred small files at
//! most, as a KV tree) and rescanned when notify reports a change; keys are
//! only ever looked up in that in-memory map, so no template argument can
//! name a file outside the directory.
//!
//! What counts as a key:
//! - regular files, recursively; names starting with `.` (editor swap and
//!   temp files, Kubernetes' `..data`) or ending with `~` are skipped;
//! - symbolic links only when they resolve inside the directory (a
//!   Kubernetes ConfigMap volume is made of such links);
//! - at most [`MAX_VALUE_BYTES`] per file, Consul's own value limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::consul::{KvPair, WatchData, WatchKey};

/// Consul refuses values over 512 KiB; so does the directory.
pub const MAX_VALUE_BYTES: u64 = 512 * 1024;
/// Bounds a walk through symlinked directories that point at each other.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KvDirError {
    #[error("kv directory {dir}: {source}")]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching kv directory {dir}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The directory's content at one moment, by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvSnapshot {
    entries: BTreeMap<String, Arc<[u8]>>,
}

impl KvSnapshot {
    /// Reads every key under `dir`. Files that cannot be read are skipped
    /// with a warning; only an unreadable `dir` itself is an error.
    pub fn scan(dir: &Path) -> Result<Self, KvDirError> {
        let root = dir.canonicalize().map_err(|source| KvDirError::Read {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut entries = BTreeMap::new();
        let top = std::fs::read_dir(&root).map_err(|source| KvDirError::Read {
            dir: dir.to_path_buf(),
            source,
        })?;
        walk(&root, top, "", 0, &mut entries);
        Ok(Self { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Answers a KV query as Consul would (`None` for non-KV queries):
    /// one key, every pair under a plain string prefix, or the key names.
    pub fn query(&self, key: &WatchKey) -> Option<WatchData> {
        let pair = |(k, v): (&String, &Arc<[u8]>)| KvPair {
            key: k.clone(),
            value: v.to_vec(),
            flags: 0,
        };
        match key {
            WatchKey::Key(k) => Some(WatchData::Kv(
                self.entries
                    .get_key_value(k)
                    .map(pair)
                    .into_iter()
                    .collect(),
            )),
            WatchKey::Prefix(p) => Some(WatchData::Kv(self.under(p).map(pair).collect())),
            WatchKey::Keys { prefix, separator } => {
                let mut names: Vec<String> = self
                    .under(prefix)
                    .map(|(k, _)| match separator {
                        Some(sep) => match k[prefix.len()..].find(sep.as_str()) {
                            Some(i) => k[..prefix.len() + i + sep.len()].to_string(),
                            None => k.clone(),
                        },
                        None => k.clone(),
                    })
                    .collect();
                names.dedup();
                Some(WatchData::Keys(names))
            }
            WatchKey::Service { .. } | WatchKey::Catalog { .. } => None,
        }
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Arc<[u8]>)> {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }
}

fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~')
}

fn walk(
    root: &Path,
    dir: std::fs::ReadDir,
    prefix: &str,
    depth: usize,
    entries: &mut BTreeMap<String, Arc<[u8]>>,
) {
    for entry in dir.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if skipped(&name) {
            continue;
        }
        let path = entry.path();
        let key = format!("{prefix}{name}");
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_symlink() {
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) => {}
                _ => {
                    tracing::warn!(file = %path.display(), "kv directory: skipping a link that leads outside the directory");
                    continue;
                }
            }
        }
        // Follows a link that stays inside (checked above).
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Ok(sub) = std::fs::read_dir(&path) {
                walk(root, sub, &format!("{key}/"), depth + 1, entries);
            }
        } else if meta.is_file() {
            if meta.len() > MAX_VALUE_BYTES {
                tracing::warn!(file = %path.display(), bytes = meta.len(), "kv directory: skipping a file over 512 KiB");
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    entries.insert(key, bytes.into());
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "kv directory: cannot read file")
                }
            }
        }
    }
}

/// The directory, its latest snapshot, and the notify watch that tells the
/// control task to rescan it.
pub struct KvDir {
    dir: PathBuf,
    snapshot: Arc<KvSnapshot>,
    _watcher: RecommendedWatcher,
}

impl KvDir {
    /// Scans `dir` and starts watching it; `changed` gets a message (one
    /// slot, coalesced) whenever something under it changes.
    pub fn start(dir: &Path, changed: mpsc::Sender<()>) -> Result<Self, KvDirError> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && !matches!(event.kind, EventKind::Access(_))
                {
                    // Full means a rescan is already pending, which will see this.
                    let _ = changed.try_send(());
                }
            })
            .map_err(|source| KvDirError::Watch {
                dir: dir.to_path_buf(),
                source,
            })?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|source| KvDirError::Watch {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            snapshot: Arc::new(KvSnapshot::scan(dir)?),
            _watcher: watcher,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot(&self) -> Arc<KvSnapshot> {
        self.snapshot.clone()
    }

    /// Reads the directory again (off the async threads) and returns the
    /// previous snapshot, for the caller to compare; the old one is kept if
    /// the directory cannot be read.
    pub async fn rescan(&mut self) -> Arc<KvSnapshot> {
        let dir = self.dir.clone();
        let scanned = tokio::task::spawn_blocking(move || KvSnapshot::scan(&dir)).await;
        match scanned {
            Ok(Ok(snapshot)) => std::mem::replace(&mut self.snapshot, Arc::new(snapshot)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "kv directory: keeping the last content");
                self.snapshot.clone()
            }
            Err(_) => self.snapshot.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, key: &str, value: &str) {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }

    fn pairs(data: Option<WatchData>) -> Vec<(String, String)> {
        let Some(WatchData::Kv(pairs)) = data else {
            panic!("kv data expected");
        };
        pairs
            .into_iter()
            .map(|p| (p.key, String::from_utf8(p.value).unwrap()))
            .collect()
    }

    #[test]
    fn files_are_keys_and_prefixes_are_plain_string_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "app/a", "1");
        put(dir.path(), "app/sub/b", "2");
        put(dir.path(), "app-other/c", "3");
        put(dir.path(), "app/.a.swp", "editor");
        put(dir.path(), "app/a~", "backup");
        let snap = KvSnapshot::scan(dir.path()).unwrap();
        assert_eq!(snap.len(), 3);
        assert_eq!(
            pairs(snap.query(&WatchKey::Key("app/a".into()))),
            vec![("app/a".into(), "1".into())]
        );
        assert!(pairs(snap.query(&WatchKey::Key("app/missing".into()))).is_empty());
        assert_eq!(
            pairs(snap.query(&WatchKey::Prefix("app".into())))
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["app-other/c", "app/a", "app/sub/b"]
        );
        assert_eq!(
            snap.query(&WatchKey::Keys {
                prefix: "app/".into(),
                separator: Some("/".into())
            }),
            Some(WatchData::Keys(vec!["app/a".into(), "app/sub/".into()]))
        );
    }

    #[test]
    fn links_leading_outside_are_skipped() {
        let outside = tempfile::tempdir().unwrap();
        put(outside.path(), "secret", "s3cret");
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "data/inside", "ok");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leak")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("data/inside"), dir.path().join("alias"))
            .unwrap();
        let snap = KvSnapshot::scan(dir.path()).unwrap();
        assert!(pairs(snap.query(&WatchKey::Key("leak".into()))).is_empty());
        assert_eq!(
            pairs(snap.query(&WatchKey::Key("alias".into()))),
            vec![("alias".into(), "ok".into())]
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KvSnapshot::scan(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
