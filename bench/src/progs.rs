//! The reference programs (crate `ingress-xdp-bench-ebpf`, built by build.rs):
//! the test_run floor for each hook, a bare XDP_DROP, a minimal port check,
//! the minimal check with one rule lookup, the minimal check plus
//! ingress-xdp's map accesses, the XDP_TX generator.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::Array,
    programs::{SchedClassifier, Xdp},
};

use crate::frames::BLOCKED_PORT;

static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-xdp-bench-progs"));

pub const FLOOR_XDP: &str = "floor_xdp";
pub const FLOOR_TC: &str = "floor_tc";
pub const BARE_DROP: &str = "bare_drop";
pub const MINIMAL_DROP: &str = "minimal_drop";
pub const MINIMAL_MAPS: &str = "minimal_maps";
pub const MINIMAL_ETHERTYPE: &str = "minimal_ethertype";
pub const MINIMAL_LOOKUP: &str = "minimal_lookup";
pub const XDP_TX: &str = "xdp_tx";

/// One instance of the object with every program loaded into the kernel.
pub struct Reference {
    ebpf: Ebpf,
}

impl Reference {
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("opening the reference eBPF object")?;
        for name in [
            FLOOR_XDP,
            BARE_DROP,
            MINIMAL_DROP,
            MINIMAL_ETHERTYPE,
            MINIMAL_LOOKUP,
            MINIMAL_MAPS,
            XDP_TX,
        ] {
            let prog: &mut Xdp = program(&mut ebpf, name)?.try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        // minimal_lookup drops what its slot marks (action byte non-zero).
        let mut slots: Array<_, u32> = ebpf
            .map_mut("SLOTS")
            .context("SLOTS missing from the reference object")?
            .try_into()?;
        slots
            .set(u32::from(BLOCKED_PORT), 1, 0)
            .context("marking the blocked port's slot in SLOTS")?;
        let prog: &mut SchedClassifier = program(&mut ebpf, FLOOR_TC)?.try_into()?;
        prog.load().with_context(|| format!("loading {FLOOR_TC}"))?;
        Ok(Self { ebpf })
    }

    pub fn xdp(&self, name: &str) -> Result<&Xdp> {
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing from the reference object"))?;
        Ok(prog.try_into()?)
    }

    /// The object, whose drop unloads the programs and detaches their links.
    pub fn into_ebpf(self) -> Ebpf {
        self.ebpf
    }

    pub fn tc(&self, name: &str) -> Result<&SchedClassifier> {
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing from the reference object"))?;
        Ok(prog.try_into()?)
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("{name} missing from the reference object"))
}
