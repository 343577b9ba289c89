//! The quota state on disk: `STATE_DIR/quota.state`, written whole and
//! atomically, read once at start. The thin I/O around [`super::state`].
//!
//! ```text
//! save:  quota.state.tmp ─ write, fsync ─ rename ─▶ quota.state ─ fsync dir
//! load:  quota.state missing        ─▶ Fresh
//!        reads and parses           ─▶ Loaded(state)
//!        unreadable or corrupt      ─▶ renamed to quota.state.corrupt-<unix secs>
//!                                      (never deleted), a closed state saved in
//!                                      its place ─▶ Corrupt { kept_aside, why }
//! ```
//!
//! After `kill -9` the file is the last one saved: at most one save
//! interval ([`SAVE_EVERY`]) of counting is lost, never the file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::state::{self, State};

/// The state file's name in `state_dir`.
pub const STATE_FILE: &str = "quota.state";
/// Where a save is written before it is renamed into place.
pub const TMP_FILE: &str = "quota.state.tmp";
/// How a kept-aside corrupt file's name begins (then the unix seconds).
pub const CORRUPT_PREFIX: &str = "quota.state.corrupt-";
/// How often the counters should be saved while running (and at exit).
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    /// No state file: counting starts now.
    Fresh,
    Loaded(State),
    /// The file could not be read or parsed; it was kept aside (its new
    /// path; the old one if even that failed) and metered classes are to be
    /// refused until reset (`Ledger::failed_closed`).
    Corrupt {
        kept_aside: PathBuf,
        why: String,
    },
}

/// The wall clock in unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads `dir/quota.state`. A corrupt or unreadable file is renamed aside
/// and a closed state saved in its place, so a crash before the next save
/// still starts closed.
pub fn load(dir: &Path) -> Load {
    let path = dir.join(STATE_FILE);
    let why = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Load::Fresh,
        Err(e) => format!("cannot read {}: {e}", path.display()),
        Ok(bytes) => match std::str::from_utf8(&bytes).map(state::parse) {
            Ok(Ok(state)) => return Load::Loaded(state),
            Ok(Err(e)) => format!("{} is corrupt: {e}", path.display()),
            Err(_) => format!("{} is corrupt: not UTF-8 text", path.display()),
        },
    };
    let secs = now_ms() / 1000;
    let kept_aside = match keep_aside(dir, secs) {
        Ok(p) => p,
        Err(e) => {
            return Load::Corrupt { kept_aside: path, why: format!("{why}; could not keep it aside: {e}") };
        }
    };
    let closed = State { closed: Some(kept_aside.display().to_string()), entries: Vec::new() };
    match save(dir, &closed) {
        Ok(()) => Load::Corrupt { kept_aside, why },
        Err(e) => Load::Corrupt { kept_aside, why: format!("{why}; could not save a closed state: {e}") },
    }
}

/// Renames `dir/quota.state` to `dir/quota.state.corrupt-<secs>` (with
/// `.N` added while that name is taken: nothing is overwritten).
fn keep_aside(dir: &Path, secs: u64) -> io::Result<PathBuf> {
    let from = dir.join(STATE_FILE);
    for n in 0..1000 {
        let name =
            if n == 0 { format!("{CORRUPT_PREFIX}{secs}") } else { format!("{CORRUPT_PREFIX}{secs}.{n}") };
        let to = dir.join(name);
        if fs::symlink_metadata(&to).is_err() {
            fs::rename(&from, &to)?;
            sync_dir(dir)?;
            return Ok(to);
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "a thousand kept-aside files of the same second"))
}

/// Saves `state` as `dir/quota.state`: written to `quota.state.tmp`,
/// synced, renamed over the old file, the directory synced. Creates `dir`
/// if it is missing (systemd's StateDirectory= usually has).
pub fn save(dir: &Path, state: &State) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP_FILE);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(&tmp)?;
    f.write_all(state::encode(state).as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(STATE_FILE))?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The kept-aside corrupt files in `dir`, oldest name first (for doctor).
pub fn kept_aside_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(CORRUPT_PREFIX)))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::state::Entry;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A new empty directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("egressd-quota-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> State {
        State {
            closed: None,
            entries: vec![Entry { identity: "web".into(), start_ms: 1_000, len_ms: 86_400_000, used: 42 }],
        }
    }

    #[test]
    fn no_file_is_fresh_and_a_saved_file_loads() {
        let d = TempDir::new("fresh");
        assert_eq!(load(&d.0), Load::Fresh);
        save(&d.0, &sample()).unwrap();
        assert_eq!(load(&d.0), Load::Loaded(sample()));
        assert!(!d.0.join(TMP_FILE).exists(), "the temporary file is renamed into place");
        // A second save replaces the first.
        let mut s = sample();
        s.entries[0].used = 43;
        save(&d.0, &s).unwrap();
        assert_eq!(load(&d.0), Load::Loaded(s));
    }

    #[test]
    fn save_makes_a_missing_directory() {
        let d = TempDir::new("mkdir");
        let sub = d.0.join("a/b");
        save(&sub, &sample()).unwrap();
        assert_eq!(load(&sub), Load::Loaded(sample()));
    }

    #[test]
    fn a_corrupt_file_is_kept_aside_and_a_closed_state_saved() {
        let d = TempDir::new("corrupt");
        fs::write(d.0.join(STATE_FILE), "egressd-quota 1\nweb\t1\t5\t0\n").unwrap();
        let Load::Corrupt { kept_aside, why } = load(&d.0) else { panic!("not corrupt") };
        assert!(why.contains("line 2: the period length is out of range"), "{why}");
        let name = kept_aside.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(CORRUPT_PREFIX), "{name}");
        assert_eq!(
            fs::read_to_string(&kept_aside).unwrap(),
            "egressd-quota 1\nweb\t1\t5\t0\n",
            "kept as it was"
        );
        assert_eq!(kept_aside_files(&d.0).unwrap(), vec![kept_aside.clone()]);
        // A restart (even after kill -9 right now) stays closed.
        let closed = State { closed: Some(kept_aside.display().to_string()), entries: vec![] };
        assert_eq!(load(&d.0), Load::Loaded(closed));
        // Binary junk, and a second corruption in the same second: nothing is overwritten.
        fs::write(d.0.join(STATE_FILE), [0xff, 0xfe, 0]).unwrap();
        let Load::Corrupt { kept_aside: second, why } = load(&d.0) else { panic!("not corrupt") };
        assert!(why.contains("not UTF-8"), "{why}");
        assert_eq!(kept_aside_files(&d.0).unwrap().len(), 2, "{second:?}");
        assert_eq!(fs::read(&second).unwrap(), [0xff, 0xfe, 0]);
    }

    #[test]
    fn an_unreadable_file_is_corrupt_too() {
        let d = TempDir::new("unreadable");
        // A directory where the file should be cannot be read as one (and
        // this holds when the tests run as root, unlike a chmod 000).
        fs::create_dir(d.0.join(STATE_FILE)).unwrap();
        let Load::Corrupt { kept_aside, why } = load(&d.0) else { panic!("not corrupt") };
        assert!(why.contains("cannot read"), "{why}");
        assert!(kept_aside.is_dir(), "kept aside, not deleted");
        assert!(matches!(load(&d.0), Load::Loaded(State { closed: Some(_), .. })));
    }
}
