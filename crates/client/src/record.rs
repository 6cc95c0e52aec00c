//! Records as the application sees them: [`ProducerRecord`] to send, [`ConsumerRecord`]
//! received, [`RecordMetadata`] for where a sent record was stored, and [`TraceParent`], the
//! W3C trace context header that lets a trace follow an event from service to service.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use runnel_format::Header;

/// The header name of the W3C trace context (`traceparent`).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A record to send: key, value, headers and timestamp, for a topic and optionally a
/// partition.
///
/// ```
/// use runnel_client::ProducerRecord;
/// let record = ProducerRecord::new("orders", "{\"id\": 42}")
///     .key("order-42")
///     .header("content-type", "application/json");
/// assert_eq!(record.key.as_deref(), Some(&b"order-42"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// The partition, or `None` to let the producer's partitioner choose (by key hash for
    /// keyed records).
    pub partition: Option<u32>,
    /// The key (`None` is a null key; an empty key is a key and hashes).
    pub key: Option<Bytes>,
    /// The value (`None` is a null value, a tombstone).
    pub value: Option<Bytes>,
    /// Headers, in order; names may repeat.
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; `None` takes the time of `send`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition explicitly, bypassing the partitioner.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// Appends a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Sets the `traceparent` header (replacing any), so that consumers continue the trace.
    #[must_use]
    pub fn traceparent(mut self, trace: &TraceParent) -> Self {
        trace.inject(&mut self.headers);
        self
    }
}

/// A record received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch: the producer's timestamp (or the broker's append
    /// time for topics with log-append time).
    pub timestamp: i64,
    /// The key, `None` for a null key. Shares the received buffer.
    pub key: Option<Bytes>,
    /// The value, `None` for a null value. Shares the received buffer.
    pub value: Option<Bytes>,
    /// Headers, in the order they were sent.
    pub headers: Vec<Header>,
}

impl ConsumerRecord {
    /// The value of the first header named `name`, if any (`Some(None)` for a null value).
    pub fn header(&self, name: &str) -> Option<Option<&Bytes>> {
        self.headers
            .iter()
            .find(|h| h.name == name.as_bytes())
            .map(|h| h.value.as_ref())
    }

    /// The trace context of the `traceparent` header, if present and valid.
    pub fn traceparent(&self) -> Option<TraceParent> {
        TraceParent::extract(&self.headers)
    }

    /// The value as UTF-8 text, if it is set and valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The key as UTF-8 text, if it is set and valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Where a sent record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// The broker's append time of the record's batch, ms since the Unix epoch.
    pub append_time_ms: i64,
}

