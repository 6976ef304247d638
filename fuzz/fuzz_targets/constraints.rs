//! The `ingress-xdp.nodes` service label: Swarm placement constraints.
#![no_main]

use std::collections::BTreeMap;

use ingress_xdp::{
    constraint::Constraints,
    model::{NodeInfo, NodeRole},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, Vec<(String, String)>, String, bool)| {
    let (text, labels, hostname, manager) = input;
    let Ok(constraints) = text.parse::<Constraints>() else {
        return;
    };
    assert!(
        !constraints.as_slice().is_empty(),
        "{text:?}: empty list parsed"
    );
    // Printed and parsed back, the constraints are the same.
    let shown = constraints.to_string();
    assert_eq!(
        shown.parse::<Constraints>().as_ref(),
        Ok(&constraints),
        "{text:?} shown as {shown:?}"
    );
    // Matching any node is total, and the same for the reparsed form.
    let node = NodeInfo {
        id: hostname.chars().rev().collect(),
        hostname,
        role: Some(if manager {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        }),
        labels: labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        engine_labels: labels.into_iter().collect(),
        os: "linux".into(),
        arch: "x86_64".into(),
    };
    let matches = constraints.matches(&node);
    assert_eq!(
        shown.parse::<Constraints>().unwrap().matches(&node),
        matches
    );
});
