//! `ingress-xdp run`: the agent's flags, merged over the policy file, and
//! the command that starts it.

use super::{targets::host_ifaces, *};

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Policy file (TOML) holding any of the settings below; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What this node does with a published port no rule decides: allow
    /// (Docker's behaviour) or deny. [default: allow]
    #[arg(long, value_enum)]
    pub default: Option<NodeDefault>,
    /// Accept the ports of services whose name matches (glob: * and ?; repeatable).
    #[arg(long = "allow-service", value_name = "PATTERN")]
    pub allow_services: Vec<NamePattern>,
    /// Block the ports of services whose name matches (repeatable; wins over --allow-service).
    #[arg(long = "block-service", value_name = "PATTERN")]
    pub block_services: Vec<NamePattern>,
    /// A manager's Docker API, to read services and node labels from on a
    /// worker (tcp://HOST:PORT; TLS from DOCKER_CERT_PATH when
    /// DOCKER_TLS_VERIFY is set). Without it a worker follows its own
    /// ingress network (names and ports only).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// This node's Docker engine. [default: unix:///var/run/docker.sock]
    #[arg(long, env = "INGRESS_XDP_LOCAL_DOCKER", value_name = "URL")]
    pub local_docker: Option<String>,
    /// Seconds between full resyncs (events trigger them too). [default: 30]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval: Option<u64>,
    /// Port of the policy feed. Agents on managers serve each node its own
    /// rule set there (computed with that node's labels, role and hostname);
    /// agents on workers follow it, so the label policy works on workers
    /// without any Docker API leaving a manager. Both ends authenticate with
    /// the certificates Swarm gave the node (mutual TLS). [default: 7949]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub feed_port: Option<u16>,
    /// Neither serve nor follow the policy feed: a worker then follows its
    /// ingress network's view only (or --docker-host).
    #[arg(long)]
    pub no_feed: bool,
    /// Docker's data root, which holds this node's Swarm certificates
    /// (swarm/certificates) for the policy feed. [default: /var/lib/docker]
    #[arg(long, env = "INGRESS_XDP_DOCKER_DATA_ROOT", value_name = "DIR")]
    pub docker_data_root: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics: per rule, per attach
    /// point, map pressure and the agent's own state (e.g. 127.0.0.1:9464,
    /// or the node's address for a Prometheus elsewhere). Off by default.
    #[arg(long, env = "INGRESS_XDP_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// At most this many per-rule series; the remaining rules are summed per
    /// protocol, mode and origin under port="other". [default: 500]
    #[arg(long, value_name = "N")]
    pub metrics_max_rules: Option<usize>,
    /// Where to write the heartbeat that `health` reads.
    #[arg(long, env = "INGRESS_XDP_RUN_DIR", value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub target: AttachArgs,
}

/// Flags over the policy file over the defaults (pure).
pub fn agent_settings(args: &RunArgs, file: &FileConfig, pins: Pins) -> AgentSettings {
    let ifaces = if args.target.ifaces.is_empty() {
        file.ifaces.clone().unwrap_or_default()
    } else {
        args.target.ifaces.clone()
    };
    let no_sbox = args.target.no_sbox || file.no_sbox.unwrap_or(false);
    let sbox_netns = (!no_sbox).then(|| {
        args.target
            .sbox_netns
            .clone()
            .or_else(|| file.sbox_netns.clone())
            .unwrap_or_else(sys::default_sbox_netns)
    });
    let pick = |flag: &Vec<NamePattern>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            FileConfig::patterns(file)
        } else {
            flag.clone()
        }
    };
    AgentSettings {
        ifaces,
        config: AgentConfig {
            pins,
            ifaces: Vec::new(),
            sbox_netns,
            sbox_iface: args
                .target
                .sbox_iface
                .clone()
                .or_else(|| file.sbox_iface.clone()),
            hook: args.target.hook.or(file.hook).unwrap_or(Hook::Xdp),
            xdp_mode: args.target.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            policy: PolicySettings {
                default: args.default.or(file.default).unwrap_or(NodeDefault::Allow),
                allow_services: pick(&args.allow_services, &file.allow_services),
                block_services: pick(&args.block_services, &file.block_services),
            },
            local_docker: args
                .local_docker
                .clone()
                .or_else(|| file.local_docker.clone())
                .unwrap_or_else(|| DEFAULT_LOCAL_DOCKER.to_string()),
            manager: args
                .docker_host
                .clone()
                .or_else(|| file.docker_host.clone()),
            resync: Duration::from_secs(
                args.resync_interval.or(file.resync_interval).unwrap_or(30),
            ),
            feed: (!(args.no_feed || file.no_feed.unwrap_or(false))).then(|| FeedSettings {
                port: args
                    .feed_port
                    .or(file.feed_port)
                    .unwrap_or(feed::DEFAULT_PORT),
                certs_dir: args
                    .docker_data_root
                    .clone()
                    .or_else(|| file.docker_data_root.clone())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_DATA_ROOT))
                    .join("swarm/certificates"),
            }),
            run_dir: Some(args.run_dir.clone()),
            metrics: args
                .metrics_addr
                .or(file.metrics_addr)
                .map(|addr| MetricsSettings {
                    addr,
                    max_rule_series: args
                        .metrics_max_rules
                        .or(file.metrics_max_rules)
                        .unwrap_or(crate::metrics::pinned::DEFAULT_MAX_RULE_SERIES),
                }),
        },
    }
}

