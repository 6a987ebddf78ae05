//! Shared harness for the `ondisk` integration tests.
//!
//! The tests drive real `ondisk` processes exactly the way an operator would:
//! they start one process per node, type REPL commands on its stdin, read its
//! stdout/stderr, and kill or restart processes to exercise crash recovery.
//!
//! Design rules followed throughout:
//! * Every wait is bounded by a deadline. When a deadline passes the harness
//!   panics with the recent output and log tail of the processes involved, so
//!   a failing test explains itself instead of hanging.
//! * Synchronisation is done by polling an observable condition (a REPL reply,
//!   a `status` field, a file's contents, a process's exit), never by sleeping
//!   for a guessed amount of time.
//! * Output is handled as raw bytes: values may contain non-UTF-8 bytes.
//!
//! Each test file includes this module with `mod common;`. Not every file uses
//! every helper, hence the `dead_code` allowance below.
#![allow(dead_code)]

pub mod http;
pub mod native;
pub mod power_cut;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of the binary under test; cargo builds it before integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ondisk");

/// The `--timeout` given to every node. Commands that cannot reach a quorum
/// are expected to fail after roughly this long.
pub const NODE_TIMEOUT: &str = "2s";
/// The `--heartbeat` given to every node (short, so tests run fast).
pub const NODE_HEARTBEAT: &str = "50ms";
/// The `--election-timeout` given to every node (short, so failover is fast).
pub const NODE_ELECTION_TIMEOUT: &str = "500ms";

/// How long one REPL command may take before the harness gives up. It is well
/// above the node's own 2 s request timeout so that the node's timeout error,
/// not the harness's, is what a test observes.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a freshly spawned process may take to print its addresses and
/// answer its first `status`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cluster may take to agree on a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after being told to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two polls of a condition. Short, so waits end promptly.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How many times `Cluster::start` tries fresh ports when a port it picked
/// was taken by someone else in the meantime.
const START_ATTEMPTS: usize = 5;
/// How many lines of each output stream and of the log file diagnostics show.
const TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports already handed out by this test process. Tests in one file run
/// concurrently; remembering the ports guarantees two of our own clusters
/// are never given the same port, even after the probe socket is released.
fn handed_out() -> MutexGuard<'static, HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    lock(PORTS.get_or_init(Default::default))
}

/// A currently free TCP port on 127.0.0.1.
///
/// Found by binding port 0 and releasing the socket, so another process can
/// still grab it before the node binds it; `Cluster::start` copes with that by
/// retrying with new ports when a node reports `already in use`.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if handed_out().insert(port) {
            return port;
        }
    }
}

/// A currently free `127.0.0.1:PORT` address (see [`free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, or until
/// `timeout` has passed (then `None`). The building block of every wait.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `cond` until it holds; panics mentioning `what` after `timeout`.
/// Use [`Cluster::wait_until`] instead when node diagnostics would help.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if poll_until(timeout, || cond().then_some(())).is_none() {
        panic!("timed out after {timeout:?} waiting until {what}");
    }
}

/// Locks a mutex even if a panicking thread poisoned it: the data guarded
/// here (output history, port set) stays meaningful after a panic, and the
/// diagnostics printed on failure need it most in exactly that case.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------

/// Lossy rendering of raw output bytes for messages and substring checks.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a finished helper process (ctl, etcdctl) succeeded, showing its output if not,
/// and returns its stdout.
pub fn succeeded(output: std::process::Output, what: &str) -> Vec<u8> {
    assert!(
        output.status.success(),
        "{what} failed ({}): stdout {:?} stderr {:?}",
        output.status,
        lossy(&output.stdout),
        lossy(&output.stderr)
    );
    output.stdout
}

/// The last `n` lines of `lines`, rendered one per line for diagnostics.
fn tail_lines(lines: &[Vec<u8>], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {}\n", printable(l)))
        .collect()
}

