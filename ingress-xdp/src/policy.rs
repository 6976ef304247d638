//! What THIS node blocks: services and this node's identity in, the set of
//! (protocol, port) to drop out, each with the reason an operator will see in
//! logs and `list`. Pure: no Docker, no syscalls, so every rule is unit-tested.
//!
//! Per service, the first step that has an opinion decides:
//!
//! 1. the service label `ingress-xdp.block` (`true` blocks, `false` allows);
//! 2. this node's flags: a `--block-service` pattern blocks, else an
//!    `--allow-service` pattern allows;
//! 3. the service label `ingress-xdp.nodes` (Swarm constraints naming the nodes
//!    that accept the service): matching allows, not matching blocks;
//! 4. the node default (`allow` or `deny`).
//!
//! Host-mode ports do not go through the mesh, so only the explicit steps 1
//! and 2 can block them: a constraint or the node default is about mesh
//! traffic and must not cut a service off from its own tasks' host ports.
//!
//! When services disagree about the same (protocol, port), blocking wins:
//! failing closed is the point of the tool, and an operator who sees a port
//! blocked can find the one reason in the output.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    constraint::Constraints,
    model::{NodeInfo, PublishMode, PublishedPort, ServiceInfo},
    spec::Protocol,
};

/// Service label: Swarm constraints naming the nodes that accept the service's
/// ingress-published ports.
pub const LABEL_NODES: &str = "ingress-xdp.nodes";
/// Service label: `true` blocks the service's published ports on every node,
/// `false` allows them everywhere, overriding flags and constraints.
pub const LABEL_BLOCK: &str = "ingress-xdp.block";

/// Labels under our prefix that we understand; any other is likely a typo
/// that would otherwise be silently ignored.
const KNOWN_LABELS: [&str; 2] = [LABEL_NODES, LABEL_BLOCK];
const LABEL_PREFIX: &str = "ingress-xdp.";

/// Protocols a port of unknown protocol is blocked on. Swarm publishes only
/// tcp, udp and sctp, and sctp publishing is rare enough that the worker's
/// local fallback (which cannot see the protocol) does not guess it.
const UNKNOWN_PROTOCOL_FALLBACK: &[Protocol] = &[Protocol::Tcp, Protocol::Udp];

/// What a node does with a service that nothing else decides for.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeDefault {
    /// Accept mesh traffic, as Docker does.
    #[default]
    Allow,
    /// Accept no mesh traffic unless a label or flag opens the service here.
    Deny,
}

impl NodeDefault {
    pub fn name(self) -> &'static str {
        match self {
            NodeDefault::Allow => "allow",
            NodeDefault::Deny => "deny",
        }
    }
}

impl fmt::Display for NodeDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// This node's own settings (command-line flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySettings {
    pub default: NodeDefault,
    /// `--allow-service`: open these services here (below `--block-service`).
    pub allow_services: Vec<NamePattern>,
    /// `--block-service`: close these services here.
    pub block_services: Vec<NamePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty service-name pattern (expected a name, with * and ? as wildcards)")]
    Empty,
    #[error(
        "invalid character {ch:?} in service-name pattern {pattern:?} \
         (service names use letters, digits, '-' and '_'; wildcards are * and ?; \
         give one pattern per flag)"
    )]
    InvalidCharacter { pattern: String, ch: char },
}

/// A service-name glob: `*` matches any run of characters (even none), `?`
/// exactly one. Matching ignores ASCII case, as Swarm does for service names
/// (its store indexes names lowercased, so `web` and `WEB` are one service).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamePattern {
    text: String,
}

impl NamePattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        let pattern: Vec<char> = self.text.chars().collect();
        let name: Vec<char> = name.chars().collect();
        glob_matches(&pattern, &name)
    }
}

