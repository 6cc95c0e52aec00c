//! `runnel topic`: create, list, describe, alter, delete, add-partitions.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runnel_client::{Durability, ErrorCode, TopicConfig, TopicDescription};
use serde::Serialize;

use crate::Ctx;
use crate::error::usage;
use crate::output::{self, Output, Table};
use crate::parse::{
    format_duration_ms, format_size, format_size_exact, parse_duration, parse_size,
};

/// `runnel topic ...`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic
    #[command(after_help = "Examples:
  runnel topic create orders --partitions 3
  runnel topic create audit --partitions 6 --retention 30d --retention-bytes 10GiB --durability always
  runnel topic create orders --partitions 3 --if-not-exists")]
    Create(CreateArgs),
    /// List topics and their partition counts
    #[command(after_help = "Examples:
  runnel topic list
  runnel topic list --output json")]
    List,
    /// Show a topic's config and its partitions' offsets and sizes
    #[command(after_help = "Examples:
  runnel topic describe orders
  runnel topic describe orders --output json")]
    Describe {
        /// The topic
        topic: String,
    },
    /// Change a topic's config
    #[command(after_help = "Examples:
  runnel topic alter orders --retention 3d
  runnel topic alter orders --durability interval --flush-interval 500ms
  runnel topic alter orders --reset retention --reset retention-bytes")]
    Alter(AlterArgs),
    /// Delete a topic and its data
    #[command(after_help = "Examples:
  runnel topic delete orders
  runnel topic delete orders --if-exists")]
    Delete {
        /// The topic
        topic: String,
        /// Succeed if the topic does not exist
        #[arg(long)]
        if_exists: bool,
    },
    /// Add partitions to a topic (existing keys may then map to other partitions)
    #[command(after_help = "Examples:
  runnel topic add-partitions orders --to 6
  runnel topic add-partitions orders --count 2")]
    AddPartitions(AddPartitionsArgs),
}

/// `runnel topic create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The topic's name: 1 to 249 characters of A-Z a-z 0-9 . _ -
    topic: String,
    /// The number of partitions
    #[arg(long, short = 'p', default_value_t = 1)]
    partitions: u32,
    /// Succeed if the topic exists already (its settings are not checked)
    #[arg(long)]
    if_not_exists: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// `runnel topic alter`
#[derive(Debug, Args)]
pub struct AlterArgs {
    /// The topic
    topic: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// Return a setting to the broker's default (repeatable)
    #[arg(long, value_name = "SETTING", value_parser = clap::builder::PossibleValuesParser::new(SETTINGS.map(|(flag, _)| flag)))]
    reset: Vec<String>,
}

/// `runnel topic add-partitions`
#[derive(Debug, Args)]
pub struct AddPartitionsArgs {
    /// The topic
    topic: String,
    /// The partition count wanted in total
    #[arg(
        long,
        value_name = "TOTAL",
        required_unless_present = "count",
        conflicts_with = "count"
    )]
    to: Option<u32>,
    /// How many partitions to add
    #[arg(long, value_name = "N")]
    count: Option<u32>,
}

/// The topic settings, as flags of `create` and `alter`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// How long records are kept (7d, 12h; 0: no time limit)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retention: Option<Duration>,
    /// The most data kept per partition (10GiB; 0: no limit)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    retention_bytes: Option<u64>,
    /// The size at which a segment file is sealed (1GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    segment_bytes: Option<u64>,
    /// The age at which a segment file is sealed (7d; 0: no limit)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    segment_age: Option<Duration>,
    /// The largest batch a producer may send (1MiB; 128B to 16MiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_batch_bytes: Option<u64>,
    /// When appends are fsynced
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// How often the interval durability policy fsyncs (1s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    flush_interval: Option<Duration>,
}

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Every append is fsynced before it is acknowledged
    Always,
    /// A background flusher fsyncs data older than the flush interval
    Interval,
    /// Only sealed segments and shutdown are fsynced
    Never,
}

/// The settings: flag name and protocol field name, in protocol order.
const SETTINGS: [(&str, &str); 7] = [
    ("retention", "retention_ms"),
    ("retention-bytes", "retention_bytes"),
    ("segment-bytes", "segment_bytes"),
    ("segment-age", "segment_ms"),
    ("max-batch-bytes", "max_batch_bytes"),
    ("durability", "durability"),
    ("flush-interval", "flush_interval_ms"),
];

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConfigArgs {
    fn to_config(&self) -> anyhow::Result<TopicConfig> {
        let max_batch_bytes = match self.max_batch_bytes {
            Some(b) => Some(u32::try_from(b).map_err(|_| {
                usage(format!(
                    "--max-batch-bytes {b} is too large (the limit is 16MiB)"
                ))
            })?),
            None => None,
        };
        Ok(TopicConfig {
            retention_ms: self.retention.map(millis),
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_age.map(millis),
            max_batch_bytes,
            durability: self.durability.map(|d| match d {
                DurabilityArg::Always => Durability::Always,
                DurabilityArg::Interval => Durability::Interval,
                DurabilityArg::Never => Durability::Never,
            }),
            flush_interval_ms: self.flush_interval.map(millis),
        })
    }
}

