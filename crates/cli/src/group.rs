//! `runnel group`: list, describe, reset-offsets, delete.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runnel_client::{
    GroupDescription, GroupState, OffsetResetPlan, ResetOffsets, ResetTo, TopicPartition,
};
use serde::Serialize;

use crate::Ctx;
use crate::output::{self, Output, Table};
use crate::parse::{format_duration_ms, parse_time, parse_topic_partitions};

/// `runnel group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state and member count
    #[command(after_help = "Examples:
  runnel group list
  runnel group list --output json")]
    List,
    /// Show a group's state, members, assignments, and per partition the committed offset,
    /// log end and lag
    #[command(after_help = "Examples:
  runnel group describe payment
  runnel group describe payment --output json")]
    Describe {
        /// The group
        group: String,
    },
    /// Move a group's committed offsets: shows the plan, and applies it only with --execute
    #[command(after_help = "Examples:
  runnel group reset-offsets payment --topic orders --to-earliest            # show the plan
  runnel group reset-offsets payment --topic orders --to-earliest --execute  # apply it
  runnel group reset-offsets payment --topic orders:0,2 --to-offset 1000 --execute
  runnel group reset-offsets payment --all-topics --to-time 2024-05-01T00:00:00Z
  runnel group reset-offsets payment --topic orders --shift-by -100 --execute

The group must have no members (stop its consumers first), unless --force is given: then
the members keep reading from their own positions and overwrite the reset offsets when
they next commit.")]
    ResetOffsets(ResetArgs),
    /// Delete a group's committed offsets (the group must have no members)
    #[command(after_help = "Examples:
  runnel group delete payment")]
    Delete {
        /// The group
        group: String,
    },
}

/// `runnel group reset-offsets`
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The group
    group: String,
    /// A topic, or TOPIC:P,P for some of its partitions (repeatable)
    #[arg(long, value_name = "TOPIC[:P,P]", value_parser = parse_topic_partitions,
          required_unless_present = "all_topics", conflicts_with = "all_topics")]
    topic: Vec<(String, Vec<u32>)>,
    /// Every partition the group has a position in (a committed offset; for a share group, a
    /// partition it has read)
    #[arg(long)]
    all_topics: bool,
    #[command(flatten)]
    target: Target,
    /// Apply the plan (without it, nothing changes)
    #[arg(long)]
    execute: bool,
    /// Reset even while the group has members
    #[arg(long)]
    force: bool,
}

impl ResetArgs {
    /// The group named.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// Whether the plan is applied.
    pub(crate) fn execute(&self) -> bool {
        self.execute
    }

    /// The request these flags make.
    pub(crate) fn request(&self) -> ResetOffsets {
        ResetOffsets {
            group: self.group.clone(),
            topics: self.topic.clone(),
            all_topics: self.all_topics,
            to: self.target.to_reset(),
            dry_run: !self.execute,
            force: self.force,
        }
    }
}

/// Where `reset-offsets` moves the offsets: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// To the oldest record still stored
    #[arg(long)]
    to_earliest: bool,
    /// To the log end (skip everything stored)
    #[arg(long)]
    to_latest: bool,
    /// To an offset (clamped to the log)
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<u64>,
    /// To the first record at or after a time (2024-05-01T12:00:00Z, now-1h)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to_time: Option<i64>,
    /// By N from the committed offset (negative moves back)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

impl Target {
    fn to_reset(&self) -> ResetTo {
        match self {
            Self {
                to_latest: true, ..
            } => ResetTo::Latest,
            Self {
                to_offset: Some(o), ..
            } => ResetTo::Offset(*o),
            Self {
                to_time: Some(t), ..
            } => ResetTo::Timestamp(*t),
            Self {
                shift_by: Some(n), ..
            } => ResetTo::ShiftBy(*n),
            // clap requires exactly one; --to-earliest is the one left.
            _ => ResetTo::Earliest,
        }
    }
}

