//! Slowing repeated failed authentications, per claimed principal and client address.
//!
//! After `n` failures of one (principal, address) pair, its attempts are spaced by
//! `failure_delay × 2^(n-1)`, at most `max_failure_delay`: each attempt reserves the next
//! slot and waits for it, so concurrent guesses queue up instead of running together. A
//! success forgets the pair; so does a quiet spell of [`FORGET_AFTER`]. The table is bounded:
//! past [`MAX_ENTRIES`] pairs, the quiet ones are pruned, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a pair's failures are remembered without a new one.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The most pairs remembered.
pub const MAX_ENTRIES: usize = 65_536;

/// The failures of one pair.
#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// The earliest time of the next attempt.
    next: Instant,
    last_failure: Instant,
}

/// The failed authentications of recent (principal, address) pairs.
#[derive(Debug)]
pub struct Failures {
    base: Duration,
    max: Duration,
    pairs: Mutex<HashMap<(String, Option<IpAddr>), Entry>>,
}

impl Failures {
    /// Spacing attempts by `base`, doubled per failure up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Failures {
            base,
            max,
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// The spacing after `failures` failures.
    fn spacing(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// How long an attempt by `principal` from `addr` must wait: zero without failures.
    /// Reserves the slot, so the next attempt waits longer.
    pub fn wait(&self, principal: &str, addr: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let mut pairs = lock(&self.pairs);
        let key = (principal.to_owned(), addr);
        let Some(e) = pairs.get_mut(&key) else {
            return Duration::ZERO;
        };
        if now.duration_since(e.last_failure) >= FORGET_AFTER && e.next <= now {
            pairs.remove(&key);
            return Duration::ZERO;
        }
        let slot = e.next.max(now);
        e.next = slot + self.spacing(e.failures);
        slot - now
    }

    /// Counts a failure of `principal` from `addr`.
    pub fn failed(&self, principal: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut pairs = lock(&self.pairs);
        if pairs.len() >= MAX_ENTRIES {
            prune(&mut pairs, now);
        }
        let e = pairs.entry((principal.to_owned(), addr)).or_insert(Entry {
            failures: 0,
            next: now,
            last_failure: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next = e.next.max(now + self.spacing(e.failures));
    }

    /// Forgets the failures of `principal` from `addr` after a success.
    pub fn succeeded(&self, principal: &str, addr: Option<IpAddr>) {
        let mut pairs = lock(&self.pairs);
        if !pairs.is_empty() {
            pairs.remove(&(principal.to_owned(), addr));
        }
    }
}

/// Drops the quiet pairs; if none is quiet, the oldest half.
fn prune(pairs: &mut HashMap<(String, Option<IpAddr>), Entry>, now: Instant) {
    pairs.retain(|_, e| now.duration_since(e.last_failure) < FORGET_AFTER);
    if pairs.len() >= MAX_ENTRIES {
        let mut times: Vec<Instant> = pairs.values().map(|e| e.last_failure).collect();
        times.sort_unstable();
        let cut = times[times.len() / 2];
        pairs.retain(|_, e| e.last_failure > cut);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn attempts_are_spaced_more_after_each_failure_and_freed_by_a_success() {
        let f = Failures::new(100 * MS, 1000 * MS);
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(f.wait("User:a", ip), Duration::ZERO);
        f.failed("User:a", ip);
        let first = f.wait("User:a", ip);
        assert!(first > 90 * MS && first <= 100 * MS, "{first:?}");
        f.failed("User:a", ip);
        f.failed("User:a", ip);
        // The reserved slot and then two failures: the next attempt waits for 400 ms more.
        let later = f.wait("User:a", ip);
        assert!(later > 390 * MS, "{later:?}");
        let queued = f.wait("User:a", ip);
        assert!(queued > later + 390 * MS, "{queued:?} after {later:?}");
        assert_eq!(
            f.wait("User:a", Some(IpAddr::from([10, 0, 0, 2]))),
            Duration::ZERO
        );
        assert_eq!(f.wait("User:b", ip), Duration::ZERO);
        f.succeeded("User:a", ip);
        assert_eq!(f.wait("User:a", ip), Duration::ZERO);
    }

    #[test]
    fn the_spacing_is_capped() {
        let f = Failures::new(100 * MS, 1000 * MS);
        assert_eq!(f.spacing(1), 100 * MS);
        assert_eq!(f.spacing(4), 800 * MS);
        assert_eq!(f.spacing(5), 1000 * MS);
        assert_eq!(f.spacing(u32::MAX), 1000 * MS);
    }

    #[test]
    fn the_table_stays_bounded() {
        let f = Failures::new(MS, MS);
        for i in 0..MAX_ENTRIES + 10 {
            f.failed(&format!("User:{i}"), None);
        }
        assert!(lock(&f.pairs).len() <= MAX_ENTRIES);
    }
}
