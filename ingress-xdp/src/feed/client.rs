//! The worker's end of the feed: finds the managers through its own engine,
//! keeps one connection to one of them, and hands the agent every rule set
//! it receives.
//!
//! The managers come from `/info` (`Swarm.RemoteManagers`), re-read before
//! every round, so promotions and demotions are followed. A connection ends
//! on EOF, on silence longer than [`DEAD_AFTER`], or when this node's
//! certificate files change (Swarm renewed them, or rotated the root): the
//! client then reconnects, to the next manager, with the files as they are
//! now.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use rustls::pki_types::ServerName;
use tokio::{io::BufReader, net::TcpStream, sync::watch, time::timeout};
use tokio_rustls::TlsConnector;

use super::{DEAD_AFTER, HANDSHAKE_TIMEOUT, Message, Request, from_wire, read_line, send};
use crate::{
    docker,
    reconcile::PortKey,
    rules::DockerRule,
    swarm_pki::{Fingerprint, MANAGER_NAME, NodeCerts},
};

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// This node's engine, for the list of managers.
    pub local_docker: String,
    pub certs_dir: PathBuf,
    pub port: u16,
}

/// What the agent sees of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// The first connection is being made.
    Connecting,
    /// Lost, or never reached: why.
    Down(String),
    /// The newest rule set for this node, from that manager.
    Up {
        manager: SocketAddr,
        rules: std::collections::BTreeMap<PortKey, DockerRule>,
    },
}

const CERT_CHECK: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Feed {
    pub state: watch::Receiver<FeedState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    pub fn start(settings: ClientSettings) -> Self {
        let (tx, state) = watch::channel(FeedState::Connecting);
        let task = tokio::spawn(follow(settings, tx));
        Self { state, task }
    }
}

async fn follow(settings: ClientSettings, tx: watch::Sender<FeedState>) {
    let mut backoff = Duration::from_millis(100);
    let mut start = 0usize;
    loop {
        let managers = match managers(&settings).await {
            Ok(m) if m.is_empty() => Err(anyhow::anyhow!(
                "this node's engine lists no managers (Swarm.RemoteManagers)"
            )),
            other => other,
        };
        let mut why = String::new();
        match managers {
            Ok(managers) => {
                // From the one that last worked, then each other in turn.
                let n = managers.len();
                start %= n;
                for i in 0..n {
                    let at = (start + i) % n;
                    match session(&settings, managers[at], &tx).await {
                        Ok(()) => {
                            // A clean end (this node's certificates
                            // changed): reconnect to the same one at once.
                            start = at;
                            backoff = Duration::from_millis(100);
                            why.clear();
                            break;
                        }
                        Err(e) => why = format!("{}: {e:#}", managers[at]),
                    }
                }
                if !why.is_empty() {
                    start += 1;
                }
            }
            Err(e) => why = format!("{e:#}"),
        }
        if why.is_empty() {
            continue;
        }
        tx.send_if_modified(|state| {
            let down = FeedState::Down(why.clone());
            if *state == down {
                return false;
            }
            *state = down;
            true
        });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn managers(settings: &ClientSettings) -> Result<Vec<SocketAddr>> {
    let local = docker::connect(&settings.local_docker).await?;
    let hosts = docker::remote_managers(&local).await?;
    Ok(hosts
        .into_iter()
        .map(|ip| SocketAddr::new(ip, settings.port))
        .collect())
}

/// One connection; returns `Ok` when it should be retried at once.
async fn session(
    settings: &ClientSettings,
    addr: SocketAddr,
    tx: &watch::Sender<FeedState>,
) -> Result<()> {
    let certs = NodeCerts::load(&settings.certs_dir)?;
    let connector = TlsConnector::from(certs.client_config()?);
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(MANAGER_NAME).expect("a valid DNS name");
    let tls = timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let (read, mut write) = tokio::io::split(tls);
    let mut lines = BufReader::new(read);
    let request = Request {
        node: certs.identity.node_id.clone(),
    };
    send(&mut write, &request)
        .await
        .context("sending the request")?;
    let mut check = tokio::time::interval(CERT_CHECK);
    loop {
        tokio::select! {
            line = timeout(DEAD_AFTER, read_line(&mut lines)) => {
                let line = line
                    .map_err(|_| anyhow::anyhow!("nothing from the manager for {DEAD_AFTER:?}"))??;
                let Some(line) = line else { bail!("the manager closed the connection") };
                match serde_json::from_str::<Message>(&line).context("a bad message")? {
                    Message::Rules { rules } => {
                        tx.send_replace(FeedState::Up { manager: addr, rules: from_wire(rules) });
                    }
                    Message::Ping => {}
                    Message::Refused { reason } => bail!("refused: {reason}"),
                }
            }
            _ = check.tick() => {
                if Fingerprint::of(&settings.certs_dir) != certs.fingerprint {
                    tracing::info!("this node's certificates changed; reconnecting to the policy feed with them");
                    return Ok(());
                }
            }
        }
    }
}
