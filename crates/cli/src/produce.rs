//! `runnel produce TOPIC`: one record per line of stdin or `--file`, through the client's
//! idempotent, batching producer.
//!
//! Input is read in 256 KiB chunks into one buffer and each line is a `Bytes` slice of it,
//! so lines are not copied one by one. A line ends at `\n`; a `\r` before it is dropped
//! (Windows line ends); a last line without `\n` counts. Lines may hold any bytes.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use clap::Args;
use runnel_client::{
    Acks, ClientError, Compression, Header, Producer, ProducerConfig, ProducerRecord,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::Ctx;
use crate::output::{self, Output};
use crate::parse::{parse_header, unescape};
use crate::progress::{self, Unit};

/// Examples for `--help`.
pub const EXAMPLES: &str = "Examples:
  echo 'hello' | runnel produce orders
  runnel produce orders --file orders.jsonl --header content-type=application/json
  printf 'order-42:{\"total\": 42}\\n' | runnel produce orders --key-separator :
  runnel produce orders --partition 0 --acks durable < events.txt

A count of the records sent is printed on stderr at the end (not with --quiet); a progress
bar is shown while reading when stderr is a terminal.";

const CHUNK: usize = 256 << 10;

/// `runnel produce`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic
    topic: String,
    /// Read records from this file instead of stdin
    #[arg(long, short = 'f', value_name = "PATH")]
    file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value (\t for a tab); lines without
    /// it are an error
    #[arg(long, short = 'k', value_name = "SEP")]
    key_separator: Option<String>,
    /// A header added to every record (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Send every record to this partition (default: by key hash, keyless records spread)
    #[arg(long, short = 'p')]
    partition: Option<u32>,
    /// What the broker waits for before acknowledging
    #[arg(long, value_enum, default_value_t = AcksArg::Written)]
    acks: AcksArg,
    /// Compress batches
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
    /// Print nothing on success
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// Appended and readable (survives a broker crash)
    Written,
    /// Fsynced (survives a power loss)
    Durable,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// No compression
    None,
    /// LZ4
    Lz4,
    /// Zstandard
    Zstd,
}

/// Splits a line into key and value at the first `sep`.
fn split_key(line: &Bytes, sep: &[u8]) -> Option<(Bytes, Bytes)> {
    if sep.is_empty() || line.len() < sep.len() {
        return None;
    }
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((line.slice(..at), line.slice(at + sep.len()..)))
}

/// Removes the line end: `\n`, and a `\r` before it.
fn trim_line_end(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\n') {
        line.truncate(line.len() - 1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
    }
    line
}

/// The lines of an input, each without its line end, as slices of one buffer.
struct Lines<R> {
    reader: R,
    buf: BytesMut,
    /// Bytes at the start of `buf` already searched for a newline.
    scanned: usize,
    /// Input bytes handed out so far, line ends included.
    consumed: u64,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            buf: BytesMut::with_capacity(CHUNK),
            scanned: 0,
            consumed: 0,
            eof: false,
        }
    }

    /// The next line, or `None` at the end of the input.
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(self.scanned + i + 1).freeze();
                self.scanned = 0;
                self.consumed += line.len() as u64;
                return Ok(Some(trim_line_end(line)));
            }
            self.scanned = self.buf.len();
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = self.buf.split().freeze();
                self.scanned = 0;
                self.consumed += line.len() as u64;
                return Ok(Some(trim_line_end(line)));
            }
            if self.buf.capacity() - self.buf.len() < CHUNK / 4 {
                self.buf.reserve(CHUNK);
            }
            let n = self
                .reader
                .read_buf(&mut self.buf)
                .await
                .context("cannot read input")?;
            self.eof = n == 0;
        }
    }
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    topic: &'a str,
    records: u64,
    bytes: u64,
}