/// The merged settings; `ifaces` empty means "the default-route interface",
/// resolved at start.
#[derive(Debug)]
pub struct AgentSettings {
    pub ifaces: Vec<String>,
    pub config: AgentConfig,
}

pub(super) fn cmd_run(pins: Pins, args: &RunArgs) -> Result<()> {
    sys::require_root()?;
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut settings = agent_settings(args, &file, pins);
    let ifaces = host_ifaces(&settings.ifaces)?;
    settings.config.ifaces = ifaces;
    let cfg = settings.config;
    tracing::info!(
        "agent starting: NICs {:?}, sandbox {}, hook {}, default {:?}, resync every {}s",
        cfg.ifaces,
        cfg.sbox_netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into()),
        cfg.hook,
        cfg.policy.default,
        cfg.resync.as_secs()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(Agent::new(cfg).run(shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ingress-xdp").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        match parse(&argv).unwrap().command {
            Command::Run(args) => *args,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn run_defaults() {
        let s = agent_settings(&run_args(&[]), &FileConfig::default(), Pins::new("/x"));
        assert!(s.ifaces.is_empty());
        let c = s.config;
        assert_eq!(c.sbox_netns, Some(sys::default_sbox_netns()));
        assert_eq!(c.hook, Hook::Xdp);
        assert_eq!(c.policy.default, NodeDefault::Allow);
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.local_docker, DEFAULT_LOCAL_DOCKER);
    }

    #[test]
    fn flags_override_the_policy_file() {
        let file = FileConfig::parse(
            r#"
            default = "deny"
            allow-services = ["web*"]
            block-services = ["dbg"]
            hook = "tc"
            ifaces = ["eth9"]
            resync-interval = 5
            docker-host = "tcp://file:2375"
            sbox-netns = "/run/file-sbox"
            "#,
        )
        .unwrap();
        let s = agent_settings(&run_args(&[]), &file, Pins::new("/x"));
        assert_eq!(s.ifaces, vec!["eth9".to_string()]);
        assert_eq!(s.config.policy.default, NodeDefault::Deny);
        assert_eq!(s.config.policy.allow_services[0].to_string(), "web*");
        assert_eq!(s.config.manager.as_deref(), Some("tcp://file:2375"));
        assert_eq!(s.config.sbox_netns, Some(PathBuf::from("/run/file-sbox")));
        assert_eq!(s.config.resync, Duration::from_secs(5));

        let args = run_args(&[
            "--default",
            "allow",
            "--allow-service",
            "api",
            "--hook",
            "xdp",
            "--iface",
            "eth0",
            "--resync-interval",
            "7",
            "--docker-host",
            "tcp://flag:2375",
            "--no-sbox",
        ]);
        let s = agent_settings(&args, &file, Pins::new("/x"));
        assert_eq!(s.ifaces, vec!["eth0".to_string()]);
        assert_eq!(s.config.policy.default, NodeDefault::Allow);
        assert_eq!(s.config.policy.allow_services[0].to_string(), "api");
        assert_eq!(s.config.policy.block_services[0].to_string(), "dbg");
        assert_eq!(s.config.hook, Hook::Xdp);
        assert_eq!(s.config.manager.as_deref(), Some("tcp://flag:2375"));
        assert_eq!(s.config.sbox_netns, None);
        assert_eq!(s.config.resync, Duration::from_secs(7));
    }

    #[test]
    fn run_rejects_bad_flags() {
        let err = |args: &[&str]| {
            let mut argv = vec!["run"];
            argv.extend_from_slice(args);
            parse(&argv).unwrap_err().to_string()
        };
        assert!(err(&["--default", "block"]).contains("invalid value 'block'"));
        assert!(err(&["--resync-interval", "0"]).contains("0"));
        assert!(err(&["--allow-service", ""]).contains("--allow-service"));
        assert!(err(&["--no-sbox", "--sbox-iface", "eth1"]).contains("cannot be used with"));
    }
}
