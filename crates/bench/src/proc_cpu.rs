//! CPU time from `/proc`: the bench's own, the broker's (by its pid) and the whole
//! machine's, so that a load's cost can be given in CPU microseconds per record for the
//! client and the broker, each from its own process's counters.

use anyhow::Context as _;
use serde_json::{Value, json};

/// CPU seconds used so far by the bench, the whole machine and, if given, the broker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    /// The broker's, with its pid.
    pub(crate) broker: Option<f64>,
    /// The bench process's own.
    pub(crate) client: f64,
    /// Every process's and the kernel's, on every CPU.
    pub(crate) machine: f64,
}

impl Cpu {
    /// The figures now; the broker's only with `broker_pid`.
    ///
    /// # Errors
    /// `/proc` cannot be read (not Linux, or the broker's process is gone).
    pub(crate) fn now(broker_pid: Option<u32>) -> anyhow::Result<Self> {
        let broker = broker_pid
            .map(|pid| cpu_seconds(&pid.to_string()))
            .transpose()?;
        let client = cpu_seconds("self")?;
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let machine = busy_ticks(&stat).context("/proc/stat has no cpu line")?;
        Ok(Self {
            broker,
            client,
            machine: seconds(machine),
        })
    }

    /// What neither the broker nor the bench used; `None` without the broker's figure.
    pub(crate) fn other(&self) -> Option<f64> {
        Some(self.machine - self.broker? - self.client)
    }
}

/// The user plus system CPU seconds of process `pid` (a number or `self`), from
/// `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("{path} has no utime and stime"))?;
    Ok(seconds(ticks))
}

/// Clock ticks (`/proc`'s unit, `sysconf(_SC_CLK_TCK)`) in seconds.
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// The ticks all CPUs spent running anything (user, nice, system, irq, softirq) from the
/// `cpu` line of `/proc/stat`: not idle, not waiting for I/O, not taken by the host (steal).
fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq
    let [user, nice, system, _idle, _iowait, irq, softirq] = f.as_slice() else {
        return None;
    };
    Some(user + nice + system + irq + softirq)
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// the fields are counted from its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // state is field 3
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU a measured phase cost per record: the bench's, the broker's and the rest of the
/// machine's (kernel threads, other processes), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuPerRecord {
    /// The bench process (the client library and the bench's own loop).
    pub(crate) client: f64,
    /// The broker, with `--broker-pid`.
    pub(crate) broker: Option<f64>,
    /// Neither, with `--broker-pid`.
    pub(crate) other: Option<f64>,
}

impl CpuPerRecord {
    /// The CPU used between `before` and `after`, over `records` records.
    pub(crate) fn between(before: &Cpu, after: &Cpu, records: u64) -> Self {
        let per = |seconds: f64| {
            if records > 0 {
                seconds * 1e6 / records as f64
            } else {
                0.0
            }
        };
        Self {
            client: per(after.client - before.client),
            broker: after.broker.zip(before.broker).map(|(a, b)| per(a - b)),
            other: after.other().zip(before.other()).map(|(a, b)| per(a - b)),
        }
    }

    /// `{client, broker, other}`, in µs per record (`null` where not measured).
    pub(crate) fn to_json(self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "client": r(self.client),
            "broker": self.broker.map(r),
            "other": self.other.map(r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may name itself.
        let stat = "4242 (run (x) d) S 1 4242 4242 0 -1 4194560 2113 0 0 0 1234 567 0 0 20 0 \
                    9 0 123456 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 17664";
        assert_eq!(cpu_ticks(stat), Some(1801));
        assert_eq!(cpu_ticks("4242 (runneld) S 1 2"), None);
        assert_eq!(cpu_ticks("no command name"), None);
        // The bench's own line parses.
        assert!(cpu_seconds("self").unwrap() >= 0.0);
    }

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        let stat = "cpu  100 2 30 5000 40 5 6 700 0 0\ncpu0 50 1 15 2500 20 2 3 350 0 0\nintr 1\n";
        assert_eq!(busy_ticks(stat), Some(143));
        assert_eq!(busy_ticks("cpu  1 2 3\n"), None);
        assert_eq!(busy_ticks("intr 1\n"), None);
        let now = Cpu::now(None).unwrap();
        assert!(now.broker.is_none() && now.other().is_none());
        assert!(now.machine >= now.client);
    }

    #[test]
    fn cpu_per_record_divides_each_process_s_share() {
        let before = Cpu {
            broker: Some(1.0),
            client: 2.0,
            machine: 10.0,
        };
        let after = Cpu {
            broker: Some(3.0),
            client: 3.0,
            machine: 14.0,
        };
        let c = CpuPerRecord::between(&before, &after, 1_000_000);
        assert_eq!(c.client, 1.0);
        assert_eq!(c.broker, Some(2.0));
        assert_eq!(c.other, Some(1.0));
        let v = c.to_json();
        assert_eq!(v["broker"], 2.0);
        let alone = CpuPerRecord::between(
            &Cpu {
                broker: None,
                ..before
            },
            &after,
            0,
        );
        assert_eq!((alone.client, alone.broker, alone.other), (0.0, None, None));
    }
}
