//! The agent on a worker reading a swarm manager over TLS, as the docker CLI
//! does: `--docker-host tcp://<manager>:2376` with DOCKER_TLS_VERIFY=1 and
//! DOCKER_CERT_PATH holding ca.pem, cert.pem and key.pem.
//!
//! * `worker_reads_a_tls_manager`: a CA, a server certificate for the
//!   manager's lan address (IP SAN) and a client certificate are made with
//!   `openssl`; the manager's dockerd serves its API on tcp 2376 with
//!   `--tlsverify` (only clients with a certificate of that CA); the docker
//!   CLI on the worker checks the certificates. The agent on the worker reads
//!   services and node labels from the manager over TLS, and a service
//!   labelled `ingress-xdp.nodes=node.role==manager` is blocked on the worker.
//!   Then the service's label is removed (a reading agent would unblock the
//!   port), and the same agent is started without TLS, with no client
//!   certificate, and with another CA's ca.pem: each fails with a clear
//!   message and leaves the map exactly as it was (the Docker rule and a
//!   manual rule stay). Last, the agent with the right certificates again:
//!   it unblocks the port, so the failed runs did change nothing only
//!   because they could not read the manager.
//!
//! Needs root, docker.io, busybox-static, socat and openssl (`cargo xtask
//! setup --test-packages`). Measured numbers are printed as `REPORT` lines
//! (run with `--nocapture` to see them).

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ingress_xdp::{
    pins::Pins,
    policy::LABEL_NODES,
    rules::{Origin, RuleEntry},
    spec::Protocol,
};
use support::{
    TestPins,
    agent::{AgentProc, docker_blocks, measure, rules, wait_rules},
    docker::{DOCKER, DaemonOptions, Dockerd, Lan, Proto, Publish, ServiceSpec, exec_in_out},
    pki::{TempDir, openssl},
};

const TCP: Protocol = Protocol::Tcp;
/// The Docker API over TLS (the docker CLI's default port with TLS).
const TLS_PORT: u16 = 2376;
/// Published by the service that only managers may serve.
const MGR_PORT: u16 = 8081;
/// A manual rule (`ingress-xdp block`), made before any agent runs.
const MANUAL_PORT: u16 = 9000;
/// How long the agent may take to reach a state the cluster already shows.
const CONVERGE: Duration = Duration::from_secs(20);
/// How long a failing agent is watched after its first failure: past its
/// retries at +250 ms and +750 ms (its backoff doubles from 250 ms).
const FAILING: Duration = Duration::from_millis(1000);

