//! Binary upgrade in place: the running process starts the binary it was
//! started from (replaced on disk by then), hands it every listening
//! socket, and stops accepting only once the new process says it serves.
//!
//! The order is the point. Sockets move (they are never closed and
//! re-bound, which would drop the connections queued on them); both
//! processes accept from the same sockets for the moment between the new
//! one's start and the old one's stop, so there is no moment without a
//! listener; and the old one keeps everything if the new one fails to
//! start, to validate its config, or to answer in time.

pub mod client;
pub mod wire;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::sockets::{Slot, SocketRegistry};
pub use wire::HandedState;
use wire::{MAX_FDS, Message, Wire, WireListener};

/// The command-line flag a successor is started with.
pub const UPGRADE_FROM_FLAG: &str = "--upgrade-from";
/// How often the old process looks at its successor while it waits.
const POLL: Duration = Duration::from_millis(20);
/// How long a successor has to take its sockets once it has connected.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed successor has to exit before it is killed.
const FAILED_EXIT_WAIT: Duration = Duration::from_secs(5);

/// How to start this process again: the binary's path as it was at start
/// (so a file replaced since names the new version) and the arguments.
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    /// How long the new process has to report ready.
    pub timeout: Duration,
}

impl Relaunch {
    /// The path this process was started by, as written (a symlink stays
    /// a symlink, so re-pointing it to a new version is an upgrade too):
    /// `argv[0]` made absolute, or looked up in `PATH` when it has no
    /// slash; the resolved executable when neither works.
    pub fn started_as() -> Option<PathBuf> {
        let argv0 = PathBuf::from(std::env::args_os().next()?);
        if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
            return std::path::absolute(&argv0).ok();
        }
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(&argv0))
                    .find(|candidate| candidate.is_file())
            })
            .or_else(|| std::env::current_exe().ok())
    }

    /// This process's own command line, without an earlier
    /// `--upgrade-from` (every upgrade gets its own socket).
    pub fn from_current(exe: PathBuf, timeout: Duration) -> Self {
        let mut args = Vec::new();
        let mut skip_value = false;
        for arg in std::env::args_os().skip(1) {
            if skip_value {
                skip_value = false;
                continue;
            }
            if arg == UPGRADE_FROM_FLAG {
                skip_value = true;
                continue;
            }
            if arg
                .to_str()
                .is_some_and(|a| a.starts_with(&format!("{UPGRADE_FROM_FLAG}=")))
            {
                continue;
            }
            args.push(arg);
        }
        Self { exe, args, timeout }
    }
}

/// The new process serves.
#[derive(Clone)]
pub struct Upgraded {
    pub new_pid: u32,
    pub took: Duration,
    /// Still open to the new process: the drain reports over it.
    pub wire: Arc<Wire>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("new_pid", &self.new_pid)
            .field("took", &self.took)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress")]
    InProgress,
    #[error("this process has already been replaced by process {0} and is draining")]
    Replaced(u32),
    #[error("this process is shutting down")]
    ShuttingDown,
    #[error("this process was not started by `switchyard run`; it cannot start its successor")]
    NotRelaunchable,
    #[error("preparing the handover socket")]
    Socket(#[source] io::Error),
    #[error("starting {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the new process {}{}", exit_text(*.status), reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Failed {
        status: Option<ExitStatus>,
        reason: Option<String>,
    },
    #[error("the new process did not report ready within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("handing the sockets over")]
    Handover(#[source] io::Error),
}

fn exit_text(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match s.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was ended by {s}"),
        },
        None => "failed to start".into(),
    }
}

impl UpgradeError {
    /// Turned away before anything was started (one runs already, this
    /// process was replaced or is stopping, or cannot start itself).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::InProgress | Self::Replaced(_) | Self::ShuttingDown | Self::NotRelaunchable
        )
    }

    /// The exit status of a successor that failed, if it exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Failed { status, .. } => status.and_then(|s| s.code()),
            _ => None,
        }
    }
}

/// A private directory for the handover socket, removed when dropped.
struct HandoverDir(PathBuf);

impl HandoverDir {
    fn create() -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("switchyard-upgrade-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self(dir))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("handover.sock")
    }
}

