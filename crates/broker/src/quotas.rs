//! Quotas per principal and per client id: produce bytes, fetch bytes and requests per
//! second, enforced by delaying answers rather than failing them, as Kafka does
//! (`docs/operations.md`, "Quotas").
//!
//! Every client id has its own pacer per quota, a virtual clock in the manner of the generic
//! cell rate algorithm: each request moves it on by its cost (`amount / rate`), starting at
//! the present when it lags behind. How far the clock runs ahead of the present, less the
//! burst a client may use at once (`quotas.burst_ms`), is how long the answer waits, at most
//! `quotas.max_throttle_ms`; the clock keeps the whole debt, so a client held at the cap
//! pays the rest with its next requests.
//!
//! Whose pacers a call charges ([`Owner`]): its principal's, when the principal has quotas of
//! its own (every call of that principal then shares them, whatever client id it names);
//! else its client id's. The rates are that owner's override, set through the admin API and
//! kept in `<data_dir>/quotas.toml`, or else the defaults of `[quotas]`; 0 is no limit.
//!
//! Locks here are held for a map lookup or a clock update, never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::QuotaSettings;
use crate::error::{Error, RpcError};
use crate::files::{read_toml, write_toml};
use crate::metrics;

/// The file, in the data directory, of the quotas set through the admin API.
const FILE: &str = "quotas.toml";

/// One of the three quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Batch bytes a client produces per second.
    ProduceBytes,
    /// Batch bytes a client is sent per second, by fetches and subscriptions.
    FetchBytes,
    /// Calls, and requests on a `ProduceStream`, per second.
    Requests,
}

impl Quota {
    /// The name used in metrics labels and config keys.
    pub fn name(self) -> &'static str {
        match self {
            Quota::ProduceBytes => "produce_bytes",
            Quota::FetchBytes => "fetch_bytes",
            Quota::Requests => "requests",
        }
    }

    fn index(self) -> usize {
        match self {
            Quota::ProduceBytes => 0,
            Quota::FetchBytes => 1,
            Quota::Requests => 2,
        }
    }
}

/// The rates of one client id's override: each one set replaces the default; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Produce bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_sec: Option<u64>,
    /// Fetch bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<u64>,
}

impl Rates {
    /// The rate this override sets for `quota`, if it sets one.
    pub fn get(&self, quota: Quota) -> Option<u64> {
        match quota {
            Quota::ProduceBytes => self.produce_bytes_per_sec,
            Quota::FetchBytes => self.fetch_bytes_per_sec,
            Quota::Requests => self.requests_per_sec,
        }
    }
}

/// Whose quotas: a principal's, or a client id's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// A principal (`User:<name>`): every call it makes, whatever its client id.
    Principal(Arc<str>),
    /// A client id, as its calls name it (`""` for calls that name none).
    Client(Arc<str>),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Principal(p) => write!(f, "principal {p}"),
            Owner::Client(c) => write!(f, "client id {c:?}"),
        }
    }
}

/// The contents of `quotas.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    #[serde(default)]
    clients: BTreeMap<String, Rates>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    principals: BTreeMap<String, Rates>,
}

impl Stored {
    fn into_overrides(self) -> BTreeMap<Owner, Rates> {
        let principals = self
            .principals
            .into_iter()
            .map(|(p, r)| (Owner::Principal(p.into()), r));
        let clients = self
            .clients
            .into_iter()
            .map(|(c, r)| (Owner::Client(c.into()), r));
        principals.chain(clients).collect()
    }

    fn from_overrides(overrides: &BTreeMap<Owner, Rates>) -> Self {
        let mut stored = Stored::default();
        for (owner, rates) in overrides {
            match owner {
                Owner::Principal(p) => stored.principals.insert(p.to_string(), *rates),
                Owner::Client(c) => stored.clients.insert(c.to_string(), *rates),
            };
        }
        stored
    }
}

