//! What the process and its machine look like, read at each scrape: the standard
//! `process_*` metrics of Prometheus clients (CPU, memory, file descriptors, threads), the
//! data directory's filesystem, and the build.
//!
//! They are read from `/proc/self` and `statvfs` when the endpoint renders, so they cost
//! nothing between scrapes; a value that cannot be read is left out.

use std::fmt::Write as _;
use std::path::Path;

/// Seconds of CPU the process used, user and system.
pub const CPU: &str = "process_cpu_seconds_total";
/// Resident memory.
pub const RESIDENT: &str = "process_resident_memory_bytes";
/// Virtual memory.
pub const VIRTUAL: &str = "process_virtual_memory_bytes";
/// Open file descriptors.
pub const OPEN_FDS: &str = "process_open_fds";
/// The limit of open file descriptors.
pub const MAX_FDS: &str = "process_max_fds";
/// Threads.
pub const THREADS: &str = "process_threads";
/// Bytes free for the broker on the data directory's filesystem.
pub const DISK_FREE: &str = "runnel_disk_free_bytes";
/// The size of the data directory's filesystem.
pub const DISK_TOTAL: &str = "runnel_disk_total_bytes";
/// 1, labelled with the broker's `version` and the `commit` it was built from.
pub const BUILD_INFO: &str = "runnel_build_info";

/// Appends the process, disk and build metrics to `out`, in Prometheus text format.
/// Blocking (reads `/proc` and asks the filesystem).
pub fn render(out: &mut String, data_dir: &Path) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(") "))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        sample(
            out,
            CPU,
            "counter",
            "CPU seconds used, user and system.",
            (user + system) as f64 / ticks,
        );
    }
    if let Some(threads) = field(20) {
        sample(out, THREADS, "gauge", "Threads.", threads as f64);
    }
    let page = rustix::param::page_size() as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut pages = statm.split_whitespace().map(|p| p.parse::<u64>().ok());
    if let (Some(Some(size)), Some(Some(resident))) = (pages.next(), pages.next()) {
        sample(
            out,
            VIRTUAL,
            "gauge",
            "Virtual memory, bytes.",
            size as f64 * page,
        );
        sample(
            out,
            RESIDENT,
            "gauge",
            "Resident memory, bytes.",
            resident as f64 * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        sample(
            out,
            OPEN_FDS,
            "gauge",
            "Open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        sample(
            out,
            MAX_FDS,
            "gauge",
            "The limit of open file descriptors.",
            max as f64,
        );
    }
    if let Ok(st) = rustix::fs::statvfs(data_dir) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        sample(
            out,
            DISK_FREE,
            "gauge",
            "Bytes free for the broker on the data directory's filesystem.",
            free as f64,
        );
        sample(
            out,
            DISK_TOTAL,
            "gauge",
            "Size of the data directory's filesystem, bytes.",
            total as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP {BUILD_INFO} The broker's version and the commit it was built from."
    );
    let _ = writeln!(out, "# TYPE {BUILD_INFO} gauge");
    let _ = writeln!(
        out,
        "{BUILD_INFO}{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        option_env!("RUNNEL_COMMIT").unwrap_or("unknown")
    );
}

/// The soft limit of open files, from `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One sample without labels, with its help and type.
fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_its_disk_are_described() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = String::new();
        render(&mut out, dir.path());
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {out}"))
                .parse()
                .unwrap()
        };
        assert!(value(RESIDENT) > 1e6, "{out}");
        assert!(value(OPEN_FDS) >= 3.0);
        assert!(value(MAX_FDS) >= value(OPEN_FDS));
        assert!(value(THREADS) >= 1.0);
        assert!(value(CPU) >= 0.0);
        assert!(value(DISK_TOTAL) >= value(DISK_FREE) && value(DISK_TOTAL) > 0.0);
        assert!(out.contains("runnel_build_info{version=\""), "{out}");
    }
}
