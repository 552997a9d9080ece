//! One agent's cache (§2.4, `?cached`): the agent answers cached reads of
//! health/service and catalog/services itself and keeps each entry fresh
//! with one background blocking query to the servers. Modelled by counting
//! one server read when an entry is first filled and one each time its
//! result's index moves: what that background query would cost, however
//! many local clients ask.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::accounting::RequestLog;

#[derive(Debug, Default)]
pub struct AgentCache {
    /// The index each cached read was last seen at, by read identity.
    entries: Mutex<HashMap<String, u64>>,
}

impl AgentCache {
    /// Whether `key` is cached (a `HIT`).
    pub fn has(&self, key: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// Records that `key` (a read of `path`) has its result at `index`; a
    /// new entry or a moved index costs one (stale) server read.
    pub fn observe(&self, key: &str, path: &str, index: u64, log: &RequestLog) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let before = entries.insert(key.to_string(), index);
        if before != Some(index) {
            log.server_read(path, false);
        }
    }
}
