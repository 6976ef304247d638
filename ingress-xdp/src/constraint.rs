//! Swarm placement constraints, as written in the `ingress-xdp.nodes` service
//! label: `KEY==VALUE` or `KEY!=VALUE`, comma-separated, all of which must hold.
//!
//! Operators already know this syntax from `docker service create
//! --constraint`, so we follow swarmkit's semantics
//! (`manager/constraint/constraint.go`) rather than inventing our own:
//!
//! - Keys and values are trimmed of surrounding whitespace.
//! - Keys are case-insensitive (`Node.Role` is `node.role`), except the label
//!   name after `node.labels.` / `engine.labels.`, which is case-sensitive.
//! - Values compare case-insensitively and as whole strings (no globs).
//! - A missing label (or role, hostname, ...) compares as the empty string, so
//!   `==` fails and `!=` holds. Values cannot be empty, so an absent label and
//!   a label set to `""` behave alike.
//! - Keys allow ASCII letters, digits, `-`, `_` and `.`; values allow letters,
//!   digits, whitespace and `: - _ . * ( ) ? + [ ] \ ^ $ |  /`. In particular a
//!   value cannot contain `,`, so splitting the label on commas is unambiguous.
//! - `==` is looked for before `!=`, anywhere in the text.
//!
//! Where swarmkit is silent we are stricter, because a constraint that can
//! never match would quietly close a port on every node: unknown keys (which
//! swarmkit accepts and then never matches) and `node.role` values other than
//! manager/worker are parse errors here, as is `node.ip`, which swarmkit
//! supports but whose address this agent does not know.

use std::{fmt, str::FromStr};

use crate::model::{NodeInfo, NodeRole};

const NODE_LABEL_PREFIX: &str = "node.labels.";
const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// Why a constraint (or a comma-separated list of them) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("no constraint given (expected KEY==VALUE or KEY!=VALUE, comma-separated)")]
    Empty,
    #[error("constraint {position} is empty (look for a stray or doubled comma)")]
    EmptyConstraint { position: usize },
    #[error("missing operator in {0:?} (use == or !=)")]
    MissingOperator(String),
    #[error("missing key before the operator in {0:?}")]
    EmptyKey(String),
    #[error("missing value after the operator in {0:?}")]
    EmptyValue(String),
    #[error(
        "invalid character {ch:?} in constraint key {key:?} \
         (keys use ASCII letters, digits, '-', '_' and '.')"
    )]
    InvalidKeyCharacter { key: String, ch: char },
    #[error(
        "invalid character {ch:?} in constraint value {value:?} \
         (values use letters, digits, spaces and : - _ . * ( ) ? + [ ] \\ ^ $ | /)"
    )]
    InvalidValueCharacter { value: String, ch: char },
    #[error("unknown constraint key {key:?} ({})", unknown_key_hint(.suggestion))]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("empty label name in constraint key {key:?} (expected {prefix}<name>)")]
    EmptyLabelName { key: String, prefix: &'static str },
    #[error(
        "constraint key {0:?} is not supported by ingress-xdp \
         (the node's address is not known here; use node.labels.<name> instead)"
    )]
    UnsupportedKey(String),
    #[error("unknown node.role {0:?} (expected manager or worker)")]
    UnknownRole(String),
}

fn unknown_key_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(key) => format!("did you mean {key}?"),
        None => "expected node.id, node.hostname, node.role, node.platform.os, \
                 node.platform.arch, node.labels.<name> or engine.labels.<name>"
            .to_string(),
    }
}

/// What a constraint compares against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintKey {
    NodeId,
    NodeHostname,
    NodeRole,
    PlatformOs,
    PlatformArch,
    /// `node.labels.<name>`; the name is case-sensitive.
    NodeLabel(String),
    /// `engine.labels.<name>`; the name is case-sensitive.
    EngineLabel(String),
}

impl ConstraintKey {
    /// The node's value for this key; absent things read as `""`, as in
    /// swarmkit, so that `==` fails on them and `!=` holds.
    fn node_value<'a>(&self, node: &'a NodeInfo) -> &'a str {
        match self {
            ConstraintKey::NodeId => &node.id,
            ConstraintKey::NodeHostname => &node.hostname,
            ConstraintKey::NodeRole => node.role.map_or("", role_name),
            ConstraintKey::PlatformOs => &node.os,
            ConstraintKey::PlatformArch => &node.arch,
            ConstraintKey::NodeLabel(name) => node.labels.get(name).map_or("", String::as_str),
            ConstraintKey::EngineLabel(name) => {
                node.engine_labels.get(name).map_or("", String::as_str)
            }
        }
    }
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::PlatformOs => f.write_str("node.platform.os"),
            ConstraintKey::PlatformArch => f.write_str("node.platform.arch"),
            ConstraintKey::NodeLabel(name) => write!(f, "{NODE_LABEL_PREFIX}{name}"),
            ConstraintKey::EngineLabel(name) => write!(f, "{ENGINE_LABEL_PREFIX}{name}"),
        }
    }
}

