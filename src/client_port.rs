//! The client port: one listener serving HTTP/1.1 (the HTTP API) and cleartext HTTP/2 (the same
//! API, and etcd's gRPC API), told apart per connection by the HTTP/2 preface.
//!
//! Served here rather than by `axum::serve` for the settings gRPC needs: no Nagle delay (a gRPC
//! answer is written as several small frames, and waiting for the client's delayed ACK between
//! them costs milliseconds), and no small cap on the streams of one HTTP/2 connection (hyper's
//! default, 200, makes a client's further watch streams wait without an error; the gRPC front
//! end bounds open streams node-wide instead, and refuses the excess with a clear error).

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Streams one HTTP/2 connection may have open at once: far above what the node-wide stream
/// limit (`grpc::MAX_OPEN_STREAMS`) lets one client use, so that limit decides, with an error.
const MAX_STREAMS_PER_CONNECTION: u32 = 1 << 20;
/// Pause after a failed accept (out of file descriptors, say) before trying again, so the loop
/// does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` resolves. Connections already open are left
/// to the runtime's shutdown.
pub async fn serve(
    listener: TcpListener,
    router: Router,
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
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("client connection from {peer} ended: {e}");
            }
        });
    }
}
