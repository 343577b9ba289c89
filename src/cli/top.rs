//! `egressd top`: a live view of the running daemon, one row per route
//! source, from the control socket's `top` request once a second.
//!
//! Plain ANSI (alternate screen, hidden cursor, home + clear to end of line),
//! so it works in any terminal and over ssh. It draws for the terminal's
//! size (TIOCGWINSZ, read again at every refresh; 80x24 when it cannot be
//! read). `q` quits; the terminal (screen, cursor, and the keyboard mode
//! that lets `q` be read without Enter) is restored on `q`, SIGINT, SIGTERM
//! and SIGHUP. When stdout is not a terminal (or with `--once`) it prints
//! one plain 80-column snapshot, rates over one second, and exits.
//! Rendering is a pure function of two samples, tested below.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::control::{self, Request};

/// The screen width `top` draws for when the terminal's is unknown (and
/// for the plain snapshot); names are truncated to fit.
pub const WIDTH: usize = 80;
/// The screen height when the terminal's is unknown.
const HEIGHT: usize = 24;
/// Lines of the screen that are not source rows: the header (3) and the
/// "... and N more sources" line.
const CHROME: usize = 4;
/// How often keys are looked for between refreshes.
const KEY_POLL: Duration = Duration::from_millis(100);

/// One source's counters, as the control socket's `top` request gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub source: String,
    pub name: String,
    pub tunnel: String,
    pub tcp: u64,
    pub udp: u64,
    pub up: u64,
    pub down: u64,
    pub drops: u64,
    /// The rates up and down the source is held to, bytes per second (0:
    /// not shaped), and its TCP bytes held back now (issue 26).
    pub cap_up: u64,
    pub cap_down: u64,
    pub held: u64,
}

impl Row {
    /// Whether a class or a tunnel share holds the source to a rate.
    fn shaped(&self) -> bool {
        self.cap_up + self.cap_down > 0
    }
}

/// One identity's quota, as the `top` answer gives it (issue 27).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRow {
    pub identity: String,
    pub used: u64,
    /// `None`: no quota known for it yet.
    pub limit: Option<u64>,
    /// Unix seconds.
    pub period_end: u64,
    pub state: String,
}

/// The `top` answer's quota rows (`quota` first); others are skipped.
pub fn parse_quotas(body: &str) -> Vec<QuotaRow> {
    body.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let ["quota", identity, used, limit, end, state] = f.as_slice() else { return None };
            Some(QuotaRow {
                identity: identity.to_string(),
                used: used.parse().ok()?,
                limit: if *limit == "-" { None } else { Some(limit.parse().ok()?) },
                period_end: end.parse().ok()?,
                state: state.to_string(),
            })
        })
        .collect()
}

/// The quota lines under the source rows: used of limit, left, how long
/// until the period ends (against `now`, unix seconds) and the state.
pub fn render_quotas(quotas: &[QuotaRow], now: u64, width: usize) -> Vec<String> {
    if quotas.is_empty() {
        return Vec::new();
    }
    let mut out =
        vec![String::new(), fit("QUOTA (IDENTITY)          USED   LIMIT    LEFT  ENDS IN  STATE", width)];
    for q in quotas {
        let (limit, left) = match q.limit {
            Some(l) => (human(l as f64), human(l.saturating_sub(q.used) as f64)),
            None => ("-".to_string(), "-".to_string()),
        };
        let ends = until(q.period_end.saturating_sub(now));
        out.push(fit(
            &format!(
                "{:<24} {:>6} {:>7} {:>7} {:>8}  {}",
                fit(&q.identity, 24),
                human(q.used as f64),
                limit,
                left,
                ends,
                q.state
            ),
            width,
        ));
    }
    out
}

