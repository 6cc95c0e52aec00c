//! `runnel consume TOPIC`: print records, standalone or in a consumer group.
//!
//! Without `--follow` the command reads up to the log end offsets it finds when it starts
//! (`ListOffsets`) and stops once every partition it reads has reached them; records
//! appended later are left alone. A partition that reaches its end is paused, so that
//! nothing past it is printed or, in a group, committed. With `--follow` it keeps waiting for
//! new records until `--count` or Ctrl-C.
//!
//! In a group (`--group`), the broker assigns the partitions and the consumer starts from
//! the group's committed offsets; what was printed is committed every 5 s and when the
//! command ends (also by `--count`, Ctrl-C or the reader of stdout going away).
//!
//! Output is flushed whenever the consumer has no record ready, so `--follow` prints each
//! record as it comes, and a bulk read writes in large blocks.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures_util::{FutureExt as _, StreamExt as _};
use runnel_client::{
    Client, ConsumerConfig, ConsumerRecord, OffsetReset, OffsetSpec, StartAt, TopicPartition,
};

use crate::Ctx;
use crate::error::usage;
use crate::format::{FormatArgs, RecordFormat};
use crate::offsets::{lookup, select_partitions};
use crate::output::{self, Output};
use crate::parse::{From, parse_from};
use crate::progress::{self, Unit};

/// Examples for `--help`.
pub const EXAMPLES: &str = "Examples:
  runnel consume orders                                  # everything stored, then stop
  runnel consume orders --from latest --follow           # like tail -f
  runnel consume orders --from 2024-05-01T12:00:00Z --count 100
  runnel consume orders --partition 0 --from 1500 --format key-value
  runnel consume orders --group audit --follow            # share partitions, commit offsets
  runnel consume orders --format json | jq .value
  runnel consume orders --template '{partition}/{offset} {time} {key}={value}'

Formats: value (the value, one per line), key-value (key, separator, value), json (one object
per line: topic, partition, offset, timestamp, key, headers, value; bytes that are not UTF-8
go in key_base64 / value_base64), or --template with the placeholders
{topic} {partition} {offset} {timestamp} {time} {key} {value} {headers} {header:NAME}.
Text formats print bytes that are not UTF-8 as \\xNN.";

/// `runnel consume`
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic
    topic: String,
    /// Where to start: earliest, latest, an offset, or a time (2024-05-01T12:00:00Z,
    /// now-1h). With --group: only earliest or latest, for partitions without a committed
    /// offset [default: earliest]
    #[arg(long, value_name = "POSITION", value_parser = parse_from)]
    from: Option<From>,
    /// Join this consumer group: the broker assigns partitions, reading starts from the
    /// group's committed offsets, and what is printed is committed
    #[arg(long, short = 'g', value_name = "GROUP", conflicts_with = "partition")]
    group: Option<String>,
    /// Stop after N records
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Keep waiting for new records (until --count or Ctrl-C) instead of stopping at the log
    /// end
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only these partitions (repeatable; default: all)
    #[arg(long, short = 'p', value_name = "PARTITION")]
    partition: Vec<u32>,
    #[command(flatten)]
    print: FormatArgs,
}

impl ConsumeArgs {
    fn record_format(&self, output: Output) -> anyhow::Result<RecordFormat> {
        self.print.record_format(output)
    }
}

/// How often a group consumer without `--follow` looks up committed offsets it lacks.
const REFRESH: Duration = Duration::from_millis(250);

/// One event of the read loop.
enum Event {
    Record(Option<runnel_client::Result<ConsumerRecord>>),
    Tick,
    Interrupt,
}