/// Renders a line for a failure message: lossy UTF-8 with control characters
/// escaped, so binary output cannot garble the terminal.
fn printable(line: &[u8]) -> String {
    lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Whether a stderr line is a command's answer (as opposed to usage text or
/// other chatter): per the contract, failures start with `error: ` and
/// unparsable lines with `invalid input`.
pub fn is_error_line(line: &[u8]) -> bool {
    line.starts_with(b"error:") || line.starts_with(b"invalid input")
}

/// Parses a `status: k=v k=v ...` line into a map; `None` if the line is not a
/// status line. Tokens without `=` are ignored.
pub fn parse_status(line: &[u8]) -> Option<HashMap<String, String>> {
    let rest = line.strip_prefix(b"status:")?;
    let text = lossy(rest);
    Some(
        text.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Reads a numeric status field; `None` for a missing field or `-`.
pub fn status_u64(status: &HashMap<String, String>, key: &str) -> Option<u64> {
    status.get(key)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Process output capture
// ---------------------------------------------------------------------------

/// Which output pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Output shared between a node's reader threads and the test thread: the
/// full history (for assertions and diagnostics) and how many pipes are still
/// open (to know when all output of a dead process has been collected).
struct Captured {
    history: Mutex<Vec<(Stream, Vec<u8>)>>,
    open_pipes: AtomicUsize,
}

/// Reads `pipe` line by line (raw bytes, newline removed) on a background
/// thread, so the child never blocks on a full pipe and the test can wait for
/// lines with a deadline.
fn spawn_reader(
    stream: Stream,
    pipe: impl Read + Send + 'static,
    captured: Arc<Captured>,
    tx: Sender<(Stream, Vec<u8>)>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    lock(&captured.history).push((stream, line.clone()));
                    // The receiver may be gone if the Node was dropped.
                    let _ = tx.send((stream, line));
                }
            }
        }
        captured.open_pipes.fetch_sub(1, Ordering::SeqCst);
    });
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// The answer to one REPL command: the next stdout line, or an `error:` /
/// `invalid input` line on stderr, whichever came first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Reply {
    /// The raw bytes of the reply line.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Reply::Stdout(b) | Reply::Stderr(b) => b,
        }
    }

    /// The reply line as (lossy) text, for messages and substring checks.
    pub fn text(&self) -> String {
        lossy(self.bytes())
    }

    /// Whether the reply is an error line on stderr.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Stderr(_))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Stdout(b) => write!(f, "stdout {:?}", lossy(b)),
            Reply::Stderr(b) => write!(f, "stderr {:?}", lossy(b)),
        }
    }
}

/// Why no reply arrived.
#[derive(Debug)]
enum WaitError {
    /// The deadline passed.
    Timeout,
    /// Both pipes closed: the process is gone.
    Closed,
}

// ---------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------

/// Everything needed to (re)start one cluster node with the same command
/// line: restarting with identical arguments is what a crash-recovery test
/// needs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id, 1-based, also its position in `cluster`.
    pub id: usize,
    /// Raft addresses of all initial members, in id order.
    pub cluster: Vec<SocketAddr>,
    /// HTTP address of this node.
    pub http: SocketAddr,
    /// Data directory; the node keeps its files under `data_dir/node<id>/`.
    pub data_dir: PathBuf,
    /// Additional arguments appended to the standard ones (a timing flag here replaces the
    /// standard one).
    pub extra_args: Vec<OsString>,
}

impl NodeSpec {
    /// This node's own raft address (entry `id` of `--cluster`).
    pub fn raft_addr(&self) -> SocketAddr {
        self.cluster[self.id - 1]
    }

    /// Where the node writes its log file.
    pub fn log_path(&self) -> PathBuf {
        node_log_path(&self.data_dir, self.id)
    }

    /// The full command line (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let cluster = self
            .cluster
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut args: Vec<OsString> = vec![
            "--nodeid".into(),
            self.id.to_string().into(),
            "--cluster".into(),
            cluster.into(),
            "--http".into(),
            self.http.to_string().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
        ];
        // A timing flag among the extra arguments replaces the standard one (clap refuses a flag
        // given twice).
        for flag_and_value in timing_args().chunks(2) {
            if !self.extra_args.iter().any(|arg| *arg == *flag_and_value[0]) {
                args.extend(flag_and_value.iter().map(OsString::from));
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The timing flags every test node gets: a short request timeout, heartbeat and election
/// timeout, so failures and failovers happen quickly.
pub fn timing_args() -> [&'static str; 6] {
    [
        "--timeout",
        NODE_TIMEOUT,
        "--heartbeat",
        NODE_HEARTBEAT,
        "--election-timeout",
        NODE_ELECTION_TIMEOUT,
    ]
}

/// Path of node `id`'s log file inside a data directory (per the contract:
/// `DIR/node<N>/ondisk.log`).
pub fn node_log_path(data_dir: &Path, id: usize) -> PathBuf {
    data_dir.join(format!("node{id}")).join("ondisk.log")
}

// ---------------------------------------------------------------------------
// Startup failure
// ---------------------------------------------------------------------------

/// A process that exited before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: Vec<Vec<u8>>,
    pub diagnostics: String,
}

impl StartFailure {
    /// Whether the failure was a port clash (`Address already in use`), which
    /// is worth retrying with other ports rather than failing the test.
    pub fn port_in_use(&self) -> bool {
        self.stderr
            .iter()
            .any(|l| lossy(l).to_lowercase().contains("in use"))
    }
}

/// A process that ran to completion: see [`run_to_exit`].
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: Vec<Vec<u8>>,
    pub stderr: Vec<Vec<u8>>,
}

impl Exited {
    /// All stderr lines as text, for messages.
    pub fn stderr_text(&self) -> String {
        tail_lines(&self.stderr, usize::MAX)
    }

