//! Prometheus metrics: the names, help texts and labels of everything
//! ingress-xdp exports, encoded in the Prometheus text format by
//! prometheus-client.
//!
//! Two kinds of series:
//! - the pinned state (rules, attach points, map pressure), read from bpffs
//!   at every scrape by [`pinned::PinnedState`], so `run --metrics-addr` and
//!   the one-shot `ingress-xdp metrics` show what `stats` shows;
//! - the agent's own state ([`AgentMetrics`]): its Docker source, syncs, the
//!   time from a Docker event to the map change, sandbox re-attaches and the
//!   policy feed. Only `run` has these.
//!
//! Every name starts with `ingress_xdp_`; counters end in `_total`, times are
//! in seconds.

pub mod http;
pub mod pinned;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
    registry::Registry,
};

use crate::{feed::server::Stats as FeedStats, pins::Pins};

pub const PREFIX: &str = "ingress_xdp";

/// The agent's Docker source, as `ingress_xdp_source_mode{mode}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLabel {
    Manager,
    Feed,
    LocalFallback,
}

impl SourceLabel {
    const ALL: [SourceLabel; 3] = [Self::Manager, Self::Feed, Self::LocalFallback];

    fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Feed => "feed",
            Self::LocalFallback => "local_fallback",
        }
    }
}

/// Buckets of the event-to-map histogram: 5 ms to ~10 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 12)
}

/// What the agent counts about itself; cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    syncs: Counter,
    sync_errors: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    docker_up: Gauge,
    source: Family<[(&'static str, &'static str); 1], Gauge>,
    event_to_map: Histogram,
    sbox_reattaches: Counter,
    /// The feed server's counts, kept across servers.
    pub feed: Arc<FeedStats>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            last_sync: Gauge::default(),
            docker_up: Gauge::default(),
            source: Family::default(),
            event_to_map: Histogram::new(latency_buckets()),
            sbox_reattaches: Counter::default(),
            feed: Arc::default(),
        }
    }
}

impl AgentMetrics {
    pub fn sync_ok(&self, unix_secs: f64) {
        self.syncs.inc();
        self.last_sync.set(unix_secs);
        self.docker_up.set(1);
    }

    pub fn sync_failed(&self) {
        self.sync_errors.inc();
        self.docker_up.set(0);
    }

    pub fn set_source(&self, current: SourceLabel) {
        for mode in SourceLabel::ALL {
            self.source
                .get_or_create(&[("mode", mode.as_str())])
                .set(i64::from(mode == current));
        }
    }

    /// A Docker event (or a feed update) took `secs` to reach the maps.
    pub fn event_applied(&self, secs: f64) {
        self.event_to_map.observe(secs);
    }

    pub fn sbox_reattached(&self) {
        self.sbox_reattaches.inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "syncs",
            "Syncs of the rules with Docker (or the policy feed) that succeeded",
            self.syncs.clone(),
        );
        registry.register(
            "sync_errors",
            "Syncs that failed (Docker or the feed unreachable, a map write refused)",
            self.sync_errors.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            self.last_sync.clone(),
        );
        registry.register(
            "docker_up",
            "1 when the last sync reached the agent's Docker source",
            self.docker_up.clone(),
        );
        registry.register(
            "source_mode",
            "The agent's source of services: 1 for the mode in use (manager: a manager's API; \
             feed: the managers' policy feed; local_fallback: the worker's own ingress view)",
            self.source.clone(),
        );
        registry.register(
            "event_to_map_seconds",
            "Time from a Docker event or a policy feed update reaching the agent to the \
             resulting change in the rule map",
            self.event_to_map.clone(),
        );
        registry.register(
            "sandbox_reattaches",
            "Attaches to a new ingress_sbox after Docker recreated it",
            self.sbox_reattaches.clone(),
        );
        registry.register_collector(Box::new(FeedCollector(self.feed.clone())));
    }
}

#[derive(Debug)]
struct FeedCollector(Arc<FeedStats>);

impl Collector for FeedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |encoder: &mut DescriptorEncoder, name, help, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            &mut encoder,
            "feed_clients_served",
            "Workers' agents the policy feed authorized and served (on a manager)",
            load(&self.0.served),
        )?;
        counter(
            &mut encoder,
            "feed_clients_refused",
            "Connections the policy feed refused (bad or missing certificate, another node's \
             policy asked for)",
            load(&self.0.refused),
        )?;
        let g = ConstGauge::new(load(&self.0.connected) as i64);
        g.encode(encoder.encode_descriptor(
            "feed_clients_connected",
            "Workers' agents connected to the policy feed now",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// The registry `run` serves: build info, the pinned state and, with an
/// agent, its own metrics.
pub fn registry(pins: &Pins, max_rule_series: usize, agent: Option<&AgentMetrics>) -> Registry {
    registry_with(pins, max_rule_series, agent, None)
}

/// [`registry`] whose first rendering uses `snapshot`, already read (the
/// one-shot `metrics` reads the maps once, to fail loudly, and no more).
pub fn registry_with(
    pins: &Pins,
    max_rule_series: usize,
    agent: Option<&AgentMetrics>,
    snapshot: Option<pinned::Snapshot>,
) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "build",
        "This binary: release, build (release and eBPF digest) and state layout",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("build", crate::pins::build().to_string()),
            ("layout", ingress_xdp_common::LAYOUT_VERSION.to_string()),
        ]),
    );
    registry.register_collector(Box::new(pinned::PinnedState::new(
        pins.clone(),
        max_rule_series,
        snapshot,
    )));
    if let Some(agent) = agent {
        agent.register(&mut registry);
    }
    registry
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; a collector's error is its own line.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
