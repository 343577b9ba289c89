//! The control socket's quota answers (issue 27): `quota list`, `quota
//! reset NAME|--all`, the `quotas:` section of `stats` and the quota
//! series of the metrics. Pure text from the ledger's rows.

use crate::quota::{Keeper, Ledger, Row, store};

/// `quota list`: a header and one row per identity, whitespace-separated:
/// identity, used, limit and left bytes (`-`: no quota known yet), the
/// period's end (RFC 3339, UTC) and its state (`ok`, `spent`, `closed`).
/// While failed closed, a first line says why.
pub(super) fn list(ledger: &Ledger) -> String {
    let mut o = String::new();
    if let Some(kept) = ledger.closed() {
        o.push_str(&closed_line(&kept));
    }
    o.push_str("IDENTITY USED LIMIT LEFT PERIOD_END STATE\n");
    for r in ledger.rows() {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        o.push_str(&format!(
            "{} {} {} {} {} {}\n",
            r.identity,
            r.used,
            opt(r.limit),
            opt(r.left),
            rfc3339(r.period_end),
            state(&r)
        ));
    }
    o
}

/// `quota reset NAME` (or every identity for `None`): a new period from
/// now with nothing used, saved at once.
pub(super) fn reset(keeper: &Keeper, name: Option<&str>) -> Result<String, String> {
    let now = store::now_ms();
    let body = match name {
        Some(n) if keeper.ledger.reset(n, now) => {
            format!("quota of {n} reset: a new period from now, nothing used\n")
        }
        Some(n) => return Err(format!("no quota counter named {n} (`egressd quota list` names them)")),
        None => {
            let n = keeper.ledger.reset_all(now);
            format!("{n} quota counters reset: new periods from now, nothing used; no longer failed closed\n")
        }
    };
    match keeper.save_now() {
        Ok(()) => Ok(body),
        Err(e) => Err(format!("{}; but {e}", body.trim_end())),
    }
}

/// `egressd top`'s quota rows, after its source rows: `quota`, identity,
/// used, limit (`-`: not known yet), period end (unix seconds) and state,
/// tab-separated.
pub(super) fn top_rows(ledger: &Ledger) -> String {
    let mut o = String::new();
    for r in ledger.rows() {
        let limit = r.limit.map_or("-".to_string(), |l| l.to_string());
        let id: String = r.identity.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        o.push_str(&format!("quota\t{id}\t{}\t{limit}\t{}\t{}\n", r.used, r.period_end, state(&r)));
    }
    o
}

/// `stats`' section on quotas; empty when there is none.
pub(super) fn section(ledger: &Ledger) -> String {
    let rows = ledger.rows();
    let closed = ledger.closed();
    if rows.is_empty() && closed.is_none() {
        return String::new();
    }
    let mut o = String::from("\nquotas:\n");
    if let Some(kept) = closed {
        o.push_str("  ");
        o.push_str(&closed_line(&kept));
    }
    for r in rows {
        let limit = r.limit.map_or("-".to_string(), |l| l.to_string());
        let left = r.left.map_or("-".to_string(), |l| l.to_string());
        o.push_str(&format!(
            "  {:<24} used {} of {limit} (left {left}), period ends {}, {}\n",
            r.identity,
            r.used,
            rfc3339(r.period_end),
            state(&r)
        ));
    }
    o
}