impl FromStr for ConstraintKey {
    type Err = ConstraintError;

    /// Parses a trimmed key; the caller has already checked its characters.
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let fixed = match key.to_ascii_lowercase().as_str() {
            "node.id" => Some(ConstraintKey::NodeId),
            "node.hostname" => Some(ConstraintKey::NodeHostname),
            "node.role" => Some(ConstraintKey::NodeRole),
            "node.platform.os" => Some(ConstraintKey::PlatformOs),
            "node.platform.arch" => Some(ConstraintKey::PlatformArch),
            "node.ip" => return Err(ConstraintError::UnsupportedKey(key.to_string())),
            _ => None,
        };
        if let Some(fixed) = fixed {
            return Ok(fixed);
        }
        if let Some(name) = label_name(key, NODE_LABEL_PREFIX)? {
            return Ok(ConstraintKey::NodeLabel(name));
        }
        if let Some(name) = label_name(key, ENGINE_LABEL_PREFIX)? {
            return Ok(ConstraintKey::EngineLabel(name));
        }
        Err(ConstraintError::UnknownKey {
            key: key.to_string(),
            suggestion: suggest_key(key),
        })
    }
}

/// The label name in `key` if it starts with `prefix` (case-insensitively),
/// keeping the name's own case. `node.labels` without the dot counts as a
/// label key with no name: that is what the operator was writing.
fn label_name(key: &str, prefix: &'static str) -> Result<Option<String>, ConstraintError> {
    let empty_name = || ConstraintError::EmptyLabelName {
        key: key.to_string(),
        prefix,
    };
    let bare_prefix = &prefix[..prefix.len() - 1];
    if key.eq_ignore_ascii_case(bare_prefix) {
        return Err(empty_name());
    }
    match strip_prefix_ignore_case(key, prefix) {
        Some("") => Err(empty_name()),
        Some(name) => Ok(Some(name.to_string())),
        None => Ok(None),
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// A likely intended key for a common slip (singular `label`, a missing
/// `node.` or `platform.`), so the error can say what to write instead.
fn suggest_key(key: &str) -> Option<String> {
    const MISSPELT_PREFIXES: [(&str, &str); 4] = [
        ("node.label.", NODE_LABEL_PREFIX),
        ("engine.label.", ENGINE_LABEL_PREFIX),
        ("labels.", NODE_LABEL_PREFIX),
        ("label.", NODE_LABEL_PREFIX),
    ];
    const ALIASES: [(&str, &str); 12] = [
        ("id", "node.id"),
        ("hostname", "node.hostname"),
        ("node.name", "node.hostname"),
        ("node.host", "node.hostname"),
        ("role", "node.role"),
        ("node.roles", "node.role"),
        ("os", "node.platform.os"),
        ("node.os", "node.platform.os"),
        ("arch", "node.platform.arch"),
        ("node.arch", "node.platform.arch"),
        ("node.architecture", "node.platform.arch"),
        ("node.platform.architecture", "node.platform.arch"),
    ];
    for (wrong, right) in MISSPELT_PREFIXES {
        if let Some(name) = strip_prefix_ignore_case(key, wrong).filter(|n| !n.is_empty()) {
            return Some(format!("{right}{name}"));
        }
    }
    ALIASES
        .iter()
        .find(|(wrong, _)| key.eq_ignore_ascii_case(wrong))
        .map(|(_, right)| right.to_string())
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    Equal,
    NotEqual,
}

impl Operator {
    /// In swarmkit's search order: `a!=b==c` splits on `==`.
    const ALL: [Operator; 2] = [Operator::Equal, Operator::NotEqual];

    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Constraint {
    key: ConstraintKey,
    operator: Operator,
    /// As written (trimmed); compared case-insensitively.
    value: String,
}

impl Constraint {
    pub fn key(&self) -> &ConstraintKey {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether `node` satisfies this constraint, as swarmkit's scheduler
    /// would decide it.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let equal = self.value.eq_ignore_ascii_case(self.key.node_value(node));
        match self.operator {
            Operator::Equal => equal,
            Operator::NotEqual => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.operator, self.value)
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(ConstraintError::Empty);
        }
        let (key, operator, value) = split_at_operator(text)?;
        if key.is_empty() {
            return Err(ConstraintError::EmptyKey(text.to_string()));
        }
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(text.to_string()));
        }
        check_key_characters(key)?;
        let key: ConstraintKey = key.parse()?;
        check_value_characters(value)?;
        if key == ConstraintKey::NodeRole {
            check_role(value)?;
        }
        Ok(Constraint {
            key,
            operator,
            value: value.to_string(),
        })
    }
}