    /// Asserts the startup-failure contract: exit status 1 and exactly one
    /// non-empty stderr line, which starts with `error: `. Returns that line.
    pub fn expect_single_error_line(&self) -> String {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit status 1, got {:?}; stderr:\n{}",
            self.status,
            self.stderr_text()
        );
        let lines: Vec<&Vec<u8>> = self.stderr.iter().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line, got:\n{}",
            self.stderr_text()
        );
        let line = lossy(lines[0]);
        assert!(
            line.starts_with("error: "),
            "the stderr line should start with `error: `: {line:?}"
        );
        line
    }
}

/// Runs the binary with `args` and waits (bounded) for it to exit, collecting
/// all its output. For startup-error tests, where the process must fail on its
/// own; panics with its output if it is still running after `timeout`.
pub fn run_to_exit(args: Vec<OsString>, timeout: Duration) -> Exited {
    let mut node = Node::launch_args(0, args, None);
    let status = node.wait_exit(timeout);
    node.wait_pipes_closed(Duration::from_secs(5));
    Exited {
        status,
        stdout: node.stdout_lines(),
        stderr: node.stderr_lines(),
    }
}

// ---------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------

/// One running (or exited) `ondisk` process with piped stdio.
///
/// Output is collected by background threads, so commands can wait for their
/// reply with a deadline. Dropping a `Node` SIGKILLs the process, so a failing
/// test never leaves processes behind.
pub struct Node {
    /// Node id (0 for processes started outside a cluster configuration).
    pub id: usize,
    /// The command line it was started with.
    pub args: Vec<OsString>,
    /// Its log file, when known.
    pub log_path: Option<PathBuf>,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<(Stream, Vec<u8>)>,
    captured: Arc<Captured>,
    exit_status: Option<ExitStatus>,
}

impl Node {
    /// Spawns a cluster node from its spec without waiting for readiness.
    pub fn launch(spec: &NodeSpec) -> Node {
        Node::launch_args(spec.id, spec.args(), Some(spec.log_path()))
    }

    /// Spawns a cluster node from its spec through a launcher command that
    /// execs its arguments, e.g. `ip netns exec NAME`, so the node runs in
    /// another network namespace. The launcher must exec (not fork), so the
    /// process signalled and killed is the node itself.
    pub fn launch_via(spec: &NodeSpec, launcher: &[OsString]) -> Node {
        let (program, prefix) = launcher.split_first().expect("a launcher command");
        let mut args = prefix.to_vec();
        args.push(BIN.into());
        args.extend(spec.args());
        Node::spawn(spec.id, program.clone(), args, Some(spec.log_path()))
    }

    /// Spawns the binary with arbitrary arguments (for startup-error tests).
    pub fn launch_args(id: usize, args: Vec<OsString>, log_path: Option<PathBuf>) -> Node {
        Node::spawn(id, BIN.into(), args, log_path)
    }

    /// Spawns `program args` with piped stdio and output capture.
    fn spawn(id: usize, program: OsString, args: Vec<OsString>, log_path: Option<PathBuf>) -> Node {
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program:?}: {e}"));
        let captured = Arc::new(Captured {
            history: Mutex::new(Vec::new()),
            open_pipes: AtomicUsize::new(2),
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(Stream::Stdout, stdout, captured.clone(), tx.clone());
        spawn_reader(Stream::Stderr, stderr, captured.clone(), tx);
        let stdin = child.stdin.take();
        Node {
            id,
            args,
            log_path,
            child,
            stdin,
            rx,
            captured,
            exit_status: None,
        }
    }

    /// Spawns a cluster node and waits until it is ready (see
    /// [`Node::wait_ready`]).
    pub fn start(spec: &NodeSpec) -> Result<Node, StartFailure> {
        let mut node = Node::launch(spec);
        node.wait_ready(STARTUP_TIMEOUT)?;
        Ok(node)
    }

    /// Waits until the process has printed `node address:` and answered a
    /// `status` command, which proves the REPL is reading stdin and drains
    /// the startup banner so later commands see only their own replies.
    /// Returns `Err` if the process exits first; panics after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            let printed_address = lock(&self.captured.history)
                .iter()
                .any(|(s, l)| *s == Stream::Stdout && l.starts_with(b"node address:"));
            if printed_address {
                break;
            }
            if self.try_exit_status().is_some() {
                return Err(self.start_failure());
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} did not print `node address:` within {timeout:?}\n{}",
                    self.id,
                    self.diagnostics()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
        if self.try_send(b"status").is_err() {
            return Err(self.start_failure());
        }
        match self.next_reply(deadline, &|r| {
            r.is_error() || r.bytes().starts_with(b"status:")
        }) {
            Ok(_) => Ok(()),
            Err(WaitError::Closed) => Err(self.start_failure()),
            Err(WaitError::Timeout) => {
                if self.try_exit_status().is_some() {
                    return Err(self.start_failure());
                }
                panic!(
                    "node {} did not answer `status` within {timeout:?} of starting\n{}",
                    self.id,
                    self.diagnostics()
                )
            }
        }
    }

