//! One assigned partition's reader: a task that keeps a `Subscribe` stream open from the
//! right position, checks and decodes the batches it receives, and hands their records to the
//! consumer in chunks.
//!
//! It resubscribes (with backoff) from the next offset when the stream breaks or the broker
//! restarts, applies the consumer's `auto_offset_reset` when its position has left the log,
//! and ends with an error chunk for errors that retrying cannot fix.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt as _;
use runnel_format::Batches;
use runnel_proto::pb;
use tokio::sync::mpsc;

use super::{Chunk, OffsetReset, StartAt, TopicPartition};
use crate::admin::{Admin, OffsetSpec};
use crate::compression;
use crate::connection::{Connection, framed_call, one_message};
use crate::error::{ClientError, ErrorCode, Result};
use crate::record::ConsumerRecord;

/// The HTTP/2 path of `runnel.v1.ConsumeService/Subscribe`.
const SUBSCRIBE: &str = "/runnel.v1.ConsumeService/Subscribe";

/// What a fetcher needs to know.
#[derive(Debug, Clone)]
pub(crate) struct FetcherConfig {
    pub(crate) group: Option<String>,
    pub(crate) auto_offset_reset: OffsetReset,
    pub(crate) max_bytes_per_response: u32,
    pub(crate) max_decompressed_bytes: usize,
}

pub(crate) struct Fetcher {
    pub(crate) conn: Arc<Connection>,
    pub(crate) config: Arc<FetcherConfig>,
    pub(crate) tp: TopicPartition,
    pub(crate) generation: u64,
    pub(crate) start: StartAt,
    pub(crate) tx: mpsc::Sender<Chunk>,
}

/// Why a subscription ended.
enum End {
    /// Resubscribe (after a backoff) from the position reached.
    Retry(ClientError),
    /// Start again from this position (offset reset).
    Restart(StartAt),
    /// The position asked for is outside the log ([`Fetcher::out_of_range`] decides).
    OutOfRange(ClientError),
    /// Report and stop.
    Fatal(ClientError),
    /// The consumer is gone.
    Gone,
}

impl Fetcher {
    pub(crate) async fn run(self) {
        let mut start = self.start;
        let mut attempt = 0u32;
        loop {
            let resolved = match start {
                StartAt::Committed => match self.committed().await {
                    Ok(Some(offset)) => StartAt::Offset(offset),
                    Ok(None) => match self.config.auto_offset_reset {
                        OffsetReset::Earliest => StartAt::Earliest,
                        OffsetReset::Latest => StartAt::Latest,
                        OffsetReset::Error => {
                            self.fail(ClientError::InvalidArgument(format!(
                                "{} has no committed offset and auto_offset_reset is Error",
                                self.tp
                            )))
                            .await;
                            return;
                        }
                    },
                    Err(e) if e.is_retriable() => {
                        self.backoff(&mut attempt, &e).await;
                        continue;
                    }
                    Err(e) => {
                        self.fail(e).await;
                        return;
                    }
                },
                other => other,
            };
            let mut next = match resolved {
                StartAt::Offset(o) => Some(o),
                _ => None,
            };
            let end = match self.subscribe(resolved, &mut attempt, &mut next).await {
                End::OutOfRange(e) => self.out_of_range(next, e).await,
                end => end,
            };
            match end {
                End::Retry(e) => {
                    self.backoff(&mut attempt, &e).await;
                    start = next.map_or(resolved, StartAt::Offset);
                }
                End::Restart(at) => start = at,
                End::Fatal(e) | End::OutOfRange(e) => {
                    self.fail(e).await;
                    return;
                }
                End::Gone => return,
            }
        }
    }

    async fn backoff(&self, attempt: &mut u32, error: &ClientError) {
        let delay = self.conn.config.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        tracing::debug!(tp = %self.tp, %error, ?delay, "subscription lost, resubscribing");
        tokio::time::sleep(delay).await;
    }

    async fn fail(&self, error: ClientError) {
        let _ = self
            .tx
            .send(Chunk {
                start: None,
                tp: self.tp.clone(),
                generation: self.generation,
                records: Err(error),
            })
            .await;
    }

