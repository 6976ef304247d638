//! Part 6: the policy feed at scale: one manager's agent feeding 1,000
//! simulated worker clients.
//!
//! A swarm of a manager and a worker (private dockerds). The bench owns a
//! root CA (minted with rcgen) and makes it the swarm's with `docker swarm ca
//! --rotate --ca-cert --ca-key`. It then mints one client certificate per
//! simulated worker, each naming the real worker node (CN = its ID, OU
//! swarm-worker, O = the cluster), so the manager serves each one that
//! node's rule set. The clients are tokio tasks in a client namespace on the
//! lan, each on its own mutual-TLS connection to the agent (`ingress-xdp
//! run`, the real binary) on the manager.
//!
//! Each trial toggles a service's `ingress-xdp.nodes` label (blocking its
//! port on workers, then not) and measures, for every client, the time from
//! `docker service update` returning to that client receiving the changed
//! rule set. Reported: p50/p99/max over all clients and trials, the time to
//! connect all clients, and the manager agent's CPU time per trial and its
//! resident memory with every client connected.

use std::{
    fs,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ingress_xdp::{feed::DEFAULT_PORT, policy::LABEL_NODES};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{
    TestPins,
    agent::AgentProc,
    docker::{Dockerd, Proto, Publish, ServiceSpec, Swarm},
    pki::TempDir,
};

#[derive(Clone, Copy, Debug)]
pub struct FeedSettings {
    pub clients: usize,
    pub trials: usize,
}

#[derive(Clone, Debug, Default)]
pub struct FeedResults {
    pub clients: usize,
    /// ms from the command returning to each client's receipt, all trials.
    pub latencies_ms: Vec<f64>,
    pub connect_all_s: f64,
    /// The manager agent's CPU seconds per trial (user + system).
    pub cpu_per_trial_s: f64,
    pub rss_mb: f64,
    pub engine: String,
}

const PORT: u16 = 8091;
const TIMEOUT: Duration = Duration::from_secs(60);

/// What one client last saw: whether the port was in its rule set, and when
/// that last changed.
type Seen = Arc<Mutex<Vec<Option<(bool, Instant)>>>>;

pub fn measure(settings: FeedSettings) -> Result<FeedResults> {
    let swarm = Swarm::start("bf", 1, 1);
    let (m, w) = (&swarm.managers[0], &swarm.workers[0]);
    let engine = m
        .docker([
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ])
        .trim()
        .to_string();
    let tmp = TempDir::new("bfpki");
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swarm-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let ca = ca_params.self_signed(&ca_key)?;
    let (ca_pem, key_pem) = (tmp.path.join("ca.pem"), tmp.path.join("ca-key.pem"));
    fs::write(&ca_pem, ca.pem())?;
    fs::write(&key_pem, ca_key.serialize_pem())?;
    m.docker([
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        &ca_pem.display().to_string(),
        "--ca-key",
        &key_pem.display().to_string(),
    ]);

    let worker_id = w.node_id();
    let cluster = m.info()["Swarm"]["Cluster"]["ID"]
        .as_str()
        .context("cluster id")?
        .to_string();
    let mut clients = Vec::with_capacity(settings.clients);
    for _ in 0..settings.clients {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, cluster.as_str());
        p.distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "swarm-worker");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, worker_id.as_str());
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        clients.push((
            CertificateDer::from(cert.der().to_vec()),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec()))?;
    let roots = Arc::new(roots);

    let pins = TestPins::new("bfm");
    let root = m.data_root().display().to_string();
    let agent = AgentProc::start(m, &pins.pins, &["--docker-data-root", &root]);
    agent.wait_log("serving the policy feed on", TIMEOUT);
    let pid = agent_pid(m, &pins)?;
    let service = ServiceSpec::new("bffeed").publish(Publish::ingress(PORT, Proto::Tcp));
    m.create_service(&service);

    let seen: Seen = Arc::new(Mutex::new(vec![None; settings.clients]));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let client_ns = swarm.lan.client("bfc");
    let target = SocketAddr::from((m.addr(), DEFAULT_PORT));
    let runner = {
        let (seen, stop, failures, netns) = (
            seen.clone(),
            stop.clone(),
            failures.clone(),
            client_ns.path(),
        );
        let node = worker_id.clone();
        std::thread::spawn(move || {
            ingress_xdp::sys::in_netns(Some(&netns), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(run_clients(
                    clients, roots, target, node, seen, stop, failures,
                ));
                Ok(())
            })
        })
    };
    let t_connect = Instant::now();
    wait_all(&seen, false, t_connect, &failures)?;
    let connect_all_s = t_connect.elapsed().as_secs_f64();
    let rss_mb = rss_kb(pid)? as f64 / 1024.0;

    let cpu_before = cpu_ticks(pid)?;
    let mut latencies_ms = Vec::new();
    for trial in 0..settings.trials {
        let block = trial % 2 == 0;
        let args: Vec<String> = if block {
            vec![
                "--label-add".into(),
                format!("{LABEL_NODES}=node.role==manager"),
            ]
        } else {
            vec!["--label-rm".into(), LABEL_NODES.into()]
        };
        let mut cmd = vec!["service".to_string(), "update".into(), "--detach".into()];
        cmd.extend(args);
        cmd.push(service.name.clone());
        m.docker(&cmd);
        let returned = Instant::now();
        let at = wait_all(&seen, block, returned, &failures)?;
        latencies_ms.extend(
            at.iter()
                .map(|t| t.saturating_duration_since(returned).as_secs_f64() * 1000.0),
        );
    }
    let cpu_s = (cpu_ticks(pid)? - cpu_before) as f64 / ticks_per_second();
    stop.store(true, Ordering::Relaxed);
    runner
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    drop(agent);
    Ok(FeedResults {
        clients: settings.clients,
        latencies_ms,
        connect_all_s,
        cpu_per_trial_s: cpu_s / settings.trials.max(1) as f64,
        rss_mb,
        engine,
    })
}

