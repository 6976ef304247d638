//! Reading Docker: this node's identity, the cluster's services and their
//! published ports (bollard), turned into the [`crate::model`] types.
//!
//! Two engines may be involved: the local one (this node: identity, the
//! worker fallback) and the cluster one (a manager: services, node labels).
//! On a manager they are the same engine.

use std::{
    collections::{BTreeMap, HashMap},
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use bollard::{
    API_DEFAULT_VERSION, Docker,
    errors::Error as DockerError,
    models::{
        EndpointPortConfigProtocolEnum as ProtoEnum, EndpointPortConfigPublishModeEnum as ModeEnum,
        Node, NodeSpecRoleEnum, Service,
    },
    query_parameters::{EventsOptions, InspectNetworkOptions},
};

use crate::{
    model::{NodeInfo, NodeRole, PublishMode, PublishedPort, ServiceInfo},
    spec::Protocol,
};

pub const DEFAULT_LOCAL_DOCKER: &str = "unix:///var/run/docker.sock";
/// Where Docker keeps its state, and the node's Swarm certificates under it.
pub const DEFAULT_DOCKER_DATA_ROOT: &str = "/var/lib/docker";

/// bollard's default request timeout (seconds).
const TIMEOUT_SECS: u64 = 120;

/// The directory of ca.pem, cert.pem and key.pem when TLS is wanted for a
/// tcp:// engine, as the docker CLI decides: DOCKER_TLS_VERIFY non-empty;
/// DOCKER_CERT_PATH, else DOCKER_CONFIG, else ~/.docker, an empty variable
/// counting as unset. (bollard's own check takes an empty DOCKER_TLS_VERIFY
/// as set and an empty DOCKER_CERT_PATH as the working directory.)
fn tls_cert_dir(
    verify: Option<OsString>,
    cert_path: Option<OsString>,
    config: Option<OsString>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(verify)?;
    set(cert_path)
        .or_else(|| set(config))
        .or_else(|| Some(home?.join(".docker")))
}

/// The client certificate and key, checked before connecting: bollard reads
/// them at each handshake and, when it cannot, silently sends no
/// certificate, so the engine's rejection would not say why. Missing both
/// is allowed (an engine with `--tls` but not `--tlsverify` needs none, and
/// the docker CLI allows it too); returns what to say about them.
fn client_cert(cert: &Path, key: &Path) -> Result<String> {
    match (fs::read(cert), fs::read(key)) {
        (Ok(_), Ok(_)) => Ok(format!("client certificate {}", cert.display())),
        (Err(c), Err(k))
            if c.kind() == io::ErrorKind::NotFound && k.kind() == io::ErrorKind::NotFound =>
        {
            Ok(format!(
                "no client certificate: {} and {} do not exist",
                cert.display(),
                key.display()
            ))
        }
        (Err(e), _) => Err(e).with_context(|| format!("reading {}", cert.display())),
        (_, Err(e)) => Err(e).with_context(|| format!("reading {}", key.display())),
    }
}

/// Connects to `host` (`unix://PATH`, a bare socket path, `tcp://HOST:PORT`;
/// with DOCKER_TLS_VERIFY set, tcp uses TLS with the certificates in
/// DOCKER_CERT_PATH, as the docker CLI does) and negotiates the API version.
pub async fn connect(host: &str) -> Result<Docker> {
    let url = if host.starts_with('/') {
        format!("unix://{host}")
    } else {
        host.to_string()
    };
    let tcp = url.starts_with("tcp://") || url.starts_with("http://");
    let tls = tcp
        .then(|| {
            tls_cert_dir(
                env::var_os("DOCKER_TLS_VERIFY"),
                env::var_os("DOCKER_CERT_PATH"),
                env::var_os("DOCKER_CONFIG"),
                env::home_dir(),
            )
        })
        .flatten();
    let (docker, how) = match tls {
        Some(dir) => {
            let (ca, cert, key) = (
                dir.join("ca.pem"),
                dir.join("cert.pem"),
                dir.join("key.pem"),
            );
            let client = client_cert(&cert, &key).with_context(|| {
                format!("DOCKER_TLS_VERIFY is set: the client certificate for {url}")
            })?;
            let how = format!(" over TLS (CA {}, {client})", ca.display());
            let docker =
                Docker::connect_with_ssl(&url, &key, &cert, &ca, TIMEOUT_SECS, API_DEFAULT_VERSION);
            (docker, how)
        }
        None if tcp => (
            Docker::connect_with_http(&url, TIMEOUT_SECS, API_DEFAULT_VERSION),
            " without TLS (DOCKER_TLS_VERIFY is not set)".to_string(),
        ),
        None => (Docker::connect_with_host(&url), String::new()),
    };
    let docker =
        docker.with_context(|| format!("connecting to the Docker engine at {url}{how}"))?;
    docker
        .negotiate_version()
        .await
        .with_context(|| format!("talking to the Docker engine at {url}{how}"))
}

/// True when the engine answered that it is not a swarm manager (workers
/// cannot list services or nodes).
pub fn is_not_manager(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<DockerError>(),
            Some(DockerError::DockerResponseServerError { status_code: 503, message })
                if message.contains("not a swarm manager")
        )
    })
}

