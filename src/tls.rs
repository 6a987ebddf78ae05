//! TLS for both of a node's ports (rustls, ring as the provider): mutual TLS between members on
//! the raft port, and server TLS (optionally with client certificates) on the client port.
//!
//! Every configuration here is built from PEM files named on the command line and rebuilt when
//! they change ([`NodeTls::keep_current`]: a check every second, and at once on SIGHUP), so a
//! certificate is rotated by replacing its files, with no restart. A change that does not make a
//! valid configuration (a key that does not match its certificate yet, half of a rotation) is
//! logged and the previous configuration stays in use; new connections take the newest one,
//! open connections keep the one they were made with.
//!
//! Connections that speak the wrong thing (plaintext on a TLS port, TLS on a plaintext port, a
//! certificate from another CA) are told apart here from their first bytes and from rustls's
//! errors, so each side can log one line that says what happened.

pub mod certs;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::ServerConfig;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::locks;

/// How often certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long a connection may take to send its first byte and finish its handshake. Bounds what
/// a client that connects and stalls (or trickles a handshake) holds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum time between two log lines about refused connections on one port: a flood of bad
/// handshakes is counted, not written out line by line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long a refused connection is read (and what arrives discarded) before it is closed.
const LINGER_BEFORE_CLOSE: Duration = Duration::from_secs(1);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A TLS configuration that cannot be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM object of the kind expected.
    #[error("cannot load the {what} from {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The files were read but do not make a configuration (a key that is not the certificate's,
    /// a CA file with no usable certificate).
    #[error("{0}")]
    Invalid(String),
}

/// The PEM files of one TLS side, as given on the command line (etcd's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
    /// The CA that signs the other side's certificates.
    pub trusted_ca: Option<PathBuf>,
    /// Whether a connecting client must present a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.trusted_ca.clone());
        paths
    }
}