/// Splits at the first operator found, trying `==` before `!=` as swarmkit
/// does, and trims both sides.
fn split_at_operator(text: &str) -> Result<(&str, Operator, &str), ConstraintError> {
    Operator::ALL
        .into_iter()
        .find_map(|op| {
            text.split_once(op.symbol())
                .map(|(key, value)| (key.trim(), op, value.trim()))
        })
        .ok_or_else(|| ConstraintError::MissingOperator(text.to_string()))
}

fn check_key_characters(key: &str) -> Result<(), ConstraintError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match key.chars().find(|&c| !allowed(c)) {
        Some(ch) => Err(ConstraintError::InvalidKeyCharacter {
            key: key.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

/// swarmkit's value alphabet: it leaves out every current or future operator
/// character (`=`, `!`, `<`, `>`, `~`, ...) and the comma.
fn check_value_characters(value: &str) -> Result<(), ConstraintError> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            // Go's regexp `\s`: exactly these five.
            || matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
            || ":-_.*()?+[]\\^$|/".contains(c)
    };
    match value.chars().find(|&c| !allowed(c)) {
        Some(ch) => Err(ConstraintError::InvalidValueCharacter {
            value: value.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

fn check_role(value: &str) -> Result<(), ConstraintError> {
    let known = [NodeRole::Manager, NodeRole::Worker]
        .into_iter()
        .any(|role| value.eq_ignore_ascii_case(role_name(role)));
    if known {
        Ok(())
    } else {
        Err(ConstraintError::UnknownRole(value.to_string()))
    }
}

/// A non-empty list of constraints, all of which must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Constraints(Vec<Constraint>);

impl Constraints {
    pub fn as_slice(&self) -> &[Constraint] {
        &self.0
    }

    /// Whether `node` satisfies every constraint.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.0.iter().all(|constraint| constraint.matches(node))
    }
}

impl fmt::Display for Constraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, constraint) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{constraint}")?;
        }
        Ok(())
    }
}

impl FromStr for Constraints {
    type Err = ConstraintError;

    /// Parses `C1,C2,...`. An empty list is an error rather than "matches
    /// everything": an empty label is far more likely a mistake than intent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ConstraintError::Empty);
        }
        s.split(',')
            .enumerate()
            .map(|(index, piece)| parse_list_item(index + 1, piece))
            .collect::<Result<Vec<_>, _>>()
            .map(Constraints)
    }
}

