//! `runnel`, the Runnel command-line tool. It will manage topics, produce and consume records
//! and show broker information, talking to the broker only through `runnel-client`.
//!
//! Not built yet: it only says so and exits with code 2, so that no script mistakes it for a
//! working tool. The CLI issue fills it.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("runnel: the command-line tool is not built yet (see README.md, \"Status\")");
    ExitCode::from(2)
}
