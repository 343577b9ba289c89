//! The quota state file: versioned text, one line per identity.
//!
//! ```text
//! egressd-quota 1                         header: the format's version
//! closed<TAB>/var/lib/egressd/quota...    optional: the state was found corrupt
//! web<TAB>1765000000000<TAB>2592000000<TAB>123456
//! 10.8.0.0/24<TAB>1765000000000<TAB>86400000<TAB>0
//! └ identity    └ period start (unix ms) └ period length (ms) └ bytes used
//! ```
//!
//! An identity is escaped (`\\`, `\t`, `\n`, `\r`) so any name survives;
//! numbers are plain decimal digits. The `closed` line names the file that
//! was kept aside: every metered identity not listed below it is spent
//! until an operator resets it (see [`super::ledger`]).
//!
//! Pure and total: [`parse`] never panics and names the line and what is
//! wrong; [`encode`] writes what [`parse`] reads back to the same [`State`]
//! (the `quota_state` fuzz target holds both).

use std::fmt;

/// The first line of every state file this version writes.
pub const HEADER: &str = "egressd-quota 1";

/// The longest identity (decoded), and the longest kept-aside path.
pub const MAX_NAME: usize = 1024;

/// The latest period start accepted: the year 9999 (unix ms).
pub const MAX_START_MS: u64 = 253_402_300_799_000;

/// Period lengths accepted: one second to ten years and a bit (the
/// config's `every_days` bounds).
pub const MIN_LEN_MS: u64 = 1_000;
pub const MAX_LEN_MS: u64 = 3_660 * 86_400_000;

/// One identity's counter: whose, which period, how much of it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A container name, or a route prefix (`10.8.0.0/24`).
    pub identity: String,
    /// When the current period began, unix milliseconds.
    pub start_ms: u64,
    /// The current period's length, milliseconds.
    pub len_ms: u64,
    /// Payload bytes counted in the current period, both directions.
    pub used: u64,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// `Some(path)`: an earlier state was corrupt and kept aside there;
    /// identities not in `entries` are spent until reset (fail closed).
    pub closed: Option<String>,
    pub entries: Vec<Entry>,
}

/// Which number of an entry line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Start,
    Len,
    Used,
}

/// What is wrong with a state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No header line at all.
    Empty,
    /// The first line is not `egressd-quota N`.
    NotAStateFile,
    /// `egressd-quota N` with an N this build does not read.
    UnknownVersion,
    /// A line without exactly four tab-separated fields.
    Fields,
    /// An empty or too long identity, or a bad escape in it.
    Identity,
    /// Not plain decimal digits, or past `u64`.
    Number(Field),
    /// A number outside what this field may be.
    Range(Field),
    /// The same identity twice.
    Duplicate,
    /// A `closed` line anywhere but right after the header, or a bad path.
    Closed,
    /// An empty line (but for the newline that ends the file).
    BlankLine,
}

/// A state file error: the 1-based line, and what is wrong there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateError {
    pub line: usize,
    pub problem: Problem,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Start => "period start",
            Field::Len => "period length",
            Field::Used => "bytes used",
        })
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match self.problem {
            Problem::Empty => f.write_str("the file is empty"),
            Problem::NotAStateFile => write!(f, "not a quota state file (no \"{HEADER}\" header)"),
            Problem::UnknownVersion => {
                write!(f, "a version this egressd does not read (it reads \"{HEADER}\")")
            }
            Problem::Fields => f.write_str("not 4 tab-separated fields (identity, start, length, used)"),
            Problem::Identity => f.write_str("the identity is empty, too long or badly escaped"),
            Problem::Number(x) => write!(f, "the {x} is not a decimal number"),
            Problem::Range(x) => write!(f, "the {x} is out of range"),
            Problem::Duplicate => f.write_str("the identity is listed twice"),
            Problem::Closed => f.write_str("a misplaced or bad `closed` line"),
            Problem::BlankLine => f.write_str("an empty line"),
        }
    }
}

impl std::error::Error for StateError {}

