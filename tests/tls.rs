//! TLS on both of a node's ports, end to end on real `ondisk` processes: mutual TLS between
//! members on the raft port (where native clients connect too) and TLS with client certificates
//! on the client port (the HTTP API and etcd's gRPC API), with certificates made by the real
//! `ondisk ctl certs`.
//!
//! Covered: every kind of client with the cluster's certificates is served (`ondisk ctl`, the
//! real etcdctl over gRPC, the native client, the in-process REPL) and every client without one
//! is turned away with one clear line; a node or client holding a certificate from another CA
//! can neither join nor disturb the cluster; membership changes and snapshot catch-up work over
//! mutual TLS, also across a SIGKILL; certificates are rotated under load (by replacing the
//! files, and on SIGHUP) without one failed request; expired certificates, TLS against plaintext
//! ports and plaintext against TLS ports are refused, logged and survived; and bad input on both
//! TLS ports (garbage, truncated and never-finished handshakes, silent connections, a flood of
//! failed handshakes, a huge certificate chain) leaves the node serving, with refusals logged at
//! a bounded rate.
//!
//! Each test starts its own processes on fresh ports with certificates in its own temporary
//! directory, so tests run in parallel. Waits poll observable things (a REPL or HTTP answer, a
//! log line, a socket closing) with a deadline; every helper process is owned by a guard that
//! kills it.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ondisk::client::{Client, Consistency};
use ondisk::tls::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tempfile::TempDir;

use common::http::{request, tls_agent, Answer};
use common::lossy as text;
use common::native::{put_request, runtime};
use common::{free_addr, poll_until, Cluster, Node, NodeSpec, BIN};

/// How long a change may take to show everywhere (a reload, a follower applying, a node joining,
/// a log line). Generous: other tests share the CPUs.
const SETTLE: Duration = Duration::from_secs(45);
/// The longest a helper process (ctl, etcdctl) may run before the test kills it and fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// ctl's own limit on one request, above the nodes' 2 s so that theirs is what fails first.
const CTL_TIMEOUT: &str = "20s";
/// The test's own limit on one HTTPS request or raw socket exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A native client's limit on a call that should succeed: room for an election.
const NATIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A native client's limit on a call that is expected to be refused.
const REFUSED_NATIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node may take to drop a connection that never finishes its handshake: its
/// handshake timeout (10 s) with room for a loaded machine.
const STALLED_CLOSE_TIMEOUT: Duration = Duration::from_secs(40);
/// Start attempts for a node whose freshly picked ports were taken by someone else meanwhile.
const START_ATTEMPTS: usize = 5;

/// The contract's log fragments.
const RAFT_PORT: &str = "raft port";
const CLIENT_PORT: &str = "client port";
const NOT_SIGNED: &str =
    "TLS handshake failed: the other side's certificate is not signed by the trusted CA";
const EXPIRED: &str = "TLS handshake failed: the other side's certificate has expired";
const NOT_TLS: &str = "it is not TLS";
const UNEXPECTED_TLS: &str = "it is TLS, and this port is plaintext";
/// The end of the refusal of a connection that sent nothing, or half a handshake, for 10 s.
const HANDSHAKE_TIME_UP: &str = "within 10s";
const MORE_REFUSED: &str = " more refused since the last line)";
/// The three TLS configurations of a node, as its reload lines name them.
const CONFIGURATIONS: [&str; 3] = ["the raft port", "connections to peers", "the client port"];
/// What a plaintext HTTP client reads from a TLS client port.
const PLAINTEXT_ANSWER: &str =
    "this port speaks TLS: connect with https:// and the cluster's CA certificate\n";

/// The start of a refusal line on `port` (`raft port` or `client port`).
fn refused_on(port: &str) -> String {
    format!("refused a connection on the {port} from ")
}

/// A temporary directory for one test's certificates, data and scratch files.
fn scratch_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ondisk-tls-")
        .tempdir()
        .expect("create a temporary directory")
}

// ---------------------------------------------------------------------------
// Helper processes
// ---------------------------------------------------------------------------

/// A helper process the test owns: dropping it (also while a failed test unwinds) kills and
/// reaps it, so none outlives its test.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        let _ = pipe.read_to_end(&mut all);
        all
    })
}

/// Runs `command` (no stdin) to completion and returns what it did; kills it and fails the test
/// if it is still running after [`RUN_TIMEOUT`].
fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    let mut child = Owned(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}")),
    );
    let stdout = drain(child.0.stdout.take().expect("piped stdout"));
    let stderr = drain(child.0.stderr.take().expect("piped stderr"));
    let status = poll_until(RUN_TIMEOUT, || child.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("{what} still running after {RUN_TIMEOUT:?}; killed"));
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Asserts success and returns stdout.
fn ok(output: Output, what: &str) -> String {
    text(&common::succeeded(output, what))
}

/// Asserts ctl's failure contract: exit status 1 and exactly one stderr line, `error: ...`,
/// containing `reason`. Returns that line.
fn fails(output: Output, reason: &str, what: &str) -> String {
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        output.status.code() == Some(1)
            && lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains(reason),
        "{what}: expected exit status 1 and one `error: ` line containing {reason:?}, got {} \
         with stdout {:?} stderr {stderr:?}",
        output.status,
        text(&output.stdout)
    );
    lines[0].to_string()
}

/// Runs `ondisk ctl --endpoints ENDPOINT TLS ARGS`.
fn ctl(endpoint: &str, tls: Vec<OsString>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["ctl", "--endpoints", endpoint, "--timeout", CTL_TIMEOUT])
        .args(tls)
        .args(args);
    run(command)
}

