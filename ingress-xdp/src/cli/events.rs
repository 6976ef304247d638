//! `events` and `top`: who sends to blocked ports, from the programs' drop
//! events ([`crate::events`]), live.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use super::*;
use crate::{
    events::{self, Counts, Record, Settings, Stream, Switch},
    spec::Protocol,
};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub action: Option<EventsAction>,
    /// One JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Only events to these ports (PORT[/proto] or LOW-HIGH[/proto]; repeatable).
    #[arg(long = "port", value_name = "SPEC")]
    pub ports: Vec<PortSpec>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub seconds: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum EventsAction {
    /// Send events from now on (no re-attach), at most RATE per second and
    /// CPU, with bursts of BURST.
    On {
        #[arg(long, value_name = "RATE", default_value_t = events::DEFAULT_RATE,
              value_parser = clap::value_parser!(u32).range(1..))]
        rate: u32,
        #[arg(long, value_name = "BURST", default_value_t = events::DEFAULT_BURST,
              value_parser = clap::value_parser!(u32).range(1..))]
        burst: u32,
    },
    /// Stop sending events (the default).
    Off,
    /// Whether events are on, the rate limit, and how many were sent, held
    /// back by the limit, and lost to a full ring (since the last `on`).
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Seconds per window: the table shows the last one.
    #[arg(long, value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// Only these ports (PORT[/proto] or LOW-HIGH[/proto]; repeatable).
    #[arg(long = "port", value_name = "SPEC")]
    pub ports: Vec<PortSpec>,
    /// Sources shown per port.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub sources: usize,
    /// Exit after this many windows.
    #[arg(long, value_name = "N")]
    pub windows: Option<u64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ends the loops below on SIGINT or SIGTERM, so the switch is restored.
fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Turns events on while a reader runs, and back off after it if it was
/// off before.
struct WhileReading {
    switch: Switch,
    before: Settings,
}

impl WhileReading {
    fn start(pins: &Pins) -> Result<Self> {
        let mut switch = Switch::open(pins)?;
        let before = switch.settings()?;
        if !before.enabled {
            switch.set(Settings {
                enabled: true,
                ..before
            })?;
            eprintln!(
                "events were off: on while this runs ({} per second and CPU, bursts of {}); \
                 `ingress-xdp events on` keeps them on",
                before.rate, before.burst
            );
        }
        Ok(Self { switch, before })
    }
}

impl Drop for WhileReading {
    fn drop(&mut self) {
        if !self.before.enabled {
            let _ = self.switch.set(self.before);
        }
    }
}

fn wanted(ports: &[PortSpec], r: &Record) -> bool {
    ports.is_empty()
        || ports
            .iter()
            .any(|p| p.proto == r.protocol && (p.low..=p.high).contains(&r.dst_port))
}

/// Names of attach points by id, reread when an unknown id shows up.
struct PointNames {
    pins: Pins,
    names: HashMap<u32, String>,
}

impl PointNames {
    fn new(pins: &Pins) -> Self {
        let mut n = Self {
            pins: pins.clone(),
            names: HashMap::new(),
        };
        n.reload();
        n
    }

    fn reload(&mut self) {
        if let Ok(points) = Registry::open(&self.pins).and_then(|r| r.points()) {
            self.names = points
                .into_iter()
                .map(|p| (p.id, format!("{} ({})", p.target(), p.hook)))
                .collect();
        }
    }

    fn of(&mut self, id: u32) -> String {
        if !self.names.contains_key(&id) {
            self.reload();
        }
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("attach point {id}"))
    }
}

/// RFC 3339 UTC with milliseconds, from nanoseconds since the epoch (pure).
pub(super) fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn source(r: &Record) -> String {
    match r.src {
        IpAddr::V4(a) => format!("{a}:{}", r.src_port),
        IpAddr::V6(a) => format!("[{a}]:{}", r.src_port),
    }
}

