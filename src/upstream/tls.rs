//! TLS to upstream servers: a backend's `tls` settings made into rustls
//! client configs, and the stream that is either plain TCP or TLS over it.
//!
//! Servers are verified against the backend's `ca_file` (or the system's
//! roots) under `server_name`, or, without one, under the server's IP
//! address, which then must be among the certificate's IP SANs — both the
//! DNS-name and the IP-address case work (Fabio's users hit both).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::connect::{UpstreamError, connect_tcp};
use super::h1::conn::IdleProbe;

/// A backend's TLS settings, ready to connect with.
pub struct UpstreamTls {
    /// Offers the backend's HTTP protocol by ALPN.
    http: Arc<ClientConfig>,
    /// For TCP listeners: no ALPN.
    tcp: Arc<ClientConfig>,
    /// `None`: each server's IP address.
    server_name: Option<ServerName<'static>>,
    /// What the configs were made from: equal settings are an unchanged
    /// backend.
    settings: UpstreamTlsSettings,
}

/// The `tls` table of a backend as written, with its files' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSettings {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub verify: bool,
    /// Of the CA and client certificate and key files.
    pub digest: u64,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

/// A file's name and contents.
pub type PemFile<'a> = (&'a Path, &'a [u8]);

/// PEM files a backend's `tls` names, read.
pub struct UpstreamTlsFiles<'a> {
    pub ca: Option<PemFile<'a>>,
    /// The client certificate chain and its key.
    pub client: Option<(PemFile<'a>, PemFile<'a>)>,
}

impl UpstreamTls {
    /// Builds the client configs; `alpn` is what HTTP use offers.
    pub fn new(
        settings: UpstreamTlsSettings,
        files: UpstreamTlsFiles<'_>,
        alpn: &[u8],
    ) -> Result<Self, String> {
        let server_name = match &settings.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("`{name}` is not a DNS name or an IP address"))?,
            ),
            None => None,
        };
        let provider = Arc::new(crate::tls::provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if settings.verify {
            let roots = match files.ca {
                Some((file, pem)) => crate::tls::roots_from_pem(file, pem)?,
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        };
        let config = match files.client {
            None => builder.with_no_client_auth(),
            Some(((cert_file, cert_pem), (key_file, key_pem))) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{}: not a PEM certificate: {e}", cert_file.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "{}: no certificate in the file",
                        cert_file.display()
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| format!("{}: no usable private key: {e}", key_file.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", key_file.display()))?
            }
        };
        let tcp = Arc::new(config.clone());
        let mut http = config;
        http.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self {
            http: Arc::new(http),
            tcp,
            server_name,
            settings,
        })
    }

    /// Handshakes over `tcp` with the server at `addr`, by `timeout`.
    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        for_http: bool,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let config = if for_http { &self.http } else { &self.tcp };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(UpstreamError::Tls { addr, source }),
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, timeout }),
        }
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                tracing::warn!("No system CA certificates found; upstream TLS needs `ca_file`");
            }
            roots
        })
        .clone()
}

/// `verify = false`: any certificate is taken (signatures are still
/// checked, so the session is encrypted to whoever holds the key shown).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a new connection to a server is made: TLS or not, and a PROXY
/// protocol header to send first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dial<'a> {
    pub tls: Option<&'a UpstreamTls>,
    /// Sent first on the TCP connection; such a connection belongs to one
    /// client and is never pooled.
    pub proxy_header: Option<&'a [u8]>,
}

/// Connects to a server: TCP, then TLS when the backend has `tls`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
    for_http: bool,
) -> Result<UpstreamStream, UpstreamError> {
    connect_with_header(addr, timeout, tls, for_http, None).await
}

/// Like [`connect`], sending `proxy_header` (a PROXY protocol header)
/// first on the TCP connection, before any TLS.
pub async fn connect_with_header(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
    for_http: bool,
    proxy_header: Option<&[u8]>,
) -> Result<UpstreamStream, UpstreamError> {
    let started = tokio::time::Instant::now();
    let mut tcp = connect_tcp(addr, timeout).await?;
    if let Some(header) = proxy_header {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(header)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
    }
    match tls {
        None => Ok(UpstreamStream::Plain(tcp)),
        Some(tls) => {
            let left = timeout.saturating_sub(started.elapsed());
            let stream = tls.handshake(tcp, addr, for_http, left).await?;
            Ok(UpstreamStream::Tls(Box::new(stream)))
        }
    }
}

/// A connection to a server, in the clear or over TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

// `inline(always)`: the plain arm is a pointer away from the socket, and
// measured 57 instructions per request as an out-of-line call.
impl AsyncRead for UpstreamStream {
    #[inline(always)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    #[inline(always)]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl IdleProbe for UpstreamStream {
    fn is_quiet(&mut self, buf: &mut BytesMut) -> bool {
        match self {
            Self::Plain(s) => s.is_quiet(buf),
            // Reading would take bytes from under the TLS session; a peek
            // tells the same without consuming them. Anything waiting (a
            // close_notify, or a late session ticket) retires the
            // connection, which is the safe reading.
            Self::Tls(s) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                matches!(s.get_ref().0.poll_peek(&mut cx, &mut probe), Poll::Pending)
            }
        }
    }
}
