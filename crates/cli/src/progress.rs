//! Progress bars on stderr for long produce and consume runs, shown only when stderr is a
//! terminal (and, for consume, when stdout is not the same terminal), so that pipes, files
//! and CI logs never see them.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Whether stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Records.
    Records,
    /// Bytes of input.
    Bytes,
}

/// A bar to `total`, or a spinner without one; hidden unless `show`.
pub fn bar(show: bool, total: Option<u64>, unit: Unit, message: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let template = match (total.is_some(), unit) {
        (true, Unit::Records) => {
            "{msg} [{bar:30}] {human_pos}/{human_len} records ({per_sec}, eta {eta})"
        }
        (true, Unit::Bytes) => {
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {prefix}"
        }
        (false, Unit::Records) => "{spinner} {msg} {human_pos} records ({per_sec})",
        (false, Unit::Bytes) => "{spinner} {msg} {bytes} ({bytes_per_sec}) {prefix}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    pb.set_style(style);
    pb.set_message(message.to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
