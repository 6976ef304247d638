//! Real Docker Engines for tests: private `dockerd` processes, each in its own
//! network namespace with its own data root, exec root, socket, pid file,
//! cgroups, daemon.json and hostname, joined into swarms; a test image; service
//! helpers; and the routing-mesh stand-ins this kernel needs (it has no IPVS,
//! so Docker's own mesh does not forward here).
//!
//! ```text
//!  client ns ──c0──┐                      ┌──nic0── daemon ns (dockerd, docker_gwbridge) ──eth1── ingress_sbox ──eth0── tasks
//!  10.231.0.N      └── lan ns: bridge br0 ┤         10.231.0.N
//!                      10.231.0.0/24      └──nic0── another daemon ns (a swarm worker) ...
//! ```
//!
//! Nothing here touches the machine's NIC or a Docker of the machine: no
//! default socket, no /var/lib/docker, no /var/run/docker. Every daemon lives
//! under `/tmp/ixt-<name>/` (data/, exec/, docker.sock, dockerd.pid,
//! daemon.json, key.json, dockerd.log). Each fixture writes an `owner` record
//! there (our pid, the namespaces and cgroups it made); `Drop` removes it all,
//! also after a panic, and the first fixture of a later test process sweeps
//! what a killed process left behind. `dockerd` gets SIGKILL if the test
//! process dies (PR_SET_PDEATHSIG from a spawner thread that lives as long as
//! the process).
//!
//! Typical use (root; tests may run in parallel, also several test
//! processes: every name, directory, namespace and cgroup is unique):
//!
//! ```ignore
//! let d = Dockerd::start("d");                      // ~0.3 s
//! d.swarm_init();                                   // ~1 s, until ingress_sbox is up
//! d.load_test_image();                              // ~0.4 s (0.2 s after the first)
//! let spec = ServiceSpec::new("web").publish(Publish::ingress(8080, Proto::Tcp));
//! d.create_service_running(&spec);                  // ~0.7 s
//! d.install_service_standins(&spec.name);           // no IPVS here: NAT stand-ins
//! let client = d.client("c");
//! assert_eq!(client.http(d.at(8080)), Reach::Served(reply_of(&spec.name, d.hostname())));
//! ```
//!
//! Docker behaviours to know (20.10 on this kernel):
//! * The daemon namespaces have NO default route: otherwise service create
//!   stalls ~20 s on a registry lookup (see shared/platform-notes.md).
//! * Stand-ins do not stay: the first time a dockerd removes an ingress load
//!   balancer backend in its life (task replaced or removed) it flushes the
//!   node's DOCKER-INGRESS chains; a replaced task has a new address; a
//!   restarted dockerd has a new ingress_sbox. Install them again after such
//!   changes (the install functions are idempotent).
//! * A change that replaces tasks (ports, task template) takes ~3-4 s: swarm
//!   waits 2 s for gossip before it stops the old task. Removing a service
//!   takes as long.
//! * `docker service update --publish-rm` removes every port with the same
//!   target port, protocol and mode, whatever the published port:
//!   [`Dockerd::publish_rm`] edits the spec through the API instead.
//! * nsfs inode numbers are reused at once: (dev, inode) of
//!   `<exec-root>/netns/ingress_sbox` does not tell a new sbox from the old.
//! * A manager with the plain TCP API starts ~1 s slower (dockerd sleeps
//!   after its "insecure" warning).
//! * dockerd creates /run/docker/plugins whatever its exec root; it is
//!   removed when empty and no dockerd at all runs any more.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, Once, OnceLock,
        atomic::{AtomicU8, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Netns, sh, sh_out, traffic::Reach, unique};

/// Debian's docker CLI (same version as the daemon; /usr/local/bin/docker may
/// be newer or absent).
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The dockerd the tests start: `IXT_DOCKERD` (xtask sets it to the newer
/// engine for a second run) or the system's.
pub fn dockerd_bin() -> String {
    std::env::var("IXT_DOCKERD")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DOCKERD.to_string())
}
/// The test image every daemon gets from [`Dockerd::load_test_image`].
pub const IMAGE: &str = "ixt-httpd:latest";
/// The node's NIC inside each daemon namespace (its veth to the lan).
pub const NIC: &str = "nic0";
/// The bridge of Docker's ingress_sbox eth1, in each daemon namespace.
pub const GWBRIDGE: &str = "docker_gwbridge";
/// Swarm manager TCP API port (`-H tcp://ADDR:2375 --tls=false`).
pub const API_PORT: u16 = 2375;
/// How long a daemon may take to answer /_ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service's tasks, a node or a namespace may take to appear.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn log(msg: impl AsRef<str>) {
    eprintln!("[ixt-docker] {}", msg.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `cmd` (a shell command line) in the network namespace at `netns`
/// (network only, like [`Netns::exec`]); panics with its output on failure.
#[track_caller]
pub fn exec_in(netns: &Path, cmd: &str) -> String {
    sh(&wrap_in(netns, cmd))
}

/// Like [`exec_in`], whatever the status.
pub fn exec_in_out(netns: &Path, cmd: &str) -> Output {
    sh_out(&wrap_in(netns, cmd))
}

fn wrap_in(netns: &Path, cmd: &str) -> String {
    format!(
        "nsenter --net={} sh -c '{}'",
        netns.display(),
        cmd.replace('\'', r"'\''")
    )
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Ownership records, teardown and the sweep of crashed runs.

/// Field 22 of /proc/PID/stat: when the process started (tells a live owner
/// from a recycled pid).
fn proc_starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// A directory `/tmp/ixt-<name>/` with an `owner` file: our pid and start
/// time, then one `netns NAME` or `cgroup NAME` line per thing made for it.
struct Owned {
    dir: PathBuf,
}

impl Owned {
    fn create(name: &str) -> Self {
        sweep_stale_once();
        let dir = PathBuf::from(format!("/tmp/ixt-{name}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let pid = std::process::id();
        let start = proc_starttime(pid).unwrap_or(0);
        fs::write(dir.join("owner"), format!("owner {pid} {start}\n")).expect("write owner");
        Self { dir }
    }

    fn record(&self, kind: &str, name: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("owner"))
            .expect("open owner");
        writeln!(f, "{kind} {name}").expect("append owner");
    }

    fn entries(dir: &Path, kind: &str) -> Vec<String> {
        fs::read_to_string(dir.join("owner"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))
            .map(str::to_string)
            .collect()
    }
}

/// Every cgroup directory named `name` under /sys/fs/cgroup (any hierarchy),
/// deepest first.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let path = e.path();
            if e.file_name() == name {
                out.push(path);
            } else if depth > 0 {
                walk(&path, name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(CGROUP_ROOT), name, 6, &mut out);
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// All subdirectories of `dir` (included), deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out.reverse();
    out
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    subtree(dir)
        .iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Kills every process in the cgroups named `names` (cgroup.kill where the
/// kernel has it, SIGKILL per pid otherwise), waits until they are empty and
/// removes them. Returns what could not be removed.
fn kill_and_remove_cgroups(names: &[String]) -> Vec<String> {
    let dirs: Vec<PathBuf> = names.iter().flat_map(|n| cgroup_dirs(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut alive = false;
        for dir in &dirs {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(&kill, "1");
            }
            for pid in cgroup_pids(dir) {
                alive = true;
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !alive || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut left = Vec::new();
    for dir in &dirs {
        for d in subtree(dir) {
            let mut ok = false;
            for _ in 0..50 {
                if fs::remove_dir(&d).is_ok() || !d.exists() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !ok {
                left.push(format!("cgroup {}", d.display()));
            }
        }
    }
    left
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces as \040; our paths have none.
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn umount_all_under(dir: &Path) {
    // Stacked mounts need several rounds.
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C string; MNT_DETACH is a lazy unmount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn delete_netns(name: &str) {
    if netns_exists(name) {
        let _ = sh_out(&format!("ip netns pids {name} | xargs -r kill -9"));
        let _ = sh_out(&format!("ip netns del {name}"));
    }
}

/// Pids whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(needle))
            })
        })
        .collect()
}

fn any_dockerd_running() -> bool {
    fs::read_dir("/proc").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
                && fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd")
        })
    })
}

/// dockerd creates /run/docker/plugins whatever its exec root; remove it (and
/// /run/docker) when empty and no dockerd at all runs.
fn tidy_run_docker() {
    if !any_dockerd_running() {
        let _ = fs::remove_dir("/run/docker/plugins");
        let _ = fs::remove_dir("/run/docker");
    }
}

/// Tears down everything recorded in `dir`'s owner file, then the directory.
fn cleanup_owned(dir: &Path) {
    let cgroups = Owned::entries(dir, "cgroup");
    for left in kill_and_remove_cgroups(&cgroups) {
        log(format!("could not remove {left}"));
    }
    umount_all_under(dir);
    for ns in Owned::entries(dir, "netns") {
        delete_netns(&ns);
    }
    let _ = fs::remove_dir_all(dir);
    tidy_run_docker();
}

/// Cleans up after fixtures of test processes that died without running
/// their Drop (SIGKILL, timeout); once per process.
fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            if !e.file_name().to_string_lossy().starts_with("ixt-") {
                continue;
            }
            let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
                continue;
            };
            let mut it = owner
                .lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(1);
            let pid: Option<u32> = it.next().and_then(|p| p.parse().ok());
            let start: Option<u64> = it.next().and_then(|s| s.parse().ok());
            let alive =
                pid.is_some_and(|p| proc_starttime(p).is_some() && proc_starttime(p) == start);
            if !alive {
                log(format!(
                    "sweeping {} (its test process is gone)",
                    dir.display()
                ));
                cleanup_owned(&dir);
            }
        }
    });
}

