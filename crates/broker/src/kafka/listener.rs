//! The listener: accepted connections, size-prefixed requests read and answered in order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::apis;
use super::context::{Context, Front, Session};
use crate::broker::Broker;
use crate::shutdown::Shutdown;

/// Serves the Kafka protocol on the connections `conns` brings (accepted by the same loop as
/// gRPC's, on the same `limits.max_connections` slots and with the same TLS) until the
/// shutdown signal. `peer` tells a connection's client address and verified certificate name.
pub(crate) fn serve<S>(
    mut conns: mpsc::Receiver<std::io::Result<S>>,
    front: Front,
    shutdown: Shutdown,
    peer: fn(&S) -> (Option<SocketAddr>, Option<Arc<str>>),
) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (host, port) = advertised(&front.broker, front.local);
    info!(address = ?front.local, advertised = %format!("{host}:{port}"),
        sasl = front.auth.enabled(), "serving the Kafka protocol");
    let context = Arc::new(Context {
        broker: front.broker,
        auth: front.auth,
        host,
        port,
    });
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                biased;
                () = shutdown.wait() => return,
                c = conns.recv() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        warn!(error = %e, "accepting a Kafka connection failed");
                        continue;
                    }
                    None => return,
                },
            };
            let (context, shutdown) = (context.clone(), shutdown.clone());
            let (addr, certificate) = peer(&conn);
            tokio::spawn(async move {
                let mut session = super::sasl::open(&context, addr, certificate).await;
                if let Err(reason) = connection(conn, &context, &mut session, &shutdown).await {
                    debug!(reason, "Kafka connection closed");
                }
            });
        }
    })
}

/// The address clients are told to connect to: `kafka.advertised_address`, else the bound one.
fn advertised(broker: &Broker, local: Option<SocketAddr>) -> (String, i32) {
    let configured = &broker.config.kafka.advertised_address;
    if let Some((host, port)) = configured.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
    {
        return (host.to_owned(), i32::from(port));
    }
    let local = local.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9192)));
    (local.ip().to_string(), i32::from(local.port()))
}

/// Serves one connection: request after request, answered in order. Returns why it ended.
async fn connection<S>(
    mut socket: S,
    context: &Context,
    session: &mut Session,
    shutdown: &Shutdown,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = context.broker.config.limits.max_request_bytes;
    let mut out = BytesMut::new();
    loop {
        let frame = tokio::select! {
            biased;
            () = shutdown.wait() => return Ok(()),
            f = read_frame(&mut socket, limit) => f?,
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let Some(response) = apis::handle(context, session, frame).await? else {
            // acks=0 produce: no response.
            continue;
        };
        out.clear();
        out.put_u32(response.len() as u32);
        out.extend_from_slice(&response);
        socket
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        if let Some(reason) = session.closing.take() {
            return Err(reason);
        }
    }
}

/// Reads one size-prefixed request; `None` at a clean end of the stream.
async fn read_frame<S: AsyncRead + Unpin>(
    socket: &mut S,
    limit: u64,
) -> Result<Option<Bytes>, String> {
    let mut size = [0u8; 4];
    match socket.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("read: {e}")),
    }
    let size = i32::from_be_bytes(size);
    let len = u64::try_from(size).map_err(|_| format!("negative request size {size}"))?;
    if len > limit {
        crate::metrics::limit_rejected("max_request_bytes");
        return Err(format!(
            "request of {len} bytes exceeds limits.max_request_bytes ({limit})"
        ));
    }
    // Read in pieces so that a size that lies allocates no more than what arrives.
    let mut buf = BytesMut::with_capacity((len as usize).min(64 << 10));
    while (buf.len() as u64) < len {
        let want = ((len - buf.len() as u64) as usize).min(1 << 20);
        let before = buf.len();
        buf.reserve(want);
        let n = (&mut *socket)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || buf.len() == before {
            return Err("the connection closed inside a request".into());
        }
    }
    // A frame too short for a header is refused by `apis::decode`.
    Ok(Some(buf.freeze()))
}
