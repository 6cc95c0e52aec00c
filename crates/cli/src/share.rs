//! `runnel share`: share groups (queues over topics): list, describe, alter, delete, and
//! consume as a member.
//!
//! `share consume` acquires records as a member of the group, prints them as `runnel
//! consume` does, and acknowledges each printed record (accept by default, or release, or
//! reject with a reason) once its output is flushed; then it leaves the group, so what it
//! acquired but did not print (an interrupt, `--count`, a closed stdout) goes back to the
//! group at once.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use runnel_client::{
    AckMode, AlterShareGroup, ShareConsumer, ShareConsumerConfig, ShareGroupDescription,
    ShareGroupSettings, ShareRecord, ShareStart,
};
use serde::Serialize;

use crate::Ctx;
use crate::format::{FormatArgs, RecordFormat};
use crate::output::{self, Output, Table};
use crate::parse::{format_duration_ms, parse_duration};

/// `runnel share ...`
#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// List share groups
    #[command(after_help = "Examples:
  runnel share list
  runnel share list --output json")]
    List,
    /// Show a share group's settings (its own and those in force), members, and per
    /// partition the start and next offsets, records acquired, available, being
    /// dead-lettered, and the lag
    #[command(after_help = "Examples:
  runnel share describe workers
  runnel share describe workers --output json")]
    Describe {
        /// The share group
        group: String,
    },
    /// Change a share group's settings (creating the group if needed); settings not named
    /// are left as they are
    #[command(after_help = "Examples:
  runnel share alter workers --start earliest
  runnel share alter workers --lock 30s --max-deliveries 5
  runnel share alter workers --backoff 1s,10s,1m,10m
  runnel share alter workers --dead-letter-topic jobs.dlq   # the topic must exist
  runnel share alter workers --no-backoff --no-dead-letter-topic

A record released without a delay of its own, or whose lock expired, is delivered again
after the backoff's first delay after its first delivery, the second after its second, and
the last one after every later delivery. After --max-deliveries deliveries, or when
rejected, it goes to the dead-letter topic (or is archived when there is none).")]
    Alter(AlterArgs),
    /// Move a share group's start offsets (show the plan; apply it with --execute). What was
    /// in flight in a moved partition is forgotten: its records from the new start on are
    /// delivered as new
    #[command(after_help = "Examples:
  runnel share reset-offsets workers --topic jobs --to-earliest            # show the plan
  runnel share reset-offsets workers --topic jobs --to-latest --execute    # skip the backlog
  runnel share reset-offsets workers --topic jobs:0 --to-time now-1h --execute
  runnel share reset-offsets workers --all-topics --shift-by -100 --execute

Refused while members hold records, unless --force.")]
    ResetOffsets(crate::group::ResetArgs),
    /// Delete a share group and its state (refused while members hold records, unless
    /// --force)
    #[command(after_help = "Examples:
  runnel share delete workers
  runnel share delete workers --force     # members holding records get UNKNOWN_GROUP")]
    Delete {
        /// The share group
        group: String,
        /// Delete even while members hold records
        #[arg(long)]
        force: bool,
    },
    /// Acquire records as a member of a share group, print them, and accept them (or
    /// release or reject them)
    #[command(after_help = CONSUME_EXAMPLES)]
    Consume(ConsumeArgs),
}

const CONSUME_EXAMPLES: &str = "Examples:
  runnel share consume workers --topic jobs                 # what is available now, accepted
  runnel share consume workers --topic jobs --count 10 --format json
  runnel share consume workers --topic jobs --follow        # keep waiting (Ctrl-C to stop)
  runnel share consume workers --topic jobs --release       # print, and give back
  runnel share consume workers --topic jobs --reject-all \"bad schema\"   # to the dead letters

Each record is acknowledged once it is printed (and the output flushed); records acquired
but not printed go back to the group when the command ends. Without --follow the command
stops when no record is available (none arrived within half a second). The formats are
those of `runnel consume`.";

/// `runnel share alter`
#[derive(Debug, Args)]
pub struct AlterArgs {
    /// The share group
    group: String,
    #[command(flatten)]
    change: ChangeArgs,
}