    /// The group's committed offset for this partition.
    async fn committed(&self) -> Result<Option<u64>> {
        let Some(group) = &self.config.group else {
            return Err(ClientError::Config(
                "StartAt::Committed needs a group_id in the consumer config".into(),
            ));
        };
        let client = pb::group_service_client::GroupServiceClient::new(self.conn.channel.clone());
        let request = pb::FetchOffsetsRequest {
            group: group.clone(),
            partitions: vec![pb::TopicPartitions {
                topic: self.tp.topic.to_string(),
                partitions: vec![self.tp.partition],
            }],
        };
        let r = self
            .conn
            .retry(0, || {
                let mut c = client.clone();
                let req = request.clone();
                async move { c.fetch_offsets(req).await }
            })
            .await?
            .into_inner();
        Ok(r.offsets
            .iter()
            .find(|o| *o.topic == *self.tp.topic && o.partition == self.tp.partition)
            .and_then(|o| o.offset))
    }

    /// One subscription, until it ends. Records below `next` (the position asked for, or
    /// else the resolved start of the first response) are skipped; `next` follows the
    /// records handed over, so a new subscription resumes there.
    async fn subscribe(&self, at: StartAt, attempt: &mut u32, next: &mut Option<u64>) -> End {
        let position = match at {
            StartAt::Earliest | StartAt::Committed => {
                pb::start_position::Position::Boundary(pb::OffsetBoundary::Earliest as i32)
            }
            StartAt::Latest => {
                pb::start_position::Position::Boundary(pb::OffsetBoundary::Latest as i32)
            }
            StartAt::Offset(o) => pb::start_position::Position::Offset(o),
            StartAt::Timestamp(t) => pb::start_position::Position::TimestampMs(t),
        };
        let request = pb::SubscribeRequest {
            topic: self.tp.topic.to_string(),
            partition: self.tp.partition,
            start: Some(pb::StartPosition {
                position: Some(position),
            }),
            max_bytes: self.config.max_bytes_per_response,
            ..Default::default()
        };
        // Batches are decoded from the HTTP/2 frames they arrived in (no copy into tonic's
        // decode buffer).
        let body = one_message(&request);
        let mut channel = self.conn.channel.clone();
        let max = self.conn.config.max_message_bytes;
        let mut stream =
            match framed_call::<pb::SubscribeResponse>(&mut channel, SUBSCRIBE, body, max).await {
                Ok(s) => s,
                Err(status) => return self.classify(self.conn.error(status)),
            };
        loop {
            let message = match stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(status)) => return self.classify(self.conn.error(status)),
                None => {
                    return End::Retry(ClientError::Transport {
                        status: tonic::Code::Unavailable,
                        message: "the broker ended the subscription".into(),
                    });
                }
            };
            *attempt = 0;
            let resolved_now = next.is_none();
            let from = *next.get_or_insert(message.next_offset);
            let records = match self.decode(&message.batches, from) {
                Ok(r) => r,
                Err(e) => return End::Fatal(e),
            };
            if let Some(last) = records.back() {
                *next = Some(last.offset + 1);
            }
            // The first response resolves a symbolic start (latest, a time) to an offset:
            // pass it on even without records, so that a pause or a reconnect resumes there
            // and not at a later "latest".
            if records.is_empty() && !resolved_now {
                continue;
            }
            let chunk = Chunk {
                tp: self.tp.clone(),
                generation: self.generation,
                start: resolved_now.then_some(from),
                records: Ok(records),
            };
            if self.tx.send(chunk).await.is_err() {
                return End::Gone;
            }
        }
    }

    fn classify(&self, e: ClientError) -> End {
        match e.code() {
            Some(ErrorCode::OffsetOutOfRange) => End::OutOfRange(e),
            _ if e.is_retriable() => End::Retry(e),
            _ => End::Fatal(e),
        }
    }

    /// Where to go from `position`, which the broker says is outside the log (`e`). Past the
    /// log end, the log was cut short below records this consumer had read (a broker that
    /// lost power before they reached its disk): a consumer of a group resumes from the
    /// group's committed offset, which the broker never lets point past what is on disk, so
    /// nothing is skipped and the group's offset does not go back. Otherwise (before the log
    /// start, where retention deleted what was not read yet, or without a committed offset)
    /// `auto_offset_reset` decides, as for a Kafka consumer.
    async fn out_of_range(&self, position: Option<u64>, e: ClientError) -> End {
        if let Some(position) = position.filter(|_| self.config.group.is_some()) {
            match self.committed_below_cut(position).await {
                Ok(Some(committed)) => {
                    tracing::warn!(tp = %self.tp, position, committed,
                        "the log ends below this consumer's position (the broker lost records it had read); resuming from the committed offset");
                    return End::Restart(StartAt::Offset(committed));
                }
                Ok(None) => {}
                Err(e) if e.is_retriable() => return End::Retry(e),
                Err(e) => return End::Fatal(e),
            }
        }
        match self.config.auto_offset_reset {
            OffsetReset::Earliest => End::Restart(StartAt::Earliest),
            OffsetReset::Latest => End::Restart(StartAt::Latest),
            OffsetReset::Error => End::Fatal(e),
        }
    }

    /// The group's committed offset, if the log now ends below `position` and the committed
    /// offset is not past its end.
    async fn committed_below_cut(&self, position: u64) -> Result<Option<u64>> {
        let admin = Admin::new(self.conn.clone());
        let (topic, partition) = (&self.tp.topic, self.tp.partition);
        let end = admin
            .list_offset(topic, partition, OffsetSpec::Latest)
            .await?
            .offset;
        if position <= end {
            return Ok(None);
        }
        Ok(self.committed().await?.filter(|&c| c <= end))
    }

    /// Checks, decompresses and decodes received batches into records at or after `from`.
    fn decode(&self, batches: &[bytes::Bytes], from: u64) -> Result<VecDeque<ConsumerRecord>> {
        let mut out = VecDeque::new();
        decode_batches(
            &self.tp,
            batches,
            from,
            self.config.max_decompressed_bytes,
            |_, last| last >= from,
            |record| out.push_back(record),
        )?;
        Ok(out)
    }
}