/// A quota series: its name, type, help and value of a row.
type Series = (&'static str, &'static str, &'static str, fn(&Row) -> Option<u64>);

/// The quota series in Prometheus text: used, limit and period end per
/// identity, and whether the ledger failed closed.
pub fn prometheus(ledger: &Ledger) -> String {
    let rows = ledger.rows();
    let mut o = String::new();
    let series: [Series; 3] = [
        ("egressd_quota_used_bytes", "gauge", "Bytes counted against the quota this period", |r| {
            Some(r.used)
        }),
        ("egressd_quota_limit_bytes", "gauge", "The quota per period, bytes", |r| r.limit),
        ("egressd_quota_period_end_seconds", "gauge", "When the current period ends, unix seconds", |r| {
            Some(r.period_end)
        }),
    ];
    for (name, kind, help, value) in series {
        // A metric is declared only with samples (promtool and the lint
        // test hold every HELP line to a series).
        let samples: Vec<(&Row, u64)> = rows.iter().filter_map(|r| Some((r, value(r)?))).collect();
        if samples.is_empty() {
            continue;
        }
        o.push_str(&format!("# HELP {name} {help} (identity: a container name or a route prefix)\n"));
        o.push_str(&format!("# TYPE {name} {kind}\n"));
        for (r, v) in samples {
            let id = r.identity.replace('\\', "\\\\").replace('"', "\\\"");
            o.push_str(&format!("{name}{{identity=\"{id}\"}} {v}\n"));
        }
    }
    o.push_str("# HELP egressd_quota_failed_closed 1 while the quota state file was corrupt and not reset\n");
    o.push_str("# TYPE egressd_quota_failed_closed gauge\n");
    o.push_str(&format!("egressd_quota_failed_closed {}\n", u8::from(ledger.closed().is_some())));
    o.push_str(
        "# HELP egressd_quota_identities_dropped_total Quota identities no flow held, dropped to keep the ledger \
         bounded\n",
    );
    o.push_str("# TYPE egressd_quota_identities_dropped_total counter\n");
    o.push_str(&format!("egressd_quota_identities_dropped_total {}\n", ledger.dropped()));
    o
}

fn state(r: &Row) -> &'static str {
    match (r.closed, r.spent) {
        (true, _) => "closed",
        (false, true) => "spent",
        (false, false) => "ok",
    }
}

fn closed_line(kept: &str) -> String {
    format!(
        "the quota state file was corrupt: kept aside as {kept}; metered classes are refused until \
         `egressd quota reset NAME` (or --all) or the file is restored\n"
    )
}

/// Unix seconds as RFC 3339 in UTC, e.g. `2026-12-07T02:10:00Z`.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnQuota, Quota};
    use std::time::Duration;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_609_400), "2026-12-07T02:10:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn list_section_and_metrics_show_used_left_and_state() {
        let ledger = Ledger::new();
        let q = Quota { bytes: 1000, every: Duration::from_secs(3600), on: OnQuota::Reject };
        let start = 1_796_605_800_000; // 2026-12-07T01:10:00Z
        ledger.meter("10.8.0.10/32", &q, start).add(400);
        ledger.meter("web", &q, start).add(1000);
        let l = list(&ledger);
        assert_eq!(
            l,
            "IDENTITY USED LIMIT LEFT PERIOD_END STATE\n\
             10.8.0.10/32 400 1000 600 2026-12-07T02:10:00Z ok\n\
             web 1000 1000 0 2026-12-07T02:10:00Z spent\n"
        );
        let s = section(&ledger);
        assert!(s.starts_with("\nquotas:\n  10.8.0.10/32"), "{s}");
        assert!(s.contains(
            "web                      used 1000 of 1000 (left 0), period ends 2026-12-07T02:10:00Z, spent"
        ));
        let p = prometheus(&ledger);
        assert!(p.contains("egressd_quota_used_bytes{identity=\"web\"} 1000\n"), "{p}");
        assert!(p.contains("egressd_quota_limit_bytes{identity=\"10.8.0.10/32\"} 1000\n"), "{p}");
        assert!(p.contains("egressd_quota_period_end_seconds{identity=\"web\"} 1796609400\n"), "{p}");
        assert!(p.contains("egressd_quota_failed_closed 0\n"), "{p}");
        assert_eq!(section(&Ledger::new()), "");
        assert_eq!(
            top_rows(&ledger),
            "quota\t10.8.0.10/32\t400\t1000\t1796609400\tok\nquota\tweb\t1000\t1000\t1796609400\tspent\n"
        );
    }

    #[test]
    fn failed_closed_says_why_first() {
        let ledger = Ledger::failed_closed("/var/lib/egressd/quota.state.corrupt-1".into());
        let q = Quota { bytes: 1000, every: Duration::from_secs(3600), on: OnQuota::Reject };
        ledger.meter("web", &q, 1_796_605_800_000);
        let l = list(&ledger);
        assert!(l.starts_with(
            "the quota state file was corrupt: kept aside as /var/lib/egressd/quota.state.corrupt-1;"
        ));
        assert!(l.ends_with(" closed\n"), "{l}");
        assert!(prometheus(&ledger).contains("egressd_quota_failed_closed 1\n"));
        // No counters: only the fail-closed gauge and the dropped count, no
        // series without samples.
        let p = prometheus(&Ledger::new());
        assert!(!p.contains("egressd_quota_used_bytes"), "{p}");
        assert!(p.contains("egressd_quota_failed_closed 0\n"), "{p}");
        assert!(p.ends_with("egressd_quota_identities_dropped_total 0\n"), "{p}");
    }
}