/// What `share alter` changes: at least one.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct ChangeArgs {
    /// How long an acquisition lock lasts (30s, 5m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lock: Option<Duration>,
    /// Deliveries after which a released or expired record is dead-lettered (or archived)
    #[arg(long, value_name = "N")]
    max_deliveries: Option<u32>,
    /// Redelivery delays, comma-separated: after the first delivery, the second, ...; the
    /// last for every later one (1s,10s,1m)
    #[arg(long, value_name = "DURATIONS", value_parser = parse_backoff, conflicts_with = "no_backoff")]
    backoff: Option<Delays>,
    /// Remove the backoff: records are delivered again at once
    #[arg(long)]
    no_backoff: bool,
    /// The dead-letter topic: an existing topic the group does not read
    #[arg(long, value_name = "TOPIC", conflicts_with = "no_dead_letter_topic")]
    dead_letter_topic: Option<String>,
    /// Remove the dead-letter topic: rejected and exhausted records are archived
    #[arg(long)]
    no_dead_letter_topic: bool,
    /// Where the group starts reading a partition it has not read before
    #[arg(long, value_enum, value_name = "POSITION")]
    start: Option<StartArg>,
}

/// `--start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartArg {
    /// Every stored record.
    Earliest,
    /// Records produced from then on.
    Latest,
}

impl ChangeArgs {
    fn to_change(&self) -> AlterShareGroup {
        AlterShareGroup {
            lock: self.lock,
            max_deliveries: self.max_deliveries,
            backoff: if self.no_backoff {
                Some(Vec::new())
            } else {
                self.backoff.clone().map(|d| d.0)
            },
            dead_letter_topic: self.dead_letter_topic.clone(),
            clear_dead_letter_topic: self.no_dead_letter_topic,
            start: self.start.map(|s| match s {
                StartArg::Earliest => ShareStart::Earliest,
                StartArg::Latest => ShareStart::Latest,
            }),
        }
    }
}

/// The delays of `--backoff` (one value, so that clap does not take it for a list of
/// values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delays(Vec<Duration>);

/// Parses `1s,10s,1m`: durations separated by commas.
fn parse_backoff(text: &str) -> Result<Delays, String> {
    text.split(',')
        .map(|d| parse_duration(d.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map(Delays)
        .map_err(|e| format!("{e}; --backoff takes durations separated by commas (1s,10s,1m)"))
}

/// `runnel share consume`
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The share group
    group: String,
    /// A topic to read, all of its partitions (repeatable)
    #[arg(long, required = true, value_name = "TOPIC")]
    topic: Vec<String>,
    /// Stop after N records
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Keep waiting for records (until --count or Ctrl-C) instead of stopping when none is
    /// available
    #[arg(long, short = 'f')]
    follow: bool,
    /// Give each printed record back for redelivery (after the group's backoff) instead of
    /// accepting it
    #[arg(long, conflicts_with = "reject_all")]
    release: bool,
    /// Reject each printed record with this reason: it goes to the group's dead-letter topic
    /// (or is archived without one)
    #[arg(long, value_name = "REASON")]
    reject_all: Option<String>,
    #[command(flatten)]
    print: FormatArgs,
}

impl ConsumeArgs {
    /// What is done with printed records, as a verb for the summary.
    fn verb(&self) -> &'static str {
        if self.release {
            "released"
        } else if self.reject_all.is_some() {
            "rejected"
        } else {
            "accepted"
        }
    }

    fn acknowledge(&self, consumer: &mut ShareConsumer, record: &ShareRecord) {
        match &self.reject_all {
            Some(reason) => consumer.reject(record, reason.clone()),
            None if self.release => consumer.release(record),
            None => consumer.accept(record),
        }
    }
}

/// Runs a `share` command.
///
/// # Errors
/// The broker's errors, with what was being done.
pub async fn run(ctx: &Ctx, command: ShareCommand) -> anyhow::Result<()> {
    match command {
        ShareCommand::List => list(ctx).await,
        ShareCommand::Describe { group } => describe(ctx, &group).await,
        ShareCommand::Alter(a) => alter(ctx, &a).await,
        ShareCommand::Delete { group, force } => delete(ctx, &group, force).await,
        ShareCommand::ResetOffsets(a) => reset_offsets(ctx, &a).await,
        ShareCommand::Consume(a) => consume(ctx, &a).await,
    }
}

async fn reset_offsets(ctx: &Ctx, a: &crate::group::ResetArgs) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    let plan = admin
        .reset_share_group_offsets(a.request())
        .await
        .with_context(|| format!("cannot reset the offsets of share group {:?}", a.group()))?;
    let done = format!("start offsets of share group {:?} reset", a.group());
    crate::group::print_plan(
        ctx.output,
        a.group(),
        &plan,
        a.execute().then_some(done.as_str()),
    )?;
    Ok(())
}

