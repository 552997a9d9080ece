//! Wires the control plane, data plane and admin server into one running
//! process, and exposes it to `main` and to in-process tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::control::PredecessorStatus;
use crate::control::{
    Control, ControlMsg, Lifecycle, ReloadRecord, StartError, StatusBoard, Trigger, UpgradeState,
};
use crate::metrics::{
    DnsSample, EndpointSample, LiveCollector, LiveSample, MdnsSample, Metrics, RuntimeCollector,
};
use crate::proxy::listener::Placement;
use crate::proxy::workers::Workers;
use crate::sockets::{Slot, SocketRegistry};
use crate::table::{Table, TableHandle};
use crate::upgrade::{HandedState, Predecessor, Relaunch, UpgradeError, Upgraded};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("starting the data-plane workers")]
    StartWorkers(#[source] std::io::Error),
    #[error("binding the admin server to {addr}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How to run, beyond what the config file says.
#[derive(Clone)]
pub struct AppOptions {
    /// Reload by itself when the config file or an include changes.
    pub watch_config: bool,
    /// Data-plane worker threads, each with its own runtime and
    /// `SO_REUSEPORT` sockets; 0 serves on the caller's runtime instead
    /// (in-process tests, embedding).
    pub workers: usize,
    /// Listening sockets to serve on before binding new ones (handed over
    /// by the process this one replaces, or passed by systemd).
    pub sockets: SocketRegistry,
    /// How to start this process again for a binary upgrade; `None`: no
    /// upgrades (in-process tests, embedding).
    pub relaunch: Option<Relaunch>,
    /// What the process this one replaces knew (DNS answers, endpoints
    /// down), to start from.
    pub handed: HandedState,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            watch_config: true,
            workers: 0,
            sockets: SocketRegistry::default(),
            relaunch: None,
            handed: HandedState::default(),
        }
    }
}

/// A running Switchyard.
pub struct App {
    admin_addr: SocketAddr,
    control: mpsc::Sender<ControlMsg>,
    board: Arc<StatusBoard>,
    table: TableHandle,
    admin_stop: CancellationToken,
    retired: CancellationToken,
    predecessor_connections: prometheus::IntGauge,
}

impl App {
    /// Loads `config_path`, binds every listener and the admin server, and
    /// starts serving. Must be called inside a tokio runtime.
    pub async fn start(config_path: &Path, options: AppOptions) -> Result<Self, AppError> {
        let metrics = Metrics::new().map_err(StartError::from)?;
        let board = Arc::new(StatusBoard::default());
        let placement = match options.workers {
            0 => Placement::Here,
            n => Placement::Workers(Arc::new(Workers::start(n).map_err(AppError::StartWorkers)?)),
        };
        let mut runtimes = vec![("control".to_string(), tokio::runtime::Handle::current())];
        if let Placement::Workers(workers) = &placement {
            runtimes.extend(
                (workers.handles().iter().enumerate())
                    .map(|(i, handle)| (format!("worker-{i}"), handle.clone())),
            );
        }
        let admin_stop = CancellationToken::new();
        let retired = CancellationToken::new();
        let sockets = options.sockets.clone();
        let (control, table) = Control::start(
            config_path,
            options.watch_config,
            placement,
            metrics.clone(),
            board.clone(),
            Lifecycle {
                sockets: sockets.clone(),
                relaunch: options.relaunch,
                admin_stop: admin_stop.clone(),
                retired: retired.clone(),
                handed: options.handed,
            },
        )
        .await?;
        metrics
            .register(Box::new(
                LiveCollector::new(live_sampler(table.clone(), board.clone()))
                    .map_err(StartError::from)?,
            ))
            .map_err(StartError::from)?;
        metrics
            .register(Box::new(
                RuntimeCollector::new(runtimes).map_err(StartError::from)?,
            ))
            .map_err(StartError::from)?;
        let admin_bind = table.current().config.admin_bind;
        let admin_listener =
            bind_admin(&sockets, admin_bind).map_err(|source| AppError::BindAdmin {
                addr: admin_bind,
                source,
            })?;
        // Handed-over sockets the config no longer names would hold
        // connections nobody accepts.
        sockets.close_unclaimed();
        let admin_addr = admin_listener.local_addr().unwrap_or(admin_bind);
        let (tx, rx) = mpsc::channel(16);
        let predecessor_connections = metrics.upgrade_predecessor_connections.clone();
        tokio::spawn(admin::run(
            admin_listener,
            AdminState {
                metrics,
                table: table.clone(),
                board: board.clone(),
                control: tx.clone(),
            },
            admin_stop.clone(),
        ));
        tokio::spawn(control.run(rx));
        tracing::info!(admin = %admin_addr, version = table.current().version, "Switchyard started");
        Ok(Self {
            admin_addr,
            control: tx,
            board,
            table,
            admin_stop,
            retired,
            predecessor_connections,
        })
    }

