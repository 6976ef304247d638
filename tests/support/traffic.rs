//! Real traffic inside test namespaces: small TCP/UDP servers on threads that
//! entered a namespace, and clients that report whether they were served,
//! refused or met silence (a drop).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long a client waits before calling a silent port dropped. A dropped
/// SYN is retransmitted only after 1 s, so this never sees a late success.
pub const SILENCE: Duration = Duration::from_millis(400);
/// How long a client waits for a port that should answer (generous: two
/// cores shared by parallel tests).
pub const PATIENCE: Duration = Duration::from_secs(3);

fn enter_netns(path: &Path) {
    let file = std::fs::File::open(path).expect("open netns");
    // SAFETY: valid fd of a netns file.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}", path.display());
}

/// What a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Connected (TCP) or answered (UDP), with the server's reply.
    Served(String),
    /// TCP RST: something answered but nothing listens.
    Refused,
    /// No answer at all: the packets were dropped.
    Silent,
    Error(String),
}

impl Reach {
    pub fn served(&self) -> bool {
        matches!(self, Reach::Served(_))
    }
}

/// TCP and UDP servers that answer every client with `reply`; stopped and
/// joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        netns: PathBuf,
        body: impl FnOnce(Arc<AtomicBool>, mpsc::Sender<()>) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&netns);
            body(stop, ready_tx);
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
    }

    pub fn tcp(&mut self, netns: &Path, addr: SocketAddr, reply: &str) {
        let reply = reply.to_string();
        self.spawn(netns.to_path_buf(), move |stop, ready| {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    pub fn udp(&mut self, netns: &Path, addr: SocketAddr, reply: &str) {
        let reply = reply.to_string();
        self.spawn(netns.to_path_buf(), move |stop, ready| {
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(reply.as_bytes(), peer);
                }
            }
        });
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client_socket(
    kind: Type,
    proto: Protocol,
    src: Option<IpAddr>,
    dst: SocketAddr,
    wait: Duration,
) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(dst), kind, Some(proto))?;
    if let Some(src) = src {
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    sock.set_read_timeout(Some(wait))?;
    Ok(sock)
}

/// One TCP connection attempt from inside `netns`, waiting at most `wait`.
pub fn tcp(netns: &Path, src: Option<IpAddr>, dst: SocketAddr, wait: Duration) -> Reach {
    ingress_xdp::sys::in_netns(Some(netns), || {
        let sock = client_socket(Type::STREAM, Protocol::TCP, src, dst, wait)?;
        let reach = match sock.connect_timeout(&dst.into(), wait) {
            Ok(()) => {
                let mut stream: std::net::TcpStream = sock.into();
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                Reach::Served(reply)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::Silent,
            Err(e) => Reach::Error(e.to_string()),
        };
        Ok(reach)
    })
    .unwrap_or_else(|e| Reach::Error(format!("{e:#}")))
}

/// UDP request/response from inside `netns`, waiting at most `wait`. The
/// datagram is sent again every [`UDP_RESEND`] until then: one datagram can
/// be lost on a loaded machine (e.g. while a neighbour is resolved), and
/// UDP does not retry by itself.
pub fn udp(netns: &Path, src: Option<IpAddr>, dst: SocketAddr, wait: Duration) -> Reach {
    ingress_xdp::sys::in_netns(Some(netns), || {
        let sock = client_socket(Type::DGRAM, Protocol::UDP, src, dst, wait)?;
        let sock: UdpSocket = sock.into();
        let deadline = std::time::Instant::now() + wait;
        let mut buf = [0u8; 1500];
        loop {
            sock.send_to(b"ping", dst)?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            sock.set_read_timeout(Some(left.min(UDP_RESEND).max(Duration::from_millis(1))))?;
            return Ok(match sock.recv(&mut buf) {
                Ok(n) => Reach::Served(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if std::time::Instant::now() < deadline {
                        continue;
                    }
                    Reach::Silent
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
                Err(e) => Reach::Error(e.to_string()),
            });
        }
    })
    .unwrap_or_else(|e| Reach::Error(format!("{e:#}")))
}

/// How often [`udp`] sends its datagram again while waiting.
pub const UDP_RESEND: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Counting servers and the hammer: is there any moment at which a blocked
// port lets something through?

/// A TCP or UDP server in a namespace that counts every connection it
/// accepts (TCP) or datagram it receives (UDP), and answers nothing but a
/// byte. Stopped and joined on drop.
pub struct CountingServer {
    name: String,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Which transport a server or a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl CountingServer {
    /// Listens on `addr` (e.g. 0.0.0.0:PORT) inside the namespace at
    /// `netns` (a /var/run/netns file, an ingress_sbox, /proc/PID/ns/net).
    pub fn start(netns: &Path, l4: L4, addr: SocketAddr, name: &str) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let netns = netns.to_path_buf();
        let thread = {
            let (count, stop) = (count.clone(), stop.clone());
            std::thread::spawn(move || {
                enter_netns(&netns);
                match l4 {
                    L4::Tcp => {
                        let listener = match TcpListener::bind(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("bind tcp {addr}: {e}")));
                                return;
                            }
                        };
                        listener.set_nonblocking(true).unwrap();
                        ready_tx.send(Ok(())).unwrap();
                        // After the stop, once more until the backlog is empty.
                        let mut last_round = false;
                        loop {
                            match listener.accept() {
                                Ok((mut conn, _)) => {
                                    count.fetch_add(1, Ordering::Relaxed);
                                    let _ = conn.write_all(b"x");
                                }
                                Err(_) if last_round => break,
                                Err(_) => {
                                    last_round = stop.load(Ordering::Relaxed);
                                    if !last_round {
                                        std::thread::sleep(Duration::from_millis(2));
                                    }
                                }
                            }
                        }
                    }
                    L4::Udp => {
                        let sock = match UdpSocket::bind(addr) {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("bind udp {addr}: {e}")));
                                return;
                            }
                        };
                        sock.set_nonblocking(true).unwrap();
                        ready_tx.send(Ok(())).unwrap();
                        let mut buf = [0u8; 1500];
                        let mut last_round = false;
                        loop {
                            match sock.recv_from(&mut buf) {
                                Ok((_, peer)) => {
                                    count.fetch_add(1, Ordering::Relaxed);
                                    let _ = sock.send_to(b"x", peer);
                                }
                                Err(_) if last_round => break,
                                Err(_) => {
                                    last_round = stop.load(Ordering::Relaxed);
                                    if !last_round {
                                        std::thread::sleep(Duration::from_millis(2));
                                    }
                                }
                            }
                        }
                    }
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("counting server {name}: {e}"),
            Err(_) => panic!("counting server {name} did not start"),
        }
        Self {
            name: name.to_string(),
            count,
            stop,
            thread: Some(thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted or datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A handle the hammer reads this server's count through.
    pub fn sink(&self, blocked: bool) -> Sink {
        Sink {
            name: self.name.clone(),
            count: self.count.clone(),
            blocked,
        }
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A [`CountingServer`]'s count, as the hammer sees it: whatever a blocked
/// sink receives while the hammer runs is a success of the hammer (a leak).
#[derive(Clone, Debug)]
pub struct Sink {
    pub name: String,
    count: Arc<AtomicU64>,
    /// Behind a blocked port (every receipt is a leak), or a control.
    pub blocked: bool,
}

/// One stream of attempts of the hammer: TCP connects (each on a fresh
/// socket, given up after [`HammerLimits::connect_timeout`]) or UDP
/// datagrams (each from a fresh socket, so a fresh flow), from inside `from`
/// to `dst`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub name: String,
    pub from: PathBuf,
    pub dst: SocketAddr,
    pub l4: L4,
    /// The port is blocked (no attempt may get through), or a control that
    /// must get through (proof that the path delivers at all).
    pub blocked: bool,
}

impl Probe {
    pub fn blocked(name: &str, from: &Path, l4: L4, dst: SocketAddr) -> Self {
        Self {
            name: name.into(),
            from: from.to_path_buf(),
            dst,
            l4,
            blocked: true,
        }
    }

    pub fn control(name: &str, from: &Path, l4: L4, dst: SocketAddr) -> Self {
        Self {
            blocked: false,
            ..Self::blocked(name, from, l4, dst)
        }
    }
}

/// Bounds of a hammer run: it stops by itself after `max_time` or
/// `max_attempts` per probe, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct HammerLimits {
    pub connect_timeout: Duration,
    /// Pause between two attempts of one probe.
    pub interval: Duration,
    pub max_time: Duration,
    pub max_attempts: u64,
}

impl Default for HammerLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(80),
            interval: Duration::from_millis(10),
            max_time: Duration::from_secs(180),
            max_attempts: 50_000,
        }
    }
}