/// Waits until every client's latest rule set has the port `blocked`, and
/// returns when each got there (not before `since`).
fn wait_all(
    seen: &Seen,
    blocked: bool,
    since: Instant,
    failures: &AtomicUsize,
) -> Result<Vec<Instant>> {
    let start = Instant::now();
    loop {
        {
            let now = seen.lock().unwrap();
            if now.iter().all(|s| s.is_some_and(|(b, _)| b == blocked)) {
                return Ok(now
                    .iter()
                    .map(|s| s.map(|(_, t)| t.max(since)).unwrap_or(since))
                    .collect());
            }
        }
        let failed = failures.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} feed clients failed");
        }
        if start.elapsed() > TIMEOUT {
            let now = seen.lock().unwrap();
            let behind = now
                .iter()
                .filter(|s| !s.is_some_and(|(b, _)| b == blocked))
                .count();
            bail!(
                "{behind} of {} clients did not converge within {TIMEOUT:?}",
                now.len()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn run_clients(
    certs: Vec<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    roots: Arc<rustls::RootCertStore>,
    target: SocketAddr,
    node: String,
    seen: Seen,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tasks = Vec::new();
    for (i, (cert, key)) in certs.into_iter().enumerate() {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![cert], key)
            .expect("client certificate");
        let (seen, stop, failures, node) =
            (seen.clone(), stop.clone(), failures.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = client(i, Arc::new(config), target, &node, &seen, &stop).await {
                eprintln!("bench: feed client {i}: {e:#}");
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
        // Spread the handshakes a little, as nodes joining would.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn client(
    i: usize,
    config: Arc<rustls::ClientConfig>,
    target: SocketAddr,
    node: &str,
    seen: &Seen,
    stop: &AtomicBool,
) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .context("connect")?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(ServerName::try_from("swarm-manager")?, tcp)
        .await
        .context("TLS handshake")?;
    let (read, mut write) = tokio::io::split(tls);
    write
        .write_all(format!("{{\"node\":\"{node}\"}}\n").as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    while !stop.load(Ordering::Relaxed) {
        let line = match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
            Err(_) => continue,
            Ok(line) => line?.context("the manager closed the connection")?,
        };
        let msg: serde_json::Value = serde_json::from_str(&line)?;
        match msg["type"].as_str() {
            Some("rules") => {
                let blocked = msg["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["port"] == PORT));
                let mut s = seen.lock().unwrap();
                if s[i].is_none_or(|(b, _)| b != blocked) {
                    s[i] = Some((blocked, Instant::now()));
                }
            }
            Some("refused") => bail!("refused: {line}"),
            _ => {}
        }
    }
    Ok(())
}

fn agent_pid(m: &Dockerd, pins: &TestPins) -> Result<u32> {
    // The agent is the process whose command line names this pin directory.
    let needle = pins.dir().display().to_string();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains(&needle) && text.contains("\0run\0") && !text.starts_with("nsenter") {
            return Ok(pid);
        }
    }
    bail!("no agent process for {needle} on {}", m.name())
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("comm")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the comm.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn rss_kb(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}
