//! Outgoing connections: one persistent TCP connection per peer address, shared by every caller.
//!
//! Each call registers its request id, queues its frame for the connection's writer task and waits
//! (with a deadline) for the reader task to route the matching answer back. When a connection
//! breaks, every call waiting on it fails at once and the next call reconnects, after a backoff
//! that grows while the peer stays unreachable.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::io::BufWriter;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::duplex::Duplex;
use super::wire::encode_frame;
use super::wire::read_frame;
use super::wire::RemoteError;
use super::wire::Request;
use super::wire::RequestFrame;
use super::wire::Response;
use super::wire::ResponseFrame;
use crate::locks::lock;
use crate::tls::Reloading;

/// First pause after a failed connect; doubles per failure up to [`MAX_BACKOFF`], which stays
/// short because openraft paces its own retries and a restarted peer should be reached at once.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// Frames queued for one connection's writer before callers wait.
const OUTGOING_QUEUE: usize = 1024;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or we are backing off after failed attempts). The request was
    /// never sent.
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The request was sent (or may have been) and no answer came in time.
    #[error("peer {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The connection broke after the request may have been sent.
    #[error("connection to {addr} was lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    /// The peer answered with a refusal.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl CallError {
    /// True when the request certainly did not reach the peer's Raft layer, so it is safe to
    /// retry even a non-idempotent request.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. }
                | CallError::Remote(RemoteError::NotLeader { .. })
                | CallError::Remote(RemoteError::Refused(_) | RemoteError::Busy(_))
        )
    }
}

/// What [`Peer::wait_reachable`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Reachable at once.
    Now,
    /// Unreachable at first; reachable after the peer said it had started.
    CameBack,
    /// Still unreachable when the wait ended.
    Unreachable,
}

/// How connections to peers are made secure: the TLS client configuration, kept current with
/// its certificate files, or none for plaintext.
pub type PeerTlsClient = Option<Arc<Reloading<ClientConfig>>>;

/// The registry of peer connections, keyed by address.
#[derive(Default)]
pub struct Peers {
    by_addr: Mutex<HashMap<String, Arc<Peer>>>,
    tls: PeerTlsClient,
}

impl Peers {
    /// Peers reached over TLS with `tls`, or in plaintext without.
    pub fn new(tls: PeerTlsClient) -> Peers {
        Peers {
            by_addr: Mutex::default(),
            tls,
        }
    }

    /// The peer at `addr`, created on first use. Connecting is lazy.
    pub fn get(&self, addr: &str) -> Arc<Peer> {
        let mut by_addr = lock(&self.by_addr);
        by_addr
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Peer::new(addr.to_string(), self.tls.clone())))
            .clone()
    }

    /// Forgets the failed attempts to reach `addr`, if any, so the next call connects at once:
    /// the peer has said it is back.
    pub async fn forget_failures(&self, addr: &str) {
        let peer = lock(&self.by_addr).get(addr).cloned();
        if let Some(peer) = peer {
            let mut state = peer.state.lock().await;
            state.failures = 0;
            state.retry_at = None;
            drop(state);
            peer.came_back.notify_waiters();
        }
    }

    /// Sends `request` to `addr` and waits up to `timeout` for the answer.
    pub async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        self.get(addr).call(request, timeout).await
    }
}

/// One remote node: its current connection, if any, and the reconnect backoff.
pub struct Peer {
    addr: String,
    tls: PeerTlsClient,
    state: tokio::sync::Mutex<PeerState>,
    /// Notified when the peer says it has started ([`Peers::forget_failures`]), which ends
    /// [`Peer::wait_reachable`]'s wait.
    came_back: tokio::sync::Notify,
}

#[derive(Default)]
struct PeerState {
    connection: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
    /// A TLS failure with this peer was logged and no connection to it has been answered since:
    /// more failures in a row are not logged again (openraft retries every few milliseconds,
    /// and a refused certificate does not fix itself).
    tls_failure_logged: bool,
}

/// A live connection: where to queue frames and who is waiting for which answer.
struct Connection {
    outgoing: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    /// How the connection ended, once it has: set by the reader before `closed`.
    ending: Arc<Mutex<Option<Ending>>>,
}

