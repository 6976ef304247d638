//! The same programs with the drop-event code compiled out, built only for
//! `cargo xtask bench`: beside `main.rs` it shows what the event code costs
//! when events are off.
#![no_std]
#![no_main]

#[path = "parse.rs"]
mod parse;
#[path = "programs.rs"]
mod programs;

const WITH_EVENTS: bool = false;
