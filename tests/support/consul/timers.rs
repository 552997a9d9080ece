//! The agent's check clocks: TTL checks without an update turn critical
//! (`TTL expired`), and services whose check stays critical longer than its
//! `DeregisterCriticalServiceAfter` are removed. One task sleeps until the
//! earliest deadline and is woken whenever a write may have moved one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::shared::Shared;

/// Sleep bound when no deadline exists (a write wakes the task anyway).
const IDLE: Duration = Duration::from_secs(3600);

pub async fn run(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let next = shared.write_quietly(|st| {
            st.commit(|st, index| {
                let expired = st.catalog.expire_ttls(now, index);
                let reaped = st.catalog.reap_critical(now, index);
                ((), expired | reaped)
            });
            st.catalog.next_deadline()
        });
        let wake_at = next.unwrap_or(now + IDLE);
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = shared.timers.notified() => {}
        }
    }
}
