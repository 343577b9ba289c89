//! The config file as written: serde structs that mirror SPEC §3 key for key.
//!
//! Values that can be checked on their own (addresses, prefixes, rates,
//! duplicate tunnel and class names, a class's keys) are checked here,
//! inside deserialisation, so that ron reports the line and column of the
//! offending token. Checks across keys (routes naming tunnels and classes,
//! duplicate prefixes) happen in `validate`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::rate::{BytesPerSec, parse_rate};
use super::size::parse_size;
use crate::route::Cidr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename = "config")]
pub struct RawConfig {
    pub listen: Vec<Addr>,
    pub tunnels: Tunnels,
    pub routes: Vec<RawRoute>,
    /// Bandwidth classes (issue 26), named by routes and by a Docker label.
    #[serde(default)]
    pub classes: Classes,
    #[serde(default)]
    pub default: RawDefault,
    #[serde(default)]
    pub intercept: RawIntercept,
    #[serde(default)]
    pub tcp: RawTcp,
    #[serde(default)]
    pub udp: RawUdp,
    #[serde(default)]
    pub threads: usize,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub bypass: Vec<CidrField>,
    #[serde(default)]
    pub dns: RawDns,
    #[serde(default)]
    pub docker: Option<RawDocker>,
    /// Distinct source addresses a prefix route (or the default) may have
    /// at once, TCP and UDP together; host routes are not capped.
    #[serde(default = "max_sources_default")]
    pub max_sources_per_route: Positive,
    /// Where the quota counters are kept (an absolute directory).
    #[serde(default)]
    pub state_dir: StateDir,
}

/// Containers choose their tunnel by label, followed on the Engine API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "docker")]
pub struct RawDocker {
    pub socket: String,
    pub label: String,
    /// The label naming a container's class (read on containers that carry `label`).
    pub class_label: String,
}

impl Default for RawDocker {
    fn default() -> Self {
        RawDocker {
            socket: "/var/run/docker.sock".into(),
            label: "egressd.tunnel".into(),
            class_label: "egressd.class".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename = "tunnel")]
pub enum RawTunnel {
    Socks5 {
        server: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default = "yes")]
        udp: bool,
        #[serde(default)]
        udp_relay: Option<Addr>,
        #[serde(default = "warm_default")]
        warm: u16,
        #[serde(default = "warm_default")]
        warm_udp: u16,
        #[serde(default = "warm_max_default")]
        warm_max: u16,
        #[serde(default = "warm_idle_default")]
        warm_idle_secs: u32,
        #[serde(default = "yes")]
        pipeline: bool,
        #[serde(default)]
        rate: Option<RateField>,
    },
    HttpConnect {
        server: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        pipeline: bool,
        #[serde(default)]
        rate: Option<RateField>,
    },
    Direct {
        #[serde(default)]
        interface: Option<String>,
        #[serde(default)]
        mark: Option<u32>,
        #[serde(default)]
        bind: Option<IpField>,
        #[serde(default)]
        rate: Option<RateField>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename = "route")]
pub struct RawRoute {
    pub source: CidrField,
    pub tunnel: String,
    /// A class of `classes`, for each source address the route matches.
    #[serde(default)]
    pub class: Option<String>,
}

