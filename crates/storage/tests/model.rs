//! Property tests: random sequences of appends, reads, seeks, clock ticks, retention, config
//! changes and reopens (clean and crash) run against a `Log` and a simple in-memory model,
//! and every observation of the log is compared with the model's.
//!
//! The model keeps every retained batch exactly as it must be stored (the producer's bytes
//! with `base_offset` and `append_time` rewritten) grouped into segments, and mirrors the
//! rules of `docs/storage-format.md` that decide where segments roll (size, age, full index)
//! and what retention deletes. So reads are checked byte for byte, not only record by record.

mod common;

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use runnel_storage::batch::{BatchBuilder, Record, TimestampType};
use runnel_storage::{Clock, Durability, Error, Log, LogConfig};

use common::{ManualClock, env_with, records};

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct RecSpec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Timestamp relative to the clock at append time.
    ts_delta: i64,
}

#[derive(Debug, Clone)]
struct BatchSpec {
    records: Vec<RecSpec>,
    log_append_time: bool,
}

#[derive(Debug, Clone, Copy)]
enum Bad {
    /// A batch larger than `max_batch_bytes`.
    TooLarge,
    /// A flipped byte inside the CRC-covered records.
    Crc,
    /// A buffer one byte shorter than `batch_length` says.
    Truncated,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<BatchSpec>),
    /// Many tiny one-batch appends with rising timestamps: fills indexes quickly.
    Burst(u8),
    /// A call with valid batches and one bad one: all must be rejected.
    AppendBad(Vec<BatchSpec>, Bad),
    Read {
        at: u64,
        max_bytes: usize,
    },
    Seek {
        delta: i64,
    },
    Tick(i64),
    Retention,
    SetConfig(LogConfig),
    /// Close (if `clean`) or drop the log and open it again; a `power_cut` also forgets that
    /// the files are as this boot left them (the running marker).
    Reopen {
        clean: bool,
        power_cut: bool,
    },
}

fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn rec_strategy() -> impl Strategy<Value = RecSpec> {
    (
        prop::option::weighted(0.8, bytes_strategy(12)),
        prop::option::weighted(0.9, bytes_strategy(300)),
        prop::collection::vec(
            (bytes_strategy(6), prop::option::of(bytes_strategy(6))),
            0..2,
        ),
        -3000i64..3000,
    )
        .prop_map(|(key, value, headers, ts_delta)| RecSpec {
            key,
            value,
            headers,
            ts_delta,
        })
}

fn batch_strategy() -> impl Strategy<Value = BatchSpec> {
    (
        prop::collection::vec(rec_strategy(), 1..5),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(records, log_append_time)| BatchSpec {
            records,
            log_append_time,
        })
}

fn config_strategy() -> impl Strategy<Value = LogConfig> {
    (
        prop::sample::select(vec![4096u64, 8192, 65536, 65536]),
        prop::sample::select(vec![1u32, 1, 64, 512, 4096]),
        prop::sample::select(vec![1024u32, 1024, 1536, 4096, 65536]),
        prop::sample::select(vec![None, Some(1_000u64), Some(6_000)]),
        prop::sample::select(vec![None, Some(2_000u64), Some(20_000)]),
        prop::sample::select(vec![None, Some(8192u64), Some(40_000)]),
        prop::sample::select(vec![1024u32, 4096]),
    )
        .prop_map(
            |(segment_bytes, interval, max_index, seg_age, ret_age, ret_bytes, max_batch)| {
                LogConfig {
                    segment_bytes,
                    segment_age: seg_age.map(Duration::from_millis),
                    retention_age: ret_age.map(Duration::from_millis),
                    retention_bytes: ret_bytes,
                    max_batch_bytes: max_batch,
                    index_interval_bytes: interval,
                    max_index_bytes: max_index,
                    durability: Durability::Never,
                    ..LogConfig::default()
                }
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => prop::collection::vec(batch_strategy(), 1..4).prop_map(Op::Append),
        3 => (20u8..90).prop_map(Op::Burst),
        2 => (
            prop::collection::vec(batch_strategy(), 0..3),
            prop::sample::select(vec![Bad::TooLarge, Bad::Crc, Bad::Truncated]),
        )
            .prop_map(|(b, bad)| Op::AppendBad(b, bad)),
        15 => (any::<u64>(), prop::sample::select(vec![0usize, 1, 100, 700, 2000, 5000, 1 << 20]))
            .prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        5 => (-6000i64..6000).prop_map(|delta| Op::Seek { delta }),
        5 => (0i64..4000).prop_map(Op::Tick),
        3 => Just(Op::Retention),
        3 => config_strategy().prop_map(Op::SetConfig),
        2 => Just(Op::Reopen {
            clean: true,
            power_cut: false
        }),
        2 => Just(Op::Reopen {
            clean: false,
            power_cut: false
        }),
        2 => Just(Op::Reopen {
            clean: false,
            power_cut: true
        }),
    ]
}

fn build(spec: &BatchSpec, now: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    if spec.log_append_time {
        b.timestamp_type(TimestampType::LogAppendTime);
    }
    for r in &spec.records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_deref()))
            .collect();
        b.push(
            r.key.as_deref(),
            r.value.as_deref(),
            &headers,
            now + r.ts_delta,
        );
    }
    b.build()
}