fn report(msg: impl AsRef<str>) {
    eprintln!("REPORT {}", msg.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------
// Certificates.

/// The certificate directories (each a DOCKER_CERT_PATH or the daemon's
/// files), all made from fresh RSA keys as in Docker's "Protect the Docker
/// daemon socket" guide.
struct Certs {
    /// The daemon's: ca.pem, cert.pem (serverAuth, IP SAN), key.pem.
    server: PathBuf,
    /// A client of the CA: ca.pem, cert.pem (clientAuth), key.pem.
    client: PathBuf,
    /// The CA alone: no client certificate to present.
    no_client_cert: PathBuf,
    /// Another CA's ca.pem, with the valid client cert.pem and key.pem.
    wrong_ca: PathBuf,
}

impl Certs {
    fn make(dir: &Path, server_ip: Ipv4Addr) -> Self {
        let mut cnf = fs::File::create(dir.join("openssl.cnf")).expect("openssl.cnf");
        write!(
            cnf,
            "[req]\n\
             distinguished_name = dn\n\
             prompt = no\n\
             [dn]\n\
             CN = unused\n\
             [ca]\n\
             basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [server]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:{server_ip}\n\
             [client]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n"
        )
        .expect("write openssl.cnf");
        drop(cnf);
        let ca = |name: &str, cn: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "ca",
                    "-subj",
                    cn,
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        };
        let leaf = |name: &str, cn: &str, ext: &str, serial: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-config",
                    "openssl.cnf",
                    "-subj",
                    cn,
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-extfile",
                    "openssl.cnf",
                    "-extensions",
                    ext,
                    "-out",
                    &format!("{name}-cert.pem"),
                ],
            );
        };
        // Two at a time (RSA key generation dominates).
        std::thread::scope(|s| {
            s.spawn(|| ca("ca", "/CN=ixt test CA"));
            ca("other-ca", "/CN=ixt another CA");
        });
        std::thread::scope(|s| {
            s.spawn(|| leaf("server", "/CN=ixt manager", "server", "2"));
            leaf("client", "/CN=ixt agent", "client", "3");
        });

        let certs = Self {
            server: dir.join("server"),
            client: dir.join("client"),
            no_client_cert: dir.join("no-client-cert"),
            wrong_ca: dir.join("wrong-ca"),
        };
        let place = |to: &Path, files: &[(&str, &str)]| {
            fs::create_dir_all(to).expect("mkdir cert dir");
            for (from, name) in files {
                fs::copy(dir.join(from), to.join(name)).expect("copy certificate");
            }
        };
        let (ca_pem, cert_pem, key_pem) = ("ca.pem", "cert.pem", "key.pem");
        place(
            &certs.server,
            &[
                ("ca.pem", ca_pem),
                ("server-cert.pem", cert_pem),
                ("server-key.pem", key_pem),
            ],
        );
        place(
            &certs.client,
            &[
                ("ca.pem", ca_pem),
                ("client-cert.pem", cert_pem),
                ("client-key.pem", key_pem),
            ],
        );
        place(&certs.no_client_cert, &[("ca.pem", ca_pem)]);
        place(
            &certs.wrong_ca,
            &[
                ("other-ca.pem", ca_pem),
                ("client-cert.pem", cert_pem),
                ("client-key.pem", key_pem),
            ],
        );
        certs
    }
}

// ---------------------------------------------------------------------------
// The map.

/// The rules with what identifies them (counters left out).
fn snapshot(pins: &Pins) -> Vec<(Protocol, u16, Origin)> {
    let mut out: Vec<_> = rules(pins)
        .into_iter()
        .map(|r| (r.proto, r.port, r.origin))
        .collect();
    out.sort_by_key(|r| (r.0, r.1));
    out
}

fn has_manual(rules: &[RuleEntry]) -> bool {
    rules
        .iter()
        .any(|r| r.port == MANUAL_PORT && r.origin.manual && r.origin.service.is_none())
}

/// An agent that must fail: its environment, what its log must say, and
/// what the manager's log says once per attempt (when it logs it).
struct Failing {
    what: &'static str,
    env: Vec<(String, String)>,
    /// Every one of these is in the agent's message.
    says: Vec<String>,
    /// At least one of these is (none: no such check).
    says_one_of: &'static [&'static str],
    manager_says: Option<&'static str>,
}

fn cli(pins: &Pins, args: &str) -> String {
    support::sh(&format!(
        "{} --pin-dir {} {args}",
        support::bin(),
        pins.dir().display()
    ))
}

// ---------------------------------------------------------------------------

