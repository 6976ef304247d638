//! The agent (`ingress-xdp run`): keeps the attach points in place and the
//! Docker-derived rules equal to this node's policy.
//!
//! It reads Docker, evaluates the policy (pure), plans the difference against
//! the rules it owns (pure) and applies it under the pin-directory lock, so
//! CLI changes made meanwhile are never lost. It never removes a manual rule,
//! and when Docker is unreachable it changes nothing: the drops stay.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bollard::Docker;
use futures_util::{Stream, StreamExt};

use crate::{
    attach::{self, Hook, Target, XdpModeChoice},
    docker,
    feed::{
        client::{ClientSettings, Feed, FeedState},
        server::{Hub, ServerSettings, Snapshot},
    },
    health::{self, Heartbeat},
    metrics::{self, AgentMetrics, SourceLabel},
    model::{NodeInfo, ServiceInfo},
    mountinfo,
    pins::Pins,
    policy::{self, PolicySettings},
    preflight,
    reconcile::{Change, PortKey, plan, wanted_rules},
    rules::{DockerRule, RuleTable},
    sys::{self, NetnsId},
    upgrade,
};

/// Everything the agent needs, after flags and the policy file are merged.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub pins: Pins,
    /// Host interfaces (already resolved).
    pub ifaces: Vec<String>,
    /// ingress_sbox namespace file to follow; None: host NICs only.
    pub sbox_netns: Option<PathBuf>,
    /// Interface inside the sandbox; None: the one holding its default route.
    pub sbox_iface: Option<String>,
    pub hook: Hook,
    pub xdp_mode: XdpModeChoice,
    pub policy: PolicySettings,
    /// This node's engine.
    pub local_docker: String,
    /// A manager to read services and node labels from, if not the local engine.
    pub manager: Option<String>,
    /// Full resync period (the safety net behind events).
    pub resync: Duration,
    /// The policy feed: served by managers, followed by workers. None: off
    /// (a worker then follows only its own ingress view, or `manager`).
    pub feed: Option<FeedSettings>,
    /// Where the heartbeat for `health` goes; None: none is written.
    pub run_dir: Option<PathBuf>,
    /// The Prometheus endpoint; None: off.
    pub metrics: Option<MetricsSettings>,
}

#[derive(Clone, Debug)]
pub struct MetricsSettings {
    pub addr: SocketAddr,
    /// Per-rule series beyond this are summed under port="other".
    pub max_rule_series: usize,
}

#[derive(Clone, Debug)]
pub struct FeedSettings {
    pub port: u16,
    /// This node's Swarm certificates (`<data root>/swarm/certificates`).
    pub certs_dir: PathBuf,
}

/// How often the sandbox namespace file is checked for a new namespace.
const SBOX_POLL: Duration = Duration::from_millis(200);
/// Services are polled this often when only the worker's local view exists
/// (workers receive no service events).
const FALLBACK_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a worker's first sync waits for the policy feed to answer.
const FEED_GRACE: Duration = Duration::from_secs(2);
/// The heartbeat's period.
const BEAT: Duration = Duration::from_secs(2);
/// An engine in a swarm has its ingress_sbox within this after a sync.
const SBOX_EXPECTED_WITHIN: Duration = Duration::from_secs(10);

