#![no_std]

// Exists so that ingress-xdp can name this crate as a build dependency
// (cargo then rebuilds the loader when the programs change).