pub(super) fn cmd_events(pins: &Pins, args: &EventsArgs) -> Result<()> {
    sys::require_root()?;
    match &args.action {
        Some(EventsAction::On { rate, burst }) => {
            let mut switch = Switch::open(pins)?;
            switch.reset_counts()?;
            switch.set(Settings {
                enabled: true,
                rate: *rate,
                burst: *burst,
            })?;
            outln!("events on: at most {rate} per second and CPU, bursts of {burst}");
            Ok(())
        }
        Some(EventsAction::Off) => {
            let mut switch = Switch::open(pins)?;
            let before = switch.settings()?;
            switch.set(Settings {
                enabled: false,
                ..before
            })?;
            outln!("events off");
            Ok(())
        }
        Some(EventsAction::Status { json }) => {
            let switch = Switch::open(pins)?;
            let (settings, counts) = (switch.settings()?, switch.counts()?);
            if *json {
                return write_json(&serde_json::json!({ "settings": settings, "counts": counts }));
            }
            outln!(
                "events {}: at most {} per second and CPU, bursts of {}; sent {}, held back by \
                 the limit {}, lost to a full ring {}",
                if settings.enabled { "on" } else { "off" },
                settings.rate,
                settings.burst,
                counts.sent,
                counts.limited,
                counts.lost
            );
            Ok(())
        }
        None => stream(pins, args),
    }
}