/// A duration in one short unit: `45s`, `12m`, `5h`, `29d`.
fn until(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The `top` answer's rows; malformed lines are skipped. A daemon from
/// before issue 26 sends no shaping fields: read as not shaped.
pub fn parse_rows(body: &str) -> Vec<Row> {
    body.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |s: &str| s.parse::<u64>().ok();
            let (head, shaping) = match f.len() {
                8 => (&f[..], [0, 0, 0]),
                11 => (&f[..8], [n(f[8])?, n(f[9])?, n(f[10])?]),
                _ => return None,
            };
            let [source, name, tunnel, tcp, udp, up, down, drops] = head else { return None };
            let [cap_up, cap_down, held] = shaping;
            Some(Row {
                source: source.to_string(),
                name: name.to_string(),
                tunnel: tunnel.to_string(),
                tcp: n(tcp)?,
                udp: n(udp)?,
                up: n(up)?,
                down: n(down)?,
                drops: n(drops)?,
                cap_up,
                cap_down,
                held,
            })
        })
        .collect()
}

/// Bytes (or bytes per second) in 6 characters: `999B`, `12.3K`, `1.5G`.
fn human(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = v.max(0.0);
    let mut u = 0;
    while v >= 999.95 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0}{}", UNITS[u]) } else { format!("{v:.1}{}", UNITS[u]) }
}

/// Widths of the SOURCE and TUNNEL columns on a `width`-column screen: 24
/// and 11 at 80 columns (the row is then exactly 80); a wider screen gives
/// two thirds of its extra columns to the source (up to 64) and the rest to
/// the tunnel (up to 32); a narrower one takes them from the source (down
/// to 12) before rows are cut.
fn name_widths(width: usize) -> (usize, usize) {
    if width <= WIDTH {
        ((width + 24).saturating_sub(WIDTH).max(12), 11)
    } else {
        let extra = width - WIDTH;
        ((24 + extra * 2 / 3).min(64), (11 + extra - extra * 2 / 3).min(32))
    }
}

/// The columns a shaped source adds (` CAP/s  HELD`), taken from the names.
const SHAPED_COLUMNS: usize = 14;

/// The SOURCE and TUNNEL widths when the shaping columns are shown: the
/// tunnel gives up to 3 more (down to 8) when the source is at its least.
fn shaped_widths(width: usize) -> (usize, usize) {
    let (ww, tw) = name_widths(width.saturating_sub(SHAPED_COLUMNS));
    let over = (ww + tw + 1 + 44 + SHAPED_COLUMNS).saturating_sub(width);
    (ww, tw.saturating_sub(over).max(8))
}

/// `s` cut to `w` characters (the last one `~` when cut).
fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut o: String = s.chars().take(w.saturating_sub(1)).collect();
    o.push('~');
    o
}

