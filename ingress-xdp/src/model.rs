//! What the agent knows about the cluster, independent of the Docker API:
//! this node's identity and the services with their published ports. The
//! Docker source fills these; the policy reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

/// This node, as Swarm placement constraints see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// None when the engine cannot tell (e.g. swarm inactive).
    pub role: Option<NodeRole>,
    /// `node.labels.*` (set with `docker node update --label-add`).
    pub labels: BTreeMap<String, String>,
    /// `engine.labels.*` (dockerd --label).
    pub engine_labels: BTreeMap<String, String>,
    /// `node.platform.os` / `node.platform.arch`.
    pub os: String,
    pub arch: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Through the routing mesh (what ingress-xdp is about).
    Ingress,
    /// Bound on the nodes running a task; bypasses the mesh.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    /// None when the source cannot tell (the worker's local fallback).
    pub proto: Option<Protocol>,
    pub published: u16,
    pub target: u16,
    pub mode: PublishMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// Swarm's object version: changes on every update.
    pub version: u64,
    /// None when the source cannot see labels (the worker's local fallback).
    pub labels: Option<BTreeMap<String, String>>,
    pub ports: Vec<PublishedPort>,
}