/// Iterative wildcard matching: on a mismatch, retry from the most recent
/// `*` with it covering one more character. Only the last `*` needs
/// remembering, because whatever an earlier star could absorb the later one
/// can too; this keeps the worst case at O(pattern x name) with no recursion.
fn glob_matches(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // (pattern index just after the last `*`, name index that star resumes at)
    let mut retry: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                p += 1;
                retry = Some((p, n));
            }
            Some(&c) if c == '?' || c.eq_ignore_ascii_case(&name[n]) => {
                p += 1;
                n += 1;
            }
            _ => match retry {
                Some((after_star, resume)) => {
                    p = after_star;
                    n = resume + 1;
                    retry = Some((after_star, n));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl FromStr for NamePattern {
    type Err = PatternError;

    /// Rejects characters no service name can contain (Swarm requires DNS
    /// label names): such a pattern could never match, and a comma usually
    /// means several patterns were packed into one flag.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '?');
        if let Some(ch) = s.chars().find(|&c| !allowed(c)) {
            return Err(PatternError::InvalidCharacter {
                pattern: s.to_string(),
                ch,
            });
        }
        Ok(NamePattern {
            text: s.to_string(),
        })
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a port is blocked: the service that blocks it and the deciding rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub service: String,
    /// One phrase naming the deciding step and its input, e.g.
    /// `ingress-xdp.block=true` or `--block-service web*`.
    pub why: String,
}

/// A service label we could not use. The service is still evaluated, as if
/// the label were absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabelWarning {
    pub service_id: String,
    pub service: String,
    /// The service version the warning is about, so the caller can warn once
    /// per version instead of on every sync.
    pub version: u64,
    pub label: String,
    pub value: String,
    pub error: String,
}

impl fmt::Display for LabelWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} ({} version {}): ignoring label {}={:?}: {}",
            self.service, self.service_id, self.version, self.label, self.value, self.error
        )
    }
}

/// The outcome for this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub blocked: BTreeMap<(Protocol, u16), Reason>,
    pub warnings: Vec<LabelWarning>,
}

/// Computes the ports this node blocks. Services are visited in name order,
/// so when several block the same port the reason recorded is always the
/// same one; bad labels become warnings, never errors.
pub fn evaluate(
    node: &NodeInfo,
    services: &[ServiceInfo],
    settings: &PolicySettings,
) -> Evaluation {
    let mut evaluation = Evaluation::default();
    for service in sorted_by_name(services) {
        let labels = read_labels(service, &mut evaluation.warnings);
        let ingress = ingress_decision(service, &labels, node, settings);
        let host = host_decision(service, &labels, settings);
        for port in &service.ports {
            let decision = match port.mode {
                PublishMode::Ingress => &ingress,
                PublishMode::Host => &host,
            };
            if let Decision::Block(why) = decision {
                record_block(&mut evaluation.blocked, port, &service.name, why);
            }
        }
    }
    evaluation
}

fn sorted_by_name(services: &[ServiceInfo]) -> Vec<&ServiceInfo> {
    let mut sorted: Vec<&ServiceInfo> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    sorted
}

/// Keeps an earlier reason for the same port: allows never reach here, so
/// any block wins, and the first (by service name) explains it.
fn record_block(
    blocked: &mut BTreeMap<(Protocol, u16), Reason>,
    port: &PublishedPort,
    service: &str,
    why: &str,
) {
    // Port 0 means "not allocated yet"; there is nothing to drop.
    if port.published == 0 {
        return;
    }
    let protocols = port
        .proto
        .as_ref()
        .map_or(UNKNOWN_PROTOCOL_FALLBACK, std::slice::from_ref);
    for &proto in protocols {
        blocked
            .entry((proto, port.published))
            .or_insert_with(|| Reason {
                service: service.to_string(),
                why: why.to_string(),
            });
    }
}

enum Decision {
    Allow,
    /// With the `Reason::why` phrase.
    Block(String),
}

