//! ingress-xdp: per-node drops of Docker Swarm routing-mesh ports.
//!
//! The binary is a thin layer over this library: [`pins`] names the pinned
//! state and its layout, [`rules`] is the typed rule table, [`attach`] loads,
//! attaches and swaps the programs, [`upgrade`] migrates an older layout in
//! place, [`spec`] and [`cidr`] parse operator input, [`sys`] and [`bpf`] hold
//! the raw syscalls, and [`cli`] wires them to the command line.

pub mod agent;
pub mod attach;
pub mod bpf;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod constraint;
pub mod counters;
pub mod docker;
pub mod doctor;
pub mod events;
pub mod feed;
pub mod fixed;
pub mod health;
pub mod metrics;
pub mod model;
pub mod mountinfo;
pub mod netlink;
pub mod pins;
pub mod policy;
pub mod preflight;
pub mod reconcile;
pub mod rules;
pub mod spec;
pub mod swarm_pki;
pub mod sys;
pub mod upgrade;

/// The compiled eBPF object (XDP + TC programs and their maps), built by
/// build.rs from the `ingress-xdp-ebpf` crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-xdp"));
