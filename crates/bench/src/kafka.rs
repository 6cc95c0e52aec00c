//! `kafka-fetch`: the yardstick of the Kafka listener's reads. A minimal Kafka client (one
//! connection, requests encoded and responses decoded by `kafka-protocol`, one fetch of
//! `--batch-size` KiB at a time, partition 0 of `--topic` from offset 0 to `--records`), so
//! that a Kafka client library's rate can be told apart from the listener's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::args::BenchArgs;
use crate::report::Report;

/// The Fetch version asked for (topic names, not ids).
const VERSION: i16 = 11;

/// Reads `--records` records of partition 0 over the Kafka listener at `--kafka`.
///
/// # Errors
/// A listener that cannot be reached, answers with an error, or sends what does not decode.
pub fn fetch(args: &BenchArgs) -> anyhow::Result<Report> {
    let mut socket = TcpStream::connect(&args.kafka)
        .with_context(|| format!("connecting to the Kafka listener at {}", args.kafka))?;
    socket.set_nodelay(true)?;
    let max = i32::try_from(args.batch_size.saturating_mul(1024)).unwrap_or(i32::MAX);
    let started = Instant::now();
    let (mut offset, mut bytes, mut fetches) = (0i64, 0u64, 0u32);
    let end = i64::try_from(args.records).unwrap_or(i64::MAX);
    while offset < end {
        fetches += 1;
        let records = one_fetch(&mut socket, &args.topic, offset, max, fetches)?;
        bytes += records.len() as u64;
        let next = next_offset(&records, offset);
        if next == offset {
            bail!("the partition ends at offset {offset}, before the {end} records asked for");
        }
        offset = next;
    }
    let mut r = Report::new("kafka-fetch");
    r.records = args.records;
    r.bytes = bytes;
    r.seconds = started.elapsed().as_secs_f64();
    r.details.push(("fetches", fetches.into()));
    Ok(r)
}

/// One fetch from `offset`: the partition's `records` bytes.
fn one_fetch(
    socket: &mut TcpStream,
    topic: &str,
    offset: i64,
    max: i32,
    id: u32,
) -> anyhow::Result<Bytes> {
    let mut partition = FetchPartition::default();
    partition.fetch_offset = offset;
    partition.partition_max_bytes = max;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![partition];
    let mut request = FetchRequest::default();
    request.max_wait_ms = 500;
    request.max_bytes = max;
    request.topics = vec![t];
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Fetch as i16;
    header.request_api_version = VERSION;
    header.correlation_id = i32::try_from(id).unwrap_or(0);
    let mut body = BytesMut::new();
    header.encode(&mut body, ApiKey::Fetch.request_header_version(VERSION))?;
    request.encode(&mut body, VERSION)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_u32(u32::try_from(body.len())?);
    frame.extend_from_slice(&body);
    socket.write_all(&frame)?;
    let mut size = [0u8; 4];
    socket.read_exact(&mut size)?;
    let mut answer = vec![0u8; u32::from_be_bytes(size) as usize];
    socket.read_exact(&mut answer)?;
    let mut answer = Bytes::from(answer);
    ResponseHeader::decode(&mut answer, ApiKey::Fetch.response_header_version(VERSION))?;
    let response = FetchResponse::decode(&mut answer, VERSION)?;
    let data = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .context("a fetch answer without the partition")?;
    if data.error_code != 0 {
        bail!(
            "the fetch of {topic}/0 at {offset} failed with Kafka error {}",
            data.error_code
        );
    }
    Ok(data.records.clone().unwrap_or_default())
}

/// The offset after the last whole batch in `records` (Kafka's format), or `from`.
fn next_offset(records: &[u8], from: i64) -> i64 {
    let (mut pos, mut next) = (0usize, from);
    while pos + 61 <= records.len() {
        let field = |at: usize, n: usize| &records[pos + at..pos + at + n];
        let base = i64::from_be_bytes(field(0, 8).try_into().unwrap_or_default());
        let len = i32::from_be_bytes(field(8, 4).try_into().unwrap_or_default());
        let delta = i32::from_be_bytes(field(23, 4).try_into().unwrap_or_default());
        let Ok(len) = usize::try_from(len) else { break };
        if pos + 12 + len > records.len() {
            break;
        }
        next = base + i64::from(delta) + 1;
        pos += 12 + len;
    }
    next
}