/// What unmatched sources get. No class: `Tunnel` is a tuple, not a route;
/// a route for `0.0.0.0/0` and `::/0` with a class does the same with one.
#[derive(Debug, Default, Deserialize)]
pub enum RawDefault {
    #[default]
    Reject,
    Tunnel(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TcpIntercept {
    /// nat REDIRECT, original destination from conntrack (the article's way).
    #[default]
    Redirect,
    /// mangle TPROXY, original destination is the accepted socket's address.
    Tproxy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "intercept")]
pub struct RawIntercept {
    pub tcp: TcpIntercept,
    pub mark: u32,
    pub table: u32,
    pub interfaces: Vec<String>,
    pub sources: Vec<CidrField>,
}

impl Default for RawIntercept {
    fn default() -> Self {
        RawIntercept {
            tcp: TcpIntercept::Redirect,
            mark: 10900,
            table: 10900,
            interfaces: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// Where container DNS goes (SPEC §3): queries to a resolver that is not
/// public (private, link-local, the host's own) cannot be answered from an
/// exit, so they are sent to `upstream` through the container's tunnel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "dns")]
pub struct RawDns {
    pub upstream: Addr,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns { upstream: Addr(SocketAddr::from(([1, 1, 1, 1], 53))) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "tcp")]
pub struct RawTcp {
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    /// Idle limit once one direction has ended (half-closed flows).
    pub half_close_timeout_secs: u64,
    pub splice: bool,
    /// Per source address: flows open at once, and new flows (a token
    /// bucket: a rate and a burst).
    pub max_flows_per_source: Positive,
    pub new_flows_per_source_per_sec: Positive,
    pub new_flows_per_source_burst: Positive,
    /// One source holds at most half of the descriptors the others leave free.
    pub fd_share: bool,
    /// Client bytes held while tunnels open, per worker (then clients wait).
    pub early_bytes_per_worker: usize,
    /// After an upgrade, how long the old process relays its open flows.
    pub drain_timeout_secs: u64,
}

impl Default for RawTcp {
    fn default() -> Self {
        RawTcp {
            connect_timeout_secs: 10,
            idle_timeout_secs: 3600,
            half_close_timeout_secs: 60,
            splice: true,
            max_flows_per_source: Positive(16384),
            new_flows_per_source_per_sec: Positive(5000),
            new_flows_per_source_burst: Positive(10000),
            fd_share: true,
            early_bytes_per_worker: 4 << 20,
            drain_timeout_secs: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "udp")]
pub struct RawUdp {
    pub idle_timeout_secs: u64,
    pub dns_idle_timeout_secs: u64,
    pub max_sessions: usize,
    pub max_reply_sockets: usize,
    pub pending_datagrams: usize,
    pub dns_over_tcp: bool,
    /// DNS over TCP: a query unanswered this long is dropped (counted) and
    /// its pooled connection replaced.
    pub dns_answer_timeout_secs: u64,
    pub max_sessions_per_source: usize,
    pub new_sessions_per_source_per_sec: u32,
    pub new_sessions_per_source_burst: u32,
    pub pending_bytes_per_worker: usize,
    pub pending_bytes_per_source: usize,
    /// DNS over TCP: longer queries are dropped (counted).
    pub dns_max_query_bytes: usize,
    /// DNS over TCP: unwritten query bytes one connection may queue (while
    /// it connects, or while the server does not read).
    pub dns_queue_bytes_per_connection: usize,
    /// Sources holding no session whose new-session rate state is kept
    /// (process-wide, split across workers; 0: forgotten with the last session).
    pub max_idle_sources: usize,
}

impl Default for RawUdp {
    fn default() -> Self {
        RawUdp {
            idle_timeout_secs: 300,
            dns_idle_timeout_secs: 20,
            max_sessions: 65536,
            max_reply_sockets: 4096,
            pending_datagrams: 16,
            dns_over_tcp: true,
            dns_answer_timeout_secs: 5,
            max_sessions_per_source: 16384,
            new_sessions_per_source_per_sec: 2000,
            new_sessions_per_source_burst: 4096,
            pending_bytes_per_worker: 4 << 20,
            pending_bytes_per_source: 1 << 20,
            dns_max_query_bytes: 4096,
            dns_queue_bytes_per_connection: 64 << 10,
            max_idle_sources: 4096,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[serde(rename = "control")]
pub struct RawControl {
    pub socket: String,
    pub metrics_listen: Option<Addr>,
    /// Seconds a route source goes without a flow or session before its
    /// counters and series are forgotten.
    pub forget_sources_secs: u64,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl { socket: "/run/egressd.sock".into(), metrics_listen: None, forget_sources_secs: 600 }
    }
}

fn yes() -> bool {
    true
}

/// A socket address (`10.8.0.1:10900`, `[fd08::1]:10900`), checked in place.
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub SocketAddr);

/// A source or destination prefix, checked in place; keeps the text as written.
#[derive(Debug, Clone)]
pub struct CidrField {
    pub cidr: Cidr,
    pub text: String,
}

/// A count that must be at least 1 (a limit of 0 would refuse everything),
/// checked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positive(pub u32);

/// A rate (`"20mbit"`, `"10KiB/s"`), checked in place: bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateField(pub BytesPerSec);

/// A class's weight, 1 to [`WEIGHT_MAX`], checked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(pub u32);

/// The largest class weight: a thousand to one is already a share of
/// 0.1 %; more would only make the arithmetic of shares harder to bound.
pub const WEIGHT_MAX: u32 = 1000;

/// One bandwidth class as written: caps per direction (`rate` sets both)
/// and a weight. Checked as a whole where it is parsed (see [`Classes`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename = "class")]
pub struct RawClass {
    #[serde(default)]
    pub rate: Option<RateField>,
    #[serde(default)]
    pub rate_up: Option<RateField>,
    #[serde(default)]
    pub rate_down: Option<RateField>,
    #[serde(default)]
    pub weight: Option<Weight>,
    /// Bytes a source (a container, or a route's prefix) may move per period.
    #[serde(default)]
    pub quota: Option<RawQuota>,
    /// What a spent quota does; `Reject` unless set (needs `quota`).
    #[serde(default)]
    pub on_quota: Option<RawOnQuota>,
}

/// `quota: (bytes: "200GiB", every_days: 30)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename = "quota")]
pub struct RawQuota {
    pub bytes: SizeField,
    pub every_days: Days,
}

/// `on_quota: Reject` (fail closed) or `Throttle("1mbit")`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename = "on_quota")]
pub enum RawOnQuota {
    Reject,
    Throttle(RateField),
}

/// A byte count (`"200GiB"`, `"1.5TB"`, or a bare integer of bytes),
/// checked in place; never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeField(pub u64);

/// A quota period in days (fractions allowed), checked in place and kept
/// in whole milliseconds: [`DAYS_MIN_MS`] to [`DAYS_MAX`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days {
    pub ms: u64,
}

/// The shortest quota period: one second (tests use a few seconds).
pub const DAYS_MIN_MS: u64 = 1000;
/// The longest quota period, in days: ten years.
pub const DAYS_MAX: f64 = 3660.0;

/// The quota counters' directory, absolute; `/var/lib/egressd` unless set
/// (systemd's `StateDirectory=egressd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(pub String);

/// The default `state_dir`.
pub const STATE_DIR_DEFAULT: &str = "/var/lib/egressd";

impl Default for StateDir {
    fn default() -> Self {
        StateDir(STATE_DIR_DEFAULT.into())
    }
}

impl RawClass {
    /// What is wrong with this class on its own, if anything.
    fn problem(&self, name: &str) -> Option<String> {
        if self.rate.is_some() && (self.rate_up.is_some() || self.rate_down.is_some()) {
            return Some(format!(
                "class \"{name}\": rate sets both directions; give rate alone, or rate_up and/or rate_down"
            ));
        }
        if self.on_quota.is_some() && self.quota.is_none() {
            return Some(format!(
                "class \"{name}\": on_quota needs a quota, e.g. quota: (bytes: \"200GiB\", every_days: 30)"
            ));
        }
        if self.rate.is_none()
            && self.rate_up.is_none()
            && self.rate_down.is_none()
            && self.weight.is_none()
            && self.quota.is_none()
        {
            return Some(format!(
                "class \"{name}\" sets nothing: give rate, rate_up, rate_down, weight and/or quota, e.g. (rate: \"20mbit\")"
            ));
        }
        None
    }
}

/// A bare IP address, checked in place.
#[derive(Debug, Clone, Copy)]
pub struct IpField(pub IpAddr);

/// The `tunnels` map in file order; a repeated name is an error at its line.
#[derive(Debug, Default)]
pub struct Tunnels(pub Vec<(String, RawTunnel)>);

/// The `classes` map in file order; a repeated name, or a class that sets
/// nothing or sets `rate` with `rate_up`/`rate_down`, is an error at its line.
#[derive(Debug, Default)]
pub struct Classes(pub Vec<(String, RawClass)>);

/// Why `name` cannot name a tunnel or a class (`what`), if it cannot.
fn bad_name(what: &str, name: &str) -> Option<String> {
    (name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace())).then(
        || format!("{what} name \"{name}\" must be 1-64 characters with no spaces or control characters"),
    )
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "\"{s}\" is not a socket address: write ip:port, e.g. \"10.8.0.1:10900\" or \"[fd08::1]:10900\""
            ))
        })
    }
}

