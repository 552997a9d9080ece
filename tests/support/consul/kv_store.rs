//! The KV table: entries sorted by key, deletion tombstones, and the table's
//! high-water index (§1.2, §1.4).
//!
//! Every method that writes takes the index of the write and says whether
//! the stored data changed; [`super::state::State`] advances the global
//! index and wakes waiters accordingly.

use std::collections::BTreeMap;

use bytes::Bytes;

/// One key (`DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Bytes,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// Lock holder; never set, sessions are not implemented.
    pub session: Option<String>,
}

#[derive(Debug, Default)]
pub struct KvStore {
    entries: BTreeMap<String, KvEntry>,
    /// Deleted key → index of its deletion, so deleting under a watched
    /// prefix raises that prefix's index. Reaped only on request.
    tombstones: BTreeMap<String, u64>,
    /// Index of the last write that changed the table.
    table_index: u64,
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.entries.get(key)
    }

    /// Entries whose key starts with `prefix` (plain string prefix), sorted.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a KvEntry)> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }

    /// Max over the table and its tombstones; at least 1.
    pub fn high_water(&self) -> u64 {
        self.table_index.max(1)
    }

    /// The index of a `recurse`/`keys` read: max `ModifyIndex` of matching
    /// entries and tombstones, else the table's high-water index.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.high_water();
        }
        let entries = self.with_prefix(prefix).map(|(_, e)| e.modify_index);
        let tombstones = self
            .tombstones
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, index)| *index);
        match entries.chain(tombstones).max() {
            Some(index) if index > 0 => index,
            _ => self.high_water(),
        }
    }

    /// Stores `value` under `key`. A write identical to the stored entry
    /// changes nothing unless `bump_identical` (pre-1.6 servers).
    pub fn put(
        &mut self,
        key: &str,
        value: Bytes,
        flags: u64,
        index: u64,
        bump_identical: bool,
    ) -> bool {
        let create_index = match self.entries.get(key) {
            Some(old) if old.value == value && old.flags == flags && !bump_identical => {
                return false;
            }
            Some(old) => old.create_index,
            None => index,
        };
        let lock_index = self.entries.get(key).map_or(0, |e| e.lock_index);
        self.entries.insert(
            key.to_string(),
            KvEntry {
                value,
                flags,
                create_index,
                modify_index: index,
                lock_index,
                session: None,
            },
        );
        self.table_index = index;
        true
    }

    /// Deletes one key; `false` (no change) when it did not exist.
    pub fn delete(&mut self, key: &str, index: u64) -> bool {
        if self.entries.remove(key).is_none() {
            return false;
        }
        self.tombstones.insert(key.to_string(), index);
        self.table_index = index;
        true
    }

    /// Deletes every key starting with `prefix`; `false` when none matched.
    pub fn delete_prefix(&mut self, prefix: &str, index: u64) -> bool {
        let doomed: Vec<String> = self.with_prefix(prefix).map(|(k, _)| k.clone()).collect();
        for key in &doomed {
            self.delete(key, index);
        }
        !doomed.is_empty()
    }

    /// Forgets every tombstone, as Consul does after `tombstone_ttl`; a
    /// prefix index can then go down.
    pub fn reap_tombstones(&mut self) {
        self.tombstones.clear();
    }

    /// Snapshot restore: no index stays above `to`.
    pub fn lower_indexes(&mut self, to: u64) {
        for entry in self.entries.values_mut() {
            entry.create_index = entry.create_index.min(to);
            entry.modify_index = entry.modify_index.min(to);
        }
        for index in self.tombstones.values_mut() {
            *index = (*index).min(to);
        }
        self.table_index = self.table_index.min(to);
    }
}
