//! `status`: where the programs are attached and which build runs there.

use super::*;
use crate::attach::NetnsHere;

pub(super) fn cmd_status(pins: &Pins, json: bool) -> Result<()> {
    sys::require_root()?;
    let registry = Registry::open(pins)?;
    let points = registry.points()?;
    if json {
        let docs: Vec<_> = points
            .iter()
            .map(|p| {
                serde_json::json!({
                    "point": p,
                    "netns_here": netns_here(p),
                    "presence": p.presence(),
                })
            })
            .collect();
        return write_json(&serde_json::json!({
            "pin_dir": pins.dir(),
            "layout": ingress_xdp_common::LAYOUT_VERSION,
            "build": pins::build(),
            "attach_points": docs,
        }));
    }
    outln!(
        "state layout {} in {}; this build {}",
        ingress_xdp_common::LAYOUT_VERSION,
        pins.dir().display(),
        pins::build()
    );
    if points.is_empty() {
        outln!(
            "nothing attached (rules are kept in {})",
            pins.dir().display()
        );
        return Ok(());
    }
    outln!(
        "{:<4} {:<40} {:<12} {:<5} {:<8} {:>8} {:>8}  {:<20} STATE",
        "ID",
        "NETNS",
        "IFACE",
        "HOOK",
        "MODE",
        "PROG",
        "LINK",
        "BUILD"
    );
    for p in points {
        let build = if p.build == pins::build() {
            p.build.clone()
        } else {
            format!("{} (older: run attach)", p.build)
        };
        outln!(
            "{:<4} {:<40} {:<12} {:<5} {:<8} {:>8} {:>8}  {:<20} {}",
            p.id,
            netns_column(&p),
            p.iface,
            p.hook.to_string(),
            p.mode.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            p.program_id,
            p.link_id,
            build,
            p.presence()
        );
    }
    Ok(())
}

/// The path this process opens the point's namespace at: `null` for its own
/// namespace, and the recorded path when nothing here opens it.
fn netns_here(p: &AttachPoint) -> Option<String> {
    match p.netns_here() {
        NetnsHere::Current => None,
        NetnsHere::At(path) => Some(path.display().to_string()),
        NetnsHere::NotVisible => p.netns.clone(),
    }
}

/// The namespace as this host names it, and as the loader recorded it when
/// that differs (an agent in a container sees its own bind of the exec root).
fn netns_column(p: &AttachPoint) -> String {
    let here = netns_here(p);
    let shown = here.as_deref().unwrap_or("(host)");
    match &p.netns {
        Some(recorded) if here.as_deref() != Some(recorded.as_str()) => {
            format!("{shown} (recorded as {recorded})")
        }
        _ => shown.to_string(),
    }
}
