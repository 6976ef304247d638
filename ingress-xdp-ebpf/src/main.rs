//! The programs as ingress-xdp ships them (see `programs.rs`).
#![no_std]
#![no_main]

mod parse;
mod programs;

/// Drop events are compiled in; the map `EVENT_CONFIG` switches them.
const WITH_EVENTS: bool = true;
