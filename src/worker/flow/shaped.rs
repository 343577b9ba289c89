//! The relay of a shaped or metered flow (issues 26 and 27): each
//! direction moves within its source's gate's grants, stops at a short
//! one with a wake-up (the flow's `Kind::Shape` timer), says what the
//! kernel holds back meanwhile, and ends the flow once a Reject quota is
//! spent.

use std::os::fd::AsFd;
use std::time::Instant;

use mio::net::TcpStream;

use super::super::gate::Gate;
use super::{End, Flow, Reset, settle};
use crate::relay::{Pump, PumpError, Pumped, RelayCtx};
use crate::shape::Dir;
use crate::stats::Counters;

/// `pump_some` for a shaped source: each direction moves within its
/// grants; one stopped by its grant (`Pumped::Shaped`) notes its wake-up
/// in `shape_due` (counted in `tcp_shaped_waits` when it starts waiting).
pub(super) fn pump_shaped(
    f: &mut Flow,
    relay: &mut RelayCtx,
    counters: &Counters,
    now: Instant,
    (up, down): (bool, bool),
    sh: &mut Gate,
) -> Option<End> {
    if sh.refused() {
        f.tc.inc_all(counters, |c| &c.tcp_quota_ended);
        return Some(End::Reset(Reset::Quota));
    }
    let (mut wake_up, mut wake_down) = (None, None);
    let up = match up {
        true => {
            pump_within(&mut f.up, &mut f.client, &mut f.upstream, relay, (sh, Dir::Up, now), &mut wake_up)
        }
        false => Ok(f.up.state()),
    };
    let down = match down {
        true => pump_within(
            &mut f.down,
            &mut f.upstream,
            &mut f.client,
            relay,
            (sh, Dir::Down, now),
            &mut wake_down,
        ),
        false => Ok(f.down.state()),
    };
    let wake = match (wake_up, wake_down) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(t) = wake {
        if f.shape_due.is_none() {
            f.tc.inc_all(counters, |c| &c.tcp_shaped_waits);
        }
        f.shape_due = Some(f.shape_due.map_or(t, |d| d.min(t)));
        // What the stopped directions leave unread: held back.
        let unread =
            |on: bool, s: &TcpStream| if on { crate::sys::unread_bytes(s.as_fd()).unwrap_or(0) } else { 0 };
        let held = unread(wake_up.is_some(), &f.client) + unread(wake_down.is_some(), &f.upstream);
        set_held(f, counters, u32::try_from(held).unwrap_or(u32::MAX));
    } else if f.shape_due.is_none() && f.held > 0 {
        set_held(f, counters, 0);
    }
    settle(up, down)
}

/// A shaped flow's bytes held back are now `held`.
fn set_held(f: &mut Flow, counters: &Counters, held: u32) {
    f.tc.shift_all(counters, |c| &c.tcp_held_bytes, f.held.into(), held.into());
    f.held = held;
}

/// One direction of a shaped flow: asks for a grant, moves at most that,
/// says what moved, again while whole grants go and the socket has more;
/// stopped by a short grant, the wake-up goes to `wake`.
fn pump_within(
    pump: &mut Pump,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    relay: &mut RelayCtx,
    (sh, dir, now): (&mut Gate, Dir, Instant),
    wake: &mut Option<Instant>,
) -> Result<Pumped, PumpError> {
    loop {
        let g = sh.allow(dir, super::shaping::WANT, now);
        let mut left = g.bytes;
        let r = pump.pump_within(src, dst, relay, &mut left);
        sh.consume(dir, g.bytes - left, now);
        if !matches!(r, Ok(Pumped::Shaped)) {
            return r;
        }
        // Else the whole ask went, and the socket may hold more.
        if let Some(t) = g.wake {
            *wake = Some(wake.map_or(t, |w| w.min(t)));
            return r;
        }
    }
}