fn parse_list_item(position: usize, piece: &str) -> Result<Constraint, ConstraintError> {
    if piece.trim().is_empty() {
        return Err(ConstraintError::EmptyConstraint { position });
    }
    piece.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            id: "n0d3id".into(),
            hostname: "edge-1".into(),
            role: Some(NodeRole::Worker),
            labels: [("edge".into(), "true".into()), ("Zone".into(), "eu".into())].into(),
            engine_labels: [("disk".into(), "ssd".into())].into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        }
    }

    fn parse(s: &str) -> Result<Constraints, ConstraintError> {
        s.parse()
    }

    fn matches(s: &str, node: &NodeInfo) -> bool {
        parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
            .matches(node)
    }

    #[test]
    fn parses_every_key() {
        let cases = [
            ("node.id==abc", ConstraintKey::NodeId),
            ("node.hostname==h", ConstraintKey::NodeHostname),
            ("node.role==manager", ConstraintKey::NodeRole),
            ("node.platform.os==linux", ConstraintKey::PlatformOs),
            ("node.platform.arch==aarch64", ConstraintKey::PlatformArch),
            (
                "node.labels.edge==true",
                ConstraintKey::NodeLabel("edge".into()),
            ),
            (
                "engine.labels.disk==ssd",
                ConstraintKey::EngineLabel("disk".into()),
            ),
            (
                "NODE.LABELS.Edge==x",
                ConstraintKey::NodeLabel("Edge".into()),
            ),
            (
                "Engine.Labels.a.b-c_d==x",
                ConstraintKey::EngineLabel("a.b-c_d".into()),
            ),
            ("Node.Platform.OS==linux", ConstraintKey::PlatformOs),
        ];
        for (text, key) in cases {
            let c: Constraint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.key(), &key, "{text}");
        }
    }

    #[test]
    fn trims_whitespace_around_keys_values_and_items() {
        let c = parse("  node.role == manager ,\tnode.labels.edge!= false  ").unwrap();
        let [a, b] = c.as_slice() else {
            panic!("expected two constraints")
        };
        assert_eq!(
            (a.key(), a.operator(), a.value()),
            (&ConstraintKey::NodeRole, Operator::Equal, "manager")
        );
        assert_eq!(b.operator(), Operator::NotEqual);
        assert_eq!(b.value(), "false");
    }

    #[test]
    fn value_may_contain_inner_spaces_and_regex_characters() {
        let c: Constraint = "node.labels.x==a b:c-d_e.f*(g)?+[h]\\^$|/".parse().unwrap();
        assert_eq!(c.value(), "a b:c-d_e.f*(g)?+[h]\\^$|/");
    }

    #[test]
    fn parse_errors() {
        use ConstraintError as E;
        let cases: Vec<(&str, ConstraintError)> = vec![
            ("", E::Empty),
            ("   ", E::Empty),
            ("node.role==manager,", E::EmptyConstraint { position: 2 }),
            (",node.role==manager", E::EmptyConstraint { position: 1 }),
            (
                "node.id==b,, node.id==d",
                E::EmptyConstraint { position: 2 },
            ),
            (
                "node.role=manager",
                E::MissingOperator("node.role=manager".into()),
            ),
            ("node.role", E::MissingOperator("node.role".into())),
            (
                "node.role<>manager",
                E::MissingOperator("node.role<>manager".into()),
            ),
            ("==manager", E::EmptyKey("==manager".into())),
            ("node.role==", E::EmptyValue("node.role==".into())),
            ("node.role !=  ", E::EmptyValue("node.role !=".into())),
            (
                "node.label.edge==true",
                E::UnknownKey {
                    key: "node.label.edge".into(),
                    suggestion: Some("node.labels.edge".into()),
                },
            ),
            (
                "engine.label.disk==ssd",
                E::UnknownKey {
                    key: "engine.label.disk".into(),
                    suggestion: Some("engine.labels.disk".into()),
                },
            ),
            (
                "labels.edge==true",
                E::UnknownKey {
                    key: "labels.edge".into(),
                    suggestion: Some("node.labels.edge".into()),
                },
            ),
            (
                "hostname==w1",
                E::UnknownKey {
                    key: "hostname".into(),
                    suggestion: Some("node.hostname".into()),
                },
            ),
            (
                "node.os==linux",
                E::UnknownKey {
                    key: "node.os".into(),
                    suggestion: Some("node.platform.os".into()),
                },
            ),
            (
                "foo.bar==x",
                E::UnknownKey {
                    key: "foo.bar".into(),
                    suggestion: None,
                },
            ),
            (
                "node.labels.==x",
                E::EmptyLabelName {
                    key: "node.labels.".into(),
                    prefix: NODE_LABEL_PREFIX,
                },
            ),
            (
                "node.labels==x",
                E::EmptyLabelName {
                    key: "node.labels".into(),
                    prefix: NODE_LABEL_PREFIX,
                },
            ),
            (
                "engine.labels.==x",
                E::EmptyLabelName {
                    key: "engine.labels.".into(),
                    prefix: ENGINE_LABEL_PREFIX,
                },
            ),
            ("node.ip==10.0.0.1", E::UnsupportedKey("node.ip".into())),
            (
                "node.labels.a/b==x",
                E::InvalidKeyCharacter {
                    key: "node.labels.a/b".into(),
                    ch: '/',
                },
            ),
            (
                "node. role==x",
                E::InvalidKeyCharacter {
                    key: "node. role".into(),
                    ch: ' ',
                },
            ),
            (
                "node.role===manager",
                E::InvalidValueCharacter {
                    value: "=manager".into(),
                    ch: '=',
                },
            ),
            (
                "node.labels.x==a!b",
                E::InvalidValueCharacter {
                    value: "a!b".into(),
                    ch: '!',
                },
            ),
            (
                "node.labels.x==été",
                E::InvalidValueCharacter {
                    value: "été".into(),
                    ch: 'é',
                },
            ),
            // `==` is found first, so the `!=` lands in the key.
            (
                "node.id!=a==b",
                E::InvalidKeyCharacter {
                    key: "node.id!=a".into(),
                    ch: '!',
                },
            ),
            ("node.role==managr", E::UnknownRole("managr".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let message = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            message("node.label.edge==true"),
            r#"unknown constraint key "node.label.edge" (did you mean node.labels.edge?)"#
        );
        assert_eq!(
            message("node.role=manager"),
            r#"missing operator in "node.role=manager" (use == or !=)"#
        );
        assert!(message("foo==x").contains("expected node.id, node.hostname"));
        assert_eq!(
            message("node.labels.==x"),
            r#"empty label name in constraint key "node.labels." (expected node.labels.<name>)"#
        );
        assert_eq!(
            message("node.id==b,,node.id==d"),
            "constraint 2 is empty (look for a stray or doubled comma)"
        );
        assert_eq!(
            message("node.role==boss"),
            r#"unknown node.role "boss" (expected manager or worker)"#
        );
    }

    #[test]
    fn matching_table() {
        let n = node();
        let cases = [
            ("node.id==n0d3id", true),
            ("node.id==N0D3ID", true),
            ("node.id!=n0d3id", false),
            ("node.hostname==edge-1", true),
            ("node.hostname==EDGE-1", true),
            ("node.hostname!=w1", true),
            ("node.hostname==edge", false),
            ("node.hostname==edge-*", false), // no globbing
            ("node.role==worker", true),
            ("node.role==Worker", true),
            ("node.role==manager", false),
            ("node.role!=manager", true),
            ("node.platform.os==Linux", true),
            ("node.platform.arch==x86_64", true),
            ("node.platform.arch!=aarch64", true),
            ("node.labels.edge==true", true),
            ("node.labels.edge==TRUE", true),
            ("node.labels.edge!=true", false),
            ("engine.labels.disk==ssd", true),
            ("engine.labels.disk!=hdd", true),
            // Label names are case-sensitive; values are not.
            ("node.labels.Zone==EU", true),
            ("node.labels.zone==eu", false),
            ("node.labels.zone!=eu", true),
        ];
        for (text, expected) in cases {
            assert_eq!(matches(text, &n), expected, "{text}");
        }
    }

    #[test]
    fn absent_values_read_as_empty() {
        let bare = NodeInfo::default();
        let cases = [
            ("node.labels.edge==true", false),
            ("node.labels.edge!=true", true),
            ("engine.labels.disk==ssd", false),
            ("engine.labels.disk!=ssd", true),
            ("node.role==manager", false),
            ("node.role!=manager", true),
            ("node.role!=worker", true),
            ("node.hostname==w1", false),
            ("node.hostname!=w1", true),
            ("node.platform.os!=linux", true),
        ];
        for (text, expected) in cases {
            assert_eq!(matches(text, &bare), expected, "{text}");
        }
        // An empty-valued label is indistinguishable from an absent one.
        let mut empty = NodeInfo::default();
        empty.labels.insert("edge".into(), String::new());
        assert!(!matches("node.labels.edge==true", &empty));
        assert!(matches("node.labels.edge!=true", &empty));
    }

    #[test]
    fn all_constraints_must_hold() {
        let n = node();
        assert!(matches("node.role==worker,node.labels.edge==true", &n));
        assert!(matches(
            "node.role==worker, node.hostname!=w1, engine.labels.disk==ssd",
            &n
        ));
        assert!(!matches("node.role==worker,node.labels.edge==false", &n));
        assert!(!matches("node.role==manager,node.labels.edge==true", &n));
        let mut manager = node();
        manager.role = Some(NodeRole::Manager);
        assert!(matches(
            "node.role==manager,node.labels.edge==true",
            &manager
        ));
    }

    #[test]
    fn display_round_trips() {
        let cases = [
            ("node.role==manager", "node.role==manager"),
            (" Node.Role == Manager ", "node.role==Manager"),
            (
                "NODE.LABELS.Edge!=x,engine.labels.d==y",
                "node.labels.Edge!=x,engine.labels.d==y",
            ),
            (
                "node.id==a , node.hostname!=b c",
                "node.id==a,node.hostname!=b c",
            ),
            (
                "node.platform.os==linux,node.platform.arch==arm64",
                "node.platform.os==linux,node.platform.arch==arm64",
            ),
        ];
        for (text, canonical) in cases {
            let parsed = parse(text).unwrap();
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(parse(canonical).unwrap(), parsed, "{canonical}");
        }
    }
}
