//! The policy feed: how a worker gets the rule set its policy gives it
//! without any Docker API leaving a manager.
//!
//! An agent on a manager ([`server`]) computes each node's rules from the
//! services and that node's own labels, role and hostname, and pushes them to
//! the agent on that node ([`client`]) whenever they change. Both ends
//! authenticate with the certificates Swarm already gave every node
//! ([`crate::swarm_pki`]): mutual TLS, the client's chain checked against
//! this swarm's root CA, the server checked by the name `swarm-manager`.
//! A client is answered only with the policy of the node its certificate
//! names, and only when that certificate's O is this swarm's cluster ID.
//!
//! The wire protocol is JSON lines. The client sends one [`Request`]; the
//! server answers with [`Message`]s: the whole rule set at once and after
//! every change (not a diff: a message lost to a reconnect cannot leave a
//! worker wrong), a ping when idle, or one refusal before it closes.

pub mod client;
pub mod server;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::{reconcile::PortKey, rules::DockerRule, spec::Protocol, swarm_pki::Identity};

/// The feed's TCP port on managers (`run --feed-port`).
pub const DEFAULT_PORT: u16 = 7949;
/// An idle server pings this often, so clients can tell a dead manager from a
/// quiet one.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// A client gives up on a manager it has heard nothing from for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Handshake and request must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line either side accepts (a full rule set of every port is ~6 MB).
pub const MAX_LINE: usize = 16 << 20;

/// The client's only message: the node whose policy it wants, which must be
/// the node its certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    /// The node's whole rule set.
    Rules {
        rules: Vec<FeedRule>,
    },
    Ping,
    /// Why the server will not answer; it closes the connection after this.
    Refused {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedRule {
    pub proto: Protocol,
    pub port: u16,
    pub service: String,
    pub why: String,
}

pub fn to_wire(rules: &BTreeMap<PortKey, DockerRule>) -> Vec<FeedRule> {
    rules
        .iter()
        .map(|(&(proto, port), rule)| FeedRule {
            proto,
            port,
            service: rule.service.clone(),
            why: rule.why.clone(),
        })
        .collect()
}

pub fn from_wire(rules: Vec<FeedRule>) -> BTreeMap<PortKey, DockerRule> {
    rules
        .into_iter()
        .map(|r| {
            (
                (r.proto, r.port),
                DockerRule {
                    service: r.service,
                    why: r.why,
                },
            )
        })
        .collect()
}

/// Whether a client presenting `peer` (already chained to this swarm's root)
/// may read the policy of `requested`; `Err` is the reason to log and send.
pub fn authorize(peer: &Identity, cluster_id: &str, requested: &str) -> Result<(), String> {
    if peer.cluster_id != cluster_id {
        return Err(format!(
            "{peer} is not of this swarm (cluster {cluster_id})"
        ));
    }
    if peer.node_id != requested {
        return Err(format!(
            "{peer} asked for the policy of node {requested:?}; a node may read only its own"
        ));
    }
    Ok(())
}

/// One JSON line (a [`Message`], or the client's [`Request`]).
pub(crate) async fn send<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    message: &impl serde::Serialize,
) -> Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    write.write_all(&line).await.context("sending")?;
    write.flush().await.context("sending")
}

/// One line, at most [`MAX_LINE`] bytes; `None` at EOF.
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        anyhow::bail!("line longer than {MAX_LINE} bytes or cut short");
    }
    buf.pop();
    Ok(Some(String::from_utf8(buf).context("not UTF-8")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeRole;

    fn peer(node: &str, cluster: &str) -> Identity {
        Identity {
            node_id: node.into(),
            role: NodeRole::Worker,
            cluster_id: cluster.into(),
        }
    }

    #[test]
    fn a_node_reads_only_its_own_policy_in_its_own_swarm() {
        assert_eq!(authorize(&peer("w1", "c1"), "c1", "w1"), Ok(()));
        let other = authorize(&peer("w1", "c1"), "c1", "w2").unwrap_err();
        assert!(other.contains("only its own"), "{other}");
        let foreign = authorize(&peer("w1", "c2"), "c1", "w1").unwrap_err();
        assert!(foreign.contains("not of this swarm"), "{foreign}");
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        let rules = Message::Rules {
            rules: vec![FeedRule {
                proto: Protocol::Udp,
                port: 53,
                service: "dns".into(),
                why: "ingress-xdp.block=true".into(),
            }],
        };
        let line = serde_json::to_string(&rules).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Message>(&line).unwrap(), rules);
        assert_eq!(
            serde_json::to_string(&Message::Ping).unwrap(),
            r#"{"type":"ping"}"#
        );
        let wanted = from_wire(vec![FeedRule {
            proto: Protocol::Tcp,
            port: 80,
            service: "web".into(),
            why: "x".into(),
        }]);
        assert_eq!(wanted[&(Protocol::Tcp, 80)].service, "web");
    }
}