impl Drop for HandoverDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Starts the successor and hands it `sockets`; blocking (run it on a
/// blocking thread). Returns once the successor serves, or with why not;
/// a successor that did not make it has exited or been stopped by then.
pub fn hand_over(
    relaunch: &Relaunch,
    sockets: Vec<(Slot, Vec<OwnedFd>)>,
    state: HandedState,
) -> Result<Upgraded, UpgradeError> {
    let started = Instant::now();
    let deadline = started + relaunch.timeout;
    let dir = HandoverDir::create().map_err(UpgradeError::Socket)?;
    let listener = WireListener::bind(&dir.socket()).map_err(UpgradeError::Socket)?;
    let mut child = Command::new(&relaunch.exe)
        .args(&relaunch.args)
        .arg(UPGRADE_FROM_FLAG)
        .arg(dir.socket())
        .stdin(Stdio::null())
        // Sockets come over the wire; systemd's are this process's alone.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            path: relaunch.exe.clone(),
            source,
        })?;
    let pid = child.id();
    tracing::info!(pid, exe = %relaunch.exe.display(), "Upgrade: started the new process");
    let result = drive(
        &listener,
        &mut child,
        sockets,
        state,
        deadline,
        relaunch.timeout,
    );
    match result {
        Ok(wire) => Ok(Upgraded {
            new_pid: pid,
            took: started.elapsed(),
            wire: Arc::new(wire),
        }),
        Err(error) => {
            let error = finish_failed(&mut child, error);
            tracing::warn!(error = %crate::error_chain::ErrorChain(&error), "Upgrade failed; this process keeps serving");
            Err(error)
        }
    }
}

/// The handover itself, until the successor is ready.
fn drive(
    listener: &WireListener,
    child: &mut Child,
    sockets: Vec<(Slot, Vec<OwnedFd>)>,
    state: HandedState,
    deadline: Instant,
    timeout: Duration,
) -> Result<Wire, UpgradeError> {
    let wire = loop {
        if let Some(wire) = listener.accept().map_err(UpgradeError::Handover)? {
            break wire;
        }
        wait_a_moment(child, deadline, timeout)?;
    };
    let hello = receive(&wire, child, deadline, timeout)?;
    if !matches!(hello, Message::Hello { .. }) {
        return Err(UpgradeError::Handover(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected hello, got {hello:?}"),
        )));
    }
    let slots = sockets.len();
    for (slot, fds) in sockets {
        for chunk in fds.chunks(MAX_FDS) {
            let raw: Vec<_> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
            wire.send(&Message::Sockets { slot: slot.clone() }, &raw)
                .map_err(UpgradeError::Handover)?;
        }
    }
    wire.send(&Message::State { state }, &[])
        .map_err(UpgradeError::Handover)?;
    let pid = std::process::id();
    wire.send(&Message::Handed { slots, pid }, &[])
        .map_err(UpgradeError::Handover)?;
    match receive(&wire, child, deadline, timeout)? {
        Message::Ready { .. } => Ok(wire),
        Message::Failed { reason } => Err(UpgradeError::Failed {
            status: None,
            reason: Some(reason),
        }),
        other => Err(UpgradeError::Handover(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected ready, got {other:?}"),
        ))),
    }
}

/// The successor's next message, watching for its exit and the deadline.
fn receive(
    wire: &Wire,
    child: &mut Child,
    deadline: Instant,
    timeout: Duration,
) -> Result<Message, UpgradeError> {
    loop {
        match wire.recv(POLL) {
            Ok((message, _)) => return Ok(message),
            Err(e) if wire::timed_out(&e) => {
                wait_a_moment(child, deadline, timeout)?;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // It closed the wire: it is exiting; its status says how.
                return Err(UpgradeError::Failed {
                    status: None,
                    reason: None,
                });
            }
            Err(e) => return Err(UpgradeError::Handover(e)),
        }
    }
}

/// Fails when the successor has exited or the deadline has passed.
fn wait_a_moment(
    child: &mut Child,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), UpgradeError> {
    if let Ok(Some(status)) = child.try_wait() {
        return Err(UpgradeError::Failed {
            status: Some(status),
            reason: None,
        });
    }
    if Instant::now() >= deadline {
        return Err(UpgradeError::Timeout(timeout));
    }
    std::thread::sleep(POLL);
    Ok(())
}

/// Makes sure a successor that did not make it is gone, and completes the
/// error with its exit status.
fn finish_failed(child: &mut Child, error: UpgradeError) -> UpgradeError {
    let give_up = Instant::now() + FAILED_EXIT_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < give_up && !matches!(error, UpgradeError::Timeout(_)) => {
                std::thread::sleep(POLL);
            }
            _ => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    match error {
        UpgradeError::Failed { reason, .. } => UpgradeError::Failed { status, reason },
        other => other,
    }
}

