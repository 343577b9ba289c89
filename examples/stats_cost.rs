//! What reading the counters costs with many route sources, and how long a
//! worker's registration of a new source waits while readers read (issue 25).
//!
//!   cargo run --release --example stats_cost [SOURCES [WORKERS]]
//!
//! Builds a registry as a daemon with WORKERS workers (default 2) would
//! hold it after SOURCES containers (default 10 000, IPv6 /128s) sent flows
//! through every worker, then times what the control socket does for
//! `egressd stats` (totals, per tunnel, per source, the table), for a
//! Prometheus scrape (the same, as Prometheus text) and for `egressd top`
//! (per source). Last, a reader thread scrapes in a loop while this thread
//! registers 1 000 more sources, timing each registration: the wait a
//! worker's first flow of a source would see. Prints medians; no
//! assertion (numbers for a report, not a test).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use egressd::stats::{self, Counters, Registry};

fn label(i: usize) -> String {
    format!("fd00:8::{:x}:{:x}/128", i >> 16, i & 0xffff)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median of `n` runs of `f`.
fn time(n: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut out = 0;
    let runs = (0..n)
        .map(|_| {
            let t = Instant::now();
            out = std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    (median(runs), out)
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let sources = args.next().unwrap_or(10_000);
    let workers = args.next().unwrap_or(2);
    let r = Arc::new(Registry::default());
    let threads: Vec<_> = (0..workers * 2).map(|_| r.thread()).collect();
    for t in &threads {
        Counters::add(&t.tcp_bytes_up, 1);
    }
    let mut held = Vec::new();
    let t = Instant::now();
    for w in 0..workers {
        for name in ["exit0", "exit1", "exit2"] {
            held.push(r.tunnel(name));
        }
        for i in 0..sources {
            let c = r.source(&label(i));
            Counters::add(&c.tcp_bytes_up, (i + w) as u64);
            Counters::inc(&c.tcp_flows_total);
            held.push(c);
        }
    }
    println!("{sources} sources x {workers} workers registered in {:?}", t.elapsed());

    let n = 9;
    let (d, len) = time(n, || r.per_source().len());
    println!("top (per_source):                        {d:>12?}  ({len} rows)");
    let (d, len) = time(n, || {
        let src = r.per_source();
        stats::table(&r.total(), &r.per_tunnel(), &src).len()
    });
    println!("stats (total + per tunnel/source, table): {d:>12?}  ({len} bytes)");
    let (d, len) = time(n, || stats::prometheus(&r.total(), &r.per_tunnel(), &r.per_source()).len());
    println!("scrape (the same, Prometheus text):       {d:>12?}  ({len} bytes)");

    // A reader scraping in a loop; this thread registers new sources.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (r, stop) = (Arc::clone(&r), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(stats::prometheus(&r.total(), &r.per_tunnel(), &r.per_source()));
                scrapes += 1;
            }
            scrapes
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut waits = Vec::new();
    let t = Instant::now();
    for i in 0..1000 {
        let s = Instant::now();
        held.push(r.source(&label(sources + i)));
        waits.push(s.elapsed());
        std::thread::sleep(Duration::from_micros(200));
    }
    let span = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let scrapes = reader.join().unwrap_or(0);
    waits.sort();
    println!(
        "registering a source while a reader scrapes ({scrapes} scrapes in {span:?}): median {:?}, p99 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() * 99 / 100],
        waits[waits.len() - 1]
    );
}
