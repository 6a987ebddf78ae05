//! Incoming connections: decode request frames, serve each request on its own task, and write the
//! answers back in whatever order they finish.
//!
//! A frame that cannot be decoded closes that one connection with a logged error. Nothing a peer
//! sends can take the node down.

use std::future::Future;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::wire::encode_frame;
use super::wire::read_frame;
use super::wire::RemoteError;
use super::wire::Request;
use super::wire::RequestFrame;
use super::wire::Response;
use super::wire::ResponseFrame;

/// What serves requests arriving from peers; implemented by the node host.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, RemoteError>> + Send;
}

/// Accepts peer connections on `listener` until the task is dropped.
pub async fn serve<H: RpcHandler>(listener: TcpListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler).await {
                        tracing::warn!("closing raft connection from {peer}: {e}");
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

async fn serve_connection<H: RpcHandler>(
    stream: TcpStream,
    handler: Arc<H>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let (answers, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();

    let writer = tokio::spawn(async move {
        let mut out = BufWriter::new(write_half);
        while let Some(frame) = to_write.recv().await {
            out.write_all(&frame).await?;
            while let Ok(frame) = to_write.try_recv() {
                out.write_all(&frame).await?;
            }
            out.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });

    let mut input = tokio::io::BufReader::new(read_half);
    let result = loop {
        match read_frame::<_, RequestFrame>(&mut input).await {
            Ok(Some(RequestFrame { id, request })) => {
                let handler = handler.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let response = handler.handle(request).await;
                    match encode_frame(&ResponseFrame { id, response }) {
                        Ok(frame) => {
                            let _ = answers.send(frame);
                        }
                        Err(e) => tracing::error!("cannot encode the answer to request {id}: {e}"),
                    }
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(answers);
    // Answers still being computed keep the writer alive until they are sent.
    let _ = writer.await;
    result
}
