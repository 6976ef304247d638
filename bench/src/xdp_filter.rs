//! xdp-filter from Debian's xdp-tools, the nearest existing tool: loaded on
//! an interface of our namespace, one port blocked (its default `allow`
//! policy drops packets that match a rule), unloaded on drop.
//!
//! xdp-filter keeps its maps pinned in /sys/fs/bpf/xdp-filter, one set for
//! the whole machine; unloading the last interface removes them, but a
//! failed load leaves them behind (with no program): such leftovers are
//! removed, while an xdp-filter loaded by someone else stops the benchmark.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;

use crate::{
    sh::{run, run_in},
    support::Netns,
};

pub struct XdpFilter<'a> {
    ns: &'a Netns,
    iface: String,
}

impl<'a> XdpFilter<'a> {
    /// `xdp-filter load --mode native IFACE` in `ns`, then blocks `port`
    /// (tcp and udp destination port, xdp-filter's default for `port`).
    pub fn load(ns: &'a Netns, iface: &str, port: u16) -> Result<Self> {
        if !remove_unused_state()? {
            bail!(
                "xdp-filter is loaded elsewhere on this machine ({STATE}/programs is not empty): \
                 the benchmark needs its global state to itself; unload it first"
            );
        }
        // Before loading: Drop also cleans up after a load that failed.
        let filter = Self {
            ns,
            iface: iface.to_string(),
        };
        run_in(ns, &format!("xdp-filter load --mode native {iface}"))
            .context("loading xdp-filter")?;
        run_in(ns, &format!("xdp-filter port {port}"))
            .with_context(|| format!("xdp-filter: blocking port {port}"))?;
        Ok(filter)
    }

    /// The id of the XDP program xdp-filter attached to the interface.
    pub fn prog_id(&self) -> Result<u32> {
        let json = run_in(self.ns, &format!("ip -j -d link show dev {}", self.iface))?;
        parse_xdp_prog_id(&json).with_context(|| {
            format!(
                "no XDP program on {} after xdp-filter load: {json}",
                self.iface
            )
        })
    }

    /// The attached program, pinned at `pin` (in a bpffs directory of ours)
    /// so that it can be test-run like our own.
    pub fn program(&self, pin: &Path) -> Result<Xdp> {
        let id = self.prog_id()?;
        run(&format!("bpftool prog pin id {id} {}", pin.display()))?;
        Xdp::from_pin(pin, XdpAttachType::Interface).with_context(|| {
            format!(
                "opening xdp-filter's program (id {id}) at {}",
                pin.display()
            )
        })
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let unload = run_in(self.ns, &format!("xdp-filter unload {}", self.iface));
        if !remove_unused_state().unwrap_or(false) {
            eprintln!(
                "bench: xdp-filter state left in {STATE} after unloading {}: {unload:?}",
                self.iface
            );
        }
        // libxdp's own directory, if it made it and it is empty.
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}

const STATE: &str = "/sys/fs/bpf/xdp-filter";

/// Removes xdp-filter's pinned state if no program uses it. True when there
/// is no state left.
fn remove_unused_state() -> Result<bool> {
    let programs = Path::new(STATE).join("programs");
    let in_use = match std::fs::read_dir(&programs) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("listing {}", programs.display())),
    };
    if in_use {
        return Ok(false);
    }
    match std::fs::remove_dir_all(STATE) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing unused {STATE}"))
        }
        _ => Ok(true),
    }
}

fn parse_xdp_prog_id(json: &str) -> Option<u32> {
    let links: serde_json::Value = serde_json::from_str(json).ok()?;
    let id = links.get(0)?.get("xdp")?.get("prog")?.get("id")?.as_u64()?;
    u32::try_from(id).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_attached_program() {
        let json =
            r#"[{"ifname":"x","xdp":{"mode":1,"prog":{"id":4279,"name":"xdpfilt_alw_all"}}}]"#;
        assert_eq!(super::parse_xdp_prog_id(json), Some(4279));
        assert_eq!(super::parse_xdp_prog_id(r#"[{"ifname":"x"}]"#), None);
    }
}