/// How a connection ended, as far as connecting again is concerned.
#[derive(Debug, Clone)]
enum Ending {
    /// It carried at least one answer: the peer accepts this node.
    Answered,
    /// The peer refused this node's certificate after the handshake seemed done (TLS 1.3 sends
    /// that verdict after the client's last handshake message), or the session broke: `reason`.
    TlsFailure(String),
    /// It closed or failed before any answer, for a reason other than TLS.
    Unanswered,
}

type Waiting = HashMap<u64, oneshot::Sender<Result<Response, RemoteError>>>;

impl Peer {
    fn new(addr: String, tls: PeerTlsClient) -> Self {
        Peer {
            addr,
            tls,
            state: tokio::sync::Mutex::default(),
            came_back: tokio::sync::Notify::new(),
        }
    }

    /// The address this peer is reached at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits until this peer can be reached, for at most `within`: answers at once when a
    /// connection is up or can be made, and otherwise tries again when the peer says it has
    /// started.
    pub async fn wait_reachable(&self, within: Duration) -> Reachability {
        let deadline = Instant::now() + within;
        let mut waited = false;
        loop {
            let came_back = self.came_back.notified();
            tokio::pin!(came_back);
            came_back.as_mut().enable();
            if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, self.connection()).await {
                return if waited {
                    Reachability::CameBack
                } else {
                    Reachability::Now
                };
            }
            if tokio::time::timeout_at(deadline, came_back).await.is_err() {
                return Reachability::Unreachable;
            }
            waited = true;
        }
    }

    /// Sends `request` and waits up to `timeout` (connecting included) for its answer.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, CallError> {
        let deadline = Instant::now() + timeout;
        let connection = tokio::time::timeout_at(deadline, self.connection())
            .await
            .map_err(|_| self.unreachable("connect timed out"))??;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&RequestFrame { id, request }).map_err(|e| {
            CallError::Remote(RemoteError::Refused(format!("cannot encode request: {e}")))
        })?;
        let (answer_tx, answer_rx) = oneshot::channel();
        lock(&connection.waiting).insert(id, answer_tx);
        if connection.outgoing.send(frame).await.is_err() {
            lock(&connection.waiting).remove(&id);
            return Err(self.unreachable("connection closed before sending"));
        }
        match tokio::time::timeout_at(deadline, answer_rx).await {
            Ok(Ok(answer)) => answer.map_err(CallError::Remote),
            Ok(Err(_)) => Err(CallError::ConnectionLost {
                addr: self.addr.clone(),
                reason: "connection closed while waiting for the answer".into(),
            }),
            Err(_) => {
                lock(&connection.waiting).remove(&id);
                Err(CallError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    fn unreachable(&self, reason: &str) -> CallError {
        CallError::Unreachable {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    /// The live connection, connecting if there is none and the backoff allows it.
    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = state.connection.take() {
            if !connection.closed.load(Ordering::Acquire) {
                state.connection = Some(connection.clone());
                return Ok(connection);
            }
            match connection.ending() {
                Some(Ending::Answered) => state.tls_failure_logged = false,
                Some(Ending::TlsFailure(reason)) => return Err(self.failed(&mut state, reason)),
                Some(Ending::Unanswered) | None => {}
            }
        }
        if let Some(retry_at) = state.retry_at {
            if Instant::now() < retry_at {
                return Err(self.unreachable("backing off after failed connection attempts"));
            }
        }
        match self.connect().await {
            Ok(connection) => {
                state.failures = 0;
                state.retry_at = None;
                let connection = Arc::new(connection);
                state.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(reason) => Err(self.failed(&mut state, reason)),
        }
    }

    /// Records a failed attempt to connect: the backoff grows, and a TLS failure is logged once
    /// per run of them.
    fn failed(&self, state: &mut PeerState, reason: String) -> CallError {
        if self.tls.is_some() && !state.tls_failure_logged {
            tracing::warn!("cannot connect to {}: {reason}", self.addr);
            state.tls_failure_logged = true;
        }
        state.failures = state.failures.saturating_add(1);
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << state.failures.min(8))
            .min(MAX_BACKOFF);
        state.retry_at = Some(Instant::now() + backoff);
        self.unreachable(&reason)
    }

    /// Opens a connection, with a TLS handshake when peers are reached over TLS.
    async fn connect(&self) -> Result<Connection, String> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        // Raft messages are small and latency-bound; Nagle's algorithm would only delay them.
        let _ = stream.set_nodelay(true);
        Ok(match &self.tls {
            Some(tls) => Connection::start(
                crate::tls::connect(tls, &self.addr, stream).await?,
                self.addr.clone(),
            ),
            None => Connection::start(stream, self.addr.clone()),
        })
    }
}

impl Connection {
    /// Splits the stream into a writer task (draining queued frames, flushing when the queue is
    /// empty, so bursts share syscalls) and a reader task (routing answers by id).
    fn start(stream: impl Duplex, addr: String) -> Self {
        let (read_half, write_half) = stream.into_halves();
        let (outgoing, mut queued) = mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        let writer_closed = closed.clone();
        let writer_addr = addr.clone();
        tokio::spawn(async move {
            let mut out = BufWriter::new(write_half);
            let result: io::Result<()> = async {
                while let Some(frame) = queued.recv().await {
                    out.write_all(&frame).await?;
                    while let Ok(frame) = queued.try_recv() {
                        out.write_all(&frame).await?;
                    }
                    out.flush().await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!("connection to {writer_addr} failed while writing: {e}");
            }
            writer_closed.store(true, Ordering::Release);
        });

        let reader_waiting = waiting.clone();
        let reader_closed = closed.clone();
        let ending: Arc<Mutex<Option<Ending>>> = Arc::default();
        let reader_ending = ending.clone();
        tokio::spawn(async move {
            let input = tokio::io::BufReader::new(read_half);
            let end = read_answers(input, &reader_waiting, &addr).await;
            *lock(&reader_ending) = Some(end);
            reader_closed.store(true, Ordering::Release);
        });

        Connection {
            outgoing,
            waiting,
            next_id: AtomicU64::new(1),
            closed,
            ending,
        }
    }

    fn ending(&self) -> Option<Ending> {
        lock(&self.ending).clone()
    }
}

/// Routes answers to the calls waiting for them until the connection ends, then fails the calls
/// still waiting: with the refusal when TLS failed (the request never reached the peer's
/// handler, so the caller may say so), with "connection lost" otherwise.
async fn read_answers(
    mut input: impl tokio::io::AsyncRead + Unpin,
    waiting: &Mutex<Waiting>,
    addr: &str,
) -> Ending {
    let mut answered = false;
    let ending = loop {
        match read_frame::<_, ResponseFrame>(&mut input).await {
            Ok(Some(frame)) => {
                answered = true;
                if let Some(waiter) = lock(waiting).remove(&frame.id) {
                    let _ = waiter.send(frame.response);
                }
            }
            Ok(None) => break None,
            // A TLS peer that stops (or is killed) closes without TLS's goodbye, which is no
            // more worth a warning than a plaintext connection closing.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!("connection to {addr} closed: {e}");
                break None;
            }
            // Logged by the peer's connection state, once per run of failures.
            Err(e) if crate::tls::is_handshake_failure(&e) => {
                break Some(format!("TLS handshake failed: {}", crate::tls::explain(&e)));
            }
            Err(e) => {
                tracing::warn!("closing connection to {addr}: {e}");
                break None;
            }
        }
    };
    let mut waiters = std::mem::take(&mut *lock(waiting));
    match ending {
        Some(reason) if !answered => {
            for (_, waiter) in waiters.drain() {
                let refusal = format!("{addr} refused this node: {reason}");
                let _ = waiter.send(Err(RemoteError::Refused(refusal)));
            }
            Ending::TlsFailure(reason)
        }
        // Dropping the senders wakes every waiting call with "connection lost".
        _ if answered => Ending::Answered,
        _ => Ending::Unanswered,
    }
}
