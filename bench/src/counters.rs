//! Where each drop method counts what it dropped, read the same way before
//! and after a measurement.

use anyhow::{Context, Result};
use ingress_xdp::{attach::Registry, pins::Pins};

use crate::{sh::run_in, support::Netns};

pub enum Counter {
    /// Packets the receiving interface took in, whatever became of them (the
    /// "no filter" method: the stack consumed them all).
    RxPackets,
    /// Packets native XDP programs dropped on the interface (veth's
    /// per-queue `xdp_drops`).
    XdpDrops,
    /// Packets matched by the first rule of an iptables chain.
    Iptables {
        table: &'static str,
        chain: &'static str,
    },
    /// The packets of the one `counter` in an nft chain.
    Nft {
        family: &'static str,
        table: String,
        chain: &'static str,
    },
    /// Drops ingress-xdp counted at one of its attach points.
    Ours { pins: Pins, point: u32 },
}

impl Counter {
    /// The current value, for interface `iface` in `ns`.
    pub fn read(&self, ns: &Netns, iface: &str) -> Result<u64> {
        match self {
            Counter::RxPackets => rx_packets(ns, iface),
            Counter::XdpDrops => {
                let text = run_in(ns, &format!("ethtool -S {iface}"))?;
                Ok(sum_stats(&text, |key| {
                    key.starts_with("rx_queue_") && key.ends_with("_xdp_drops")
                }))
            }
            Counter::Iptables { table, chain } => {
                let text = run_in(ns, &format!("iptables -t {table} -L {chain} -v -x -n"))?;
                first_rule_packets(&text)
                    .with_context(|| format!("no rule in iptables {table} {chain}: {text}"))
            }
            Counter::Nft {
                family,
                table,
                chain,
            } => {
                let text = run_in(ns, &format!("nft list chain {family} {table} {chain}"))?;
                nft_counter_packets(&text)
                    .with_context(|| format!("no counter in nft chain {table} {chain}: {text}"))
            }
            Counter::Ours { pins, point } => Ok(Registry::open(pins)?.counters(*point)?.dropped),
        }
    }
}

/// rx_packets of `iface`, from /proc/net/dev of `ns`.
pub fn rx_packets(ns: &Netns, iface: &str) -> Result<u64> {
    let text = ingress_xdp::sys::in_netns(Some(&ns.path()), || {
        std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/net/dev")
    })?;
    proc_net_dev_rx_packets(&text, iface)
        .with_context(|| format!("no {iface} in /proc/net/dev of {}", ns.name))
}

fn proc_net_dev_rx_packets(text: &str, iface: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, stats) = line.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        // rx: bytes packets errs drop ...
        stats.split_whitespace().nth(1)?.parse().ok()
    })
}

fn sum_stats(ethtool_s: &str, want: impl Fn(&str) -> bool) -> u64 {
    ethtool_s
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(key, _)| want(key))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// `iptables -L CHAIN -v -x -n`: two header lines, then one line per rule
/// starting with its packet count.
fn first_rule_packets(listing: &str) -> Option<u64> {
    listing
        .lines()
        .nth(2)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn nft_counter_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    while let Some(w) = words.next() {
        if w == "counter" && words.next() == Some("packets") {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive\n face |bytes    packets errs\n    lo: 0 0 0\nixtbr1: 6400 100 0 0\n";
        assert_eq!(proc_net_dev_rx_packets(text, "ixtbr1"), Some(100));
        assert_eq!(proc_net_dev_rx_packets(text, "ixtbr"), None);
    }

    #[test]
    fn sums_per_queue_xdp_drops() {
        let text = "NIC statistics:\n     rx_queue_0_xdp_drops: 5\n     rx_queue_0_drops: 7\n     rx_queue_1_xdp_drops: 6\n";
        let n = sum_stats(text, |k| {
            k.starts_with("rx_queue_") && k.ends_with("_xdp_drops")
        });
        assert_eq!(n, 11);
    }

    #[test]
    fn parses_iptables_and_nft_counters() {
        let ipt = "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n    pkts      bytes target     prot opt in     out     source               destination\n 1234567 79012288 DROP       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp dpt:9000\n";
        assert_eq!(first_rule_packets(ipt), Some(1_234_567));
        let nft = "table netdev t {\n\tchain c {\n\t\ttype filter hook ingress device \"x\" priority filter; policy accept;\n\t\ttcp dport 9000 counter packets 42 bytes 2688 drop\n\t}\n}\n";
        assert_eq!(nft_counter_packets(nft), Some(42));
    }
}
