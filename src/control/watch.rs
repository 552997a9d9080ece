//! Watches the config file and its includes for changes.
//!
//! Directories are watched rather than files, because editors and config
//! tools replace a file by renaming a new one over it, which a watch on the
//! old inode would miss. Events are filtered down to the files of interest
//! and coalesced into a one-slot channel; the control task debounces.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    /// Read by notify's thread for each event; written on reload.
    files: Arc<Mutex<HashSet<PathBuf>>>,
}

impl ConfigWatcher {
    pub fn new(tx: mpsc::Sender<()>) -> notify::Result<Self> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let wanted = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let files = wanted.lock().unwrap_or_else(|p| p.into_inner());
            if event.paths.iter().any(|p| files.contains(p)) {
                // Full means a reload is already pending, which will see this change.
                let _ = tx.try_send(());
            }
        })?;
        Ok(Self {
            watcher,
            dirs: HashSet::new(),
            files,
        })
    }

    /// Makes `files` the watched set.
    pub fn watch(&mut self, files: &[PathBuf]) {
        let files: HashSet<PathBuf> = files.iter().map(|f| crate::config::absolute(f)).collect();
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for dir in dirs.difference(&self.dirs) {
            if let Err(error) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(%error, dir = %dir.display(), "Cannot watch config directory; use SIGHUP or POST /reload");
            }
        }
        for dir in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(dir);
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }
}
