//! What the Kafka listener's batch translation costs: `cargo bench -p runnel-format`.
//!
//! Batches of 100 records of 1 KiB (about 100 KiB each, uncompressed), translated from Kafka's
//! format to Runnel's (`kafka::from_kafka`: CRC-32C check, new header, records copied,
//! CRC-32) and back (`kafka::to_kafka`: new header, records copied, CRC-32C), beside the
//! yardstick: copying the same bytes into a new buffer (`BytesMut::extend_from_slice`). Each
//! figure is the best of `RUNNEL_BENCH_ROUNDS` (5) rounds over `RUNNEL_BENCH_BYTES` (1 GiB).
//! `cargo test --benches` runs it with tiny sizes as a smoke test.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use runnel_format::{BatchBuilder, kafka};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The best rate of `rounds` runs of `f` over `bytes` bytes, GB/s.
fn best(rounds: u64, bytes: u64, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then stay tiny.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let total = if smoke {
        1 << 20
    } else {
        env("RUNNEL_BENCH_BYTES", 1 << 30)
    };
    let rounds = if smoke {
        1
    } else {
        env("RUNNEL_BENCH_ROUNDS", 5)
    };

    let mut b = BatchBuilder::new();
    let value = vec![b'v'; 1024];
    for i in 0..100 {
        b.push(None, Some(&value), &[], 1_700_000_000_000 + i);
    }
    let runnel = b.build();
    let mut k = BytesMut::new();
    kafka::to_kafka(&runnel, &mut k).expect("a valid batch");
    let kafka_batch: Bytes = k.freeze();
    let n = (total / runnel.len() as u64).max(1);
    let bytes = n * runnel.len() as u64;

    let copy = best(rounds, bytes, || {
        for _ in 0..n {
            let mut out = BytesMut::with_capacity(runnel.len());
            out.extend_from_slice(&runnel);
            black_box(out);
        }
    });
    let from = best(rounds, bytes, || {
        for _ in 0..n {
            black_box(kafka::from_kafka(&kafka_batch).expect("translates"));
        }
    });
    let to = best(rounds, bytes, || {
        let mut out = BytesMut::with_capacity(kafka_batch.len());
        for _ in 0..n {
            out.clear();
            kafka::to_kafka(&runnel, &mut out).expect("translates");
            black_box(&out);
        }
    });
    println!("batches of 100 x 1 KiB records, {n} batches, best of {rounds} rounds");
    println!(
        "{:<44} {:>8.2} GB/s",
        "yardstick: copy into a new buffer", copy
    );
    println!(
        "{:<44} {:>8.2} GB/s",
        "Kafka -> Runnel (produce over Kafka)", from
    );
    println!(
        "{:<44} {:>8.2} GB/s",
        "Runnel -> Kafka (fetch over Kafka)", to
    );
}