/// A W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>): trace id,
/// parent span id and flags, as `00-<32 hex>-<16 hex>-<2 hex>`.
///
/// ```
/// use runnel_client::TraceParent;
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
///     .parse()
///     .unwrap();
/// assert!(tp.sampled());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id, 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// The id of the span that produced the record, 8 bytes, not all zero.
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct InvalidTraceParent {
    /// The value (truncated to 80 characters).
    pub value: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

impl TraceParent {
    /// A new trace: random trace and span ids, sampled.
    pub fn generate() -> Self {
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        // Retry the (astronomically unlikely) all-zero ids, which the spec forbids.
        while trace_id == [0; 16] {
            trace_id = fastrand::u128(..).to_be_bytes();
        }
        while parent_id == [0; 8] {
            parent_id = fastrand::u64(..).to_be_bytes();
        }
        Self {
            trace_id,
            parent_id,
            flags: 1,
        }
    }

    /// The context a service passes on after handling this one: the same trace and flags,
    /// a new span id.
    #[must_use]
    pub fn child(&self) -> Self {
        let mut parent_id = [0u8; 8];
        while parent_id == [0; 8] {
            parent_id = fastrand::u64(..).to_be_bytes();
        }
        Self { parent_id, ..*self }
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Sets the `traceparent` header in `headers`, replacing any existing one.
    pub fn inject(&self, headers: &mut Vec<Header>) {
        headers.retain(|h| h.name != TRACEPARENT_HEADER.as_bytes());
        headers.push(Header {
            name: Bytes::from_static(TRACEPARENT_HEADER.as_bytes()),
            value: Some(Bytes::from(self.to_string())),
        });
    }

    /// The trace context of the first `traceparent` header in `headers`, if it is valid.
    pub fn extract(headers: &[Header]) -> Option<Self> {
        let h = headers
            .iter()
            .find(|h| h.name == TRACEPARENT_HEADER.as_bytes())?;
        let text = std::str::from_utf8(h.value.as_deref()?).ok()?;
        text.parse().ok()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl std::str::FromStr for TraceParent {
    type Err = InvalidTraceParent;

    /// Parses and validates a `traceparent` value by the W3C rules: lowercase hex; version
    /// `00` is exactly 55 characters; a later version may carry more fields after a `-`;
    /// version `ff`, and all-zero trace or span ids, are invalid.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidTraceParent {
            value: s.chars().take(80).collect(),
            reason,
        };
        let b = s.as_bytes();
        if b.len() < 55 {
            return Err(bad("shorter than 55 characters"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad("fields are not separated by '-' at 2, 35 and 52"));
        }
        let version = hex::<1>(&b[0..2]).ok_or_else(|| bad("version is not 2 lowercase hex"))?[0];
        if version == 0xff {
            return Err(bad("version ff is forbidden"));
        }
        if version == 0 && b.len() != 55 {
            return Err(bad("version 00 is exactly 55 characters"));
        }
        if b.len() > 55 && b[55] != b'-' {
            return Err(bad("a later version's extra fields follow a '-'"));
        }
        let trace_id =
            hex::<16>(&b[3..35]).ok_or_else(|| bad("trace-id is not 32 lowercase hex"))?;
        let parent_id =
            hex::<8>(&b[36..52]).ok_or_else(|| bad("parent-id is not 16 lowercase hex"))?;
        let flags = hex::<1>(&b[53..55]).ok_or_else(|| bad("flags are not 2 lowercase hex"))?[0];
        if trace_id == [0; 16] {
            return Err(bad("trace-id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(bad("parent-id is all zeros"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// Decodes `2 * N` lowercase hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), EXAMPLE);
        let g = TraceParent::generate();
        assert_eq!(g.to_string().parse::<TraceParent>().unwrap(), g);
        let c = g.child();
        assert_eq!((c.trace_id, c.flags), (g.trace_id, g.flags));
        assert_ne!(c.parent_id, g.parent_id);
    }

    #[test]
    fn traceparent_validation() {
        let cases = [
            ("", "short"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "uppercase",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "zero trace",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zero span",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00 with extra",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "separator",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "flags",
            ),
        ];
        for (value, why) in cases {
            assert!(value.parse::<TraceParent>().is_err(), "{why}: {value:?}");
        }
        // A later version may carry more fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert!(v1.parse::<TraceParent>().is_ok());
    }

    #[test]
    fn inject_replaces_and_extract_finds() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        let r = ProducerRecord::new("t", "v")
            .header(TRACEPARENT_HEADER, "garbage")
            .header("other", "x")
            .traceparent(&tp);
        let named: Vec<_> = r
            .headers
            .iter()
            .filter(|h| h.name == TRACEPARENT_HEADER.as_bytes())
            .collect();
        assert_eq!(named.len(), 1);
        assert_eq!(TraceParent::extract(&r.headers), Some(tp));
        let received = ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: None,
            value: None,
            headers: r.headers,
        };
        assert_eq!(received.traceparent(), Some(tp));
        assert_eq!(received.header("other"), Some(Some(&Bytes::from("x"))));
        // An invalid header is no trace context.
        let bad = vec![Header {
            name: Bytes::from_static(b"traceparent"),
            value: Some(Bytes::from_static(b"nope")),
        }];
        assert_eq!(TraceParent::extract(&bad), None);
    }
}