/// Runs the real etcdctl (`ETCDCTL_API=3`, Debian's etcd-client) against `endpoint` over TLS
/// with `identity`'s files, giving up connecting after `dial_timeout`.
fn etcdctl(endpoint: SocketAddr, identity: &Identity, dial_timeout: &str, args: &[&str]) -> Output {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        // The flags below decide; an operator's environment must not add to them.
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_CACERT")
        .env_remove("ETCDCTL_CERT")
        .env_remove("ETCDCTL_KEY")
        .env_remove("ETCDCTL_WRITE_OUT")
        .arg(format!("--endpoints=https://{endpoint}"))
        .arg(format!("--cacert={}", identity.ca.display()))
        .arg(format!("--cert={}", identity.cert.display()))
        .arg(format!("--key={}", identity.key.display()))
        .arg(format!("--dial-timeout={dial_timeout}"))
        .arg("--command-timeout=20s")
        .args(args);
    run(command)
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A directory of certificates made by `ondisk ctl certs`: a CA, and what it signed.
struct CertDir(PathBuf);

impl CertDir {
    /// Runs `ondisk ctl certs DIR ARGS`: a CA first if DIR has none, then the node and client
    /// certificates ARGS ask for, replacing older ones (which is how certificates are rotated).
    fn issue(dir: &Path, args: &[&str]) -> CertDir {
        let mut command = Command::new(BIN);
        command.args(["ctl", "certs"]).arg(dir).args(args);
        ok(
            run(command),
            &format!("ctl certs {} {args:?}", dir.display()),
        );
        CertDir(dir.to_path_buf())
    }

    /// A new directory with a copy of this one's CA (certificate and key), so certificates made
    /// there are signed by the same CA.
    fn copy_ca_to(&self, dir: &Path) -> CertDir {
        fs::create_dir_all(dir).expect("create a certificate directory");
        for name in ["ca.pem", "ca-key.pem"] {
            fs::copy(self.0.join(name), dir.join(name)).expect("copy the CA");
        }
        CertDir(dir.to_path_buf())
    }

    fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }

    /// `NAME.pem` and its key, trusting this directory's CA.
    fn identity(&self, name: &str) -> Identity {
        Identity {
            ca: self.ca(),
            cert: self.0.join(format!("{name}.pem")),
            key: self.0.join(format!("{name}-key.pem")),
        }
    }

    fn node(&self, id: usize) -> Identity {
        self.identity(&format!("node{id}"))
    }

    fn client(&self) -> Identity {
        self.identity("client")
    }
}

/// One side's TLS files: its certificate and key, and the CA whose certificates it trusts.
#[derive(Debug, Clone)]
struct Identity {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    /// The same certificate, trusting `ca` instead: what someone holding a certificate from
    /// another CA, who knows the cluster's (public) CA certificate, can do.
    fn trusting(&self, ca: &Path) -> Identity {
        Identity {
            ca: ca.to_path_buf(),
            ..self.clone()
        }
    }

    /// A node's TLS flags: mutual TLS on the raft port, TLS requiring client certificates on the
    /// client port. `dash` is `-` (etcd's spelling) or `--`.
    fn node_args(&self, dash: &str) -> Vec<OsString> {
        let flag = |name: &str| OsString::from(format!("{dash}{name}"));
        vec![
            flag("peer-cert-file"),
            self.cert.clone().into(),
            flag("peer-key-file"),
            self.key.clone().into(),
            flag("peer-trusted-ca-file"),
            self.ca.clone().into(),
            flag("cert-file"),
            self.cert.clone().into(),
            flag("key-file"),
            self.key.clone().into(),
            flag("trusted-ca-file"),
            self.ca.clone().into(),
            flag("client-cert-auth"),
        ]
    }

    /// ctl's flags for this identity.
    fn ctl_args(&self) -> Vec<OsString> {
        vec![
            "--cacert".into(),
            self.ca.clone().into(),
            "--cert".into(),
            self.cert.clone().into(),
            "--key".into(),
            self.key.clone().into(),
        ]
    }

    /// The certificate chain in the certificate file.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("read {}: {e}", self.cert.display()))
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.key.display()))
    }

    /// The trusted CA as rustls takes it.
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.ca).expect("read the CA") {
            roots
                .add(ca.expect("a CA certificate"))
                .expect("a usable CA");
        }
        Arc::new(roots)
    }

    /// A rustls client configuration trusting the CA and presenting the certificate.
    fn rustls(&self) -> Arc<rustls::ClientConfig> {
        self.rustls_with_chain(self.chain())
    }

    /// [`Identity::rustls`], presenting `chain` (which must start with this certificate).
    fn rustls_with_chain(&self, chain: Vec<CertificateDer<'static>>) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(self.roots())
        .with_client_auth_cert(chain, self.private_key())
        .expect("a client certificate and its key");
        Arc::new(config)
    }

    /// An HTTPS agent (one new connection per request) with this identity.
    fn agent(&self) -> ureq::Agent {
        let read =
            |path: &Path| fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let ca = ureq::tls::Certificate::from_pem(&read(&self.ca)).expect("a PEM CA");
        let cert = ureq::tls::Certificate::from_pem(&read(&self.cert)).expect("a PEM certificate");
        let key = ureq::tls::PrivateKey::from_pem(&read(&self.key)).expect("a PEM key");
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)))
            .build();
        tls_agent(REQUEST_TIMEOUT, tls)
    }

    /// A native client of the raft ports `endpoints`, over TLS with this identity.
    fn native_client(&self, endpoints: &[SocketAddr], timeout: Duration) -> Client {
        let files = TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            trusted_ca: Some(self.ca.clone()),
            client_cert_auth: false,
        };
        let endpoints = endpoints.iter().map(SocketAddr::to_string).collect();
        Client::with_tls(endpoints, timeout, files).expect("a TLS native client")
    }
}

/// What rustls's client-certificate verifier (the one the nodes use) says of `identity`'s
/// certificate now.
fn client_certificate_check(identity: &Identity) -> Result<(), rustls::Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        identity.roots(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("a client certificate verifier");
    let chain = identity.chain();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// Node `id`'s TLS flags with its own certificate from `certs`. Node 2 is given etcd's
/// single-dash spelling, the others the double-dash one: both must work.
fn node_tls_args(certs: &CertDir, id: usize) -> Vec<OsString> {
    certs.node(id).node_args(if id == 2 { "-" } else { "--" })
}

// ---------------------------------------------------------------------------
// Clusters and lone nodes
// ---------------------------------------------------------------------------

/// Starts `n` nodes on fresh ports, node `id` with the extra arguments `args_of(id)`, retrying
/// with other ports when one was taken meanwhile. Does not wait for a leader.
fn start_cluster(n: usize, args_of: impl Fn(usize) -> Vec<OsString>) -> Cluster {
    let mut last_failure = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let root = scratch_dir();
        let data_dir = root.path().join("data");
        let raft: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let specs = (1..=n)
            .map(|id| NodeSpec {
                id,
                cluster: raft.clone(),
                http: free_addr(),
                data_dir: data_dir.clone(),
                extra_args: args_of(id),
            })
            .collect();
        match Cluster::start_specs(root, specs) {
            Ok(cluster) => return cluster,
            Err(f) if f.port_in_use() => {
                eprintln!("cluster start attempt {attempt}: port clash, retrying with new ports");
                last_failure = f.diagnostics;
            }
            Err(f) => panic!(
                "a node failed to start (exit status {:?})\n{}",
                f.status, f.diagnostics
            ),
        }
    }
    panic!("could not start a cluster: ports kept clashing; last failure:\n{last_failure}")
}

