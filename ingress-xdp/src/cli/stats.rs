//! `stats`: counters per attach point and per rule, once or live.

use super::*;

#[derive(Serialize)]
pub(super) struct PointStats {
    #[serde(flatten)]
    point: AttachPoint,
    presence: Presence,
    counters: PointCounters,
}

#[derive(Serialize)]
pub(super) struct StatsDoc {
    attach_points: Vec<PointStats>,
    rules: Vec<RuleRange>,
}

/// One refresh: the maps are opened once by the caller, so `--watch` costs
/// a few batched reads per refresh however many rules there are.
pub(super) fn collect_stats(registry: &Registry, table: &RuleTable) -> Result<StatsDoc> {
    let mut attach_points = Vec::new();
    // One read of the counter chunks for the points' drops and the rules.
    let tally = table.tally()?;
    for point in registry.points()? {
        attach_points.push(PointStats {
            counters: registry.counters_with(point.id, &tally)?,
            presence: point.presence(),
            point,
        });
    }
    Ok(StatsDoc {
        attach_points,
        rules: table.ranges_with(&tally)?,
    })
}

pub(super) fn render_stats(doc: &StatsDoc, rates: Option<(&StatsDoc, f64)>) -> String {
    let mut out = format!(
        "{:<4} {:<28} {:<4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}\n",
        "ID",
        "ATTACH POINT",
        "HOOK",
        "SEEN",
        "DROPPED",
        "PASSED",
        "NOT-PARSED",
        "AUDITED",
        "ALLOWED"
    );
    for p in &doc.attach_points {
        let c = &p.counters;
        out += &format!(
            "{:<4} {:<28} {:<4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}\n",
            p.point.id,
            p.point.target().to_string(),
            p.point.hook.to_string(),
            c.seen,
            c.dropped,
            c.passed,
            c.not_parsed,
            c.audited,
            c.allowed
        );
        if let Some((prev, secs)) = rates
            && let Some(q) = prev.attach_points.iter().find(|q| q.point.id == p.point.id)
        {
            let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
            out += &format!(
                "{:<4} {:<28} {:<4} {:>10.0}/s {:>10.0}/s {:>10.0}/s\n",
                "",
                "",
                "",
                rate(c.seen, q.counters.seen),
                rate(c.dropped, q.counters.dropped),
                rate(c.passed, q.counters.passed)
            );
        }
    }
    if doc.attach_points.is_empty() {
        out += "(nothing attached)\n";
    }
    out += "\n";
    out += &render_rules(&doc.rules);
    out
}

pub(super) fn cmd_stats(pins: &Pins, json: bool, watch: Option<u64>) -> Result<()> {
    sys::require_root()?;
    pins.require()?;
    let (registry, table) = (Registry::open(pins)?, RuleTable::open(pins)?);
    let Some(interval) = watch else {
        let doc = collect_stats(&registry, &table)?;
        if json {
            return write_json(&doc);
        }
        out!("{}", render_stats(&doc, None));
        return Ok(());
    };
    let interval = Duration::from_secs(interval.max(1));
    let terminal = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if terminal {
        out!("\x1b[2J");
    }
    let mut prev: Option<(StatsDoc, std::time::Instant)> = None;
    loop {
        // A migration or purge replaces the maps: follow it.
        if !pins.exists() {
            pins.require()?;
        }
        let doc = collect_stats(&registry, &table)?;
        let now = std::time::Instant::now();
        if json {
            write_json(&doc)?;
        } else {
            let rates = prev
                .as_ref()
                .map(|(d, t)| (d, now.duration_since(*t).as_secs_f64().max(0.001)));
            let table = render_stats(&doc, rates);
            let mut out = std::io::stdout().lock();
            if terminal {
                // Home, the new table, then clear what the old one left
                // below: redrawn in place, without the flash of a full clear.
                write!(out, "\x1b[H{}", table.replace('\n', "\x1b[K\n"))?;
                write!(out, "\x1b[J")?;
            } else {
                // Piped: plain tables, one per refresh, each dated.
                writeln!(out, "# {}", sys::now_secs())?;
                writeln!(out, "{table}")?;
            }
            out.flush()?;
        }
        prev = Some((doc, now));
        std::thread::sleep(interval);
    }
}