/// What the model knows of one index file pair of the active segment.
#[derive(Debug, Clone)]
struct IdxModel {
    offset_entries: usize,
    time_entries: usize,
    offset_slots: usize,
    time_slots: usize,
    bytes_since_entry: u64,
    max_ts: i64,
    time_last: Option<i64>,
}

impl IdxModel {
    fn new(max_index_bytes: u32) -> Self {
        IdxModel {
            offset_entries: 0,
            time_entries: 0,
            offset_slots: (max_index_bytes as usize / 8).max(2),
            time_slots: (max_index_bytes as usize / 12).max(2),
            bytes_since_entry: 0,
            max_ts: i64::MIN,
            time_last: None,
        }
    }

    fn has_room(&self) -> bool {
        self.offset_entries + 1 < self.offset_slots && self.time_entries + 1 < self.time_slots
    }

    fn on_batch(&mut self, pos: u64, len: u64, ts: i64, interval: u64) {
        self.max_ts = self.max_ts.max(ts);
        if pos > 0 && self.bytes_since_entry >= interval && self.has_room() {
            self.offset_entries += 1;
            if self.time_last.is_none_or(|t| t < self.max_ts) {
                self.time_entries += 1;
                self.time_last = Some(self.max_ts);
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }
}

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    /// Exactly as it must be stored.
    bytes: Bytes,
    records: Vec<Record>,
    effective_max_ts: i64,
    append_time: i64,
}

impl MBatch {
    fn next_offset(&self) -> u64 {
        self.base + self.records.len() as u64
    }
}

#[derive(Debug, Clone)]
struct MSeg {
    base: u64,
    batches: Vec<MBatch>,
    size: u64,
    idx: IdxModel,
}

impl MSeg {
    fn new(base: u64, max_index_bytes: u32) -> Self {
        MSeg {
            base,
            batches: Vec::new(),
            size: 0,
            idx: IdxModel::new(max_index_bytes),
        }
    }

    fn max_ts(&self) -> i64 {
        self.batches
            .iter()
            .map(|b| b.effective_max_ts)
            .max()
            .unwrap_or(i64::MIN)
    }

    fn push(&mut self, b: MBatch, interval: u32) {
        self.idx.on_batch(
            self.size,
            b.bytes.len() as u64,
            b.effective_max_ts,
            u64::from(interval),
        );
        self.size += b.bytes.len() as u64;
        self.batches.push(b);
    }

    /// The indexes as recovery rebuilds them from the batches, with `config`.
    fn rebuild_index(&mut self, config: &LogConfig) {
        let batches = std::mem::take(&mut self.batches);
        self.idx = IdxModel::new(config.max_index_bytes);
        self.size = 0;
        for b in batches {
            self.push(b, config.index_interval_bytes);
        }
    }
}

struct Model {
    segments: Vec<MSeg>,
    end: u64,
    config: LogConfig,
}

impl Model {
    fn start(&self) -> u64 {
        self.segments[0].base
    }

    fn batches(&self) -> impl Iterator<Item = &MBatch> {
        self.segments.iter().flat_map(|s| s.batches.iter())
    }