/// Runs a `topic` command.
///
/// # Errors
/// The broker's errors, with what was being done.
pub async fn run(ctx: &Ctx, command: TopicCommand) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    match command {
        TopicCommand::Create(a) => {
            let config = a.config.to_config()?;
            let created = admin.create_topic(&a.topic, a.partitions, config).await;
            let description = match created {
                Ok(d) => d,
                Err(e) if a.if_not_exists && e.code() == Some(ErrorCode::TopicExists) => admin
                    .describe_topic(&a.topic)
                    .await
                    .with_context(|| format!("cannot describe topic {:?}", a.topic))?,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create topic {:?}", a.topic));
                }
            };
            match ctx.output {
                Output::Json => output::print_json(&TopicJson::from(&description))?,
                Output::Table => {
                    let mut out = output::stdout();
                    writeln!(
                        out,
                        "topic {:?} has {} partition(s)",
                        description.name, description.partition_count
                    )?;
                    out.flush()?;
                }
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await.context("cannot list topics")?;
            match ctx.output {
                Output::Json => {
                    let list: Vec<_> = topics
                        .iter()
                        .map(|t| TopicListingJson {
                            name: &t.name,
                            partition_count: t.partition_count,
                        })
                        .collect();
                    output::print_json(&list)?;
                }
                Output::Table => {
                    let mut table = Table::new(&["TOPIC", "PARTITIONS"]);
                    for t in &topics {
                        table.row(vec![t.name.clone(), t.partition_count.to_string()]);
                    }
                    let mut out = output::stdout();
                    table.write(&mut out)?;
                    out.flush()?;
                }
            }
        }
        TopicCommand::Describe { topic } => {
            let d = admin
                .describe_topic(&topic)
                .await
                .with_context(|| format!("cannot describe topic {topic:?}"))?;
            match ctx.output {
                Output::Json => output::print_json(&TopicJson::from(&d))?,
                Output::Table => print_description(&d)?,
            }
        }
        TopicCommand::Alter(a) => {
            let set = a.config.to_config()?;
            if set == TopicConfig::default() && a.reset.is_empty() {
                return Err(usage(
                    "nothing to change: give a setting (such as --retention 7d) or --reset SETTING",
                ));
            }
            let reset: Vec<&str> = a
                .reset
                .iter()
                .filter_map(|r| SETTINGS.iter().find(|(flag, _)| flag == r).map(|(_, f)| *f))
                .collect();
            let altered = admin
                .alter_topic_config(&a.topic, set, &reset)
                .await
                .with_context(|| format!("cannot alter topic {:?}", a.topic))?;
            match ctx.output {
                Output::Json => output::print_json(&AlteredJson {
                    name: &a.topic,
                    config: ConfigJson::from(&altered.config),
                    overrides: &altered.overrides,
                })?,
                Output::Table => {
                    let mut out = output::stdout();
                    config_table(&altered.config, &altered.overrides).write(&mut out)?;
                    out.flush()?;
                }
            }
        }
        TopicCommand::Delete { topic, if_exists } => {
            match admin.delete_topic(&topic).await {
                Ok(()) => {}
                Err(e) if if_exists && e.code() == Some(ErrorCode::UnknownTopic) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete topic {topic:?}"));
                }
            }
            if ctx.output == Output::Table {
                let mut out = output::stdout();
                writeln!(out, "topic {topic:?} deleted")?;
                out.flush()?;
            } else {
                output::print_json(&serde_json::json!({ "name": topic, "deleted": true }))?;
            }
        }
        TopicCommand::AddPartitions(a) => {
            let total = match (a.to, a.count) {
                (Some(to), _) => to,
                (None, Some(n)) => {
                    let d = admin
                        .describe_topic(&a.topic)
                        .await
                        .with_context(|| format!("cannot describe topic {:?}", a.topic))?;
                    d.partition_count.checked_add(n).ok_or_else(|| {
                        usage(format!("--count {n} makes more than 2^32 partitions"))
                    })?
                }
                (None, None) => return Err(usage("give --to TOTAL or --count N")),
            };
            let now = admin
                .create_partitions(&a.topic, total)
                .await
                .with_context(|| format!("cannot add partitions to topic {:?}", a.topic))?;
            match ctx.output {
                Output::Json => output::print_json(&TopicListingJson {
                    name: &a.topic,
                    partition_count: now,
                })?,
                Output::Table => {
                    let mut out = output::stdout();
                    writeln!(out, "topic {:?} has {now} partition(s)", a.topic)?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

fn durability_name(d: Option<Durability>) -> &'static str {
    match d {
        Some(Durability::Always) => "always",
        Some(Durability::Interval) => "interval",
        Some(Durability::Never) => "never",
        None => "",
    }
}

/// The config as a table: setting, value in human form, and where it comes from.
fn config_table(c: &TopicConfig, overrides: &[String]) -> Table {
    let duration = |v: Option<u64>| v.map(format_duration_ms).unwrap_or_default();
    let size = |v: Option<u64>| v.map(format_size_exact).unwrap_or_default();
    let values = [
        duration(c.retention_ms),
        size(c.retention_bytes),
        size(c.segment_bytes),
        duration(c.segment_ms),
        size(c.max_batch_bytes.map(u64::from)),
        durability_name(c.durability).to_owned(),
        duration(c.flush_interval_ms),
    ];
    let mut table = Table::new(&["SETTING", "VALUE", "SOURCE"]);
    for ((flag, field), value) in SETTINGS.iter().zip(values) {
        let source = if overrides.iter().any(|o| o == field) {
            "topic"
        } else {
            "broker default"
        };
        table.row(vec![(*flag).to_owned(), value, source.to_owned()]);
    }
    table
}

fn print_description(d: &TopicDescription) -> std::io::Result<()> {
    let mut out = output::stdout();
    output::write_fields(
        &mut out,
        &[
            ("topic", d.name.clone()),
            ("partitions", d.partition_count.to_string()),
        ],
    )?;
    writeln!(out)?;
    config_table(&d.config, &d.overrides).write(&mut out)?;
    writeln!(out)?;
    let mut table = Table::new(&[
        "PARTITION",
        "LOG START",
        "LOG END",
        "RECORDS",
        "SIZE",
        "SEGMENTS",
        "ERROR",
    ]);
    for p in &d.partitions {
        table.row(vec![
            p.partition.to_string(),
            p.log_start_offset.to_string(),
            p.log_end_offset.to_string(),
            p.log_end_offset
                .saturating_sub(p.log_start_offset)
                .to_string(),
            format_size(p.size_bytes),
            p.segment_count.to_string(),
            p.error
                .as_ref()
                .map(|e| crate::error::one_line(&anyhow::anyhow!(e.clone())))
                .unwrap_or_default(),
        ]);
    }
    table.write(&mut out)?;
    out.flush()
}

#[derive(Serialize)]
struct TopicListingJson<'a> {
    name: &'a str,
    partition_count: u32,
}

#[derive(Serialize)]
struct ConfigJson {
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: Option<u64>,
    segment_ms: Option<u64>,
    max_batch_bytes: Option<u32>,
    durability: Option<&'static str>,
    flush_interval_ms: Option<u64>,
}

impl From<&TopicConfig> for ConfigJson {
    fn from(c: &TopicConfig) -> Self {
        Self {
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            max_batch_bytes: c.max_batch_bytes,
            durability: c.durability.map(|d| durability_name(Some(d))),
            flush_interval_ms: c.flush_interval_ms,
        }
    }
}

#[derive(Serialize)]
struct PartitionJson {
    partition: u32,
    log_start_offset: u64,
    log_end_offset: u64,
    size_bytes: u64,
    segment_count: u32,
    error: Option<String>,
}

#[derive(Serialize)]
struct TopicJson<'a> {
    name: &'a str,
    partition_count: u32,
    config: ConfigJson,
    overrides: &'a [String],
    partitions: Vec<PartitionJson>,
}

