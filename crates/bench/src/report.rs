//! The result of a bench run, as text for people and as one JSON object for scripts.
//!
//! JSON fields (every figure in base units named by the field; MB is 10^6 bytes):
//!
//! | field | meaning |
//! |-------|---------|
//! | `mode` | `produce`, `consume`, `e2e`, `disk`, `net`, `sync`, `paced` or `cpu` |
//! | `records`, `bytes`, `seconds` | what was measured: records acknowledged (produce), consumed (consume, e2e), answered (sync) or delivered to the consumer in messages (paced), their value bytes, and the time it took |
//! | `records_per_sec`, `mb_per_sec` | `records / seconds`, `bytes / seconds / 10^6` |
//! | `latency_ms` | `{p50, p90, p99, p999, max, mean, count}`: produce-to-ack (produce), produce-to-consume (e2e), request to answer (sync), message send to consumer (paced), the gaps of 50 µs or more in which a spinning thread did not run (cpu); `null` when nothing was timed |
//! | `ack_latency_ms` | e2e: produce-to-ack; paced: message-to-answer; same shape |
//! | `errors` | records that failed |
//! | `broker_rss_kib` | with `--broker-pid`: `{start, max, end, samples}` of the broker's VmRSS |
//! | `cpu_us_per_record` | produce, consume, e2e: `{client, broker, other}`, the CPU microseconds per measured record of the bench's process, of the broker's (with `--broker-pid`, else `null`) and of the rest of the machine (with `--broker-pid`), each from its own `/proc` counters over the measured part; `null` for the other modes |
//! | `details` | mode-specific figures (for example the disk write and fsync split; for sync `fsyncs`, `records_per_fsync`, `fsync_mean_us`; for paced `messages`, `answered`, `records_per_message`, `message_bytes`, `period_us`; for cpu `lost_percent`, `gaps`, `gaps_over_1ms`; for consume `first_record_ms`, the time to the first record) |
//! | `config` | the settings of the run |

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::proc_cpu::CpuPerRecord;
use serde_json::{Value, json};

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest value.
    pub max: f64,
    /// The mean.
    pub mean: f64,
    /// How many values were recorded.
    pub count: u64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds; `None` if it is empty.
    pub fn from_micros(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        })
    }

    fn to_json(self) -> Value {
        json!({
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p999": round3(self.p999),
            "max": round3(self.max),
            "mean": round3(self.mean),
            "count": self.count,
        })
    }

    fn to_text(self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (ms, {} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// A histogram of microseconds from 1 µs to an hour, three significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5):
    // this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant histogram bounds")
}

/// The broker's resident memory over a run, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    /// Before the load started.
    pub start: u64,
    /// The largest sample.
    pub max: u64,
    /// After the load ended.
    pub end: u64,
    /// Samples taken (one a second, plus start and end).
    pub samples: u64,
}

