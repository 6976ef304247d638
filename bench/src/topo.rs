//! The wire of parts 1 and 2: a veth pair between a generator namespace and
//! a receiver namespace, both created here (names start with `ixtb`) and
//! deleted on drop with everything in them. Nothing touches the host's NICs.
//!
//! ```text
//!  tx ns: <tx_if> 10.203.0.1/24  ==veth==  <rx_if> 10.203.0.2/24 :rx ns
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::{
    sh::{run, run_in, write_sysfs},
    support::Netns,
};

pub const TX_IP: [u8; 4] = [10, 203, 0, 1];
pub const RX_IP: [u8; 4] = [10, 203, 0, 2];

/// How the receiving side is set up.
#[derive(Clone, Copy, Debug)]
pub struct RxSetup {
    /// Receive queues (set before any XDP program is attached).
    pub queues: u32,
    /// Threaded NAPI: the receive work runs in a kthread of its own.
    pub threaded: bool,
}

pub struct Pair {
    pub tx: Netns,
    pub rx: Netns,
    /// Interface names (unique on the machine: napi kthreads are named
    /// after the device, whatever its namespace).
    pub tx_if: String,
    pub rx_if: String,
    pub tx_mac: [u8; 6],
    pub rx_mac: [u8; 6],
}

impl Pair {
    pub fn new(setup: RxSetup) -> Result<Self> {
        Self::tagged("b", setup)
    }

    /// A pair whose namespaces and interfaces carry `tag` (one or two
    /// letters: interface names have 15 bytes), e.g. `ixt<tag>g1234`.
    pub fn tagged(tag: &str, setup: RxSetup) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 10_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let pair = Self {
            tx: Netns::new(&format!("{tag}g")),
            rx: Netns::new(&format!("{tag}r")),
            tx_if: format!("ixt{tag}g{id}"),
            rx_if: format!("ixt{tag}r{id}"),
            tx_mac: [0; 6],
            rx_mac: [0; 6],
        };
        let what = format!("building the veth pair {}/{}", pair.tx_if, pair.rx_if);
        pair.wire(setup).context(what)
    }

    fn wire(mut self, setup: RxSetup) -> Result<Self> {
        let (tx, rx) = (&self.tx, &self.rx);
        let (gif, rif) = (&self.tx_if, &self.rx_if);
        run(&format!(
            "ip link add {gif} netns {g} numtxqueues 2 numrxqueues 2 type veth \
             peer name {rif} netns {r} numtxqueues 2 numrxqueues 2",
            g = tx.name,
            r = rx.name
        ))?;
        // Queues first: the count cannot change while XDP is attached. GRO
        // gives the receiver NAPI even without XDP (without either, veth
        // drops XDP-transmitted frames silently).
        // Native XDP on veth needs as many rx queues as the peer has tx queues.
        run_in(rx, &format!("ethtool -L {rif} rx {}", setup.queues))?;
        run_in(tx, &format!("ethtool -L {gif} tx {}", setup.queues))?;
        run_in(rx, &format!("ethtool -K {rif} gro on"))?;
        let ip = |a: [u8; 4]| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        run_in(
            tx,
            &format!(
                "ip addr add {}/24 dev {gif} && ip link set {gif} up",
                ip(TX_IP)
            ),
        )?;
        run_in(
            rx,
            &format!(
                "ip addr add {}/24 dev {rif} && ip link set {rif} up",
                ip(RX_IP)
            ),
        )?;
        if setup.threaded {
            // Once up: a device without NAPI instances refuses it.
            write_sysfs(rx, &format!("{rif}/threaded"), "1")?;
        }
        self.tx_mac = mac(tx, gif)?;
        self.rx_mac = mac(rx, rif)?;
        // Static neighbours: the receiver's replies (RSTs, with no filter)
        // need no ARP exchange in the middle of a measurement.
        let lladdr = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        run_in(
            rx,
            &format!(
                "ip neigh replace {} lladdr {} dev {rif}",
                ip(TX_IP),
                lladdr(self.tx_mac)
            ),
        )?;
        run_in(
            tx,
            &format!(
                "ip neigh replace {} lladdr {} dev {gif}",
                ip(RX_IP),
                lladdr(self.rx_mac)
            ),
        )?;
        Ok(self)
    }

    /// The generator side's interface index, in the generator namespace.
    pub fn tx_ifindex(&self) -> Result<u32> {
        ingress_xdp::sys::in_netns(Some(&self.tx.path()), || {
            ingress_xdp::sys::ifindex(&self.tx_if)
        })
    }
}

fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let text = run_in(ns, &format!("ip -br link show dev {iface}"))?;
    parse_mac(&text).with_context(|| format!("no MAC address for {iface} in {text:?}"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    text.split_whitespace().find_map(|word| {
        let parts: Vec<u8> = word
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        parts.try_into().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_macs() {
        assert_eq!(
            super::parse_mac("ixtbr1 UP 4e:85:31:48:24:cf <BROADCAST>"),
            Some([0x4e, 0x85, 0x31, 0x48, 0x24, 0xcf])
        );
        assert_eq!(super::parse_mac("no address here"), None);
    }
}
