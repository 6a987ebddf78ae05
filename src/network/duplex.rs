//! Splitting a connection into a read half and a write half, for the reader and writer tasks
//! every connection has.
//!
//! A plaintext TCP stream splits for free (`into_split`: the halves share nothing); a TLS stream
//! holds one session state for both directions, so its halves share it behind a lock
//! (`tokio::io::split`). The trait lets each connection use the cheapest split it allows.

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadHalf;
use tokio::io::WriteHalf;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// A connection that can be read by one task while another writes to it.
pub trait Duplex: Send + 'static {
    type Reader: AsyncRead + Send + Unpin + 'static;
    type Writer: AsyncWrite + Send + Unpin + 'static;

    fn into_halves(self) -> (Self::Reader, Self::Writer);
}

impl Duplex for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;

    fn into_halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl Duplex for crate::tls::ServerStream {
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;

    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

impl Duplex for crate::tls::ClientStream {
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;

    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}
