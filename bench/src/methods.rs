//! The drop methods of part 2, side by side: what an operator could put on
//! the receiving interface to drop SYNs to one port.
//!
//! Each method is installed on a fresh veth pair (so nothing of an earlier
//! method, such as a netfilter hook, stays in the path) and reports its own
//! counter of what it dropped.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use ingress_xdp::{
    attach::{self, Hook, Target, XdpModeChoice},
    events::{self, Settings, Switch},
};

use crate::{
    counters::Counter,
    ours::Ours,
    progs::{BARE_DROP, MINIMAL_DROP, MINIMAL_ETHERTYPE, MINIMAL_LOOKUP, MINIMAL_MAPS, Reference},
    sh::run_in,
    topo::Pair,
    xdp_filter::XdpFilter,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    None,
    IptablesInput,
    IptablesRaw,
    NftNetdev,
    XdpFilter,
    OursTc,
    OursXdpGeneric,
    OursXdpNative,
    OursXdpNativeEvents,
    OursXdpNativeNoEventCode,
    MinimalDrop,
    MinimalEthertype,
    MinimalLookup,
    MinimalMaps,
    BareDrop,
}

impl Method {
    pub const ALL: [Method; 15] = [
        Method::None,
        Method::IptablesInput,
        Method::IptablesRaw,
        Method::NftNetdev,
        Method::XdpFilter,
        Method::OursTc,
        Method::OursXdpGeneric,
        Method::OursXdpNative,
        Method::OursXdpNativeEvents,
        Method::OursXdpNativeNoEventCode,
        Method::MinimalDrop,
        Method::MinimalEthertype,
        Method::MinimalLookup,
        Method::MinimalMaps,
        Method::BareDrop,
    ];

