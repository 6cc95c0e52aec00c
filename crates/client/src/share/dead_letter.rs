//! Dead letters: the records a share group could not process, which the broker copies to the
//! group's dead-letter topic (rejected, or past `max_deliveries`), and [`dead_letter`], which
//! gives a consumer-group application the same path.
//!
//! A dead letter is a copy of the original record (key, value, headers and timestamp) with
//! the headers of [`dead_letter_headers`] appended, each value UTF-8 text. [`DeadLetter`]
//! parses them; [`read_dead_letters`] reads a dead-letter topic; [`replay_dead_letters`]
//! produces dead letters back to where they came from, without the appended headers.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;

use crate::client::Client;
use crate::consumer::{ConsumerConfig, OffsetReset, StartAt, TopicPartition};
use crate::error::{ClientError, Result};
use crate::producer::{DeliveryFuture, Producer};
use crate::record::{ConsumerRecord, Header, ProducerRecord, RecordMetadata};

/// The headers a dead letter carries after the original record's own, in this order; each
/// value is UTF-8 text.
pub mod dead_letter_headers {
    /// The topic the record was read from.
    pub const TOPIC: &str = "runnel.dlq.topic";
    /// Its partition, in decimal.
    pub const PARTITION: &str = "runnel.dlq.partition";
    /// Its offset there, in decimal.
    pub const OFFSET: &str = "runnel.dlq.offset";
    /// The group that gave up on it.
    pub const GROUP: &str = "runnel.dlq.group";
    /// How many times it was delivered, in decimal.
    pub const DELIVERY_COUNT: &str = "runnel.dlq.delivery_count";
    /// Why: the reject's text (may be empty).
    pub const ERROR: &str = "runnel.dlq.error";
    /// When it was dead-lettered, ms since the Unix epoch, in decimal.
    pub const TIME_MS: &str = "runnel.dlq.time_ms";
    /// Every one of them, in the order they are appended.
    pub const ALL: [&str; 7] = [
        TOPIC,
        PARTITION,
        OFFSET,
        GROUP,
        DELIVERY_COUNT,
        ERROR,
        TIME_MS,
    ];
}

use dead_letter_headers as h;

/// A record of a dead-letter topic, with where it came from and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record as stored in the dead-letter topic (its topic, partition and offset are
    /// the dead-letter topic's; its headers include the appended ones).
    pub record: ConsumerRecord,
    /// The topic it was read from.
    pub topic: String,
    /// The partition there.
    pub partition: u32,
    /// The offset there.
    pub offset: u64,
    /// The group that gave up on it.
    pub group: String,
    /// How many times it was delivered.
    pub delivery_count: u32,
    /// Why (empty when no reason was given).
    pub error: String,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub time_ms: i64,
}

impl TryFrom<ConsumerRecord> for DeadLetter {
    type Error = ClientError;

    fn try_from(record: ConsumerRecord) -> Result<Self> {
        Self::from_record(record)
    }
}

impl DeadLetter {
    /// Parses the dead-letter headers of `record` (the last header of each name counts: they
    /// are appended after the original record's own).
    ///
    /// # Errors
    /// [`ClientError::NotADeadLetter`] naming the header that is missing, null, not UTF-8
    /// or not a number.
    pub fn from_record(record: ConsumerRecord) -> Result<Self> {
        let topic = header_text(&record, h::TOPIC)?.to_owned();
        let partition = header_number(&record, h::PARTITION)?;
        let offset = header_number(&record, h::OFFSET)?;
        let group = header_text(&record, h::GROUP)?.to_owned();
        let delivery_count = header_number(&record, h::DELIVERY_COUNT)?;
        let error = header_text(&record, h::ERROR)?.to_owned();
        let time_ms = header_number(&record, h::TIME_MS)?;
        Ok(Self {
            record,
            topic,
            partition,
            offset,
            group,
            delivery_count,
            error,
            time_ms,
        })
    }

    /// The original record's headers: the record's without the appended dead-letter ones
    /// (a header of the same name that the original record had itself is kept).
    pub fn original_headers(&self) -> Vec<Header> {
        let headers = &self.record.headers;
        let appended: Vec<usize> = h::ALL
            .iter()
            .filter_map(|name| headers.iter().rposition(|x| x.name == name.as_bytes()))
            .collect();
        headers
            .iter()
            .enumerate()
            .filter(|(i, _)| !appended.contains(i))
            .map(|(_, header)| header.clone())
            .collect()
    }

