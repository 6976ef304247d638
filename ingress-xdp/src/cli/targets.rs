//! `attach` and `detach`, and which interfaces and namespaces they mean.

use super::*;

/// The host NICs named with --iface (checked to exist), or the one holding
/// the default route.
pub(super) fn host_ifaces(requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(vec![
            sys::default_route_iface().context("picking the host NIC")?,
        ]);
    }
    for iface in requested {
        sys::ifindex(iface).with_context(|| {
            format!(
                "--iface {iface}: interface not found (have: {})",
                sys::interfaces().join(", ")
            )
        })?;
    }
    Ok(requested.to_vec())
}

/// Resolves the attach targets and checks that each exists, before anything
/// is changed.
pub(super) fn resolve_targets(args: &AttachArgs) -> Result<Vec<Target>> {
    let mut targets: Vec<Target> = host_ifaces(&args.ifaces)?
        .into_iter()
        .map(|iface| Target { netns: None, iface })
        .collect();
    if args.no_sbox {
        return Ok(targets);
    }
    let netns = match &args.sbox_netns {
        Some(path) => {
            if !path.exists() {
                bail!("--sbox-netns {}: no such file", path.display());
            }
            path.clone()
        }
        None => {
            let default = sys::default_sbox_netns();
            if !default.exists() {
                if args.sbox_iface.is_some() {
                    bail!(
                        "--sbox-iface given but {} does not exist (is this node in a swarm?); pass --sbox-netns",
                        default.display()
                    );
                }
                eprintln!(
                    "note: {} does not exist (no swarm ingress on this node yet); attaching to the host NIC only",
                    default.display()
                );
                return Ok(targets);
            }
            default
        }
    };
    let iface = sys::in_netns(Some(&netns), || match &args.sbox_iface {
        Some(name) => {
            sys::ifindex(name).with_context(|| {
                format!(
                    "--sbox-iface {name}: interface not found in {} (have: {})",
                    netns.display(),
                    sys::interfaces().join(", ")
                )
            })?;
            Ok(name.clone())
        }
        None => sys::default_route_iface()
            .with_context(|| format!("picking the sandbox interface in {}", netns.display())),
    })?;
    targets.push(Target {
        netns: Some(netns),
        iface,
    });
    Ok(targets)
}

pub(super) fn cmd_attach(pins: &Pins, args: AttachArgs) -> Result<()> {
    sys::require_root()?;
    let targets = resolve_targets(&args)?;
    let prepared = upgrade::prepare(pins)?;
    for line in prepared.describe(pins) {
        outln!("{line}");
    }
    let _lock = pins.lock()?;
    for target in &targets {
        let report = attach::attach(
            pins,
            target,
            args.hook.unwrap_or(Hook::Xdp),
            args.xdp_mode.unwrap_or_default(),
        )
        .with_context(|| format!("attaching to {target}"))?;
        let p = &report.point;
        let mode = p.mode.map(|m| format!(" ({m})")).unwrap_or_default();
        let just_upgraded = prepared.upgraded.iter().any(|u| u.point.id == p.id);
        if let Some(from) = &report.upgraded_from {
            outln!(
                "upgraded {target}: {}{mode}, program {} (build {from} -> {}), in place",
                p.hook,
                p.program_id,
                p.build
            );
        } else if just_upgraded {
            // Said above, with the migration.
        } else if report.already {
            outln!(
                "already attached: {target}: {}{mode}, program {}",
                p.hook,
                p.program_id
            );
        } else {
            outln!(
                "attached {target}: {}{mode}, program {}",
                p.hook,
                p.program_id
            );
        }
    }
    let rules = RuleTable::open(pins)?.ranges()?;
    outln!(
        "{} rule(s) active; pinned in {}",
        rules.len(),
        pins.dir().display()
    );
    Ok(())
}

pub(super) fn cmd_detach(pins: &Pins, purge: bool) -> Result<()> {
    sys::require_root()?;
    if let pins::Found::Newer(v) = pins.found() {
        return Err(pins::newer_layout(pins.dir(), v));
    }
    pins.require()?;
    let lock = pins.lock()?;
    let points = attach::detach_all(pins)?;
    for p in &points {
        outln!("detached {}", p.target());
    }
    if points.is_empty() {
        outln!("nothing was attached");
    }
    if purge {
        drop(lock);
        attach::purge(pins)?;
        outln!("removed rules and {}", pins.dir().display());
    } else {
        let n = RuleTable::open(pins)?.ranges()?.len();
        outln!("{n} rule(s) kept (they apply again on attach; `detach --purge` removes them)");
    }
    Ok(())
}