/// Runs `runnel produce`.
///
/// # Errors
/// Not found for the topic or partition; the first delivery error, with counts.
pub async fn run(ctx: &Ctx, a: ProduceArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let admin = client.admin();
    // Checks the topic and partition up front, for a clear error before reading input.
    let listed: Vec<u32> = a.partition.into_iter().collect();
    crate::offsets::select_partitions(&admin, &a.topic, &listed).await?;

    let (reader, total): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = match &a.file {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let len = file.metadata().await.ok().map(|m| m.len());
            (Box::new(file), len)
        }
        None => {
            if std::io::stdin().is_terminal() && !a.quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "reading records from stdin, one per line; end with Ctrl-D"
                );
            }
            (Box::new(tokio::io::stdin()), None)
        }
    };

    let producer = client
        .producer(ProducerConfig {
            acks: match a.acks {
                AcksArg::Written => Acks::Written,
                AcksArg::Durable => Acks::Durable,
            },
            compression: match a.compression {
                CompressionArg::None => Compression::None,
                CompressionArg::Lz4 => Compression::Lz4,
                CompressionArg::Zstd => Compression::Zstd,
            },
            ..ProducerConfig::default()
        })
        .await
        .context("cannot start the producer")?;

    let separator = a.key_separator.as_deref().map(unescape);
    let headers: Vec<Header> = a
        .headers
        .iter()
        .map(|(k, v)| Header {
            name: Bytes::copy_from_slice(k.as_bytes()),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
        })
        .collect();
    let pb = progress::bar(
        progress::stderr_is_terminal(),
        total,
        if total.is_some() {
            Unit::Bytes
        } else {
            Unit::Records
        },
        &format!("producing to {}", a.topic),
    );
    let started = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut lines = Lines::new(reader);
    let sent: anyhow::Result<()> = async {
        while let Some(line) = lines.next().await? {
            records += 1;
            bytes += line.len() as u64;
            let (key, value) = match &separator {
                Some(sep) => match split_key(&line, sep.as_bytes()) {
                    Some((k, v)) => (Some(k), v),
                    None => anyhow::bail!("line {records} has no key separator {sep:?}"),
                },
                None => (None, line),
            };
            let record = ProducerRecord {
                topic: a.topic.clone(),
                partition: a.partition,
                key,
                value: Some(value),
                headers: headers.clone(),
                timestamp: None,
            };
            // Every delivery is awaited at once by `close` below.
            let _delivery = producer
                .send(record)
                .await
                .with_context(|| format!("cannot send line {records}"))?;
            if total.is_some() {
                pb.set_position(lines.consumed);
                if records.is_multiple_of(1024) {
                    pb.set_prefix(format!("{records} records"));
                }
            } else {
                pb.inc(1);
            }
        }
        Ok(())
    }
    .await;
    let closed = close(&producer).await;
    pb.finish_and_clear();
    let elapsed = started.elapsed();
    // A failed send stops the input; its line was not sent.
    let (sent_ok, result) = match (sent, closed) {
        (Ok(()), Ok(())) => (records, Ok(())),
        (Err(e), Ok(())) => (records.saturating_sub(1), Err(e)),
        (Ok(()), Err(e)) => (records, Err(e)),
        (Err(e), Err(_)) => (records.saturating_sub(1), Err(e)),
    };
    if let Err(e) = result {
        let failed = failed_count(&e);
        return Err(e.context(format!(
            "cannot produce to topic {:?} ({} of {sent_ok} record(s) delivered)",
            a.topic,
            sent_ok.saturating_sub(failed)
        )));
    }
    match ctx.output {
        Output::Json => output::print_json(&SummaryJson {
            topic: &a.topic,
            records,
            bytes,
        })?,
        Output::Table if !a.quiet => {
            let _ = writeln!(
                std::io::stderr(),
                "produced {records} record(s), {}, to topic {:?} in {:.1?}",
                crate::parse::format_size(bytes),
                a.topic,
                elapsed
            );
        }
        Output::Table => {}
    }
    Ok(())
}

/// Delivers everything pending and stops the producer.
async fn close(producer: &Producer) -> anyhow::Result<()> {
    producer.close().await.map_err(anyhow::Error::from)
}

/// The number of records an error says were not delivered (0 if it does not say).
fn failed_count(e: &anyhow::Error) -> u64 {
    e.chain()
        .find_map(|c| match c.downcast_ref::<ClientError>() {
            Some(ClientError::Undelivered { failed, .. }) => Some(*failed),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        let line = Bytes::from_static(b"k1:v:1");
        assert_eq!(
            split_key(&line, b":"),
            Some((Bytes::from_static(b"k1"), Bytes::from_static(b"v:1")))
        );
        assert_eq!(
            split_key(&Bytes::from_static(b"a\t\tb"), b"\t\t"),
            Some((Bytes::from_static(b"a"), Bytes::from_static(b"b")))
        );
        assert_eq!(split_key(&Bytes::from_static(b"none"), b":"), None);
        assert_eq!(
            split_key(&Bytes::from_static(b":v"), b":"),
            Some((Bytes::new(), Bytes::from_static(b"v")))
        );
    }

    async fn all_lines(input: &[u8]) -> (Vec<Bytes>, u64) {
        let mut lines = Lines::new(input);
        let mut out = Vec::new();
        while let Some(line) = lines.next().await.unwrap() {
            out.push(line);
        }
        (out, lines.consumed)
    }

    #[tokio::test]
    async fn lines_are_split_across_reads() {
        let mut input = Vec::new();
        for i in 0..50_000 {
            input.extend_from_slice(format!("line-{i}\n").as_bytes());
        }
        input.extend_from_slice(b"crlf\r\n\n\xff\xfe binary\nlast without newline");
        let (lines, consumed) = all_lines(&input).await;
        assert_eq!(consumed, input.len() as u64);
        assert_eq!(lines.len(), 50_004);
        assert_eq!(lines[0], "line-0");
        assert_eq!(lines[49_999], "line-49999");
        assert_eq!(lines[50_000], "crlf");
        assert_eq!(lines[50_001], "");
        assert_eq!(lines[50_002], &b"\xff\xfe binary"[..]);
        assert_eq!(lines[50_003], "last without newline");
    }

    #[tokio::test]
    async fn empty_input_has_no_lines() {
        assert!(all_lines(b"").await.0.is_empty());
        assert_eq!(all_lines(b"\n").await.0, vec![Bytes::new()]);
    }
}
