//! What Runnel's fuzz targets (proptest, `docs/reliability.md`) share: [`Edit`], damage to a
//! buffer as a proptest strategy, and [`config`], the run configuration with the case count
//! that `PROPTEST_CASES` overrides and the file failing cases are saved in.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

/// One change to a buffer; positions are fractions of its length, so that one strategy
/// serves buffers of any size.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Sets the byte at this fraction of the length.
    Set(f64, u8),
    /// Cuts the buffer at this fraction.
    Truncate(f64),
    /// Inserts bytes at this fraction.
    Insert(f64, Vec<u8>),
    /// Removes up to this many bytes at this fraction.
    Remove(f64, usize),
    /// Replaces the whole buffer.
    Replace(Vec<u8>),
}

impl Edit {
    /// Applies the change to `bytes`.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
        match self {
            Edit::Set(f, b) => {
                if !bytes.is_empty() {
                    let i = at(*f, bytes.len() - 1);
                    bytes[i] = *b;
                }
            }
            Edit::Truncate(f) => bytes.truncate(at(*f, bytes.len())),
            Edit::Insert(f, b) => {
                let i = at(*f, bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Remove(f, n) => {
                let i = at(*f, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Replace(b) => bytes.clone_from(b),
        }
    }
}

/// Edits, mostly single bytes set to values that break lengths, varints and flags.
pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        8 => (0.0..1.0, prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()])
            .prop_map(|(at, b)| Edit::Set(at, b)),
        2 => (0.0..1.0).prop_map(Edit::Truncate),
        2 => (0.0..1.0, vec(any::<u8>(), 1..80)).prop_map(|(at, b)| Edit::Insert(at, b)),
        2 => (0.0..1.0, 1usize..200).prop_map(|(at, n)| Edit::Remove(at, n)),
        1 => vec(any::<u8>(), 0..300).prop_map(Edit::Replace),
    ]
}

/// Applies `edits` in order.
pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        e.apply(bytes);
    }
}

/// The number of cases: `PROPTEST_CASES` if set (long runs by hand), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of the cases a run generates unless `PROPTEST_RNG_SEED` gives another: CI runs
/// the same cases every time, so that it fails only on a change, never by chance.
pub const SEED: u64 = 0x5eed_f022_c0ff_ee00;

/// A fuzz target's configuration: [`cases`] of `default_cases`, generated from [`SEED`] or
/// `PROPTEST_RNG_SEED` (set it to explore new cases: long runs), failing cases saved in
/// `regressions` (relative to the crate, committed with the fix) and replayed first.
pub fn config(default_cases: u32, regressions: &'static str) -> ProptestConfig {
    let mut config = ProptestConfig {
        cases: cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}
