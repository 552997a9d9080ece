//! The socket registry: one owner of every listening socket the process
//! serves on, keyed by what the config asked for.
//!
//! Listening sockets move; they are never closed and re-bound while in use
//! (closing a `SO_REUSEPORT` socket drops the connections queued on it).
//! So the registry keeps a duplicate of each live socket for the binary
//! upgrade to hand over, and a pool of sockets received from elsewhere (the
//! process being replaced, or systemd's `LISTEN_FDS`) that binding takes
//! from before it binds anything new. Whatever the pool still holds once
//! the first config runs was for a listener that config no longer has, and
//! is closed.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// What a listening socket is for, as the config names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// The admin server's socket.
    Admin(SocketAddr),
    /// A listener's sockets (one per worker). `name` is set only for port
    /// 0, where the address alone does not tell two listeners apart.
    Listener {
        bind: SocketAddr,
        name: Option<String>,
    },
}

/// Shared by the listener set, the admin server and the upgrade.
#[derive(Clone, Default)]
pub struct SocketRegistry(Arc<Mutex<Registry>>);

#[derive(Default)]
struct Registry {
    /// Duplicates of the sockets being served on, for a handover.
    live: BTreeMap<Slot, Vec<OwnedFd>>,
    /// Sockets received and not yet taken by a listener.
    inherited: HashMap<Slot, Vec<TcpListener>>,
}

impl SocketRegistry {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Held only for map operations, never across an await; a poisoned
        // lock means a panic elsewhere, and the maps are still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds sockets received from the process being replaced.
    pub fn inherit(&self, slot: Slot, sockets: Vec<TcpListener>) {
        if sockets.is_empty() {
            return;
        }
        tracing::debug!(?slot, count = sockets.len(), "Inherited listening sockets");
        self.lock()
            .inherited
            .entry(slot)
            .or_default()
            .extend(sockets);
    }

    /// Adds the sockets systemd passed (`LISTEN_FDS`), each filed under its
    /// own address: a listener or the admin server bound to that address
    /// takes it (see [`SocketRegistry::take_for_admin`]). Returns how many
    /// there were.
    pub fn inherit_systemd(&self) -> usize {
        let mut passed = listenfd::ListenFd::from_env();
        let mut count = 0;
        for index in 0..passed.len() {
            match passed.take_tcp_listener(index) {
                Ok(Some(socket)) => match socket.local_addr() {
                    Ok(addr) => {
                        let slot = Slot::Listener {
                            bind: addr,
                            name: None,
                        };
                        self.inherit(slot, vec![socket]);
                        count += 1;
                    }
                    Err(error) => {
                        tracing::warn!(index, %error, "Skipping a LISTEN_FDS socket without an address")
                    }
                },
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(index, %error, "Skipping a LISTEN_FDS descriptor that is not a TCP listener")
                }
            }
        }
        count
    }

    /// The inherited sockets for `slot`, if any; they are the caller's now.
    pub fn take_inherited(&self, slot: &Slot) -> Vec<TcpListener> {
        self.lock().inherited.remove(slot).unwrap_or_default()
    }

    /// The admin server's inherited socket: handed over as such, or passed
    /// by systemd for its address.
    pub fn take_for_admin(&self, addr: SocketAddr) -> Option<TcpListener> {
        let mut registry = self.lock();
        let passed = Slot::Listener {
            bind: addr,
            name: None,
        };
        [Slot::Admin(addr), passed]
            .iter()
            .find_map(|slot| registry.inherited.remove(slot))
            .and_then(|sockets| sockets.into_iter().next())
    }

    /// Closes the inherited sockets no listener took.
    pub fn close_unclaimed(&self) {
        let unclaimed = std::mem::take(&mut self.lock().inherited);
        for (slot, sockets) in unclaimed {
            tracing::info!(
                ?slot,
                count = sockets.len(),
                "Closing inherited sockets the config does not use"
            );
        }
    }

    /// Records the sockets now served on for `slot`, keeping a duplicate
    /// of each for a handover.
    pub fn serve(&self, slot: Slot, sockets: &[TcpListener]) {
        let dups: Vec<OwnedFd> = sockets
            .iter()
            .filter_map(|s| match s.try_clone() {
                Ok(dup) => Some(OwnedFd::from(dup)),
                Err(error) => {
                    tracing::warn!(?slot, %error, "Cannot keep a listening socket for upgrades");
                    None
                }
            })
            .collect();
        self.lock().live.insert(slot, dups);
    }

    /// Forgets (and closes the duplicates of) a slot no longer served.
    pub fn release(&self, slot: &Slot) {
        self.lock().live.remove(slot);
    }

    /// Forgets every slot: the process has handed its sockets over.
    pub fn release_all(&self) {
        std::mem::take(&mut self.lock().live);
    }

    /// Duplicates of every live socket, to hand over.
    pub fn live(&self) -> std::io::Result<Vec<(Slot, Vec<OwnedFd>)>> {
        let registry = self.lock();
        registry
            .live
            .iter()
            .map(|(slot, fds)| {
                let dups = fds
                    .iter()
                    .map(OwnedFd::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok((slot.clone(), dups))
            })
            .collect()
    }
}
