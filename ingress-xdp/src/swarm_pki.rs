//! Swarm's own PKI, as the policy feed uses it: this node's certificate and
//! key, the swarm's root CA, and who a peer certificate names.
//!
//! Every Swarm node holds, in `<data root>/swarm/certificates/`, a
//! certificate signed by the swarm's root CA (`swarm-node.crt`, the leaf and
//! any intermediates), its key (`swarm-node.key`) and the root
//! (`swarm-root-ca.crt`). The subject says who the node is: CN is the node
//! ID, OU its role (`swarm-manager` / `swarm-worker`), O the cluster ID. Only
//! managers carry the DNS name `swarm-manager`, which is what clients check,
//! as swarmkit does. Swarm renews these files on its own (and replaces the
//! root on `docker swarm ca --rotate`), so callers reload them when
//! [`Fingerprint`] changes.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{Context, Result, bail};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::model::NodeRole;

pub const NODE_CERT: &str = "swarm-node.crt";
pub const NODE_KEY: &str = "swarm-node.key";
pub const ROOT_CA: &str = "swarm-root-ca.crt";
/// The name every manager's certificate carries and clients verify.
pub const MANAGER_NAME: &str = "swarm-manager";

const OU_MANAGER: &str = "swarm-manager";
const OU_WORKER: &str = "swarm-worker";

/// Who a swarm certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            NodeRole::Manager => OU_MANAGER,
            NodeRole::Worker => OU_WORKER,
        };
        write!(
            f,
            "node {} ({role}, cluster {})",
            self.node_id, self.cluster_id
        )
    }
}

/// Reads the identity from a DER certificate's subject: exactly one CN, OU
/// and O, the OU one of Swarm's two roles.
pub fn identity(der: &[u8]) -> Result<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let subject = cert.subject();
    let one = |what: &str, mut values: Vec<&str>| -> Result<String> {
        match values.len() {
            1 => Ok(values.remove(0).to_string()),
            0 => bail!("the certificate's subject has no {what}"),
            n => bail!("the certificate's subject has {n} {what} values"),
        }
    };
    let node_id = one("CN", texts(subject.iter_common_name()))?;
    let ou = one("OU", texts(subject.iter_organizational_unit()))?;
    let cluster_id = one("O", texts(subject.iter_organization()))?;
    let role = match ou.as_str() {
        OU_MANAGER => NodeRole::Manager,
        OU_WORKER => NodeRole::Worker,
        other => bail!("the certificate's OU is {other:?}, not a Swarm role"),
    };
    if node_id.is_empty() || cluster_id.is_empty() {
        bail!("the certificate's CN or O is empty");
    }
    Ok(Identity {
        node_id,
        role,
        cluster_id,
    })
}

fn texts<'a>(
    values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Vec<&'a str> {
    values.filter_map(|a| a.as_str().ok()).collect()
}

/// Change detection for the three files (modification time and length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

impl Fingerprint {
    pub fn of(dir: &Path) -> Self {
        Self(
            [NODE_CERT, NODE_KEY, ROOT_CA]
                .iter()
                .map(|name| {
                    let meta = fs::metadata(dir.join(name)).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect(),
        )
    }
}

/// This node's certificate chain, key and trust root, loaded together.
pub struct NodeCerts {
    pub dir: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub fingerprint: Fingerprint,
}

impl NodeCerts {
    pub fn load(dir: &Path) -> Result<Self> {
        // Taken first: a renewal that lands while we read shows up as a
        // change at the next check instead of being missed.
        let fingerprint = Fingerprint::of(dir);
        let chain = certs(&dir.join(NODE_CERT))?;
        let roots = certs(&dir.join(ROOT_CA))?;
        let key_path = dir.join(NODE_KEY);
        let text = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(strip_pem_headers(&text).as_bytes()).with_context(
            || {
                format!(
                    "{}: no private key (an autolocked swarm's key is encrypted; unlock the node)",
                    key_path.display()
                )
            },
        )?;
        let identity = identity(&chain[0]).with_context(|| {
            format!(
                "{}: not a Swarm node certificate",
                dir.join(NODE_CERT).display()
            )
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            chain,
            key,
            roots,
            identity,
            fingerprint,
        })
    }

    fn root_store(&self) -> Result<Arc<RootCertStore>> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .with_context(|| format!("{}: unusable root", self.dir.join(ROOT_CA).display()))?;
        }
        Ok(Arc::new(store))
    }

    /// Server side of the feed: only clients whose certificate chains to this
    /// swarm's root (and allows client auth) complete the handshake.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.root_store()?, provider.clone())
                .build()
                .context("building the client-certificate verifier")?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("this node's certificate and key")?;
        Ok(Arc::new(config))
    }

    /// Client side: trusts this swarm's root, verifies [`MANAGER_NAME`], and
    /// presents this node's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("this node's certificate and key")?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(strip_pem_headers(&text).as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

/// swarmkit writes RFC 1421 style headers (`kek-version: 0`) inside its PEM
/// blocks, which PEM parsers for TLS refuse; they carry nothing we need.
fn strip_pem_headers(text: &str) -> String {
    text.lines()
        .filter(|line| !line.contains(": ") && !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            dn.push(kind.clone(), *value);
        }
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_from_the_subject() {
        use rcgen::DnType::*;
        let der = cert(&[
            (CommonName, "n1"),
            (OrganizationalUnitName, "swarm-worker"),
            (OrganizationName, "c1"),
        ]);
        assert_eq!(
            identity(&der).unwrap(),
            Identity {
                node_id: "n1".into(),
                role: NodeRole::Worker,
                cluster_id: "c1".into()
            }
        );
        let manager = cert(&[
            (CommonName, "n2"),
            (OrganizationalUnitName, "swarm-manager"),
            (OrganizationName, "c1"),
        ]);
        assert_eq!(identity(&manager).unwrap().role, NodeRole::Manager);
        for bad in [
            vec![
                (OrganizationalUnitName, "swarm-worker"),
                (OrganizationName, "c1"),
            ],
            vec![(CommonName, "n1"), (OrganizationName, "c1")],
            vec![(CommonName, "n1"), (OrganizationalUnitName, "swarm-worker")],
            vec![
                (CommonName, "n1"),
                (OrganizationalUnitName, "admins"),
                (OrganizationName, "c1"),
            ],
        ] {
            assert!(identity(&cert(&bad)).is_err(), "{bad:?}");
        }
        assert!(identity(b"not a certificate").is_err());
    }

    #[test]
    fn pem_headers_are_dropped() {
        let text = "-----BEGIN EC PRIVATE KEY-----\nkek-version: 0\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(
            strip_pem_headers(text),
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
        );
    }
}
