//! Accepting client connections: at most `limits.max_connections` open at once (past that,
//! new clients wait in the listen backlog), each counted in the connections gauge while open.
//! With TLS (`tls.rs`), each connection's handshake runs in a task of its own. A front end
//! serves the accepted [`Conn`]s it receives from [`accept_loop`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::metrics;
use crate::services::caller::ConnInfo;
use crate::shutdown::Shutdown;
use crate::tls::{self, Tls};

/// Accepts connections while fewer than `max_connections` are open; past that, new clients
/// wait in the listen backlog. Ends at shutdown, which closes the listener.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    tls: Option<Arc<Tls>>,
    conns: mpsc::Sender<io::Result<Conn>>,
    shutdown: Shutdown,
) {
    let gauge = metrics::plain_gauge(metrics::CONNECTIONS);
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.wait() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.wait() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Some(tls) = &tls else {
                    let conn = Conn::new(Stream::Plain(stream), permit, gauge.clone());
                    if conns.send(Ok(conn)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let (acceptor, conns, gauge) = (tls.acceptor(), conns.clone(), gauge.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            let certificate = tls::client_name(stream.get_ref().1);
                            let mut conn = Conn::new(Stream::Tls(Box::new(stream)), permit, gauge);
                            conn.certificate = certificate;
                            let _ = conns.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::tls_handshake_failed();
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::tls_handshake_failed();
                            debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection's byte stream: plaintext or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Calls `$body` with the stream inside, pinned, whichever it is.
macro_rules! with_stream {
    ($self:ident, $s:ident => $body:expr) => {
        match &mut $self.stream {
            Stream::Plain(inner) => {
                let $s = Pin::new(inner);
                $body
            }
            Stream::Tls(inner) => {
                let $s = Pin::new(inner.as_mut());
                $body
            }
        }
    };
}

/// An accepted connection holding one `max_connections` slot until it closes.
pub(crate) struct Conn {
    stream: Stream,
    /// The name in the client certificate the handshake verified (mutual TLS).
    certificate: Option<Arc<str>>,
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Conn {
    fn new(stream: Stream, permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Conn {
            stream,
            certificate: None,
            _permit: permit,
            gauge,
        }
    }
}

impl Conn {
    /// The client's address, and the name in its verified certificate (mutual TLS).
    pub(crate) fn peer(&self) -> (Option<std::net::SocketAddr>, Option<Arc<str>>) {
        let addr = match &self.stream {
            Stream::Plain(s) => s.peer_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.peer_addr().ok(),
        };
        (addr, self.certificate.clone())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = match &self.stream {
            Stream::Plain(s) => s.connect_info(),
            Stream::Tls(s) => s.get_ref().0.connect_info(),
        };
        ConnInfo {
            tcp,
            certificate: self.certificate.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        with_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        with_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_stream!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