/// The quotas of every principal and client id, and the pacers of those seen lately.
#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    path: PathBuf,
    overrides: RwLock<BTreeMap<Owner, Rates>>,
    /// Serializes changes of the overrides with the writes of their file.
    changes: Mutex<()>,
    clients: Mutex<Clients>,
}

/// The pacers of owners, forgotten once idle and paid up.
#[derive(Debug, Default)]
struct Clients {
    by_id: HashMap<Owner, Arc<Pacers>>,
    /// The size at which idle entries are next pruned.
    prune_at: usize,
}

/// The fewest client ids kept before idle ones are pruned.
const PRUNE_MIN: usize = 1024;

/// The virtual clocks of one client id, by [`Quota::index`]; `None` is paid up.
#[derive(Debug, Default)]
struct Pacers {
    clocks: Mutex<[Option<Instant>; 3]>,
}

/// Who makes a call, as far as quotas go: the owner whose quotas it pays, and that owner's
/// pacers. Made once per call by [`Quotas::caller`].
#[derive(Debug, Clone)]
pub struct Caller {
    owner: Owner,
    pacers: Arc<Pacers>,
}

impl Quotas {
    /// The quotas with the defaults of `settings` and the overrides stored in `data_dir`.
    ///
    /// # Errors
    /// [`Error::Io`] if `quotas.toml` exists but cannot be read, [`Error::Metadata`] if it
    /// does not parse.
    pub fn open(data_dir: &Path, settings: QuotaSettings) -> Result<Self, Error> {
        let path = data_dir.join(FILE);
        let stored: Stored = read_toml(&path)?;
        Ok(Quotas {
            settings,
            path,
            overrides: RwLock::new(stored.into_overrides()),
            changes: Mutex::new(()),
            clients: Mutex::new(Clients {
                by_id: HashMap::new(),
                prune_at: PRUNE_MIN,
            }),
        })
    }

    /// The caller `principal` with client id `client_id` (already checked against
    /// [`MAX_CLIENT_ID_BYTES`]): paying its principal's quotas if it has its own, else its
    /// client id's.
    pub fn caller(&self, principal: &str, client_id: &str) -> Caller {
        let owner = {
            let overrides = self
                .overrides
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Principals sort first: without any, no lookup (and no key to build) per call.
            let principals = matches!(overrides.keys().next(), Some(Owner::Principal(_)));
            let own = principals
                .then(|| overrides.get_key_value(&Owner::Principal(Arc::from(principal))))
                .flatten();
            match own {
                Some((owner, _)) => owner.clone(),
                None => Owner::Client(Arc::from(client_id)),
            }
        };
        let mut clients = lock(&self.clients);
        if let Some(pacers) = clients.by_id.get(&owner) {
            return Caller {
                pacers: pacers.clone(),
                owner,
            };
        }
        if clients.by_id.len() >= clients.prune_at {
            let now = Instant::now();
            clients
                .by_id
                .retain(|_, p| Arc::strong_count(p) > 1 || p.owes(now));
            clients.prune_at = (clients.by_id.len() * 2).max(PRUNE_MIN);
        }
        let caller = Caller {
            owner,
            pacers: Arc::default(),
        };
        clients
            .by_id
            .insert(caller.owner.clone(), caller.pacers.clone());
        caller
    }

    /// Charges `amount` (bytes, or requests) to `caller` under `quota`, and gives how long
    /// its answer must wait: zero while the caller stays within its rate and burst.
    pub fn charge(&self, caller: &Caller, quota: Quota, amount: u64) -> Duration {
        let rate = self.rate(&caller.owner, quota);
        if rate == 0 || amount == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(amount as f64 / rate as f64);
        let now = Instant::now();
        let ahead = {
            let mut clocks = lock(&caller.pacers.clocks);
            let clock = &mut clocks[quota.index()];
            let from = clock.filter(|t| *t > now).unwrap_or(now);
            let to = from + cost;
            *clock = Some(to);
            to - now
        };
        let burst = Duration::from_millis(self.settings.burst_ms);
        let delay = ahead
            .saturating_sub(burst)
            .min(Duration::from_millis(self.settings.max_throttle_ms));
        if !delay.is_zero() {
            metrics::quota_throttled(quota.name(), delay);
        }
        delay
    }