    /// Collects what is known about a process that died during startup.
    fn start_failure(&mut self) -> StartFailure {
        let _ = self.wait_exit_opt(EXIT_TIMEOUT);
        self.wait_pipes_closed(Duration::from_secs(5));
        StartFailure {
            status: self.exit_status,
            stderr: self.stderr_lines(),
            diagnostics: self.diagnostics(),
        }
    }

    /// The OS process id (for `kill -STOP` and friends).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one REPL line (a newline is appended); errors if stdin is
    /// closed or the process is gone.
    pub fn try_send(&mut self, line: &[u8]) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin was closed"))?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        stdin.write_all(&buf)?;
        stdin.flush()
    }

    /// Writes one REPL line (a newline is appended); panics with diagnostics
    /// if the process cannot take input any more.
    pub fn send(&mut self, line: impl AsRef<[u8]>) {
        if let Err(e) = self.try_send(line.as_ref()) {
            panic!(
                "cannot write {:?} to node {}: {e}\n{}",
                lossy(line.as_ref()),
                self.id,
                self.diagnostics()
            );
        }
    }

    /// Closes stdin, so the REPL sees end of file.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether stdin is still open (commands can be sent).
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Discards output lines that arrived before a command is sent (startup
    /// banner, usage text), so that the next line is the command's own reply.
    /// They remain in the history used by assertions and diagnostics.
    fn drain_pending(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The next output line, from either stream, if one arrives before `deadline`.
    fn recv_before(&self, deadline: Instant) -> Result<(Stream, Vec<u8>), RecvTimeoutError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(RecvTimeoutError::Timeout);
        }
        self.rx.recv_timeout(deadline - now)
    }

    /// Waits for the next reply accepted by `accept`. Stdout lines are always
    /// candidate replies; stderr lines only if they are [`is_error_line`].
    fn next_reply(
        &mut self,
        deadline: Instant,
        accept: &dyn Fn(&Reply) -> bool,
    ) -> Result<Reply, WaitError> {
        loop {
            match self.recv_before(deadline) {
                Ok((Stream::Stdout, line)) => {
                    let reply = Reply::Stdout(line);
                    if accept(&reply) {
                        return Ok(reply);
                    }
                }
                Ok((Stream::Stderr, line)) => {
                    if is_error_line(&line) {
                        let reply = Reply::Stderr(line);
                        if accept(&reply) {
                            return Ok(reply);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(WaitError::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(WaitError::Closed),
            }
        }
    }

    /// Sends one REPL line and returns its reply, waiting at most
    /// [`COMMAND_TIMEOUT`].
    pub fn command(&mut self, line: impl AsRef<[u8]>) -> Reply {
        self.command_within(line, COMMAND_TIMEOUT)
    }

    /// Sends one REPL line and returns its reply: the next stdout line, or
    /// the next `error:`/`invalid input` line on stderr. Panics with
    /// diagnostics if nothing arrives within `timeout` or the process dies.
    pub fn command_within(&mut self, line: impl AsRef<[u8]>, timeout: Duration) -> Reply {
        let line = line.as_ref();
        self.drain_pending();
        self.send(line);
        let deadline = Instant::now() + timeout;
        match self.next_reply(deadline, &|_| true) {
            Ok(reply) => reply,
            Err(e) => {
                let _ = self.try_exit_status();
                panic!(
                    "no reply from node {} to {:?} ({e:?} after {timeout:?})\n{}",
                    self.id,
                    lossy(line),
                    self.diagnostics()
                )
            }
        }
    }

    /// Consumes any remaining output of earlier commands (e.g. multi-line
    /// `help` text) by sending `status` and skipping lines up to its answer.
    pub fn sync(&mut self) {
        self.drain_pending();
        self.send(b"status");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        if let Err(e) = self.next_reply(deadline, &|r| {
            r.is_error() || r.bytes().starts_with(b"status:")
        }) {
            panic!(
                "node {} did not answer `status` while syncing ({e:?})\n{}",
                self.id,
                self.diagnostics()
            );
        }
    }

    /// `put KEY VALUE`: `Ok` on `OK`, else the reply text (normally the
    /// node's `error: ...` line).
    pub fn put(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        let mut line = format!("put {key} ").into_bytes();
        line.extend_from_slice(value.as_ref());
        match self.command(&line) {
            Reply::Stdout(l) if l == b"OK" => Ok(()),
            other => Err(other.text()),
        }
    }

    /// `delete KEY`: `Ok` on `OK`, else the reply text.
    pub fn delete(&mut self, key: &str) -> Result<(), String> {
        match self.command(format!("delete {key}")) {
            Reply::Stdout(l) if l == b"OK" => Ok(()),
            other => Err(other.text()),
        }
    }

    /// `get KEY`: `Ok(Some(value))` for `query key: KEY, result: VALUE`,
    /// `Ok(None)` for `query key: KEY, not found`, else `Err(reply text)`.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let reply = self.command(format!("get {key}"));
        let found = format!("query key: {key}, result: ");
        let missing = format!("query key: {key}, not found");
        match &reply {
            Reply::Stdout(l) if l.starts_with(found.as_bytes()) => {
                Ok(Some(l[found.len()..].to_vec()))
            }
            Reply::Stdout(l) if l == missing.as_bytes() => Ok(None),
            other => Err(other.text()),
        }
    }

    /// `status` parsed into key/value pairs, or the reply text if the reply
    /// was not a status line.
    pub fn try_status(&mut self) -> Result<HashMap<String, String>, String> {
        let reply = self.command(b"status");
        match &reply {
            Reply::Stdout(l) => parse_status(l).ok_or_else(|| reply.text()),
            Reply::Stderr(_) => Err(reply.text()),
        }
    }

    /// `status` parsed into key/value pairs; panics with diagnostics if the
    /// node does not answer with a status line.
    pub fn status(&mut self) -> HashMap<String, String> {
        match self.try_status() {
            Ok(s) => s,
            Err(e) => panic!(
                "node {} answered `status` with {e:?}\n{}",
                self.id,
                self.diagnostics()
            ),
        }
    }

    /// The exit status if the process has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit_status = Some(status);
            }
        }
        self.exit_status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Polls for the process's exit; `None` if still running after `timeout`.
    pub fn wait_exit_opt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_exit_status())
    }

    /// Waits for the process to exit; panics with diagnostics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_opt(timeout) {
            Some(status) => status,
            None => panic!(
                "node {} (pid {}) still running {timeout:?} after it should have exited\n{}",
                self.id,
                self.pid(),
                self.diagnostics()
            ),
        }
    }

    /// Waits (bounded) until both output pipes are closed, i.e. all output of
    /// an exited process has been captured.
    pub fn wait_pipes_closed(&self, timeout: Duration) {
        let _ = poll_until(timeout, || {
            (self.captured.open_pipes.load(Ordering::SeqCst) == 0).then_some(())
        });
    }

    /// SIGKILLs the process (no chance to clean up, like a crash or power
    /// loss of the process) and waits for it to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`, ...) using the
    /// `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run the kill command");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGTERM: asks the node to shut down cleanly.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Every output line so far, in arrival order, tagged with its stream.
    pub fn output(&self) -> Vec<(Stream, Vec<u8>)> {
        lock(&self.captured.history).clone()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<Vec<u8>> {
        self.lines_of(Stream::Stdout)
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<Vec<u8>> {
        self.lines_of(Stream::Stderr)
    }

    fn lines_of(&self, stream: Stream) -> Vec<Vec<u8>> {
        lock(&self.captured.history)
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The node's log file as text (lossy); empty if it does not exist yet.
    pub fn log_contents(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| fs::read(p).ok())
            .map(|b| lossy(&b))
            .unwrap_or_default()
    }

    /// A readable account of the process for failure messages: pid, exit
    /// status, and the tails of stdout, stderr and the log file.
    pub fn diagnostics(&self) -> String {
        let stdout = self.stdout_lines();
        let stderr = self.stderr_lines();
        let log = self.log_contents();
        let log_lines: Vec<Vec<u8>> = log.lines().map(|l| l.as_bytes().to_vec()).collect();
        format!(
            "--- node {} (pid {}, exit status {:?})\n  stdout (last {TAIL_LINES} lines):\n{}  stderr (last {TAIL_LINES} lines):\n{}  log {:?} (last {TAIL_LINES} lines):\n{}",
            self.id,
            self.child.id(),
            self.exit_status,
            tail_lines(&stdout, TAIL_LINES),
            tail_lines(&stderr, TAIL_LINES),
            self.log_path,
            tail_lines(&log_lines, TAIL_LINES),
        )
    }
}

impl Drop for Node {
    /// Never leave a process behind, whatever happened in the test.
    fn drop(&mut self) {
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// Makes `dir` an empty directory, keeping the directory itself (it may be a mount point).
fn empty_dir(dir: &Path) {
    fs::create_dir_all(dir).expect("create data directory");
    for entry in fs::read_dir(dir).expect("list data directory") {
        let path = entry.expect("list data directory").path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.unwrap_or_else(|e| panic!("clear {} for a retry: {e}", path.display()));
    }
}

/// A cluster of `ondisk` processes sharing one temporary data directory.
///
/// Nodes are addressed by their node id, 1-based, as on the command line.
/// Dropping the cluster kills every process it started and removes the
/// temporary directory.
pub struct Cluster {
    specs: Vec<NodeSpec>,
    // Declared before `root` so processes die before their directory goes.
    nodes: Vec<Node>,
    root: TempDir,
}

impl Cluster {
    /// Starts a 3-node cluster (the usual case).
    pub fn start3() -> Cluster {
        Cluster::start(3)
    }

    /// Starts `n` nodes and waits until each answers `status`; it does not
    /// wait for a leader (see [`Cluster::wait_for_leader`]). If a node fails
    /// because a port was taken meanwhile, the whole cluster is retried with
    /// fresh ports and an empty data directory.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with_args(n, &[])
    }

    /// [`Cluster::start`] with `extra_args` given to every node (e.g. snapshot settings).
    pub fn start_with_args(n: usize, extra_args: &[&str]) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("ondisk-test-")
            .tempdir()
            .expect("create temporary directory");
        let data_dir = root.path().join("data");
        Cluster::start_in(root, vec![data_dir; n], extra_args)
    }

    /// Starts one node per entry of `data_dirs`, node `i` with `--data-dir data_dirs[i - 1]`
    /// (e.g. each on its own power-cut fixture), owning `root` as its scratch directory.
    pub fn start_in(root: TempDir, data_dirs: Vec<PathBuf>, extra_args: &[&str]) -> Cluster {
        let n = data_dirs.len();
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            for dir in &data_dirs {
                empty_dir(dir);
            }
            let cluster_addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
            let specs: Vec<NodeSpec> = (1..=n)
                .map(|id| NodeSpec {
                    id,
                    cluster: cluster_addrs.clone(),
                    http: free_addr(),
                    data_dir: data_dirs[id - 1].clone(),
                    extra_args: extra_args.iter().map(OsString::from).collect(),
                })
                .collect();
            // Spawn all first so they boot in parallel, then wait for each.
            let mut nodes: Vec<Node> = specs.iter().map(Node::launch).collect();
            let mut failure = None;
            for node in nodes.iter_mut() {
                if let Err(f) = node.wait_ready(STARTUP_TIMEOUT) {
                    failure = Some(f);
                    break;
                }
            }
            match failure {
                None => {
                    return Cluster { specs, nodes, root };
                }
                Some(f) if f.port_in_use() => {
                    last_failure = f.diagnostics;
                    drop(nodes);
                    eprintln!(
                        "cluster start attempt {attempt}: port clash, retrying with new ports"
                    );
                }
                Some(f) => {
                    let others: String = nodes.iter().map(|n| n.diagnostics()).collect();
                    panic!(
                        "cluster node failed to start (exit status {:?})\n{}\n{others}",
                        f.status, f.diagnostics
                    );
                }
            }
        }
        panic!("could not start a cluster after {START_ATTEMPTS} attempts (ports kept clashing); last failure:\n{last_failure}");
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.specs.len()
    }

    /// All node ids, `1..=size`.
    pub fn ids(&self) -> Vec<usize> {
        (1..=self.size()).collect()
    }

    /// The shared data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.specs[0].data_dir.clone()
    }

    /// The temporary directory owned by the cluster (for scratch files).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Node `id`'s configuration (command line, addresses).
    pub fn spec(&self, id: usize) -> &NodeSpec {
        &self.specs[id - 1]
    }

    /// Node `id`'s configuration, to change before [`Cluster::restart`] (e.g. its timing flags).
    pub fn spec_mut(&mut self, id: usize) -> &mut NodeSpec {
        &mut self.specs[id - 1]
    }

    /// Node `id`'s raft address.
    pub fn raft_addr(&self, id: usize) -> SocketAddr {
        self.spec(id).raft_addr()
    }

    /// Node `id`'s HTTP address.
    pub fn http_addr(&self, id: usize) -> SocketAddr {
        self.spec(id).http
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: usize) -> PathBuf {
        self.spec(id).log_path()
    }

    /// The process of node `id` (the latest one, if it was restarted).
    pub fn node(&mut self, id: usize) -> &mut Node {
        assert!(
            (1..=self.size()).contains(&id),
            "no node {id} in a {}-node cluster",
            self.size()
        );
        &mut self.nodes[id - 1]
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&mut self, id: usize) -> bool {
        self.node(id).is_running()
    }

    /// Ids of nodes whose process is running.
    pub fn running_ids(&mut self) -> Vec<usize> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_running(id))
            .collect()
    }

    /// Ids of running nodes that still accept REPL commands.
    pub fn interactive_ids(&mut self) -> Vec<usize> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_running(id) && self.node(id).has_stdin())
            .collect()
    }

    /// SIGKILLs node `id` and waits for the process to be gone. Its data stays
    /// on disk for [`Cluster::restart`].
    pub fn kill(&mut self, id: usize) -> ExitStatus {
        self.node(id).kill()
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }

    /// Starts node `id` again with the same command line and waits until it
    /// answers `status`. The previous process must be gone. A port clash
    /// (someone took the port meanwhile) is retried briefly.
    pub fn restart(&mut self, id: usize) {
        self.restart_in_background(id);
        self.await_restarted(id);
    }

    /// Launches node `id` again with the same command line without waiting for it, for tests
    /// that must act while it boots; [`Cluster::await_restarted`] then waits for it.
    pub fn restart_in_background(&mut self, id: usize) {
        assert!(
            !self.is_running(id),
            "restart({id}) while node {id} is still running"
        );
        let spec = self.spec(id).clone();
        self.nodes[id - 1] = Node::launch(&spec);
    }

    /// Waits for a freshly launched node `id`, relaunching it on port clashes.
    pub fn await_restarted(&mut self, id: usize) {
        let spec = self.spec(id).clone();
        for attempt in 1..=START_ATTEMPTS {
            match self.nodes[id - 1].wait_ready(STARTUP_TIMEOUT) {
                Ok(()) => return,
                Err(f) if f.port_in_use() && attempt < START_ATTEMPTS => {
                    eprintln!("restart of node {id}: port clash (attempt {attempt}), retrying");
                    // Give whoever holds the port a moment before relaunching.
                    thread::sleep(Duration::from_millis(200));
                    self.nodes[id - 1] = Node::launch(&spec);
                }
                Err(f) => panic!(
                    "node {id} failed to restart (exit status {:?})\n{}",
                    f.status, f.diagnostics
                ),
            }
        }
    }

    /// Restarts every node that is not running, booting them in parallel.
    pub fn restart_all(&mut self) {
        let down: Vec<usize> = self
            .ids()
            .into_iter()
            .filter(|&id| !self.is_running(id))
            .collect();
        for &id in &down {
            let spec = self.spec(id).clone();
            self.nodes[id - 1] = Node::launch(&spec);
        }
        for &id in &down {
            self.await_restarted(id);
        }
    }

    /// One round of `status` on every interactive node: `Some(leader id)` if
    /// they all name the same leader, that leader is running, and (if it can
    /// be asked) it reports `state=Leader` itself; otherwise `None`.
    pub fn leader_index(&mut self) -> Option<usize> {
        let ids = self.interactive_ids();
        if ids.is_empty() {
            return None;
        }
        let mut agreed: Option<usize> = None;
        let mut states: HashMap<usize, String> = HashMap::new();
        for id in ids {
            let status = self.node(id).try_status().ok()?;
            let leader: usize = status.get("leader")?.parse().ok()?;
            if agreed.is_some_and(|a| a != leader) {
                return None;
            }
            agreed = Some(leader);
            states.insert(id, status.get("state").cloned().unwrap_or_default());
        }
        let leader = agreed?;
        if !(1..=self.size()).contains(&leader) || !self.is_running(leader) {
            return None;
        }
        match states.get(&leader) {
            Some(state) if state != "Leader" => None,
            _ => Some(leader),
        }
    }

    /// Polls until the running nodes agree on a leader (see
    /// [`Cluster::leader_index`]) and returns its id; panics after
    /// [`LEADER_TIMEOUT`].
    pub fn wait_for_leader(&mut self) -> usize {
        self.wait_for_leader_within(LEADER_TIMEOUT)
    }

    /// [`Cluster::wait_for_leader`] with an explicit timeout.
    pub fn wait_for_leader_within(&mut self, timeout: Duration) -> usize {
        match poll_until(timeout, || self.leader_index()) {
            Some(leader) => leader,
            None => {
                let statuses: String = self
                    .interactive_ids()
                    .into_iter()
                    .map(|id| format!("  node {id}: {:?}\n", self.node(id).try_status()))
                    .collect();
                panic!(
                    "nodes did not agree on a leader within {timeout:?}\n{statuses}{}",
                    self.diagnostics()
                )
            }
        }
    }

    /// Ids of the running nodes other than `leader`.
    pub fn followers(&mut self, leader: usize) -> Vec<usize> {
        self.running_ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect()
    }

    /// Polls `cond` (which may run commands on the cluster) until it holds;
    /// panics after `timeout` mentioning `what`, with every node's diagnostics.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&mut Cluster) -> bool,
    ) {
        if poll_until(timeout, || cond(self).then_some(())).is_none() {
            panic!(
                "timed out after {timeout:?} waiting until {what}\n{}",
                self.diagnostics()
            );
        }
    }

    /// Asserts that `get key` on node `id` returns exactly `expected`
    /// (`None` = not found), with diagnostics on mismatch or error.
    pub fn assert_get(&mut self, id: usize, key: &str, expected: Option<&[u8]>) {
        let got = self.node(id).get(key);
        if !matches!(&got, Ok(value) if value.as_deref() == expected) {
            panic!(
                "get {key:?} on node {id}: expected {:?}, got {:?}\n{}",
                expected.map(lossy),
                got.map(|v| v.map(|v| lossy(&v))),
                self.diagnostics()
            );
        }
    }

    /// Puts `key` through node `id`, panicking with diagnostics on failure.
    pub fn must_put(&mut self, id: usize, key: &str, value: impl AsRef<[u8]>) {
        if let Err(e) = self.node(id).put(key, value.as_ref()) {
            panic!(
                "put {key:?} on node {id} failed: {e}\n{}",
                self.diagnostics()
            );
        }
    }

    /// Every node's diagnostics, for failure messages.
    pub fn diagnostics(&self) -> String {
        self.nodes.iter().map(|n| n.diagnostics()).collect()
    }
}