/// Checks, decompresses and decodes batches of `tp` as the broker sent them (byte for byte as
/// stored), handing each record `wanted` to `each` in offset order. `wanted(first, last)` is
/// asked of each batch's offset range (a batch it refuses is not decompressed) and of each
/// record's offset (`first == last`). The one decoder of the client: the [`Fetcher`] keeps
/// the records from its position on, the share consumer those in its acquired ranges.
///
/// # Errors
/// [`ClientError::CorruptData`] for a batch that fails its CRC or structure check (naming
/// `position`, the offset being read, when the batch cannot even be delimited), or whose
/// records cannot be decompressed within `max_decompressed_bytes` (naming its base offset).
pub(crate) fn decode_batches(
    tp: &TopicPartition,
    batches: &[bytes::Bytes],
    position: u64,
    max_decompressed_bytes: usize,
    wanted: impl Fn(u64, u64) -> bool,
    mut each: impl FnMut(ConsumerRecord),
) -> Result<()> {
    let corrupt = |offset: u64, reason: String| ClientError::CorruptData {
        topic: tp.topic.to_string(),
        partition: tp.partition,
        offset,
        reason,
    };
    for bytes in batches {
        for batch in Batches::new(bytes.clone()) {
            let batch = batch.map_err(|e| corrupt(position, e.to_string()))?;
            let header = batch.header();
            if !wanted(header.base_offset, header.last_offset()) {
                continue;
            }
            let base = header.base_offset;
            let records = compression::records(&batch, max_decompressed_bytes)
                .map_err(|e| corrupt(base, e.to_string()))?;
            for record in records {
                let r = record.map_err(|e| corrupt(base, e.to_string()))?;
                if !wanted(r.offset, r.offset) {
                    continue;
                }
                each(ConsumerRecord {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
    }
    Ok(())
}
