//! `block`, `unblock` and `list`: the rule table from the command line.

use super::*;

pub(super) fn warn_ephemeral_overlap(specs: &[PortSpec]) {
    let Some((low, high)) = sys::ephemeral_port_range() else {
        return;
    };
    for spec in specs.iter().filter(|s| s.overlaps(low, high)) {
        eprintln!(
            "warning: {spec} overlaps net.ipv4.ip_local_port_range {low}-{high}: replies to this node's own outgoing connections from those ports would be dropped"
        );
    }
}

pub(super) fn cmd_block(pins: &Pins, args: BlockArgs) -> Result<()> {
    sys::require_root()?;
    let spec = RuleSpec {
        mode: if args.audit { Mode::Audit } else { Mode::Block },
        allow_from: args.allow_from.iter().copied().collect::<BTreeSet<_>>(),
    };
    let _lock = {
        pins.require()?;
        pins.lock()?
    };
    let mut table = RuleTable::open(pins)?;
    table.apply(&args.specs, &spec)?;
    warn_ephemeral_overlap(&args.specs);
    let verb = match spec.mode {
        Mode::Block => "blocked",
        Mode::Audit => "auditing",
    };
    for s in &args.specs {
        if spec.allow_from.is_empty() {
            outln!("{verb} {s}");
        } else {
            let allow: Vec<String> = spec.allow_from.iter().map(|c| c.to_string()).collect();
            outln!("{verb} {s} (allowed from {})", allow.join(", "));
        }
    }
    Ok(())
}

pub(super) fn cmd_unblock(pins: &Pins, specs: &[PortSpec]) -> Result<()> {
    sys::require_root()?;
    pins.require()?;
    let _lock = pins.lock()?;
    let mut table = RuleTable::open(pins)?;
    let removal = table.remove(specs)?;
    for s in specs {
        outln!("unblocked {s}");
    }
    for (port, rule) in &removal.kept_by_docker {
        outln!(
            "note: {port} stays blocked by the agent's policy: service {}: {}",
            rule.service,
            rule.why
        );
    }
    if removal.manual_rules == 0 {
        eprintln!("note: none of these ports had a manual rule");
    }
    Ok(())
}

#[derive(Serialize)]
pub(super) struct RulesDoc<'a> {
    rules: &'a [RuleRange],
}

pub(super) fn cmd_list(pins: &Pins, json: bool) -> Result<()> {
    sys::require_root()?;
    let ranges = RuleTable::open(pins)?.ranges()?;
    if json {
        return write_json(&RulesDoc { rules: &ranges });
    }
    let mut out = std::io::stdout().lock();
    out.write_all(render_rules(&ranges).as_bytes())
        .context("writing the rules to standard output")
}

pub fn render_rules(ranges: &[RuleRange]) -> String {
    if ranges.is_empty() {
        return "no rules\n".to_string();
    }
    let mut out = format!(
        "{:<18} {:<6} {:>12} {:>14}  {:<20} ORIGIN\n",
        "PORT", "MODE", "PACKETS", "BYTES", "ALLOW-FROM"
    );
    let mut uncounted = 0;
    for r in ranges {
        let allow: Vec<String> = r.allow_from.iter().map(|c| c.to_string()).collect();
        let mode = match r.mode {
            Mode::Block => "block",
            Mode::Audit => "audit",
        };
        let allow = if allow.is_empty() {
            "-".to_string()
        } else {
            allow.join(",")
        };
        let (packets, bytes) = if r.counted {
            (r.packets.to_string(), r.bytes.to_string())
        } else {
            uncounted += 1;
            ("-".to_string(), "-".to_string())
        };
        out += &format!(
            "{:<18} {:<6} {:>12} {:>14}  {:<20} {}\n",
            r.spec().to_string(),
            mode,
            packets,
            bytes,
            allow,
            r.origin
        );
    }
    if uncounted > 0 {
        out += &format!(
            "{uncounted} rule(s) shown with '-' have no counter (all {} counters were in use when they were made); they block all the same\n",
            ingress_xdp_common::MAX_RULE_COUNTERS - 1
        );
    }
    out
}
