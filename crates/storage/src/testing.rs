//! Helpers shared by the storage engine's unit tests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

use crate::batch::{BatchBuilder, Batches};
use crate::{Clock, Durability, Log, LogConfig, LogEnv, ReadResult};

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock(pub AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A batch of `n` keyed records of `value_len` bytes, timestamped `ts`, `ts + 1`, ...
pub fn batch(n: u32, ts: i64, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    let value = vec![b'v'; value_len];
    for i in 0..n {
        b.push(
            Some(format!("k{i}").as_bytes()),
            Some(&value),
            &[],
            ts + i64::from(i),
        );
    }
    b.build()
}

/// 4 KiB segments and batches, an index entry every 256 bytes, no fsyncs, no retention.
pub fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        index_interval_bytes: 256,
        durability: Durability::Never,
        retention_age: None,
        ..LogConfig::default()
    }
}

/// A log with a [`ManualClock`] starting at `now`.
pub fn with_clock(dir: &Path, config: LogConfig, now: i64) -> (Log, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock(AtomicI64::new(now)));
    let env = LogEnv {
        clock: clock.clone(),
        ..LogEnv::default()
    };
    (Log::open_with(dir, config, env).unwrap(), clock)
}

/// The offsets of every record read.
pub fn offsets_in(read: &ReadResult) -> Vec<u64> {
    read.batches
        .iter()
        .flat_map(|b| Batches::new(b.clone()).map(Result::unwrap))
        .flat_map(|b| b.records().unwrap().map(|r| r.unwrap().offset))
        .collect()
}
