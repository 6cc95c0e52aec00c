//! Where an offset reset moves partitions: the checks of its target and partition list, and
//! the plan, shared by consumer groups (committed offsets) and share groups (share-partition
//! start offsets).

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_proto::pb::{self, OffsetBoundary, reset_offsets_request::Target};

use super::assignor::Tp;
use crate::error::RpcError;
use crate::partition::{Partition, PartitionFailure};
use crate::topics::Topics;

/// One partition's move: from `previous` (if it had a position) to `new`, clamped to its log.
pub struct Move {
    /// The partition.
    pub tp: Tp,
    /// Where it was.
    pub previous: Option<u64>,
    /// Where it goes.
    pub new: u64,
    /// The partition itself.
    pub partition: Arc<Partition>,
}

/// The target of a request, checked.
///
/// # Errors
/// `INVALID_REQUEST` for none, or a boundary that is not one.
pub fn target(target: Option<Target>) -> Result<Target, RpcError> {
    let Some(target) = target else {
        return Err(RpcError::invalid(
            "target: set one of boundary, offset, timestamp_ms, shift_by",
        ));
    };
    if let Target::Boundary(b) = target
        && !matches!(
            OffsetBoundary::try_from(b),
            Ok(OffsetBoundary::Earliest | OffsetBoundary::Latest)
        )
    {
        return Err(RpcError::invalid(format!(
            "boundary {b} is not a boundary; use OFFSET_BOUNDARY_EARLIEST (1) or OFFSET_BOUNDARY_LATEST (2)"
        )));
    }
    Ok(target)
}

/// The partitions a request lists (an entry without partitions: all of its topic's), or with
/// `all_topics` those of `known` whose topic still exists.
///
/// # Errors
/// `INVALID_REQUEST` unless exactly one of the list and `all_topics` is given;
/// `UNKNOWN_TOPIC`, `UNKNOWN_PARTITION` naming the entry.
pub fn partitions<'a>(
    topics: &Topics,
    list: &[pb::TopicPartitions],
    all_topics: bool,
    known: impl Iterator<Item = &'a Tp>,
) -> Result<BTreeMap<Tp, Arc<Partition>>, RpcError> {
    if all_topics != list.is_empty() {
        return Err(RpcError::invalid(
            "set either topics or all_topics (and not both)",
        ));
    }
    let mut selected = BTreeMap::new();
    if all_topics {
        for tp in known {
            if let Ok(p) = topics.get(&tp.0).and_then(|t| t.partition(tp.1)) {
                selected.insert(tp.clone(), p);
            }
        }
        return Ok(selected);
    }
    for (i, t) in list.iter().enumerate() {
        let topic = topics
            .get(&t.topic)
            .map_err(|e| e.at(&format!("topics[{i}]")))?;
        let numbers: Vec<u32> = if t.partitions.is_empty() {
            (0..topic.partition_count()).collect()
        } else {
            t.partitions.clone()
        };
        for p in numbers {
            let part = topic
                .partition(p)
                .map_err(|e| e.at(&format!("topics[{i}]")))?;
            selected.insert((t.topic.clone(), p), part);
        }
    }
    Ok(selected)
}

/// Where each selected partition goes, from its current position (`current`). Blocking (a
/// timestamp target reads the time index).
///
/// # Errors
/// `INVALID_REQUEST` for `shift_by` on a partition without a position; a storage error.
pub fn plan(
    selected: BTreeMap<Tp, Arc<Partition>>,
    target: Target,
    current: impl Fn(&Tp) -> Option<u64>,
) -> Result<Vec<Move>, RpcError> {
    let mut plan = Vec::with_capacity(selected.len());
    for (tp, p) in selected {
        let (start, end) = (p.start_offset(), p.end_offset());
        let previous = current(&tp);
        let wanted = match target {
            Target::Boundary(b) if b == OffsetBoundary::Earliest as i32 => start,
            Target::Boundary(_) => end,
            Target::Offset(o) => o,
            Target::TimestampMs(ts) => p
                .offset_for_time(ts)
                .map_err(|e| e.to_rpc(&p))?
                .map_or(end, |(o, _)| o),
            Target::ShiftBy(n) => {
                let Some(base) = previous else {
                    return Err(RpcError::invalid(format!(
                        "shift_by: {}/{} has no position to shift",
                        tp.0, tp.1
                    )));
                };
                let shifted = i128::from(base) + i128::from(n);
                u64::try_from(shifted.max(0)).unwrap_or(u64::MAX)
            }
        };
        plan.push(Move {
            tp,
            previous,
            new: wanted.clamp(start, end.max(start)),
            partition: p,
        });
    }
    Ok(plan)
}

/// The answer's entries for a plan.
pub fn resets(plan: &[Move]) -> Vec<pb::OffsetReset> {
    plan.iter()
        .map(|m| pb::OffsetReset {
            topic: m.tp.0.clone(),
            partition: m.tp.1,
            previous_offset: m.previous,
            new_offset: m.new,
        })
        .collect()
}
