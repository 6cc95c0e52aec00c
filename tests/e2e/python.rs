//! The Python examples (`examples/python`) against the real broker: their own driver,
//! `test_examples.py`, runs the five programs (produce, consume, group member, idempotent
//! retry, share group worker) with stubs generated from `proto/`, and checks what they did, against a broker with
//! authentication on (the programs send a user and password with every call).
//!
//! The interpreter is the `python3` on PATH (3.10 or later); the packages of
//! `examples/python/requirements.txt` go into a virtualenv at `target/python-venv`, made once
//! and installed again only when the requirements change (a marker file holds their hash).
//! The first run needs PyPI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{Broker, clean_command, workspace_root};

/// The interpreter of the virtualenv `target/<venv>`, with the packages of `requirements`
/// (a path under the workspace root) installed.
///
/// # Panics
///
/// With one message saying what is missing when `python3`, its `venv` module or pip fails.
pub(crate) fn venv_python(root: &Path, requirements: &str, venv: &str) -> PathBuf {
    // Tests run in parallel threads: one makes the virtualenv while the others wait.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let venv = root.join("target").join(venv);
    let python = venv.join("bin").join("python");
    let named = requirements;
    let requirements = root.join(requirements);
    let wanted = std::fs::read(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let marker = venv.join("requirements.hash");
    let hash = format!("{:016x}\n", fnv1a(&wanted));
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == hash) {
        return python;
    }

    if !python.exists() {
        // Also a venv whose interpreter link broke when the system's Python changed.
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        check(
            &mut create,
            "`python3 -m venv` failed: the Python tests need Python 3.10 or later with its \
             venv module (Debian: apt-get install python3 python3-venv)",
        );
    }
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements);
    check(
        &mut install,
        &format!(
            "pip install -r {named} failed (it needs PyPI, and Python 3.10 or later for these \
             versions)"
        ),
    );
    std::fs::write(&marker, hash).expect("write the virtualenv's marker file");
    python
}

/// Runs `cmd`; panics with `failure` and the command's stderr unless it succeeds.
fn check(cmd: &mut Command, failure: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{failure}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{failure}: {:?} exited with {}:\n{}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// 64-bit FNV-1a: a hash that stays the same across Rust versions, for the marker file.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[tokio::test]
async fn python_examples_produce_consume_join_groups_and_retry_idempotently() {
    let root = workspace_root();
    let python = venv_python(&root, "examples/python/requirements.txt", "python-venv");
    // With authentication on: the examples send RUNNEL_USER and RUNNEL_PASSWORD with every call.
    let b = Broker::start_with(&[
        "--set",
        "auth.enabled=true",
        "--set",
        "auth.bootstrap_password=python-Pa55word",
    ])
    .await;

    // The driver bounds its own waits: 60 s per program and per RPC.
    let out = clean_command(&python)
        .arg(root.join("examples/python/test_examples.py"))
        .env("RUNNEL_BROKER", b.grpc.to_string())
        .env("RUNNEL_USER", "admin")
        .env("RUNNEL_PASSWORD", "python-Pa55word")
        .current_dir(root.join("examples/python"))
        .output()
        .expect("run test_examples.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "examples/python/test_examples.py exited with {}\n--- stdout\n{stdout}\n--- stderr\n\
         {stderr}\n--- runneld's log\n{}",
        out.status,
        b.log_text()
    );
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");
}
