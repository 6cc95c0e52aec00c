//! Opening and closing many logs at once (`open_logs`, `close_logs`): every log comes back
//! with what it held, a clean close leaves every marker, and the next open trusts them.

mod common;

use std::sync::Arc;

use common::{batch, read_all, small_config};
use runnel_storage::{
    CLEAN_SHUTDOWN_MARKER, LogEnv, LogSpec, RUNNING_MARKER, close_logs, open_logs,
};

const LOGS: usize = 40;

fn specs(root: &std::path::Path) -> Vec<LogSpec> {
    (0..LOGS)
        .map(|i| LogSpec {
            dir: root.join(format!("p{i}")),
            config: small_config(),
        })
        .collect()
}

#[test]
fn logs_closed_together_reopen_together_with_everything_they_held() {
    let root = tempfile::tempdir().expect("tempdir");
    let opened = open_logs(specs(root.path()), &LogEnv::default(), 4).expect("open");
    assert_eq!(opened.logs.len(), LOGS);
    assert_eq!(opened.repairs, 0);
    let logs: Vec<Arc<_>> = opened
        .logs
        .into_iter()
        .map(|l| Arc::new(l.expect("log")))
        .collect();
    for (i, log) in logs.iter().enumerate() {
        for j in 0..=i as u64 {
            log.append(batch(j, 2, 300, 1_700_000_000_000))
                .expect("append");
        }
    }
    let held: Vec<_> = logs.iter().map(|l| read_all(l)).collect();

    let closed = close_logs(&logs, 4);
    assert_eq!((closed.closed, closed.failed), (LOGS, 0));
    for i in 0..LOGS {
        let dir = root.path().join(format!("p{i}"));
        assert!(
            dir.join(CLEAN_SHUTDOWN_MARKER).exists(),
            "p{i} marked clean"
        );
    }
    assert!(
        logs[0].append(batch(0, 1, 10, 1)).is_err(),
        "closed logs refuse appends"
    );
    // Closing again closes nothing more.
    assert_eq!(close_logs(&logs, 4).closed, 0);
    drop(logs);

    let opened = open_logs(specs(root.path()), &LogEnv::default(), 3).expect("reopen");
    assert_eq!(opened.repairs, 0);
    for (i, log) in opened.logs.iter().enumerate() {
        let log = log.as_ref().expect("log");
        assert_eq!(read_all(log), held[i], "p{i} holds what it held");
        assert!(!log.dir().join(CLEAN_SHUTDOWN_MARKER).exists());
        assert!(log.dir().join(RUNNING_MARKER).exists());
        log.verify_indexes().expect("indexes");
    }
    // Nothing was reread but the tails after the last index entries.
    let total: u64 = opened
        .logs
        .iter()
        .map(|l| l.as_ref().expect("log").size_bytes())
        .sum();
    assert!(
        opened.reread_bytes < total / 2,
        "{} of {total}",
        opened.reread_bytes
    );
}

#[test]
fn a_log_that_cannot_be_opened_is_reported_in_its_slot() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut specs = specs(root.path());
    // A file where a partition directory should be.
    std::fs::write(root.path().join("p3"), b"not a directory").expect("write");
    specs.truncate(6);
    let opened = open_logs(specs, &LogEnv::default(), 2).expect("open");
    assert_eq!(opened.logs.len(), 6);
    for (i, log) in opened.logs.iter().enumerate() {
        assert_eq!(log.is_err(), i == 3, "p{i}: {log:?}");
    }
}
