//! `runneld`, the Runnel broker daemon. Not built yet: it only says so and exits with code 2,
//! so that nothing mistakes it for a working broker. The broker issue (issue 3) replaces it.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("runneld: the broker is not built yet (see README.md, \"Status\")");
    ExitCode::from(2)
}