fn key_values(pairs: &[String]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

fn sorted(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

/// This node's identity: the local engine's /info, completed from the
/// cluster's /nodes/{id} when a manager is reachable.
pub async fn node_info(local: &Docker, cluster: Option<&Docker>) -> Result<NodeInfo> {
    let info = local.info().await.context("GET /info")?;
    let swarm = info.swarm.unwrap_or_default();
    let id = swarm.node_id.unwrap_or_default();
    if id.is_empty() {
        bail!("this Docker engine is not part of a swarm (docker info shows no Swarm.NodeID)");
    }
    let mut node = NodeInfo {
        id: id.clone(),
        hostname: info.name.unwrap_or_default(),
        role: swarm.control_available.map(|manager| {
            if manager {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            }
        }),
        labels: BTreeMap::new(),
        engine_labels: key_values(&info.labels.unwrap_or_default()),
        os: info.os_type.unwrap_or_default(),
        arch: info.architecture.unwrap_or_default(),
    };
    let Some(cluster) = cluster else {
        return Ok(node);
    };
    let inspected = cluster
        .inspect_node(&id)
        .await
        .with_context(|| format!("GET /nodes/{id}"))?;
    complete_from_node(&mut node, inspected);
    Ok(node)
}

/// Fills what the cluster knows of a node (labels, role, hostname, platform)
/// over what its own engine said.
fn complete_from_node(node: &mut NodeInfo, inspected: Node) {
    if let Some(spec) = inspected.spec {
        node.labels = sorted(spec.labels);
        node.role = match spec.role {
            Some(NodeSpecRoleEnum::MANAGER) => Some(NodeRole::Manager),
            Some(NodeSpecRoleEnum::WORKER) => Some(NodeRole::Worker),
            _ => node.role,
        };
    }
    if let Some(desc) = inspected.description {
        if let Some(hostname) = desc.hostname {
            node.hostname = hostname;
        }
        if let Some(platform) = desc.platform {
            node.os = platform.os.unwrap_or(std::mem::take(&mut node.os));
            node.arch = platform
                .architecture
                .unwrap_or(std::mem::take(&mut node.arch));
        }
        if let Some(labels) = desc.engine.and_then(|e| e.labels) {
            node.engine_labels = sorted(Some(labels));
        }
    }
}

/// Every node of the swarm by ID, as the policy sees it (`GET /nodes`,
/// managers only): what the policy feed evaluates for each worker.
pub async fn nodes(cluster: &Docker) -> Result<BTreeMap<String, NodeInfo>> {
    let list = cluster
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("GET /nodes")?;
    Ok(list
        .into_iter()
        .filter_map(|n| {
            let mut node = NodeInfo {
                id: n.id.clone()?,
                ..NodeInfo::default()
            };
            complete_from_node(&mut node, n);
            Some((node.id.clone(), node))
        })
        .collect())
}

/// This node's address in the swarm (`/info` Swarm.NodeAddr), if it is in one.
pub async fn swarm_node_addr(local: &Docker) -> Result<Option<std::net::IpAddr>> {
    let info = local.info().await.context("GET /info")?;
    Ok(info
        .swarm
        .and_then(|s| s.node_addr)
        .and_then(|a| a.parse().ok()))
}

/// The managers' addresses, from this node's engine (`/info`,
/// `Swarm.RemoteManagers`, which workers have too).
pub async fn remote_managers(local: &Docker) -> Result<Vec<std::net::IpAddr>> {
    let info = local.info().await.context("GET /info")?;
    let peers = info
        .swarm
        .and_then(|s| s.remote_managers)
        .unwrap_or_default();
    let mut out: Vec<std::net::IpAddr> = peers
        .iter()
        .filter_map(|p| {
            let addr = p.addr.as_deref()?;
            addr.parse::<std::net::SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| addr.parse())
                .ok()
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn service_info(service: Service) -> Option<ServiceInfo> {
    let spec = service.spec?;
    let ports = service
        .endpoint
        .and_then(|e| e.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let published = u16::try_from(p.published_port?).ok().filter(|&p| p != 0)?;
            let target = p
                .target_port
                .and_then(|t| u16::try_from(t).ok())
                .unwrap_or(0);
            let proto = match p.protocol {
                Some(ProtoEnum::UDP) => Protocol::Udp,
                Some(ProtoEnum::SCTP) => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            let mode = match p.publish_mode {
                Some(ModeEnum::HOST) => PublishMode::Host,
                _ => PublishMode::Ingress,
            };
            Some(PublishedPort {
                proto: Some(proto),
                published,
                target,
                mode,
            })
        })
        .collect();
    Some(ServiceInfo {
        id: service.id.unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        version: service.version.and_then(|v| v.index).unwrap_or(0),
        labels: Some(sorted(spec.labels)),
        ports,
    })
}

/// Every service with its published ports (`GET /services`, managers only).
/// Endpoint.Ports holds the ports actually assigned, including automatic ones.
pub async fn services(cluster: &Docker) -> Result<Vec<ServiceInfo>> {
    let list = cluster.list_services(None).await.context("GET /services")?;
    let mut out: Vec<ServiceInfo> = list.into_iter().filter_map(service_info).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `"Target: 80, Publish: 8080"` from the ingress network's service list.
pub fn parse_ingress_port(text: &str) -> Option<(u16, u16)> {
    let mut target = None;
    let mut published = None;
    for part in text.split(',') {
        let (key, value) = part.split_once(':')?;
        let value: u16 = value.trim().parse().ok()?;
        match key.trim() {
            "Target" => target = Some(value),
            "Publish" => published = Some(value),
            _ => {}
        }
    }
    Some((target?, published?))
}

/// The worker's local view: `GET /networks/ingress?verbose=true` lists every
/// published-port service of the cluster by name, with target and published
/// ports but no protocol and no labels.
pub async fn ingress_services(local: &Docker) -> Result<Vec<ServiceInfo>> {
    let options = InspectNetworkOptions {
        verbose: true,
        scope: None,
    };
    let network = local
        .inspect_network("ingress", Some(options))
        .await
        .context("GET /networks/ingress?verbose=true")?;
    let mut out = Vec::new();
    for (name, detail) in network.services.unwrap_or_default() {
        if name.is_empty() {
            continue;
        }
        let ports: Vec<PublishedPort> = detail
            .get("Ports")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().and_then(parse_ingress_port))
            .filter(|&(_, published)| published != 0)
            .map(|(target, published)| PublishedPort {
                proto: None,
                published,
                target,
                mode: PublishMode::Ingress,
            })
            .collect();
        out.push(ServiceInfo {
            id: name.clone(),
            name,
            version: 0,
            labels: None,
            ports,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Docker events that can change the policy's inputs, from `since` on.
///
/// The request goes out only when the stream is first polled, so a change
/// made before that has no live event; Docker replays what it logged since
/// `since` (a few seconds before the last read, for clock skew with a
/// remote manager), so nothing between a read and the subscription is lost.
pub fn policy_events(
    docker: &Docker,
    since: std::time::SystemTime,
) -> impl futures_util::Stream<Item = Result<bollard::models::EventMessage, DockerError>> + use<> {
    let since = since
        .checked_sub(std::time::Duration::from_secs(5))
        .unwrap_or(since)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut filters = HashMap::new();
    filters.insert(
        "type".to_string(),
        vec![
            "service".to_string(),
            "node".to_string(),
            "network".to_string(),
        ],
    );
    docker.events(Some(EventsOptions {
        since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
        until: None,
        filters: Some(filters),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_port_strings() {
        assert_eq!(
            parse_ingress_port("Target: 80, Publish: 8080"),
            Some((80, 8080))
        );
        assert_eq!(
            parse_ingress_port("Publish: 30001, Target: 53"),
            Some((53, 30001))
        );
        assert_eq!(parse_ingress_port("Target: 80"), None);
        assert_eq!(parse_ingress_port("garbage"), None);
        assert_eq!(parse_ingress_port("Target: x, Publish: 1"), None);
    }

    #[test]
    fn tls_cert_dir_as_the_docker_cli() {
        let os = |s: &str| Some(OsString::from(s));
        let home = || Some(PathBuf::from("/root"));
        let dir = |v, c, d, h| tls_cert_dir(v, c, d, h).map(|p| p.display().to_string());
        // DOCKER_TLS_VERIFY unset or empty: no TLS.
        assert_eq!(dir(None, os("/certs"), None, home()), None);
        assert_eq!(dir(os(""), os("/certs"), None, home()), None);
        // Any other value (even 0) turns TLS on, as in the docker CLI.
        assert_eq!(
            dir(os("0"), os("/certs"), None, home()).as_deref(),
            Some("/certs")
        );
        assert_eq!(
            dir(os("1"), os("/certs"), os("/cfg"), home()).as_deref(),
            Some("/certs")
        );
        // Empty DOCKER_CERT_PATH: DOCKER_CONFIG, then ~/.docker (not the cwd).
        assert_eq!(
            dir(os("1"), os(""), os("/cfg"), home()).as_deref(),
            Some("/cfg")
        );
        assert_eq!(
            dir(os("1"), os(""), os(""), home()).as_deref(),
            Some("/root/.docker")
        );
        assert_eq!(dir(os("1"), None, None, None), None);
    }

    #[test]
    fn client_cert_files() {
        let dir = std::env::temp_dir().join(format!("ixt-client-cert-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        // Neither: allowed, and said.
        let none = client_cert(&cert, &key).unwrap();
        assert!(none.starts_with("no client certificate"), "{none}");
        // Only one of them: an error naming the missing file.
        fs::write(&cert, "x").unwrap();
        let err = format!("{:#}", client_cert(&cert, &key).unwrap_err());
        assert!(err.contains("key.pem"), "{err}");
        fs::write(&key, "x").unwrap();
        let both = client_cert(&cert, &key).unwrap();
        assert!(both.starts_with("client certificate"), "{both}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn engine_labels() {
        let labels = key_values(&["zone=a".into(), "flag".into(), "k=v=w".into()]);
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["flag"], "");
        assert_eq!(labels["k"], "v=w");
    }

    #[test]
    fn service_ports_from_endpoint() {
        use bollard::models::{EndpointPortConfig, ObjectVersion, ServiceEndpoint, ServiceSpec};
        let service = Service {
            id: Some("abc".into()),
            version: Some(ObjectVersion { index: Some(42) }),
            spec: Some(ServiceSpec {
                name: Some("web".into()),
                labels: Some(HashMap::from([("ingress-xdp.block".into(), "true".into())])),
                ..Default::default()
            }),
            endpoint: Some(ServiceEndpoint {
                ports: Some(vec![
                    EndpointPortConfig {
                        protocol: Some(ProtoEnum::UDP),
                        target_port: Some(53),
                        published_port: Some(30053),
                        publish_mode: Some(ModeEnum::INGRESS),
                        ..Default::default()
                    },
                    EndpointPortConfig {
                        protocol: Some(ProtoEnum::TCP),
                        target_port: Some(80),
                        published_port: Some(8080),
                        publish_mode: Some(ModeEnum::HOST),
                        ..Default::default()
                    },
                    // Not published.
                    EndpointPortConfig {
                        target_port: Some(9000),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = service_info(service).unwrap();
        assert_eq!((info.name.as_str(), info.version), ("web", 42));
        assert_eq!(info.ports.len(), 2);
        assert_eq!(info.ports[0].proto, Some(Protocol::Udp));
        assert_eq!(info.ports[0].published, 30053);
        assert_eq!(info.ports[1].mode, PublishMode::Host);
        assert_eq!(info.labels.unwrap()["ingress-xdp.block"], "true");
    }
}