    /// Short name, for the chart and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "no filter",
            Method::IptablesInput => "iptables INPUT",
            Method::IptablesRaw => "iptables raw PREROUTING",
            Method::NftNetdev => "nft netdev ingress",
            Method::XdpFilter => "xdp-filter (native)",
            Method::OursTc => "ours, tc",
            Method::OursXdpGeneric => "ours, XDP generic",
            Method::OursXdpNative => "ours, XDP native",
            Method::OursXdpNativeEvents => "ours, XDP native, events on",
            Method::OursXdpNativeNoEventCode => "ours, XDP native, no event code",
            Method::MinimalDrop => "minimal XDP port check",
            Method::MinimalEthertype => "minimal check + EtherType",
            Method::MinimalLookup => "minimal check + rule lookup",
            Method::MinimalMaps => "minimal check + our maps",
            Method::BareDrop => "bare XDP_DROP",
        }
    }

    /// What exactly runs, for the report.
    pub fn detail(self) -> &'static str {
        match self {
            Method::None => "nothing; the stack answers each SYN with a RST",
            Method::IptablesInput => "`iptables -A INPUT -p tcp --dport P -j DROP` (iptables-nft)",
            Method::IptablesRaw => "`iptables -t raw -A PREROUTING -p tcp --dport P -j DROP`",
            Method::NftNetdev => "`nft` netdev table, ingress hook: `tcp dport P counter drop`",
            Method::XdpFilter => "`xdp-filter load --mode native` + `xdp-filter port P`",
            Method::OursTc => "`ingress-xdp attach --hook tc` (TCX) + `block P`",
            Method::OursXdpGeneric => "`ingress-xdp attach --xdp-mode generic` + `block P`",
            Method::OursXdpNative => "`ingress-xdp attach --xdp-mode native` + `block P`",
            Method::OursXdpNativeEvents => {
                "as \"ours, XDP native\", plus `ingress-xdp events on` (the default rate limit) \
                 with nobody reading the ring: the worst case, a full ring, each event lost \
                 and counted"
            }
            Method::MinimalDrop => {
                "an XDP program that reads the TCP port at a fixed offset and drops on a match \
                 (no parsing, no map, no counter): the cost of touching the packet"
            }
            Method::OursXdpNativeNoEventCode => {
                "ours built without the event code (the eBPF crate's second binary) on the same \
                 pinned maps and rule, attached natively: beside \"ours, XDP native\" (events \
                 off), what the switched-off event code costs live"
            }
            Method::MinimalEthertype => {
                "the minimal port check that first reads the EtherType (bytes 12-13), as any \
                 parser must: the header bytes it touches may span two cache lines of the \
                 frame, the port alone one"
            }
            Method::MinimalLookup => {
                "the minimal port check with its verdict read from the port's slot of a rule \
                 array shaped like ours: one map access, no counter, no parser; the one lookup \
                 no filter that follows a rule table can skip, so a floor for ours live"
            }
            Method::MinimalMaps => {
                "the minimal port check plus the memory ingress-xdp touches for a blocked port \
                 (its rule slot, then the per-CPU chunk holding that rule's counter and the \
                 attach point's drop tally): the cost of those accesses; what ours adds beyond \
                 it is the parser"
            }
            Method::BareDrop => "an XDP program that returns XDP_DROP and reads nothing",
        }
    }

    /// Installs the method on `pair`'s receiving side, dropping tcp `port`
    /// (ours: the rule is already in `ours`' table).
    pub fn install<'a>(self, pair: &'a Pair, port: u16, ours: &'a Ours) -> Result<Installed<'a>> {
        let (rx, iface) = (&pair.rx, pair.rx_if.as_str());
        let installed = |counter, guard| Installed {
            counter,
            _guard: guard,
        };
        let ipt = |table: &'static str, chain: &'static str| -> Result<Installed<'a>> {
            run_in(
                rx,
                &format!("iptables -t {table} -A {chain} -p tcp --dport {port} -j DROP"),
            )?;
            Ok(installed(
                Counter::Iptables { table, chain },
                Guard::Namespace,
            ))
        };
        let r = match self {
            Method::None => Ok(installed(Counter::RxPackets, Guard::Namespace)),
            Method::IptablesInput => ipt("filter", "INPUT"),
            Method::IptablesRaw => ipt("raw", "PREROUTING"),
            Method::NftNetdev => {
                let table = "ixtb";
                run_in(
                    rx,
                    &format!(
                        "nft 'add table netdev {table}; \
                         add chain netdev {table} ingress {{ type filter hook ingress device {iface} priority 0; }}; \
                         add rule netdev {table} ingress tcp dport {port} counter drop'"
                    ),
                )?;
                let counter = Counter::Nft {
                    family: "netdev",
                    table: table.into(),
                    chain: "ingress",
                };
                Ok(installed(counter, Guard::Namespace))
            }
            Method::XdpFilter => {
                let filter = XdpFilter::load(rx, iface, port)?;
                Ok(installed(
                    Counter::XdpDrops,
                    Guard::XdpFilter { _filter: filter },
                ))
            }
            Method::OursTc => attach_ours(pair, ours, Hook::Tc, XdpModeChoice::Auto, false),
            Method::OursXdpGeneric => {
                attach_ours(pair, ours, Hook::Xdp, XdpModeChoice::Generic, false)
            }
            Method::OursXdpNative => {
                attach_ours(pair, ours, Hook::Xdp, XdpModeChoice::Native, false)
            }
            Method::OursXdpNativeEvents => {
                attach_ours(pair, ours, Hook::Xdp, XdpModeChoice::Native, true)
            }
            Method::MinimalDrop => attach_reference(pair, MINIMAL_DROP),
            Method::OursXdpNativeNoEventCode => attach_without_events(pair, ours),
            Method::MinimalEthertype => attach_reference(pair, MINIMAL_ETHERTYPE),
            Method::MinimalLookup => attach_reference(pair, MINIMAL_LOOKUP),
            Method::MinimalMaps => attach_reference(pair, MINIMAL_MAPS),
            Method::BareDrop => attach_reference(pair, BARE_DROP),
        };
        r.with_context(|| format!("installing {} on {iface}", self.name()))
    }
}

