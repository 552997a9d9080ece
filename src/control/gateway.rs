//! The control task's side of gateway routes and tag routes: requests for
//! backends not made yet, the watches they need (the catalog and each
//! service), retiring idle backends, and the tag routes the catalog asks
//! for. A gateway route of a config with `[mdns]` and no `[consul]` finds
//! go-micro services by mDNS instead: no catalog, a service that shows no
//! instance within a second is unknown (404).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Control;
use crate::config;
use crate::discovery::consul::{
    ConsulWatch, ConsulWatcher, KeyOwner, WatchData, WatchKey, service_watch,
};
use crate::discovery::mdns::{self, MdnsWatch};
use crate::discovery::tag_routes::{self, TagRoute};
use crate::table;
use crate::table::gateway::{BackendRequest, Gateway};

/// The control task's side of gateway routes: requests for backends not
/// made yet, and the watches they need.
pub(super) struct GatewayControl {
    pub(super) registry: Arc<Gateway>,
    pub(super) requests: mpsc::UnboundedReceiver<BackendRequest>,
    /// Services whose watches answered (or timed out), to make backends for.
    pub(super) ready: mpsc::UnboundedReceiver<String>,
    ready_sender: mpsc::UnboundedSender<String>,
    /// Requests waiting for a service's first answer.
    pending: HashMap<String, Vec<BackendRequest>>,
}

/// The catalog query gateway routes use to tell known services.
pub(super) const CATALOG: WatchKey = WatchKey::Catalog { datacenter: None };
/// How long a new gateway service waits for Consul's first answers.
const GATEWAY_FIRST_ANSWER: Duration = Duration::from_secs(3);

impl GatewayControl {
    pub(super) fn new(
        registry: Arc<Gateway>,
        requests: mpsc::UnboundedReceiver<BackendRequest>,
    ) -> Self {
        let (ready_sender, ready) = mpsc::unbounded_channel();
        Self {
            registry,
            requests,
            ready,
            ready_sender,
            pending: HashMap::new(),
        }
    }
}

