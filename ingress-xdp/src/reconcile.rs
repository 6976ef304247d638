//! Wanted vs current: the smallest list of map changes that turns the agent's
//! current rules into the policy's, ordered so that no port that stays
//! wanted is ever open in between (blocks first, then unblocks).

use std::collections::BTreeMap;

use crate::{policy::Reason, rules::DockerRule, spec::Protocol};

pub type PortKey = (Protocol, u16);

/// The policy's blocked ports as the rules the agent owns.
pub fn wanted_rules(blocked: BTreeMap<PortKey, Reason>) -> BTreeMap<PortKey, DockerRule> {
    blocked
        .into_iter()
        .map(|(key, reason)| {
            (
                key,
                DockerRule {
                    service: reason.service,
                    why: reason.why,
                },
            )
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Block the port (new, or the reason changed).
    Block { key: PortKey, rule: DockerRule },
    /// The policy no longer blocks the port.
    Unblock { key: PortKey, was: DockerRule },
}

/// The changes, blocks before unblocks.
pub fn plan(
    current: &BTreeMap<PortKey, DockerRule>,
    wanted: &BTreeMap<PortKey, DockerRule>,
) -> Vec<Change> {
    let blocks = wanted
        .iter()
        .filter(|(key, rule)| current.get(key) != Some(rule))
        .map(|(key, rule)| Change::Block {
            key: *key,
            rule: rule.clone(),
        });
    let unblocks = current
        .iter()
        .filter(|(key, _)| !wanted.contains_key(key))
        .map(|(key, was)| Change::Unblock {
            key: *key,
            was: was.clone(),
        });
    blocks.chain(unblocks).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(service: &str, why: &str) -> DockerRule {
        DockerRule {
            service: service.into(),
            why: why.into(),
        }
    }

    fn map(entries: &[(u16, &str)]) -> BTreeMap<PortKey, DockerRule> {
        entries
            .iter()
            .map(|(port, s)| ((Protocol::Tcp, *port), rule(s, "default deny")))
            .collect()
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let m = map(&[(80, "web"), (443, "tls")]);
        assert!(plan(&m, &m).is_empty());
    }

    #[test]
    fn blocks_come_before_unblocks() {
        let current = map(&[(80, "web"), (81, "old")]);
        let wanted = map(&[(80, "web"), (82, "new")]);
        let changes = plan(&current, &wanted);
        assert_eq!(
            changes,
            vec![
                Change::Block {
                    key: (Protocol::Tcp, 82),
                    rule: rule("new", "default deny")
                },
                Change::Unblock {
                    key: (Protocol::Tcp, 81),
                    was: rule("old", "default deny")
                },
            ]
        );
    }

    #[test]
    fn a_changed_reason_is_rewritten_not_reopened() {
        let current = map(&[(80, "web")]);
        let mut wanted = current.clone();
        wanted.insert((Protocol::Tcp, 80), rule("web", "ingress-xdp.block=true"));
        let changes = plan(&current, &wanted);
        assert_eq!(changes.len(), 1);
        assert!(matches!(changes[0], Change::Block { .. }));
    }

    #[test]
    fn protocols_are_distinct_keys() {
        let current = map(&[(53, "dns")]);
        let mut wanted = BTreeMap::new();
        wanted.insert((Protocol::Udp, 53), rule("dns", "default deny"));
        let changes = plan(&current, &wanted);
        assert_eq!(changes.len(), 2);
    }
}
