//! The client port: one listener serving HTTP/1.1 (the HTTP API) and HTTP/2 (the same API, and
//! etcd's gRPC API), told apart per connection by the HTTP/2 preface and per request by the
//! content type (`application/grpc` goes to the gRPC router, as etcd serves gRPC and its JSON
//! gateway on one port); in cleartext, or over TLS when the node has a client certificate
//! (`-cert-file`).
//!
//! Served here rather than by `axum::serve` for the settings gRPC needs: no Nagle delay (a gRPC
//! answer is written as several small frames, and waiting for the client's delayed ACK between
//! them costs milliseconds), and no small cap on the streams of one HTTP/2 connection (hyper's
//! default, 200, makes a client's further watch streams wait without an error; the gRPC front
//! end bounds open streams node-wide instead, and refuses the excess with a clear error), and no
//! `date` header on HTTP/2 answers (gRPC clients ignore it, and formatting and encoding it is a
//! measurable part of a small read's cost; HTTP/1.1 answers keep it).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use axum::body::Bytes;
use axum::body::HttpBody;
use axum::http;
use axum::http::header;
use axum::response::Response;
use axum::BoxError;
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
use tonic::codegen::Service;

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

/// Serves `grpc` (etcd's gRPC API) and `http` (the HTTP API) on `listener` until `shutdown`
/// resolves, over TLS with `tls`. Connections already open are left to the runtime's shutdown.
pub async fn serve(
    listener: TcpListener,
    grpc: Router,
    http: Router,
    tls: Option<Arc<Reloading<ServerConfig>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .auto_date_header(false);
    let routers = ByContentType { grpc, http };
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
        let service = TowerToHyperService::new(routers.clone());
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
    service: TowerToHyperService<ByContentType>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
}

/// The client port's two routers, a request going to one by its content type: gRPC (with any
/// suffix, such as `application/grpc+proto`) or HTTP. Served as it is rather than as the fallback
/// of a third router, which would cost every request one more routing step.
#[derive(Clone)]
struct ByContentType {
    grpc: Router,
    http: Router,
}

impl<B> Service<http::Request<B>> for ByContentType
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|content_type| content_type.as_bytes().starts_with(b"application/grpc"));
        if is_grpc {
            self.grpc.call(request)
        } else {
            self.http.call(request)
        }
    }
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
