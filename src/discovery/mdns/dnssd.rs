//! Plain DNS-SD (`_http._tcp.local.`) through the mdns-sd crate: its
//! daemon browses, keeps the record cache (TTL expiry, goodbyes, refresh
//! queries) and announces; this module turns its events into a watch's
//! instances and a registration into its `ServiceInfo`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::{Notify, mpsc};

use super::engine::VERIFY_TIMEOUT;
use super::watch::{MdnsInstance, MdnsWatch};
use crate::config::MdnsTarget;

/// How long a withdrawal waits for the daemon to send the goodbye.
const GOODBYE_BUDGET: Duration = Duration::from_secs(2);

/// The mdns-sd daemon (its own thread), on the chosen interfaces.
pub struct DnsSd {
    daemon: ServiceDaemon,
}

impl DnsSd {
    /// Starts the daemon on the IPv4 side of `interfaces` only.
    pub fn start(interfaces: &[(String, Ipv4Addr)]) -> Result<Self, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(IfKind::All)?;
        for (_, ip) in interfaces {
            daemon.enable_interface(IfKind::Addr(IpAddr::V4(*ip)))?;
        }
        Ok(Self { daemon })
    }

    /// Follows `watch`'s service type until the returned task is aborted.
    pub fn follow(
        &self,
        watch: Arc<MdnsWatch>,
        wake: Arc<Notify>,
        changed: mpsc::UnboundedSender<MdnsTarget>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(browse(self.daemon.clone(), watch, wake, changed))
    }

    /// Announces `instance` of service type `ty` until the guard drops.
    pub fn register(
        &self,
        ty: &str,
        instance: &str,
        ips: &[Ipv4Addr],
        port: u16,
        properties: &BTreeMap<String, String>,
    ) -> Result<DnsSdAnnounced, mdns_sd::Error> {
        // `<host>.local.`, as Avahi names this machine.
        let hostname = crate::discovery::register::hostname();
        let host = format!(
            "{}.local.",
            hostname.split('.').next().unwrap_or("localhost")
        );
        let ips = ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let properties: HashMap<String, String> = properties.clone().into_iter().collect();
        let info = ServiceInfo::new(ty, instance, &host, ips, port, properties)?;
        let fullname = info.get_fullname().to_string();
        self.daemon.register(info)?;
        tracing::info!(service = ty, instance, port, "Announcing by DNS-SD");
        Ok(DnsSdAnnounced {
            daemon: self.daemon.clone(),
            fullname,
        })
    }
}

impl Drop for DnsSd {
    fn drop(&mut self) {
        // Its thread says goodbye for what it still announces, then ends.
        let _ = self.daemon.shutdown();
    }
}

/// Keeps a DNS-SD service announced; dropping it sends the goodbye.
pub struct DnsSdAnnounced {
    daemon: ServiceDaemon,
    fullname: String,
}

impl DnsSdAnnounced {
    /// Sends the goodbye and waits (briefly) until the daemon did.
    pub async fn withdraw(mut self) {
        let fullname = std::mem::take(&mut self.fullname);
        if let Ok(done) = self.daemon.unregister(&fullname) {
            let _ = tokio::time::timeout(GOODBYE_BUDGET, done.recv_async()).await;
            tracing::info!(instance = %fullname, "Withdrawn from DNS-SD (goodbye sent)");
        }
    }
}

impl Drop for DnsSdAnnounced {
    fn drop(&mut self) {
        if !self.fullname.is_empty() {
            let _ = self.daemon.unregister(&self.fullname);
        }
    }
}

/// Stops the daemon's browse when the task ends or is aborted.
struct StopBrowse(ServiceDaemon, String);

impl Drop for StopBrowse {
    fn drop(&mut self) {
        let _ = self.0.stop_browse(&self.1);
    }
}

async fn browse(
    daemon: ServiceDaemon,
    watch: Arc<MdnsWatch>,
    wake: Arc<Notify>,
    changed: mpsc::UnboundedSender<MdnsTarget>,
) {
    let ty = watch.target.name().to_string();
    let events = match daemon.browse(&ty) {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(service = %ty, %error, "Cannot browse DNS-SD");
            watch.failed(error.to_string());
            return;
        }
    };
    let _stop = StopBrowse(daemon.clone(), ty.clone());
    // By full instance name.
    let mut instances: BTreeMap<String, MdnsInstance> = BTreeMap::new();
    loop {
        tokio::select! {
            event = events.recv_async() => match event {
                Err(_) => return, // the daemon ended
                Ok(ServiceEvent::SearchStarted(_)) => watch.queried(),
                Ok(ServiceEvent::ServiceResolved(info)) => {
                    watch.answered();
                    match instance_of(&info, &ty) {
                        Some(instance) => {
                            instances.insert(info.fullname.clone(), instance);
                        }
                        None => {
                            instances.remove(&info.fullname);
                        }
                    }
                }
                Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                    watch.answered();
                    instances.remove(&fullname);
                }
                Ok(_) => {}
            },
            () = wake.notified() => {
                for addr in watch.take_failed() {
                    for (fullname, _) in instances.iter().filter(|(_, i)| i.addr == addr) {
                        tracing::info!(instance = %fullname, "Connect failed: asking whether the DNS-SD instance is still there");
                        let _ = daemon.verify(fullname.clone(), VERIFY_TIMEOUT);
                    }
                }
            }
        }
        if watch.publish(instances.values().cloned().collect()) {
            let _ = changed.send(watch.target.clone());
        }
    }
}

/// An instance from a resolved service: its first IPv4 address (else
/// IPv6) and port, named without the type.
fn instance_of(info: &ResolvedService, ty: &str) -> Option<MdnsInstance> {
    let mut ips: Vec<IpAddr> = info.addresses.iter().map(|a| a.to_ip_addr()).collect();
    ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    let ip = *ips.first()?;
    let name = info
        .fullname
        .strip_suffix(ty)
        .and_then(|n| n.strip_suffix('.'))
        .unwrap_or(&info.fullname);
    Some(MdnsInstance {
        name: name.to_string(),
        addr: SocketAddr::new(ip, info.port),
        version: None,
        metadata: info
            .txt_properties
            .iter()
            .map(|p| (p.key().to_string(), p.val_str().to_string()))
            .collect(),
    })
}