/// The ring provider, shared by every configuration (the HTTP client links the same one).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("trusted CA", path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "trusted CA",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A server configuration from `files`, offering `alpn` protocols.
fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match (&files.trusted_ca, files.client_cert_auth) {
        (Some(ca), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider)
                .build()
                .map_err(|e| TlsError::Invalid(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => {
            return Err(TlsError::Invalid(
                "client certificate authentication needs a trusted CA file".into(),
            ))
        }
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| not_a_pair(files, e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration that trusts only `files.trusted_ca` and presents `files.cert`.
fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let ca = files.trusted_ca.as_ref().ok_or_else(|| {
        TlsError::Invalid("connecting to peers over TLS needs a trusted CA file".into())
    })?;
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(read_roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", ca.display())))?;
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| not_a_pair(files, e))
}

/// rustls refusing `files`' certificate and key together (most often: the key is another's).
fn not_a_pair(files: &TlsFiles, error: rustls::Error) -> TlsError {
    TlsError::Invalid(format!(
        "{} and {} do not make a certificate and its key: {error}",
        files.cert.display(),
        files.key.display()
    ))
}

/// What identifies one version of a file: a rename or a rewrite changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        inode: meta.ino(),
        len: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// A configuration kept in step with its files.
pub struct Reloading<C> {
    /// What it is for, in log lines ("the raft port's server side").
    what: &'static str,
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<C, TlsError>,
    current: RwLock<Arc<C>>,
    /// The files' stamps at the last attempt to build, successful or not: a broken change is
    /// reported once, and tried again when the files change again.
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl<C> Reloading<C> {
    fn load(
        what: &'static str,
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<C, TlsError>,
    ) -> Result<Self, TlsError> {
        let stamps = files.paths().iter().map(|p| stamp(p)).collect();
        let config = build(&files)?;
        Ok(Reloading {
            what,
            files,
            build,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<C> {
        locks::read(&self.current).clone()
    }

    /// Rebuilds the configuration if a file changed since the last attempt, or always when
    /// `force`d (SIGHUP). Returns whether a new configuration is in use.
    fn reload(&self, force: bool) -> bool {
        let now: Vec<_> = self.files.paths().iter().map(|p| stamp(p)).collect();
        {
            let mut stamps = locks::lock(&self.stamps);
            if !force && *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match (self.build)(&self.files) {
            Ok(config) => {
                *locks::write(&self.current) = Arc::new(config);
                tracing::info!("reloaded the TLS certificates of {}", self.what);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "kept the previous TLS certificates of {}: the new files do not load: {e}",
                    self.what
                );
                false
            }
        }
    }
}

/// TLS on the raft port: this member's certificate serves both ends, as in etcd, so it must be
/// good for server and client authentication (`ondisk ctl certs` makes it so).
pub struct PeerTls {
    /// Accepting connections from members and native clients.
    pub server: Arc<Reloading<ServerConfig>>,
    /// Connecting to other members.
    pub client: Arc<Reloading<ClientConfig>>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("files", &self.server.files)
            .finish_non_exhaustive()
    }
}

/// The client side of the raft port's TLS: what members use to reach each other, and native
/// clients to reach members (with a certificate the peer CA signed).
pub fn peer_client(files: TlsFiles) -> Result<Arc<Reloading<ClientConfig>>, TlsError> {
    Ok(Arc::new(Reloading::load(
        "connections to peers",
        files,
        client_config,
    )?))
}

/// Everything TLS one node uses; either port may be plaintext.
#[derive(Default)]
pub struct NodeTls {
    pub peer: Option<Arc<PeerTls>>,
    pub client: Option<Arc<Reloading<ServerConfig>>>,
}

/// The ALPN names the client port offers: HTTP/2 (gRPC requires it) and HTTP/1.1.
const CLIENT_PORT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl NodeTls {
    /// Loads the configurations the flags ask for; an unreadable or inconsistent file fails the
    /// start with a line naming it.
    pub fn load(peer: Option<TlsFiles>, client: Option<TlsFiles>) -> Result<NodeTls, TlsError> {
        let peer = match peer {
            Some(files) => Some(Arc::new(PeerTls {
                server: Arc::new(Reloading::load("the raft port", files.clone(), |f| {
                    server_config(f, &[])
                })?),
                client: peer_client(files)?,
            })),
            None => None,
        };
        let client = match client {
            Some(files) => Some(Arc::new(Reloading::load("the client port", files, |f| {
                server_config(f, &CLIENT_PORT_ALPN)
            })?)),
            None => None,
        };
        Ok(NodeTls { peer, client })
    }

    /// Keeps every configuration in step with its files until the task is aborted: a check
    /// every second, and a forced reload on SIGHUP (for files replaced without changing their
    /// size, inode or modification time).
    pub fn keep_current(&self) -> Option<JoinHandle<()>> {
        let peer = self.peer.clone();
        let client = self.client.clone();
        if peer.is_none() && client.is_none() {
            return None;
        }
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(
                    "cannot watch SIGHUP (certificates still reload when their files change): {e}"
                );
                None
            }
        };
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(signal) => signal.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                // Looking at files and reading them blocks: off the async workers.
                let (peer, client) = (peer.clone(), client.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    if let Some(peer) = &peer {
                        peer.server.reload(force);
                        peer.client.reload(force);
                    }
                    if let Some(client) = &client {
                        client.reload(force);
                    }
                });
                if let Err(e) = checked.await {
                    tracing::warn!("checking the TLS certificate files failed: {e}");
                }
            }
        }))
    }
}

/// Why an incoming connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Plaintext arrived on a port that speaks TLS.
    #[error("it is not TLS (a client or node without TLS settings connected to a TLS port)")]
    NotTls,
    /// A TLS handshake arrived on a plaintext port.
    #[error("it is TLS, and this port is plaintext (start the node with TLS flags, or connect without TLS)")]
    UnexpectedTls,
    /// The handshake failed (certificate refused, protocol error, connection closed).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The connection sent nothing in time (idle connections are not kept).
    #[error("sent nothing within {}s", HANDSHAKE_TIMEOUT.as_secs())]
    Silent,
    /// The handshake began and did not finish in time.
    #[error("did not finish the TLS handshake within {}s", HANDSHAKE_TIMEOUT.as_secs())]
    TimedOut,
    /// The connection closed before sending anything (a port probe).
    #[error("closed before sending anything")]
    Closed,
}