/// Runs `runnel consume`.
///
/// # Errors
/// Not found for the topic or a partition; usage errors for bad positions; the consumer's
/// errors; write errors (a broken pipe ends the command successfully).
pub async fn run(ctx: &Ctx, a: ConsumeArgs) -> anyhow::Result<()> {
    let format = a.record_format(ctx.output)?;
    let client = ctx.client().await?;
    let admin = client.admin();
    let partitions = select_partitions(&admin, &a.topic, &a.partition).await?;
    let ends: HashMap<u32, u64> = lookup(&admin, &a.topic, &partitions, OffsetSpec::Latest)
        .await?
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    let mut reader = match &a.group {
        Some(group) => Reader::group(&client, &a, group, ends)?,
        None => Reader::standalone(&client, &a, &partitions, ends).await?,
    };

    let show = progress::stderr_is_terminal() && !progress::stdout_is_terminal();
    let pb = progress::bar(
        show,
        reader.total.filter(|_| !a.follow),
        Unit::Records,
        &format!("consuming {}", a.topic),
    );
    let mut out = output::stdout();
    let mut printed = 0u64;
    let stop = interrupted();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut last_refresh: Option<std::time::Instant> = None;
    let result: anyhow::Result<()> = async {
        loop {
            if a.count.is_some_and(|n| printed >= n) || (!a.follow && reader.done()) {
                return Ok(());
            }
            // Flush only when about to wait: bulk reads write in blocks, --follow promptly.
            let event = match reader.consumer.next().now_or_never() {
                Some(item) => Event::Record(item),
                None => {
                    out.flush()?;
                    tokio::select! {
                        biased;
                        () = &mut stop => Event::Interrupt,
                        item = reader.consumer.next() => Event::Record(item),
                        _ = tick.tick() => Event::Tick,
                    }
                }
            };
            let record = match event {
                Event::Interrupt => return Ok(()),
                Event::Tick => {
                    if !a.follow && last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
                        last_refresh = Some(std::time::Instant::now());
                        reader.refresh_committed().await?;
                    }
                    continue;
                }
                Event::Record(None) => return Ok(()),
                Event::Record(Some(Err(e))) => {
                    return Err(e).with_context(|| format!("cannot read topic {:?}", a.topic));
                }
                Event::Record(Some(Ok(r))) => r,
            };
            if !a.follow && !reader.wanted(&record)? {
                continue;
            }
            format.write(&mut out, &record)?;
            printed += 1;
            pb.inc(1);
            if !a.follow {
                reader.after(&record)?;
            }
        }
    }
    .await;
    pb.finish_and_clear();
    let flushed = out.flush().map_err(anyhow::Error::from);
    // The reader of stdout went away: stop as if --count was reached.
    let result = match result.and(flushed) {
        Err(e) if crate::error::is_broken_pipe(&e) => Ok(()),
        other => other,
    };
    let closed = reader.consumer.close().await.with_context(|| {
        format!(
            "cannot commit the offsets of group {:?}",
            a.group.as_deref().unwrap_or_default()
        )
    });
    if show && result.is_ok() {
        let _ = writeln!(std::io::stderr(), "consumed {printed} record(s)");
    }
    result.and(closed)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the command then stops as at `--count`, so a
/// group member commits what it printed and leaves the group.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    // Without a handler, the signal's default action ends the process.
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The consumer and what is known of where each partition stops.
struct Reader {
    consumer: runnel_client::Consumer,
    topic: String,
    /// The log end offsets when the command started, per partition.
    ends: HashMap<u32, u64>,
    /// The partitions read without a group, those that have not reached their end.
    standalone: Option<Vec<u32>>,
    /// Records to read in all, when known (standalone).
    total: Option<u64>,
    /// In a group: the admin API and the group, to look up committed offsets.
    group: Option<(runnel_client::Admin, String)>,
    /// In a group: committed offsets, the start of partitions the consumer has no position
    /// for yet (it learns one from a record, or from a start it resolved itself; a start at
    /// a committed offset equal to the log end gives neither).
    committed: HashMap<u32, u64>,
}

impl Reader {
    async fn standalone(
        client: &Client,
        a: &ConsumeArgs,
        partitions: &[u32],
        ends: HashMap<u32, u64>,
    ) -> anyhow::Result<Self> {
        let admin = client.admin();
        let from = a.from.unwrap_or(From::Earliest);
        let starts: Vec<u64> = match from {
            From::Earliest => lookup(&admin, &a.topic, partitions, OffsetSpec::Earliest)
                .await?
                .iter()
                .map(|o| o.offset)
                .collect(),
            From::Latest => partitions.iter().map(|p| ends[p]).collect(),
            From::Time(t) => lookup(&admin, &a.topic, partitions, OffsetSpec::Timestamp(t))
                .await?
                .iter()
                .map(|o| o.offset)
                .collect(),
            // Clamped to each partition's log, as a group's offset reset is: an offset past
            // a partition's end reads nothing there, one below its start reads from it.
            From::Offset(o) => lookup(&admin, &a.topic, partitions, OffsetSpec::Earliest)
                .await?
                .iter()
                .map(|e| o.clamp(e.offset, ends[&e.partition].max(e.offset)))
                .collect(),
        };
        let mut consumer = client.consumer(ConsumerConfig {
            client_id: "runnel-cli".into(),
            auto_commit_interval: None,
            auto_offset_reset: OffsetReset::Earliest,
            ..ConsumerConfig::default()
        })?;
        let mut reading = Vec::new();
        let mut total = 0u64;
        for (p, start) in partitions.iter().zip(starts) {
            let end = ends[p];
            if !a.follow && start >= end {
                continue;
            }
            total += end.saturating_sub(start);
            consumer.assign(TopicPartition::new(&a.topic, *p), StartAt::Offset(start))?;
            reading.push(*p);
        }
        Ok(Self {
            consumer,
            topic: a.topic.clone(),
            ends,
            standalone: Some(reading),
            total: Some(total),
            group: None,
            committed: HashMap::new(),
        })
    }

