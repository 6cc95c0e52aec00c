//! Record batches for tests, built with the one implementation of the format
//! (`runnel_format::BatchBuilder`), and their records read back.

use bytes::Bytes;
use runnel_format::{BatchBuilder, RecordBatch};

/// A batch of `n` records with keys `key-i`, values `value-i` and timestamps `ts + i`.
pub fn batch(n: u32, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(
            Some(format!("key-{i}").as_bytes()),
            Some(format!("value-{i}").as_bytes()),
            &[],
            ts + i64::from(i),
        );
    }
    b.build()
}

/// A batch of keyless records with values `"{tag}-{i}"` for `i` in `from..from + n`, so that
/// what a test reads back names what it wrote.
pub fn batch_of(tag: &str, from: u64, n: u64) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in from..from + n {
        // Test counts stay far below i64::MAX.
        let ts = 1_700_000_000_000 + i as i64;
        b.push(None, Some(format!("{tag}-{i}").as_bytes()), &[], ts);
    }
    b.build()
}

/// An idempotent producer's batch of `n` keyless records: producer `id`, `epoch`, and base
/// sequence `seq`.
pub fn idempotent_batch(n: u32, id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    b.producer(id, epoch, seq);
    for i in 0..n {
        b.push(
            None,
            Some(format!("v{seq}-{i}").as_bytes()),
            &[],
            1_000 + i64::from(i),
        );
    }
    b.build()
}

/// The values of every record in stored (uncompressed) batches, in order, skipping offsets
/// below `from` (a read may start inside its first batch).
///
/// # Panics
///
/// If a batch or record is malformed or a record has no value.
pub fn values(batches: &[Bytes], from: u64) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let batch = RecordBatch::new(b.clone(), usize::MAX).expect("a valid stored batch");
        for r in batch.records().expect("records") {
            let r = r.expect("a valid record");
            if r.offset >= from {
                out.push(String::from_utf8_lossy(&r.value.expect("a value")).into_owned());
            }
        }
    }
    out
}
