//! ingress-xdp as the benchmark uses it: a private pin directory under
//! /sys/fs/bpf (removed on drop, links and all) holding block rules.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};
use ingress_xdp::{
    pins::{PROG_TC, PROG_XDP, Pins, load_object, load_object_bytes},
    rules::{Mode, RuleSpec, RuleTable},
    spec::PortSpec,
};

use crate::support::TestPins;

/// ingress-xdp-ebpf's second binary: the same programs, `EVENTS = false`.
static WITHOUT_EVENTS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-xdp-no-events"));

pub struct Ours {
    pins: TestPins,
}

impl Ours {
    /// A pin directory whose rule table blocks every port of `specs`
    /// (`8080`, `53/udp`, `20000-29999`, as `ingress-xdp block` takes them).
    /// Each spec is one rule with a counter of its own (while counters last).
    pub fn with_blocks<S: AsRef<str>>(tag: &str, specs: &[S]) -> Result<Self> {
        let ours = Self {
            pins: TestPins::new(tag),
        };
        let specs: Vec<PortSpec> = specs
            .iter()
            .map(|s| {
                let s = s.as_ref();
                s.parse().with_context(|| format!("port spec {s:?}"))
            })
            .collect::<Result<_>>()?;
        RuleTable::open(ours.pins())?
            .apply(
                &specs,
                &RuleSpec {
                    mode: Mode::Block,
                    allow_from: Default::default(),
                },
            )
            .context("adding the benchmark's block rules")?;
        Ok(ours)
    }

    pub fn pins(&self) -> &Pins {
        &self.pins.pins
    }

    /// Our XDP program, loaded (not attached) with counters at `attach_id`.
    pub fn load_xdp(&self, attach_id: u32) -> Result<Ebpf> {
        let mut ebpf = load_object(&self.pins().layout_dir(), attach_id)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .context("ingress_xdp missing from the object")?
            .try_into()?;
        prog.load().context("loading ingress_xdp")?;
        Ok(ebpf)
    }

    /// Our XDP program built without the drop-event code (the bench's own
    /// build of it), loaded like [`Ours::load_xdp`].
    pub fn load_xdp_without_events(&self, attach_id: u32) -> Result<Ebpf> {
        let mut ebpf = load_object_bytes(WITHOUT_EVENTS, &self.pins().layout_dir(), attach_id)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .context("ingress_xdp missing from the object without events")?
            .try_into()?;
        prog.load()
            .context("loading ingress_xdp built without events")?;
        Ok(ebpf)
    }

    /// Our TC classifier, loaded (not attached) with counters at `attach_id`.
    pub fn load_tc(&self, attach_id: u32) -> Result<Ebpf> {
        let mut ebpf = load_object(&self.pins().layout_dir(), attach_id)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC)
            .context("ingress_tc missing from the object")?
            .try_into()?;
        prog.load().context("loading ingress_tc")?;
        Ok(ebpf)
    }
}

/// The loaded XDP program of an object from [`Ours::load_xdp`].
pub fn xdp(ebpf: &Ebpf) -> Result<&Xdp> {
    Ok(ebpf
        .program(PROG_XDP)
        .context("no ingress_xdp")?
        .try_into()?)
}

/// The loaded classifier of an object from [`Ours::load_tc`].
pub fn tc(ebpf: &Ebpf) -> Result<&SchedClassifier> {
    Ok(ebpf.program(PROG_TC).context("no ingress_tc")?.try_into()?)
}
