//! Partition assignment strategies, as pure functions: given the members (with their
//! subscriptions), the partition counts of the subscribed topics and the current assignment,
//! compute the target assignment. The coordinator then moves partitions towards it
//! cooperatively (revoke first, assign once released).
//!
//! - [`Assignor::Sticky`] (the default) keeps every partition with its current owner while
//!   balance allows and moves as few as needed: on a join, the new member takes partitions
//!   from the most loaded members only; on a leave, only the leaver's partitions move.
//! - [`Assignor::Range`] gives each member a contiguous range of each topic's partitions
//!   (Kafka's `RangeAssignor`), so members get the same partition numbers of co-partitioned
//!   topics.
//! - [`Assignor::RoundRobin`] deals all partitions, sorted by topic and number, to the members
//!   in turn (Kafka's `RoundRobinAssignor`).
//!
//! Every strategy is deterministic: the result depends on the members' sort keys (the static
//! instance id, else the member id), never on the order of the input.

use std::collections::{BTreeMap, BTreeSet};

/// A topic and partition.
pub type Tp = (String, u32);

/// An assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Balanced, moving as few partitions as possible.
    Sticky,
    /// Contiguous ranges per topic.
    Range,
    /// Round-robin over all partitions.
    RoundRobin,
}

impl Assignor {
    /// The strategy for a name from `JoinGroup.assignor`: `""` or `"sticky"`, `"range"`,
    /// `"roundrobin"`. `None` for any other name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "" | "sticky" => Some(Assignor::Sticky),
            "range" => Some(Assignor::Range),
            "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Sticky => "sticky",
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }
}

/// A member as the assignors see it.
#[derive(Debug, Clone)]
pub struct MemberSpec<'a> {
    /// The member id, which the result names.
    pub id: &'a str,
    /// What members are ordered by: the static instance id, else the member id.
    pub sort_key: &'a str,
    /// The subscribed topics.
    pub topics: &'a BTreeSet<String>,
}

/// Computes the target assignment: every partition of a topic that at least one member
/// subscribes to, mapped to one subscribed member's id.
///
/// `partitions` maps each topic to its partition count (topics that do not exist are absent
/// or 0); `current` is the previous target, which only [`Assignor::Sticky`] uses.
pub fn assign(
    assignor: Assignor,
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
    current: &BTreeMap<Tp, String>,
) -> BTreeMap<Tp, String> {
    let mut sorted: Vec<&MemberSpec<'_>> = members.iter().collect();
    sorted.sort_by(|a, b| (a.sort_key, a.id).cmp(&(b.sort_key, b.id)));
    match assignor {
        Assignor::Sticky => sticky(&sorted, partitions, current),
        Assignor::Range => range(&sorted, partitions),
        Assignor::RoundRobin => round_robin(&sorted, partitions),
    }
}