async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    let groups = admin
        .list_share_groups()
        .await
        .context("cannot list share groups")?;
    match ctx.output {
        Output::Json => {
            let list: Vec<_> = groups
                .iter()
                .map(|g| serde_json::json!({ "group": g }))
                .collect();
            output::print_json(&list)?;
        }
        Output::Table => {
            let mut table = Table::new(&["GROUP"]);
            for g in groups {
                table.row(vec![g]);
            }
            let mut out = output::stdout();
            table.write(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn describe(ctx: &Ctx, group: &str) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    let d = admin
        .describe_share_group(group)
        .await
        .with_context(|| format!("cannot describe share group {group:?}"))?;
    match ctx.output {
        Output::Json => output::print_json(&DescriptionJson::from(&d))?,
        Output::Table => print_description(&d)?,
    }
    Ok(())
}

async fn alter(ctx: &Ctx, a: &AlterArgs) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    let own = admin
        .alter_share_group(&a.group, &a.change.to_change())
        .await
        .with_context(|| format!("cannot alter share group {:?}", a.group))?;
    match ctx.output {
        Output::Json => output::print_json(&serde_json::json!({
            "group": a.group,
            "settings": SettingsJson::from(&own),
        }))?,
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "share group {:?} altered; its own settings:", a.group)?;
            output::write_fields(&mut out, &own_fields(&own))?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn delete(ctx: &Ctx, group: &str, force: bool) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    admin
        .delete_share_group(group, force)
        .await
        .with_context(|| format!("cannot delete share group {group:?}"))?;
    match ctx.output {
        Output::Json => {
            output::print_json(&serde_json::json!({ "group": group, "deleted": true }))?;
        }
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "share group {group:?} deleted")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The most records one poll of `share consume` acquires.
const POLL_RECORDS: u64 = 500;

/// `runnel share consume`: polls, prints, acknowledges what was printed, and leaves.
async fn consume(ctx: &Ctx, a: &ConsumeArgs) -> anyhow::Result<()> {
    let format = a.print.record_format(ctx.output)?;
    let client = ctx.client().await?;
    let mut consumer = client.share_consumer(ShareConsumerConfig {
        ack_mode: AckMode::Manual,
        ..ShareConsumerConfig::new(&a.group, &a.topic)
    })?;
    let result = print_and_acknowledge(&mut consumer, a, &format).await;
    let result = match result {
        Err(e) if crate::error::is_broken_pipe(&e) => Ok(printed_before_pipe(&e)),
        other => other,
    };
    let closed = consumer.close().await.with_context(|| {
        format!(
            "cannot acknowledge the records of share group {:?}",
            a.group
        )
    });
    let printed = result?;
    closed?;
    writeln!(
        std::io::stderr(),
        "{} {printed} record(s) of share group {:?}",
        a.verb(),
        a.group
    )?;
    Ok(())
}

/// The loop of `share consume`: returns how many records were printed and acknowledged.
async fn print_and_acknowledge(
    consumer: &mut ShareConsumer,
    a: &ConsumeArgs,
    format: &RecordFormat,
) -> anyhow::Result<u64> {
    let stop = crate::consume::interrupted();
    tokio::pin!(stop);
    let mut out = output::stdout();
    let mut printed = 0u64;
    loop {
        let want = a.count.map_or(POLL_RECORDS, |n| n.saturating_sub(printed));
        if want == 0 {
            return Ok(printed);
        }
        let want = u32::try_from(want.min(POLL_RECORDS)).unwrap_or(1);
        let (records, interrupted) = {
            // An interrupted poll still finishes (within its long-poll wait): it carries the
            // acknowledgements of the records printed last, whose outcome would otherwise
            // be unknown. What it acquires is not printed, and goes back on leaving.
            let poll = consumer.poll_at_most(want);
            tokio::pin!(poll);
            tokio::select! {
                biased;
                () = &mut stop => (poll.await, true),
                polled = &mut poll => (polled, false),
            }
        };
        let records = records.with_context(|| format!("cannot read share group {:?}", a.group))?;
        if interrupted || (records.is_empty() && !a.follow) {
            return Ok(printed);
        }
        // Acknowledged only once flushed: on a write error nothing of this poll is, and
        // leaving the group gives it back.
        for record in &records {
            format
                .write(&mut out, record)
                .map_err(|e| with_count(e, printed))?;
        }
        out.flush().map_err(|e| with_count(e, printed))?;
        for record in &records {
            a.acknowledge(consumer, record);
        }
        printed += records.len() as u64;
    }
}

/// A write error that carries how many records were printed before it.
#[derive(Debug)]
struct PrintedBefore {
    printed: u64,
    error: std::io::Error,
}

impl std::fmt::Display for PrintedBefore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write records: {}", self.error)
    }
}

