//! The `switchyard upgrade` command's side: find the running process's
//! admin address and ask it to upgrade.
//!
//! A plain HTTP/1.1 exchange on a blocking socket: one request, read to
//! the close; a client library and a runtime would add nothing here.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The admin address when the config names none (the design's default).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9900";
/// Longer than any upgrade timeout one would configure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: `admin.bind` is not an address: {value}", path.display())]
    Admin { path: PathBuf, value: String },
    #[error("{}: `admin.bind` has port 0, so the running process's admin address is not known; pass --admin ADDR", path.display())]
    EphemeralAdmin { path: PathBuf },
    #[error("{}: not TOML", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("asking the process at {addr} (is it running?)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected answer from {addr}: {answer}")]
    Answer { addr: SocketAddr, answer: String },
}

/// What `POST /upgrade` answers.
#[derive(Debug, Deserialize)]
pub struct Answer {
    pub result: String,
    pub pid: u32,
    pub new_pid: Option<u32>,
    pub took_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// The admin address in `config` (only `[admin] bind` is read, so a
/// config the new version would reject can still be upgraded to), with a
/// wildcard address turned into loopback.
pub fn admin_address(config: &Path) -> Result<SocketAddr, ClientError> {
    let text = std::fs::read_to_string(config).map_err(|source| ClientError::Read {
        path: config.to_path_buf(),
        source,
    })?;
    let doc: toml::Table = toml::from_str(&text).map_err(|source| ClientError::Toml {
        path: config.to_path_buf(),
        source,
    })?;
    let value = doc
        .get("admin")
        .and_then(|a| a.get("bind"))
        .and_then(|b| b.as_str())
        .unwrap_or(DEFAULT_ADMIN);
    let mut addr: SocketAddr = value.parse().map_err(|_| ClientError::Admin {
        path: config.to_path_buf(),
        value: value.to_owned(),
    })?;
    if addr.port() == 0 {
        return Err(ClientError::EphemeralAdmin {
            path: config.to_path_buf(),
        });
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// Sends `POST /upgrade` to `addr` and waits for the answer.
pub fn request(addr: SocketAddr) -> Result<Answer, ClientError> {
    let connect = |source| ClientError::Connect { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(connect)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(connect)?;
    let request = format!(
        "POST /upgrade HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let raw = String::from_utf8_lossy(&raw);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).map_err(|_| ClientError::Answer {
        addr,
        answer: raw.lines().next().unwrap_or("nothing").to_owned(),
    })
}