/// The screen for `rows`, with rates against `prev` (taken `secs` earlier;
/// `None`: no earlier sample, rates shown as `-`), at most `max_rows`
/// sources, every line at most `width` characters. Sorted by traffic:
/// rate (up + down), then total bytes, then source. When a source is
/// shaped, two columns more: CAP/s, the rate its busier direction is held
/// to (`-`: not shaped), and HELD, its TCP bytes held back now.
pub fn render(rows: &[Row], prev: Option<(&[Row], f64)>, width: usize, max_rows: usize) -> Vec<String> {
    let rate = |r: &Row| -> Option<(f64, f64)> {
        let (p, secs) = prev?;
        let (pu, pd) = p.iter().find(|q| q.source == r.source).map_or((0, 0), |q| (q.up, q.down));
        let secs = secs.max(0.001);
        Some((r.up.saturating_sub(pu) as f64 / secs, r.down.saturating_sub(pd) as f64 / secs))
    };
    let mut list: Vec<(&Row, Option<(f64, f64)>)> = rows.iter().map(|r| (r, rate(r))).collect();
    let traffic = |(r, rt): &(&Row, Option<(f64, f64)>)| (rt.map_or(0.0, |(u, d)| u + d), r.up + r.down);
    list.sort_by(|a, b| {
        let (ra, ta) = traffic(a);
        let (rb, tb) = traffic(b);
        rb.total_cmp(&ra).then(tb.cmp(&ta)).then_with(|| a.0.source.cmp(&b.0.source))
    });
    let (sum_up, sum_down) =
        list.iter().filter_map(|(_, r)| *r).fold((0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1));
    let totals = match prev {
        Some(_) => format!("up {}/s  down {}/s", human(sum_up), human(sum_down)),
        None => "rates after the next sample".to_string(),
    };
    let shaping = rows.iter().any(Row::shaped);
    let (ww, tw) = if shaping { shaped_widths(width) } else { name_widths(width) };
    let extra = |cap: &str, held: &str| if shaping { format!(" {cap:>6} {held:>6}") } else { String::new() };
    let mut out = vec![
        fit(&format!("egressd top - {} sources, {totals}   (q quits)", rows.len()), width),
        String::new(),
        fit(
            &format!(
                "{:<ww$} {:<tw$} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7}{}",
                fit("SOURCE (CONTAINER)", ww),
                fit("TUNNEL", tw),
                "TCP",
                "UDP",
                "UP/s",
                "DOWN/s",
                "TOTAL",
                "DROPS",
                extra("CAP/s", "HELD")
            ),
            width,
        ),
    ];
    for (r, rt) in list.iter().take(max_rows) {
        let who = if r.name == "-" || r.name.is_empty() {
            r.source.clone()
        } else {
            format!("{} ({})", r.source, r.name)
        };
        let (up, down) = rt.map_or(("-".to_string(), "-".to_string()), |(u, d)| (human(u), human(d)));
        // The cap of the direction moving more now (down when equal).
        let cap = match rt {
            Some((u, d)) if u > d && r.cap_up > 0 => r.cap_up,
            _ if r.cap_down > 0 => r.cap_down,
            _ => r.cap_up,
        };
        let (cap, held) = match r.shaped() {
            true => (human(cap as f64), human(r.held as f64)),
            false => ("-".to_string(), "-".to_string()),
        };
        out.push(fit(
            &format!(
                "{:<ww$} {:<tw$} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7}{}",
                fit(&who, ww),
                fit(&r.tunnel, tw),
                r.tcp,
                r.udp,
                up,
                down,
                human((r.up + r.down) as f64),
                r.drops,
                extra(&cap, &held)
            ),
            width,
        ));
    }
    if list.len() > max_rows {
        out.push(fit(&format!("... and {} more sources", list.len() - max_rows), width));
    }
    if rows.is_empty() {
        out.push("(no traffic yet)".to_string());
    }
    out
}

/// One `top` answer: the source rows and the quota rows.
fn sample(path: &Path) -> Result<(Vec<Row>, Vec<QuotaRow>), String> {
    control::ask(path, &Request::Top).map(|b| (parse_rows(&b), parse_quotas(&b)))
}

/// The wall clock in unix seconds (for how long until a period ends).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The terminal's (columns, rows), or 80x24 when it cannot be read.
fn screen_size(out: &std::io::Stdout) -> (usize, usize) {
    match crate::sys::term_size(out.as_fd()) {
        Ok((c, r)) if c > 0 && r > 0 => (usize::from(c), usize::from(r)),
        _ => (WIDTH, HEIGHT),
    }
}

/// Waits `tick` for a stop signal or, when `keys` (stdin is a terminal in
/// key mode), a `q` on stdin; other keys are ignored. `true`: quit.
fn wait_tick(tick: Duration, keys: bool) -> Result<bool, String> {
    let end = Instant::now() + tick;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let step = if keys { left.min(KEY_POLL) } else { left };
        match crate::sys::wait_signal_timeout(step) {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(true),
            Err(e) => return Err(format!("waiting for signals: {e}")),
        }
        if keys {
            let mut buf = [0u8; 64];
            // VMIN 0, VTIME 0: returns at once, 0 when no key was pressed.
            if let Ok(n) = std::io::stdin().lock().read(&mut buf)
                && buf[..n].iter().any(|b| matches!(b, b'q' | b'Q'))
            {
                return Ok(true);
            }
        }
        if Instant::now() >= end {
            return Ok(false);
        }
    }
}

