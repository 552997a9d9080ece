//! The wire between a process being replaced and its successor: a Unix
//! `SOCK_SEQPACKET` socket, so each message arrives whole and together
//! with the descriptors sent beside it (`SCM_RIGHTS`); messages are JSON.
//!
//! Written by hand on `nix`'s `sendmsg`/`recvmsg`: no maintained crate
//! offers message-framed descriptor passing, and the protocol is four
//! message types.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};

use crate::discovery::dns::DnsSeed;
use crate::sockets::Slot;

/// Discovery and health state a successor starts from, so an upgrade
/// loses no DNS answer (a nameserver may be failing just then) and marks
/// no endpoint the old process knew to be down as up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandedState {
    pub dns: Vec<DnsSeed>,
    /// Endpoints (backend, address) whose health check said down.
    pub unhealthy: Vec<(String, std::net::SocketAddr)>,
}

/// The most descriptors one message carries (the kernel's limit is 253).
pub const MAX_FDS: usize = 200;
/// The largest message (a slot's name, a failure's reason).
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Successor → old: who is asking.
    Hello { pid: u32 },
    /// Old → successor: the listening sockets of one slot, attached.
    Sockets { slot: Slot },
    /// Old → successor: what it knows that a fresh start would have to
    /// learn again.
    State { state: HandedState },
    /// Old → successor: every socket has been sent.
    Handed { slots: usize, pid: u32 },
    /// Successor → old: serving on the sockets; the old one may stop
    /// accepting.
    Ready { pid: u32 },
    /// Successor → old: it could not start, and exits.
    Failed { reason: String },
    /// Old → successor, while it drains: connections it still serves.
    Draining { connections: usize },
    /// Successor → old: close what is left now (an upgrade of the
    /// successor itself began draining, and one old process at a time
    /// may drain).
    Finish,
}

/// Whether `error` is [`Wire::recv`]'s "nothing came in time".
pub fn timed_out(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One end of the wire.
pub struct Wire(OwnedFd);

/// The old process's listening end.
pub struct WireListener(OwnedFd);

fn errno(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno)
}

impl WireListener {
    /// Listens at `path`, non-blocking (see [`WireListener::accept`]).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(errno)?).map_err(errno)?;
        listen(&fd, Backlog::new(1).map_err(errno)?).map_err(errno)?;
        let listener = Self(fd);
        set_nonblocking(listener.0.as_raw_fd(), true)?;
        Ok(listener)
    }

    /// The successor's connection, or `None` when it has not connected yet.
    pub fn accept(&self) -> io::Result<Option<Wire>> {
        match accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Some(Wire(unsafe { OwnedFd::from_raw_fd(fd) }))),
            Err(nix::Error::EAGAIN) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }
}

fn set_nonblocking(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: `fd` is open for the duration of the call (borrowed from an
    // OwnedFd the caller holds).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = OFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFL).map_err(errno)?);
    let flags = if nonblocking {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(borrowed, FcntlArg::F_SETFL(flags)).map_err(errno)?;
    Ok(())
}

impl Wire {
    /// Connects to the old process's listening end.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(errno)?).map_err(errno)?;
        Ok(Self(fd))
    }

    /// Sends `message` with `fds` attached (at most [`MAX_FDS`]).
    pub fn send(&self, message: &Message, fds: &[RawFd]) -> io::Result<()> {
        let body = serde_json::to_vec(message).map_err(io::Error::other)?;
        let iov = [IoSlice::new(&body)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).map_err(errno)?;
        Ok(())
    }

    /// The next message and the descriptors that came with it; a
    /// `TimedOut`/`WouldBlock` error when none came within `timeout`.
    pub fn recv(&self, timeout: Duration) -> io::Result<(Message, Vec<OwnedFd>)> {
        let timeout = TimeVal::new(
            i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            i64::from(timeout.subsec_micros()),
        );
        setsockopt(&self.0, sockopt::ReceiveTimeout, &timeout).map_err(errno)?;
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let msg = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(errno)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(errno)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel installed these descriptors in this
                    // process for us; nothing else refers to them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the handover socket",
            ));
        }
        let message = serde_json::from_slice(&body[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((message, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_arrive_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let listener = WireListener::bind(&path).unwrap();
        let client = Wire::connect(&path).unwrap();
        let server = loop {
            if let Some(w) = listener.accept().unwrap() {
                break w;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let slot = Slot::Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
            name: Some("web".into()),
        };
        server
            .send(
                &Message::Sockets { slot: slot.clone() },
                &[socket.as_raw_fd()],
            )
            .unwrap();
        server
            .send(&Message::Handed { slots: 1, pid: 7 }, &[])
            .unwrap();
        let (first, fds) = client.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(first, Message::Sockets { slot });
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let (second, fds) = client.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(second, Message::Handed { slots: 1, pid: 7 });
        assert!(fds.is_empty());
        let silent = client.recv(Duration::from_millis(50)).unwrap_err();
        assert!(timed_out(&silent));
        drop(server);
        let closed = client.recv(Duration::from_secs(5)).unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::UnexpectedEof);
    }
}