impl std::error::Error for PrintedBefore {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

fn with_count(error: std::io::Error, printed: u64) -> anyhow::Error {
    anyhow::Error::new(PrintedBefore { printed, error })
}

fn printed_before_pipe(e: &anyhow::Error) -> u64 {
    e.downcast_ref::<PrintedBefore>().map_or(0, |p| p.printed)
}

/// A setting's text, marked `(default)` when the group does not set it itself.
fn marked(text: String, own: bool) -> String {
    if own {
        text
    } else {
        format!("{text} (default)")
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn backoff_text(delays: &[Duration]) -> String {
    if delays.is_empty() {
        return "none".to_owned();
    }
    delays
        .iter()
        .map(|d| format_duration_ms(ms(*d)))
        .collect::<Vec<_>>()
        .join(",")
}

fn start_text(start: Option<ShareStart>) -> String {
    match start {
        Some(ShareStart::Earliest) => "earliest".to_owned(),
        Some(ShareStart::Latest) => "latest".to_owned(),
        None => "-".to_owned(),
    }
}

/// The fields of a group's own settings ("-" where it follows the default).
fn own_fields(s: &ShareGroupSettings) -> Vec<(&'static str, String)> {
    let dash = || "-".to_owned();
    vec![
        (
            "lock",
            s.lock.map_or_else(dash, |d| format_duration_ms(ms(d))),
        ),
        (
            "max deliveries",
            s.max_deliveries.map_or_else(dash, |n| n.to_string()),
        ),
        (
            "backoff",
            if s.backoff.is_empty() {
                dash()
            } else {
                backoff_text(&s.backoff)
            },
        ),
        (
            "dead-letter topic",
            s.dead_letter_topic.clone().unwrap_or_else(dash),
        ),
        ("start", start_text(s.start)),
    ]
}

/// The settings in force, each marked `(default)` where the group sets none of its own.
fn effective_fields(d: &ShareGroupDescription) -> Vec<(&'static str, String)> {
    let (own, e) = (&d.settings, &d.effective);
    vec![
        (
            "lock",
            marked(
                e.lock
                    .map_or_else(String::new, |l| format_duration_ms(ms(l))),
                own.lock.is_some(),
            ),
        ),
        (
            "max deliveries",
            marked(
                e.max_deliveries.map_or_else(String::new, |n| n.to_string()),
                own.max_deliveries.is_some(),
            ),
        ),
        (
            "backoff",
            marked(
                backoff_text(&e.backoff),
                !own.backoff.is_empty() || e.backoff.is_empty(),
            ),
        ),
        (
            "dead-letter topic",
            marked(
                e.dead_letter_topic
                    .clone()
                    .unwrap_or_else(|| "none (archived)".to_owned()),
                own.dead_letter_topic.is_some() || e.dead_letter_topic.is_none(),
            ),
        ),
        ("start", marked(start_text(e.start), own.start.is_some())),
    ]
}

fn print_description(d: &ShareGroupDescription) -> std::io::Result<()> {
    let mut out = output::stdout();
    let mut fields = vec![
        ("group", d.group.clone()),
        ("members", d.members.len().to_string()),
    ];
    fields.extend(effective_fields(d));
    output::write_fields(&mut out, &fields)?;
    if !d.members.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&["MEMBER"]);
        for m in &d.members {
            table.row(vec![m.clone()]);
        }
        table.write(&mut out)?;
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "START",
        "NEXT",
        "ACQUIRED",
        "AVAILABLE",
        "DEAD-LETTERING",
        "LAG",
    ]);
    for p in &d.partitions {
        table.row(vec![
            p.topic.clone(),
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.next_offset.to_string(),
            p.acquired.to_string(),
            p.available.to_string(),
            p.dead_lettering.to_string(),
            p.lag.to_string(),
        ]);
    }
    table.write(&mut out)?;
    out.flush()
}

#[derive(Serialize)]
struct SettingsJson<'a> {
    lock_ms: Option<u64>,
    max_deliveries: Option<u32>,
    backoff_ms: Vec<u64>,
    dead_letter_topic: Option<&'a str>,
    start: Option<&'static str>,
}

impl<'a> From<&'a ShareGroupSettings> for SettingsJson<'a> {
    fn from(s: &'a ShareGroupSettings) -> Self {
        SettingsJson {
            lock_ms: s.lock.map(ms),
            max_deliveries: s.max_deliveries,
            backoff_ms: s.backoff.iter().copied().map(ms).collect(),
            dead_letter_topic: s.dead_letter_topic.as_deref(),
            start: s.start.map(|s| match s {
                ShareStart::Earliest => "earliest",
                ShareStart::Latest => "latest",
            }),
        }
    }
}

