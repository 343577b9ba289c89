//! Embeds the git commit into the binary (`egressd --version`) as
//! EGRESSD_COMMIT: `git rev-parse --short HEAD`, or "unknown" outside a git
//! checkout (e.g. a source tarball) or without git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EGRESSD_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points
    // at (a commit) and packed-refs. --git-path resolves worktrees and the
    // common dir; only paths that exist (cargo reruns for a missing one).
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &r]));
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for p in watch.into_iter().flatten() {
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