/// What one probe did.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub name: String,
    pub blocked: bool,
    pub attempts: u64,
    /// TCP connects that completed / UDP datagrams answered, seen by the client.
    pub client_ok: u64,
    /// Stopped by its own limits before [`Hammer::stop`].
    pub exhausted: bool,
}

/// What a [`Hammer`] saw between its start and its stop.
#[derive(Clone, Debug)]
pub struct HammerReport {
    pub probes: Vec<ProbeReport>,
    /// (sink, blocked, received while the hammer ran).
    pub sinks: Vec<(String, bool, u64)>,
    pub elapsed: Duration,
}

impl HammerReport {
    /// (attempts, successes) at blocked ports: attempts of the blocked
    /// probes; successes = what their sinks received plus what their
    /// clients saw answered.
    pub fn totals(&self) -> (u64, u64) {
        let attempts = self
            .probes
            .iter()
            .filter(|p| p.blocked)
            .map(|p| p.attempts)
            .sum();
        let received: u64 = self.sinks.iter().filter(|s| s.1).map(|s| s.2).sum();
        let answered: u64 = self
            .probes
            .iter()
            .filter(|p| p.blocked)
            .map(|p| p.client_ok)
            .sum();
        (attempts, received + answered)
    }

    /// Controls that never got through (their path is broken, so zero
    /// successes elsewhere would prove nothing).
    pub fn dead_controls(&self) -> Vec<String> {
        self.probes
            .iter()
            .filter(|p| !p.blocked && p.client_ok == 0)
            .map(|p| p.name.clone())
            .chain(
                self.sinks
                    .iter()
                    .filter(|s| !s.1 && s.2 == 0)
                    .map(|s| s.0.clone()),
            )
            .collect()
    }