#[derive(Serialize)]
struct PartitionJson<'a> {
    topic: &'a str,
    partition: u32,
    start_offset: u64,
    next_offset: u64,
    acquired: u64,
    available: u64,
    dead_lettering: u64,
    lag: u64,
}

#[derive(Serialize)]
struct DescriptionJson<'a> {
    group: &'a str,
    settings: SettingsJson<'a>,
    effective: SettingsJson<'a>,
    members: &'a [String],
    partitions: Vec<PartitionJson<'a>>,
}

impl<'a> From<&'a ShareGroupDescription> for DescriptionJson<'a> {
    fn from(d: &'a ShareGroupDescription) -> Self {
        DescriptionJson {
            group: &d.group,
            settings: (&d.settings).into(),
            effective: (&d.effective).into(),
            members: &d.members,
            partitions: d
                .partitions
                .iter()
                .map(|p| PartitionJson {
                    topic: &p.topic,
                    partition: p.partition,
                    start_offset: p.start_offset,
                    next_offset: p.next_offset,
                    acquired: p.acquired,
                    available: p.available,
                    dead_lettering: p.dead_lettering,
                    lag: p.lag,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: ShareCommand,
    }

    fn parse(line: &[&str]) -> Result<ShareCommand, clap::Error> {
        let mut argv = vec!["share"];
        argv.extend_from_slice(line);
        Wrap::try_parse_from(argv).map(|w| w.command)
    }

    #[test]
    fn alter_takes_at_least_one_change_and_no_contradiction() {
        assert!(parse(&["alter", "g"]).is_err());
        assert!(parse(&["alter", "g", "--backoff", "1s", "--no-backoff"]).is_err());
        assert!(
            parse(&[
                "alter",
                "g",
                "--dead-letter-topic",
                "d",
                "--no-dead-letter-topic"
            ])
            .is_err()
        );
        let Ok(ShareCommand::Alter(a)) = parse(&[
            "alter",
            "g",
            "--lock",
            "30s",
            "--backoff",
            "1s, 10s,1m",
            "--start",
            "earliest",
            "--no-dead-letter-topic",
        ]) else {
            panic!("alter parses");
        };
        let change = a.change.to_change();
        assert_eq!(change.lock, Some(Duration::from_secs(30)));
        assert_eq!(
            change.backoff,
            Some(vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60)
            ])
        );
        assert_eq!(change.start, Some(ShareStart::Earliest));
        assert!(change.clear_dead_letter_topic);
        let Ok(ShareCommand::Alter(a)) = parse(&["alter", "g", "--no-backoff"]) else {
            panic!("alter parses");
        };
        assert_eq!(a.change.to_change().backoff, Some(Vec::new()));
        assert!(parse(&["alter", "g", "--backoff", "1s,soon"]).is_err());
    }

    #[test]
    fn consume_needs_a_topic_and_one_way_to_acknowledge() {
        assert!(parse(&["consume", "g"]).is_err());
        assert!(
            parse(&[
                "consume",
                "g",
                "--topic",
                "t",
                "--release",
                "--reject-all",
                "x"
            ])
            .is_err()
        );
        let Ok(ShareCommand::Consume(a)) = parse(&[
            "consume",
            "g",
            "--topic",
            "t",
            "--topic",
            "u",
            "--reject-all",
            "bad",
        ]) else {
            panic!("consume parses");
        };
        assert_eq!(a.topic, vec!["t", "u"]);
        assert_eq!(a.verb(), "rejected");
    }

    #[test]
    fn settings_are_marked_when_they_follow_the_defaults() {
        let d = ShareGroupDescription {
            group: "g".into(),
            settings: ShareGroupSettings {
                max_deliveries: Some(3),
                ..ShareGroupSettings::default()
            },
            effective: ShareGroupSettings {
                lock: Some(Duration::from_secs(30)),
                max_deliveries: Some(3),
                backoff: vec![Duration::from_secs(1), Duration::from_secs(60)],
                dead_letter_topic: None,
                start: Some(ShareStart::Latest),
            },
            members: Vec::new(),
            partitions: Vec::new(),
        };
        let fields = effective_fields(&d);
        assert_eq!(fields[0], ("lock", "30s (default)".to_owned()));
        assert_eq!(fields[1], ("max deliveries", "3".to_owned()));
        assert_eq!(fields[2], ("backoff", "1s,1m (default)".to_owned()));
        assert_eq!(
            fields[3],
            ("dead-letter topic", "none (archived)".to_owned())
        );
        assert_eq!(fields[4], ("start", "latest (default)".to_owned()));
    }
}
