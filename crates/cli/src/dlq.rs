//! `runnel dlq`: a dead-letter topic's records (copies of records a share group, or an
//! application through `runnel_client::dead_letter`, gave up on), listed with where they
//! came from and why, and replayed to their original topic.
//!
//! Both commands read the records stored when they start, from `--from` (an offset, in each
//! partition of the dead-letter topic) and at most `--count` of them.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runnel_client::{Client, DeadLetter, ProducerConfig, read_dead_letters, replay_dead_letters};
use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::Ctx;
use crate::output::{self, Output, Table};
use crate::parse::format_time_ms;

/// `runnel dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters of a topic: each one's offset there, its original topic,
    /// partition and offset, the group, the delivery count, the error, when, and the value
    #[command(after_help = "Examples:
  runnel dlq list jobs.dlq
  runnel dlq list jobs.dlq --from 120 --count 10
  runnel dlq list jobs.dlq --output json | jq '.[].error'")]
    List(SelectArgs),
    /// Produce dead letters back to their original topic and partition (key, value,
    /// timestamp and headers as they were, without the runnel.dlq.* headers), or to
    /// another topic
    #[command(after_help = "Examples:
  runnel dlq replay jobs.dlq                       # every dead letter, back where it came from
  runnel dlq replay jobs.dlq --from 120 --count 10
  runnel dlq replay jobs.dlq --to-topic jobs.retry

The dead letters stay in the dead-letter topic: replaying again produces them again.")]
    Replay {
        #[command(flatten)]
        select: SelectArgs,
        /// Produce them to this topic instead (partitioned by key there)
        #[arg(long, value_name = "TOPIC")]
        to_topic: Option<String>,
    },
}

/// Which dead letters.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The dead-letter topic
    topic: String,
    /// Start at this offset in each partition of the dead-letter topic [default: the oldest
    /// stored]
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,
    /// At most N dead letters
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<usize>,
}

impl SelectArgs {
    async fn read(&self, client: &Client) -> anyhow::Result<Vec<DeadLetter>> {
        read_dead_letters(client, &self.topic, self.from, self.count)
            .await
            .with_context(|| format!("cannot read the dead letters of topic {:?}", self.topic))
    }
}

/// Runs a `dlq` command.
///
/// # Errors
/// The broker's errors; a record of the topic that is not a dead letter.
pub async fn run(ctx: &Ctx, command: DlqCommand) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    match command {
        DlqCommand::List(select) => {
            let letters = select.read(&client).await?;
            print_letters(ctx.output, &letters)?;
            Ok(())
        }
        DlqCommand::Replay { select, to_topic } => {
            let letters = select.read(&client).await?;
            let counts = replay(&client, &letters, to_topic.as_deref()).await?;
            print_replayed(ctx.output, &select.topic, &counts)?;
            Ok(())
        }
    }
}

/// Replays `letters`; returns how many records went to each topic and partition.
async fn replay(
    client: &Client,
    letters: &[DeadLetter],
    to_topic: Option<&str>,
) -> anyhow::Result<BTreeMap<(String, u32), u64>> {
    let producer = client
        .producer(ProducerConfig::default())
        .await
        .context("cannot start the producer")?;
    let replayed = replay_dead_letters(&producer, letters, to_topic).await;
    let closed = producer.close().await;
    let stored = replayed.context("cannot replay the dead letters")?;
    closed.context("cannot replay the dead letters")?;
    let mut counts = BTreeMap::new();
    for m in stored {
        *counts
            .entry((m.topic.to_string(), m.partition))
            .or_insert(0) += 1;
    }
    Ok(counts)
}

/// Bytes as one table cell: text, control characters and line breaks escaped.
fn cell(bytes: &[u8]) -> String {
    let mut text = Vec::new();
    // Writing into a vector cannot fail.
    let _ = output::write_text(&mut text, bytes);
    String::from_utf8_lossy(&text).replace('\n', "\\n")
}