impl SourceMode {
    fn describe(self) -> String {
        match self {
            SourceMode::Manager => "a manager's API".into(),
            SourceMode::Feed(addr) => format!("the policy feed of {addr}"),
            SourceMode::LocalFallback => "the local ingress view (fallback)".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceMode {
    /// Services, labels and protocols from a manager.
    Manager,
    /// This node's rule set, computed by the manager at this address.
    Feed(SocketAddr),
    /// The worker's `networks/ingress` view: names and ports only.
    LocalFallback,
}

type Events = Pin<
    Box<dyn Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> + Send>,
>;

pub struct Agent {
    cfg: AgentConfig,
    local: Option<Docker>,
    cluster: Option<Docker>,
    mode: Option<SourceMode>,
    /// Last Docker error, to log once per state change.
    docker_down: Option<String>,
    /// (service id, version, label) already warned about.
    warned: HashSet<(String, u64, String)>,
    sbox: Option<NetnsId>,
    /// Attach id of the sandbox's attach point.
    sbox_point: Option<u32>,
    sbox_pending: Option<String>,
    /// The feed server, while this node is a manager.
    hub: Option<Hub>,
    /// The feed client, while this node is a worker.
    feed: Option<Feed>,
    /// While the feed is down, these rules stay (the last rule set it gave,
    /// or the agent's rules found at start): fail closed.
    feed_keep: Option<BTreeMap<PortKey, DockerRule>>,
    /// The feed's last "down" reason logged.
    feed_down: Option<String>,
    last_sync_ok: Option<u64>,
    /// When a sync first succeeded (the engine then is in a swarm).
    first_ok: Option<Instant>,
    host_checked: bool,
    /// Deployment problems by kind, while they stand.
    problems: BTreeMap<&'static str, String>,
    metrics: AgentMetrics,
    /// The first Docker event or feed update not yet applied to the maps.
    unapplied_since: Option<Instant>,
    /// A sandbox was attached by this process before (later ones are
    /// re-attaches).
    sbox_attached_once: bool,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Self {
        Self {
            cfg,
            local: None,
            cluster: None,
            mode: None,
            docker_down: None,
            warned: HashSet::new(),
            sbox: None,
            sbox_point: None,
            sbox_pending: None,
            hub: None,
            feed: None,
            feed_keep: None,
            feed_down: None,
            last_sync_ok: None,
            first_ok: None,
            host_checked: false,
            problems: BTreeMap::new(),
            metrics: AgentMetrics::default(),
            unapplied_since: None,
            sbox_attached_once: false,
        }
    }

    fn set_problem(&mut self, kind: &'static str, problem: Option<String>) {
        match problem {
            Some(p) => {
                if self.problems.get(kind) != Some(&p) {
                    tracing::error!("deployment problem: {p}");
                    self.problems.insert(kind, p);
                }
            }
            None => {
                if self.problems.remove(kind).is_some() {
                    tracing::info!("deployment problem resolved ({kind})");
                }
            }
        }
    }

    /// The checks that need only this process's view: the netns directory's
    /// mount, once at start.
    fn preflight(&mut self) {
        let Some(dir) = self
            .cfg
            .sbox_netns
            .as_deref()
            .and_then(preflight::netns_dir_of)
        else {
            return;
        };
        let problem = preflight::netns_mount_problem(&mountinfo::read(), &dir);
        self.set_problem("netns-mount", problem);
    }

    /// Once Docker answers: is this the node's network namespace?
    async fn check_host_network(&mut self) {
        if self.host_checked {
            return;
        }
        let Ok(local) = self.local().await else {
            return;
        };
        if let Ok(addr) = docker::swarm_node_addr(&local).await {
            self.host_checked = true;
            let problem = preflight::host_network_problem(addr, &preflight::local_addrs());
            self.set_problem("host-network", problem);
        }
    }

    /// Writes the heartbeat, after judging whether the sandbox should be
    /// visible by now.
    fn beat(&mut self) {
        if let Some(path) = self.cfg.sbox_netns.clone() {
            let missing = self
                .first_ok
                .is_some_and(|t| t.elapsed() > SBOX_EXPECTED_WITHIN)
                && !path.exists();
            self.set_problem(
                "sbox-missing",
                missing.then(|| preflight::sbox_missing_problem(&path)),
            );
        }
        let Some(dir) = &self.cfg.run_dir else {
            return;
        };
        let beat = Heartbeat {
            pid: std::process::id(),
            updated_at: sys::now_secs(),
            last_sync_ok: self.last_sync_ok,
            source: self.mode.map(|m| m.describe()),
            docker_error: self.docker_down.clone(),
            problems: self.problems.values().cloned().collect(),
        };
        if let Err(e) = health::write(dir, &beat) {
            tracing::warn!("heartbeat: {e:#}");
        }
    }

    /// Migrates an older state in place, then attaches to the host NICs
    /// (errors are fatal: the operator named them).
    pub fn attach_host(&self) -> Result<()> {
        let pins = &self.cfg.pins;
        let prepared = upgrade::prepare(pins)?;
        for line in prepared.describe(pins) {
            tracing::info!("{line}");
        }
        let _lock = pins.lock()?;
        for iface in &self.cfg.ifaces {
            let target = Target {
                netns: None,
                iface: iface.clone(),
            };
            let report = attach::attach(pins, &target, self.cfg.hook, self.cfg.xdp_mode)
                .with_context(|| format!("attaching to {target}"))?;
            log_attach(&target, &report);
        }
        Ok(())
    }

    /// Follows the sandbox namespace: attach to a new one as soon as it has
    /// its interface, forget attach points whose namespace is gone.
    pub fn watch_sbox(&mut self) {
        let Some(path) = self.cfg.sbox_netns.clone() else {
            return;
        };
        let current = NetnsId::of_path(&path).ok();
        if current == self.sbox && current.is_some() && !self.sbox_link_dead() {
            return;
        }
        if current.is_none() && self.sbox.is_none() {
            return;
        }
        let Some(id) = current else {
            tracing::info!(
                "{} is gone; waiting for Docker to recreate it",
                path.display()
            );
            self.sbox = None;
            self.sbox_point = None;
            self.forget_gone();
            return;
        };
        // A dead link in a namespace with the same identity (Docker recreated
        // it and the kernel reused the inode number) is a stale slot that
        // attach() replaces; other stale points go once the new one is in.
        match self.attach_sbox(&path) {
            Ok(report) => {
                if !report.already && self.sbox_attached_once {
                    self.metrics.sbox_reattached();
                }
                self.sbox_attached_once = true;
                self.sbox = Some(id);
                self.sbox_point = Some(report.point.id);
                self.sbox_pending = None;
                log_attach(&report.point.target(), &report);
                self.forget_gone();
            }
            Err(e) => {
                // Docker may still be wiring the namespace: retry quietly,
                // log each distinct error once.
                let msg = format!("{e:#}");
                if self.sbox_pending.as_deref() != Some(&msg) {
                    tracing::debug!("not attached to {} yet: {msg}", path.display());
                    self.sbox_pending = Some(msg);
                }
            }
        }
    }

    fn sbox_link_dead(&self) -> bool {
        self.sbox_point
            .is_some_and(|id| sys::link_detached(&self.cfg.pins.link(id)))
    }

    fn attach_sbox(&self, path: &std::path::Path) -> Result<attach::AttachReport> {
        let iface = match &self.cfg.sbox_iface {
            Some(name) => name.clone(),
            None => sys::in_netns(Some(path), sys::default_route_iface)?,
        };
        let target = Target {
            netns: Some(path.to_path_buf()),
            iface,
        };
        let _lock = self.cfg.pins.lock()?;
        attach::attach(&self.cfg.pins, &target, self.cfg.hook, self.cfg.xdp_mode)
    }

    fn forget_gone(&self) {
        let result = self
            .cfg
            .pins
            .lock()
            .and_then(|_lock| attach::forget_gone(&self.cfg.pins));
        match result {
            Ok(gone) => {
                for point in gone {
                    tracing::info!(
                        "forgot attach point {} (its namespace or interface is gone)",
                        point.target()
                    );
                }
            }
            Err(e) => tracing::warn!("pruning stale attach points: {e:#}"),
        }
    }

    async fn local(&mut self) -> Result<Docker> {
        if let Some(d) = &self.local {
            return Ok(d.clone());
        }
        let d = docker::connect(&self.cfg.local_docker).await?;
        if self.mode.is_none() {
            // Named once, so that logs from different engines can be told apart.
            match d.version().await {
                Ok(v) => tracing::info!(
                    "this node's Docker Engine: {} (API {}, negotiated {})",
                    v.version.as_deref().unwrap_or("?"),
                    v.api_version.as_deref().unwrap_or("?"),
                    d.client_version()
                ),
                Err(e) => tracing::debug!("GET /version: {e}"),
            }
        }
        self.local = Some(d.clone());
        Ok(d)
    }

    async fn cluster(&mut self) -> Result<Option<Docker>> {
        let Some(url) = self.cfg.manager.clone() else {
            return Ok(None);
        };
        if let Some(d) = &self.cluster {
            return Ok(Some(d.clone()));
        }
        let d = docker::connect(&url).await?;
        self.cluster = Some(d.clone());
        Ok(Some(d))
    }

    fn set_mode(&mut self, mode: SourceMode) {
        self.metrics.set_source(match mode {
            SourceMode::Manager => SourceLabel::Manager,
            SourceMode::Feed(_) => SourceLabel::Feed,
            SourceMode::LocalFallback => SourceLabel::LocalFallback,
        });
        if self.mode == Some(mode) {
            return;
        }
        match mode {
            SourceMode::Manager => match &self.cfg.manager {
                Some(url) => {
                    tracing::info!("reading services and node labels from the manager at {url}")
                }
                None => tracing::info!(
                    "reading services and node labels from the local engine (a manager)"
                ),
            },
            SourceMode::Feed(addr) => tracing::info!(
                "following this node's rule set from the policy feed of the manager at {addr} \
                 (mutual TLS with the swarm's certificates)"
            ),
            SourceMode::LocalFallback if self.cfg.feed.is_some() => tracing::warn!(
                "this node is a worker, no manager is configured (--docker-host) and no policy \
                 feed answers: keeping the rules the agent already had, and following the \
                 ingress network's service list for new ports, which has no protocols (published \
                 ports are blocked for both tcp and udp) and no labels (only --default, \
                 --allow-service and --block-service apply)"
            ),
            SourceMode::LocalFallback => tracing::warn!(
                "this node is a worker and no manager is configured (--docker-host): following the \
                 ingress network's service list, which has no protocols (published ports are blocked \
                 for both tcp and udp) and no labels (only --default, --allow-service and \
                 --block-service apply)"
            ),
        }
        self.mode = Some(mode);
    }

    /// The rules this node's policy wants, from whichever source is
    /// available: a manager's API (this engine or `--docker-host`), the
    /// policy feed, or the worker's own ingress view.
    async fn wanted(&mut self) -> Result<BTreeMap<PortKey, DockerRule>> {
        let local = self.local().await?;
        if let Some(cluster) = self.cluster().await? {
            let node = docker::node_info(&local, Some(&cluster)).await?;
            let services = docker::services(&cluster).await?;
            self.set_mode(SourceMode::Manager);
            return Ok(self.evaluate(&node, &services));
        }
        match docker::services(&local).await {
            Ok(services) => {
                let node = docker::node_info(&local, Some(&local)).await?;
                self.set_mode(SourceMode::Manager);
                self.serve_feed(&local, &services).await;
                Ok(self.evaluate(&node, &services))
            }
            Err(e) if docker::is_not_manager(&e) => self.worker_wanted(&local).await,
            Err(e) => Err(e),
        }
    }

    fn evaluate(
        &mut self,
        node: &NodeInfo,
        services: &[ServiceInfo],
    ) -> BTreeMap<PortKey, DockerRule> {
        let evaluation = policy::evaluate(node, services, &self.cfg.policy);
        for w in &evaluation.warnings {
            if self
                .warned
                .insert((w.service_id.clone(), w.version, w.label.clone()))
            {
                tracing::warn!("{w}");
            }
        }
        wanted_rules(evaluation.blocked)
    }

    /// On a manager: start the feed server once, and hand it the services and
    /// every node after each sync.
    async fn serve_feed(&mut self, local: &Docker, services: &[ServiceInfo]) {
        let Some(feed) = self.cfg.feed.clone() else {
            return;
        };
        // Promoted: a manager reads its own engine.
        self.feed = None;
        let policy = self.cfg.policy.clone();
        let hub = self.hub.get_or_insert_with(|| {
            Hub::start(ServerSettings {
                listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, feed.port)),
                certs_dir: feed.certs_dir,
                policy,
                stats: self.metrics.feed.clone(),
            })
        });
        match docker::nodes(local).await {
            Ok(nodes) => hub.publish(Snapshot {
                services: services.to_vec(),
                nodes,
            }),
            Err(e) => tracing::warn!("policy feed: not updated: {e:#}"),
        }
    }

    async fn worker_wanted(&mut self, local: &Docker) -> Result<BTreeMap<PortKey, DockerRule>> {
        // Demoted: only managers serve.
        self.hub = None;
        if let Some(settings) = &self.cfg.feed {
            let feed = self.feed.get_or_insert_with(|| {
                Feed::start(ClientSettings {
                    local_docker: self.cfg.local_docker.clone(),
                    certs_dir: settings.certs_dir.clone(),
                    port: settings.port,
                })
            });
            if matches!(*feed.state.borrow(), FeedState::Connecting) {
                // At start, give the first connection a moment rather than
                // announce a fallback that lasts milliseconds.
                let mut state = feed.state.clone();
                let _ = tokio::time::timeout(
                    FEED_GRACE,
                    state.wait_for(|s| !matches!(s, FeedState::Connecting)),
                )
                .await;
            }
            let state = feed.state.borrow().clone();
            match state {
                FeedState::Up { manager, rules } => {
                    if self.feed_down.take().is_some() {
                        tracing::info!("policy feed reachable again");
                    }
                    self.set_mode(SourceMode::Feed(manager));
                    self.feed_keep = Some(rules.clone());
                    return Ok(rules);
                }
                FeedState::Down(why) => match &self.feed_down {
                    // One warning per outage; how it fails may change.
                    None => {
                        tracing::warn!("policy feed unavailable: {why}");
                        self.feed_down = Some(why);
                    }
                    Some(last) if *last != why => {
                        tracing::debug!("policy feed still unavailable: {why}");
                        self.feed_down = Some(why);
                    }
                    Some(_) => {}
                },
                FeedState::Connecting => {}
            }
        }
        let node = docker::node_info(local, None).await?;
        let services = docker::ingress_services(local).await?;
        self.set_mode(SourceMode::LocalFallback);
        let mut wanted = self.evaluate(&node, &services);
        if self.cfg.feed.is_some() {
            let keep = match &self.feed_keep {
                Some(keep) => keep.clone(),
                None => {
                    let found = RuleTable::open(&self.cfg.pins)?.docker_rules()?;
                    self.feed_keep = Some(found.clone());
                    found
                }
            };
            for (key, rule) in keep {
                wanted.entry(key).or_insert(rule);
            }
        }
        Ok(wanted)
    }

    /// One full pass: read Docker (or the feed), evaluate, apply the
    /// difference. Returns how many ports changed.
    pub async fn sync(&mut self) -> Result<usize> {
        let wanted = self.wanted().await?;
        self.apply(&wanted)
    }

    fn apply(&self, wanted: &BTreeMap<PortKey, DockerRule>) -> Result<usize> {
        let _lock = self.cfg.pins.lock()?;
        let mut table = RuleTable::open(&self.cfg.pins)?;
        let current = table.docker_rules()?;
        let changes = plan(&current, wanted);
        let changed = changes.len();
        for change in changes {
            match change {
                Change::Block {
                    key: (proto, port),
                    rule,
                } => {
                    table.set_docker(proto, port, Some(&rule))?;
                    tracing::info!(
                        "blocked {port}/{proto}: service {}, {}",
                        rule.service,
                        rule.why
                    );
                }
                Change::Unblock {
                    key: (proto, port),
                    was,
                } => {
                    table.set_docker(proto, port, None)?;
                    tracing::info!(
                        "unblocked {port}/{proto}: no policy blocks it now (was: service {}, {})",
                        was.service,
                        was.why
                    );
                }
            }
        }
        table.normalize()?;
        Ok(changed)
    }

    fn docker_failed(&mut self, err: &anyhow::Error) {
        // Drop the clients: the engine may come back on a new socket.
        self.local = None;
        self.cluster = None;
        let msg = format!("{err:#}");
        match &self.docker_down {
            None => {
                tracing::warn!("Docker unavailable ({msg}); keeping the current drops, retrying")
            }
            // Still down: the way it fails may change, the state does not.
            Some(last) if *last != msg => tracing::debug!("Docker still unavailable: {msg}"),
            Some(_) => {}
        }
        self.docker_down = Some(msg);
    }

    fn docker_ok(&mut self) {
        if self.docker_down.take().is_some() {
            tracing::info!("Docker reachable again; resynced");
        }
    }

    /// Subscribes to the policy's events, replayed from `since` (the start
    /// of the read the subscription follows).
    async fn events(&mut self, since: std::time::SystemTime) -> Option<Events> {
        let source = match self.mode? {
            SourceMode::LocalFallback | SourceMode::Feed(_) => return None,
            SourceMode::Manager => match self.cluster().await.ok()? {
                Some(cluster) => cluster,
                None => self.local().await.ok()?,
            },
        };
        Some(Box::pin(docker::policy_events(&source, since)))
    }

    /// Runs until `shutdown` resolves. Returns only on shutdown or a fatal
    /// start-up error; the pinned state stays either way.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let _metrics = match &self.cfg.metrics {
            Some(m) => Some(AbortOnDrop(
                metrics::http::serve(
                    m.addr,
                    metrics::registry(&self.cfg.pins, m.max_rule_series, Some(&self.metrics)),
                )
                .await?,
            )),
            None => None,
        };
        self.attach_host()?;
        self.preflight();
        self.watch_sbox();
        self.beat();
        tokio::pin!(shutdown);
        let mut beat_tick = tokio::time::interval(BEAT);
        let mut resync = tokio::time::interval(self.cfg.resync);
        let mut sbox_tick = tokio::time::interval(SBOX_POLL);
        let mut fallback_tick = tokio::time::interval(FALLBACK_POLL);
        let mut events: Option<Events> = None;
        let mut feed_state: Option<tokio::sync::watch::Receiver<FeedState>> = None;
        let mut dirty = true;
        let mut backoff = Duration::from_millis(250);
        let mut retry_at = Instant::now();
        loop {
            if dirty && Instant::now() >= retry_at {
                let read_at = std::time::SystemTime::now();
                match self.sync().await {
                    Ok(changed) => {
                        self.docker_ok();
                        self.metrics.sync_ok(sys::now_secs_f64());
                        if let Some(since) = self.unapplied_since.take()
                            && changed > 0
                        {
                            self.metrics.event_applied(since.elapsed().as_secs_f64());
                        }
                        self.last_sync_ok = Some(sys::now_secs());
                        self.first_ok.get_or_insert_with(Instant::now);
                        self.check_host_network().await;
                        self.beat();
                        dirty = false;
                        backoff = Duration::from_millis(250);
                        if events.is_none() {
                            // Replayed from this sync's read: a change made
                            // before the stream connects still has its event.
                            events = self.events(read_at).await;
                            // And once more for an engine that replays none.
                            dirty = events.is_some();
                        }
                        match &self.feed {
                            None => feed_state = None,
                            Some(feed) if feed_state.is_none() => {
                                feed_state = Some(feed.state.clone())
                            }
                            Some(_) => {}
                        }
                    }
                    Err(e) => {
                        self.metrics.sync_failed();
                        self.docker_failed(&e);
                        events = None;
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            let retry_in = retry_at.saturating_duration_since(Instant::now());
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("stopping; attach points and rules stay pinned");
                    return Ok(());
                }
                _ = resync.tick() => dirty = true,
                _ = sbox_tick.tick() => self.watch_sbox(),
                _ = beat_tick.tick() => self.beat(),
                _ = fallback_tick.tick(), if self.mode == Some(SourceMode::LocalFallback) => dirty = true,
                event = next_event(&mut events) => match event {
                    Some(Ok(_)) => {
                        self.unapplied_since.get_or_insert_with(Instant::now);
                        dirty = true;
                    }
                    Some(Err(e)) => {
                        tracing::debug!("event stream ended: {e}");
                        events = None;
                        dirty = true;
                    }
                    None => {
                        events = None;
                        dirty = true;
                    }
                },
                changed = feed_changed(&mut feed_state) => {
                    if !changed {
                        feed_state = None;
                    }
                    self.unapplied_since.get_or_insert_with(Instant::now);
                    dirty = true;
                }
                () = tokio::time::sleep(retry_in), if dirty => {}
            }
        }
    }
}

/// Ends the metrics endpoint with the agent.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn log_attach(target: &Target, report: &attach::AttachReport) {
    match &report.upgraded_from {
        Some(from) => tracing::info!(
            "upgraded {target} ({}) in place: build {from} -> {}, program {}",
            report.point.hook,
            report.point.build,
            report.point.program_id
        ),
        None if !report.already => tracing::info!("attached {target} ({})", report.point.hook),
        None => {}
    }
}

/// False when the feed client is gone (the receiver is then dropped).
async fn feed_changed(state: &mut Option<tokio::sync::watch::Receiver<FeedState>>) -> bool {
    match state {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn next_event(
    events: &mut Option<Events>,
) -> Option<Result<bollard::models::EventMessage, bollard::errors::Error>> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