    /// [`Quotas::charge`], then the wait.
    pub async fn pace(&self, caller: &Caller, quota: Quota, amount: u64) {
        let delay = self.charge(caller, quota, amount);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The rate of `quota` for `owner`: its override, or the default; 0 is no limit.
    pub fn rate(&self, owner: &Owner, quota: Quota) -> u64 {
        let overrides = self
            .overrides
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        overrides
            .get(owner)
            .and_then(|r| r.get(quota))
            .unwrap_or_else(|| self.default_rate(quota))
    }

    /// The default rate of `quota` (`[quotas]`); 0 is no limit.
    pub fn default_rate(&self, quota: Quota) -> u64 {
        match quota {
            Quota::ProduceBytes => self.settings.produce_bytes_per_sec,
            Quota::FetchBytes => self.settings.fetch_bytes_per_sec,
            Quota::Requests => self.settings.requests_per_sec,
        }
    }

    /// `set` with the defaults in place of the rates it leaves unset.
    pub fn effective(&self, set: &Rates) -> Rates {
        let rate = |q: Quota| Some(set.get(q).unwrap_or_else(|| self.default_rate(q)));
        Rates {
            produce_bytes_per_sec: rate(Quota::ProduceBytes),
            fetch_bytes_per_sec: rate(Quota::FetchBytes),
            requests_per_sec: rate(Quota::Requests),
        }
    }

    /// Every override: principals' first, then client ids'.
    pub fn overrides(&self) -> BTreeMap<Owner, Rates> {
        self.overrides
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the override of `owner` to `rates` (replacing any earlier one), or removes it
    /// with `None`; durable before it returns. True if something changed. Blocking (an
    /// fsync).
    ///
    /// # Errors
    /// `DISK_FULL` or `INTERNAL` if `quotas.toml` cannot be written; nothing changes then.
    pub fn set(&self, owner: &Owner, rates: Option<Rates>) -> Result<bool, RpcError> {
        let _changes = lock(&self.changes);
        let mut next = self.overrides();
        let changed = match rates {
            Some(r) => next.insert(owner.clone(), r) != Some(r),
            None => next.remove(owner).is_some(),
        };
        if !changed {
            return Ok(false);
        }
        write_toml(&self.path, &Stored::from_overrides(&next))?;
        *self
            .overrides
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(true)
    }
}

impl Pacers {
    /// Whether any clock still runs ahead of `now`.
    fn owes(&self, now: Instant) -> bool {
        lock(&self.clocks).iter().flatten().any(|t| *t > now)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: &str = "User:ANONYMOUS";

    fn client(id: &str) -> Owner {
        Owner::Client(Arc::from(id))
    }

    #[test]
    fn a_principal_with_quotas_pays_them_whatever_client_id_it_names() {
        let (dir, q) = quotas(settings(0));
        let alice = Owner::Principal(Arc::from("User:alice"));
        let limited = Rates {
            produce_bytes_per_sec: Some(1000),
            ..Rates::default()
        };
        assert!(q.set(&alice, Some(limited)).unwrap());
        let (a, b) = (q.caller("User:alice", "a"), q.caller("User:alice", "b"));
        assert_eq!(
            q.charge(&a, Quota::ProduceBytes, 1000),
            Duration::ZERO,
            "the burst"
        );
        assert!(
            !q.charge(&b, Quota::ProduceBytes, 500).is_zero(),
            "one budget"
        );
        let bob = q.caller("User:bob", "a");
        assert_eq!(q.charge(&bob, Quota::ProduceBytes, 1 << 30), Duration::ZERO);
        let reopened = Quotas::open(dir.path(), settings(0)).unwrap();
        assert_eq!(reopened.overrides(), q.overrides(), "durable");
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.contains("[principals.\"User:alice\"]"), "{text}");
    }

    fn quotas(settings: QuotaSettings) -> (tempfile::TempDir, Quotas) {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(dir.path(), settings).unwrap();
        (dir, q)
    }

    fn settings(produce: u64) -> QuotaSettings {
        QuotaSettings {
            produce_bytes_per_sec: produce,
            burst_ms: 1000,
            max_throttle_ms: 10_000,
            ..QuotaSettings::default()
        }
    }

    #[test]
    fn within_the_rate_and_burst_nothing_waits_past_it_the_wait_is_the_excess() {
        let (_d, q) = quotas(settings(1000));
        let c = q.caller(ANON, "app");
        assert_eq!(
            q.charge(&c, Quota::ProduceBytes, 1000),
            Duration::ZERO,
            "the burst"
        );
        let wait = q.charge(&c, Quota::ProduceBytes, 500);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(
            q.charge(&c, Quota::FetchBytes, 1 << 30),
            Duration::ZERO,
            "no limit"
        );
    }

    #[test]
    fn a_wait_is_capped_but_the_debt_is_kept() {
        let (_d, q) = quotas(settings(1000));
        let c = q.caller(ANON, "app");
        assert_eq!(
            q.charge(&c, Quota::ProduceBytes, 60_000),
            Duration::from_secs(10)
        );
        assert_eq!(
            q.charge(&c, Quota::ProduceBytes, 1),
            Duration::from_secs(10),
            "still 49 s in debt"
        );
    }

    #[test]
    fn client_ids_are_paced_apart_and_overrides_replace_defaults() {
        let (dir, q) = quotas(settings(1000));
        assert!(
            q.set(
                &client("bulk"),
                Some(Rates {
                    produce_bytes_per_sec: Some(0),
                    requests_per_sec: Some(5),
                    ..Rates::default()
                })
            )
            .unwrap()
        );
        let (app, bulk) = (q.caller(ANON, "app"), q.caller(ANON, "bulk"));
        q.charge(&app, Quota::ProduceBytes, 5000);
        assert_eq!(
            q.charge(&bulk, Quota::ProduceBytes, 1 << 30),
            Duration::ZERO
        );
        assert!(!q.charge(&app, Quota::ProduceBytes, 1).is_zero());
        assert_eq!(q.rate(&client("bulk"), Quota::Requests), 5);
        assert_eq!(q.rate(&client("app"), Quota::Requests), 0);

        let reopened = Quotas::open(dir.path(), settings(1000)).unwrap();
        assert_eq!(reopened.overrides(), q.overrides(), "durable");
        assert!(q.set(&client("bulk"), None).unwrap());
        assert!(!q.set(&client("bulk"), None).unwrap(), "nothing to remove");
        assert_eq!(q.rate(&client("bulk"), Quota::ProduceBytes), 1000);
    }

    #[test]
    fn idle_paid_up_client_ids_are_forgotten() {
        let (_d, q) = quotas(settings(1_000_000));
        let kept = q.caller(ANON, "kept");
        for i in 0..3 * PRUNE_MIN {
            let c = q.caller(ANON, &format!("c{i}"));
            q.charge(&c, Quota::ProduceBytes, 1);
        }
        let held = lock(&q.clients).by_id.len();
        assert!(held <= 2 * PRUNE_MIN, "{held} client ids held");
        assert!(
            lock(&q.clients).by_id.contains_key(&client("kept")),
            "in use"
        );
        drop(kept);
    }

    #[test]
    fn a_bad_quotas_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "[clients.x]\nproduce = 1\n").unwrap();
        let e = Quotas::open(dir.path(), settings(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("quotas.toml"), "{e}");
    }
}
