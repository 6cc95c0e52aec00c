//! A TCP proxy between a client and the broker that can cut every connection through it,
//! to break a stream in the middle of its traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy: accepts on `addr`, forwards to the upstream address.
pub struct Proxy {
    pub addr: SocketAddr,
    /// How many times connections were cut.
    pub cuts: Arc<AtomicU64>,
    cut_tx: watch::Sender<u64>,
    upstream: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards new connections to `addr` from now on (a restarted broker's new port).
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.upstream.lock().expect("upstream lock") = addr;
    }

    /// Starts a proxy to `upstream`. When `cut_every` is set, every connection is cut each
    /// time another `cut_every` bytes have gone upstream, `max_cuts` times at most.
    pub async fn start(upstream: SocketAddr, cut_every: Option<u64>, max_cuts: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let (cut_tx, _) = watch::channel(0u64);
        let upstream = Arc::new(Mutex::new(upstream));
        let task = {
            let upstream = upstream.clone();
            let upstream_bytes = upstream_bytes.clone();
            let cuts = cuts.clone();
            let cut_tx = cut_tx.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let target = *upstream.lock().expect("upstream lock");
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let cut_rx = cut_tx.subscribe();
                    let rule = cut_every.map(|every| Cutter {
                        every,
                        max_cuts,
                        cuts: cuts.clone(),
                        cut_tx: cut_tx.clone(),
                    });
                    tokio::spawn(pipe(client, server, upstream_bytes.clone(), cut_rx, rule));
                }
            })
        };
        Self {
            addr,
            cuts,
            cut_tx,
            upstream,
            task,
        }
    }

    /// Cuts every connection now.
    pub fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::SeqCst);
        self.cut_tx.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

struct Cutter {
    every: u64,
    max_cuts: u64,
    cuts: Arc<AtomicU64>,
    cut_tx: watch::Sender<u64>,
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    upstream_bytes: Arc<AtomicU64>,
    mut cut_rx: watch::Receiver<u64>,
    rule: Option<Cutter>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let before = upstream_bytes.fetch_add(n as u64, Ordering::SeqCst);
            if let Some(rule) = &rule {
                let after = before + n as u64;
                let crossed = after / rule.every > before / rule.every;
                if crossed && rule.cuts.load(Ordering::SeqCst) < rule.max_cuts {
                    rule.cuts.fetch_add(1, Ordering::SeqCst);
                    rule.cut_tx.send_modify(|c| *c += 1);
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Dropping the halves closes both sockets: the client and the broker see the
    // connection break at once.
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut_rx.changed() => {}
    }
}