impl<'a> From<&'a TopicDescription> for TopicJson<'a> {
    fn from(d: &'a TopicDescription) -> Self {
        Self {
            name: &d.name,
            partition_count: d.partition_count,
            config: ConfigJson::from(&d.config),
            overrides: &d.overrides,
            partitions: d
                .partitions
                .iter()
                .map(|p| PartitionJson {
                    partition: p.partition,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                    segment_count: p.segment_count,
                    error: p.error.as_ref().map(ToString::to_string),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct AlteredJson<'a> {
    name: &'a str,
    config: ConfigJson,
    overrides: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags_become_a_topic_config() {
        let args = ConfigArgs {
            retention: Some(Duration::from_secs(7 * 86_400)),
            retention_bytes: Some(10 << 30),
            segment_bytes: None,
            segment_age: None,
            max_batch_bytes: Some(1 << 20),
            durability: Some(DurabilityArg::Always),
            flush_interval: None,
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.retention_ms, Some(604_800_000));
        assert_eq!(c.retention_bytes, Some(10 << 30));
        assert_eq!(c.max_batch_bytes, Some(1 << 20));
        assert_eq!(c.durability, Some(Durability::Always));
        let mut out = Vec::new();
        config_table(&c, &["retention_ms".to_owned()])
            .write(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("retention        7d      topic\n"), "{text}");
        assert!(
            text.contains("retention-bytes  10GiB   broker default\n"),
            "{text}"
        );
    }
}