fn stream(pins: &Pins, args: &EventsArgs) -> Result<()> {
    stop_on_signals();
    let mut stream = Stream::open(pins)?;
    let _on = WhileReading::start(pins)?;
    let mut names = PointNames::new(pins);
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        for r in stream.next_batch(Duration::from_millis(200))? {
            if !wanted(&args.ports, &r) {
                continue;
            }
            let point = names.of(r.attach_id);
            if args.json {
                let mut doc = serde_json::to_value(&r)?;
                doc["time"] = utc(r.time_unix_ns).into();
                doc["attach_point"] = point.into();
                serde_json::to_writer(&mut out, &doc)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {:<7} {} -> {}/{} at {}, {} B",
                    utc(r.time_unix_ns),
                    match r.verdict {
                        events::Verdict::Dropped => "dropped",
                        events::Verdict::Audited => "audited",
                    },
                    source(&r),
                    r.dst_port,
                    r.protocol,
                    point,
                    r.frame_len
                )?;
            }
            out.flush()?;
            shown += 1;
            if args.count.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Events per (port, source) in one window (pure).
pub(super) fn tally(records: &[Record]) -> BTreeMap<(Protocol, u16), Vec<(IpAddr, u64)>> {
    let mut per: BTreeMap<(Protocol, u16), HashMap<IpAddr, u64>> = BTreeMap::new();
    for r in records {
        *per.entry((r.protocol, r.dst_port))
            .or_default()
            .entry(r.src)
            .or_default() += 1;
    }
    per.into_iter()
        .map(|(port, sources)| {
            let mut v: Vec<(IpAddr, u64)> = sources.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (port, v)
        })
        .collect()
}

fn render_top(window: &[Record], secs: u64, counts: Counts, sources: usize) -> String {
    let mut out = format!(
        "busiest sources per port over the last {secs} s: {} events, {} held back by the rate \
         limit, {} lost{}\n",
        window.len(),
        counts.limited,
        counts.lost,
        if counts.limited + counts.lost > 0 {
            " (a sample: `list` and `stats` have the exact counts)"
        } else {
            ""
        }
    );
    out += &format!(
        "{:<12} {:<40} {:>10} {:>6}\n",
        "PORT", "SOURCE", "EVENTS", "SHARE"
    );
    let tallies = tally(window);
    if tallies.is_empty() {
        out += "(no events)\n";
    }
    for ((proto, port), srcs) in tallies {
        let total: u64 = srcs.iter().map(|s| s.1).sum();
        for (i, (src, n)) in srcs.iter().take(sources).enumerate() {
            let label = if i == 0 {
                format!("{port}/{proto}")
            } else {
                String::new()
            };
            out += &format!(
                "{label:<12} {:<40} {n:>10} {:>5.1}%\n",
                src.to_string(),
                100.0 * *n as f64 / total as f64
            );
        }
        if srcs.len() > sources {
            out += &format!("{:<12} ({} more sources)\n", "", srcs.len() - sources);
        }
    }
    out
}

pub(super) fn cmd_top(pins: &Pins, args: &TopArgs) -> Result<()> {
    sys::require_root()?;
    stop_on_signals();
    let mut stream = Stream::open(pins)?;
    let _on = WhileReading::start(pins)?;
    let switch = Switch::open(pins)?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if terminal {
        out!("\x1b[2J");
    }
    let mut windows = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        let start = Instant::now();
        let before = switch.counts()?;
        let mut window = Vec::new();
        let length = Duration::from_secs(args.interval);
        while start.elapsed() < length && !STOP.load(Ordering::Relaxed) {
            let wait = length
                .saturating_sub(start.elapsed())
                .min(Duration::from_millis(200));
            window.extend(
                stream
                    .next_batch(wait)?
                    .into_iter()
                    .filter(|r| wanted(&args.ports, r)),
            );
        }
        let after = switch.counts()?;
        let counts = Counts {
            sent: after.sent.saturating_sub(before.sent),
            limited: after.limited.saturating_sub(before.limited),
            lost: after.lost.saturating_sub(before.lost),
        };
        let table = render_top(&window, args.interval, counts, args.sources);
        let mut out = std::io::stdout().lock();
        if terminal {
            write!(out, "\x1b[H{}\x1b[J", table.replace('\n', "\x1b[K\n"))?;
        } else {
            writeln!(out, "# {}", sys::now_secs())?;
            writeln!(out, "{table}")?;
        }
        out.flush()?;
        windows += 1;
        if args.windows.is_some_and(|n| windows >= n) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_the_epoch_and_a_leap_day() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z
        assert_eq!(utc(1_709_210_096_789_000_000), "2024-02-29T12:34:56.789Z");
        assert_eq!(utc(1_796_169_600_000_000_000), "2026-12-02T00:00:00.000Z");
    }

    fn rec(src: &str, port: u16) -> Record {
        Record {
            time_unix_ns: 0,
            attach_id: 0,
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            src_port: 1,
            dst_port: port,
            verdict: events::Verdict::Dropped,
            frame_len: 60,
        }
    }

    #[test]
    fn top_ranks_sources_per_port() {
        let w = [
            rec("10.0.0.1", 80),
            rec("10.0.0.2", 80),
            rec("10.0.0.2", 80),
            rec("fd00::1", 443),
        ];
        let t = tally(&w);
        assert_eq!(
            t[&(Protocol::Tcp, 80)],
            vec![
                ("10.0.0.2".parse().unwrap(), 2),
                ("10.0.0.1".parse().unwrap(), 1)
            ]
        );
        let shown = render_top(
            &w,
            2,
            Counts {
                sent: 4,
                limited: 3,
                lost: 0,
            },
            1,
        );
        assert!(shown.contains("80/tcp       10.0.0.2"), "{shown}");
        assert!(shown.contains("(1 more sources)"), "{shown}");
        assert!(shown.contains("a sample"), "{shown}");
        assert!(shown.contains("443/tcp      fd00::1"), "{shown}");
    }

    #[test]
    fn the_port_filter() {
        let p: Vec<PortSpec> = vec!["8000-8100".parse().unwrap()];
        assert!(wanted(&p, &rec("10.0.0.1", 8080)));
        assert!(!wanted(&p, &rec("10.0.0.1", 9000)));
        assert!(wanted(&[], &rec("10.0.0.1", 9000)));
    }
}