/// Parses a state file's text.
pub fn parse(text: &str) -> Result<State, StateError> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        None | Some((_, "")) if text.is_empty() => return Err(err(1, Problem::Empty)),
        Some((_, HEADER)) => {}
        Some((n, l)) if l.starts_with("egressd-quota ") => return Err(err(n, Problem::UnknownVersion)),
        _ => return Err(err(1, Problem::NotAStateFile)),
    }
    let mut state = State::default();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in lines {
        if line.is_empty() {
            return Err(err(n, Problem::BlankLine));
        }
        // Two fields, where an entry has four: an identity named `closed` is
        // an entry.
        if let Some(path) = line.strip_prefix("closed\t").filter(|p| !p.contains('\t')) {
            if n != 2 {
                return Err(err(n, Problem::Closed));
            }
            state.closed = Some(unescape(path).ok_or(err(n, Problem::Closed))?);
            continue;
        }
        let entry = entry(line).map_err(|p| err(n, p))?;
        if !seen.insert(entry.identity.clone()) {
            return Err(err(n, Problem::Duplicate));
        }
        state.entries.push(entry);
    }
    Ok(state)
}

fn err(line: usize, problem: Problem) -> StateError {
    StateError { line, problem }
}

/// One identity's line.
fn entry(line: &str) -> Result<Entry, Problem> {
    let mut fields = line.split('\t');
    let (Some(name), Some(start), Some(len), Some(used), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Problem::Fields);
    };
    let identity = unescape(name).ok_or(Problem::Identity)?;
    let start_ms = number(start, Field::Start)?;
    let len_ms = number(len, Field::Len)?;
    let used = number(used, Field::Used)?;
    if start_ms > MAX_START_MS {
        return Err(Problem::Range(Field::Start));
    }
    if !(MIN_LEN_MS..=MAX_LEN_MS).contains(&len_ms) {
        return Err(Problem::Range(Field::Len));
    }
    Ok(Entry { identity, start_ms, len_ms, used })
}

/// Plain decimal digits (no sign, no spaces) that fit a `u64`.
fn number(s: &str, field: Field) -> Result<u64, Problem> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::Number(field));
    }
    s.parse().map_err(|_| Problem::Number(field))
}