/// The usable `ingress-xdp.*` labels of one service.
#[derive(Default)]
struct ServiceLabels {
    /// `ingress-xdp.block`: the parsed flag and the value as written.
    block: Option<(bool, String)>,
    /// `ingress-xdp.nodes`: the parsed constraints and the value as written.
    nodes: Option<(Constraints, String)>,
}

/// Parses the service's `ingress-xdp.*` labels, reporting each bad one as a
/// warning exactly once, whether or not it would have decided anything: a
/// broken label is worth fixing before it starts to matter.
fn read_labels(service: &ServiceInfo, warnings: &mut Vec<LabelWarning>) -> ServiceLabels {
    let mut parsed = ServiceLabels::default();
    let Some(labels) = &service.labels else {
        return parsed;
    };
    for (label, value) in labels.iter().filter(|(label, _)| is_ours(label)) {
        let outcome = match label.as_str() {
            LABEL_BLOCK => parse_block_value(value).map(|block| {
                parsed.block = Some((block, value.trim().to_string()));
            }),
            LABEL_NODES => parse_nodes_value(value).map(|nodes| {
                parsed.nodes = Some((nodes, value.trim().to_string()));
            }),
            _ => Err(unknown_label_error(label)),
        };
        if let Err(error) = outcome {
            warnings.push(LabelWarning {
                service_id: service.id.clone(),
                service: service.name.clone(),
                version: service.version,
                label: label.clone(),
                value: value.clone(),
                error,
            });
        }
    }
    parsed
}

fn is_ours(label: &str) -> bool {
    label
        .get(..LABEL_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(LABEL_PREFIX))
}

/// `true`/`false`, also `yes`/`no` and `1`/`0`, in any case and with
/// surrounding spaces: the spellings compose files and shell scripts use for
/// booleans. Anything else (including an empty value, as left by a bare
/// `--label ingress-xdp.block`) is ambiguous and therefore rejected.
fn parse_block_value(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("expected true or false (yes/no and 1/0 are also accepted)".to_string()),
    }
}

fn parse_nodes_value(value: &str) -> Result<Constraints, String> {
    value
        .parse()
        .map_err(|e: crate::constraint::ConstraintError| e.to_string())
}

fn unknown_label_error(label: &str) -> String {
    let near_miss = KNOWN_LABELS.iter().find(|known| {
        let (label, known) = (label.to_ascii_lowercase(), known.to_ascii_lowercase());
        label.starts_with(&known) || known.starts_with(&label)
    });
    match near_miss {
        Some(known) => format!("unknown ingress-xdp label (did you mean {known}?)"),
        None => format!(
            "unknown ingress-xdp label (known labels: {})",
            KNOWN_LABELS.join(", ")
        ),
    }
}

/// Steps 1-4, for ingress-mode ports.
fn ingress_decision(
    service: &ServiceInfo,
    labels: &ServiceLabels,
    node: &NodeInfo,
    settings: &PolicySettings,
) -> Decision {
    explicit_decision(service, labels, settings)
        .or_else(|| constraint_decision(labels, node))
        .unwrap_or_else(|| default_decision(settings.default))
}

/// Steps 1-2 only, for host-mode ports, which bypass the mesh.
fn host_decision(
    service: &ServiceInfo,
    labels: &ServiceLabels,
    settings: &PolicySettings,
) -> Decision {
    explicit_decision(service, labels, settings).unwrap_or(Decision::Allow)
}

/// Step 1 (the block label), then step 2 (this node's flags).
fn explicit_decision(
    service: &ServiceInfo,
    labels: &ServiceLabels,
    settings: &PolicySettings,
) -> Option<Decision> {
    block_label_decision(labels).or_else(|| flag_decision(&service.name, settings))
}

fn block_label_decision(labels: &ServiceLabels) -> Option<Decision> {
    let (block, value) = labels.block.as_ref()?;
    Some(if *block {
        Decision::Block(format!("{LABEL_BLOCK}={value}"))
    } else {
        Decision::Allow
    })
}