    /// The record to produce to replay it: the original key, value, headers and timestamp,
    /// to its original topic and partition, or to `to_topic` (partitioned by the producer
    /// there, since its partitions may differ).
    pub fn replay_record(&self, to_topic: Option<&str>) -> ProducerRecord {
        let (topic, partition) = match to_topic {
            Some(t) => (t.to_owned(), None),
            None => (self.topic.clone(), Some(self.partition)),
        };
        ProducerRecord {
            topic,
            partition,
            key: self.record.key.clone(),
            value: self.record.value.clone(),
            headers: self.original_headers(),
            timestamp: Some(self.record.timestamp),
        }
    }
}

/// The text of the last header `name` of `record`.
fn header_text<'r>(record: &'r ConsumerRecord, name: &str) -> Result<&'r str> {
    let not = |reason: String| ClientError::NotADeadLetter {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        reason,
    };
    let header = record
        .headers
        .iter()
        .rev()
        .find(|x| x.name == name.as_bytes())
        .ok_or_else(|| not(format!("it has no header {name}")))?;
    let value = header
        .value
        .as_deref()
        .ok_or_else(|| not(format!("header {name} is null")))?;
    std::str::from_utf8(value).map_err(|_| not(format!("header {name} is not UTF-8")))
}

/// The decimal number of the last header `name` of `record`.
fn header_number<T: std::str::FromStr>(record: &ConsumerRecord, name: &str) -> Result<T> {
    let text = header_text(record, name)?;
    text.parse().map_err(|_| ClientError::NotADeadLetter {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        reason: format!("header {name} is {text:?}, not a number"),
    })
}

/// The dead letter of `record` for `dlq_topic`: a copy of it (key, value, headers,
/// timestamp) with the [`dead_letter_headers`] appended, as the broker writes for a share
/// group.
pub fn dead_letter_record(
    record: &ConsumerRecord,
    dlq_topic: &str,
    group: &str,
    delivery_count: u32,
    error: &str,
    time_ms: i64,
) -> ProducerRecord {
    let mut headers = record.headers.clone();
    let values = [
        record.topic.to_string(),
        record.partition.to_string(),
        record.offset.to_string(),
        group.to_owned(),
        delivery_count.to_string(),
        error.to_owned(),
        time_ms.to_string(),
    ];
    for (name, value) in h::ALL.iter().zip(values) {
        headers.push(Header {
            name: bytes::Bytes::from_static(name.as_bytes()),
            value: Some(value.into()),
        });
    }
    ProducerRecord {
        topic: dlq_topic.to_owned(),
        partition: None,
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        timestamp: Some(record.timestamp),
    }
}

/// Writes `record` to `dlq_topic` as a dead letter of `group` (delivered once, dead-lettered
/// now, for `error`): a consumer-group application that gives up on a record takes the
/// share groups' dead-letter path, and `runnel dlq` and [`replay_dead_letters`] work on it.
///
/// # Errors
/// As [`Producer::send`]; the returned future resolves to the delivery.
pub async fn dead_letter(
    producer: &Producer,
    record: &ConsumerRecord,
    dlq_topic: &str,
    group: &str,
    error: &str,
) -> Result<DeliveryFuture> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    producer
        .send(dead_letter_record(record, dlq_topic, group, 1, error, now))
        .await
}

/// Reads the dead letters of `topic` stored when the call starts: from offset `from` in each
/// partition (clamped to its log; the oldest stored without it), at most `max` of them (the
/// first read; all without it), sorted by partition and offset.
///
/// # Errors
/// The broker's errors (`UNKNOWN_TOPIC`); [`ClientError::NotADeadLetter`] for a record
/// without the dead-letter headers.
pub async fn read_dead_letters(
    client: &Client,
    topic: &str,
    from: Option<u64>,
    max: Option<usize>,
) -> Result<Vec<DeadLetter>> {
    let described = client.admin().describe_topic(topic).await?;
    let mut consumer = client.consumer(ConsumerConfig {
        client_id: "runnel-dead-letters".into(),
        auto_commit_interval: None,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    })?;
    // The end of each partition read, by partition.
    let mut ends: HashMap<u32, u64> = HashMap::new();
    for p in &described.partitions {
        let (start, end) = (p.log_start_offset, p.log_end_offset);
        let at = from.map_or(start, |o| o.clamp(start, end.max(start)));
        if at < end {
            consumer.assign(TopicPartition::new(topic, p.partition), StartAt::Offset(at))?;
            ends.insert(p.partition, end);
        }
    }
    let max = max.unwrap_or(usize::MAX);
    let mut letters = Vec::new();
    while !ends.is_empty() && letters.len() < max {
        let record = match consumer.next().await {
            Some(record) => record?,
            None => break,
        };
        let end = ends.get(&record.partition).copied().unwrap_or(0);
        if record.offset + 1 >= end {
            consumer.unassign(&TopicPartition::new(topic, record.partition));
            ends.remove(&record.partition);
        }
        if record.offset < end {
            letters.push(DeadLetter::from_record(record)?);
        }
    }
    letters.sort_by_key(|l| (l.record.partition, l.record.offset));
    Ok(letters)
}

