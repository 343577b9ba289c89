//! The command line's exit codes (SPEC §2: 0 ok, 2 usage) and `--version`.

use std::process::Command;

fn egressd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_egressd")).args(args).output().expect("run egressd")
}

#[test]
fn version_prints_version_and_commit() {
    let out = egressd(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8(out.stdout).unwrap();
    let want = format!("egressd {} (", env!("CARGO_PKG_VERSION"));
    assert!(s.starts_with(&want) && s.trim_end().ends_with(')'), "{s:?}");
    let commit = s.trim_end().trim_start_matches(&want).trim_end_matches(')');
    assert!(!commit.is_empty() && commit.chars().all(|c| c.is_ascii_alphanumeric()), "{s:?}");
}

#[test]
fn no_command_and_unknown_flags_are_usage_errors() {
    assert_eq!(egressd(&[]).status.code(), Some(2));
    assert_eq!(egressd(&["--bogus"]).status.code(), Some(2));
    assert_eq!(egressd(&["check", "--bogus"]).status.code(), Some(2));
    assert_eq!(egressd(&["help"]).status.code(), Some(0));
}