/// What a fixture made, to check after Drop that nothing is left.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub dirs: Vec<PathBuf>,
    pub netns: Vec<String>,
    pub cgroups: Vec<String>,
}

impl Footprint {
    pub fn merge(mut self, other: Footprint) -> Self {
        self.dirs.extend(other.dirs);
        self.netns.extend(other.netns);
        self.cgroups.extend(other.cgroups);
        self
    }

    /// Everything still there: directories, mounts under them, processes
    /// whose command line names them, namespaces, cgroups.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for d in &self.dirs {
            if d.exists() {
                left.push(format!("directory {}", d.display()));
            }
            for m in mounts_under(d) {
                left.push(format!("mount {}", m.display()));
            }
            for pid in pids_mentioning(&format!("{}/", d.display())) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                left.push(format!(
                    "process {pid}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
        for n in &self.netns {
            if netns_exists(n) {
                left.push(format!("netns {n}"));
            }
        }
        for c in &self.cgroups {
            for d in cgroup_dirs(c) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        left
    }

    #[track_caller]
    pub fn assert_gone(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

// ---------------------------------------------------------------------------
// Spawning with a parent-death signal.

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` with PR_SET_PDEATHSIG=SIGKILL from a thread that lives as
/// long as the process (the signal follows the thread that forked, so it
/// must not be a test's thread).
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ixt-docker-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner alive");
    reply_rx.recv().expect("spawner replied")
}

// ---------------------------------------------------------------------------
// HTTP over the daemon's unix socket.

/// Percent-encoding of a query-string value (RFC 3986 unreserved kept).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `?filters=...` for the Engine API from a JSON value.
pub fn filters(v: Value) -> String {
    format!("filters={}", percent_encode(&v.to_string()))
}

fn http_unix(sock: &Path, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad HTTP reply: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// One HTTP GET of `/` from inside `netns` (nothing else on this thread
/// changes namespace): `Served(body)` on a 200, like [`super::traffic::tcp`]
/// otherwise (`Refused` on RST, `Silent` when nothing answers within `wait`).
pub fn http_get(netns: &Path, dst: SocketAddr, wait: Duration) -> Reach {
    http_get_path(netns, dst, "/", wait)
}

/// [`http_get`] of another path.
pub fn http_get_path(netns: &Path, dst: SocketAddr, path: &str, wait: Duration) -> Reach {
    ingress_xdp::sys::in_netns(Some(netns), || {
        let mut stream = match TcpStream::connect_timeout(&dst, wait) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Reach::Refused),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Reach::Silent),
            Err(e) => return Ok(Reach::Error(e.to_string())),
        };
        stream.set_read_timeout(Some(wait))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {dst}\r\n\r\n").as_bytes())?;
        let mut raw = Vec::new();
        if let Err(e) = stream.read_to_end(&mut raw) {
            return Ok(Reach::Error(format!("reading the reply: {e}")));
        }
        Ok(match parse_http(&raw) {
            Ok((200, body)) => Reach::Served(body),
            Ok((status, body)) => Reach::Error(format!("HTTP {status}: {body}")),
            Err(e) => Reach::Error(e.to_string()),
        })
    })
    .unwrap_or_else(|e| Reach::Error(format!("{e:#}")))
}

// ---------------------------------------------------------------------------
// The lan and clients.

/// A namespace with a bridge (`br0`, 10.231.0.0/24, no address of its own)
/// that daemons and clients plug into with veth pairs, like hosts on a
/// switch. Shared through `Arc`; removed when the last holder drops.
pub struct Lan {
    pub netns: Netns,
    owned: Owned,
    next_host: AtomicU8,
    next_port: AtomicU8,
}

impl Lan {
    pub fn new(tag: &str) -> Arc<Self> {
        super::require_root();
        let name = unique(tag);
        let owned = Owned::create(&name);
        owned.record("netns", &name);
        // Built first, so that Drop cleans up if a step below fails.
        let lan = Self {
            netns: Netns { name: name.clone() },
            owned,
            next_host: AtomicU8::new(2),
            next_port: AtomicU8::new(0),
        };
        sh(&format!("ip netns add {name}"));
        lan.netns
            .exec("ip link set lo up && ip link add br0 type bridge && ip link set br0 up");
        Arc::new(lan)
    }

    /// Address `10.231.0.<host>`.
    pub fn addr(host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, 0, host)
    }

    /// Plugs `netns` in: a veth named `ifname` there, its peer on `br0`, a new
    /// lan address on `ifname`, both ends up. Returns the address.
    pub fn plug(&self, netns: &str, ifname: &str) -> Ipv4Addr {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 250, "lan {} is full", self.netns.name);
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        let lan = &self.netns.name;
        let addr = Self::addr(host);
        sh(&format!(
            "ip link add {ifname} netns {netns} type veth peer name {port} netns {lan} && \
             ip -n {lan} link set {port} master br0 && ip -n {lan} link set {port} up && \
             ip -n {netns} addr add {addr}/24 dev {ifname} && ip -n {netns} link set {ifname} up"
        ));
        addr
    }

    /// A client host on the lan (its own namespace, interface `c0`).
    pub fn client(&self, tag: &str) -> Client {
        let name = unique(tag);
        self.owned.record("netns", &name);
        let mut client = Client {
            netns: Netns { name: name.clone() },
            addr: Ipv4Addr::UNSPECIFIED,
        };
        sh(&format!("ip netns add {name}"));
        client.netns.exec("ip link set lo up");
        client.addr = self.plug(&name, "c0");
        client
    }

    pub fn footprint(&self) -> Footprint {
        Footprint {
            dirs: vec![self.owned.dir.clone()],
            netns: Owned::entries(&self.owned.dir, "netns"),
            cgroups: Vec::new(),
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        cleanup_owned(&self.owned.dir);
    }
}

/// A "remote" host on a [`Lan`]: its own namespace with one address.
pub struct Client {
    pub netns: Netns,
    pub addr: Ipv4Addr,
}

impl Client {
    pub fn path(&self) -> PathBuf {
        self.netns.path()
    }

    /// HTTP GET / to `dst`, waiting [`super::traffic::PATIENCE`] at most.
    pub fn http(&self, dst: SocketAddr) -> Reach {
        http_get(&self.path(), dst, super::traffic::PATIENCE)
    }

    /// One UDP datagram to `dst` and its answer.
    pub fn udp(&self, dst: SocketAddr) -> Reach {
        super::traffic::udp(&self.path(), None, dst, super::traffic::PATIENCE)
    }
}

// ---------------------------------------------------------------------------
// Services.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// The routing mesh (what ingress-xdp guards).
    Ingress,
    /// Bound on the node running the task only.
    Host,
}

/// One `--publish` of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
    pub mode: PublishMode,
}

impl Publish {
    /// Routing-mesh port `published` to the test image's port 80.
    pub fn ingress(published: u16, proto: Proto) -> Self {
        Self {
            published,
            target: 80,
            proto,
            mode: PublishMode::Ingress,
        }
    }

    /// Host-mode port `published` to the test image's port 80.
    pub fn host(published: u16, proto: Proto) -> Self {
        Self {
            mode: PublishMode::Host,
            ..Self::ingress(published, proto)
        }
    }

    pub fn target(self, target: u16) -> Self {
        Self { target, ..self }
    }

    /// The long `--publish` syntax.
    pub fn arg(&self) -> String {
        format!(
            "published={},target={},protocol={},mode={}",
            self.published,
            self.target,
            self.proto.as_str(),
            match self.mode {
                PublishMode::Ingress => "ingress",
                PublishMode::Host => "host",
            }
        )
    }
}

/// A service to create with [`Dockerd::create_service`]. The test image
/// answers HTTP on TCP 80 and any datagram on UDP 80 with
/// `<service name>@<node hostname>` (see [`reply_of`]).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub publish: Vec<Publish>,
    pub labels: Vec<(String, String)>,
    pub global: bool,
    pub replicas: u32,
    pub constraints: Vec<String>,
    /// More `docker service create` arguments, before the image.
    pub extra: Vec<String>,
    pub image: String,
}

impl ServiceSpec {
    /// A replicated service (1 replica) of [`IMAGE`] with a unique name.
    pub fn new(tag: &str) -> Self {
        Self {
            name: unique(tag),
            publish: Vec::new(),
            labels: Vec::new(),
            global: false,
            replicas: 1,
            constraints: Vec::new(),
            extra: Vec::new(),
            image: IMAGE.into(),
        }
    }

    pub fn publish(mut self, p: Publish) -> Self {
        self.publish.push(p);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn global(mut self) -> Self {
        self.global = true;
        self
    }

    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    pub fn constraint(mut self, c: &str) -> Self {
        self.constraints.push(c.into());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    /// The `docker service create` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            // After a daemon restart the failed task is replaced at once
            // (default: 5 s later).
            "--restart-delay",
            "0s",
            "--env",
            "IXT_REPLY={{.Service.Name}}@{{.Node.Hostname}}",
            "--name",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.name.clone());
        if self.global {
            a.extend(["--mode".into(), "global".into()]);
        } else {
            a.extend(["--replicas".into(), self.replicas.to_string()]);
        }
        for p in &self.publish {
            a.extend(["--publish".into(), p.arg()]);
        }
        for (k, v) in &self.labels {
            a.extend(["--label".into(), format!("{k}={v}")]);
        }
        for c in &self.constraints {
            a.extend(["--constraint".into(), c.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a.push(self.image.clone());
        a
    }
}

/// What the test image answers for a task of `service` on node `hostname`.
pub fn reply_of(service: &str, hostname: &str) -> String {
    format!("{service}@{hostname}")
}

/// A running task, as the manager sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub node_id: String,
    pub container_id: String,
}

/// The addresses of a node's ingress_sbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sbox {
    /// `<exec-root>/netns/ingress_sbox`.
    pub path: PathBuf,
    /// Its eth0 address, on the ingress overlay (e.g. 10.0.0.2).
    pub ingress: Ipv4Addr,
    /// Its eth1 address, on docker_gwbridge (e.g. 172.17.0.2): where the
    /// node's DOCKER-INGRESS DNAT sends published ports.
    pub gateway: Ipv4Addr,
}

// ---------------------------------------------------------------------------
// The daemon.

/// Start options of a [`Dockerd`].
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Also serve the API on `tcp://<node address>:2375` without TLS (for a
    /// manager that workers or agents reach over the lan).
    pub tcp_api: bool,
    /// More dockerd arguments.
    pub extra_args: Vec<String>,
}

/// One private dockerd in its own network namespace (interface [`NIC`] on a
/// [`Lan`], no default route), with its own hostname (= [`Dockerd::name`]),
/// data root, exec root, socket, pid file, cgroups and daemon.json under
/// `/tmp/ixt-<name>/`. Everything goes on drop, also after a panic.
pub struct Dockerd {
    name: String,
    addr: Ipv4Addr,
    opts: DaemonOptions,
    child: Option<Child>,
    owned: Owned,
    netns: Netns,
    lan: Arc<Lan>,
}

impl Dockerd {
    /// A daemon on a lan of its own.
    pub fn start(tag: &str) -> Self {
        let lan = Lan::new(&format!("{tag}l"));
        Self::start_on(&lan, tag, DaemonOptions::default())
    }

    /// A daemon plugged into `lan`.
    pub fn start_on(lan: &Arc<Lan>, tag: &str, opts: DaemonOptions) -> Self {
        super::require_root();
        let t0 = Instant::now();
        let name = unique(tag);
        let owned = Owned::create(&name);
        owned.record("netns", &name);
        owned.record("cgroup", &name);
        owned.record("cgroup", &format!("{name}-daemon"));
        // Built first, so that Drop cleans up whatever step below fails.
        let mut d = Self {
            name: name.clone(),
            addr: Ipv4Addr::UNSPECIFIED,
            opts,
            child: None,
            owned,
            netns: Netns { name: name.clone() },
            lan: lan.clone(),
        };
        sh(&format!("ip netns add {name}"));
        d.netns.exec("ip link set lo up");
        d.addr = lan.plug(&name, NIC);
        let root = d.root();
        fs::write(
            root.join("daemon.json"),
            serde_json::json!({
                // Without it every daemon shares /etc/docker/key.json, so one
                // engine ID (only accepted as a config key).
                "deprecated-key-path": root.join("key.json"),
                // No docker0: nothing here uses the default bridge.
                "bridge": "none",
            })
            .to_string(),
        )
        .expect("write daemon.json");
        fs::create_dir_all(root.join("cli")).expect("mkdir cli");
        fs::create_dir_all(d.daemon_cgroup()).expect("create the daemon's cgroup");
        d.start_again();
        log(format!("{}: dockerd up in {}", d.name, ms(t0.elapsed())));
        d
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's hostname (the swarm node name).
    pub fn hostname(&self) -> &str {
        &self.name
    }

    /// The node's address on the lan (on [`NIC`]).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `addr():port`.
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.addr), port)
    }

    pub fn lan(&self) -> &Arc<Lan> {
        &self.lan
    }

    /// The daemon's network namespace (the "host" of this node).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    /// `/tmp/ixt-<name>`.
    pub fn root(&self) -> PathBuf {
        self.owned.dir.clone()
    }

    pub fn data_root(&self) -> PathBuf {
        self.root().join("data")
    }

    pub fn exec_root(&self) -> PathBuf {
        self.root().join("exec")
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.root().join("docker.sock")
    }

    /// `unix://<socket>`, for `docker -H` or DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The plain TCP API, when started with [`DaemonOptions::tcp_api`]
    /// (reachable from the lan, not from the test's own namespace).
    pub fn tcp_api(&self) -> Option<SocketAddr> {
        self.opts.tcp_api.then(|| self.at(API_PORT))
    }

    pub fn log_path(&self) -> PathBuf {
        self.root().join("dockerd.log")
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `<exec-root>/netns/ingress_sbox` (exists once the node is in a swarm;
    /// replaced by a new namespace when dockerd restarts).
    pub fn sbox_netns(&self) -> PathBuf {
        self.exec_root().join("netns/ingress_sbox")
    }

    fn daemon_cgroup(&self) -> PathBuf {
        let unified = Path::new(CGROUP_ROOT);
        let base = if unified.join("cgroup.controllers").exists() {
            unified.to_path_buf()
        } else {
            unified.join("unified")
        };
        base.join(format!("{}-daemon", self.name))
    }

    /// Footprint of this daemon (not of its lan).
    pub fn footprint(&self) -> Footprint {
        Footprint {
            dirs: vec![self.root()],
            netns: vec![self.name.clone()],
            cgroups: vec![self.name.clone(), format!("{}-daemon", self.name)],
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Starts dockerd (again, after [`Dockerd::stop`] or [`Dockerd::kill`])
    /// with the same directories, namespace and hostname, and waits until it
    /// answers.
    pub fn start_again(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name);
        self.forget_dead_containerd();
        let root = self.root();
        let mut args: Vec<String> = vec![
            format!("--config-file={}", root.join("daemon.json").display()),
            format!("--data-root={}", self.data_root().display()),
            format!("--exec-root={}", self.exec_root().display()),
            format!("--pidfile={}", root.join("dockerd.pid").display()),
            format!("--host={}", self.host()),
            // Relative: containers go under dockerd's own cgroup + this name.
            format!("--cgroup-parent={}", self.name),
        ];
        if self.opts.tcp_api {
            args.push(format!("--host=tcp://{}:{API_PORT}", self.addr));
            // Without it startup waits ~15 s on purpose (plain TCP warning).
            args.push("--tls=false".into());
        }
        args.extend(self.opts.extra_args.iter().cloned());
        // The shell joins the tracking cgroup (so containerd, the shims and
        // the containers are all found at teardown), names the node in its
        // own UTS namespace, then becomes dockerd.
        let script = format!(
            "echo $$ > {procs} && echo {host} > /proc/sys/kernel/hostname && exec {dockerd} {args}",
            dockerd = dockerd_bin(),
            procs = self.daemon_cgroup().join("cgroup.procs").display(),
            host = self.name,
            args = args
                .iter()
                .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open dockerd.log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .args(["unshare", "--uts", "sh", "-c", &script])
            .env_clear()
            // Swarm tasks use the local image instead of asking a registry.
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            // Its own directory first, for its own docker-proxy.
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                    Path::new(&dockerd_bin())
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = spawn_tied_to_process(cmd).expect("spawn dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, body)) = http_unix(&self.socket(), "GET", "/_ping", "")
                && body == "OK"
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "dockerd {} exited ({status}) before answering; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd {} did not answer /_ping on {} within {START_TIMEOUT:?}; log:\n{}",
                self.name,
                self.socket().display(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// dockerd's containerd dies with it (parent-death signal) but is reaped
    /// a little later; a dockerd started in between sees the pid in
    /// `<exec-root>/containerd/containerd.pid` still "alive", does not start
    /// its own, fails to connect and exits. Wait for the old one to be gone
    /// (a zombie counts as there), then drop its stale pid file.
    fn forget_dead_containerd(&self) {
        let exec_root = self.exec_root();
        let pidfile = exec_root.join("containerd/containerd.pid");
        let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // No /proc/PID/stat: gone.
        while let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                == Some("Z");
            let ours = fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*exec_root.to_string_lossy()));
            if ours && !zombie {
                return; // a live containerd of this daemon: dockerd reuses it
            }
            if !zombie || Instant::now() > deadline {
                break; // another process has the pid now, or a zombie nobody reaps
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_file(&pidfile);
    }

    fn signal_and_wait(&mut self, sig: i32, grace: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if child.try_wait().ok().flatten().is_some() {
            self.child = None;
            return true;
        }
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops dockerd like `systemctl stop docker` (SIGTERM: it stops its
    /// containers and containerd), SIGKILL after 30 s. The swarm state stays.
    pub fn stop(&mut self) {
        let t0 = Instant::now();
        if !self.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)) {
            log(format!(
                "{}: no exit 30 s after SIGTERM, killing",
                self.name
            ));
            self.kill();
        }
        log(format!(
            "{}: dockerd stopped in {}",
            self.name,
            ms(t0.elapsed())
        ));
    }

    /// Kills dockerd alone with SIGKILL (a crash): its containerd follows,
    /// task containers and their shims live on until the next start.
    pub fn kill(&mut self) {
        assert!(
            self.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)),
            "dockerd {} survived SIGKILL",
            self.name
        );
    }

    /// [`Dockerd::stop`] then [`Dockerd::start_again`].
    pub fn restart(&mut self) {
        self.stop();
        let t0 = Instant::now();
        self.start_again();
        log(format!(
            "{}: dockerd restarted in {}",
            self.name,
            ms(t0.elapsed())
        ));
    }

    /// The docker CLI for this daemon (its own config directory, no
    /// inherited DOCKER_* variables, killed after 2 minutes).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "120", DOCKER])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.root())
            .env("DOCKER_CONFIG", self.root().join("cli"))
            .env("DOCKER_BUILDKIT", "0")
            .arg("--host")
            .arg(self.host());
        cmd
    }

    /// Runs `docker -H unix://<socket> ARGS` and returns its output whatever
    /// the status.
    pub fn docker_out<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cli().args(args).output().expect("spawn docker")
    }

    /// Runs `docker -H unix://<socket> ARGS`, panicking with its output (and
    /// dockerd's log) on failure; returns stdout.
    #[track_caller]
    pub fn docker<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.docker_out(&args);
        assert!(
            out.status.success(),
            "docker {} on {} failed:\n{}\ndockerd log:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            self.name,
            output_text(&out),
            self.log_tail(15)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Engine API request over the unix socket: (status, body).
    pub fn api_raw(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http_unix(&self.socket(), method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.name))
    }

    /// `GET path` as JSON, panicking unless the status is 2xx.
    #[track_caller]
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = self.api_raw("GET", path, "");
        assert!(
            (200..300).contains(&status),
            "GET {path} on {}: HTTP {status}: {body}",
            self.name
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// `GET /info`.
    pub fn info(&self) -> Value {
        self.api("/info")
    }

    /// The swarm node ID ("" when not in a swarm).
    pub fn node_id(&self) -> String {
        self.info()["Swarm"]["NodeID"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub fn swarm_state(&self) -> String {
        self.info()["Swarm"]["LocalNodeState"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `docker swarm init --advertise-addr <lan address>`; waits for the
    /// ingress_sbox. Returns the node ID.
    pub fn swarm_init(&self) -> String {
        let t0 = Instant::now();
        self.docker(["swarm", "init", "--advertise-addr", &self.addr.to_string()]);
        self.wait_sbox();
        log(format!("{}: swarm init in {}", self.name, ms(t0.elapsed())));
        self.node_id()
    }

    /// Joins `manager`'s swarm as a worker; waits for this node's ingress_sbox.
    pub fn swarm_join(&self, manager: &Dockerd) {
        self.swarm_join_as(manager, "worker");
    }

    /// Joins `manager`'s swarm as a `role` ("worker" or "manager").
    pub fn swarm_join_as(&self, manager: &Dockerd, role: &str) {
        let t0 = Instant::now();
        let token = manager.docker(["swarm", "join-token", "-q", role]);
        self.docker([
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            &self.addr.to_string(),
            &format!("{}:2377", manager.addr),
        ]);
        self.wait_sbox();
        log(format!("{}: joined in {}", self.name, ms(t0.elapsed())));
    }

    /// `docker swarm leave --force`.
    pub fn swarm_leave(&self) {
        self.docker(["swarm", "leave", "--force"]);
    }

    /// Gives this daemon [`IMAGE`]: FROM scratch, busybox from
    /// busybox-static, socat with its libraries, `/start` (httpd on TCP 80
    /// serving `$IXT_REPLY`, socat answering `$IXT_REPLY` on UDP 80),
    /// STOPSIGNAL SIGKILL (busybox as PID 1 ignores SIGTERM). The first
    /// daemon of the process builds it (~0.4 s) and keeps `docker save` in
    /// memory; later ones `docker load` that (~0.2 s).
    pub fn load_test_image(&self) {
        static SAVED: OnceLock<Vec<u8>> = OnceLock::new();
        let t0 = Instant::now();
        if let Some(tar) = SAVED.get() {
            let mut child = self
                .cli()
                .args(["load", "--quiet"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn docker load");
            let mut stdin = child.stdin.take().expect("stdin");
            // Written from another thread: docker may answer before reading it all.
            let out = std::thread::scope(|s| {
                s.spawn(move || {
                    let _ = stdin.write_all(tar);
                });
                child.wait_with_output().expect("docker load")
            });
            assert!(
                out.status.success(),
                "docker load of {IMAGE} into {} failed:\n{}",
                self.name,
                output_text(&out)
            );
            log(format!(
                "{}: test image loaded in {}",
                self.name,
                ms(t0.elapsed())
            ));
            return;
        }
        let ctx = self.root().join("image");
        write_image_context(&ctx);
        self.docker(["build", "--quiet", "--tag", IMAGE, &ctx.to_string_lossy()]);
        let _ = fs::remove_dir_all(&ctx);
        log(format!(
            "{}: test image built in {}",
            self.name,
            ms(t0.elapsed())
        ));
        let out = self.docker_out(["save", IMAGE]);
        if out.status.success() {
            let _ = SAVED.set(out.stdout);
        }
    }

    /// Waits until `n` nodes are Ready (manager only).
    pub fn wait_nodes_ready(&self, n: usize) {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let nodes = self.api("/nodes");
            let ready = nodes
                .as_array()
                .map(|a| a.iter().filter(|n| n["Status"]["State"] == "ready").count())
                .unwrap_or(0);
            if ready >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {ready}/{n} nodes ready after {WAIT_TIMEOUT:?}: {nodes:#}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until this node's ingress_sbox is a namespace with addresses on
    /// eth0 (ingress) and eth1 (docker_gwbridge).
    pub fn wait_sbox(&self) -> Sbox {
        let path = self.sbox_netns();
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let out = exec_in_out(
                &path,
                "ip -4 -o addr show dev eth0; ip -4 -o addr show dev eth1",
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let addr_of = |dev: &str| {
                text.lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .find(|w| w.get(1) == Some(&dev) && w.get(2) == Some(&"inet"))
                    .and_then(|w| w.get(3)?.split('/').next()?.parse().ok())
            };
            if let (Some(ingress), Some(gateway)) = (addr_of("eth0"), addr_of("eth1")) {
                return Sbox {
                    path,
                    ingress,
                    gateway,
                };
            }
            assert!(
                Instant::now() < deadline,
                "{}: no ingress_sbox with eth0 and eth1 addresses at {} after {WAIT_TIMEOUT:?}:\n{}\ndockerd log:\n{}",
                self.name,
                path.display(),
                output_text(&out),
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates `spec` (detached; see [`Dockerd::wait_running`]). Returns its
    /// name.
    pub fn create_service(&self, spec: &ServiceSpec) -> String {
        self.docker(spec.args());
        spec.name.clone()
    }

    /// Creates `spec` and waits until its tasks run.
    pub fn create_service_running(&self, spec: &ServiceSpec) -> Vec<Task> {
        let t0 = Instant::now();
        self.create_service(spec);
        let tasks = self.wait_running(&spec.name);
        log(format!(
            "{}: service {} running in {}",
            self.name,
            spec.name,
            ms(t0.elapsed())
        ));
        tasks
    }

    /// `GET /services/<name>`.
    pub fn service(&self, name: &str) -> Value {
        self.api(&format!("/services/{name}"))
    }

    /// The service's allocated ports (`Endpoint.Ports`).
    pub fn service_ports(&self, name: &str) -> Vec<Publish> {
        let svc = self.service(name);
        svc["Endpoint"]["Ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(Publish {
                    published: p["PublishedPort"].as_u64()? as u16,
                    target: p["TargetPort"].as_u64()? as u16,
                    proto: Proto::parse(p["Protocol"].as_str()?)?,
                    mode: if p["PublishMode"] == "host" {
                        PublishMode::Host
                    } else {
                        PublishMode::Ingress
                    },
                })
            })
            .collect()
    }

    /// The service's labels.
    pub fn service_labels(&self, name: &str) -> Value {
        self.service(name)["Spec"]["Labels"].clone()
    }

    /// Tasks of `service` the orchestrator wants running (manager only).
    fn desired_tasks(&self, service: &str) -> Vec<Value> {
        let q = filters(serde_json::json!({"service": [service], "desired-state": ["running"]}));
        self.api(&format!("/tasks?{q}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn expected_tasks(&self, service: &str) -> usize {
        let svc = self.service(service);
        if let Some(n) = svc["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64() {
            return n as usize;
        }
        // Global: one per ready, active node.
        self.api("/nodes")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| {
                        n["Status"]["State"] == "ready" && n["Spec"]["Availability"] == "active"
                    })
                    .count()
            })
            .unwrap_or(1)
    }

    fn container_running(&self, id: &str) -> bool {
        let (status, body) = self.api_raw("GET", &format!("/containers/{id}/json"), "");
        status == 200
            && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["State"]["Running"] == true)
    }

    /// Waits (at most [`WAIT_TIMEOUT`]) until every task the service should
    /// have is Running, and the containers of those on this node really run
    /// (after a daemon restart the old task still reads Running for a moment).
    /// Manager only. Returns the running tasks.
    pub fn wait_running(&self, service: &str) -> Vec<Task> {
        self.wait_running_except(service, &[])
    }

    fn wait_running_except(&self, service: &str, old: &[String]) -> Vec<Task> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let me = self.node_id();
        loop {
            let want = self.expected_tasks(service);
            let tasks = self.desired_tasks(service);
            let running: Vec<Task> = tasks
                .iter()
                .filter(|t| t["Status"]["State"] == "running")
                .filter_map(|t| {
                    Some(Task {
                        id: t["ID"].as_str()?.into(),
                        node_id: t["NodeID"].as_str()?.into(),
                        container_id: t["Status"]["ContainerStatus"]["ContainerID"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                    })
                })
                .filter(|t| !old.contains(&t.id))
                .filter(|t| t.node_id != me || self.container_running(&t.container_id))
                .collect();
            if running.len() >= want && tasks.len() == want {
                return running;
            }
            if Instant::now() > deadline {
                let ps = self.docker_out(["service", "ps", "--no-trunc", service]);
                panic!(
                    "service {service} on {}: {}/{want} tasks running after {WAIT_TIMEOUT:?} \
                     (replaced: {old:?})\n{}\ndockerd log:\n{}",
                    self.name,
                    running.len(),
                    String::from_utf8_lossy(&ps.stdout),
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker service update --detach ARGS <service>`, then waits until the
    /// update is done: when the change replaces tasks (task template or
    /// ports changed), until the old tasks are gone and new ones run. A
    /// replacement takes ~3-4 s: swarm waits 2 s for gossip before it stops
    /// the old task (stop-first order; `--update-order start-first` is faster
    /// but cannot move a host-mode port).
    pub fn update_service(&self, service: &str, args: &[&str]) -> Vec<Task> {
        self.converge(service, || {
            let mut all = vec!["service", "update", "--detach"];
            all.extend_from_slice(args);
            all.push(service);
            self.docker(&all);
        })
    }

    /// Runs `change` on `service`, then waits as [`Dockerd::update_service`].
    pub fn converge(&self, service: &str, change: impl FnOnce()) -> Vec<Task> {
        let before = self.service(service);
        let old: Vec<String> = self
            .desired_tasks(service)
            .iter()
            .filter_map(|t| t["ID"].as_str().map(str::to_string))
            .collect();
        change();
        let after = self.service(service);
        let replaces = before["Spec"]["TaskTemplate"] != after["Spec"]["TaskTemplate"]
            || before["Spec"]["EndpointSpec"] != after["Spec"]["EndpointSpec"];
        self.wait_running_except(service, if replaces { &old } else { &[] })
    }

    /// `POST /services/<id>/update` with the service's spec as changed by
    /// `edit` (at the version just read).
    pub fn update_spec(&self, service: &str, edit: impl FnOnce(&mut Value)) {
        let svc = self.service(service);
        let id = svc["ID"].as_str().expect("service ID");
        let version = svc["Version"]["Index"].as_u64().expect("service version");
        let mut spec = svc["Spec"].clone();
        edit(&mut spec);
        let path = format!("/services/{id}/update?version={version}");
        let (status, body) = self.api_raw("POST", &path, &spec.to_string());
        assert_eq!(status, 200, "POST {path} on {}: {body}", self.name);
    }

    /// Adds a published port (replaces the tasks).
    pub fn publish_add(&self, service: &str, p: Publish) -> Vec<Task> {
        self.update_service(service, &["--publish-add", &p.arg()])
    }

    /// Removes exactly this published port (replaces the tasks). Not with
    /// `docker service update --publish-rm`: that removes every port with
    /// the same target port, protocol and mode, whatever its published port.
    pub fn publish_rm(&self, service: &str, p: Publish) -> Vec<Task> {
        self.converge(service, || {
            self.update_spec(service, |spec| {
                let ports = spec["EndpointSpec"]["Ports"]
                    .as_array_mut()
                    .unwrap_or_else(|| panic!("{service} publishes no ports"));
                let before = ports.len();
                ports.retain(|q| {
                    let mode = q["PublishMode"].as_str().unwrap_or("ingress");
                    !(q["PublishedPort"] == p.published
                        && q["TargetPort"] == p.target
                        && q["Protocol"] == p.proto.as_str()
                        && (mode == "host") == (p.mode == PublishMode::Host))
                });
                assert_eq!(ports.len() + 1, before, "{service} does not publish {p:?}");
            })
        })
    }

    pub fn label_add(&self, service: &str, key: &str, value: &str) {
        self.update_service(service, &["--label-add", &format!("{key}={value}")]);
    }

    pub fn label_rm(&self, service: &str, key: &str) {
        self.update_service(service, &["--label-rm", key]);
    }

    /// `docker service rm`, then waits until its containers on this node
    /// are gone.
    pub fn rm_service(&self, service: &str) {
        self.docker(["service", "rm", service]);
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while !self.local_containers(service).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{}: containers of removed service {service} still there after {WAIT_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Running containers of `service` on this node (`GET /containers/json`).
    pub fn local_containers(&self, service: &str) -> Vec<Value> {
        let q = filters(serde_json::json!({
            "label": [format!("com.docker.swarm.service.name={service}")],
            "status": ["running"],
        }));
        self.api(&format!("/containers/json?{q}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The ingress-network address of the running task of `service` on this
    /// node (what IPVS would forward to), waiting for one to exist.
    pub fn task_ingress_addr(&self, service: &str) -> Ipv4Addr {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let found = self.local_containers(service).iter().find_map(|c| {
                c["NetworkSettings"]["Networks"]["ingress"]["IPAddress"]
                    .as_str()?
                    .parse()
                    .ok()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no running task of {service} with an ingress address after {WAIT_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`install_mesh_standins`] for every ingress port of `service`, to its
    /// task on this node (manager only: reads the service). Returns the
    /// task's ingress address.
    pub fn install_service_standins(&self, service: &str) -> Ipv4Addr {
        let task = self.task_ingress_addr(service);
        for p in self.service_ports(service) {
            if p.mode == PublishMode::Ingress {
                install_mesh_standins(self, p.published, p.proto, task, p.target);
            }
        }
        task
    }

    /// The node's and the sbox's nat/filter rules, addresses and routes (for
    /// failure messages).
    pub fn mesh_diagnostics(&self) -> String {
        let cmd = "ip -4 -o addr; ip route; iptables-save -t nat; iptables-save -t filter";
        let text = |o: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        format!(
            "--- node {}:\n{}\n--- ingress_sbox:\n{}",
            self.name,
            text(exec_in_out(&self.netns_path(), cmd)),
            text(exec_in_out(&self.sbox_netns(), cmd))
        )
    }

    /// A client host on this daemon's lan.
    pub fn client(&self, tag: &str) -> Client {
        self.lan.client(tag)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let t0 = Instant::now();
        if std::thread::panicking() {
            eprintln!(
                "[ixt-docker] {}: dockerd log before teardown:\n{}",
                self.name,
                self.log_tail(25)
            );
        }
        // Reap dockerd first (a zombie would keep its cgroup busy), then kill
        // everything else it started, all in its cgroups, at once: no
        // graceful stop, the state is deleted anyway.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        cleanup_owned(&self.owned.dir);
        log(format!("{}: torn down in {}", self.name, ms(t0.elapsed())));
    }
}

/// Files of the test image's build context.
fn write_image_context(ctx: &Path) {
    let rootfs = ctx.join("rootfs");
    let _ = fs::remove_dir_all(ctx);
    for d in ["bin", "www", "usr/bin", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir image context");
    }
    copy_with_libs("/bin/busybox", &rootfs);
    copy_with_libs("/usr/bin/socat", &rootfs);
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink sh");
    let start = rootfs.join("start");
    fs::write(
        &start,
        r#"#!/bin/busybox sh
# Answers with $IXT_REPLY (default: the hostname), without a newline: HTTP on
# TCP 80 (busybox httpd) and any datagram on UDP 80 (socat).
reply="${IXT_REPLY:-$(/bin/busybox hostname)}"
printf '%s' "$reply" > /www/index.html
/usr/bin/socat UDP-RECVFROM:80,fork SYSTEM:'/bin/busybox cat /www/index.html' &
exec /bin/busybox httpd -f -p 80 -h /www
"#,
    )
    .expect("write /start");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&start, fs::Permissions::from_mode(0o755)).expect("chmod /start");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nSTOPSIGNAL SIGKILL\nENTRYPOINT [\"/start\"]\n",
    )
    .expect("write Dockerfile");
}

/// Copies `bin` and the shared libraries it needs (per ldd) into `rootfs` at
/// the same paths.
fn copy_with_libs(bin: &str, rootfs: &Path) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: run `cargo xtask setup --test-packages`"
    );
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = String::from_utf8_lossy(&ldd.stdout);
    let mut files = vec![bin.to_string()];
    files.extend(
        text.split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_string),
    );
    for f in files {
        let dst = rootfs.join(f.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).expect("mkdir lib dir");
        fs::copy(&f, &dst).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
}

// ---------------------------------------------------------------------------
// Routing-mesh stand-ins.

/// Inserts `rule` into `table`/`chain` in the namespace `netns` unless it is
/// there.
fn ensure_rule(netns: &Path, table: &str, chain: &str, rule: &str) {
    exec_in(
        netns,
        &format!(
            "iptables -w -t {table} -C {chain} {rule} 2>/dev/null || iptables -w -t {table} -I {chain} {rule}"
        ),
    );
}

fn ensure_chain(netns: &Path, table: &str, chain: &str) {
    exec_in(
        netns,
        &format!(
            "iptables -w -t {table} -n -L {chain} >/dev/null 2>&1 || iptables -w -t {table} -N {chain}"
        ),
    );
}

/// Deletes the rules of `table`/`chain` whose `-S` line contains `needle`.
fn delete_rules(netns: &Path, table: &str, chain: &str, needle: &str) {
    let rules = exec_in(netns, &format!("iptables -w -t {table} -S {chain}"));
    for r in rules.lines().filter(|l| l.contains(needle)) {
        if let Some(spec) = r.strip_prefix("-A ") {
            exec_in(netns, &format!("iptables -w -t {table} -D {spec}"));
        }
    }
}

/// What Docker would program for ingress port `published`/`proto` if this
/// kernel had IPVS, with the IPVS part replaced by NAT:
///
/// * in the daemon's namespace: nat DOCKER-INGRESS (from PREROUTING and
///   OUTPUT for `--dst-type LOCAL`) DNATs the port to the sbox's
///   docker_gwbridge address, port kept; MASQUERADE of local sources to
///   docker_gwbridge and route_localnet there (so 127.0.0.1 works); filter
///   DOCKER-INGRESS (from FORWARD) accepts the port and its replies (dockerd
///   sets the FORWARD policy to DROP);
/// * in the daemon's ingress_sbox: DNAT of the port to `task_addr:target_port`
///   plus SNAT to the sbox's eth0 address (IPVS's job), and forwarding on.
///
/// Idempotent; a rule for the same port and protocol with another
/// destination (task replaced, daemon restarted) is replaced. Traffic reaches
/// the sbox through its real eth1. Call it again after a task of the node was
/// replaced or removed or dockerd restarted (see the module docs: dockerd
/// flushes DOCKER-INGRESS once per life, the task address and the sbox
/// change).
pub fn install_mesh_standins(
    d: &Dockerd,
    published: u16,
    proto: Proto,
    task_addr: Ipv4Addr,
    target_port: u16,
) {
    let sbox = d.wait_sbox();
    let node = d.netns_path();
    let p = proto.as_str();
    let gw = sbox.gateway;

    ensure_chain(&node, "nat", "DOCKER-INGRESS");
    ensure_rule(
        &node,
        "nat",
        "PREROUTING",
        "-m addrtype --dst-type LOCAL -j DOCKER-INGRESS",
    );
    ensure_rule(
        &node,
        "nat",
        "OUTPUT",
        "-m addrtype --dst-type LOCAL -j DOCKER-INGRESS",
    );
    ensure_rule(
        &node,
        "nat",
        "POSTROUTING",
        &format!("-m addrtype --src-type LOCAL -o {GWBRIDGE} -j MASQUERADE"),
    );
    ensure_chain(&node, "filter", "DOCKER-INGRESS");
    exec_in(
        &node,
        "iptables -w -C DOCKER-INGRESS -j RETURN 2>/dev/null || iptables -w -A DOCKER-INGRESS -j RETURN",
    );
    ensure_rule(&node, "filter", "FORWARD", "-j DOCKER-INGRESS");
    exec_in(
        &node,
        &format!("sysctl -qw net.ipv4.conf.{GWBRIDGE}.route_localnet=1"),
    );
    let dnat =
        format!("-p {p} -m {p} --dport {published} -j DNAT --to-destination {gw}:{published}");
    delete_rules(
        &node,
        "nat",
        "DOCKER-INGRESS",
        &format!("-p {p} -m {p} --dport {published} -j DNAT"),
    );
    ensure_rule(&node, "nat", "DOCKER-INGRESS", &dnat);
    ensure_rule(
        &node,
        "filter",
        "DOCKER-INGRESS",
        &format!("-p {p} -m {p} --dport {published} -j ACCEPT"),
    );
    ensure_rule(
        &node,
        "filter",
        "DOCKER-INGRESS",
        &format!(
            "-p {p} -m state --state RELATED,ESTABLISHED -m {p} --sport {published} -j ACCEPT"
        ),
    );

    let sb = &sbox.path;
    exec_in(sb, "sysctl -qw net.ipv4.ip_forward=1");
    ensure_rule(
        sb,
        "nat",
        "POSTROUTING",
        &format!("-o eth0 -j SNAT --to-source {}", sbox.ingress),
    );
    delete_rules(
        sb,
        "nat",
        "PREROUTING",
        &format!("-p {p} -m {p} --dport {published} -j DNAT"),
    );
    ensure_rule(
        sb,
        "nat",
        "PREROUTING",
        &format!(
            "-p {p} -m {p} --dport {published} -j DNAT --to-destination {task_addr}:{target_port}"
        ),
    );
}

/// Packets counted by the sbox's stand-in DNAT rule for `published`/`proto`
/// (0 when there is none): proof that traffic went through the sbox.
pub fn sbox_standin_packets(d: &Dockerd, published: u16, proto: Proto) -> u64 {
    let out = exec_in_out(&d.sbox_netns(), "iptables -w -t nat -L PREROUTING -v -x -n");
    let p = proto.as_str();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("DNAT") && l.contains(&format!("{p} dpt:{published} ")))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// A manager + worker swarm.

/// Two daemons on one lan: a manager (with the TCP API) and a worker that
/// joined it, both with the test image. Dropped worker first.
pub struct Cluster {
    pub worker: Dockerd,
    pub manager: Dockerd,
    pub lan: Arc<Lan>,
}

impl Cluster {
    pub fn start(tag: &str) -> Self {
        let t0 = Instant::now();
        let lan = Lan::new(&format!("{tag}l"));
        // Both daemons start (and build the image) in parallel.
        let (manager, worker) = std::thread::scope(|s| {
            let m = s.spawn(|| {
                let m = Dockerd::start_on(
                    &lan,
                    &format!("{tag}m"),
                    DaemonOptions {
                        tcp_api: true,
                        ..Default::default()
                    },
                );
                m.load_test_image();
                m.swarm_init();
                m
            });
            let w = s.spawn(|| {
                let w = Dockerd::start_on(&lan, &format!("{tag}w"), DaemonOptions::default());
                w.load_test_image();
                w
            });
            let (m, w) = (m.join(), w.join());
            match (m, w) {
                (Ok(m), Ok(w)) => (m, w),
                (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
            }
        });
        worker.swarm_join(&manager);
        manager.wait_nodes_ready(2);
        log(format!("cluster {tag} up in {}", ms(t0.elapsed())));
        Self {
            worker,
            manager,
            lan,
        }
    }

    pub fn nodes(&self) -> [&Dockerd; 2] {
        [&self.manager, &self.worker]
    }

    pub fn footprint(&self) -> Footprint {
        self.manager
            .footprint()
            .merge(self.worker.footprint())
            .merge(self.lan.footprint())
    }
}

/// A swarm of several managers (the first initialises it) and workers, each
/// a private dockerd on one lan. Workers are declared first so that they
/// leave first on drop.
pub struct Swarm {
    pub workers: Vec<Dockerd>,
    pub managers: Vec<Dockerd>,
    pub lan: Arc<Lan>,
}

impl Swarm {
    pub fn start(tag: &str, managers: usize, workers: usize) -> Self {
        assert!(managers >= 1);
        let t0 = Instant::now();
        let lan = Lan::new(&format!("{tag}l"));
        let names: Vec<String> = (0..managers)
            .map(|i| format!("{tag}m{i}"))
            .chain((0..workers).map(|i| format!("{tag}w{i}")))
            .collect();
        // Every daemon starts (and loads the image) in parallel.
        let mut daemons: Vec<Dockerd> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let lan = &lan;
                    s.spawn(move || {
                        let d = Dockerd::start_on(lan, name, DaemonOptions::default());
                        d.load_test_image();
                        d
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let worker_list = daemons.split_off(managers);
        let manager_list = daemons;
        manager_list[0].swarm_init();
        for m in &manager_list[1..] {
            m.swarm_join_as(&manager_list[0], "manager");
        }
        for w in &worker_list {
            w.swarm_join(&manager_list[0]);
        }
        manager_list[0].wait_nodes_ready(managers + workers);
        log(format!(
            "swarm {tag} ({managers} managers, {workers} workers) up in {}",
            ms(t0.elapsed())
        ));
        Self {
            workers: worker_list,
            managers: manager_list,
            lan,
        }
    }

    pub fn footprint(&self) -> Footprint {
        self.managers
            .iter()
            .chain(&self.workers)
            .fold(self.lan.footprint(), |f, d| f.merge(d.footprint()))
    }
}