/// An escaped name back to itself; `None` when empty, too long, or with a
/// bad escape or a raw control character.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next()? {
                '\\' => '\\',
                't' => '\t',
                'n' => '\n',
                'r' => '\r',
                _ => return None,
            },
            '\t' | '\n' | '\r' => return None,
            c => c,
        });
    }
    (!out.is_empty() && out.len() <= MAX_NAME).then_some(out)
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The text of a state file. What [`parse`] would refuse in `state` (an
/// empty or too long name, a duplicate, numbers out of range) is the
/// caller's to avoid: the ledger never holds such entries.
pub fn encode(state: &State) -> String {
    let mut out = String::with_capacity(32 + state.entries.len() * 48);
    out.push_str(HEADER);
    out.push('\n');
    if let Some(path) = &state.closed {
        out.push_str("closed\t");
        escape(path, &mut out);
        out.push('\n');
    }
    for e in &state.entries {
        escape(&e.identity, &mut out);
        out.push_str(&format!("\t{}\t{}\t{}\n", e.start_ms, e.len_ms, e.used));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, start_ms: u64, len_ms: u64, used: u64) -> Entry {
        Entry { identity: identity.into(), start_ms, len_ms, used }
    }

    #[test]
    fn a_written_state_reads_back() {
        let state = State {
            closed: None,
            entries: vec![
                entry("web", 1_765_000_000_000, 2_592_000_000, 123_456),
                entry("10.8.0.0/24", 0, MIN_LEN_MS, u64::MAX),
                entry("odd\tname\nwith\\escapes\r", MAX_START_MS, MAX_LEN_MS, 0),
                entry("ünïcode", 1, 17_280, 1),
                entry("closed", 1, 17_280, 1),
            ],
        };
        let text = encode(&state);
        assert!(text.starts_with("egressd-quota 1\nweb\t1765000000000\t2592000000\t123456\n"), "{text}");
        assert_eq!(text.lines().count(), 6, "escapes keep one line per entry: {text}");
        assert_eq!(parse(&text), Ok(state));
        let closed = State { closed: Some("/var/lib/egressd/quota.state.corrupt-5".into()), entries: vec![] };
        let text = encode(&closed);
        assert_eq!(text, "egressd-quota 1\nclosed\t/var/lib/egressd/quota.state.corrupt-5\n");
        assert_eq!(parse(&text), Ok(closed));
        assert_eq!(parse("egressd-quota 1\n"), Ok(State::default()));
        assert_eq!(parse("egressd-quota 1"), Ok(State::default()), "the last newline may be missing");
    }

    #[test]
    fn round_trip_property() {
        // A small deterministic generator: names from awkward characters,
        // numbers from the edges of their ranges.
        let alphabet = ['a', '\\', '\t', '\n', '\r', 't', 'n', '/', ' ', 'é', '0'];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let n = (next() % 6) as usize;
            let mut entries = Vec::new();
            for i in 0..n {
                let len = 1 + (next() % 8) as usize;
                let mut name: String = (0..len).map(|_| alphabet[(next() % 11) as usize]).collect();
                name.push_str(&i.to_string());
                let start = [0, 1, MAX_START_MS, next() % MAX_START_MS][(next() % 4) as usize];
                let len_ms =
                    [MIN_LEN_MS, MAX_LEN_MS, MIN_LEN_MS + next() % MAX_LEN_MS / 2][(next() % 3) as usize];
                let used = [0, u64::MAX, next()][(next() % 3) as usize];
                entries.push(entry(&name, start, len_ms, used));
            }
            let closed = (next() % 3 == 0).then(|| "/x\t\\y".to_string());
            let state = State { closed, entries };
            let text = encode(&state);
            assert_eq!(parse(&text), Ok(state.clone()), "{text:?}");
            assert_eq!(encode(&parse(&text).unwrap()), text);
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let h = "egressd-quota 1\n";
        for (text, line, problem) in [
            ("", 1, Problem::Empty),
            ("\n", 1, Problem::NotAStateFile),
            ("hello\n", 1, Problem::NotAStateFile),
            ("egressd-quota 2\nweb\t1\t1000\t0\n", 1, Problem::UnknownVersion),
            ("egressd-quota 1 \n", 1, Problem::UnknownVersion),
            (&format!("{h}web\t1\t1000\n"), 2, Problem::Fields),
            (&format!("{h}web\t1\t1000\t0\tjunk\n"), 2, Problem::Fields),
            (&format!("{h}web 1 1000 0\n"), 2, Problem::Fields),
            (&format!("{h}\t1\t1000\t0\n"), 2, Problem::Identity),
            (&format!("{h}we\\b\t1\t1000\t0\n"), 2, Problem::Identity),
            (&format!("{h}web\\\t1\t1000\t0\n"), 2, Problem::Identity),
            (&format!("{h}web\r\t1\t1000\t0\n"), 2, Problem::Identity),
            (&format!("{h}{}\t1\t1000\t0\n", "x".repeat(MAX_NAME + 1)), 2, Problem::Identity),
            (&format!("{h}web\t+1\t1000\t0\n"), 2, Problem::Number(Field::Start)),
            (&format!("{h}web\t1\t-1000\t0\n"), 2, Problem::Number(Field::Len)),
            (&format!("{h}web\t1\t1000\t 0\n"), 2, Problem::Number(Field::Used)),
            (&format!("{h}web\t1\t1000\t18446744073709551616\n"), 2, Problem::Number(Field::Used)),
            (&format!("{h}web\t1\t1000\t1e3\n"), 2, Problem::Number(Field::Used)),
            (&format!("{h}web\t253402300799001\t1000\t0\n"), 2, Problem::Range(Field::Start)),
            (&format!("{h}web\t1\t999\t0\n"), 2, Problem::Range(Field::Len)),
            (&format!("{h}web\t1\t316224000001\t0\n"), 2, Problem::Range(Field::Len)),
            (&format!("{h}web\t1\t1000\t0\ndb\t1\t1000\t0\nweb\t2\t1000\t0\n"), 4, Problem::Duplicate),
            (&format!("{h}web\t1\t1000\t0\nclosed\t/x\n"), 3, Problem::Closed),
            (&format!("{h}closed\t\n"), 2, Problem::Closed),
            (&format!("{h}web\t1\t1000\t0\n\n"), 3, Problem::BlankLine),
            (&format!("{h}\nweb\t1\t1000\t0\n"), 2, Problem::BlankLine),
        ] {
            assert_eq!(parse(text), Err(StateError { line, problem }), "{text:?}");
        }
        let e = parse(&format!("{h}web\t1\t999\t0\n")).unwrap_err();
        assert_eq!(e.to_string(), "line 2: the period length is out of range");
    }
}
