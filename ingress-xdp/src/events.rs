//! Drop events: the run-time switch and rate limit (`EVENT_CONFIG`), what
//! each CPU's limiter counted (`EVENT_LIMITER`), and the reader of the
//! `EVENTS` ring that `events` and `top` print.
//!
//! The programs send an event for each dropped or audited packet while the
//! switch is on, at most `rate` per second and CPU with bursts of `burst`
//! (a token bucket in the program). A full ring or an empty bucket is
//! counted, never waited for, and the packet and rule counters stay exact
//! either way: events are a sample of who sends, the counters are the total.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf};
use ingress_xdp_common::{Event, EventConfig, EventLimiter, event_verdict};
use serde::Serialize;

use crate::{
    pins::{MAP_EVENT_CONFIG, MAP_EVENT_LIMITER, MAP_EVENTS, Pins},
    rules::open_map_at,
    spec::Protocol,
    sys,
};

/// Events per second and CPU when `events on` names no rate.
pub const DEFAULT_RATE: u32 = 1000;
/// Events a CPU may send at once after a quiet spell.
pub const DEFAULT_BURST: u32 = 100;

/// The switch as the operator sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub enabled: bool,
    /// Events per second, per CPU.
    pub rate: u32,
    pub burst: u32,
}

impl Settings {
    /// The map value (pure): a token is 1e9/rate ns of budget; the program
    /// measures time in jiffies of `ns_per_jiffy`.
    pub fn to_config(self, ns_per_jiffy: u32) -> EventConfig {
        let ns_per_event = 1_000_000_000 / u64::from(self.rate.max(1));
        EventConfig {
            enabled: u32::from(self.enabled),
            ns_per_jiffy,
            ns_per_event,
            burst_ns: ns_per_event * u64::from(self.burst.max(1)),
        }
    }

    pub fn from_config(c: &EventConfig) -> Self {
        if c.ns_per_event == 0 {
            // Never set: off, with the defaults `on` would use.
            return Self {
                enabled: c.enabled != 0,
                rate: DEFAULT_RATE,
                burst: DEFAULT_BURST,
            };
        }
        Self {
            enabled: c.enabled != 0,
            rate: (1_000_000_000 / c.ns_per_event) as u32,
            burst: (c.burst_ns / c.ns_per_event) as u32,
        }
    }
}

/// What the limiters counted, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    /// Held back by the rate limit.
    pub limited: u64,
    /// Lost because the ring was full.
    pub lost: u64,
}

/// `EVENT_CONFIG` and `EVENT_LIMITER` of a pin directory.
pub struct Switch {
    pins: Pins,
    config: Array<MapData, EventConfig>,
    limiter: PerCpuArray<MapData, EventLimiter>,
}

impl Switch {
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require()?;
        let dir = pins.layout_dir();
        Ok(Self {
            pins: pins.clone(),
            config: open_map_at(&dir.join(MAP_EVENT_CONFIG))?.try_into()?,
            limiter: open_map_at(&dir.join(MAP_EVENT_LIMITER))?.try_into()?,
        })
    }

    pub fn settings(&self) -> Result<Settings> {
        let c = self
            .config
            .get(&0, 0)
            .context("reading EVENT_CONFIG (bpf map lookup)")?;
        Ok(Settings::from_config(&c))
    }

    /// Takes effect at the next packet. The programs look at a rule slot's
    /// `REPORT` bit first, so the bit is set or cleared in every slot too,
    /// after the map (a slot that lags finds the map already switched).
    /// Takes the pin lock: do not call it holding the lock.
    pub fn set(&mut self, settings: Settings) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.config
            .set(0, settings.to_config(ns_per_jiffy()?), 0)
            .context("writing EVENT_CONFIG (bpf map update)")?;
        crate::rules::RuleTable::open(&self.pins)?
            .mark_reporting(settings.enabled)
            .context("marking the rules' slots for drop events")?;
        Ok(())
    }

    pub fn counts(&self) -> Result<Counts> {
        let per_cpu = self
            .limiter
            .get(&0, 0)
            .context("reading EVENT_LIMITER (bpf map lookup)")?;
        Ok(per_cpu.iter().fold(Counts::default(), |sum, l| Counts {
            sent: sum.sent + l.sent,
            limited: sum.limited + l.limited,
            lost: sum.lost + l.lost,
        }))
    }

    /// Zeroes every CPU's limiter (counts and bucket).
    pub fn reset_counts(&mut self) -> Result<()> {
        let cpus = sys::possible_cpus()?;
        let zero = PerCpuValues::try_from(vec![EventLimiter::default(); cpus])
            .context("per-CPU values")?;
        self.limiter
            .set(0, zero, 0)
            .context("writing EVENT_LIMITER (bpf map update)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Dropped,
    Audited,
}

/// An event as the operator reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    pub attach_id: u32,
    pub protocol: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub verdict: Verdict,
    pub frame_len: u32,
}