/// Runs a `group` command.
///
/// # Errors
/// The broker's errors, with what was being done.
pub async fn run(ctx: &Ctx, command: GroupCommand) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await.context("cannot list groups")?;
            match ctx.output {
                Output::Json => {
                    let list: Vec<_> = groups
                        .iter()
                        .map(|g| GroupListingJson {
                            group: &g.group,
                            state: state_name(g.state),
                            member_count: g.member_count,
                        })
                        .collect();
                    output::print_json(&list)?;
                }
                Output::Table => {
                    let mut table = Table::new(&["GROUP", "STATE", "MEMBERS"]);
                    for g in &groups {
                        table.row(vec![
                            g.group.clone(),
                            state_name(g.state),
                            g.member_count.to_string(),
                        ]);
                    }
                    let mut out = output::stdout();
                    table.write(&mut out)?;
                    out.flush()?;
                }
            }
        }
        GroupCommand::Describe { group } => {
            let d = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("cannot describe group {group:?}"))?;
            match ctx.output {
                Output::Json => output::print_json(&GroupJson::from(&d))?,
                Output::Table => print_description(&d)?,
            }
        }
        GroupCommand::ResetOffsets(a) => {
            let plan = admin
                .reset_offsets(a.request())
                .await
                .with_context(|| format!("cannot reset the offsets of group {:?}", a.group))?;
            let done = format!("offsets of group {:?} reset", a.group);
            print_plan(
                ctx.output,
                &a.group,
                &plan,
                a.execute.then_some(done.as_str()),
            )?;
        }
        GroupCommand::Delete { group } => {
            admin
                .delete_group(&group)
                .await
                .with_context(|| format!("cannot delete group {group:?}"))?;
            match ctx.output {
                Output::Json => {
                    output::print_json(&serde_json::json!({ "group": group, "deleted": true }))?;
                }
                Output::Table => {
                    let mut out = output::stdout();
                    writeln!(out, "group {group:?} deleted")?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

fn state_name(s: GroupState) -> String {
    match s {
        GroupState::Empty => "EMPTY".to_owned(),
        GroupState::Stable => "STABLE".to_owned(),
        GroupState::Reconciling => "RECONCILING".to_owned(),
        GroupState::Unknown(n) => format!("UNKNOWN({n})"),
    }
}

/// `orders:0,1,2 payments:3`: partitions grouped by topic.
fn partitions_text(tps: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in tps {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut ps)| {
            ps.sort_unstable();
            let list: Vec<String> = ps.iter().map(u32::to_string).collect();
            format!("{topic}:{}", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_description(d: &GroupDescription) -> std::io::Result<()> {
    let mut out = output::stdout();
    output::write_fields(
        &mut out,
        &[
            ("group", d.group.clone()),
            ("state", state_name(d.state)),
            ("generation", d.generation.to_string()),
            ("assignor", d.assignor.clone()),
            ("members", d.members.len().to_string()),
        ],
    )?;
    if !d.members.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&[
            "MEMBER",
            "INSTANCE",
            "CLIENT",
            "HOST",
            "EPOCH",
            "CONNECTED",
            "SESSION",
            "ASSIGNED",
            "REVOKING",
            "PENDING",
        ]);
        for m in &d.members {
            table.row(vec![
                m.member_id.clone(),
                m.instance_id.clone().unwrap_or_else(|| "-".into()),
                m.client_id.clone(),
                m.host.clone(),
                m.member_epoch.to_string(),
                if m.connected { "yes" } else { "no" }.to_owned(),
                format_duration_ms(u64::try_from(m.session_timeout.as_millis()).unwrap_or(0)),
                partitions_text(&m.assigned),
                partitions_text(&m.revoking),
                partitions_text(&m.pending),
            ]);
        }
        table.write(&mut out)?;
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG START",
        "LOG END",
        "LAG",
        "OWNER",
    ]);
    let dash = || "-".to_owned();
    for p in &d.partitions {
        table.row(vec![
            p.topic.clone(),
            p.partition.to_string(),
            p.committed_offset.map_or_else(dash, |o| o.to_string()),
            p.log_start_offset.to_string(),
            p.log_end_offset.to_string(),
            p.lag.map_or_else(dash, |l| l.to_string()),
            p.owner.clone().unwrap_or_else(dash),
        ]);
    }
    table.write(&mut out)?;
    out.flush()
}

/// Prints a reset's plan; `executed` is the note to print when it was applied.
pub(crate) fn print_plan(
    format: Output,
    group: &str,
    plan: &[OffsetResetPlan],
    executed: Option<&str>,
) -> std::io::Result<()> {
    match format {
        Output::Json => output::print_json(&ResetJson {
            group,
            executed: executed.is_some(),
            offsets: plan
                .iter()
                .map(|p| ResetEntryJson {
                    topic: &p.topic,
                    partition: p.partition,
                    previous_offset: p.previous_offset,
                    new_offset: p.new_offset,
                })
                .collect(),
        }),
        Output::Table => {
            let mut out = output::stdout();
            let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT", "NEW", "CHANGE"]);
            for p in plan {
                let change = match p.previous_offset {
                    Some(prev) => {
                        let d = i128::from(p.new_offset) - i128::from(prev);
                        if d > 0 {
                            format!("+{d}")
                        } else {
                            d.to_string()
                        }
                    }
                    None => "-".to_owned(),
                };
                table.row(vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.previous_offset
                        .map_or_else(|| "-".into(), |o| o.to_string()),
                    p.new_offset.to_string(),
                    change,
                ]);
            }
            table.write(&mut out)?;
            out.flush()?;
            // The note goes to stderr so that stdout stays the plan alone.
            let note =
                executed.unwrap_or("dry run: nothing changed; add --execute to apply this plan");
            writeln!(std::io::stderr(), "{note}")
        }
    }
}

#[derive(Serialize)]
struct GroupListingJson<'a> {
    group: &'a str,
    state: String,
    member_count: u32,
}

#[derive(Serialize)]
struct TopicPartitionJson<'a> {
    topic: &'a str,
    partition: u32,
}