/// The outcome of one bench run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The mode's name.
    pub mode: &'static str,
    /// Records measured.
    pub records: u64,
    /// Bytes measured (record values, or raw bytes for `disk` and `net`).
    pub bytes: u64,
    /// Seconds the measured part took.
    pub seconds: f64,
    /// The headline latency.
    pub latency: Option<Latency>,
    /// What `latency` measures, for the text output.
    pub latency_label: &'static str,
    /// Produce-to-ack latency of an e2e run (`paced`: message to answer).
    pub ack_latency: Option<Latency>,
    /// What `ack_latency` measures, for the text output.
    pub ack_latency_label: &'static str,
    /// Records that failed.
    pub errors: u64,
    /// The broker's memory, when sampled.
    pub rss: Option<Rss>,
    /// CPU per record over the measured part, for the load modes.
    pub cpu: Option<CpuPerRecord>,
    /// Mode-specific figures.
    pub details: Vec<(&'static str, Value)>,
    /// The settings of the run.
    pub config: Vec<(&'static str, Value)>,
}

impl Report {
    /// An empty report for `mode`.
    pub fn new(mode: &'static str) -> Self {
        Self {
            mode,
            records: 0,
            bytes: 0,
            seconds: 0.0,
            latency: None,
            latency_label: "",
            ack_latency: None,
            ack_latency_label: "produce to ack",
            errors: 0,
            rss: None,
            cpu: None,
            details: Vec::new(),
            config: Vec::new(),
        }
    }

    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        per_sec(self.records as f64, self.seconds)
    }

    /// Millions of bytes per second.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.seconds)
    }

    /// The report as one JSON object (see the module's table).
    pub fn to_json(&self) -> Value {
        let object = |pairs: &[(&'static str, Value)]| {
            Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            )
        };
        json!({
            "mode": self.mode,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "records_per_sec": self.records_per_sec().round(),
            "mb_per_sec": round3(self.mb_per_sec()),
            "latency_ms": self.latency.map(Latency::to_json),
            "ack_latency_ms": self.ack_latency.map(Latency::to_json),
            "errors": self.errors,
            "broker_rss_kib": self.rss.map(|r| json!({
                "start": r.start, "max": r.max, "end": r.end, "samples": r.samples,
            })),
            "cpu_us_per_record": self.cpu.map(CpuPerRecord::to_json),
            "details": object(&self.details),
            "config": object(&self.config),
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "mode        {}", self.mode);
        if self.records > 0 {
            let _ = writeln!(
                s,
                "measured    {} records, {} bytes in {:.3} s",
                self.records, self.bytes, self.seconds
            );
            let _ = writeln!(
                s,
                "throughput  {:.0} records/s, {:.1} MB/s",
                self.records_per_sec(),
                self.mb_per_sec()
            );
        } else if self.bytes > 0 {
            let _ = writeln!(
                s,
                "measured    {} bytes in {:.3} s: {:.1} MB/s",
                self.bytes,
                self.seconds,
                self.mb_per_sec()
            );
        } else {
            let _ = writeln!(s, "measured    {:.3} s", self.seconds);
        }
        if let Some(l) = self.latency {
            let _ = writeln!(s, "latency     {}: {}", self.latency_label, l.to_text());
        }
        if let Some(l) = self.ack_latency {
            let _ = writeln!(s, "latency     {}: {}", self.ack_latency_label, l.to_text());
        }
        if self.errors > 0 {
            let _ = writeln!(s, "errors      {} records failed", self.errors);
        }
        if let Some(r) = self.rss {
            let _ = writeln!(
                s,
                "broker RSS  start {} KiB, max {} KiB, end {} KiB ({} samples)",
                r.start, r.max, r.end, r.samples
            );
        }
        if let Some(c) = self.cpu {
            let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "cpu         client {:.2}, broker {}, rest of the machine {} (us per record)",
                c.client,
                us(c.broker),
                us(c.other)
            );
        }
        for (k, v) in &self.details {
            let _ = writeln!(s, "{k:<11} {v}");
        }
        let config: Vec<String> = self
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !config.is_empty() {
            let _ = writeln!(s, "config      {}", config.join(" "));
        }
        s
    }
}

fn per_sec(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

/// Rounds to three decimals, so JSON shows microseconds and not float noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut h = micros_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let mut r = Report::new("produce");
        r.records = 2_000;
        r.bytes = 2_048_000;
        r.seconds = 0.5;
        r.latency = Latency::from_micros(&h);
        r.latency_label = "produce to ack";
        r.config = vec![("producers", json!(1)), ("acks", json!("written"))];
        r
    }

    #[test]
    fn the_json_object_has_every_documented_field() {
        let v = sample().to_json();
        assert_eq!(v["mode"], "produce");
        assert_eq!(v["records"], 2_000);
        assert_eq!(v["bytes"], 2_048_000);
        assert_eq!(v["seconds"], 0.5);
        assert_eq!(v["records_per_sec"], 4_000.0);
        assert_eq!(v["mb_per_sec"], 4.096);
        let l = &v["latency_ms"];
        for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(l[key].is_f64(), "latency_ms.{key} is {}", l[key]);
        }
        assert_eq!(l["count"], 1000);
        // 1000 values of 10 µs to 10 ms: the percentiles within hdrhistogram's precision.
        assert!((l["p50"].as_f64().unwrap() - 5.0).abs() < 0.01, "{l}");
        assert!((l["p99"].as_f64().unwrap() - 9.9).abs() < 0.01, "{l}");
        assert!((l["max"].as_f64().unwrap() - 10.0).abs() < 0.01, "{l}");
        assert!(v["ack_latency_ms"].is_null());
        assert!(v["broker_rss_kib"].is_null());
        assert_eq!(v["errors"], 0);
        assert_eq!(v["config"]["producers"], 1);
        assert_eq!(v["config"]["acks"], "written");
        assert!(v["details"].is_object());
        // One line, parseable back.
        let text = v.to_string();
        assert!(!text.contains('\n'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn an_empty_histogram_has_no_latency_and_zero_seconds_no_rate() {
        assert_eq!(Latency::from_micros(&micros_histogram()), None);
        let r = Report::new("consume");
        assert_eq!(r.records_per_sec(), 0.0);
        assert!(r.to_json()["latency_ms"].is_null());
    }

    #[test]
    fn the_text_names_throughput_and_latency() {
        let text = sample().to_text();
        assert!(text.contains("4000 records/s, 4.1 MB/s"), "{text}");
        assert!(text.contains("produce to ack: p50 5.0"), "{text}");
        assert!(text.contains("producers=1"), "{text}");
    }
}
