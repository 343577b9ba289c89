//! The quota state check: is `state_dir/quota.state` readable and whole,
//! and is egressd refusing metered classes because an earlier one was not?
//!
//! ```text
//! read(dir) ─ Seen { state file text | missing | unreadable, kept-aside files, dir exists }
//!    └─▶ judge(dir, metered, &seen) ─▶ ok / warn / FAIL line (pure)
//! ```

use std::path::{Path, PathBuf};

use super::Check;
use crate::config::Settings;
use crate::quota::state;
use crate::quota::store::{STATE_FILE, kept_aside_files};

const NAME: &str = "quota state";

/// What doctor saw in `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    /// The state file's text, `None` when there is none, `Err` when it
    /// could not be read.
    pub state: Result<Option<String>, String>,
    /// Corrupt files kept aside earlier (`quota.state.corrupt-*`).
    pub kept_aside: Vec<PathBuf>,
    pub dir_exists: bool,
}

/// Reads what [`judge`] needs; nothing is changed.
pub(super) fn read(dir: &Path) -> Seen {
    let path = dir.join(STATE_FILE);
    let state = match std::fs::read(&path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    Seen { state, kept_aside: kept_aside_files(dir).unwrap_or_default(), dir_exists: dir.is_dir() }
}

/// The check for this config, if it has anything to say: none when no
/// class has a quota and there is no state to worry about.
pub(super) fn check(settings: &Settings) -> Option<Check> {
    judge(&settings.state_dir, settings.metered(), &read(&settings.state_dir))
}

/// Judges what was seen. `metered`: some class has a quota (then a
/// problem is a FAIL: those classes are refused; else a warn).
pub(super) fn judge(dir: &Path, metered: bool, seen: &Seen) -> Option<Check> {
    let file = dir.join(STATE_FILE);
    let file = file.display();
    let bad = |saw: String, fix: String| {
        Some(if metered { Check::fail(NAME, saw, fix) } else { Check::warn(NAME, saw, Some(fix)) })
    };
    let text = match &seen.state {
        Err(why) => {
            return bad(
                format!(
                    "cannot read {file}: {why}; at start egressd keeps it aside and refuses metered classes"
                ),
                format!("make {file} readable by egressd's user, or restore a good copy of it"),
            );
        }
        Ok(None) => return fresh(dir, metered, seen),
        Ok(Some(text)) => text,
    };
    match state::parse(text) {
        Err(e) => bad(
            format!("{file} is corrupt ({e}); at start egressd keeps it aside and refuses metered classes"),
            format!("restore a good copy of {file}, or remove it to start every quota afresh"),
        ),
        Ok(s) => match s.closed {
            Some(kept) => bad(
                format!(
                    "quota state file was corrupt: kept aside as {kept}; metered classes are refused until \
                     `egressd quota reset NAME` or the file is restored ({} reset so far)",
                    s.entries.len()
                ),
                format!(
                    "egressd quota reset NAME for each identity `egressd quota list` shows as closed, \
                     or put a good copy of {file} back and restart egressd"
                ),
            ),
            None => Some(Check::ok(
                NAME,
                format!("{file}: counters for {}{}", counted(s.entries.len()), earlier(seen)),
            )),
        },
    }
}

/// No state file yet.
fn fresh(dir: &Path, metered: bool, seen: &Seen) -> Option<Check> {
    if !metered {
        return None;
    }
    if !seen.dir_exists {
        let d = dir.display();
        return Some(Check::warn(
            NAME,
            format!("state_dir {d} does not exist: quota counters cannot be saved"),
            Some(format!(
                "mkdir -p {d} && chown egressd: {d} (or StateDirectory=egressd in the systemd unit)"
            )),
        ));
    }
    Some(Check::ok(NAME, format!("no counters yet in {}{}", dir.display(), earlier(seen))))
}

fn counted(n: usize) -> String {
    if n == 1 { "1 identity".into() } else { format!("{n} identities") }
}

/// A note on corrupt files kept aside earlier (the operator may delete them).
fn earlier(seen: &Seen) -> String {
    match seen.kept_aside.as_slice() {
        [] => String::new(),
        [one] => format!(" (an earlier corrupt file is kept as {})", one.display()),
        [.., last] => {
            format!(" ({} earlier corrupt files kept, the last {})", seen.kept_aside.len(), last.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn seen(state: Result<Option<&str>, &str>) -> Seen {
        Seen {
            state: state.map(|s| s.map(String::from)).map_err(String::from),
            kept_aside: vec![],
            dir_exists: true,
        }
    }

    fn judged(metered: bool, s: &Seen) -> Option<Check> {
        judge(Path::new("/var/lib/egressd"), metered, s)
    }

    #[test]
    fn a_closed_state_names_the_kept_aside_file() {
        let s = seen(Ok(Some(
            "egressd-quota 1\nclosed\t/var/lib/egressd/quota.state.corrupt-17\nweb\t1\t1000\t0\n",
        )));
        let c = judged(true, &s).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.saw.starts_with(
                "quota state file was corrupt: kept aside as /var/lib/egressd/quota.state.corrupt-17; \
                 metered classes are refused until `egressd quota reset NAME` or the file is restored"
            ),
            "{}",
            c.line()
        );
        assert!(c.saw.contains("(1 reset so far)"), "{}", c.line());
        assert!(c.fix.unwrap().contains("egressd quota reset NAME"));
        // Without metered classes nothing is refused: a warning.
        assert_eq!(judged(false, &s).unwrap().status, Status::Warn);
    }

    #[test]
    fn a_corrupt_or_unreadable_file_is_said_before_egressd_starts() {
        let c = judged(true, &seen(Ok(Some("egressd-quota 1\nweb\t1\t5\t0\n")))).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.saw.contains("/var/lib/egressd/quota.state is corrupt (line 2: the period length"),
            "{}",
            c.line()
        );
        let c = judged(true, &seen(Err("Permission denied (os error 13)"))).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.saw.starts_with("cannot read /var/lib/egressd/quota.state: Permission denied"),
            "{}",
            c.line()
        );
        assert_eq!(judged(false, &seen(Err("Permission denied"))).unwrap().status, Status::Warn);
    }

    #[test]
    fn healthy_or_absent_state() {
        let c = judged(true, &seen(Ok(Some("egressd-quota 1\nweb\t1\t1000\t0\n")))).unwrap();
        assert_eq!(
            (c.status, c.saw.as_str()),
            (Status::Ok, "/var/lib/egressd/quota.state: counters for 1 identity")
        );
        let mut s = seen(Ok(None));
        assert_eq!(judged(false, &s), None, "no quotas, no state: nothing to say");
        assert_eq!(judged(true, &s).unwrap().status, Status::Ok);
        s.kept_aside = vec!["/var/lib/egressd/quota.state.corrupt-1".into()];
        assert!(
            judged(true, &s).unwrap().saw.contains("an earlier corrupt file is kept as"),
            "resolved, but said"
        );
        s.dir_exists = false;
        let c = judged(true, &s).unwrap();
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.unwrap().contains("StateDirectory=egressd"));
    }

    #[test]
    fn read_sees_a_directory_as_it_is() {
        let dir = std::env::temp_dir().join(format!("egressd-doctor-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read(&dir), Seen { state: Ok(None), kept_aside: vec![], dir_exists: false });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("quota.state"), "junk").unwrap();
        assert!(matches!(crate::quota::store::load(&dir), crate::quota::Load::Corrupt { .. }));
        let s = read(&dir);
        assert_eq!(s.kept_aside.len(), 1);
        let c = judge(&dir, true, &s).unwrap();
        assert!(c.saw.starts_with("quota state file was corrupt: kept aside as "), "{}", c.line());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
