//! `runnel topic`: create, list, describe, alter, delete, add-partitions.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runnel_client::{Durability, ErrorCode, PartitionInfo, TopicConfig, TopicDescription};
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
  runnel topic create orders --partitions 3 --if-not-exists
  runnel topic create events --partitions 6 --retention 90d --remote-storage true --local-retention 1d")]
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
  runnel topic alter orders --remote-storage true --local-retention 12h --local-retention-bytes 1GiB
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
    /// Tiered storage: copy sealed segments to the broker's object store and keep only the
    /// local retention on disk (needs a broker with remote storage)
    #[arg(long, value_name = "BOOL", value_parser = clap::value_parser!(bool))]
    remote_storage: Option<bool>,
    /// With remote storage: how long copied records stay on local disk (1d; 0: as long as
    /// --retention)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    local_retention: Option<Duration>,
    /// With remote storage: the most copied data kept on local disk per partition (1GiB; 0: as
    /// much as --retention-bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    local_retention_bytes: Option<u64>,
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
const SETTINGS: [(&str, &str); 10] = [
    ("retention", "retention_ms"),
    ("retention-bytes", "retention_bytes"),
    ("segment-bytes", "segment_bytes"),
    ("segment-age", "segment_ms"),
    ("max-batch-bytes", "max_batch_bytes"),
    ("durability", "durability"),
    ("flush-interval", "flush_interval_ms"),
    ("remote-storage", "remote_storage"),
    ("local-retention", "local_retention_ms"),
    ("local-retention-bytes", "local_retention_bytes"),
];

/// The protocol field names of `--reset` flag names (clap has checked them against
/// [`SETTINGS`]).
fn reset_fields(flags: &[String]) -> Vec<&'static str> {
    flags
        .iter()
        .filter_map(|r| SETTINGS.iter().find(|(flag, _)| flag == r).map(|(_, f)| *f))
        .collect()
}

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
            remote_storage: self.remote_storage,
            local_retention_ms: self.local_retention.map(millis),
            local_retention_bytes: self.local_retention_bytes,
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
            let reset = reset_fields(&a.reset);
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
        c.remote_storage.map(|b| b.to_string()).unwrap_or_default(),
        duration(c.local_retention_ms),
        size(c.local_retention_bytes),
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
    partition_table(d).write(&mut out)?;
    out.flush()
}

/// Whether a partition has anything in the object store.
fn has_remote_data(p: &PartitionInfo) -> bool {
    p.remote_segment_count > 0
        || p.remote_size_bytes > 0
        || p.remote_log_end_offset > p.remote_log_start_offset
}