// ---------------------------------------------------------------------------
// Growing a cluster; replies on either stream; multi-line replies
// ---------------------------------------------------------------------------

impl Cluster {
    /// The configuration of a node that would join as id `size() + 1`: fresh raft and HTTP
    /// ports, the shared data directory, `--cluster` listing every node's raft address followed
    /// by its own, and `extra_args` (typically `--join`). Nothing is started.
    pub fn next_node_spec(&self, extra_args: Vec<OsString>) -> NodeSpec {
        let last = self.specs.last().expect("a cluster has at least one node");
        let mut cluster = last.cluster.clone();
        cluster.push(free_addr());
        NodeSpec {
            id: self.size() + 1,
            cluster,
            http: free_addr(),
            data_dir: last.data_dir.clone(),
            extra_args,
        }
    }

    /// Launches `spec` (from [`Cluster::next_node_spec`]) as a further node of this cluster and
    /// waits until it answers `status`. From then on it is addressed by its id like the others
    /// (`node`, `kill`, `restart`, diagnostics). Panics with diagnostics if it does not start.
    pub fn launch_node(&mut self, spec: NodeSpec) -> usize {
        assert_eq!(
            spec.id,
            self.size() + 1,
            "a new node must take the next id ({})",
            self.size() + 1
        );
        let id = spec.id;
        let mut node = Node::launch(&spec);
        self.specs.push(spec);
        let started = node.wait_ready(STARTUP_TIMEOUT);
        self.nodes.push(node);
        if let Err(f) = started {
            panic!(
                "node {id} failed to start (exit status {:?})\n{}",
                f.status,
                self.diagnostics()
            );
        }
        id
    }

