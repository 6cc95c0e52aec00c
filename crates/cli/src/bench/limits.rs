//! The machine's own limits, measured with plain programs and none of Runnel's code, so that
//! the broker's figures can be stated as ratios of what this machine allows:
//!
//! - `disk`: `write` of `--bytes` in 1 MiB buffers into a new file in `--dir`, then one
//!   `fdatasync` (the figure counts both); then `--fsyncs` rounds of a 1 KiB appending
//!   `write` + `fdatasync`, for the latency of one durable write.
//! - `net`: one loopback TCP connection carrying `--bytes` in 1 MiB `write`s to a reader
//!   with a 1 MiB buffer, on two threads.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;

use super::BenchArgs;
use super::report::{Latency, Report, micros_histogram};

const BUF: usize = 1 << 20;

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn create(dir: &Path, name: &str) -> anyhow::Result<(TempFile, File)> {
    let path = dir.join(format!("runnel-bench-{name}-{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok((TempFile(path), file))
}

/// Sequential write speed and fdatasync latency in `args.dir`. Blocking.
pub fn disk(args: &BenchArgs) -> anyhow::Result<Report> {
    let buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8 | 1).collect();

    let (guard, mut file) = create(&args.dir, "disk")?;
    let started = Instant::now();
    let mut left = args.bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", guard.0.display()))?;
        left -= n as u64;
    }
    let written = started.elapsed();
    file.sync_data()
        .with_context(|| format!("fdatasync of {}", guard.0.display()))?;
    let total = started.elapsed();
    drop(file);
    drop(guard);

    let (guard, mut file) = create(&args.dir, "fsync")?;
    let mut hist = micros_histogram();
    let record = &buf[..1024];
    for _ in 0..args.fsyncs {
        let t = Instant::now();
        file.write_all(record)
            .with_context(|| format!("writing {}", guard.0.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", guard.0.display()))?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
    }
    drop(file);
    drop(guard);

    let mut r = Report::new("disk");
    r.bytes = args.bytes;
    r.seconds = total.as_secs_f64();
    r.latency = Latency::from_micros(&hist);
    r.latency_label = "1 KiB append + fdatasync";
    r.details = vec![
        ("write_seconds", json!(round6(written.as_secs_f64()))),
        (
            "fsync_seconds",
            json!(round6((total - written).as_secs_f64())),
        ),
    ];
    r.config = vec![
        ("dir", json!(args.dir.display().to_string())),
        ("buffer_bytes", json!(BUF)),
        ("fsyncs", json!(args.fsyncs)),
    ];
    Ok(r)
}

/// Loopback TCP speed over one connection. Blocking.
pub fn net(args: &BenchArgs) -> anyhow::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = listener.local_addr().context("the loopback port")?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let buf = vec![0x5au8; BUF];
    let mut socket = TcpStream::connect(addr).context("connecting over loopback")?;
    let started = Instant::now();
    let mut left = args.bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        socket
            .write_all(&buf[..n])
            .context("sending over loopback")?;
        left -= n as u64;
    }
    socket
        .shutdown(Shutdown::Write)
        .context("closing the loopback connection")?;
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback reader panicked"))?
        .context("receiving over loopback")?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == args.bytes,
        "sent {} bytes over loopback but {received} arrived",
        args.bytes
    );
    let mut r = Report::new("net");
    r.bytes = received;
    r.seconds = seconds;
    r.config = vec![("buffer_bytes", json!(BUF)), ("connections", json!(1))];
    Ok(r)
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().bench
    }

    #[test]
    fn the_disk_probe_writes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let r = disk(&args(&[
            "disk", "--bytes", "3000000", "--dir", d, "--fsyncs", "5",
        ]))
        .unwrap();
        assert_eq!(r.bytes, 3_000_000);
        assert_eq!(r.latency.unwrap().count, 5);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files removed"
        );
    }

    #[test]
    fn the_net_probe_moves_every_byte() {
        let r = net(&args(&["net", "--bytes", "5000000"])).unwrap();
        assert_eq!(r.bytes, 5_000_000);
        assert!(r.seconds > 0.0);
    }
}
