//! Upgrades of a node that release 0.1.0 attached (scaffold).

#[path = "support/mod.rs"]
mod support;

#[test]
fn old_release_builds_and_runs() {
    let bin = support::old_release::release_0_1_0();
    let out = support::sh(&format!("{} --version", bin.display()));
    assert!(out.contains("0.1.0"), "{out}");
}