fn print_letters(format: Output, letters: &[DeadLetter]) -> std::io::Result<()> {
    match format {
        Output::Json => {
            let list: Vec<_> = letters.iter().map(LetterJson).collect();
            output::print_json(&list)
        }
        Output::Table => {
            let mut table = Table::new(&[
                "PARTITION",
                "OFFSET",
                "ORIGIN",
                "GROUP",
                "DELIVERIES",
                "TIME",
                "ERROR",
                "VALUE",
            ]);
            for l in letters {
                table.row(vec![
                    l.record.partition.to_string(),
                    l.record.offset.to_string(),
                    format!("{}/{}@{}", l.topic, l.partition, l.offset),
                    cell(l.group.as_bytes()),
                    l.delivery_count.to_string(),
                    format_time_ms(l.time_ms),
                    cell(l.error.as_bytes()),
                    l.record
                        .value
                        .as_deref()
                        .map_or_else(|| "null".to_owned(), cell),
                ]);
            }
            let mut out = output::stdout();
            table.write(&mut out)?;
            out.flush()
        }
    }
}

fn print_replayed(
    format: Output,
    from: &str,
    counts: &BTreeMap<(String, u32), u64>,
) -> std::io::Result<()> {
    let total: u64 = counts.values().sum();
    match format {
        Output::Json => output::print_json(&serde_json::json!({
            "topic": from,
            "replayed": total,
            "to": counts
                .iter()
                .map(|((topic, partition), records)| serde_json::json!({
                    "topic": topic,
                    "partition": partition,
                    "records": records,
                }))
                .collect::<Vec<_>>(),
        })),
        Output::Table => {
            let mut out = output::stdout();
            let mut table = Table::new(&["TOPIC", "PARTITION", "RECORDS"]);
            for ((topic, partition), records) in counts {
                table.row(vec![
                    topic.clone(),
                    partition.to_string(),
                    records.to_string(),
                ]);
            }
            table.write(&mut out)?;
            out.flush()?;
            writeln!(
                std::io::stderr(),
                "replayed {total} record(s) from {from:?}"
            )
        }
    }
}

/// A dead letter as a JSON object: its place in the dead-letter topic, where it came from,
/// why, and its key and value (text, or base64 in `*_base64` when not UTF-8).
struct LetterJson<'a>(&'a DeadLetter);

impl Serialize for LetterJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let mut map = s.serialize_map(Some(12))?;
        map.serialize_entry("dlq_partition", &l.record.partition)?;
        map.serialize_entry("dlq_offset", &l.record.offset)?;
        map.serialize_entry("topic", &l.topic)?;
        map.serialize_entry("partition", &l.partition)?;
        map.serialize_entry("offset", &l.offset)?;
        map.serialize_entry("group", &l.group)?;
        map.serialize_entry("delivery_count", &l.delivery_count)?;
        map.serialize_entry("error", &l.error)?;
        map.serialize_entry("time_ms", &l.time_ms)?;
        map.serialize_entry("timestamp", &l.record.timestamp)?;
        output::serialize_bytes_entry(&mut map, "key", "key_base64", l.record.key.as_deref())?;
        output::serialize_bytes_entry(
            &mut map,
            "value",
            "value_base64",
            l.record.value.as_deref(),
        )?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use runnel_client::{ConsumerRecord, dead_letter_record};

    use super::*;

    fn letter() -> DeadLetter {
        let original = ConsumerRecord {
            topic: "jobs".into(),
            partition: 2,
            offset: 17,
            timestamp: 1_714_564_800_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"line one\nline two")),
            headers: Vec::new(),
        };
        let r = dead_letter_record(&original, "jobs.dlq", "workers", 4, "bad\tinput", 5);
        DeadLetter::from_record(ConsumerRecord {
            topic: "jobs.dlq".into(),
            partition: 0,
            offset: 3,
            timestamp: original.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .expect("a dead letter")
    }

    #[test]
    fn json_names_both_places_and_the_reason() {
        let v = serde_json::to_value(LetterJson(&letter())).unwrap();
        assert_eq!(v["dlq_offset"], 3);
        assert_eq!(v["topic"], "jobs");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 17);
        assert_eq!(v["group"], "workers");
        assert_eq!(v["delivery_count"], 4);
        assert_eq!(v["error"], "bad\tinput");
        assert_eq!(v["value"], "line one\nline two");
    }

    #[test]
    fn table_cells_stay_on_one_line() {
        assert_eq!(cell(b"line one\nline two"), "line one\\nline two");
        assert_eq!(cell(b"\x1b[31m"), "\\x1b[31m");
    }
}