/// Every partition of the topics some member subscribes to, sorted.
fn subscribed_partitions(
    members: &[&MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
) -> Vec<Tp> {
    partitions
        .iter()
        .filter(|(topic, _)| members.iter().any(|m| m.topics.contains(*topic)))
        .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
        .collect()
}

fn range(members: &[&MemberSpec<'_>], partitions: &BTreeMap<String, u32>) -> BTreeMap<Tp, String> {
    let mut out = BTreeMap::new();
    for (topic, &count) in partitions {
        let subscribed: Vec<_> = members
            .iter()
            .filter(|m| m.topics.contains(topic))
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let n = subscribed.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subscribed.iter().enumerate() {
            let len = per + u32::from((i as u32) < extra);
            for p in next..next + len {
                out.insert((topic.clone(), p), m.id.to_owned());
            }
            next += len;
        }
    }
    out
}

fn round_robin(
    members: &[&MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<Tp, String> {
    let mut out = BTreeMap::new();
    let mut next = 0usize;
    for tp in subscribed_partitions(members, partitions) {
        // At least one member subscribes to tp's topic (subscribed_partitions), so the
        // search finds one within members.len() steps.
        for step in 0..members.len() {
            let i = (next + step) % members.len();
            if members[i].topics.contains(&tp.0) {
                out.insert(tp, members[i].id.to_owned());
                next = i + 1;
                break;
            }
        }
    }
    out
}

fn sticky(
    members: &[&MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
    current: &BTreeMap<Tp, String>,
) -> BTreeMap<Tp, String> {
    // Index of each member in sort order; ties in load are broken by it.
    let index: BTreeMap<&str, usize> = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let mut owned: Vec<BTreeSet<Tp>> = vec![BTreeSet::new(); members.len()];
    let mut unassigned = Vec::new();
    // 1. Keep every partition whose current owner is still a member subscribed to its topic.
    for tp in subscribed_partitions(members, partitions) {
        match current.get(&tp).and_then(|id| index.get(id.as_str())) {
            Some(&i) if members[i].topics.contains(&tp.0) => {
                owned[i].insert(tp);
            }
            _ => unassigned.push(tp),
        }
    }
    // The least loaded member subscribed to `topic` (lowest index among equals).
    let least_loaded = |owned: &[BTreeSet<Tp>], topic: &str| -> Option<usize> {
        (0..members.len())
            .filter(|&i| members[i].topics.contains(topic))
            .min_by_key(|&i| (owned[i].len(), i))
    };
    // 2. Give each partition without an owner to the least loaded eligible member.
    for tp in unassigned {
        if let Some(i) = least_loaded(&owned, &tp.0) {
            owned[i].insert(tp);
        }
    }
    // 3. Balance: move a partition from a member to an eligible one holding at least two
    //    fewer, most loaded donors first, until no such move exists. Each move lowers the sum
    //    of squared loads, so this ends; with equal subscriptions it ends with loads differing
    //    by at most one, having moved only partitions above the balanced share.
    loop {
        let mut donors: Vec<usize> = (0..members.len()).collect();
        donors.sort_by_key(|&i| (std::cmp::Reverse(owned[i].len()), i));
        let found = donors.iter().find_map(|&d| {
            // Give away the highest-numbered partitions first, so low ones stay put.
            owned[d].iter().rev().find_map(|tp| {
                least_loaded(&owned, &tp.0)
                    .filter(|&r| owned[d].len() > owned[r].len() + 1)
                    .map(|r| (d, r, tp.clone()))
            })
        });
        match found {
            Some((d, r, tp)) => {
                owned[d].remove(&tp);
                owned[r].insert(tp);
            }
            None => break,
        }
    }
    owned
        .into_iter()
        .enumerate()
        .flat_map(|(i, tps)| {
            tps.into_iter()
                .map(move |tp| (tp, members[i].id.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Members {
        ids: Vec<String>,
        topics: Vec<BTreeSet<String>>,
    }

    impl Members {
        fn new(ids: &[&str], topics: &[&[&str]]) -> Self {
            Members {
                ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                topics: topics
                    .iter()
                    .map(|t| t.iter().map(|s| (*s).to_owned()).collect())
                    .collect(),
            }
        }

        fn same(ids: &[&str], topics: &[&str]) -> Self {
            Self::new(ids, &vec![topics; ids.len()])
        }

        fn specs(&self) -> Vec<MemberSpec<'_>> {
            self.ids
                .iter()
                .zip(&self.topics)
                .map(|(id, topics)| MemberSpec {
                    id,
                    sort_key: id,
                    topics,
                })
                .collect()
        }
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn loads(a: &BTreeMap<Tp, String>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in a.values() {
            *out.entry(m.clone()).or_default() += 1;
        }
        out
    }

    fn moved(a: &BTreeMap<Tp, String>, b: &BTreeMap<Tp, String>) -> usize {
        b.iter().filter(|(tp, m)| a.get(*tp) != Some(*m)).count()
    }

    const ALL: [Assignor; 3] = [Assignor::Sticky, Assignor::Range, Assignor::RoundRobin];

    #[test]
    fn names_parse_and_sticky_is_the_default() {
        assert_eq!(Assignor::parse(""), Some(Assignor::Sticky));
        for a in ALL {
            assert_eq!(Assignor::parse(a.name()), Some(a));
        }
        assert_eq!(Assignor::parse("cooperative-sticky"), None);
    }

    #[test]
    fn every_strategy_balances_and_assigns_every_partition_once() {
        let topics = counts(&[("a", 12), ("b", 5)]);
        for n in 1..=7 {
            let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let m = Members::same(&refs, &["a", "b"]);
            for a in ALL {
                let out = assign(a, &m.specs(), &topics, &BTreeMap::new());
                assert_eq!(out.len(), 17, "{a:?} with {n} members");
                let l = loads(&out);
                if a != Assignor::Range {
                    let (min, max) = (
                        l.values().min().copied().unwrap_or(0),
                        l.values().max().copied().unwrap_or(0),
                    );
                    let min = if l.len() < n { 0 } else { min };
                    assert!(max - min <= 1, "{a:?} with {n} members: {l:?}");
                }
            }
        }
        // 12 partitions over 3 members: 4 each with every strategy.
        let m = Members::same(&["x", "y", "z"], &["a"]);
        for a in ALL {
            let out = assign(a, &m.specs(), &counts(&[("a", 12)]), &BTreeMap::new());
            assert!(loads(&out).values().all(|&c| c == 4), "{a:?}");
        }
    }

    #[test]
    fn results_are_deterministic_whatever_the_input_order() {
        let topics = counts(&[("a", 10), ("b", 3)]);
        let m = Members::new(&["m2", "m0", "m1"], &[&["a", "b"], &["a"], &["a", "b"]]);
        let mut reversed = m.specs();
        reversed.reverse();
        for a in ALL {
            let one = assign(a, &m.specs(), &topics, &BTreeMap::new());
            let two = assign(a, &reversed, &topics, &BTreeMap::new());
            assert_eq!(one, two, "{a:?}");
            assert_eq!(
                one,
                assign(a, &m.specs(), &topics, &one.clone()),
                "{a:?} is stable"
            );
        }
    }

    #[test]
    fn sticky_moves_only_what_balance_requires() {
        let topics = counts(&[("t", 12)]);
        let three = Members::same(&["a", "b", "c"], &["t"]);
        let before = assign(Assignor::Sticky, &three.specs(), &topics, &BTreeMap::new());

        // A fourth member takes exactly one partition from each of the others.
        let four = Members::same(&["a", "b", "c", "d"], &["t"]);
        let after = assign(Assignor::Sticky, &four.specs(), &topics, &before);
        assert_eq!(moved(&before, &after), 3);
        assert!(loads(&after).values().all(|&c| c == 3), "{after:?}");
        for (tp, m) in &after {
            assert!(
                m == "d" || before[tp] == *m,
                "{tp:?} moved from {} to {m}",
                before[tp]
            );
        }

        // When a member leaves, only its partitions move, spread over the others.
        let without_b = Members::same(&["a", "c", "d"], &["t"]);
        let later = assign(Assignor::Sticky, &without_b.specs(), &topics, &after);
        assert_eq!(moved(&after, &later), 3);
        for (tp, m) in &after {
            if m != "b" {
                assert_eq!(&later[tp], m);
            }
        }
        assert!(loads(&later).values().all(|&c| c == 4));
    }

    #[test]
    fn sticky_gives_new_partitions_to_the_least_loaded() {
        let m = Members::same(&["a", "b"], &["t"]);
        let before = assign(
            Assignor::Sticky,
            &m.specs(),
            &counts(&[("t", 4)]),
            &BTreeMap::new(),
        );
        let after = assign(Assignor::Sticky, &m.specs(), &counts(&[("t", 6)]), &before);
        assert_eq!(
            moved(&before, &after),
            2,
            "only the new partitions are placed"
        );
        assert!(loads(&after).values().all(|&c| c == 3));
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let topics = counts(&[("a", 4), ("b", 4), ("c", 2)]);
        let m = Members::new(&["m0", "m1", "m2"], &[&["a"], &["a", "b"], &["b"]]);
        for strategy in ALL {
            let out = assign(strategy, &m.specs(), &topics, &BTreeMap::new());
            assert_eq!(out.len(), 8, "{strategy:?}: c has no subscriber");
            for ((topic, _), member) in &out {
                let i = m.ids.iter().position(|id| id == member).unwrap();
                assert!(
                    m.topics[i].contains(topic),
                    "{strategy:?}: {member} got {topic}"
                );
            }
        }
        // Sticky balances across the overlap: 8 partitions, about 3/3/2.
        let out = assign(Assignor::Sticky, &m.specs(), &topics, &BTreeMap::new());
        let l = loads(&out);
        assert!(
            l.values().max().unwrap() - l.values().min().unwrap() <= 1,
            "{l:?}"
        );
    }

    #[test]
    fn range_gives_contiguous_co_partitioned_ranges() {
        let m = Members::same(&["a", "b", "c"], &["x", "y"]);
        let out = assign(
            Assignor::Range,
            &m.specs(),
            &counts(&[("x", 7), ("y", 7)]),
            &BTreeMap::new(),
        );
        let of = |t: &str, m: &str| -> Vec<u32> {
            out.iter()
                .filter(|((topic, _), member)| topic == t && *member == m)
                .map(|((_, p), _)| *p)
                .collect()
        };
        assert_eq!(of("x", "a"), [0, 1, 2]);
        assert_eq!(of("x", "b"), [3, 4]);
        assert_eq!(of("x", "c"), [5, 6]);
        for member in ["a", "b", "c"] {
            assert_eq!(of("x", member), of("y", member));
        }
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let m = Members::same(&["a", "b"], &["x", "y"]);
        let out = assign(
            Assignor::RoundRobin,
            &m.specs(),
            &counts(&[("x", 3), ("y", 2)]),
            &BTreeMap::new(),
        );
        let order: Vec<&str> = out.values().map(String::as_str).collect();
        assert_eq!(order, ["a", "b", "a", "b", "a"]);
    }

    #[test]
    fn static_members_are_ordered_by_instance_id() {
        let topics: BTreeSet<String> = ["t".to_owned()].into();
        let specs = [
            MemberSpec {
                id: "m-1",
                sort_key: "zeta",
                topics: &topics,
            },
            MemberSpec {
                id: "m-2",
                sort_key: "alpha",
                topics: &topics,
            },
        ];
        let out = assign(
            Assignor::Range,
            &specs,
            &counts(&[("t", 2)]),
            &BTreeMap::new(),
        );
        assert_eq!(out[&("t".to_owned(), 0)], "m-2");
    }
}
