//! The storage engine is a plain library: no async runtime, no gRPC, no protobuf in its
//! dependency tree (see the crate map in the house style).

use std::process::Command;

#[test]
fn the_dependency_tree_has_no_tokio_tonic_or_prost() {
    // Cargo sets `CARGO` for the tests it runs (and for the compiler); fall back to the PATH.
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_string))
        .unwrap_or_else(|| "cargo".to_string());
    let output = Command::new(&cargo)
        .args([
            "tree",
            "-p",
            "runnel-storage",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} tree: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Make sure we are looking at a real tree and not, say, an empty one.
    assert_eq!(names.first(), Some(&"runnel-storage"), "{stdout}");
    assert!(names.contains(&"bytes"), "{stdout}");
    let forbidden: Vec<&&str> = names
        .iter()
        .filter(|n| {
            ["tokio", "tonic", "prost", "runnel-proto"]
                .iter()
                .any(|f| **n == *f || n.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "forbidden dependencies of runnel-storage: {forbidden:?}\n{stdout}"
    );
}