/// An installed method; uninstalled on drop (what the namespace's deletion
/// would not undo: pinned links, xdp-filter's global state).
pub struct Installed<'a> {
    pub counter: Counter,
    _guard: Guard<'a>,
}

enum Guard<'a> {
    /// Goes with the namespace (netfilter rules and tables).
    Namespace,
    XdpFilter {
        _filter: XdpFilter<'a>,
    },
    /// Ours, and the event switch when drop events were switched on (they
    /// are switched off again before the detach).
    Ours(&'a Ours, Option<Switch>),
    /// Detached when the object is dropped.
    Program {
        _ebpf: Ebpf,
    },
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let Guard::Ours(ours, switch) = self else {
            return;
        };
        // The table is shared by every method: leave events off.
        if let Some(switch) = switch
            && let Err(e) = switch.set(Settings {
                enabled: false,
                ..events_on()
            })
        {
            eprintln!("bench: switching drop events off: {e:#}");
        }
        if let Err(e) = attach::detach_all(ours.pins()) {
            eprintln!("bench: detaching ingress-xdp: {e:#}");
        }
    }
}

fn events_on() -> Settings {
    Settings {
        enabled: true,
        rate: events::DEFAULT_RATE,
        burst: events::DEFAULT_BURST,
    }
}

/// Attaches ours; with `events`, drop events are switched on (the default
/// rate limit) until the guard drops.
fn attach_ours<'a>(
    pair: &Pair,
    ours: &'a Ours,
    hook: Hook,
    mode: XdpModeChoice,
    events: bool,
) -> Result<Installed<'a>> {
    let target = Target {
        netns: Some(pair.rx.path()),
        iface: pair.rx_if.clone(),
    };
    let report = {
        let _lock = ours.pins().lock()?;
        attach::attach(ours.pins(), &target, hook, mode)?
    };
    // The guard exists before events are switched on, so a failure to
    // switch still detaches.
    let mut guard = Guard::Ours(ours, None);
    if events {
        let mut switch = Switch::open(ours.pins())?;
        switch.set(events_on())?;
        if let Guard::Ours(_, slot) = &mut guard {
            *slot = Some(switch);
        }
    }
    Ok(Installed {
        counter: Counter::Ours {
            pins: ours.pins().clone(),
            point: report.point.id,
        },
        _guard: guard,
    })
}

/// The attach-point slot the build without events counts under (one no
/// registered point uses: the bench's points start at 0).
const NO_EVENTS_ATTACH_ID: u32 = ingress_xdp_common::MAX_ATTACH_POINTS - 1;

/// Ours without the event code, attached natively like a reference program
/// (the product's attach knows only its own build); detached on drop.
fn attach_without_events<'a>(pair: &Pair, ours: &Ours) -> Result<Installed<'a>> {
    let ebpf = ours.load_xdp_without_events(NO_EVENTS_ATTACH_ID)?;
    attach_native(pair, ebpf, ingress_xdp::pins::PROG_XDP)
}

/// A reference program, attached natively; detached on drop.
fn attach_reference<'a>(pair: &Pair, name: &str) -> Result<Installed<'a>> {
    attach_native(pair, Reference::load()?.into_ebpf(), name)
}

/// Attaches the loaded XDP program `name` of `ebpf` in native mode from a
/// thread inside the receiver's namespace (aya resolves the interface's name
/// there); the guard keeps the object, whose drop detaches it.
fn attach_native<'a>(pair: &Pair, mut ebpf: Ebpf, name: &str) -> Result<Installed<'a>> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from its object"))?
        .try_into()?;
    ingress_xdp::sys::in_netns(Some(&pair.rx.path()), || {
        prog.attach(&pair.rx_if, XdpMode::Driver)
            .with_context(|| format!("attaching {name} natively to {}", pair.rx_if))
    })?;
    Ok(Installed {
        counter: Counter::XdpDrops,
        _guard: Guard::Program { _ebpf: ebpf },
    })
}