impl<'de> Deserialize<'de> for CidrField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.parse::<Cidr>() {
            Ok(cidr) => Ok(CidrField { cidr, text }),
            Err(e) => Err(de::Error::custom(format!("\"{text}\": {e}"))),
        }
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(de::Error::custom("this limit must be at least 1 (0 would refuse everything)")),
            n => Ok(Positive(n)),
        }
    }
}

impl<'de> Deserialize<'de> for IpField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(IpField).map_err(|_| {
            de::Error::custom(format!(
                "\"{s}\" is not an IP address (e.g. \"198.51.100.7\" or \"2001:db8::7\")"
            ))
        })
    }
}

impl<'de> Deserialize<'de> for Tunnels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tunnels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a map of tunnel name to tunnel, e.g. { \"hk0\": Socks5(server: \"100.64.0.2:1080\") }",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tunnels, A::Error> {
                let mut out: Vec<(String, RawTunnel)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "duplicate tunnel name \"{name}\": each tunnel needs its own name"
                        )));
                    }
                    if let Some(e) = bad_name("tunnel", &name) {
                        return Err(de::Error::custom(e));
                    }
                    out.push((name, map.next_value()?));
                }
                Ok(Tunnels(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Classes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Classes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of class name to class, e.g. { \"slow\": (rate: \"20mbit\") }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Classes, A::Error> {
                let mut out: Vec<(String, RawClass)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "duplicate class name \"{name}\": each class needs its own name"
                        )));
                    }
                    if let Some(e) = bad_name("class", &name) {
                        return Err(de::Error::custom(e));
                    }
                    let class: RawClass = map.next_value()?;
                    if let Some(e) = class.problem(&name) {
                        return Err(de::Error::custom(e));
                    }
                    out.push((name, class));
                }
                Ok(Classes(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RateField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RateField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate as a string with a unit, e.g. \"20mbit\" or \"512KiB/s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RateField, E> {
                parse_rate(s).map(RateField).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RateField, E> {
                Err(unitless(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RateField, E> {
                Err(unitless(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<RateField, E> {
                Err(unitless(n))
            }
        }
        /// A bare number could mean bits or bytes: said, not guessed.
        fn unitless<E: de::Error>(n: impl fmt::Display) -> E {
            E::custom(format!(
                "rate {n} has no unit; write it as a string with one, e.g. \"20mbit\" (units: kbit, mbit, gbit, KiB/s, MiB/s)"
            ))
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SizeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte count, e.g. \"200GiB\", \"1.5TB\" or 5000")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SizeField, E> {
                parse_size(s).map(SizeField).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SizeField, E> {
                parse_size(&n.to_string()).map(SizeField).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SizeField, E> {
                parse_size(&n.to_string()).map(SizeField).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<SizeField, E> {
                Err(E::custom(format!(
                    "size {n} is not a whole number of bytes; write it as a string with a unit, e.g. \"1.5GiB\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Days {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Days;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of days, e.g. 30 or 0.5")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Days, E> {
                days(n as f64)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Days, E> {
                days(n as f64)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Days, E> {
                days(n)
            }
        }
        d.deserialize_any(V)
    }
}

/// `every_days` in whole milliseconds, if it is in range.
fn days<E: de::Error>(n: f64) -> Result<Days, E> {
    let ms = (n * 86_400_000.0).round();
    if n.is_finite() && n <= DAYS_MAX && ms >= DAYS_MIN_MS as f64 {
        return Ok(Days { ms: ms as u64 });
    }
    Err(E::custom(format!(
        "every_days {n} is out of range: at least one second's worth (0.0000116) and at most {DAYS_MAX} days"
    )))
}

impl<'de> Deserialize<'de> for StateDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.starts_with('/') || s.contains('\0') || s.len() > 1024 {
            return Err(de::Error::custom(format!(
                "state_dir \"{s}\" must be an absolute directory, e.g. \"{STATE_DIR_DEFAULT}\""
            )));
        }
        Ok(StateDir(s))
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            w @ 1..=WEIGHT_MAX => Ok(Weight(w)),
            w => Err(de::Error::custom(format!(
                "weight {w} is out of range: 1 to {WEIGHT_MAX} (a source's share of its tunnel's rate is its weight over the busy sources' sum)"
            ))),
        }
    }
}

/// Warm pooled connections per SOCKS5 tunnel when the config says nothing.
pub const WARM_DEFAULT: u16 = 2;

fn warm_default() -> u16 {
    WARM_DEFAULT
}

fn warm_max_default() -> u16 {
    crate::config::WARM_MAX
}

/// Seconds without a flow after which a tunnel's pools close what they hold
/// (and make no more until the next flow) when the config says nothing.
pub const WARM_IDLE_DEFAULT: u32 = 300;

fn warm_idle_default() -> u32 {
    WARM_IDLE_DEFAULT
}

/// Distinct sources per prefix route when the config says nothing: four
/// times a host with a thousand containers behind one prefix.
pub const MAX_SOURCES_DEFAULT: u32 = 4096;

fn max_sources_default() -> Positive {
    Positive(MAX_SOURCES_DEFAULT)
}