/// The successor's side: connected to the old process, holding the
/// sockets it was given until it reports ready or failed.
pub struct Handover {
    wire: Wire,
    /// The old process's.
    pub pid: u32,
    /// What the old process knew (DNS answers, endpoints down).
    pub state: HandedState,
}

impl Handover {
    /// Connects to the old process at `path` and files every socket it
    /// hands over in `registry`. Blocking; called before the runtime runs.
    pub fn receive(path: &Path, registry: &SocketRegistry) -> io::Result<Self> {
        let wire = Wire::connect(path)?;
        wire.send(
            &Message::Hello {
                pid: std::process::id(),
            },
            &[],
        )?;
        let mut state = HandedState::default();
        loop {
            let (message, fds) = wire.recv(HANDOVER_TIMEOUT)?;
            match message {
                Message::State { state: handed } => state = handed,
                Message::Sockets { slot } => {
                    registry.inherit(
                        slot,
                        fds.into_iter().map(std::net::TcpListener::from).collect(),
                    );
                }
                Message::Handed { slots, pid } => {
                    tracing::info!(
                        slots,
                        old_pid = pid,
                        "Upgrade: received the listening sockets"
                    );
                    return Ok(Self { wire, pid, state });
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected handover message {other:?}"),
                    ));
                }
            }
        }
    }

    /// Tells the old process this one serves; it stops accepting. The
    /// wire stays open: the old process reports its drain over it.
    pub fn ready(self) -> io::Result<Predecessor> {
        self.wire.send(
            &Message::Ready {
                pid: std::process::id(),
            },
            &[],
        )?;
        Ok(Predecessor {
            wire: Arc::new(self.wire),
            pid: self.pid,
        })
    }

    /// Tells the old process why this one is exiting instead.
    pub fn failed(self, reason: &str) {
        let mut reason = reason.to_owned();
        if reason.len() > 16 * 1024 {
            let mut cut = 16 * 1024;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        if let Err(error) = self.wire.send(&Message::Failed { reason }, &[]) {
            tracing::warn!(%error, "Cannot tell the old process why the upgrade failed");
        }
    }
}

/// Tells systemd (when it started us with `Type=notify`) that this
/// process serves; after an upgrade also that it is the service's main
/// process now, which needs `NotifyAccess=all` in the unit.
pub fn notify_systemd_ready(upgraded: bool) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let pid = std::process::id();
    let result = if upgraded {
        sd_notify::notify(&[
            sd_notify::NotifyState::MainPid(pid),
            sd_notify::NotifyState::Ready,
        ])
    } else {
        sd_notify::notify(&[sd_notify::NotifyState::Ready])
    };
    if let Err(error) = result {
        tracing::warn!(%error, "Cannot notify systemd");
    }
}

/// The old process, seen from its successor while it drains.
#[derive(Clone)]
pub struct Predecessor {
    wire: Arc<Wire>,
    pub pid: u32,
}

impl Predecessor {
    /// Follows the old process's drain reports until it exits (its end
    /// of the wire closes); `report` gets the connections it still
    /// serves, and `None` once it has gone. Blocking: run on a thread.
    pub fn follow(&self, report: impl Fn(Option<usize>)) {
        loop {
            match self.wire.recv(Duration::from_secs(3600)) {
                Ok((Message::Draining { connections }, _)) => report(Some(connections)),
                Ok(_) => {}
                Err(e) if wire::timed_out(&e) => {}
                Err(_) => break,
            }
        }
        report(None);
    }

    /// Asks the old process to close what it still has, now.
    pub fn finish(&self) {
        let _ = self.wire.send(&Message::Finish, &[]);
    }
}

/// The old process's side of the wire while it drains: reports how many
/// connections it still serves every `every`, and returns when its
/// successor asks it to finish now (or has gone, or `done` is set).
pub fn report_drain(
    wire: &Wire,
    every: Duration,
    connections: impl Fn() -> usize,
    done: &std::sync::atomic::AtomicBool,
) -> bool {
    use std::sync::atomic::Ordering;
    while !done.load(Ordering::Relaxed) {
        if wire
            .send(
                &Message::Draining {
                    connections: connections(),
                },
                &[],
            )
            .is_err()
        {
            return false;
        }
        match wire.recv(every) {
            Ok((Message::Finish, _)) => return true,
            Ok(_) => {}
            Err(e) if wire::timed_out(&e) => {}
            Err(_) => return false,
        }
    }
    false
}