/// The partitions as a table: offsets, records, size and segments, and, for a topic with
/// tiered storage on or with remote data, the local and remote parts and the upload lag
/// (left out otherwise, to keep the usual table narrow).
fn partition_table(d: &TopicDescription) -> Table {
    let tiered = d.config.remote_storage == Some(true) || d.partitions.iter().any(has_remote_data);
    let mut table = if tiered {
        Table::new(&[
            "PARTITION",
            "LOG START",
            "LOG END",
            "RECORDS",
            "LOCAL START",
            "LOCAL SIZE",
            "LOCAL SEGMENTS",
            "REMOTE",
            "REMOTE SIZE",
            "REMOTE SEGMENTS",
            "UPLOAD LAG",
            "ERROR",
        ])
    } else {
        Table::new(&[
            "PARTITION",
            "LOG START",
            "LOG END",
            "RECORDS",
            "SIZE",
            "SEGMENTS",
            "ERROR",
        ])
    };
    for p in &d.partitions {
        let mut row = vec![
            p.partition.to_string(),
            p.log_start_offset.to_string(),
            p.log_end_offset.to_string(),
            p.log_end_offset
                .saturating_sub(p.log_start_offset)
                .to_string(),
        ];
        if tiered {
            row.push(p.local_log_start_offset.to_string());
        }
        row.push(format_size(p.size_bytes));
        row.push(p.segment_count.to_string());
        if tiered {
            row.push(if p.remote_log_end_offset > p.remote_log_start_offset {
                format!("{}..{}", p.remote_log_start_offset, p.remote_log_end_offset)
            } else {
                "-".to_owned()
            });
            row.push(format_size(p.remote_size_bytes));
            row.push(p.remote_segment_count.to_string());
            row.push(if p.upload_lag_segments == 0 && p.upload_lag_bytes == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{} ({})",
                    p.upload_lag_segments,
                    format_size(p.upload_lag_bytes)
                )
            });
        }
        row.push(
            p.error
                .as_ref()
                .map(|e| crate::error::one_line(&anyhow::anyhow!(e.clone())))
                .unwrap_or_default(),
        );
        table.row(row);
    }
    table
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
    remote_storage: Option<bool>,
    local_retention_ms: Option<u64>,
    local_retention_bytes: Option<u64>,
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
            remote_storage: c.remote_storage,
            local_retention_ms: c.local_retention_ms,
            local_retention_bytes: c.local_retention_bytes,
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
    local_log_start_offset: u64,
    remote_log_start_offset: u64,
    remote_log_end_offset: u64,
    remote_size_bytes: u64,
    remote_segment_count: u32,
    upload_lag_segments: u32,
    upload_lag_bytes: u64,
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
                    local_log_start_offset: p.local_log_start_offset,
                    remote_log_start_offset: p.remote_log_start_offset,
                    remote_log_end_offset: p.remote_log_end_offset,
                    remote_size_bytes: p.remote_size_bytes,
                    remote_segment_count: p.remote_segment_count,
                    upload_lag_segments: p.upload_lag_segments,
                    upload_lag_bytes: p.upload_lag_bytes,
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

    fn no_flags() -> ConfigArgs {
        ConfigArgs {
            retention: None,
            retention_bytes: None,
            segment_bytes: None,
            segment_age: None,
            max_batch_bytes: None,
            durability: None,
            flush_interval: None,
            remote_storage: None,
            local_retention: None,
            local_retention_bytes: None,
        }
    }

    fn table_text(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn config_flags_become_a_topic_config() {
        let args = ConfigArgs {
            retention: Some(Duration::from_secs(7 * 86_400)),
            retention_bytes: Some(10 << 30),
            max_batch_bytes: Some(1 << 20),
            durability: Some(DurabilityArg::Always),
            remote_storage: Some(true),
            local_retention: Some(Duration::from_secs(12 * 3_600)),
            local_retention_bytes: Some(1 << 30),
            ..no_flags()
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.retention_ms, Some(604_800_000));
        assert_eq!(c.retention_bytes, Some(10 << 30));
        assert_eq!(c.max_batch_bytes, Some(1 << 20));
        assert_eq!(c.durability, Some(Durability::Always));
        assert_eq!(c.remote_storage, Some(true));
        assert_eq!(c.local_retention_ms, Some(43_200_000));
        assert_eq!(c.local_retention_bytes, Some(1 << 30));
        let text = table_text(&config_table(
            &c,
            &["retention_ms".to_owned(), "remote_storage".to_owned()],
        ));
        assert!(
            text.contains("retention              7d      topic\n"),
            "{text}"
        );
        assert!(
            text.contains("retention-bytes        10GiB   broker default\n"),
            "{text}"
        );
        assert!(
            text.contains("remote-storage         true    topic\n"),
            "{text}"
        );
        assert!(
            text.contains("local-retention        12h     broker default\n"),
            "{text}"
        );
        assert!(
            text.contains("local-retention-bytes  1GiB    broker default\n"),
            "{text}"
        );
        assert_eq!(no_flags().to_config().unwrap(), TopicConfig::default());
    }

    #[test]
    fn every_setting_parses_as_a_flag_and_resets_by_its_name() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            topic: TopicCommand,
        }
        let cli = Cli::try_parse_from([
            "topic",
            "alter",
            "t",
            "--remote-storage",
            "false",
            "--local-retention",
            "1d",
            "--local-retention-bytes",
            "512MiB",
            "--reset",
            "local-retention",
            "--reset",
            "remote-storage",
            "--reset",
            "local-retention-bytes",
        ])
        .unwrap();
        let TopicCommand::Alter(a) = cli.topic else {
            panic!("not alter: {cli:?}");
        };
        let c = a.config.to_config().unwrap();
        assert_eq!(c.remote_storage, Some(false));
        assert_eq!(c.local_retention_ms, Some(86_400_000));
        assert_eq!(c.local_retention_bytes, Some(512 << 20));
        assert_eq!(
            reset_fields(&a.reset),
            [
                "local_retention_ms",
                "remote_storage",
                "local_retention_bytes"
            ]
        );
        assert!(Cli::try_parse_from(["topic", "create", "t", "--remote-storage", "yes"]).is_err());
    }

    fn partition(n: u32, log_start: u64, log_end: u64) -> PartitionInfo {
        PartitionInfo {
            partition: n,
            log_start_offset: log_start,
            log_end_offset: log_end,
            size_bytes: 210 << 10,
            segment_count: 1,
            local_log_start_offset: log_start,
            remote_log_start_offset: 0,
            remote_log_end_offset: 0,
            remote_size_bytes: 0,
            remote_segment_count: 0,
            upload_lag_segments: 0,
            upload_lag_bytes: 0,
            error: None,
        }
    }

    fn description(config: TopicConfig, partitions: Vec<PartitionInfo>) -> TopicDescription {
        TopicDescription {
            name: "orders".into(),
            partition_count: u32::try_from(partitions.len()).unwrap(),
            config,
            overrides: Vec::new(),
            partitions,
        }
    }

    #[test]
    fn the_partition_table_stays_narrow_without_remote_data() {
        let d = description(
            TopicConfig {
                remote_storage: Some(false),
                ..TopicConfig::default()
            },
            vec![partition(0, 0, 6667), partition(1, 100, 6600)],
        );
        assert_eq!(
            table_text(&partition_table(&d)),
            "PARTITION  LOG START  LOG END  RECORDS  SIZE     SEGMENTS  ERROR\n\
             0          0          6667     6667     210 KiB  1\n\
             1          100        6600     6500     210 KiB  1\n"
        );
    }

    #[test]
    fn the_partition_table_shows_local_and_remote_parts() {
        let tiered = PartitionInfo {
            size_bytes: 96 << 20,
            segment_count: 3,
            local_log_start_offset: 180_000,
            remote_log_start_offset: 1_200,
            remote_log_end_offset: 200_000,
            remote_size_bytes: 1_288_490_189,
            remote_segment_count: 19,
            upload_lag_segments: 1,
            upload_lag_bytes: 64 << 20,
            ..partition(0, 1_200, 210_000)
        };
        // Remote data shows the columns even after remote storage was turned off.
        let d = description(TopicConfig::default(), vec![tiered, partition(1, 0, 900)]);
        assert_eq!(
            table_text(&partition_table(&d)),
            "PARTITION  LOG START  LOG END  RECORDS  LOCAL START  LOCAL SIZE  LOCAL SEGMENTS  \
             REMOTE        REMOTE SIZE  REMOTE SEGMENTS  UPLOAD LAG  ERROR\n\
             0          1200       210000   208800   180000       96 MiB      3               \
             1200..200000  1.2 GiB      19               1 (64 MiB)\n\
             1          0          900      900      0            210 KiB     1               \
             -             0 B          0                0\n"
        );
        // Remote storage on: the columns show before anything is copied.
        let d = description(
            TopicConfig {
                remote_storage: Some(true),
                ..TopicConfig::default()
            },
            vec![partition(0, 0, 10)],
        );
        assert!(
            table_text(&partition_table(&d))
                .starts_with("PARTITION  LOG START  LOG END  RECORDS  LOCAL START")
        );
    }

    #[test]
    fn json_has_every_partition_field() {
        let d = description(TopicConfig::default(), vec![partition(0, 5, 9)]);
        let v = serde_json::to_value(TopicJson::from(&d)).unwrap();
        let p = &v["partitions"][0];
        for field in [
            "local_log_start_offset",
            "remote_log_start_offset",
            "remote_log_end_offset",
            "remote_size_bytes",
            "remote_segment_count",
            "upload_lag_segments",
            "upload_lag_bytes",
        ] {
            assert!(p[field].is_u64(), "{field}: {p}");
        }
        for field in [
            "remote_storage",
            "local_retention_ms",
            "local_retention_bytes",
        ] {
            assert!(v["config"].get(field).is_some(), "{field}: {v}");
        }
    }
}
