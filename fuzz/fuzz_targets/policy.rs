//! The policy fed arbitrary Docker labels, service names, ports and
//! node-default / pattern settings: `policy::evaluate` never panics, and its
//! answer follows from its input.
#![no_main]

use std::collections::BTreeMap;

use ingress_xdp::{
    model::{NodeInfo, NodeRole, PublishMode, PublishedPort, ServiceInfo},
    policy::{LABEL_BLOCK, LABEL_NODES, NodeDefault, PolicySettings, evaluate},
    spec::Protocol,
};
use libfuzzer_sys::fuzz_target;

type Label = (u8, String, String);
type Port = (u8, u16, bool);
type Service = (String, Option<Vec<Label>>, Vec<Port>);
/// Services, node labels, allow and block patterns, default deny, manager.
type Input = (
    Vec<Service>,
    Vec<(String, String)>,
    Vec<String>,
    Vec<String>,
    bool,
    bool,
);

/// Label names: mostly ours (so the values reach the label parsers).
fn label_name(kind: u8, name: &str) -> String {
    match kind % 4 {
        0 => LABEL_NODES.to_string(),
        1 => LABEL_BLOCK.to_string(),
        2 => format!("ingress-xdp.{name}"),
        _ => name.to_string(),
    }
}

fn protocol(p: u8) -> Option<Protocol> {
    match p % 4 {
        0 => Some(Protocol::Tcp),
        1 => Some(Protocol::Udp),
        2 => Some(Protocol::Sctp),
        _ => None,
    }
}

fuzz_target!(|input: Input| {
    let (services, node_labels, allow, block, deny, manager) = input;
    let services: Vec<ServiceInfo> = services
        .into_iter()
        .enumerate()
        .map(|(i, (name, labels, ports))| ServiceInfo {
            id: format!("id{i}"),
            name,
            version: i as u64,
            labels: labels.map(|ls| {
                ls.into_iter()
                    .map(|(kind, name, value)| (label_name(kind, &name), value))
                    .collect()
            }),
            ports: ports
                .into_iter()
                .map(|(proto, published, ingress)| PublishedPort {
                    proto: protocol(proto),
                    published,
                    target: 80,
                    mode: if ingress {
                        PublishMode::Ingress
                    } else {
                        PublishMode::Host
                    },
                })
                .collect(),
        })
        .collect();
    let node = NodeInfo {
        id: "node1".into(),
        hostname: "w1".into(),
        role: Some(if manager {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        }),
        labels: node_labels.into_iter().collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    let settings = PolicySettings {
        default: if deny {
            NodeDefault::Deny
        } else {
            NodeDefault::Allow
        },
        allow_services: allow.iter().filter_map(|p| p.parse().ok()).collect(),
        block_services: block.iter().filter_map(|p| p.parse().ok()).collect(),
    };

    let evaluation = evaluate(&node, &services, &settings);
    assert_eq!(
        evaluate(&node, &services, &settings),
        evaluation,
        "deterministic"
    );

    // Every blocked port is a published port of the service named as the reason.
    for ((proto, port), reason) in &evaluation.blocked {
        assert_ne!(*port, 0, "port 0 blocked");
        let published = services.iter().any(|s| {
            s.name == reason.service
                && s.ports.iter().any(|p| {
                    p.published == *port
                        && p.proto.map_or(*proto != Protocol::Sctp, |q| q == *proto)
                })
        });
        assert!(
            published,
            "{port}/{proto} blocked for {reason:?}, not published by it"
        );
    }
    // Warnings are about our labels only (the prefix in any case, so that
    // `Ingress-XDP.block` is reported rather than ignored), each on a label
    // the service has.
    for w in &evaluation.warnings {
        let ours = w
            .label
            .get(.."ingress-xdp.".len())
            .is_some_and(|head| head.eq_ignore_ascii_case("ingress-xdp."));
        assert!(ours, "warning on {:?}", w.label);
        let service = services
            .iter()
            .find(|s| s.id == w.service_id)
            .expect("service");
        let labels = service.labels.as_ref().expect("labels");
        assert_eq!(labels.get(&w.label), Some(&w.value));
    }
    // An explicit ingress-xdp.block=true blocks every published port of its
    // service; with nothing but allow settings, a service without labels
    // and without matching block patterns blocks nothing.
    for s in &services {
        let labels = s.labels.clone().unwrap_or_default();
        if labels.get(LABEL_BLOCK).map(String::as_str) == Some("true") {
            for p in s.ports.iter().filter(|p| p.published != 0) {
                for proto in p
                    .proto
                    .map_or(vec![Protocol::Tcp, Protocol::Udp], |q| vec![q])
                {
                    assert!(
                        evaluation.blocked.contains_key(&(proto, p.published)),
                        "{}: block=true but {}/{proto} open",
                        s.name,
                        p.published
                    );
                }
            }
        }
    }
});
