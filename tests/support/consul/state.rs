//! Everything a read can see, behind one lock: the global index, the KV
//! table and the catalog.
//!
//! The global index only grows (until a test lowers it to simulate a
//! snapshot restore) and starts at 1 ("nothing yet", or the configured
//! `initial_index`). A write takes the next index and stamps it into what
//! it changes; only writes that change something a reader sees wake
//! blocked queries.

use super::catalog_store::Catalog;
use super::kv_store::KvStore;

#[derive(Debug)]
pub struct State {
    index: u64,
    /// Bumped by every simulated snapshot restore; a blocked query returns
    /// at once when it sees a new epoch.
    restore_epoch: u64,
    /// Some write since the last [`take_wake`](Self::take_wake) changed
    /// what readers see.
    wake: bool,
    /// Moves with every write, visible or not: an evaluation made at one
    /// version holds until the next (the read memo in `blocking`).
    version: u64,
    pub kv: KvStore,
    pub catalog: Catalog,
}

impl State {
    /// An empty state whose index starts at `initial_index` (at least 1).
    pub fn new(initial_index: u64) -> Self {
        Self {
            index: initial_index.max(1),
            restore_epoch: 0,
            wake: false,
            version: 0,
            kv: KvStore::default(),
            catalog: Catalog::default(),
        }
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn restore_epoch(&self) -> u64 {
        self.restore_epoch
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Called for every write, before it runs.
    pub fn touch(&mut self) {
        self.version += 1;
    }

    /// Releases every blocked query at once without changing data, as a
    /// snapshot restore on the answering server does.
    pub fn release_waiters(&mut self) {
        self.restore_epoch += 1;
        self.wake = true;
    }

    /// A catalog write at the next index; `apply` returns its result and
    /// whether it changed anything. The index advances only on change (an
    /// agent in sync sends nothing to the servers).
    pub fn commit<R>(&mut self, apply: impl FnOnce(&mut Self, u64) -> (R, bool)) -> R {
        let (result, changed) = apply(self, self.index + 1);
        if changed {
            self.index += 1;
            self.wake = true;
        }
        result
    }

    /// A KV write: one Raft entry, so the index advances even when the
    /// write changes nothing (identical value, failed CAS, missing key).
    pub fn commit_raft<R>(&mut self, apply: impl FnOnce(&mut Self, u64) -> (R, bool)) -> R {
        let (result, changed) = apply(self, self.index + 1);
        self.index += 1;
        self.wake |= changed;
        result
    }

    /// Wakes readers without a write (tombstones reaped).
    pub fn mark_changed(&mut self) {
        self.wake = true;
    }

    /// Whether blocked queries must re-evaluate; clears the mark.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Snapshot restore: every index drops to at most `to` (never 0) and
    /// every blocked query returns.
    pub fn restore_to(&mut self, to: u64) {
        let to = to.max(1);
        self.index = self.index.min(to);
        self.kv.lower_indexes(to);
        self.catalog.lower_indexes(to);
        self.restore_epoch += 1;
        self.wake = true;
    }
}
