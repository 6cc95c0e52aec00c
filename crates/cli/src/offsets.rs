//! `runnel offsets TOPIC`: each partition's earliest and latest offsets, and with `--time`
//! the offset for a time.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Args;
use runnel_client::{Admin, ErrorCode, ListedOffset, OffsetSpec};
use serde::Serialize;

use crate::Ctx;
use crate::error::not_found;
use crate::output::{self, Output, Table};
use crate::parse::{format_time_ms, parse_time};

/// Examples for `--help`.
pub const EXAMPLES: &str = "Examples:
  runnel offsets orders
  runnel offsets orders --partition 0 --time 2024-05-01T12:00:00Z
  runnel offsets orders --time now-1h --output json";

/// `runnel offsets`
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    /// The topic
    topic: String,
    /// Only these partitions (repeatable; default: all)
    #[arg(long, short = 'p', value_name = "PARTITION")]
    partition: Vec<u32>,
    /// Also look up the offset of the first record at or after this time
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    time: Option<i64>,
}

/// The partitions to work on: the listed ones (checked against the topic), or all.
///
/// # Errors
/// Not found for the topic or a partition it does not have.
pub async fn select_partitions(
    admin: &Admin,
    topic: &str,
    listed: &[u32],
) -> anyhow::Result<Vec<u32>> {
    let d = match admin.describe_topic(topic).await {
        Ok(d) => d,
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            return Err(not_found(format!(
                "topic {topic:?} does not exist; create it with `runnel topic create {topic}`"
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot describe topic {topic:?}")),
    };
    if listed.is_empty() {
        return Ok((0..d.partition_count).collect());
    }
    let mut out = listed.to_vec();
    out.sort_unstable();
    out.dedup();
    if let Some(p) = out.iter().find(|p| **p >= d.partition_count) {
        return Err(not_found(format!(
            "partition {p} of topic {topic:?} does not exist: the topic has partitions 0 to {}",
            d.partition_count.saturating_sub(1)
        )));
    }
    Ok(out)
}

/// Looks up one spec for each partition, in order.
///
/// # Errors
/// The call's error, or the first partition's own error.
pub async fn lookup(
    admin: &Admin,
    topic: &str,
    partitions: &[u32],
    spec: OffsetSpec,
) -> anyhow::Result<Vec<ListedOffset>> {
    let queries: Vec<(&str, u32, OffsetSpec)> =
        partitions.iter().map(|p| (topic, *p, spec)).collect();
    let mut out = Vec::with_capacity(partitions.len());
    // The broker takes at most `fetch_max_partitions` (1024) queries per call.
    for chunk in queries.chunks(1000) {
        let results = admin
            .list_offsets(chunk)
            .await
            .with_context(|| format!("cannot look up offsets of topic {topic:?}"))?;
        for r in results {
            out.push(r.with_context(|| format!("cannot look up offsets of topic {topic:?}"))?);
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct AtTimeJson {
    offset: u64,
    timestamp_ms: Option<i64>,
}

#[derive(Serialize)]
struct PartitionOffsetsJson {
    partition: u32,
    earliest: u64,
    latest: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_time: Option<AtTimeJson>,
}

/// Runs `runnel offsets`.
///
/// # Errors
/// Not found for the topic or a partition; the broker's errors.
pub async fn run(ctx: &Ctx, a: OffsetsArgs) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    let partitions = select_partitions(&admin, &a.topic, &a.partition).await?;
    let earliest = lookup(&admin, &a.topic, &partitions, OffsetSpec::Earliest).await?;
    let latest = lookup(&admin, &a.topic, &partitions, OffsetSpec::Latest).await?;
    let at_time = match a.time {
        Some(t) => Some(lookup(&admin, &a.topic, &partitions, OffsetSpec::Timestamp(t)).await?),
        None => None,
    };
    let rows: Vec<PartitionOffsetsJson> = partitions
        .iter()
        .enumerate()
        .map(|(i, p)| PartitionOffsetsJson {
            partition: *p,
            earliest: earliest[i].offset,
            latest: latest[i].offset,
            at_time: at_time.as_ref().map(|t| AtTimeJson {
                offset: t[i].offset,
                timestamp_ms: t[i].timestamp_ms,
            }),
        })
        .collect();
    match ctx.output {
        Output::Json => output::print_json(&rows)?,
        Output::Table => {
            let mut header = vec!["PARTITION", "EARLIEST", "LATEST"];
            if a.time.is_some() {
                header.extend(["AT TIME", "RECORD TIME"]);
            }
            let mut table = Table::new(&header);
            for r in &rows {
                let mut row = vec![
                    r.partition.to_string(),
                    r.earliest.to_string(),
                    r.latest.to_string(),
                ];
                if let Some(t) = &r.at_time {
                    row.push(t.offset.to_string());
                    row.push(
                        t.timestamp_ms.map_or_else(
                            || "- (none after; the log end)".to_owned(),
                            format_time_ms,
                        ),
                    );
                }
                table.row(row);
            }
            let mut out = output::stdout();
            table.write(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