/// Starts a node that is not one of a cluster's members from `spec_of()` (a fresh spec per
/// attempt, in case its ports were taken meanwhile) and waits until it answers `status`.
/// Returns it with the spec it was started from.
fn start_outsider(mut spec_of: impl FnMut() -> NodeSpec) -> (Node, NodeSpec) {
    for attempt in 1..=START_ATTEMPTS {
        let spec = spec_of();
        match Node::start(&spec) {
            Ok(node) => return (node, spec),
            Err(f) if f.port_in_use() && attempt < START_ATTEMPTS => {}
            Err(f) => panic!(
                "the outsider node failed to start (exit status {:?})\n{}",
                f.status, f.diagnostics
            ),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// A cluster whose nodes all speak TLS on both ports, each with its own certificate from
/// `ondisk ctl certs`: mutual TLS on the raft port, client certificates required on the client
/// port.
struct TlsCluster {
    /// Declared first, so the processes die before their certificates go.
    cluster: Cluster,
    certs: CertDir,
    scratch: TempDir,
}

impl Deref for TlsCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for TlsCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl TlsCluster {
    /// Starts `n` TLS nodes, each also given `extra` flags, and waits for a leader.
    fn start(n: usize, extra: &[&str]) -> TlsCluster {
        let scratch = scratch_dir();
        let ids: Vec<String> = (1..=n).map(|id| id.to_string()).collect();
        let certs = CertDir::issue(&scratch.path().join("certs"), &["--nodes", &ids.join(",")]);
        let cluster = start_cluster(n, |id| {
            let mut args = node_tls_args(&certs, id);
            args.extend(extra.iter().map(OsString::from));
            args
        });
        let mut tls = TlsCluster {
            cluster,
            certs,
            scratch,
        };
        tls.wait_for_leader();
        tls
    }

    /// The cluster's client certificate.
    fn client(&self) -> Identity {
        self.certs.client()
    }

    /// Certificates from another CA (`ondisk ctl certs` in another directory), for impostors.
    fn foreign_certs(&self, args: &[&str]) -> CertDir {
        CertDir::issue(&self.scratch.path().join("another-ca"), args)
    }

    /// Node `id`'s client endpoint as ctl takes it: HOST:PORT, reached over https since TLS
    /// flags are given.
    fn endpoint(&self, id: usize) -> String {
        self.http_addr(id).to_string()
    }

    /// `ondisk ctl` against node `id` with the cluster's client certificate.
    fn ctl(&self, id: usize, args: &[&str]) -> Output {
        ctl(&self.endpoint(id), self.client().ctl_args(), args)
    }

    /// `GET /v1/status` of node `id` over HTTPS.
    fn http_status(&self, id: usize) -> serde_json::Value {
        let url = format!("https://{}/v1/status", self.http_addr(id));
        let answer = request(&self.client().agent(), "GET", &url, b"")
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(answer.status, 200, "GET {url}: {}", answer.text());
        answer.json()
    }

    /// Node `id`'s REPL `status` as (leader, term).
    fn leader_and_term(&mut self, id: usize) -> (String, String) {
        let status = self.node(id).status();
        (status["leader"].clone(), status["term"].clone())
    }

    /// A position in every node's log (ids 1..=size), for waiting on what is logged next.
    fn log_marks(&self) -> Vec<LogMark> {
        self.ids()
            .into_iter()
            .map(|id| LogMark::new(self.log_path(id)))
            .collect()
    }

    /// The raft addresses of every node.
    fn raft_addrs(&self) -> Vec<SocketAddr> {
        self.ids()
            .into_iter()
            .map(|id| self.raft_addr(id))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Log files
// ---------------------------------------------------------------------------

/// A position in a node's log file: a test looks at what was logged after it.
struct LogMark {
    path: PathBuf,
    at: usize,
}

impl LogMark {
    fn new(path: PathBuf) -> LogMark {
        let at = fs::metadata(&path).map_or(0, |m| m.len() as usize);
        LogMark { path, at }
    }

    /// What was logged after the mark.
    fn since(&self) -> String {
        let all = fs::read(&self.path).unwrap_or_default();
        text(all.get(self.at..).unwrap_or_default())
    }

    /// The lines logged after the mark that contain every one of `needles`.
    fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.since()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// How many connections the refusal lines on `port` logged after the mark account for: one
    /// for each line, plus the count of the others it reports.
    fn refusals(&self, port: &str) -> usize {
        self.lines_with(&[&refused_on(port)])
            .iter()
            .map(|line| 1 + more_refused(line))
            .sum()
    }

    /// Polls until a line logged after the mark contains every one of `needles`, calling
    /// `provoke` before each look, and returns that line. A refusal is logged at most once a
    /// second per port (the others are counted), so one refused attempt may go unlogged:
    /// repeating it until it shows is what makes the wait certain.
    fn await_line(&self, needles: &[&str], provoke: impl FnMut()) -> String {
        self.await_line_where(
            &format!("a line with {needles:?}"),
            |line| needles.iter().all(|n| line.contains(n)),
            provoke,
        )
    }

    /// [`LogMark::await_line`] for the first line `accept` takes, described as `what`.
    fn await_line_where(
        &self,
        what: &str,
        accept: impl Fn(&str) -> bool,
        mut provoke: impl FnMut(),
    ) -> String {
        let found = poll_until(SETTLE, || {
            provoke();
            self.since()
                .lines()
                .find(|line| accept(line))
                .map(str::to_string)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {what} in {} within {SETTLE:?}; logged meanwhile:\n{}",
                self.path.display(),
                self.since()
            )
        })
    }
}

/// Waits until each of `marks` shows the reload of all three TLS configurations of its node.
fn await_reloads(marks: &[LogMark]) {
    for mark in marks {
        for configuration in CONFIGURATIONS {
            let line = format!("reloaded the TLS certificates of {configuration}");
            mark.await_line(&[&line], || {});
        }
    }
}

// ---------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------

/// The name every node certificate carries and the test dials: 127.0.0.1.
fn loopback_name() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").expect("an IP address name")
}

/// A TCP connection to `addr`, reads and writes bounded by [`REQUEST_TIMEOUT`].
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .expect("set socket timeouts");
    stream
}

/// Connects to `addr` and sends `bytes` (possibly none), leaving the connection open.
fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = connect(addr);
    // The node may close the connection before reading everything; that is a fine answer.
    let _ = stream.write_all(bytes);
    stream
}

/// Whether the node closes `stream` (end of file, or a reset) within `within`; whatever it sends
/// before (a TLS alert) is read and dropped.
fn closed_by_node(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// The bytes a rustls client with `config` opens a handshake with: a complete ClientHello.
fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut connection =
        rustls::ClientConnection::new(config, loopback_name()).expect("a TLS client");
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection
            .write_tls(&mut hello)
            .expect("write the ClientHello");
    }
    hello
}

