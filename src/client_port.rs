//! The client port: one listener serving HTTP/1.1 (the HTTP API) and HTTP/2 (the same API, and
//! etcd's gRPC API), told apart per connection by the HTTP/2 preface; in cleartext, or over TLS
//! when the node has a client certificate (`-cert-file`).
//!
//! Served here rather than by `axum::serve` for the settings gRPC needs: no Nagle delay (a gRPC
//! answer is written as several small frames, and waiting for the client's delayed ACK between
//! them costs milliseconds), and no small cap on the streams of one HTTP/2 connection (hyper's
//! default, 200, makes a client's further watch streams wait without an error; the gRPC front
//! end bounds open streams node-wide instead, and refuses the excess with a clear error).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use crate::tls::Refusal;
use crate::tls::RefusalLog;
use crate::tls::Reloading;

/// Streams one HTTP/2 connection may have open at once: far above what the node-wide stream
/// limit (`grpc::MAX_OPEN_STREAMS`) lets one client use, so that limit decides, with an error.
const MAX_STREAMS_PER_CONNECTION: u32 = 1 << 20;
/// Pause after a failed accept (out of file descriptors, say) before trying again, so the loop
/// does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// What a plaintext HTTP client reads when it reaches a TLS client port (in a 400 answer, as Go's
/// servers do): better than a connection closed without a word.
const PLAINTEXT_ON_TLS_PORT: &str =
    "this port speaks TLS: connect with https:// and the cluster's CA certificate\n";

/// Refused client-port connections, logged at most once a second.
static REFUSALS: RefusalLog = RefusalLog::new("client port");

/// Serves `router` on `listener` until `shutdown` resolves, over TLS with `tls`. Connections
/// already open are left to the runtime's shutdown.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Reloading<ServerConfig>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cannot accept a client connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY for {peer}: {e}");
        }
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => match crate::tls::accept(&tls, stream).await {
                    Ok(stream) => serve_http(&builder, stream, service).await,
                    Err((why, stream)) => return refuse(peer, why, stream).await,
                },
                None => match crate::tls::check_plaintext(stream).await {
                    Ok(stream) => serve_http(&builder, stream, service).await,
                    Err((why, stream)) => return refuse(peer, why, stream).await,
                },
            };
            if let Err(e) = served {
                tracing::debug!("client connection from {peer} ended: {e}");
            }
        });
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one accepted connection until it closes.
async fn serve_http<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    service: TowerToHyperService<Router>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
}

/// Logs a refused connection, and tells a plaintext client on the TLS port why in words.
async fn refuse(peer: SocketAddr, why: Refusal, stream: Option<TcpStream>) {
    REFUSALS.refused(peer, &why);
    let Some(mut stream) = stream else {
        return;
    };
    if matches!(why, Refusal::NotTls) {
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PLAINTEXT_ON_TLS_PORT}",
            PLAINTEXT_ON_TLS_PORT.len()
        );
        // The request is read first: the answer must not arrive before the client has sent it.
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(answer.as_bytes()).await;
    }
    crate::tls::close_gently(stream).await;
}