    /// Starts the binary again and hands it every socket (what SIGUSR2 and
    /// `POST /upgrade` do). On success this process drains and then
    /// [`retired`](Self::retired) completes.
    pub async fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        request_upgrade(&self.board, &self.control).await
    }

    /// Follows the drain of the process this one replaced: `/status`
    /// `predecessor` and `switchyard_upgrade_predecessor_connections`
    /// show what it still serves until it exits.
    pub fn follow_predecessor(&self, predecessor: Predecessor) {
        let board = self.board.clone();
        let gauge = self.predecessor_connections.clone();
        let pid = predecessor.pid;
        let since = crate::control::now();
        {
            let mut b = board.lock();
            b.predecessor = Some(PredecessorStatus {
                pid,
                draining_connections: 0,
                since: since.clone(),
            });
            b.predecessor_link = Some(predecessor.clone());
        }
        let spawned = std::thread::Builder::new()
            .name("predecessor".into())
            .spawn(move || {
                predecessor.follow(|report| {
                    let mut b = board.lock();
                    match report {
                        Some(connections) => {
                            gauge.set(i64::try_from(connections).unwrap_or(i64::MAX));
                            b.predecessor = Some(PredecessorStatus {
                                pid,
                                draining_connections: connections,
                                since: since.clone(),
                            });
                        }
                        None => {
                            gauge.set(0);
                            b.predecessor = None;
                            b.predecessor_link = None;
                            tracing::info!(pid, "The replaced process has exited");
                        }
                    }
                });
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "Cannot follow the replaced process's drain");
        }
    }

    /// Completes once this process has been replaced and has drained.
    pub async fn retired(&self) {
        self.retired.cancelled().await;
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the listener `name` accepts connections (resolves port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.board
            .lock()
            .listener_addrs
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// The table in use now.
    pub fn table(&self) -> Arc<Table> {
        self.table.current()
    }

    /// Reloads the config files; `None` when the process is shutting down.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadRecord> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(ControlMsg::Reload {
                trigger,
                reply: Some(reply),
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Stops accepting, lets in-flight work finish within the configured
    /// grace period, then closes the rest. Returns `true` if nothing had to
    /// be cut short.
    pub async fn shutdown(self) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .control
            .send(ControlMsg::Shutdown { reply })
            .await
            .is_err()
        {
            return false;
        }
        let drained = answer.await.unwrap_or(false);
        self.admin_stop.cancel();
        drained
    }
}

/// The admin server's socket: handed over, or bound here.
fn bind_admin(sockets: &SocketRegistry, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = match sockets.take_for_admin(addr) {
        Some(inherited) => inherited,
        None => std::net::TcpListener::bind(addr)?,
    };
    listener.set_nonblocking(true)?;
    sockets.serve(Slot::Admin(addr), std::slice::from_ref(&listener));
    TcpListener::from_std(listener)
}

/// Claims the process's one upgrade slot and asks the control task to
/// run it; shared by [`App::upgrade`] and the admin API.
pub async fn request_upgrade(
    board: &StatusBoard,
    control: &mpsc::Sender<ControlMsg>,
) -> Result<Upgraded, UpgradeError> {
    board.lock().begin_upgrade()?;
    let (reply, answer) = oneshot::channel();
    if control.send(ControlMsg::Upgrade { reply }).await.is_err() {
        board.lock().upgrade = UpgradeState::Idle;
        return Err(UpgradeError::ShuttingDown);
    }
    answer.await.unwrap_or(Err(UpgradeError::ShuttingDown))
}

fn live_sampler(
    table: TableHandle,
    board: Arc<StatusBoard>,
) -> impl Fn() -> LiveSample + Send + Sync {
    move || {
        let sample = |s: &crate::upstream::state::EndpointState| EndpointSample {
            backend: s.backend.clone(),
            addr: s.addr.to_string(),
            active: s.active() as i64,
            healthy: s.is_usable(),
            draining: s.is_draining(),
        };
        let table = table.current();
        let mut endpoints: Vec<EndpointSample> =
            table.endpoint_states().map(|s| sample(&s)).collect();
        let board = board.lock();
        endpoints.extend(board.draining.iter().map(|s| sample(s)));
        LiveSample {
            endpoints,
            backends: table
                .backends
                .values()
                .map(|b| (b.name().clone(), b.endpoints.load().endpoints.len() as i64))
                .collect(),
            dns: board
                .dns
                .iter()
                .map(|n| DnsSample {
                    name: n.query.name.to_string(),
                    addresses: n.answer().map_or(0, |a| a.records.len() as i64),
                    seconds_since_change: n.seconds_since_change(),
                })
                .collect(),
            consul: board
                .consul
                .iter()
                .map(|w| (w.key.to_string(), w.is_ok(), w.staleness()))
                .collect(),
            mdns: board
                .mdns
                .iter()
                .map(|w| MdnsSample {
                    service: w.target.to_string(),
                    instances: w.instances().len() as i64,
                    seconds_since_change: w.seconds_since_change(),
                    seconds_since_answer: w.staleness(),
                })
                .collect(),
        }
    }
}