fn tps_json(tps: &[TopicPartition]) -> Vec<TopicPartitionJson<'_>> {
    tps.iter()
        .map(|tp| TopicPartitionJson {
            topic: &tp.topic,
            partition: tp.partition,
        })
        .collect()
}

#[derive(Serialize)]
struct MemberJson<'a> {
    member_id: &'a str,
    instance_id: Option<&'a str>,
    client_id: &'a str,
    host: &'a str,
    member_epoch: u32,
    connected: bool,
    session_timeout_ms: u64,
    topics: &'a [String],
    assigned: Vec<TopicPartitionJson<'a>>,
    revoking: Vec<TopicPartitionJson<'a>>,
    pending: Vec<TopicPartitionJson<'a>>,
}

#[derive(Serialize)]
struct GroupPartitionJson<'a> {
    topic: &'a str,
    partition: u32,
    committed_offset: Option<u64>,
    metadata: &'a str,
    log_start_offset: u64,
    log_end_offset: u64,
    lag: Option<u64>,
    owner: Option<&'a str>,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    group: &'a str,
    state: String,
    generation: u64,
    assignor: &'a str,
    members: Vec<MemberJson<'a>>,
    partitions: Vec<GroupPartitionJson<'a>>,
}

impl<'a> From<&'a GroupDescription> for GroupJson<'a> {
    fn from(d: &'a GroupDescription) -> Self {
        Self {
            group: &d.group,
            state: state_name(d.state),
            generation: d.generation,
            assignor: &d.assignor,
            members: d
                .members
                .iter()
                .map(|m| MemberJson {
                    member_id: &m.member_id,
                    instance_id: m.instance_id.as_deref(),
                    client_id: &m.client_id,
                    host: &m.host,
                    member_epoch: m.member_epoch,
                    connected: m.connected,
                    session_timeout_ms: u64::try_from(m.session_timeout.as_millis()).unwrap_or(0),
                    topics: &m.topics,
                    assigned: tps_json(&m.assigned),
                    revoking: tps_json(&m.revoking),
                    pending: tps_json(&m.pending),
                })
                .collect(),
            partitions: d
                .partitions
                .iter()
                .map(|p| GroupPartitionJson {
                    topic: &p.topic,
                    partition: p.partition,
                    committed_offset: p.committed_offset,
                    metadata: &p.metadata,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    lag: p.lag,
                    owner: p.owner.as_deref(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ResetEntryJson<'a> {
    topic: &'a str,
    partition: u32,
    previous_offset: Option<u64>,
    new_offset: u64,
}

#[derive(Serialize)]
struct ResetJson<'a> {
    group: &'a str,
    executed: bool,
    offsets: Vec<ResetEntryJson<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_grouped_by_topic() {
        let tps = [
            TopicPartition::new("orders", 2),
            TopicPartition::new("audit", 0),
            TopicPartition::new("orders", 0),
        ];
        assert_eq!(partitions_text(&tps), "audit:0 orders:0,2");
        assert_eq!(partitions_text(&[]), "");
    }

    #[test]
    fn targets() {
        let t = Target {
            to_earliest: false,
            to_latest: false,
            to_offset: None,
            to_time: None,
            shift_by: Some(-5),
        };
        assert_eq!(t.to_reset(), ResetTo::ShiftBy(-5));
    }
}
