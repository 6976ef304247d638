#![no_std]

// Exists so that ingress-xdp-bench can name this crate as a build dependency
// (cargo then rebuilds the bench when the programs change).
