//! Incoming connections: decode request frames, serve each request on its own task, and write the
//! answers back in whatever order they finish.
//!
//! A frame that cannot be decoded closes that one connection with a logged error. Nothing a peer
//! sends can take the node down, nor make it hold more than a bounded number of requests and
//! bytes per connection: past those bounds the connection is simply not read until answers drain,
//! so a client that floods requests (or never reads its answers) waits in TCP, not in memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use super::duplex::Duplex;
use super::wire::encode_frame;
use super::wire::read_frame_body;
use super::wire::read_frame_len;
use super::wire::RemoteError;
use super::wire::Request;
use super::wire::RequestFrame;
use super::wire::Response;
use super::wire::ResponseFrame;
use crate::tls::PeerTls;
use crate::tls::Refusal;
use crate::tls::RefusalLog;

/// Requests one connection may have in progress, from reading to writing the answer, before its
/// reader pauses. As many as the benchmark's most concurrent clients keep on one connection, so
/// only a flood waits; it also bounds the answers held (at most this many, each at most about one
/// value of `-max-request-bytes`).
const MAX_REQUESTS_IN_FLIGHT: usize = 256;
/// Bytes of requests read and not yet served, per connection: room for many replication batches
/// and client values at once, while a flood of large frames waits in TCP. A frame larger than this
/// takes the whole budget and is served alone.
const MAX_REQUEST_BYTES_IN_FLIGHT: u32 = 64 << 20;

/// What serves requests arriving from peers; implemented by the node host.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, RemoteError>> + Send;
}

/// Refused raft-port connections, logged at most once a second.
static REFUSALS: RefusalLog = RefusalLog::new("raft port");

/// Accepts peer connections on `listener` until the task is dropped; with `tls`, only those
/// that complete a handshake with a certificate the peer CA signed.
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<Arc<PeerTls>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // Raft messages are small and latency-bound; Nagle's algorithm would only
                    // delay them.
                    let _ = stream.set_nodelay(true);
                    let served = match tls {
                        Some(tls) => match crate::tls::accept(&tls.server, stream).await {
                            Ok(stream) => serve_connection(stream, handler).await,
                            Err((why, stream)) => return refuse(peer, why, stream).await,
                        },
                        None => match crate::tls::check_plaintext(stream).await {
                            Ok(stream) => serve_connection(stream, handler).await,
                            Err((why, stream)) => return refuse(peer, why, stream).await,
                        },
                    };
                    match served {
                        // A TLS peer that stops closes without TLS's goodbye: no warning, as
                        // for a plaintext connection that closes.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            tracing::debug!("raft connection from {peer} closed: {e}")
                        }
                        Err(e) => tracing::warn!("closing raft connection from {peer}: {e}"),
                        Ok(()) => {}
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE: keep serving the connections we have and try again.
                tracing::warn!("accepting a raft connection failed: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Logs a refused connection, and answers a plaintext request on the TLS port with the reason.
async fn refuse(peer: SocketAddr, why: Refusal, stream: Option<TcpStream>) {
    REFUSALS.refused(peer, &why);
    match stream {
        Some(stream) if matches!(why, Refusal::NotTls) => refuse_plaintext_request(stream).await,
        Some(stream) => crate::tls::close_gently(stream).await,
        None => {}
    }
}

/// The answer to a request sent in plaintext to a TLS raft port.
const PLAINTEXT_REFUSAL: &str = "this raft port speaks TLS: start the node with -peer-cert-file, \
    -peer-key-file and -peer-trusted-ca-file (a native client needs a certificate from the peer CA)";
/// The largest plaintext request answered with [`PLAINTEXT_REFUSAL`]; a larger one is not read.
const PLAINTEXT_REQUEST_READ_LIMIT: u32 = 64 << 10;

/// Answers the first request of a plaintext connection to a TLS raft port with a refusal that
/// says why, so a node or native client without TLS settings reports the cause instead of a
/// lost connection; then closes it.
async fn refuse_plaintext_request(mut stream: TcpStream) {
    let answered = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, async {
        let len = read_frame_len(&mut stream).await.ok().flatten()?;
        if len > PLAINTEXT_REQUEST_READ_LIMIT {
            return None;
        }
        let RequestFrame { id, .. } = read_frame_body(&mut stream, len).await.ok()?;
        let refusal = ResponseFrame {
            id,
            response: Err(RemoteError::Refused(PLAINTEXT_REFUSAL.into())),
        };
        stream.write_all(&encode_frame(&refusal).ok()?).await.ok()
    })
    .await;
    if answered.is_err() {
        tracing::debug!("a plaintext connection to the TLS raft port sent no request in time");
    }
    crate::tls::close_gently(stream).await;
}

/// Serves one connection: reads requests while the connection is within its bounds, serves each
/// on its own task (a slow one never holds up the others), and writes answers as they finish.
async fn serve_connection<H: RpcHandler>(
    stream: impl Duplex,
    handler: Arc<H>,
) -> std::io::Result<()> {
    let (read_half, write_half) = stream.into_halves();
    // Each answer travels with its request's permit, released once the writer has handed the
    // answer to the socket: a client that does not read its answers stops its own requests.
    let (answers, mut to_write) =
        mpsc::channel::<(Vec<u8>, OwnedSemaphorePermit)>(MAX_REQUESTS_IN_FLIGHT);
    let in_flight = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let request_bytes = Arc::new(Semaphore::new(MAX_REQUEST_BYTES_IN_FLIGHT as usize));

    let writer = tokio::spawn(async move {
        let mut out = BufWriter::new(write_half);
        while let Some((frame, _in_flight)) = to_write.recv().await {
            out.write_all(&frame).await?;
            while let Ok((frame, _in_flight)) = to_write.try_recv() {
                out.write_all(&frame).await?;
            }
            out.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });

    let mut input = tokio::io::BufReader::new(read_half);
    let result = loop {
        // Nothing more is read while the connection is at its bounds.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
        };
        let len = match read_frame_len(&mut input).await {
            Ok(Some(len)) => len,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let reserved = len.min(MAX_REQUEST_BYTES_IN_FLIGHT);
        let Ok(unserved) = request_bytes.clone().acquire_many_owned(reserved).await else {
            break Ok(());
        };
        let RequestFrame { id, request } = match read_frame_body(&mut input, len).await {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        let handler = handler.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            // Boxed: the handler's future is several KiB (it can await any request kind), and
            // a task holding it inline is copied whole when spawned and when first polled.
            let response = Box::pin(handler.handle(request)).await;
            drop(unserved);
            match encode_frame(&ResponseFrame { id, response }) {
                Ok(frame) => {
                    let _ = answers.send((frame, permit)).await;
                }
                Err(e) => tracing::error!("cannot encode the answer to request {id}: {e}"),
            }
        });
    };
    drop(answers);
    // Answers still being computed keep the writer alive until they are sent.
    let _ = writer.await;
    result
}