#[test]
fn worker_reads_a_tls_manager() {
    let t_test = Instant::now();
    let lan = Lan::new("tll");
    let tmp = TempDir::new("tls");

    // The manager is the first host plugged into this new lan, so its
    // address is known before it starts (its certificate names it).
    let manager_ip = Lan::addr(2);
    let t0 = Instant::now();
    let certs = Certs::make(&tmp.path, manager_ip);
    let t_certs = t0.elapsed();
    report(format!(
        "openssl: CA, other CA, server and client certificates (RSA 2048) in {}",
        ms(t_certs)
    ));

    let t0 = Instant::now();
    let server = |f: &str| certs.server.join(f).display().to_string();
    let manager = Dockerd::start_on(
        &lan,
        "tlm",
        DaemonOptions {
            tcp_api: false,
            extra_args: vec![
                "--tlsverify".into(),
                format!("--tlscacert={}", server("ca.pem")),
                format!("--tlscert={}", server("cert.pem")),
                format!("--tlskey={}", server("key.pem")),
                format!("--host=tcp://{manager_ip}:{TLS_PORT}"),
            ],
        },
    );
    assert_eq!(
        manager.addr(),
        manager_ip,
        "the manager is not the lan's first host: its certificate names another address"
    );
    // The worker starts (and loads the image) while the manager inits.
    let worker = std::thread::scope(|s| {
        let m = s.spawn(|| {
            manager.load_test_image();
            manager.swarm_init();
        });
        let w = s.spawn(|| {
            let w = Dockerd::start_on(&lan, "tlw", DaemonOptions::default());
            w.load_test_image();
            w
        });
        match (m.join(), w.join()) {
            (Ok(()), Ok(w)) => w,
            (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
        }
    });
    worker.swarm_join(&manager);
    manager.wait_nodes_ready(2);
    report(format!(
        "TLS manager + worker swarm up in {}",
        ms(t0.elapsed())
    ));
    let (m, w) = (&manager, &worker);
    let manager_url = format!("tcp://{manager_ip}:{TLS_PORT}");

    // The certificates are right for the docker CLI itself (on the worker,
    // over the lan).
    let cli_check = exec_in_out(
        &w.netns_path(),
        &format!(
            "DOCKER_CONFIG={cfg} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={certs} \
             {DOCKER} --host {manager_url} info --format '{{{{.Swarm.ControlAvailable}}}}'",
            cfg = tmp.path.join("cli").display(),
            certs = certs.client.display(),
        ),
    );
    assert!(
        cli_check.status.success() && String::from_utf8_lossy(&cli_check.stdout).trim() == "true",
        "docker CLI with the client certificate: {cli_check:?}"
    );

    let pins = TestPins::new("tl");
    cli(&pins.pins, &format!("block {MANUAL_PORT}"));
    let manual = snapshot(&pins.pins);

    // 1. With the client certificate: reads the manager over TLS.
    let tls_env = |dir: &Path| {
        vec![
            ("DOCKER_TLS_VERIFY".to_string(), "1".to_string()),
            ("DOCKER_CERT_PATH".to_string(), dir.display().to_string()),
        ]
    };
    let good_env = tls_env(&certs.client);
    let start = |env: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        AgentProc::start_with_env(w, &pins.pins, &["--docker-host", &manager_url], &pairs)
    };
    let reading = format!("reading services and node labels from the manager at {manager_url}");

    let t0 = Instant::now();
    let mut agent = start(&good_env);
    agent.wait_log(&reading, CONVERGE);
    let t_first = t0.elapsed();
    assert_eq!(snapshot(&pins.pins), manual, "no services yet");
    report(format!(
        "agent with DOCKER_TLS_VERIFY=1: first read from the manager over TLS {} after start",
        ms(t_first)
    ));

    let mgr_only = ServiceSpec::new("tlsm")
        .label(LABEL_NODES, "node.role==manager")
        .publish(Publish::ingress(MGR_PORT, Proto::Tcp));
    let t_block = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.create_service(&mgr_only);
        },
        |r| docker_blocks(&[(TCP, MGR_PORT)])(r) && has_manual(r),
    );
    report(format!(
        "worker over TLS: service with {LABEL_NODES}=node.role==manager blocked on the worker {} after `docker service create` started",
        ms(t_block)
    ));
    let blocked = snapshot(&pins.pins);
    let rule = blocked
        .iter()
        .find(|(_, port, _)| *port == MGR_PORT)
        .expect("the service's rule");
    assert_eq!(rule.2.service.as_deref(), Some(mgr_only.name.as_str()));
    assert!(
        rule.2
            .why
            .as_deref()
            .is_some_and(|why| why.contains("node.role==manager")),
        "{blocked:?}"
    );
    let log = agent.log();
    assert!(!log.contains("Docker unavailable"), "agent log:\n{log}");
    agent.kill();

    // 2. The label goes: an agent that can read the manager would now
    //    unblock MGR_PORT. Agents that cannot must leave the map as it is.
    m.label_rm(&mgr_only.name, LABEL_NODES);
    let cases = [
        Failing {
            what: "DOCKER_TLS_VERIFY unset (plain HTTP to the TLS port)",
            env: Vec::new(),
            says: vec![
                "without TLS (DOCKER_TLS_VERIFY is not set)".into(),
                "Client sent an HTTP request to an HTTPS server".into(),
            ],
            says_one_of: &[],
            manager_says: None,
        },
        Failing {
            what: "DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH without cert.pem and key.pem",
            env: tls_env(&certs.no_client_cert),
            says: vec![format!(
                "no client certificate: {} and {} do not exist",
                certs.no_client_cert.join("cert.pem").display(),
                certs.no_client_cert.join("key.pem").display()
            )],
            // In TLS 1.3 the engine refuses the missing certificate after
            // our side of the handshake is done. Its alert either answers
            // the request, or kills the pooled connection before the
            // request is written, and hyper then says only that. Either
            // way the engine's own log names the reason (manager_says).
            says_one_of: &["received fatal alert", "connection was not ready"],
            manager_says: Some("tls: client didn't provide a certificate"),
        },
        Failing {
            what: "DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH with another CA's ca.pem",
            env: tls_env(&certs.wrong_ca),
            says: vec![
                format!("over TLS (CA {}", certs.wrong_ca.join("ca.pem").display()),
                "invalid peer certificate: UnknownIssuer".into(),
            ],
            says_one_of: &[],
            manager_says: Some("remote error: tls: unknown certificate authority"),
        },
    ];
    let handshake_errors = |needle: &str| {
        let from = format!("TLS handshake error from {}:", w.addr());
        fs::read_to_string(m.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&from) && l.contains(needle))
            .count()
    };
    for Failing {
        what,
        env,
        says,
        says_one_of,
        manager_says,
    } in &cases
    {
        let before = manager_says.map(handshake_errors);
        let t0 = Instant::now();
        let agent = start(env);
        agent.wait_log("Docker unavailable", CONVERGE);
        let t_fail = t0.elapsed();
        let watch = Instant::now();
        while watch.elapsed() < FAILING {
            assert_eq!(
                snapshot(&pins.pins),
                blocked,
                "{what}: the map changed\nagent log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = agent.log();
        let line = log
            .lines()
            .find(|l| l.contains("Docker unavailable"))
            .unwrap_or_default()
            .to_string();
        report(format!(
            "{what}: fails {} after start, map unchanged for {}: {line}",
            ms(t_fail),
            ms(FAILING)
        ));
        assert!(
            line.contains(&manager_url)
                && says.iter().all(|n| line.contains(n))
                && (says_one_of.is_empty() || says_one_of.iter().any(|n| line.contains(n))),
            "{what}: expected a message naming {manager_url}, {says:?} and one of {says_one_of:?}:\n{log}"
        );
        assert!(!log.contains(&reading), "{what}: read the manager?\n{log}");
        // The engine saw the attempts fail the same way, retried meanwhile.
        if let (Some(needle), Some(before)) = (manager_says, before) {
            let attempts = handshake_errors(needle) - before;
            assert!(
                attempts >= 2,
                "{what}: {attempts} handshake errors {needle:?} in the manager's log:\n{}",
                m.log_tail(20)
            );
            report(format!("{what}: manager logged {attempts}x {needle:?}"));
        }
    }

    // 3. The right certificates again: the port is unblocked, the manual
    //    rule stays.
    let t0 = Instant::now();
    let agent = start(&good_env);
    wait_rules(&pins.pins, &agent, CONVERGE, |r| {
        docker_blocks(&[])(r) && has_manual(r)
    });
    assert_eq!(snapshot(&pins.pins), manual);
    report(format!(
        "agent with the client certificate again: {MGR_PORT} unblocked {} after start",
        ms(t0.elapsed())
    ));
    drop(agent);

    let footprint = manager
        .footprint()
        .merge(worker.footprint())
        .merge(lan.footprint());
    let tmp_dir = tmp.path.clone();
    let pin_dir = pins.dir().to_path_buf();
    drop(pins);
    drop(worker);
    drop(manager);
    drop(lan);
    drop(tmp);
    footprint.assert_gone();
    assert!(!tmp_dir.exists() && !pin_dir.exists());
    report(format!("test total {}", ms(t_test.elapsed())));
}