/// One TLS record holding a whole ClientHello whose body is garbage: it opens like a handshake
/// (0x16) and, being complete, is refused as soon as it arrives.
fn garbage_client_hello(seed: u64) -> Vec<u8> {
    const BODY: u16 = 256;
    let [record_hi, record_lo] = (BODY + 4).to_be_bytes();
    let [body_hi, body_lo] = BODY.to_be_bytes();
    // Record header (handshake, TLS 1.0, length), then handshake header (ClientHello, length).
    let mut bytes = vec![
        0x16, 0x03, 0x01, record_hi, record_lo, 0x01, 0x00, body_hi, body_lo,
    ];
    let mut state = seed;
    bytes.extend((0..BODY).map(|_| {
        // SplitMix64: deterministic garbage.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }));
    bytes
}

/// A TLS connection to `addr` whose handshake completed on this side (with TLS 1.3 the node may
/// still refuse this side's certificate right after), or why it failed.
fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    tls_handshake(connect(addr), config)
}

/// Runs the client side of a TLS handshake with `config` on `socket`.
fn tls_handshake(
    socket: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    const MAX_ROUNDS: usize = 100;
    let connection =
        rustls::ClientConnection::new(config, loopback_name()).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    for _ in 0..MAX_ROUNDS {
        if !stream.conn.is_handshaking() {
            return Ok(stream);
        }
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Err(format!("no handshake after {MAX_ROUNDS} rounds"))
}

/// The certificate the node at `addr` presents (DER), after a handshake with `config`.
fn presented_certificate(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let stream = tls_connect(addr, config)
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"));
    let certs = stream
        .conn
        .peer_certificates()
        .unwrap_or_else(|| panic!("{addr} presented no certificate"));
    certs[0].as_ref().to_vec()
}

/// Sends `bytes` over TLS to `addr` and reads until the node closes: `Ok` with what it answered
/// (possibly nothing), `Err` if the handshake or the exchange failed before any answer.
fn tls_exchange(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let mut stream = tls_connect(addr, config)?;
    stream.write_all(bytes).map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A close without close_notify after a complete answer is still an answer.
            Err(_) if !answer.is_empty() => return Ok(answer),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// An HTTP/1.1 request for `path` that asks the node to close the connection after answering.
fn http_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Asserts that the client port at `addr` serves an HTTPS request from `identity`.
fn assert_https_served(addr: SocketAddr, identity: &Identity, what: &str) {
    let answer = tls_exchange(addr, identity.rustls(), &http_request("/v1/status"));
    assert!(
        matches!(&answer, Ok(bytes) if bytes.starts_with(b"HTTP/1.1 200")),
        "{what}: the client port {addr} should serve HTTPS, got {:?}",
        answer.map(|b| text(&b))
    );
}

/// Asserts that a native client over TLS with `identity` reads `key` through the raft port at
/// `addr` and finds `expected`.
fn assert_native_reads(addr: SocketAddr, identity: &Identity, key: &str, expected: &str) {
    let client = identity.native_client(&[addr], NATIVE_TIMEOUT);
    let got = runtime().block_on(client.get(key.as_bytes(), Consistency::Linearizable));
    assert!(
        matches!(&got, Ok(Some(v)) if v == expected.as_bytes()),
        "a native client over TLS on {addr} should read {key:?} = {expected:?}, got {got:?}"
    );
}

/// Asserts that a native client over TLS with `identity` is refused by the raft port at `addr`:
/// its read fails (it keeps retrying until its deadline).
fn assert_native_refused(addr: SocketAddr, identity: &Identity, what: &str) {
    let client = identity.native_client(&[addr], REFUSED_NATIVE_TIMEOUT);
    let got = runtime().block_on(client.get(b"any", Consistency::Linearizable));
    assert!(got.is_err(), "{what}: the read should fail, got {got:?}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A cluster with mutual TLS between members and client certificates required on the client
/// port serves whoever holds a certificate from its CA — `ondisk ctl` (writing through one node,
/// reading linearizably through another, so members talk over TLS), the in-process REPL, and
/// etcd's own etcdctl over gRPC — and turns away with one clear line whoever does not: ctl and
/// a plaintext HTTP client without certificates, ctl without a client certificate, and etcdctl
/// or ctl with a client certificate from another CA.
#[test]
fn a_tls_cluster_serves_clients_with_its_certificates_and_turns_away_the_others_clearly() {
    let mut c = TlsCluster::start(3, &[]);
    let client = c.client();

    assert_eq!(
        ok(c.ctl(1, &["put", "greeting", "hello"]), "ctl put"),
        "OK\n"
    );
    assert_eq!(ok(c.ctl(2, &["get", "greeting"]), "ctl get"), "hello");

    // The REPL runs inside the node's process: TLS does not stand between them.
    c.must_put(3, "typed", "at the REPL");
    c.assert_get(1, "greeting", Some(b"hello"));
    assert_eq!(ok(c.ctl(1, &["get", "typed"]), "ctl get"), "at the REPL");

    // Without any TLS flag ctl speaks plain HTTP, and the TLS port answers in words.
    let line = fails(
        ctl(&c.endpoint(1), Vec::new(), &["get", "greeting"]),
        "400 Bad Request: this port speaks TLS",
        "ctl without TLS flags",
    );
    assert!(line.contains(&c.endpoint(1)), "{line}");
    // Trusting the CA but showing no certificate: the port asks for one.
    let ca_only = vec!["--cacert".into(), client.ca.clone().into()];
    fails(
        ctl(&c.endpoint(1), ca_only, &["get", "greeting"]),
        "TLS handshake failed",
        "ctl without a client certificate",
    );
    let plain = common::http::http(
        "GET",
        &format!("http://{}/v1/kv/greeting", c.http_addr(1)),
        b"",
    );
    assert_eq!(
        plain.status,
        400,
        "plain HTTP on the TLS port: {}",
        plain.text()
    );
    assert_eq!(plain.text(), PLAINTEXT_ANSWER);

    // etcd's own client, over gRPC on TLS.
    let put = etcdctl(
        c.http_addr(1),
        &client,
        "10s",
        &["put", "etcd-key", "etcd value"],
    );
    assert_eq!(ok(put, "etcdctl put"), "OK\n");
    let get = etcdctl(c.http_addr(3), &client, "10s", &["get", "etcd-key"]);
    assert_eq!(ok(get, "etcdctl get"), "etcd-key\netcd value\n");
    assert_eq!(ok(c.ctl(2, &["get", "etcd-key"]), "ctl get"), "etcd value");

    // A client certificate from another CA, even with the cluster's CA trusted, is refused, and
    // the node says why.
    let foreign = c
        .foreign_certs(&["--nodes", "1"])
        .client()
        .trusting(&client.ca);
    let mark = LogMark::new(c.log_path(2));
    mark.await_line(&[&refused_on(CLIENT_PORT), NOT_SIGNED], || {
        let refused = etcdctl(c.http_addr(2), &foreign, "3s", &["get", "etcd-key"]);
        assert!(
            !refused.status.success() && !text(&refused.stdout).contains("etcd value"),
            "etcdctl with a client certificate from another CA should fail: {refused:?}"
        );
    });
    fails(
        ctl(&c.endpoint(2), foreign.ctl_args(), &["get", "greeting"]),
        "TLS handshake failed",
        "ctl with a client certificate from another CA",
    );

    // None of it disturbed the cluster.
    assert_eq!(
        ok(c.ctl(3, &["put", "after", "all that"]), "ctl put"),
        "OK\n"
    );
    c.assert_get(2, "after", Some(b"all that"));
}

/// A node holding a certificate from another CA can neither join nor disturb a TLS cluster,
/// even when it trusts the cluster's CA and lists itself as a fourth member and campaigns: every
/// member refuses its connections (and logs why), the members' leader and term stay as they
/// were, the membership stays the three of them, and writes go on; and the rogue's own log says
/// once per member (not once per attempt) that it cannot connect and why. A native client with
/// such a certificate is refused on the raft port too, while one with the cluster's certificate
/// is served.
#[test]
fn a_node_with_a_certificate_from_another_ca_can_neither_join_nor_disturb_the_cluster() {
    let mut c = TlsCluster::start(3, &[]);
    c.must_put(1, "before", "the rogue");
    let client = c.client();
    let members = c.raft_addrs();

    // Native clients on the raft port: the cluster's certificate is served...
    let native = client.native_client(&members, NATIVE_TIMEOUT);
    let rt = runtime();
    rt.block_on(native.put(put_request("native", "over mTLS")))
        .expect("a native put over TLS");
    assert_native_reads(members[2], &client, "native", "over mTLS");
    // ...another CA's is not, and the node says why.
    let foreign = c.foreign_certs(&["--nodes", "4"]);
    let foreign_client = foreign.client().trusting(&client.ca);
    let mark = LogMark::new(c.log_path(1));
    mark.await_line(&[&refused_on(RAFT_PORT), NOT_SIGNED], || {
        assert_native_refused(
            members[0],
            &foreign_client,
            "a native client from another CA",
        );
    });

    let before: Vec<(String, String)> = c
        .ids()
        .into_iter()
        .map(|id| c.leader_and_term(id))
        .collect();
    let marks = c.log_marks();
    // The rogue: the members' addresses plus its own, bootstrapping a 4-node cluster by itself.
    let rogue_args = foreign.node(4).trusting(&client.ca).node_args("--");
    let rogue_dir = c.scratch.path().join("rogue");
    let (mut rogue, _) = start_outsider(|| NodeSpec {
        data_dir: rogue_dir.clone(),
        ..c.next_node_spec(rogue_args.clone())
    });
    // Every member refuses it, again and again.
    for mark in &marks {
        mark.await_line(&[&refused_on(RAFT_PORT), NOT_SIGNED], || {});
        let refused = poll_until(SETTLE, || {
            let refused = mark.refusals(RAFT_PORT);
            (refused >= ROGUE_ATTEMPTS).then_some(refused)
        });
        assert!(
            refused.is_some(),
            "a member refused the rogue fewer than {ROGUE_ATTEMPTS} times: {:?}",
            mark.lines_with(&[&refused_on(RAFT_PORT)])
        );
    }
    // It campaigned all along and got nowhere.
    let rogue_status = rogue.status();
    assert_ne!(
        rogue_status["state"], "Leader",
        "the rogue: {rogue_status:?}"
    );
    for id in c.ids() {
        assert_eq!(
            c.leader_and_term(id),
            before[id - 1],
            "node {id}'s (leader, term) changed while the rogue campaigned\n{}\n{}",
            c.diagnostics(),
            rogue.diagnostics()
        );
    }
    let listed = ok(c.ctl(1, &["--json", "members"]), "ctl members");
    let doc: serde_json::Value = serde_json::from_str(&listed).expect("members JSON");
    let ids: BTreeSet<u64> = doc["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]), "members: {listed}");
    for id in c.ids() {
        c.must_put(id, &format!("during-{id}"), "the rogue's campaign");
    }
    c.assert_get(3, "during-1", Some(b"the rogue's campaign"));
    let got = rogue.get("before");
    assert!(
        got.is_err(),
        "the rogue must not serve the cluster's data: {got:?}"
    );

    // The rogue says once per member why it cannot connect, not once per attempt.
    let rogue_log = rogue.log_contents();
    for addr in &members {
        let about: Vec<&str> = rogue_log
            .lines()
            .filter(|line| line.contains(&addr.to_string()) && !line.contains("openraft"))
            .collect();
        let expected = format!("cannot connect to {addr}: TLS handshake failed: ");
        assert!(
            about.len() == 1 && about[0].contains(&expected),
            "after {ROGUE_ATTEMPTS} or more refused attempts, the rogue's log should say \
             {expected:?}... once, and nothing else of its own about {addr}; it has {} lines:\n{}",
            about.len(),
            about.join("\n")
        );
    }
}

/// Snapshot often and keep little log behind each snapshot, so a late joiner cannot catch up from
/// the log alone.
const COMPACT_OFTEN: [&str; 4] = ["--snapshot-entries", "50", "--compaction-overhead", "5"];

/// How many connections of the rogue each member refuses before the rogue's log is looked at.
const ROGUE_ATTEMPTS: usize = 5;

/// Membership changes and snapshot catch-up work over mutual TLS: after the log was compacted, a
/// fourth node with a certificate from the same CA (made later into the same directory) is added
/// as a voter by ctl over TLS, catches up from a snapshot sent over TLS and serves the data; then
/// a SIGKILLed leader is replaced, writes go on, and the restarted node rejoins over TLS.
#[test]
fn a_node_added_after_compaction_catches_up_from_a_snapshot_over_mutual_tls() {
    let mut c = TlsCluster::start(3, &COMPACT_OFTEN);
    const KEYS: usize = 200;
    for i in 0..KEYS {
        c.must_put(1 + i % 3, &format!("k{i:03}"), format!("v{i}"));
    }
    c.wait_until(SETTLE, "every node has compacted its log", |c| {
        c.ids()
            .into_iter()
            .all(|id| common::status_u64(&c.node(id).status(), "purged").is_some_and(|p| p >= 100))
    });

    // A certificate for node 4 from the same CA, without touching the others.
    CertDir::issue(&c.certs.0, &["--nodes", "4", "--client", ""]);
    let mut args = node_tls_args(&c.certs, 4);
    args.extend(COMPACT_OFTEN.iter().chain(&["--join"]).map(OsString::from));
    let spec = c.next_node_spec(args);
    let addr4 = spec.raft_addr().to_string();
    let leader = c.wait_for_leader();
    c.launch_node(spec);
    let added = poll_until(SETTLE, || {
        let out = c.ctl(leader, &["add-voter", "4", &addr4]);
        let busy = text(&out.stderr).contains("busy");
        (!busy).then_some(out)
    })
    .expect("membership changes stayed busy");
    assert_eq!(ok(added, "ctl add-voter"), "added node 4 as a voter\n");

    let status = c.http_status(4);
    assert!(
        status["snapshots_installed"].as_u64().unwrap_or(0) >= 1,
        "node 4 should have caught up from a snapshot: {status}"
    );
    for i in [0, KEYS / 2, KEYS - 1] {
        let value = ok(
            c.ctl(4, &["get", "--stale", &format!("k{i:03}")]),
            "stale get on node 4",
        );
        assert_eq!(value, format!("v{i}"));
    }
    c.assert_get(4, "k007", Some(b"v7"));

    // A SIGKILLed leader: the others elect another over TLS and writes go on.
    let leader = c.wait_for_leader();
    c.kill(leader);
    let new_leader = c.wait_for_leader();
    assert_ne!(new_leader, leader);
    for id in c.running_ids() {
        c.must_put(id, &format!("after-kill-{id}"), "written");
    }
    c.restart(leader);
    c.assert_get(
        leader,
        &format!("after-kill-{new_leader}"),
        Some(b"written"),
    );
    c.must_put(leader, "from-the-restarted", "node");
    assert_eq!(
        ok(c.ctl(4, &["get", "from-the-restarted"]), "ctl get"),
        "node"
    );
}

/// A client thread writing keys `rot/NNNNN` round-robin through several nodes' client ports,
/// each request over a new TLS connection (so handshakes keep happening), until told to stop or
/// [`Writer::MAX_WRITES`]. It records every acknowledged key and every failure.
struct Writer {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    thread: JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Writer {
    const MAX_WRITES: usize = 5_000;

    fn start(agent: ureq::Agent, addrs: Vec<SocketAddr>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (stop_flag, counter) = (stop.clone(), attempts.clone());
        let thread = thread::spawn(move || {
            let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
            for i in 0..Writer::MAX_WRITES {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("rot/{i:05}");
                let url = format!("https://{}/v1/kv/{key}", addrs[i % addrs.len()]);
                match request(&agent, "PUT", &url, key.as_bytes()) {
                    Ok(Answer { status: 204, .. }) => acknowledged.push(key),
                    Ok(answer) => {
                        failures.push(format!("PUT {url}: {} {}", answer.status, answer.text()))
                    }
                    Err(e) => failures.push(format!("PUT {url}: {e}")),
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            (acknowledged, failures)
        });
        Writer {
            stop,
            attempts,
            thread,
        }
    }

    /// Waits until the writer has made `n` more requests than it had when called.
    fn await_more(&self, n: usize) {
        let target = self.attempts.load(Ordering::SeqCst) + n;
        common::wait_until(
            SETTLE,
            &format!("the writer has made {target} requests"),
            || self.attempts.load(Ordering::SeqCst) >= target || self.thread.is_finished(),
        );
    }

    /// Stops the writer; returns the keys acknowledged and the failures.
    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the writer thread panicked")
    }
}

/// Every key under `rot/` that node `id` holds (a linearizable scan over HTTPS).
fn rotated_keys(c: &TlsCluster, agent: &ureq::Agent, id: usize) -> BTreeSet<String> {
    let url = format!(
        "https://{}/v1/kv/?prefix=rot/&limit=100000",
        c.http_addr(id)
    );
    let answer = request(agent, "GET", &url, b"").unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.text());
    let page: ondisk::api::http::ScanAnswer =
        serde_json::from_slice(&answer.body).expect("a scan answer");
    assert!(page.next.is_none(), "one page holds every key");
    page.items.into_iter().map(|item| item.key).collect()
}

/// Certificates are rotated under load with no failed request: SIGHUP reloads every TLS
/// configuration of a node (and does not stop it); re-issuing the node and client certificates
/// from the same CA into the files the nodes use makes every node reload all three
/// configurations by itself and present the new certificates on both ports, while a client
/// making a new TLS connection per write sees no failure and every acknowledged write is
/// readable with the new client certificate; and a half-done rotation (a key that does not match
/// its certificate) is refused, logged, and leaves the node serving with its previous
/// certificates until the files are right again.
#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    let mut c = TlsCluster::start(3, &[]);

    // SIGHUP: a forced reload of unchanged files, and the node goes on.
    let mark = LogMark::new(c.log_path(2));
    c.node(2).signal("HUP");
    await_reloads(&[mark]);
    assert!(c.is_running(2), "SIGHUP must not stop a node");
    c.must_put(2, "after-hup", "yes");

    let old_client = c.client();
    let writer = Writer::start(
        old_client.agent(),
        c.ids().into_iter().map(|id| c.http_addr(id)).collect(),
    );
    writer.await_more(10);

    let marks = c.log_marks();
    CertDir::issue(&c.certs.0, &["--nodes", "1,2,3"]);
    await_reloads(&marks);
    // New connections get the new certificates, on both ports.
    let new_client = c.client();
    for id in c.ids() {
        let issued = c.certs.node(id).chain()[0].as_ref().to_vec();
        for addr in [c.http_addr(id), c.raft_addr(id)] {
            assert!(
                presented_certificate(addr, new_client.rustls()) == issued,
                "node {id} should present its new certificate on {addr}"
            );
        }
    }
    writer.await_more(10);
    let (acknowledged, failures) = writer.finish();
    assert!(
        failures.is_empty(),
        "{} of {} writes failed during the rotation: {failures:#?}\n{}",
        failures.len(),
        failures.len() + acknowledged.len(),
        c.diagnostics()
    );
    let new_agent = new_client.agent();
    let stored = rotated_keys(&c, &new_agent, 3);
    let acknowledged: BTreeSet<String> = acknowledged.into_iter().collect();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged write, and nothing else"
    );
    assert_native_reads(c.raft_addr(1), &new_client, "after-hup", "yes");

    // Half a rotation: node 1's key file replaced by one that is not its certificate's key.
    let mark = LogMark::new(c.log_path(1));
    let node1 = c.certs.node(1);
    let wrong_key = c.scratch.path().join("wrong-key.pem");
    fs::copy(c.certs.node(2).key, &wrong_key).expect("copy a key");
    fs::rename(&wrong_key, &node1.key).expect("replace node 1's key");
    for configuration in CONFIGURATIONS {
        let line = format!("kept the previous TLS certificates of {configuration}");
        mark.await_line(&[&line], || {});
    }
    let current = node1.chain()[0].as_ref().to_vec();
    assert!(
        presented_certificate(c.http_addr(1), new_client.rustls()) == current,
        "node 1 keeps presenting its certificate"
    );
    assert_https_served(c.http_addr(1), &new_client, "node 1 after a refused reload");
    c.must_put(1, "after-refused-reload", "yes");
    // The rotation finished: node 1 takes the new pair.
    let mark = LogMark::new(c.log_path(1));
    CertDir::issue(&c.certs.0, &["--nodes", "1", "--client", ""]);
    await_reloads(&[mark]);
    let issued = node1.chain()[0].as_ref().to_vec();
    assert!(
        presented_certificate(c.http_addr(1), new_client.rustls()) == issued,
        "node 1 presents its re-issued certificate"
    );
    c.assert_get(3, "after-refused-reload", Some(b"yes"));
}

/// Wrong things on the wire are refused with a clear message on both ends, and the node keeps
/// serving after each: a plaintext native client on a TLS raft port, a plaintext node
/// campaigning towards a TLS member, TLS clients (ctl, the native client) against a plaintext
/// node's two ports, and an expired client certificate from the cluster's own CA (on the client
/// port through ctl, on the raft port through the native client).
#[test]
fn expired_certificates_and_tls_plaintext_mixups_are_refused_clearly_and_survived() {
    let mut c = TlsCluster::start(1, &[]);
    c.must_put(1, "k", "v");
    let client = c.client();

    // A plaintext native client on the TLS raft port.
    let mark = LogMark::new(c.log_path(1));
    mark.await_line(&[&refused_on(RAFT_PORT), NOT_TLS], || {
        let plain = Client::new(vec![c.raft_addr(1).to_string()], REFUSED_NATIVE_TIMEOUT)
            .expect("a plaintext native client");
        let got = runtime().block_on(plain.get(b"k", Consistency::Linearizable));
        assert!(
            got.is_err(),
            "a plaintext native client on a TLS port read {got:?}"
        );
    });
    assert_native_reads(c.raft_addr(1), &client, "k", "v");

    // A plaintext node that lists the TLS member and itself, and campaigns towards it.
    let mark = LogMark::new(c.log_path(1));
    let plain_dir = c.scratch.path().join("plaintext");
    let (mut plain, plain_spec) = start_outsider(|| NodeSpec {
        data_dir: plain_dir.clone(),
        ..c.next_node_spec(Vec::new())
    });
    mark.await_line(&[&refused_on(RAFT_PORT), NOT_TLS], || {});
    // TLS clients against its plaintext ports.
    let plain_log = LogMark::new(plain_spec.log_path());
    plain_log.await_line(&[&refused_on(CLIENT_PORT), UNEXPECTED_TLS], || {
        fails(
            ctl(
                &plain_spec.http.to_string(),
                client.ctl_args(),
                &["get", "k"],
            ),
            "if it is a plaintext port, connect without --cacert/--cert",
            "ctl over TLS against a plaintext port",
        );
    });
    plain_log.await_line(&[&refused_on(RAFT_PORT), UNEXPECTED_TLS], || {
        assert_native_refused(
            plain_spec.raft_addr(),
            &client,
            "a TLS native client on a plaintext port",
        );
    });
    // Both nodes go on serving their own kind of client.
    assert!(plain.is_running(), "the plaintext node must keep running");
    // Plaintext on loopback reaches no one else: nothing to warn about.
    let warnings: Vec<String> = plain
        .stderr_lines()
        .iter()
        .map(|line| text(line))
        .filter(|line| line.contains("speaks plaintext"))
        .collect();
    assert!(
        warnings.is_empty(),
        "a plaintext node on 127.0.0.1 should not warn: {warnings:?}"
    );
    let url = format!("http://{}/v1/status", plain_spec.http);
    let status = common::http::http("GET", &url, b"");
    assert_eq!(status.status, 200, "plain status: {}", status.text());
    assert_eq!(ok(c.ctl(1, &["put", "k2", "v2"]), "ctl put"), "OK\n");
    assert_native_reads(c.raft_addr(1), &client, "k2", "v2");

    // An expired client certificate from the cluster's own CA.
    let expired_dir = c.scratch.path().join("expired");
    c.certs.copy_ca_to(&expired_dir);
    let expired = CertDir::issue(&expired_dir, &["--nodes", "9", "--days", "0"]).client();
    let check = client_certificate_check(&expired);
    assert!(
        matches!(
            check,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        ),
        "a certificate just made by `ctl certs --days 0` should have expired already, but \
         rustls's verifier (the nodes' own) answers {check:?}: a certificate's validity has whole \
         seconds, and one is accepted until its notAfter second has passed"
    );
    let mark = LogMark::new(c.log_path(1));
    mark.await_line(&[&refused_on(CLIENT_PORT), EXPIRED], || {
        fails(
            ctl(&c.endpoint(1), expired.ctl_args(), &["get", "k"]),
            "TLS handshake failed",
            "ctl with an expired client certificate",
        );
    });
    mark.await_line(&[&refused_on(RAFT_PORT), EXPIRED], || {
        assert_native_refused(c.raft_addr(1), &expired, "an expired native client");
    });
    assert_eq!(ok(c.ctl(1, &["get", "k2"]), "ctl get"), "v2");
    assert_native_reads(c.raft_addr(1), &client, "k", "v");
}

/// Failed handshakes each flood makes, and the threads making them.
const FLOOD: usize = 200;
const FLOOD_THREADS: usize = 8;

/// Tries a TLS handshake with `addr` with `config`; returns the connection's local address (the
/// node's log lines name it) and whether the node refused it: the handshake failed, or (TLS 1.3
/// lets the client finish first) the node then sent an alert or closed instead of waiting for a
/// request. A connection still open after [`REQUEST_TIMEOUT`] was accepted.
fn attempt_handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> (SocketAddr, bool) {
    let socket = connect(addr);
    let local = socket.local_addr().expect("a local address");
    let Ok(mut stream) = tls_handshake(socket, config) else {
        return (local, true);
    };
    let mut byte = [0u8; 1];
    let refused = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (local, refused)
}

/// Makes [`FLOOD`] connections to `addr` from [`FLOOD_THREADS`] threads, alternately a ClientHello
/// of garbage and a complete handshake with `impostor`'s certificate, and returns
/// how many of them the node refused.
fn flood(addr: SocketAddr, impostor: &Identity) -> usize {
    let config = impostor.rustls();
    let threads: Vec<JoinHandle<usize>> = (0..FLOOD_THREADS)
        .map(|t| {
            let config = config.clone();
            thread::spawn(move || {
                (0..FLOOD / FLOOD_THREADS)
                    .filter(|i| {
                        if (t + i) % 2 == 0 {
                            let garbage = garbage_client_hello((t * 1000 + i) as u64);
                            closed_by_node(&mut connect_and_send(addr, &garbage), REQUEST_TIMEOUT)
                        } else {
                            attempt_handshake(addr, config.clone()).1
                        }
                    })
                    .count()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a flood thread panicked"))
        .sum()
}

/// The N of a refusal line's `(N more refused since the last line)`; 0 without one.
fn more_refused(line: &str) -> usize {
    line.strip_suffix(MORE_REFUSED)
        .and_then(|head| head.rsplit_once('('))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// `identity`'s certificate followed by `fillers` unrelated self-signed certificates.
fn padded_chain(identity: &Identity, fillers: usize) -> Vec<CertificateDer<'static>> {
    let mut chain = identity.chain();
    for i in 0..fillers {
        let filler = rcgen::generate_simple_self_signed(vec![format!("filler-{i}.invalid")])
            .expect("a filler certificate");
        chain.push(filler.cert.der().clone());
    }
    chain
}

/// Asserts that the node serves TLS clients on both ports (HTTPS, and a native read).
fn assert_serves(c: &TlsCluster, client: &Identity, key: &str, value: &str, when: &str) {
    assert_https_served(c.http_addr(1), client, when);
    assert_native_reads(c.raft_addr(1), client, key, value);
}

/// Bad input on both TLS ports leaves the node serving TLS clients, and its log readable:
/// connections that send nothing or half a ClientHello hold up no one and are dropped once their
/// handshake time is up; garbage opening with a handshake byte, a ClientHello cut short, and a
/// client certificate chain far over a handshake message's 64 KiB are refused; and a flood of a
/// few hundred failed handshakes is refused in full while the log gets at most a line a second,
/// far fewer lines than refusals, with the rest counted.
#[test]
fn bad_input_on_both_tls_ports_is_refused_with_a_bounded_log_and_the_node_keeps_serving() {
    let mut c = TlsCluster::start(1, &[]);
    c.must_put(1, "k", "v");
    let client = c.client();
    let ports = [(RAFT_PORT, c.raft_addr(1)), (CLIENT_PORT, c.http_addr(1))];
    let hello = client_hello(client.rustls());

    // Stalled handshakes hold up no one, and are dropped when their time is up.
    let mark = LogMark::new(c.log_path(1));
    let mut stalled: Vec<(String, TcpStream)> = ports
        .iter()
        .flat_map(|&(port, addr)| {
            [
                (
                    format!("a silent connection to the {port}"),
                    connect_and_send(addr, b""),
                ),
                (
                    format!("half a ClientHello left open on the {port}"),
                    connect_and_send(addr, &hello[..hello.len() / 2]),
                ),
            ]
        })
        .collect();
    assert_serves(&c, &client, "k", "v", "while handshakes stall");
    for (what, stream) in &mut stalled {
        assert!(
            closed_by_node(stream, STALLED_CLOSE_TIMEOUT),
            "the node should drop {what} once its handshake time is up\n{}",
            c.diagnostics()
        );
    }
    for (port, _) in ports {
        mark.await_line(&[&refused_on(port), HANDSHAKE_TIME_UP], || {});
    }

    // Garbage, a ClientHello cut short, and a huge certificate chain.
    let mark = LogMark::new(c.log_path(1));
    let huge_chain = padded_chain(&client, 300);
    let huge_len: usize = huge_chain.iter().map(|cert| cert.len()).sum();
    assert!(huge_len > 64 * 1024, "the chain is only {huge_len} bytes");
    for (port, addr) in ports {
        let mut garbage = connect_and_send(addr, &garbage_client_hello(7));
        assert!(
            closed_by_node(&mut garbage, REQUEST_TIMEOUT),
            "the {port} should drop a ClientHello of garbage"
        );
        let mut truncated = connect_and_send(addr, &hello[..hello.len() / 3]);
        let _ = truncated.shutdown(Shutdown::Write);
        assert!(
            closed_by_node(&mut truncated, REQUEST_TIMEOUT),
            "the {port} should drop a ClientHello cut short"
        );
        let attempts = RefCell::new(Vec::new());
        let line = mark.await_line_where(
            &format!("the refusal of the huge chain on the {port}"),
            |line| {
                line.contains(&refused_on(port))
                    && attempts.borrow().iter().any(|from| line.contains(from))
            },
            || {
                let (local, refused) =
                    attempt_handshake(addr, client.rustls_with_chain(huge_chain.clone()));
                assert!(
                    refused,
                    "the {port} should refuse a chain of {} certificates ({huge_len} bytes)",
                    huge_chain.len()
                );
                attempts.borrow_mut().push(format!(" from {local}: "));
            },
        );
        assert!(line.contains("TLS handshake failed"), "{line}");
        assert_serves(
            &c,
            &client,
            "k",
            "v",
            &format!("after bad input on the {port}"),
        );
    }

    // Floods of failed handshakes: all refused, few lines, the rest counted.
    let impostor = c
        .foreign_certs(&["--nodes", "1"])
        .client()
        .trusting(&client.ca);
    for (port, addr) in ports {
        let started = Instant::now();
        let mark = LogMark::new(c.log_path(1));
        let refused = flood(addr, &impostor);
        assert_eq!(
            refused, FLOOD,
            "the {port} should refuse every failed handshake"
        );
        // A refusal a second or more after the flood's last line reports what it counted.
        let after = LogMark::new(c.log_path(1));
        after.await_line(&[&refused_on(port), MORE_REFUSED], || {
            let garbage = garbage_client_hello(8);
            closed_by_node(&mut connect_and_send(addr, &garbage), REQUEST_TIMEOUT);
        });
        let elapsed = started.elapsed();
        let lines = mark.lines_with(&[&refused_on(port)]);
        let accounted = mark.refusals(port);
        assert!(
            lines.len() * 10 <= FLOOD && lines.len() as u64 <= elapsed.as_secs() + 2,
            "{} refusal lines on the {port} in {elapsed:?} for {FLOOD} refused connections: at \
             most one a second was promised\n{}",
            lines.len(),
            lines.join("\n")
        );
        assert!(
            accounted + FLOOD_THREADS >= FLOOD,
            "the {port}'s log accounts for {accounted} of {FLOOD} refused connections\n{}",
            lines.join("\n")
        );
        assert_serves(
            &c,
            &client,
            "k",
            "v",
            &format!("after a flood on the {port}"),
        );
    }

    c.must_put(1, "k", "still served");
    assert_native_reads(c.raft_addr(1), &client, "k", "still served");
    assert!(
        !c.node(1).log_contents().contains("panicked"),
        "the node panicked\n{}",
        c.diagnostics()
    );
}