    /// Probes that ran out of their limits before the hammer was stopped
    /// (so part of the window was not covered).
    pub fn exhausted(&self) -> Vec<String> {
        self.probes
            .iter()
            .filter(|p| p.exhausted)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Panics, naming `what`, unless every blocked probe made attempts,
    /// nothing got through a blocked port, every control got through, and
    /// the hammer covered the whole window.
    #[track_caller]
    pub fn assert_sealed(&self, what: &str) {
        let (attempts, successes) = self.totals();
        eprintln!(
            "[ixt-hammer] {what}: {attempts} attempts at blocked ports, {successes} got through, in {:.1} s",
            self.elapsed.as_secs_f64()
        );
        let idle: Vec<&str> = self
            .probes
            .iter()
            .filter(|p| p.blocked && p.attempts == 0)
            .map(|p| p.name.as_str())
            .collect();
        assert!(
            attempts > 0 && idle.is_empty(),
            "{what}: the hammer made no attempts at {idle:?}: {self:#?}"
        );
        assert_eq!(
            successes, 0,
            "{what}: a blocked port let traffic through ({successes} of {attempts} attempts): {self:#?}"
        );
        let dead = self.dead_controls();
        assert!(
            dead.is_empty(),
            "{what}: control targets {dead:?} were never served, so the hammer's paths are broken: {self:#?}"
        );
        let exhausted = self.exhausted();
        assert!(
            exhausted.is_empty(),
            "{what}: probes {exhausted:?} hit their limits before the hammer was stopped: {self:#?}"
        );
    }
}

/// Background clients that keep trying `probes` until stopped (or their
/// limits), while `sinks` count what reaches the servers.
pub struct Hammer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ProbeReport>>,
    sinks: Vec<(Sink, u64)>,
    started: std::time::Instant,
}

impl Hammer {
    pub fn start(probes: Vec<Probe>, sinks: Vec<Sink>, limits: HammerLimits) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sinks: Vec<(Sink, u64)> = sinks
            .into_iter()
            .map(|s| {
                let at_start = s.count.load(Ordering::Relaxed);
                (s, at_start)
            })
            .collect();
        let started = std::time::Instant::now();
        let threads = probes
            .into_iter()
            .map(|probe| {
                let stop = stop.clone();
                std::thread::spawn(move || run_probe(probe, limits, &stop, started))
            })
            .collect();
        Self {
            stop,
            threads,
            sinks,
            started,
        }
    }

    /// Stops the clients, waits for what is in flight to land, and reports.
    pub fn stop(mut self) -> HammerReport {
        self.stop.store(true, Ordering::Relaxed);
        let probes: Vec<ProbeReport> = self
            .threads
            .drain(..)
            .map(|t| t.join().expect("hammer probe thread panicked"))
            .collect();
        // A packet that got through just before the stop reaches its server
        // within a few milliseconds.
        std::thread::sleep(Duration::from_millis(200));
        let sinks = self
            .sinks
            .iter()
            .map(|(s, at_start)| {
                (
                    s.name.clone(),
                    s.blocked,
                    s.count.load(Ordering::Relaxed) - at_start,
                )
            })
            .collect();
        HammerReport {
            probes,
            sinks,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run_probe(
    probe: Probe,
    limits: HammerLimits,
    stop: &AtomicBool,
    started: std::time::Instant,
) -> ProbeReport {
    // A thread of its own: entering the namespace once is enough.
    enter_netns(&probe.from);
    let mut report = ProbeReport {
        name: probe.name.clone(),
        blocked: probe.blocked,
        attempts: 0,
        client_ok: 0,
        exhausted: false,
    };
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed() > limits.max_time || report.attempts >= limits.max_attempts {
            report.exhausted = true;
            break;
        }
        report.attempts += 1;
        match probe.l4 {
            L4::Tcp => {
                let Ok(sock) = Socket::new(Domain::for_address(probe.dst), Type::STREAM, None)
                else {
                    continue;
                };
                if sock
                    .connect_timeout(&probe.dst.into(), limits.connect_timeout)
                    .is_ok()
                {
                    report.client_ok += 1;
                }
            }
            L4::Udp => {
                let bind: SocketAddr = match probe.dst {
                    SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
                    SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
                };
                if let Ok(sock) = UdpSocket::bind(bind) {
                    let _ =
                        sock.set_read_timeout(Some(limits.interval.max(Duration::from_millis(5))));
                    if sock.send_to(b"hammer", probe.dst).is_ok() && sock.recv(&mut buf).is_ok() {
                        report.client_ok += 1;
                    }
                }
            }
        }
        std::thread::sleep(limits.interval);
    }
    report
}