/// Waits for a connection's first byte and says whether it opens a TLS handshake.
async fn opens_with_tls(stream: &TcpStream) -> Result<bool, Refusal> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Err(_) => Err(Refusal::Silent),
        Ok(Err(e)) => Err(Refusal::Handshake(e.to_string())),
        Ok(Ok(0)) => Err(Refusal::Closed),
        Ok(Ok(_)) => Ok(first[0] == TLS_HANDSHAKE_RECORD),
    }
}

/// Refuses a TLS handshake on a plaintext port, so the connection is closed with a log line
/// that says why instead of being read as garbage frames or a bad HTTP request.
pub async fn check_plaintext(stream: TcpStream) -> Result<TcpStream, (Refusal, Option<TcpStream>)> {
    match opens_with_tls(&stream).await {
        Ok(true) => Err((Refusal::UnexpectedTls, Some(stream))),
        Ok(false) => Ok(stream),
        Err(e) => Err((e, None)),
    }
}

/// A connection accepted by a TLS port.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A connection made to a TLS peer.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Runs the server side of the handshake with the current configuration, within
/// [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    config: &Reloading<ServerConfig>,
    stream: TcpStream,
) -> Result<ServerStream, (Refusal, Option<TcpStream>)> {
    match opens_with_tls(&stream).await {
        Ok(true) => {}
        Ok(false) => return Err((Refusal::NotTls, Some(stream))),
        Err(e) => return Err((e, None)),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible()).await {
        Err(_) => Err((Refusal::TimedOut, None)),
        Ok(Err((e, stream))) => Err((Refusal::Handshake(explain(&e)), Some(stream))),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Closes a refused connection so that the other side still reads what it was sent (a TLS
/// alert, an answer) before it learns the connection is gone: closing a socket that has unread
/// bytes resets it, and a reset discards what the peer had not read yet. With TLS 1.3 a client
/// whose certificate is refused has already sent its request, so this is the common case.
pub async fn close_gently(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_BEFORE_CLOSE, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Runs the client side of the handshake with a peer at `addr` (HOST:PORT), checking that its
/// certificate names HOST. The caller bounds the time.
pub async fn connect(
    config: &Reloading<ClientConfig>,
    addr: &str,
    stream: TcpStream,
) -> Result<ClientStream, String> {
    let host = host_of(addr);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} cannot be checked against a certificate: {e}"))?;
    tokio_rustls::TlsConnector::from(config.current())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {}", explain(&e)))
}

/// The host of HOST:PORT or [V6]:PORT.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether an I/O error is rustls refusing something (rather than the network failing).
pub fn is_handshake_failure(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// rustls's reason for a failed handshake, with what it most likely means.
pub fn explain(error: &io::Error) -> String {
    use rustls::AlertDescription;
    use rustls::CertificateError;
    use rustls::InvalidMessage;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the other side closed the connection during the handshake (it does not speak TLS, or refused this side's certificate)".into()
            }
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
        ) => format!("the other side does not speak TLS ({tls})"),
        rustls::Error::InvalidMessage(_) => {
            format!("the other side sent a TLS message this side refuses ({tls})")
        }
        // A certificate from another CA with the same name as the trusted one fails on its
        // signature rather than its issuer.
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "the other side's certificate is not signed by the trusted CA".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the other side's certificate has expired".into(),
        rustls::Error::NoCertificatesPresented => {
            "the other side presented no certificate, and this port requires one".into()
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the other side requires a certificate, and this side has none to present".into()
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::DecryptError),
        ) => format!("the other side refused this side's certificate ({alert:?})"),
        other => other.to_string(),
    }
}

/// Logs refused connections on one port, at most one line per [`REFUSAL_LOG_INTERVAL`], with
/// how many were refused in between, so a flood of bad handshakes cannot flood the log.
pub struct RefusalLog {
    port: &'static str,
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl RefusalLog {
    pub const fn new(port: &'static str) -> Self {
        RefusalLog {
            port,
            last: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Records one refusal of a connection from `peer`, logging it if the interval allows.
    /// Connections that close or idle without sending anything (port probes, clients that
    /// connect ahead of time) are not worth a warning.
    pub fn refused(&self, peer: impl fmt::Display, why: &Refusal) {
        if matches!(why, Refusal::Closed | Refusal::Silent) {
            tracing::debug!(
                "closed a connection on the {} from {peer}: {why}",
                self.port
            );
            return;
        }
        let now = Instant::now();
        {
            let mut last = locks::lock(&self.last);
            if last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL) {
                self.unlogged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        let more = if unlogged > 0 {
            format!(" ({unlogged} more refused since the last line)")
        } else {
            String::new()
        };
        tracing::warn!(
            "refused a connection on the {} from {peer}: {why}{more}",
            self.port
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::CertRequest;

    /// Certificates for nodes 1 and 2 and a client, in a fresh directory.
    fn certificates() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        certs::generate(dir.path(), &request()).expect("certificates");
        dir
    }

    fn request() -> CertRequest {
        CertRequest {
            nodes: vec![1, 2],
            hosts: vec!["127.0.0.1".into()],
            client: "client".into(),
            validity: Duration::from_secs(3600),
        }
    }

    fn node_files(dir: &Path, id: u64) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("node{id}.pem")),
            key: dir.join(format!("node{id}-key.pem")),
            trusted_ca: Some(dir.join(certs::CA_CERT)),
            client_cert_auth: true,
        }
    }

    #[test]
    fn a_rotation_is_picked_up_and_a_half_done_one_keeps_the_previous_configuration() {
        let dir = certificates();
        let tls = NodeTls::load(Some(node_files(dir.path(), 1)), None).expect("peer TLS");
        let peer = tls.peer.expect("peer TLS");
        let before = peer.server.current();
        assert!(!peer.server.reload(false), "nothing changed yet");

        // Half of a rotation: a key that is not the certificate's.
        std::fs::copy(
            dir.path().join("node2-key.pem"),
            dir.path().join("node1-key.pem"),
        )
        .expect("copy a key");
        assert!(!peer.server.reload(false));
        assert!(Arc::ptr_eq(&before, &peer.server.current()));

        // The whole rotation: new certificates from the same CA.
        certs::generate(dir.path(), &request()).expect("new certificates");
        assert!(peer.server.reload(false));
        assert!(peer.client.reload(false));
        assert!(!Arc::ptr_eq(&before, &peer.server.current()));
    }

    #[test]
    fn a_forced_reload_rebuilds_unchanged_files() {
        let dir = certificates();
        let tls = NodeTls::load(None, Some(node_files(dir.path(), 1))).expect("client TLS");
        let client = tls.client.expect("client TLS");
        let before = client.current();
        assert!(client.reload(true));
        assert!(!Arc::ptr_eq(&before, &client.current()));
        assert_eq!(
            client.current().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn unusable_files_fail_with_their_name() {
        let dir = certificates();
        let mut files = node_files(dir.path(), 1);
        files.trusted_ca = None;
        let error = NodeTls::load(None, Some(files)).err().expect("refused");
        assert!(error.to_string().contains("needs a trusted CA"), "{error}");

        let mut files = node_files(dir.path(), 1);
        files.cert = dir.path().join("missing.pem");
        let error = NodeTls::load(Some(files), None).err().expect("refused");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let mut files = node_files(dir.path(), 1);
        files.key = dir.path().join("node2-key.pem");
        let error = NodeTls::load(Some(files), None).err().expect("refused");
        assert!(
            error
                .to_string()
                .contains("do not make a certificate and its key"),
            "{error}"
        );
    }

    #[test]
    fn running_certs_again_keeps_the_ca() {
        let dir = certificates();
        let ca = std::fs::read(dir.path().join(certs::CA_CERT)).expect("the CA");
        let node = std::fs::read(dir.path().join("node1.pem")).expect("node 1");
        let written = certs::generate(dir.path(), &request()).expect("again");
        assert!(!written.contains(&dir.path().join(certs::CA_CERT)));
        assert_eq!(
            std::fs::read(dir.path().join(certs::CA_CERT)).expect("the CA"),
            ca
        );
        assert_ne!(
            std::fs::read(dir.path().join("node1.pem")).expect("node 1"),
            node
        );
    }

    #[test]
    fn the_host_is_what_a_certificate_must_name() {
        assert_eq!(host_of("127.0.0.1:63001"), "127.0.0.1");
        assert_eq!(host_of("localhost:1"), "localhost");
        assert_eq!(host_of("[::1]:63001"), "::1");
    }
}
