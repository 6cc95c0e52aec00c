//! The `runnel` binary without a broker: help, completions, usage errors and an unreachable
//! broker. (The end-to-end suite in `tests/e2e/cli.rs` runs it against a real broker; this
//! test also makes `cargo test --workspace` build the binary it uses.)

use std::process::{Command, Output};

fn runnel(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUNNEL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-runnel-test-config")
        .args(args)
        .output()
        .expect("run runnel")
}

#[test]
fn help_lists_commands_examples_and_exit_codes() {
    let out = runnel(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "topic",
        "group",
        "produce",
        "consume",
        "offsets",
        "broker",
        "completions",
        "Examples:",
        "Exit codes:",
        "RUNNEL_BROKER",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}");
    }
    let out = runnel(&["group", "reset-offsets", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--execute"));
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = runnel(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("runnel"));
    }
}

#[test]
fn usage_errors_exit_2_on_one_line() {
    for args in [
        &["topic", "list", "--nope"][..],
        &["consume"],
        &["topic", "create", "t", "--retention", "forever"],
        &["consume", "t", "--template", "{x}"],
    ] {
        let out = runnel(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("runnel: "), "{stderr}");
    }
}

#[test]
fn an_unreachable_broker_exits_4() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let out = runnel(&["--broker", &addr.to_string(), "broker", "info"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with(&format!("runnel: broker unreachable at {addr}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}