fn flag_decision(service: &str, settings: &PolicySettings) -> Option<Decision> {
    let first_match =
        |patterns: &[NamePattern]| patterns.iter().find(|p| p.matches(service)).cloned();
    if let Some(pattern) = first_match(&settings.block_services) {
        return Some(Decision::Block(format!("--block-service {pattern}")));
    }
    first_match(&settings.allow_services).map(|_| Decision::Allow)
}

fn constraint_decision(labels: &ServiceLabels, node: &NodeInfo) -> Option<Decision> {
    let (constraints, value) = labels.nodes.as_ref()?;
    Some(if constraints.matches(node) {
        Decision::Allow
    } else {
        Decision::Block(format!("{LABEL_NODES}={value} does not match this node"))
    })
}

fn default_decision(default: NodeDefault) -> Decision {
    match default {
        NodeDefault::Allow => Decision::Allow,
        NodeDefault::Deny => Decision::Block(format!("node default {default}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeRole;
    use Protocol::{Sctp, Tcp, Udp};

    /// Service labels in a test table.
    type Labels = Vec<(&'static str, &'static str)>;

    fn edge_node() -> NodeInfo {
        NodeInfo {
            id: "node1".into(),
            hostname: "edge-1".into(),
            role: Some(NodeRole::Worker),
            labels: [("edge".into(), "true".into())].into(),
            ..NodeInfo::default()
        }
    }

    fn port(proto: Option<Protocol>, published: u16, mode: PublishMode) -> PublishedPort {
        PublishedPort {
            proto,
            published,
            target: 80,
            mode,
        }
    }

    fn ingress(published: u16) -> PublishedPort {
        port(Some(Tcp), published, PublishMode::Ingress)
    }

    fn host(published: u16) -> PublishedPort {
        port(Some(Tcp), published, PublishMode::Host)
    }

    fn service(name: &str, labels: &[(&str, &str)], ports: Vec<PublishedPort>) -> ServiceInfo {
        ServiceInfo {
            id: format!("id-{name}"),
            name: name.into(),
            version: 7,
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ports,
        }
    }

    fn patterns(list: &[&str]) -> Vec<NamePattern> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn settings(default: NodeDefault, allow: &[&str], block: &[&str]) -> PolicySettings {
        PolicySettings {
            default,
            allow_services: patterns(allow),
            block_services: patterns(block),
        }
    }

    /// The `why` for tcp/80 of a single service, or None if not blocked.
    fn why_80(labels: &[(&str, &str)], settings: &PolicySettings) -> Option<String> {
        let services = [service("web", labels, vec![ingress(80)])];
        let evaluation = evaluate(&edge_node(), &services, settings);
        evaluation.blocked.get(&(Tcp, 80)).map(|r| r.why.clone())
    }

    fn reason(service: &str, why: &str) -> Reason {
        Reason {
            service: service.into(),
            why: why.into(),
        }
    }

    // --- NamePattern ---

    #[test]
    fn glob_matching() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("**", "x", true),
            ("web", "web", true),
            ("web", "WEB", true),
            ("web", "webx", false),
            ("web", "we", false),
            ("web*", "web", true),
            ("web*", "web_front", true),
            ("web*", "theweb", false),
            ("*web", "the_web", true),
            ("*web", "web_x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "abcbc", true),
            ("a*b*c", "acb", false),
            ("a*b*c", "abcd", false),
            ("a*b*c", "ab", false),
            ("?", "a", true),
            ("?", "", false),
            ("?", "ab", false),
            ("w?b", "web", true),
            ("w?b", "wb", false),
            ("??*", "a", false),
            ("??*", "ab", true),
            ("*?", "", false),
            ("*a", "aaaa", true),
            ("*aab", "aaaab", true),
            ("a*", "", false),
            ("stack_*", "stack_web", true),
            ("stack_*", "stackweb", false),
        ];
        for (pattern, name, expected) in cases {
            let p: NamePattern = pattern.parse().unwrap();
            assert_eq!(p.matches(name), expected, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn pattern_errors_and_display() {
        assert_eq!("".parse::<NamePattern>(), Err(PatternError::Empty));
        assert_eq!(
            "web,api".parse::<NamePattern>(),
            Err(PatternError::InvalidCharacter {
                pattern: "web,api".into(),
                ch: ','
            })
        );
        assert!(" web".parse::<NamePattern>().is_err());
        assert!("web.1".parse::<NamePattern>().is_err());
        for text in ["web*", "a?c", "*", "Stack_Web-1"] {
            assert_eq!(text.parse::<NamePattern>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn node_default_names() {
        assert_eq!(
            serde_json::to_string(&NodeDefault::Deny).unwrap(),
            r#""deny""#
        );
        assert_eq!(
            serde_json::from_str::<NodeDefault>(r#""allow""#).unwrap(),
            NodeDefault::Allow
        );
        assert_eq!(
            <NodeDefault as clap::ValueEnum>::from_str("deny", false),
            Ok(NodeDefault::Deny)
        );
        assert_eq!(NodeDefault::default(), NodeDefault::Allow);
    }

    // --- precedence ---

    #[test]
    fn precedence_table() {
        use NodeDefault::{Allow, Deny};
        let matching = ("ingress-xdp.nodes", "node.labels.edge==true");
        let not_matching = ("ingress-xdp.nodes", "node.labels.edge==false");
        let block_true = ("ingress-xdp.block", "true");
        let block_false = ("ingress-xdp.block", "false");
        let cases: Vec<(&str, Labels, PolicySettings, Option<&str>)> = vec![
            // Step 4 alone.
            ("default allow", vec![], settings(Allow, &[], &[]), None),
            (
                "default deny",
                vec![],
                settings(Deny, &[], &[]),
                Some("node default deny"),
            ),
            // Step 3 beats step 4.
            (
                "nodes match beats deny",
                vec![matching],
                settings(Deny, &[], &[]),
                None,
            ),
            (
                "nodes mismatch beats allow",
                vec![not_matching],
                settings(Allow, &[], &[]),
                Some("ingress-xdp.nodes=node.labels.edge==false does not match this node"),
            ),
            // Step 2 beats step 3.
            (
                "block flag beats matching nodes",
                vec![matching],
                settings(Allow, &[], &["w*"]),
                Some("--block-service w*"),
            ),
            (
                "allow flag beats mismatching nodes",
                vec![not_matching],
                settings(Allow, &["web"], &[]),
                None,
            ),
            (
                "allow flag beats deny",
                vec![],
                settings(Deny, &["web"], &[]),
                None,
            ),
            // Within step 2, block beats allow.
            (
                "block flag beats allow flag",
                vec![],
                settings(Allow, &["web"], &["we?"]),
                Some("--block-service we?"),
            ),
            (
                "first matching block pattern is named",
                vec![],
                settings(Allow, &[], &["api", "*b", "w*"]),
                Some("--block-service *b"),
            ),
            (
                "non-matching flags fall through",
                vec![],
                settings(Allow, &["api"], &["db*"]),
                None,
            ),
            // Step 1 beats everything.
            (
                "block label beats allow flag and matching nodes",
                vec![block_true, matching],
                settings(Allow, &["web"], &[]),
                Some("ingress-xdp.block=true"),
            ),
            (
                "allow label beats block flag, mismatching nodes and deny",
                vec![block_false, not_matching],
                settings(Deny, &[], &["web"]),
                None,
            ),
        ];
        for (name, labels, settings, expected) in cases {
            assert_eq!(why_80(&labels, &settings).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn block_label_spellings() {
        let s = PolicySettings::default();
        for value in ["true", "TRUE", " True ", "yes", "YES", "1"] {
            assert_eq!(
                why_80(&[(LABEL_BLOCK, value)], &s),
                Some(format!("ingress-xdp.block={}", value.trim())),
                "{value:?}"
            );
        }
        let deny = settings(NodeDefault::Deny, &[], &[]);
        for value in ["false", "False", "no", "NO", "0"] {
            assert_eq!(why_80(&[(LABEL_BLOCK, value)], &deny), None, "{value:?}");
        }
    }

    // --- port scope ---

    #[test]
    fn host_ports_only_blocked_by_explicit_steps() {
        use NodeDefault::{Allow, Deny};
        let mismatch = (LABEL_NODES, "node.role==manager");
        let cases: Vec<(&str, Labels, PolicySettings, Option<&str>)> = vec![
            ("default deny", vec![], settings(Deny, &[], &[]), None),
            (
                "mismatching nodes",
                vec![mismatch],
                settings(Allow, &[], &[]),
                None,
            ),
            (
                "block label",
                vec![(LABEL_BLOCK, "true")],
                settings(Allow, &[], &[]),
                Some("ingress-xdp.block=true"),
            ),
            (
                "block flag",
                vec![],
                settings(Allow, &[], &["web"]),
                Some("--block-service web"),
            ),
            (
                "allow label beats block flag",
                vec![(LABEL_BLOCK, "no")],
                settings(Allow, &[], &["web"]),
                None,
            ),
        ];
        for (name, labels, settings, expected) in cases {
            let services = [service("web", &labels, vec![host(8080)])];
            let evaluation = evaluate(&edge_node(), &services, &settings);
            let why = evaluation.blocked.get(&(Tcp, 8080)).map(|r| r.why.as_str());
            assert_eq!(why, expected, "{name}");
        }
    }

    #[test]
    fn mixed_modes_in_one_service() {
        let services = [service(
            "web",
            &[],
            vec![
                ingress(80),
                host(8080),
                port(Some(Udp), 53, PublishMode::Ingress),
            ],
        )];
        let evaluation = evaluate(
            &edge_node(),
            &services,
            &settings(NodeDefault::Deny, &[], &[]),
        );
        let keys: Vec<_> = evaluation.blocked.keys().copied().collect();
        assert_eq!(keys, vec![(Tcp, 80), (Udp, 53)]);
    }

    #[test]
    fn unknown_protocol_blocks_tcp_and_udp() {
        let services = [service(
            "web",
            &[],
            vec![
                port(None, 80, PublishMode::Ingress),
                port(Some(Sctp), 9, PublishMode::Ingress),
            ],
        )];
        let evaluation = evaluate(
            &edge_node(),
            &services,
            &settings(NodeDefault::Deny, &[], &[]),
        );
        let keys: Vec<_> = evaluation.blocked.keys().copied().collect();
        assert_eq!(keys, vec![(Tcp, 80), (Udp, 80), (Sctp, 9)]);
    }

    #[test]
    fn unallocated_port_zero_is_skipped() {
        let services = [service("web", &[], vec![ingress(0)])];
        let evaluation = evaluate(
            &edge_node(),
            &services,
            &settings(NodeDefault::Deny, &[], &[]),
        );
        assert!(evaluation.blocked.is_empty());
    }

    #[test]
    fn unknown_labels_skip_label_steps() {
        let unlabelled = |ports| ServiceInfo {
            labels: None,
            ..service("web", &[], ports)
        };
        // Only flags and the default decide; no warnings.
        let cases = [
            (settings(NodeDefault::Allow, &[], &[]), None),
            (
                settings(NodeDefault::Deny, &[], &[]),
                Some("node default deny"),
            ),
            (settings(NodeDefault::Deny, &["web"], &[]), None),
            (
                settings(NodeDefault::Allow, &[], &["web"]),
                Some("--block-service web"),
            ),
        ];
        for (settings, expected) in cases {
            let evaluation = evaluate(
                &edge_node(),
                &[unlabelled(vec![port(None, 80, PublishMode::Ingress)])],
                &settings,
            );
            assert_eq!(
                evaluation.blocked.get(&(Udp, 80)).map(|r| r.why.as_str()),
                expected
            );
            assert!(evaluation.warnings.is_empty());
        }
    }

    // --- bad labels ---

    #[test]
    fn bad_nodes_label_warns_once_and_falls_back_to_default() {
        let services = [service(
            "web",
            &[(LABEL_NODES, "node.label.edge==true")],
            vec![ingress(80), ingress(443)],
        )];
        let evaluation = evaluate(
            &edge_node(),
            &services,
            &settings(NodeDefault::Deny, &[], &[]),
        );
        assert_eq!(
            evaluation.warnings,
            vec![LabelWarning {
                service_id: "id-web".into(),
                service: "web".into(),
                version: 7,
                label: LABEL_NODES.into(),
                value: "node.label.edge==true".into(),
                error:
                    r#"unknown constraint key "node.label.edge" (did you mean node.labels.edge?)"#
                        .into(),
            }]
        );
        assert_eq!(
            evaluation.blocked.get(&(Tcp, 80)),
            Some(&reason("web", "node default deny"))
        );
        assert_eq!(
            evaluation.blocked.get(&(Tcp, 443)),
            Some(&reason("web", "node default deny"))
        );

        let allowed = evaluate(
            &edge_node(),
            &services,
            &settings(NodeDefault::Allow, &[], &[]),
        );
        assert!(allowed.blocked.is_empty());
        assert_eq!(allowed.warnings.len(), 1);
    }

    #[test]
    fn bad_block_label_warns_and_is_treated_as_absent() {
        for value in ["maybe", "", "on"] {
            let services = [service(
                "web",
                &[
                    (LABEL_BLOCK, value),
                    (LABEL_NODES, "node.labels.edge==false"),
                ],
                vec![ingress(80)],
            )];
            let evaluation = evaluate(&edge_node(), &services, &PolicySettings::default());
            assert_eq!(evaluation.warnings.len(), 1, "{value:?}");
            assert_eq!(evaluation.warnings[0].label, LABEL_BLOCK);
            assert_eq!(evaluation.warnings[0].value, value);
            assert!(
                evaluation.warnings[0]
                    .error
                    .starts_with("expected true or false")
            );
            // Falls through to the nodes constraint.
            assert_eq!(
                evaluation.blocked[&(Tcp, 80)].why,
                "ingress-xdp.nodes=node.labels.edge==false does not match this node"
            );
        }
    }

    #[test]
    fn every_bad_label_warns_even_when_another_step_decides() {
        let services = [
            service(
                "api",
                &[(LABEL_BLOCK, "perhaps"), (LABEL_NODES, "node.role=manager")],
                vec![ingress(81)],
            ),
            service(
                "web",
                &[(LABEL_BLOCK, "true"), (LABEL_NODES, "")],
                vec![ingress(80)],
            ),
            service("db", &[], vec![]),
            service(
                "ok",
                &[(LABEL_NODES, "node.role==worker")],
                vec![ingress(82)],
            ),
        ];
        let evaluation = evaluate(&edge_node(), &services, &PolicySettings::default());
        let summary: Vec<_> = evaluation
            .warnings
            .iter()
            .map(|w| (w.service.as_str(), w.label.as_str()))
            .collect();
        // Ordered by service name, then label.
        assert_eq!(
            summary,
            vec![
                ("api", LABEL_BLOCK),
                ("api", LABEL_NODES),
                ("web", LABEL_NODES)
            ]
        );
        assert_eq!(
            evaluation.warnings[1].error,
            r#"missing operator in "node.role=manager" (use == or !=)"#
        );
        assert_eq!(
            evaluation.blocked.keys().copied().collect::<Vec<_>>(),
            vec![(Tcp, 80)]
        );
    }

    #[test]
    fn unknown_ingress_xdp_labels_warn() {
        let services = [service(
            "web",
            &[
                ("ingress-xdp.node", "node.role==manager"),
                ("Ingress-XDP.Block", "true"),
                ("ingress-xdp.other", "x"),
                ("com.example.block", "true"),
            ],
            vec![ingress(80)],
        )];
        let evaluation = evaluate(&edge_node(), &services, &PolicySettings::default());
        let errors: Vec<_> = evaluation
            .warnings
            .iter()
            .map(|w| (w.label.as_str(), w.error.as_str()))
            .collect();
        assert_eq!(
            errors,
            vec![
                (
                    "Ingress-XDP.Block",
                    "unknown ingress-xdp label (did you mean ingress-xdp.block?)"
                ),
                (
                    "ingress-xdp.node",
                    "unknown ingress-xdp label (did you mean ingress-xdp.nodes?)"
                ),
                (
                    "ingress-xdp.other",
                    "unknown ingress-xdp label (known labels: ingress-xdp.nodes, ingress-xdp.block)"
                ),
            ]
        );
        assert!(evaluation.blocked.is_empty());
    }

    #[test]
    fn warning_display_names_everything() {
        let services = [service("web", &[(LABEL_BLOCK, "maybe")], vec![])];
        let evaluation = evaluate(&edge_node(), &services, &PolicySettings::default());
        assert_eq!(
            evaluation.warnings[0].to_string(),
            r#"service web (id-web version 7): ignoring label ingress-xdp.block="maybe": expected true or false (yes/no and 1/0 are also accepted)"#
        );
    }

    // --- conflicts and determinism ---

    #[test]
    fn conflicting_services_resolve_to_block() {
        // "open" allows tcp/80 here, "closed" blocks the same port.
        let services = [
            service("open", &[(LABEL_BLOCK, "false")], vec![ingress(80)]),
            service(
                "closed",
                &[(LABEL_NODES, "node.role==manager")],
                vec![ingress(80)],
            ),
        ];
        let evaluation = evaluate(&edge_node(), &services, &PolicySettings::default());
        assert_eq!(
            evaluation.blocked.get(&(Tcp, 80)),
            Some(&reason(
                "closed",
                "ingress-xdp.nodes=node.role==manager does not match this node"
            ))
        );
    }

    #[test]
    fn first_blocking_service_by_name_explains_a_shared_port() {
        let a = service("alpha", &[(LABEL_BLOCK, "1")], vec![ingress(80)]);
        let b = service(
            "beta",
            &[],
            vec![ingress(80), port(None, 53, PublishMode::Ingress)],
        );
        let c = service("gamma", &[], vec![port(Some(Udp), 53, PublishMode::Host)]);
        let settings = settings(NodeDefault::Deny, &[], &["gamma"]);
        let expected = evaluate(&edge_node(), &[a.clone(), b.clone(), c.clone()], &settings);
        assert_eq!(
            expected.blocked[&(Tcp, 80)],
            reason("alpha", "ingress-xdp.block=1")
        );
        assert_eq!(
            expected.blocked[&(Udp, 53)],
            reason("beta", "node default deny")
        );
        assert_eq!(
            expected.blocked[&(Tcp, 53)],
            reason("beta", "node default deny")
        );
        for order in [[&c, &b, &a], [&b, &c, &a], [&c, &a, &b]] {
            let services: Vec<ServiceInfo> = order.into_iter().cloned().collect();
            assert_eq!(evaluate(&edge_node(), &services, &settings), expected);
        }
    }

    #[test]
    fn nothing_in_nothing_out() {
        let evaluation = evaluate(&edge_node(), &[], &settings(NodeDefault::Deny, &[], &["*"]));
        assert_eq!(evaluation, Evaluation::default());
    }
}
