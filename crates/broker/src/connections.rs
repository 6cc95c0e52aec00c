//! Accepting client connections: at most `limits.max_connections` open at once (past that,
//! new clients wait in the listen backlog), each counted in the connections gauge while open.
//! A front end serves the accepted [`Conn`]s it receives from [`accept_loop`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

use crate::metrics;
use crate::shutdown::Shutdown;

/// Accepts connections while fewer than `max_connections` are open; past that, new clients
/// wait in the listen backlog. Ends at shutdown, which closes the listener.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
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
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let conn = Conn::new(stream, permit, gauge.clone());
                if conns.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An accepted connection holding one `max_connections` slot until it closes.
pub(crate) struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Conn {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Conn {
            stream,
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