/// Runs `egressd top`.
pub fn run(path: &Path, once: bool) -> ExitCode {
    let failed = |e: String| {
        eprintln!("egressd: {e}");
        ExitCode::from(1)
    };
    let mut out = std::io::stdout();
    if once || !out.is_terminal() {
        let (first, _) = match sample(path) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let (rows, quotas) = match sample(path) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let secs = t0.elapsed().as_secs_f64();
        for l in render(&rows, Some((&first, secs)), WIDTH, usize::MAX) {
            println!("{l}");
        }
        for l in render_quotas(&quotas, unix_now(), WIDTH) {
            println!("{l}");
        }
        return ExitCode::SUCCESS;
    }
    // Signals are taken by the wait below, never by a handler, so the
    // terminal is restored on the way out whatever stops us.
    if let Err(e) = crate::sys::block_signals() {
        return failed(format!("cannot block signals: {e}"));
    }
    // Keys one by one without echo, so `q` is read at once; not when stdin
    // is not a terminal (then only signals stop us).
    let stdin = std::io::stdin();
    let saved = crate::sys::term_keys_mode(stdin.as_fd()).ok();
    let mut prev: Option<(Vec<Row>, Instant)> = None;
    let _ = write!(out, "\x1b[?1049h\x1b[?25l\x1b[2J");
    let result = loop {
        let (rows, quotas) = match sample(path) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let now = Instant::now();
        let p = prev.as_ref().map(|(r, t)| (r.as_slice(), now.duration_since(*t).as_secs_f64()));
        let (width, height) = screen_size(&out);
        let mut screen = String::from("\x1b[H");
        // Quota lines (issue 27) take the screen's last lines, a few at most.
        let q = render_quotas(&quotas, unix_now(), width);
        let q = &q[..q.len().min(height / 3)];
        let source_rows = height.saturating_sub(CHROME + q.len()).max(1);
        for l in render(&rows, p, width, source_rows).iter().chain(q) {
            screen.push_str(l);
            screen.push_str("\x1b[K\r\n");
        }
        screen.push_str("\x1b[J");
        if out.write_all(screen.as_bytes()).and_then(|_| out.flush()).is_err() {
            break Ok(()); // the terminal went away (ssh closed)
        }
        prev = Some((rows, now));
        match wait_tick(Duration::from_secs(1), saved.is_some()) {
            Ok(false) => {}
            Ok(true) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = write!(out, "\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
    if let Some(saved) = &saved {
        let _ = crate::sys::term_restore(stdin.as_fd(), saved);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &str, name: &str, up: u64, down: u64) -> Row {
        Row {
            source: source.into(),
            name: name.into(),
            tunnel: "hk0".into(),
            tcp: 1,
            udp: 0,
            up,
            down,
            drops: 0,
            cap_up: 0,
            cap_down: 0,
            held: 0,
        }
    }

    #[test]
    fn parses_the_control_answer() {
        let body = "10.8.0.4/32\tw2\thk0\t1\t2\t300\t4000\t5\nbroken line\n(default)\t-\tb\t0\t0\t0\t0\t0\n";
        let rows = parse_rows(body);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row {
                source: "10.8.0.4/32".into(),
                name: "w2".into(),
                tunnel: "hk0".into(),
                tcp: 1,
                udp: 2,
                up: 300,
                down: 4000,
                drops: 5,
                cap_up: 0,
                cap_down: 0,
                held: 0,
            }
        );
        assert_eq!(rows[1].source, "(default)");
        // With the shaping fields (issue 26).
        let rows = parse_rows("10.8.0.4/32\tw2\thk0\t1\t2\t300\t4000\t5\t625000\t2500000\t65536\n");
        assert_eq!((rows[0].cap_up, rows[0].cap_down, rows[0].held), (625_000, 2_500_000, 65_536));
        assert!(parse_rows("10.8.0.4/32\tw2\thk0\t1\t2\t300\t4000\t5\t1\n").is_empty());
    }

    #[test]
    fn shows_caps_and_bytes_held_back_when_a_source_is_shaped() {
        let mut slow = row("10.8.0.10/32", "slow-container", 0, 5_000_000);
        (slow.cap_up, slow.cap_down, slow.held) = (625_000, 2_500_000, 131_072);
        let free = row("10.8.0.11/32", "-", 0, 1000);
        let prev = [row("10.8.0.10/32", "-", 0, 2_500_000), row("10.8.0.11/32", "-", 0, 0)];
        let rows = [slow.clone(), free.clone()];
        for w in [WIDTH, 60, 140] {
            let s = render(&rows, Some((&prev, 1.0)), w, 10);
            assert!(s.iter().all(|l| l.chars().count() <= w), "{w}: {s:#?}");
            // Narrower than 80, rows are cut like the others.
            assert!(w < WIDTH || s[2].ends_with(" CAP/s   HELD"), "{w}: {s:#?}");
        }
        let s = render(&rows, Some((&prev, 1.0)), WIDTH, 10);
        assert_eq!(s[3].chars().count(), WIDTH, "{s:#?}");
        // Down is the busier direction: its cap, 2.5M/s, beside 2.5M/s moved.
        assert!(s[3].starts_with("10.8.0.10/3~"), "{s:#?}");
        assert!(s[3].contains("2.5M"), "{s:#?}");
        assert!(s[3].ends_with("  2.5M 131.1K"), "{s:#?}");
        assert!(s[4].ends_with("      -      -"), "{s:#?}");
        // Busier up: the up cap.
        let mut up = slow.clone();
        up.up = 1_000_000;
        let s = render(
            std::slice::from_ref(&up),
            Some((&[row("10.8.0.10/32", "-", 0, 5_000_000)], 1.0)),
            WIDTH,
            10,
        );
        assert!(s[3].ends_with("625.0K 131.1K"), "{s:#?}");
        // Nobody shaped: the columns are not drawn.
        let s = render(std::slice::from_ref(&free), None, WIDTH, 10);
        assert!(s[2].ends_with("DROPS"), "{s:#?}");
    }

    #[test]
    fn sorts_by_rate_then_totals_and_computes_rates() {
        let prev = [row("10.8.0.2/32", "-", 0, 0), row("10.8.0.3/32", "-", 0, 1_000_000)];
        // .3 has the larger total, .2 the larger rate over these 2 s; .4 is idle.
        let now = [
            row("10.8.0.3/32", "-", 0, 1_000_200),
            row("10.8.0.4/32", "idle", 0, 50),
            row("10.8.0.2/32", "w1", 1000, 3_000_000),
        ];
        let s = render(&now, Some((&prev, 2.0)), WIDTH, 10);
        assert!(s[2].starts_with("SOURCE"), "{s:#?}");
        assert!(s[3].starts_with("10.8.0.2/32 (w1)"), "{s:#?}");
        assert!(s[3].contains("500B    1.5M"), "up 1000/2, down 3e6/2: {s:#?}");
        assert!(s[4].starts_with("10.8.0.3/32 "), "{s:#?}");
        assert!(s[4].contains("0B    100B"), "{s:#?}");
        // An idle source with new bytes since no earlier sample counts them all.
        assert!(s[5].starts_with("10.8.0.4/32 (idle)"), "{s:#?}");
        assert!(s[0].contains("up 500B/s  down 1.5M/s"), "{s:#?}");
        // Without an earlier sample: totals decide, rates are `-`.
        let s = render(&now, None, WIDTH, 10);
        assert!(s[3].starts_with("10.8.0.2/32"), "{s:#?}");
        assert!(s[4].starts_with("10.8.0.3/32"), "{s:#?}");
        assert!(s[3].contains("  -       -"), "{s:#?}");
        // Equal traffic: by source.
        let tie = [row("10.8.0.9/32", "-", 0, 0), row("10.8.0.1/32", "-", 0, 0)];
        assert!(render(&tie, None, WIDTH, 10)[3].starts_with("10.8.0.1/32"));
    }

    #[test]
    fn fits_80_columns_and_truncates_names() {
        let long = row("fd08::1234:5678:9abc/128", "a-container-with-a-very-long-name", 5_000_000_000_000, 7);
        let mut t = long.clone();
        t.tunnel = "a-tunnel-with-a-long-name".into();
        t.source = "fd08::1/128".into();
        let rows = [long, t];
        for w in [WIDTH, 40] {
            let s = render(&rows, Some((&[], 1.0)), w, 10);
            assert!(s.iter().all(|l| l.chars().count() <= w), "{w}: {s:#?}");
        }
        let s = render(&rows, Some((&[], 1.0)), WIDTH, 10);
        assert!(s[3].starts_with("fd08::1/128 (a-containe~ a-tunnel-w~"), "{s:#?}");
        assert!(s[4].starts_with("fd08::1234:5678:9abc/12~ hk0 "), "{s:#?}");
        assert!(s[4].contains("5.0T"), "{s:#?}");
        // More sources than rows: the rest are counted, not drawn.
        let many: Vec<Row> = (0..30).map(|i| row(&format!("10.8.0.{i}/32"), "-", i, 0)).collect();
        let s = render(&many, None, WIDTH, 20);
        assert_eq!(s.len(), 3 + 20 + 1);
        assert_eq!(s.last().unwrap(), "... and 10 more sources");
        assert_eq!(human(999.0), "999B");
        assert_eq!(human(1500.0), "1.5K");
        assert_eq!(human(2.5e9), "2.5G");
    }

    #[test]
    fn quota_rows_show_used_left_and_when_the_period_ends() {
        let body = "10.8.0.4/32\tw2\thk0\t1\t2\t300\t4000\t5\n\
                    quota\t10.8.0.10/32\t400000\t1000000\t1000090\tok\n\
                    quota\tweb\t0\t-\t1003600\tclosed\nquota\tbad\n";
        assert_eq!(parse_rows(body).len(), 1, "quota lines are not source rows");
        let q = parse_quotas(body);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[1],
            QuotaRow {
                identity: "web".into(),
                used: 0,
                limit: None,
                period_end: 1_003_600,
                state: "closed".into()
            }
        );
        let s = render_quotas(&q, 1_000_000, WIDTH);
        assert_eq!(s.len(), 4, "{s:#?}");
        assert!(s[1].starts_with("QUOTA (IDENTITY)"), "{s:#?}");
        assert_eq!(s[2], "10.8.0.10/32             400.0K    1.0M  600.0K      90s  ok");
        assert_eq!(s[3], "web                          0B       -       -      60m  closed");
        assert!(render_quotas(&[], 0, WIDTH).is_empty());
        assert_eq!(
            (until(119), until(7199), until(172_799), until(2_592_000)),
            ("119s".into(), "119m".into(), "47h".into(), "30d".into())
        );
    }

    #[test]
    fn uses_the_width_it_is_given() {
        assert_eq!(name_widths(WIDTH), (24, 11));
        assert_eq!(name_widths(110), (44, 21));
        assert_eq!(name_widths(400), (64, 32));
        assert_eq!(name_widths(60), (12, 11));
        let long = row("fd08::1234:5678:9abc/128", "a-container-with-a-very-long-name", 5_000, 7);
        // Wider: the name is shown whole and the row fills the screen.
        let s = render(std::slice::from_ref(&long), None, 140, 10);
        assert!(
            s[3].starts_with("fd08::1234:5678:9abc/128 (a-container-with-a-very-long-name)     hk0 "),
            "{s:#?}"
        );
        assert_eq!(s[3].chars().count(), 140, "{s:#?}");
        assert_eq!(s[2].chars().count(), 140, "{s:#?}");
        // Narrower: every line fits, the numbers come before the name's tail.
        let s = render(std::slice::from_ref(&long), None, 60, 10);
        assert!(s.iter().all(|l| l.chars().count() <= 60), "{s:#?}");
        assert!(s[3].starts_with("fd08::1234:~ hk0 "), "{s:#?}");
    }
}
