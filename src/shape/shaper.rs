//! A source's shaper: per direction, one byte bucket at the lower of the
//! class's cap and the source's share of its tunnel's rate.

use std::sync::Arc;
use std::time::Instant;

use super::Dir;
use super::bucket::{ByteBucket, Grant, burst_for};
use super::share::{SharePart, TunnelShare};

/// What a source's class asks for it, in plain numbers (`shape` sits below
/// `config`; the worker maps a `config::Class` to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    /// Bytes per second from the source to the exit; `None`: no cap.
    pub rate_up: Option<u64>,
    /// Bytes per second from the exit to the source; `None`: no cap.
    pub rate_down: Option<u64>,
    /// The source's weight in its tunnel's share; 0 is taken as 1.
    pub weight: u32,
}

impl ClassLimits {
    /// A source without a class: no cap, weight 1.
    pub const NONE: ClassLimits = ClassLimits { rate_up: None, rate_down: None, weight: 1 };
}

/// One source's shaping, owned by the worker its flows and sessions live
/// in (see the module doc for how the relay uses it).
#[derive(Debug)]
pub struct Shaper {
    up: Option<Lane>,
    down: Option<Lane>,
}

/// One shaped direction.
#[derive(Debug)]
struct Lane {
    bucket: ByteBucket,
    cap: Option<u64>,
    share: Option<SharePart>,
    /// The last grant, when it was less than asked: if all of it moves,
    /// the direction was held back.
    short: Option<usize>,
}

impl Shaper {
    /// The shaper of a source with `limits` on a tunnel (`Some` when the
    /// tunnel has a `rate`); `None` when neither caps a direction: such a
    /// source is relayed as if shaping did not exist.
    pub fn new(limits: ClassLimits, tunnel: Option<&Arc<TunnelShare>>, now: Instant) -> Option<Shaper> {
        let lane = |dir: Dir, cap: Option<u64>| {
            let share = tunnel.map(|t| SharePart::new(Arc::clone(t), dir, limits.weight, now));
            (cap.is_some() || share.is_some()).then(|| Lane::new(cap, share, now))
        };
        let s = Shaper { up: lane(Dir::Up, limits.rate_up), down: lane(Dir::Down, limits.rate_down) };
        (s.up.is_some() || s.down.is_some()).then_some(s)
    }

    fn lane(&mut self, dir: Dir) -> Option<&mut Lane> {
        match dir {
            Dir::Up => self.up.as_mut(),
            Dir::Down => self.down.as_mut(),
        }
    }

    /// How many of `want` bytes may move in `dir` now, and when to come
    /// back if that is fewer (see [`Grant`]). Takes nothing: say what
    /// moved with [`Shaper::consume`].
    pub fn allow(&mut self, dir: Dir, want: usize, now: Instant) -> Grant {
        match self.lane(dir) {
            Some(l) => l.allow(want, now),
            None => Grant::all(want),
        }
    }

    /// Counts `n` payload bytes that moved in `dir` (granted or not); what
    /// went beyond the debt allowed is forgiven, and returned.
    pub fn consume(&mut self, dir: Dir, n: usize, now: Instant) -> u64 {
        match self.lane(dir) {
            Some(l) => l.consume(n, now),
            None => 0,
        }
    }

    /// Takes `n` bytes another process of an upgrade moved in `dir` for the
    /// same source off the bucket: not counted in this process's tunnel
    /// share, and no short grant of this process's own is settled by it.
    pub fn debit(&mut self, dir: Dir, n: usize, now: Instant) {
        if let Some(l) = self.lane(dir) {
            l.roll(now);
            l.bucket.consume(n, now);
        }
    }

    /// The rate `dir` is held to now, bytes per second; `None`: not shaped.
    pub fn rate(&self, dir: Dir) -> Option<u64> {
        let lane = match dir {
            Dir::Up => self.up.as_ref(),
            Dir::Down => self.down.as_ref(),
        };
        lane.map(|l| l.bucket.rate())
    }
}

impl Lane {
    fn new(cap: Option<u64>, share: Option<SharePart>, now: Instant) -> Lane {
        Lane { bucket: ByteBucket::new(lower(cap, share.as_ref()), now), cap, share, short: None }
    }

    fn rate(&self) -> u64 {
        lower(self.cap, self.share.as_ref())
    }

    /// The share, not the class cap, sets the rate: waiting means busy.
    fn share_binds(&self) -> bool {
        self.share.as_ref().is_some_and(|s| self.cap.is_none_or(|c| s.limit() <= c))
    }

    /// The bucket follows a changed limit (from `now` on).
    fn retune(&mut self, now: Instant) {
        let rate = self.rate();
        if rate != self.bucket.rate() {
            self.bucket.set(rate, burst_for(rate), now);
        }
    }

    /// At the first call in a new window, the share says how the last
    /// one went and takes its new limit.
    fn roll(&mut self, now: Instant) {
        if let Some(s) = &mut self.share
            && s.due(now)
        {
            s.roll(now);
            self.retune(now);
        }
    }

    fn allow(&mut self, want: usize, now: Instant) -> Grant {
        self.roll(now);
        let mut g = self.bucket.allow(want, now);
        if g.bytes == 0 && want > 0 && self.hold(now) {
            // A new limit may grant at once.
            g = self.bucket.allow(want, now);
        }
        self.short = (g.bytes > 0 && g.bytes < want).then_some(g.bytes);
        g
    }

    fn consume(&mut self, n: usize, now: Instant) -> u64 {
        self.roll(now);
        if let Some(s) = &mut self.share {
            s.used(u64::try_from(n).unwrap_or(u64::MAX));
        }
        let forgiven = self.bucket.consume(n, now);
        // All of a short grant went: the bucket, not the socket, stopped it.
        if self.short.take().is_some_and(|g| n >= g) {
            self.hold(now);
        }
        forgiven
    }

    /// The direction wanted more than the bucket gave: when the share (not
    /// the class cap) sets the rate, the source is busy; a changed limit
    /// applies at once. True when the rate changed.
    fn hold(&mut self, now: Instant) -> bool {
        if !self.share_binds() || !self.share.as_mut().is_some_and(|s| s.held_back(now)) {
            return false;
        }
        let before = self.bucket.rate();
        self.retune(now);
        self.bucket.rate() != before
    }
}

/// The lower of a cap and a share's limit.
fn lower(cap: Option<u64>, share: Option<&SharePart>) -> u64 {
    match (cap, share.map(SharePart::limit)) {
        (Some(c), Some(s)) => c.min(s),
        (c, s) => c.or(s).unwrap_or(u64::MAX),
    }
}
