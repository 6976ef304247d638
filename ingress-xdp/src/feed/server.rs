//! The manager's end of the feed: accepts workers' agents over mutual TLS and
//! pushes each the rule set of the node its certificate names.
//!
//! The agent publishes a [`Snapshot`] (services and every node) after each
//! sync; each connection evaluates the policy for its own node against the
//! newest snapshot and sends the rule set when it differs from the last one
//! sent. Certificates are reloaded when Swarm renews them: every accept
//! checks the files' fingerprint.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tokio_rustls::TlsAcceptor;

use super::{HANDSHAKE_TIMEOUT, Message, PING_EVERY, Request, authorize, read_line, send, to_wire};
use crate::{
    model::{NodeInfo, ServiceInfo},
    policy::{self, PolicySettings},
    reconcile::wanted_rules,
    swarm_pki::{self, Fingerprint, NodeCerts},
};

/// What every connection evaluates: the services and each node by ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub services: Vec<ServiceInfo>,
    pub nodes: BTreeMap<String, NodeInfo>,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub certs_dir: PathBuf,
    pub policy: PolicySettings,
    /// Kept by the agent across servers (a node demoted and promoted again).
    pub stats: Arc<Stats>,
}

/// Counts since the agent started, for logs and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections authorized and served.
    pub served: AtomicU64,
    pub refused: AtomicU64,
    /// Workers being served now.
    pub connected: AtomicU64,
}

/// One served connection in [`Stats::connected`] while it lives.
struct Connected(Arc<Stats>);

impl Connected {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.served.fetch_add(1, Ordering::Relaxed);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The agent's handle: publish snapshots; the server runs until dropped.
pub struct Hub {
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    /// Starts listening (retrying in the background while the port or the
    /// certificates are unavailable).
    pub fn start(settings: ServerSettings) -> Self {
        let (tx, rx) = watch::channel(None);
        let stats = settings.stats.clone();
        let task = tokio::spawn(serve(settings, rx, stats.clone()));
        Self { tx, stats, task }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.tx.send_if_modified(|current| {
            if current.as_deref() == Some(&snapshot) {
                return false;
            }
            *current = Some(Arc::new(snapshot));
            true
        });
    }
}

const RETRY: Duration = Duration::from_secs(5);

struct Tls {
    fingerprint: Fingerprint,
    acceptor: TlsAcceptor,
    cluster_id: String,
}

fn load_tls(dir: &std::path::Path) -> Result<Tls> {
    let certs = NodeCerts::load(dir)?;
    Ok(Tls {
        fingerprint: certs.fingerprint.clone(),
        acceptor: TlsAcceptor::from(certs.server_config()?),
        cluster_id: certs.identity.cluster_id.clone(),
    })
}

async fn serve(
    settings: ServerSettings,
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    stats: Arc<Stats>,
) {
    let mut last_error = None;
    let (listener, mut tls) = loop {
        let attempt = async {
            let tls = load_tls(&settings.certs_dir)?;
            let listener = TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("listening on {}", settings.listen))?;
            anyhow::Ok((listener, tls))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::error!("policy feed not served: {msg}; retrying every {RETRY:?}");
                    last_error = Some(msg);
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    tracing::info!(
        "serving the policy feed on {} (mutual TLS, swarm {})",
        settings.listen,
        tls.cluster_id
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("policy feed: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if Fingerprint::of(&settings.certs_dir) != tls.fingerprint {
            match load_tls(&settings.certs_dir) {
                Ok(new) => {
                    tracing::info!(
                        "policy feed: reloaded this node's certificates from {}",
                        settings.certs_dir.display()
                    );
                    tls = new;
                }
                Err(e) => tracing::warn!(
                    "policy feed: keeping the previous certificates, the new ones do not load: {e:#}"
                ),
            }
        }
        let conn = Connection {
            peer,
            acceptor: tls.acceptor.clone(),
            cluster_id: tls.cluster_id.clone(),
            policy: settings.policy.clone(),
            rx: rx.clone(),
            stats: stats.clone(),
        };
        tokio::spawn(conn.run(stream));
    }
}

struct Connection {
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    cluster_id: String,
    policy: PolicySettings,
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    stats: Arc<Stats>,
}

impl Connection {
    fn refused(&self, reason: &str) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("policy feed: refused {}: {reason}", self.peer);
    }

    /// Tells the client why, then logs it.
    async fn refuse<W: tokio::io::AsyncWrite + Unpin>(&self, write: &mut W, reason: String) {
        let _ = send(
            write,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        self.refused(&reason);
    }

    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let tls = match timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.refused(&format!("TLS handshake failed: {e}")),
            Err(_) => return self.refused("no TLS handshake within the timeout"),
        };
        let peer_identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| swarm_pki::identity(leaf));
        let (read, mut write) = tokio::io::split(tls);
        let mut lines = BufReader::new(read);
        let identity = match peer_identity {
            Some(Ok(identity)) => identity,
            Some(Err(e)) => {
                let reason = format!("its certificate names no Swarm node: {e:#}");
                return self.refuse(&mut write, reason).await;
            }
            None => return self.refused("no client certificate"),
        };
        let request = match timeout(HANDSHAKE_TIMEOUT, read_line(&mut lines)).await {
            Ok(Ok(Some(line))) => serde_json::from_str::<Request>(&line)
                .map_err(|e| format!("{identity} sent a bad request: {e}")),
            Ok(Ok(None)) => Err(format!("{identity} closed before asking")),
            Ok(Err(e)) => Err(format!("{identity}: reading its request: {e}")),
            Err(_) => Err(format!("{identity} sent no request within the timeout")),
        };
        let request = match request.and_then(|r| {
            authorize(&identity, &self.cluster_id, &r.node)?;
            Ok(r)
        }) {
            Ok(request) => request,
            Err(reason) => {
                return self.refuse(&mut write, reason).await;
            }
        };
        let _connected = Connected::new(&self.stats);
        tracing::info!("policy feed: serving {identity} at {}", self.peer);
        let result = self.push(&request.node, &mut lines, &mut write).await;
        tracing::info!(
            "policy feed: {identity} at {} left: {}",
            self.peer,
            match result {
                Ok(()) => "closed".to_string(),
                Err(e) => format!("{e:#}"),
            }
        );
    }

    async fn push<R, W>(&mut self, node: &str, lines: &mut R, write: &mut W) -> Result<()>
    where
        R: tokio::io::AsyncBufRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut last_sent = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut ignored = Vec::new();
        loop {
            let snapshot = self.rx.borrow_and_update().clone();
            if let Some(rules) = snapshot.and_then(|s| {
                let info = s.nodes.get(node)?;
                let evaluation = policy::evaluate(info, &s.services, &self.policy);
                Some(to_wire(&wanted_rules(evaluation.blocked)))
            }) && last_sent.as_ref() != Some(&rules)
            {
                send(
                    write,
                    &Message::Rules {
                        rules: rules.clone(),
                    },
                )
                .await?;
                last_sent = Some(rules);
                ping.reset();
            }
            tokio::select! {
                changed = self.rx.changed() => changed.context("the agent stopped")?,
                _ = ping.tick() => send(write, &Message::Ping).await?,
                // Clients send nothing after the request: EOF or an error
                // means they left.
                read = lines.read_until(b'\n', &mut ignored) => {
                    if read.context("reading")? == 0 {
                        return Ok(());
                    }
                    ignored.clear();
                }
            }
        }
    }
}