    fn group(
        client: &Client,
        a: &ConsumeArgs,
        group: &str,
        ends: HashMap<u32, u64>,
    ) -> anyhow::Result<Self> {
        let reset = match a.from {
            None | Some(From::Earliest) => OffsetReset::Earliest,
            Some(From::Latest) => OffsetReset::Latest,
            Some(_) => {
                return Err(usage(
                    "with --group, reading starts from the group's committed offsets: --from \
                     may only be earliest or latest (for partitions without one); use \
                     `runnel group reset-offsets` to move the group",
                ));
            }
        };
        let mut consumer = client
            .consumer(ConsumerConfig {
                client_id: "runnel-cli".into(),
                auto_offset_reset: reset,
                ..ConsumerConfig::group(group)
            })
            .context("cannot create the consumer")?;
        consumer.subscribe(&[a.topic.as_str()])?;
        Ok(Self {
            consumer,
            topic: a.topic.clone(),
            ends,
            standalone: None,
            total: None,
            group: Some((client.admin(), group.to_owned())),
            committed: HashMap::new(),
        })
    }

    fn end(&self, partition: u32) -> u64 {
        self.ends.get(&partition).copied().unwrap_or(0)
    }

    /// Whether every partition read has reached its end (in a group: once some are
    /// assigned, and each has its position).
    fn done(&self) -> bool {
        match &self.standalone {
            Some(reading) => reading.is_empty(),
            None => {
                let assigned = self.consumer.assignment();
                !assigned.is_empty()
                    && assigned.iter().all(|tp| {
                        self.position(tp)
                            .is_some_and(|pos| pos >= self.end(tp.partition))
                    })
            }
        }
    }

    /// Where a partition is: the consumer's position, else (in a group) its committed
    /// offset.
    fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.consumer
            .position(tp)
            .or_else(|| self.committed.get(&tp.partition).copied())
    }

    /// In a group, looks up the committed offsets of assigned partitions without a position
    /// (they may have moved since: another member may have committed before handing over).
    async fn refresh_committed(&mut self) -> anyhow::Result<()> {
        let Some((admin, group)) = &self.group else {
            return Ok(());
        };
        let unknown: Vec<TopicPartition> = self
            .consumer
            .assignment()
            .into_iter()
            .filter(|tp| self.consumer.position(tp).is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let offsets = admin
            .fetch_committed(group, &unknown)
            .await
            .with_context(|| format!("cannot fetch the committed offsets of group {group:?}"))?;
        for o in offsets {
            if let Some(offset) = o.offset {
                self.committed.insert(o.partition, offset);
            }
        }
        Ok(())
    }

    /// Whether a record is before its partition's end; a record past it was appended after
    /// the start: the partition is rewound to it (so it is not counted as consumed) and
    /// paused.
    fn wanted(&mut self, r: &ConsumerRecord) -> anyhow::Result<bool> {
        if r.offset < self.end(r.partition) {
            return Ok(true);
        }
        let tp = TopicPartition::new(&self.topic, r.partition);
        self.consumer.seek(&tp, StartAt::Offset(r.offset))?;
        self.consumer.pause(&tp);
        self.finished(r.partition);
        Ok(false)
    }

    /// After printing a record: a partition that reached its end is paused.
    fn after(&mut self, r: &ConsumerRecord) -> anyhow::Result<()> {
        if r.offset + 1 >= self.end(r.partition) {
            self.consumer
                .pause(&TopicPartition::new(&self.topic, r.partition));
            self.finished(r.partition);
        }
        Ok(())
    }

    fn finished(&mut self, partition: u32) {
        if let Some(reading) = &mut self.standalone {
            reading.retain(|p| *p != partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn args(line: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let mut argv = vec!["consume"];
        argv.extend_from_slice(line);
        Wrap::try_parse_from(argv).map(|w| w.args)
    }

    #[test]
    fn formats_from_flags() {
        let a = args(&["t"]).unwrap();
        assert_eq!(a.record_format(Output::Table).unwrap(), RecordFormat::Value);
        assert_eq!(a.record_format(Output::Json).unwrap(), RecordFormat::Json);
        let a = args(&["t", "--format", "key-value"]).unwrap();
        assert_eq!(
            a.record_format(Output::Json).unwrap(),
            RecordFormat::KeyValue(b"\t".to_vec())
        );
        let a = args(&["t", "--format", "key-value", "-k", ": "]).unwrap();
        assert_eq!(
            a.record_format(Output::Table).unwrap(),
            RecordFormat::KeyValue(b": ".to_vec())
        );
        let a = args(&["t", "--template", "{nope}"]).unwrap();
        assert!(a.record_format(Output::Table).is_err());
        assert!(args(&["t", "--template", "{value}", "--format", "json"]).is_err());
    }

    #[test]
    fn positions_and_conflicts() {
        let a = args(&["t", "--from", "latest", "-n", "5", "-f"]).unwrap();
        assert_eq!(a.from, Some(From::Latest));
        assert_eq!(a.count, Some(5));
        assert!(a.follow);
        assert!(args(&["t", "--from", "yesterday"]).is_err());
        assert!(args(&["t", "--group", "g", "--partition", "0"]).is_err());
        let a = args(&["t", "-p", "0", "-p", "2"]).unwrap();
        assert_eq!(a.partition, vec![0, 2]);
    }
}