impl Control {
    /// A request needs the backend of a service no gateway backend exists
    /// for: watch the service (and the catalog) and answer once Consul has.
    pub(super) fn gateway_request(&mut self, request: BackendRequest) {
        if let Some(backend) = self.gateway.registry.get(&request.service) {
            let _ = request.reply.send(Some(backend));
            return;
        }
        if self.gateway.registry.knows(&request.service) == Some(false) {
            let _ = request.reply.send(None);
            return;
        }
        let service = request.service.clone();
        let by_mdns = uses_mdns(&request.template);
        let first = !self.gateway.pending.contains_key(&service);
        self.gateway
            .pending
            .entry(service.clone())
            .or_default()
            .push(request);
        if !first {
            return;
        }
        self.apply_gateway_keys();
        let ready = self.gateway.ready_sender.clone();
        if by_mdns {
            let watch: Option<Arc<MdnsWatch>> = self.sources.mdns.get(&mdns_target(&service));
            tokio::spawn(async move {
                if let Some(watch) = watch {
                    let _ = tokio::time::timeout(mdns::FIRST_ANSWER_BUDGET, watch.first_instance())
                        .await;
                }
                let _ = ready.send(service);
            });
            return;
        }
        let key = gateway_service_key(&service);
        let watches: Vec<Arc<ConsulWatch>> = [CATALOG, key]
            .iter()
            .filter_map(|k| self.sources.consul.get(k))
            .collect();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(GATEWAY_FIRST_ANSWER, async {
                for w in &watches {
                    w.first_answer().await;
                }
            })
            .await;
            let _ = ready.send(service);
        });
    }

    /// The watches of a requested service answered: make its backend, or
    /// tell the waiting requests the service does not exist.
    pub(super) fn gateway_ready(&mut self, service: &str) {
        let Some(waiting) = self.gateway.pending.remove(service) else {
            return;
        };
        self.update_gateway_catalog();
        let by_mdns = waiting.first().is_some_and(|r| uses_mdns(&r.template));
        let made_backend = |spec: &config::BackendSpec| {
            if by_mdns {
                // Known once an instance answered.
                let watch = self
                    .sources
                    .mdns
                    .get(&mdns_target(service))
                    .filter(|w| !w.instances().is_empty())?;
                Some(table::on_demand_mdns_backend(spec, watch, &self.metrics))
            } else {
                let key = gateway_service_key(service);
                let watch = self
                    .sources
                    .consul
                    .get(&key)
                    .filter(|w| w.data().is_some())?;
                let known = self.gateway.registry.knows(service) != Some(false);
                known.then(|| table::on_demand_backend(spec, watch, &self.metrics))
            }
        };
        let spec = waiting
            .first()
            .map(|first| gateway_backend_spec(service, &first.template));
        let made = match (spec.as_ref().and_then(made_backend), waiting.first()) {
            (Some(result), Some(first)) => match result {
                Ok(backend) => {
                    let backend = Arc::new(backend);
                    let idle = match &first.template.target {
                        config::BackendTarget::Gateway(g) => g.idle_timeout,
                        _ => config::DEFAULT_GATEWAY_IDLE,
                    };
                    self.gateway.registry.insert(service, backend.clone(), idle);
                    tracing::info!(service, "Gateway backend made on demand");
                    Some(backend)
                }
                Err(error) => {
                    tracing::warn!(service, %error, "Cannot make a gateway backend");
                    None
                }
            },
            _ => None,
        };
        if made.is_none() {
            self.apply_gateway_keys();
        }
        for request in waiting {
            let _ = request.reply.send(made.clone());
        }
    }

    /// The tag routes the catalog asks for now.
    pub(super) fn catalog_tag_routes(&self) -> Vec<TagRoute> {
        match self
            .sources
            .consul
            .get(&CATALOG)
            .and_then(|w| w.data())
            .as_deref()
        {
            Some(WatchData::Catalog(services)) => tag_routes::from_catalog(services),
            _ => Vec::new(),
        }
    }

    /// Watches what gateway routes need now, and nothing more.
    fn apply_gateway_keys(&mut self) {
        let consul = self.table.current().config.consul.clone();
        // The services of the made backends and of the pending requests.
        let mut consul_keys = HashSet::new();
        let mut mdns_keys = HashSet::new();
        for backend in self.gateway.registry.backends() {
            match &backend.spec.target {
                config::BackendTarget::Consul(t) => {
                    consul_keys.insert(service_watch(t));
                }
                config::BackendTarget::Mdns(t) => {
                    mdns_keys.insert(t.clone());
                }
                _ => {}
            }
        }
        for (service, waiting) in &self.gateway.pending {
            if waiting.first().is_some_and(|r| uses_mdns(&r.template)) {
                mdns_keys.insert(mdns_target(service));
            } else {
                consul_keys.insert(gateway_service_key(service));
            }
        }
        self.sources
            .consul
            .set_keys(KeyOwner::Gateway, consul_keys, consul.as_ref());
        self.sources
            .mdns
            .set_keys(mdns::KeyOwner::Gateway, mdns_keys);
        let mut board = self.board.lock();
        board.consul = self.sources.consul.watches();
        board.mdns = self.sources.mdns.watches();
    }

    pub(super) fn update_gateway_catalog(&self) {
        if let Some(data) = self.sources.consul.get(&CATALOG).and_then(|w| w.data())
            && let WatchData::Catalog(services) = &*data
        {
            self.gateway
                .registry
                .set_catalog(services.keys().cloned().collect());
        }
    }

    /// Retires gateway backends that went idle (or whose service left the
    /// catalog) and stops their watches.
    pub(super) fn retire_gateway_backends(&mut self) {
        let gone = self.gateway.registry.retire_idle();
        if gone.is_empty() {
            return;
        }
        for service in &gone {
            tracing::info!(service = %service, "Gateway backend retired");
        }
        self.apply_gateway_keys();
    }
}

/// Watches the catalog while the config has tag routes or gateway routes
/// (which tell unknown services by it), from the config's start.
pub(super) fn watch_catalog(consul: &mut ConsulWatcher, config: &config::Config) {
    let wanted = config.listeners.iter().any(|l| l.consul_tag_routes)
        || config
            .backends
            .iter()
            .any(|b| matches!(b.target, config::BackendTarget::Gateway(_)));
    let keys = if wanted {
        std::iter::once(CATALOG).collect()
    } else {
        Default::default()
    };
    consul.set_keys(KeyOwner::Catalog, keys, config.consul.as_ref());
}

/// The health watch of a gateway service: passing instances.
fn gateway_service_key(service: &str) -> WatchKey {
    service_watch(&config::ConsulTarget {
        service: service.into(),
        tag: None,
        datacenter: None,
    })
}

/// Whether a gateway route finds its services by mDNS.
fn uses_mdns(template: &config::BackendSpec) -> bool {
    matches!(&template.target, config::BackendTarget::Gateway(g) if g.mdns)
}

/// The go-micro service a gateway request names.
fn mdns_target(service: &str) -> config::MdnsTarget {
    config::MdnsTarget::GoMicro(service.into())
}

/// An on-demand backend for `service`: the gateway route's timeouts and
/// retries, the service's passing instances (Consul) or the instances
/// announced (mDNS).
fn gateway_backend_spec(service: &str, template: &config::BackendSpec) -> config::BackendSpec {
    let target = if uses_mdns(template) {
        config::BackendTarget::Mdns(mdns_target(service))
    } else {
        config::BackendTarget::Consul(config::ConsulTarget {
            service: service.into(),
            tag: None,
            datacenter: None,
        })
    };
    config::BackendSpec::with_defaults(service.into(), target, template.timeouts)
}
