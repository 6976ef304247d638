//! The agent's settings: an optional policy file (TOML) with every knob of
//! `ingress-xdp run`, and the flags, which override it.
//!
//! ```toml
//! default = "deny"                     # allow | deny
//! allow-services = ["web*", "api"]
//! block-services = ["debug-*"]
//! docker-host = "tcp://10.0.0.1:2376"  # a manager, for workers
//! local-docker = "unix:///var/run/docker.sock"
//! resync-interval = 30                 # seconds
//! ifaces = ["eth0"]
//! sbox-netns = "/var/run/docker/netns/ingress_sbox"
//! sbox-iface = "eth1"
//! no-sbox = false
//! hook = "xdp"                         # xdp | tc
//! xdp-mode = "auto"                    # auto | native | generic
//! feed-port = 7949                     # the policy feed (managers serve, workers follow)
//! no-feed = false
//! docker-data-root = "/var/lib/docker" # holds swarm/certificates
//! metrics-addr = "127.0.0.1:9464"      # Prometheus endpoint (off when absent)
//! metrics-max-rules = 500              # per-rule series; the rest sum to port="other"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{
    attach::{Hook, XdpModeChoice},
    policy::{NamePattern, NodeDefault},
};

/// The policy file. Unknown keys are errors, so a typo never silently
/// changes what a node blocks.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub default: Option<NodeDefault>,
    pub allow_services: Option<Vec<String>>,
    pub block_services: Option<Vec<String>>,
    pub docker_host: Option<String>,
    pub local_docker: Option<String>,
    pub resync_interval: Option<u64>,
    pub ifaces: Option<Vec<String>>,
    pub sbox_netns: Option<PathBuf>,
    pub sbox_iface: Option<String>,
    pub no_sbox: Option<bool>,
    pub hook: Option<Hook>,
    pub xdp_mode: Option<XdpModeChoice>,
    pub feed_port: Option<u16>,
    pub no_feed: Option<bool>,
    pub docker_data_root: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub metrics_max_rules: Option<usize>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let config: FileConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        if config.resync_interval == Some(0) {
            bail!("resync-interval must be at least 1 (seconds)");
        }
        for pattern in config
            .allow_services
            .iter()
            .chain(config.block_services.iter())
            .flatten()
        {
            pattern
                .parse::<NamePattern>()
                .with_context(|| format!("service pattern {pattern:?}"))?;
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("policy file {}", path.display()))
    }

    pub fn patterns(list: &Option<Vec<String>>) -> Vec<NamePattern> {
        list.iter()
            .flatten()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let c = FileConfig::parse(
            r#"
            default = "deny"
            allow-services = ["web*"]
            block-services = ["debug-?"]
            docker-host = "tcp://10.0.0.1:2375"
            resync-interval = 10
            ifaces = ["eth0", "eth1"]
            no-sbox = true
            hook = "tc"
            xdp-mode = "generic"
            "#,
        )
        .unwrap();
        assert_eq!(c.default, Some(NodeDefault::Deny));
        assert_eq!(c.hook, Some(Hook::Tc));
        assert_eq!(c.xdp_mode, Some(XdpModeChoice::Generic));
        assert_eq!(
            c.ifaces.as_deref(),
            Some(&["eth0".to_string(), "eth1".to_string()][..])
        );
        assert_eq!(FileConfig::patterns(&c.allow_services).len(), 1);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", FileConfig::parse(text).unwrap_err());
        assert!(err("defualt = \"deny\"").contains("unknown field `defualt`"));
        assert!(err("default = \"block\"").contains("unknown variant `block`"));
        assert!(err("hook = \"ebpf\"").contains("unknown variant `ebpf`"));
        assert!(err("resync-interval = 0").contains("at least 1"));
        assert!(err("resync-interval = \"30s\"").contains("invalid type"));
        assert!(err("allow-services = [\"\"]").contains("service pattern \"\""));
        assert!(err("default = ").contains("line 1"));
    }
}