/// `raw` with its monotonic time moved by `mono_to_unix_ns` (pure). `None`
/// for a record no program of ours writes.
pub fn decode(raw: &Event, mono_to_unix_ns: i128) -> Option<Record> {
    let protocol = match raw.proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return None,
    };
    let src = if raw.ipv6 != 0 {
        IpAddr::V6(Ipv6Addr::from(raw.src_addr))
    } else {
        let a = raw.src_addr;
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    };
    let verdict = match raw.verdict {
        event_verdict::DROPPED => Verdict::Dropped,
        event_verdict::AUDITED => Verdict::Audited,
        _ => return None,
    };
    Some(Record {
        time_unix_ns: (i128::from(raw.time_ns) + mono_to_unix_ns).max(0) as u64,
        attach_id: raw.attach_id,
        protocol,
        src,
        src_port: raw.src_port,
        dst_port: raw.dst_port,
        verdict,
        frame_len: raw.frame_len,
    })
}

/// The length of a jiffy: the resolution of the coarse clock, which ticks
/// with jiffies (1/CONFIG_HZ s).
fn ns_per_jiffy() -> Result<u32> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("clock_getres(CLOCK_MONOTONIC_COARSE)");
    }
    let ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    u32::try_from(ns)
        .ok()
        .filter(|ns| *ns > 0)
        .with_context(|| format!("a jiffy of {ns} ns"))
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The reader of `EVENTS`. The ring has one consumer position: two readers
/// at once would each see part of the events.
pub struct Stream {
    ring: RingBuf<MapData>,
    mono_to_unix_ns: i128,
}

impl Stream {
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require()?;
        let path = pins.layout_dir().join(MAP_EVENTS);
        Ok(Self {
            ring: open_map_at(&path)?
                .try_into()
                .with_context(|| format!("{} is not a ring buffer", path.display()))?,
            mono_to_unix_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        })
    }

    /// The events in the ring now, or after waiting up to `wait` for one.
    pub fn next_batch(&mut self, wait: Duration) -> Result<Vec<Record>> {
        let mut out = self.drain();
        if out.is_empty() {
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n =
                unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).context("poll(2) on the EVENTS ring");
                }
            }
            out = self.drain();
        }
        Ok(out)
    }

    fn drain(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: Event is plain data; read unaligned from the ring.
                let raw: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.extend(decode(&raw, self.mono_to_unix_ns));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_map_value() {
        let s = Settings {
            enabled: true,
            rate: 1000,
            burst: 100,
        };
        let c = s.to_config(4_000_000);
        assert_eq!((c.ns_per_event, c.ns_per_jiffy), (1_000_000, 4_000_000));
        assert_eq!(c.burst_ns, 100_000_000);
        assert_eq!(Settings::from_config(&c), s);
        let never_set = Settings::from_config(&EventConfig::default());
        assert!(!never_set.enabled);
        assert_eq!(never_set.rate, DEFAULT_RATE);
        // A rate of 0 would divide by zero: it is taken as 1.
        let slow = Settings { rate: 0, ..s }.to_config(4_000_000);
        assert_eq!(slow.ns_per_event, 1_000_000_000);
    }

    #[test]
    fn a_jiffy_is_a_tick() {
        let ns = ns_per_jiffy().unwrap();
        // CONFIG_HZ is 100 to 1000.
        assert!((1_000_000..=10_000_000).contains(&ns), "{ns}");
    }

    #[test]
    fn records_decode_both_families() {
        let mut raw = Event {
            time_ns: 5,
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            frame_len: 74,
            attach_id: 3,
            src_port: 40000,
            dst_port: 8080,
            proto: 6,
            ipv6: 0,
            verdict: event_verdict::DROPPED,
            pad: 0,
        };
        let r = decode(&raw, 1_000).unwrap();
        assert_eq!(r.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (r.time_unix_ns, r.protocol, r.verdict),
            (1_005, Protocol::Tcp, Verdict::Dropped)
        );
        raw.ipv6 = 1;
        raw.src_addr = "fd00::7".parse::<Ipv6Addr>().unwrap().octets();
        raw.proto = 132;
        raw.verdict = event_verdict::AUDITED;
        let r = decode(&raw, 0).unwrap();
        assert_eq!(r.src, "fd00::7".parse::<IpAddr>().unwrap());
        assert_eq!((r.protocol, r.verdict), (Protocol::Sctp, Verdict::Audited));
        raw.proto = 1;
        assert_eq!(decode(&raw, 0), None, "not a protocol we judge");
    }
}