    fn expected_error(&self, batches: &[Bytes]) -> bool {
        batches
            .iter()
            .any(|b| b.len() > self.config.max_batch_bytes as usize)
    }

    /// Applies an accepted append; returns the base offsets.
    fn append(&mut self, batches: &[Bytes], now: i64) -> Vec<u64> {
        let total: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let active = self.segments.last().expect("a segment");
        let too_big = active.size + total > self.config.segment_bytes;
        let too_old = match (self.config.segment_age, active.batches.first()) {
            (Some(age), Some(first)) => now - first.append_time >= age.as_millis() as i64,
            _ => false,
        };
        if active.size > 0 && (too_big || too_old || !active.idx.has_room()) {
            self.segments
                .push(MSeg::new(self.end, self.config.max_index_bytes));
        }
        let interval = self.config.index_interval_bytes;
        let mut bases = Vec::new();
        for raw in batches {
            let mut stored = raw.to_vec();
            stored[0..8].copy_from_slice(&self.end.to_le_bytes());
            stored[12..20].copy_from_slice(&now.to_le_bytes());
            let stored = Bytes::from(stored);
            let recs = records(&stored);
            let effective_max_ts = recs.iter().map(|r| r.timestamp).max().expect("records");
            let b = MBatch {
                base: self.end,
                bytes: stored,
                records: recs,
                effective_max_ts,
                append_time: now,
            };
            bases.push(self.end);
            self.end = b.next_offset();
            self.segments
                .last_mut()
                .expect("a segment")
                .push(b, interval);
        }
        bases
    }

    fn retention(&mut self, now: i64) -> usize {
        let mut remaining: u64 = self.segments.iter().map(|s| s.size).sum();
        let mut n = 0;
        for s in &self.segments[..self.segments.len() - 1] {
            let expired = self
                .config
                .retention_age
                .is_some_and(|age| s.max_ts() < now - age.as_millis() as i64);
            let oversize = self
                .config
                .retention_bytes
                .is_some_and(|limit| remaining > limit);
            if !(expired || oversize) {
                break;
            }
            remaining -= s.size;
            n += 1;
        }
        self.segments.drain(..n);
        n
    }

    fn offset_for_timestamp(&self, ts: i64) -> Option<u64> {
        self.batches()
            .flat_map(|b| b.records.iter())
            .find(|r| r.timestamp >= ts)
            .map(|r| r.offset)
    }

    fn check_read(&self, log: &Log, from: u64, max_bytes: usize) -> Result<(), TestCaseError> {
        let got = log.read(from, max_bytes);
        let (start, end) = (self.start(), self.end);
        if from < start || from > end {
            match got {
                Err(Error::OffsetOutOfRange {
                    requested,
                    log_start,
                    log_end,
                }) => {
                    prop_assert_eq!((requested, log_start, log_end), (from, start, end));
                    return Ok(());
                }
                other => {
                    return Err(TestCaseError::fail(format!(
                        "read({from}) outside [{start}, {end}] gave {other:?}"
                    )));
                }
            }
        }
        let got =
            got.map_err(|e| TestCaseError::fail(format!("read({from}, {max_bytes}): {e}")))?;
        prop_assert_eq!((got.log_start_offset, got.log_end_offset), (start, end));
        if from == end {
            prop_assert!(got.is_empty());
            prop_assert_eq!(got.next_offset, from);
            return Ok(());
        }
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.base <= from)
            .expect("segment of from");
        let first = seg
            .batches
            .iter()
            .position(|b| b.next_offset() > from)
            .expect("batch of from");
        let want = max_bytes.max(seg.batches[first].bytes.len());
        let mut expected = Vec::new();
        let mut len = 0;
        for b in &seg.batches[first..] {
            if !expected.is_empty() && len + b.bytes.len() > want {
                break;
            }
            len += b.bytes.len();
            expected.push(b);
        }
        let expected_bytes: Vec<u8> = expected
            .iter()
            .flat_map(|b| b.bytes.iter().copied())
            .collect();
        prop_assert_eq!(
            got.len_bytes(),
            expected_bytes.len(),
            "read({}, {}) length; batches {:?}",
            from,
            max_bytes,
            expected.iter().map(|b| b.base).collect::<Vec<_>>()
        );
        prop_assert!(
            common::joined(&got)[..] == expected_bytes[..],
            "read({from}, {max_bytes}) bytes differ"
        );
        let expected_records: Vec<&Record> =
            expected.iter().flat_map(|b| b.records.iter()).collect();
        let got_records = records(&common::joined(&got));
        prop_assert_eq!(got_records.iter().collect::<Vec<_>>(), expected_records);
        prop_assert_eq!(
            got.next_offset,
            expected.last().expect("a batch").next_offset()
        );
        Ok(())
    }

