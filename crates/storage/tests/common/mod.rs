//! Helpers shared by the storage integration tests: a manual clock, batch builders, a seeded
//! random source and a full-log reader.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use runnel_storage::batch::{BatchBuilder, Batches, Record};
use runnel_storage::{Clock, Log, LogConfig, LogEnv, ReadResult};

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(now_ms)))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn env_with(clock: &Arc<ManualClock>) -> LogEnv {
    LogEnv {
        clock: clock.clone(),
        ..LogEnv::default()
    }
}

/// A small, seeded, dependency-free random source (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A batch of `n` records with keys `k<seed>-<i>`, values of `value_len` bytes and timestamps
/// `ts, ts+1, ...`.
pub fn batch(seed: u64, n: u32, value_len: usize, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let key = format!("k{seed}-{i}");
        let value: Vec<u8> = (0..value_len)
            .map(|j| {
                (seed as usize)
                    .wrapping_mul(31)
                    .wrapping_add(j + i as usize) as u8
            })
            .collect();
        b.push(
            Some(key.as_bytes()),
            Some(&value),
            &[(b"h", Some(b"v"))],
            ts + i64::from(i),
        );
    }
    b.build()
}

/// Reads the whole log from its start: the stored bytes of every batch, in order.
pub fn read_all(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = log.start_offset();
    while at < log.end_offset() {
        let r = log.read(at, 64 << 10).expect("read");
        assert!(
            !r.is_empty(),
            "empty read at {at} below end {}",
            log.end_offset()
        );
        for b in r.batches.iter().flat_map(|b| Batches::new(b.clone())) {
            out.push(b.expect("stored batch checks").bytes().clone());
        }
        assert!(r.next_offset > at);
        at = r.next_offset;
    }
    out
}

/// The batches of a read back to back, as they lie in the segment.
pub fn joined(r: &ReadResult) -> Bytes {
    r.batches.concat().into()
}

/// Decodes every record in `data`.
pub fn records(data: &Bytes) -> Vec<Record> {
    let mut out = Vec::new();
    for b in Batches::new(data.clone()) {
        let b = b.expect("batch checks");
        for r in b.records().expect("uncompressed") {
            out.push(r.expect("record decodes"));
        }
    }
    out
}

/// Path of a segment file in `dir`.
pub fn seg_file(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// A config that rolls often and indexes densely, with retention off and no fsync per append.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_age: None,
        retention_age: None,
        retention_bytes: None,
        max_batch_bytes: 4096,
        index_interval_bytes: 256,
        max_index_bytes: 1024,
        durability: runnel_storage::Durability::Never,
        ..LogConfig::default()
    }
}