    /// Replaces the extra arguments node `id` is started with; they take effect at its next
    /// (re)start.
    pub fn set_extra_args(&mut self, id: usize, extra_args: Vec<OsString>) {
        self.specs[id - 1].extra_args = extra_args;
    }
}

impl Node {
    /// Sends one REPL line and returns the first output line, from either stream, that `accept`
    /// takes (unlike [`Node::command`], any stderr line can be the answer). Panics with
    /// diagnostics if none arrives within `timeout` or the process's output ends.
    pub fn command_until(
        &mut self,
        line: impl AsRef<[u8]>,
        timeout: Duration,
        accept: impl Fn(Stream, &[u8]) -> bool,
    ) -> (Stream, Vec<u8>) {
        let line = line.as_ref();
        self.drain_pending();
        self.send(line);
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_before(deadline) {
                Ok((stream, l)) if accept(stream, &l) => return (stream, l),
                Ok(_) => {}
                Err(e) => {
                    let _ = self.try_exit_status();
                    panic!(
                        "no accepted reply from node {} to {:?} ({e:?} after {timeout:?})\n{}",
                        self.id,
                        lossy(line),
                        self.diagnostics()
                    )
                }
            }
        }
    }

    /// Sends one REPL line followed by `status`, and returns every stdout line printed before
    /// the `status:` answer: the whole answer of a multi-line command such as `members`.
    pub fn command_stdout_lines(&mut self, line: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        let line = line.as_ref();
        self.drain_pending();
        self.send(line);
        self.send(b"status");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            match self.recv_before(deadline) {
                Ok((Stream::Stdout, l)) if l.starts_with(b"status:") => return lines,
                Ok((Stream::Stdout, l)) => lines.push(l),
                Ok((Stream::Stderr, _)) => {}
                Err(e) => {
                    let _ = self.try_exit_status();
                    panic!(
                        "node {} did not finish answering {:?} ({e:?} after {COMMAND_TIMEOUT:?})\n{}",
                        self.id,
                        lossy(line),
                        self.diagnostics()
                    )
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Small disks
// ---------------------------------------------------------------------------

/// A size-limited tmpfs mounted on a directory, for tests of a disk that fills up. Unmounted on
/// drop, also on panic; lazily, so it goes even while a node still has files open on it.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `64m`) on the existing
    /// directory `path`. `Err` with the reason when this machine does not let us mount (mounting
    /// needs root): the caller then skips its test, saying so.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(lossy(&output.stderr));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the size limit in place; the files on it stay.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "resizing the tmpfs on {:?} failed",
            self.path
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---------------------------------------------------------------------------
// Nodes with command lines of their own
// ---------------------------------------------------------------------------

impl Cluster {
    /// Starts one node per spec (ids `1..=specs.len()`, in order), each with its own command line
    /// (e.g. its own certificate files), owning `root` as its scratch directory, and waits until
    /// each answers `status`; it does not wait for a leader. `Err` with the first node that
    /// failed to start (the others are killed); the caller may retry with fresh ports when that
    /// failure is [`StartFailure::port_in_use`].
    pub fn start_specs(root: TempDir, specs: Vec<NodeSpec>) -> Result<Cluster, StartFailure> {
        let mut nodes: Vec<Node> = specs.iter().map(Node::launch).collect();
        for node in nodes.iter_mut() {
            node.wait_ready(STARTUP_TIMEOUT)?;
        }
        Ok(Cluster { specs, nodes, root })
    }
}