    /// Everything cheap to compare, after every step.
    fn check(&self, log: &Log) -> Result<(), TestCaseError> {
        prop_assert_eq!(log.start_offset(), self.start());
        prop_assert_eq!(log.end_offset(), self.end);
        let bases: Vec<u64> = self.segments.iter().map(|s| s.base).collect();
        prop_assert_eq!(log.segment_base_offsets(), bases);
        let size: u64 = self.segments.iter().map(|s| s.size).sum();
        prop_assert_eq!(log.size_bytes(), size);
        if let Err(e) = log.verify_indexes() {
            return Err(TestCaseError::fail(format!("verify_indexes: {e}")));
        }
        Ok(())
    }

    /// Reads every batch from every offset boundary: used after reopens.
    fn check_everything(&self, log: &Log) -> Result<(), TestCaseError> {
        let offsets: Vec<u64> = self.batches().map(|b| b.base).collect();
        for at in offsets {
            // One batch per read: every batch is located through the indexes.
            self.check_read(log, at, 0)?;
        }
        let stored = common::read_all(log);
        let expected: Vec<&Bytes> = self.batches().map(|b| &b.bytes).collect();
        prop_assert_eq!(stored.iter().collect::<Vec<_>>(), expected);
        Ok(())
    }
}

fn initial_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        segment_age: None,
        retention_age: None,
        retention_bytes: None,
        max_batch_bytes: 4096,
        index_interval_bytes: 256,
        max_index_bytes: 1024,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t/0");
    let clock = ManualClock::new(T0);
    let mut model = Model {
        segments: vec![MSeg::new(0, 1024)],
        end: 0,
        config: initial_config(),
    };
    let mut log =
        Some(Log::open_with(&path, model.config.clone(), env_with(&clock)).expect("open"));
    for (step, op) in ops.iter().enumerate() {
        let l = log.as_ref().expect("open log");
        let now = clock.now_ms();
        match op {
            Op::Append(specs) => {
                let batches: Vec<Bytes> = specs.iter().map(|s| build(s, now)).collect();
                let got = l.append_batches(&batches);
                if model.expected_error(&batches) {
                    prop_assert!(
                        matches!(
                            got,
                            Err(Error::Batch(
                                runnel_storage::batch::Error::BatchTooLarge { .. }
                            ))
                        ),
                        "step {}: expected BatchTooLarge, got {:?}",
                        step,
                        got
                    );
                } else {
                    let got = got.map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    let bases = model.append(&batches, now);
                    prop_assert_eq!(&got.base_offsets, &bases);
                    prop_assert_eq!(got.next_offset, model.end);
                    prop_assert_eq!(got.append_times, vec![now; bases.len()]);
                }
            }
            Op::Burst(n) => {
                for i in 0..*n {
                    let spec = BatchSpec {
                        records: vec![RecSpec {
                            key: Some(vec![i]),
                            value: None,
                            headers: vec![],
                            ts_delta: i64::from(i),
                        }],
                        log_append_time: false,
                    };
                    let batch = build(&spec, now);
                    let got = l
                        .append(batch.clone())
                        .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    let bases = model.append(&[batch], now);
                    prop_assert_eq!(got.base_offsets, bases);
                }
            }
            Op::AppendBad(specs, bad) => {
                let mut batches: Vec<Bytes> = specs.iter().map(|s| build(s, now)).collect();
                let max = model.config.max_batch_bytes as usize;
                let bad_batch = match bad {
                    Bad::TooLarge => {
                        let mut b = BatchBuilder::new();
                        b.push(None, Some(&vec![7u8; max]), &[], now);
                        b.build()
                    }
                    Bad::Crc => {
                        let mut b = build(
                            &BatchSpec {
                                records: vec![RecSpec {
                                    key: None,
                                    value: Some(vec![1, 2, 3]),
                                    headers: vec![],
                                    ts_delta: 0,
                                }],
                                log_append_time: false,
                            },
                            now,
                        )
                        .to_vec();
                        let last = b.len() - 1;
                        b[last] ^= 0x10;
                        Bytes::from(b)
                    }
                    Bad::Truncated => {
                        let b = build(
                            &specs.first().cloned().unwrap_or(BatchSpec {
                                records: vec![RecSpec {
                                    key: None,
                                    value: None,
                                    headers: vec![],
                                    ts_delta: 0,
                                }],
                                log_append_time: false,
                            }),
                            now,
                        );
                        b.slice(..b.len() - 1)
                    }
                };
                let at = batches.len() / 2;
                batches.insert(at, bad_batch);
                let got = l.append_batches(&batches);
                let ok = matches!(
                    (bad, &got),
                    (
                        _,
                        Err(Error::Batch(
                            runnel_storage::batch::Error::BatchTooLarge { .. }
                        ))
                    ) | (
                        Bad::Crc,
                        Err(Error::Batch(
                            runnel_storage::batch::Error::CrcMismatch { .. }
                        ))
                    ) | (
                        Bad::Truncated,
                        Err(Error::Batch(
                            runnel_storage::batch::Error::MalformedBatch { .. }
                        ))
                    )
                );
                prop_assert!(ok, "step {}: {:?} batch gave {:?}", step, bad, got);
            }
            Op::Read { at, max_bytes } => {
                let lo = model.start().saturating_sub(2);
                let hi = model.end + 2;
                let from = lo + at % (hi - lo + 1);
                model.check_read(l, from, *max_bytes)?;
            }
            Op::Seek { delta } => {
                let ts = now + delta;
                let got = l
                    .offset_for_timestamp(ts)
                    .map_err(|e| TestCaseError::fail(format!("offset_for_timestamp: {e}")))?;
                prop_assert_eq!(
                    got,
                    model.offset_for_timestamp(ts),
                    "step {}: seek to {}",
                    step,
                    ts
                );
            }
            Op::Tick(ms) => clock.advance(*ms),
            Op::Retention => {
                let out = l
                    .enforce_retention()
                    .map_err(|e| TestCaseError::fail(format!("retention: {e}")))?;
                let n = model.retention(now);
                prop_assert_eq!(out.segments_deleted, n, "step {}: segments deleted", step);
                prop_assert_eq!(out.log_start_offset, model.start());
            }
            Op::SetConfig(c) => {
                let mut c = c.clone();
                c.max_batch_bytes = c.max_batch_bytes.min(c.segment_bytes as u32);
                l.set_config(c.clone())
                    .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                model.config = c;
            }
            Op::Reopen { clean, power_cut } => {
                let l = log.take().expect("open log");
                if *clean {
                    l.close()
                        .map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
                }
                drop(l);
                if *power_cut {
                    let _ = std::fs::remove_file(path.join(runnel_storage::RUNNING_MARKER));
                }
                let reopened = Log::open_with(&path, model.config.clone(), env_with(&clock))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: reopen: {e}")))?;
                prop_assert!(
                    reopened.repairs().is_empty(),
                    "step {}: reopen (clean: {}) of an undamaged log made repairs: {:?}",
                    step,
                    clean,
                    reopened.repairs()
                );
                // After a power cut the active segment's indexes are rebuilt, sized by the
                // config of the day; after a clean close or a crash in the same boot they are
                // kept as written.
                if *power_cut {
                    let config = model.config.clone();
                    model
                        .segments
                        .last_mut()
                        .expect("a segment")
                        .rebuild_index(&config);
                }
                log = Some(reopened);
                model.check(log.as_ref().expect("open log"))?;
                model.check_everything(log.as_ref().expect("open log"))?;
            }
        }
        let l = log.as_ref().expect("open log");
        model
            .check(l)
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    let l = log.take().expect("open log");
    model.check_everything(&l)?;
    l.close()
        .map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: runnel_fuzz_support::cases(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_agrees_with_the_model(ops in prop::collection::vec(op_strategy(), 1..120)) {
        run(&ops)?;
    }
}