/// Produces each dead letter back ([`DeadLetter::replay_record`]): to its original topic
/// and partition, or to `to_topic`; returns where each went, in order.
///
/// # Errors
/// As [`Producer::send`]; [`ClientError::Undelivered`] with the count and the first error
/// if any record was not delivered (the others were).
pub async fn replay_dead_letters(
    producer: &Producer,
    letters: &[DeadLetter],
    to_topic: Option<&str>,
) -> Result<Vec<RecordMetadata>> {
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in letters {
        deliveries.push(producer.send(letter.replay_record(to_topic)).await?);
    }
    let mut stored = Vec::with_capacity(deliveries.len());
    let mut failed = 0u64;
    let mut first = None;
    for delivery in deliveries {
        match delivery.await {
            Ok(metadata) => stored.push(metadata),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    match first {
        None => Ok(stored),
        Some(first) => Err(ClientError::Undelivered {
            failed,
            first: Box::new(first),
        }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn original() -> ConsumerRecord {
        ConsumerRecord {
            topic: "jobs".into(),
            partition: 1,
            offset: 41,
            timestamp: 1_714_564_800_250,
            key: Some(Bytes::from_static(b"job-41")),
            value: Some(Bytes::from_static(b"{\"n\": 41}")),
            headers: vec![
                Header {
                    name: Bytes::from_static(b"trace"),
                    value: Some(Bytes::from_static(b"abc")),
                },
                // An original header of a dead-letter name (the record came from a
                // dead-letter topic itself) is kept on replay.
                Header {
                    name: Bytes::from_static(b"runnel.dlq.group"),
                    value: Some(Bytes::from_static(b"older")),
                },
            ],
        }
    }

    /// `original` as stored in `jobs.dlq` at offset 7.
    fn stored(r: &ProducerRecord) -> ConsumerRecord {
        ConsumerRecord {
            topic: r.topic.as_str().into(),
            partition: 0,
            offset: 7,
            timestamp: r.timestamp.unwrap_or_default(),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        }
    }

    #[test]
    fn headers_round_trip_and_replay_restores_the_original() {
        let letter = dead_letter_record(&original(), "jobs.dlq", "workers", 3, "bad input", 99);
        assert_eq!(letter.topic, "jobs.dlq");
        assert_eq!(letter.headers.len(), 2 + 7);
        let parsed = DeadLetter::from_record(stored(&letter)).unwrap();
        assert_eq!(
            (parsed.topic.as_str(), parsed.partition, parsed.offset),
            ("jobs", 1, 41)
        );
        assert_eq!(parsed.group, "workers");
        assert_eq!(parsed.delivery_count, 3);
        assert_eq!(parsed.error, "bad input");
        assert_eq!(parsed.time_ms, 99);
        assert_eq!(parsed.record.offset, 7);

        let replay = parsed.replay_record(None);
        let o = original();
        assert_eq!((replay.topic.as_str(), replay.partition), ("jobs", Some(1)));
        assert_eq!(replay.key, o.key);
        assert_eq!(replay.value, o.value);
        assert_eq!(replay.timestamp, Some(o.timestamp));
        assert_eq!(replay.headers, o.headers);
        let elsewhere = parsed.replay_record(Some("jobs.retry"));
        assert_eq!(
            (elsewhere.topic.as_str(), elsewhere.partition),
            ("jobs.retry", None)
        );
    }

    #[test]
    fn an_empty_error_is_a_dead_letter_too() {
        let letter = dead_letter_record(&original(), "d", "g", 1, "", 5);
        let parsed = DeadLetter::try_from(stored(&letter)).unwrap();
        assert_eq!(parsed.error, "");
    }

    #[test]
    fn a_record_without_the_headers_is_not_a_dead_letter() {
        let e = DeadLetter::from_record(original()).unwrap_err();
        assert!(
            matches!(e, ClientError::NotADeadLetter { offset: 41, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("runnel.dlq.topic"), "{e}");

        let mut letter = stored(&dead_letter_record(&original(), "d", "g", 1, "x", 5));
        for header in &mut letter.headers {
            if header.name == h::OFFSET.as_bytes() {
                header.value = Some(Bytes::from_static(b"forty-one"));
            }
        }
        let e = DeadLetter::from_record(letter.clone()).unwrap_err();
        assert!(e.to_string().contains("runnel.dlq.offset"), "{e}");
        assert!(e.to_string().contains("forty-one"), "{e}");
        for header in &mut letter.headers {
            if header.name == h::TOPIC.as_bytes() {
                header.value = Some(Bytes::from_static(b"\xff"));
            }
        }
        let e = DeadLetter::from_record(letter).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }
}
