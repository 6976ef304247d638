//! The few direct syscalls we make: privileges, bpffs, namespaces, interfaces.

use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The errno of the first OS error in `err`'s chain, if any.
pub fn errno_of(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .and_then(|e| e.raw_os_error())
}

/// Where bpffs is mounted by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "ingress-xdp must run as root (it loads BPF programs and attaches them to interfaces); try sudo"
        );
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Result<i64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already, as Cilium does.
pub fn ensure_bpffs_mounted() -> Result<()> {
    ensure_bpffs_mounted_at(Path::new(BPFFS_ROOT))
}

/// Mounts bpffs at `root` unless it is there already. Two processes (or
/// threads) that both found it missing would stack two mounts, the second
/// hiding what is pinned in the first, so it mounts under a lock of the
/// parent directory and looks again once the lock is held.
pub fn ensure_bpffs_mounted_at(root: &Path) -> Result<()> {
    ensure_bpffs_lasts(root)?;
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let _lock = DirLock::acquire(root.parent().unwrap_or(root))?;
    if is_bpffs(root) {
        return Ok(());
    }
    let src = CString::new("bpf")?;
    let target = CString::new(root.as_os_str().as_encoded_bytes())?;
    let data = CString::new("mode=0700")?;
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("mount -t bpf bpf {} (bpffs is not mounted)", root.display())
        });
    }
    tracing::info!("mounted bpffs at {}", root.display());
    Ok(())
}

/// Refuses a bpffs at `root` that dies with this process's mount namespace.
///
/// `ip netns exec` runs its command in a mount namespace of its own, with a
/// fresh /sys where bpffs is missing. A bpffs mounted there goes, with what
/// is pinned in it, when the command exits: the attach "succeeds" and no
/// program stays. So outside the host's mount namespace, `root` must be the
/// host's own bpffs. The host is pid 1 (in a container, the container's
/// init), or, where pid 1 is not ours to inspect (some sandboxes), kthreadd,
/// which lives in the initial mount namespace; when neither can be read, it
/// goes ahead as before.
fn ensure_bpffs_lasts(root: &Path) -> Result<()> {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let Ok(ours) = id(Path::new("/proc/self/ns/mnt")) else {
        return Ok(());
    };
    let host = ["1", "2"].into_iter().find_map(|pid| {
        let proc = Path::new("/proc").join(pid);
        if pid == "2" && std::fs::read_to_string(proc.join("comm")).ok()?.trim() != "kthreadd" {
            return None;
        }
        Some((id(&proc.join("ns/mnt")).ok()?, proc))
    });
    let Some((init, proc)) = host else {
        return Ok(());
    };
    if ours == init {
        return Ok(());
    }
    let hosts = proc
        .join("root")
        .join(root.strip_prefix("/").unwrap_or(root));
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    match (dev(root), dev(&hosts)) {
        (Ok(here), Ok(there)) if here == there && is_bpffs(root) => Ok(()),
        (_, Err(_)) => Ok(()),
        _ => bail!(
            "{} is not the host's bpffs: this command runs in a mount namespace of its own, \
             and what it pinned there would vanish when it exits, every rule and attachment \
             with it. `ip netns exec` does this (it remounts /sys); use \
             `nsenter --net=/var/run/netns/NAME` instead, or bind the host's {} into this \
             namespace",
            root.display(),
            root.display()
        ),
    }
}

/// Identity of a network namespace: (st_dev, st_ino) of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    pub fn of_path(path: &Path) -> Result<Self> {
        let md = std::fs::metadata(path)
            .with_context(|| format!("network namespace {}", path.display()))?;
        Ok(Self {
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Self> {
        Self::of_path(Path::new("/proc/thread-self/ns/net"))
    }
}

/// Runs `f` on a dedicated thread that has entered the network namespace at
/// `netns` (setns affects only the calling thread, so ours stay where they
/// are). With `None`, runs `f` here.
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let Some(netns) = netns else {
        return f();
    };
    let file = File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid fd; CLONE_NEWNET checks it is a netns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!(
                            "setns into {} (is it a network namespace file?)",
                            netns.display()
                        )
                    });
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", netns.display()))?
    })
}

/// Index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no interface named {name:?} in this network namespace");
    }
    Ok(index)
}

/// Interfaces of the calling thread's network namespace.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string("/proc/thread-self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    names.sort();
    names
}

/// The interface holding the calling thread's network namespace's default
/// route: IPv4 first (lowest metric), then IPv6.
pub fn default_route_iface() -> Result<String> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
    if let Some(name) = parse_ipv4_default_route(&v4) {
        return Ok(name);
    }
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    if let Some(name) = parse_ipv6_default_route(&v6) {
        return Ok(name);
    }
    bail!(
        "no default route in this network namespace to pick an interface from; name one with --iface"
    )
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
pub fn parse_ipv4_default_route(table: &str) -> Option<String> {
    const RTF_UP: u32 = 1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u32 = f.get(6)?.parse().ok()?;
            (*f.get(1)? == "00000000" && *f.get(7)? == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// `/proc/net/ipv6_route`: dest destlen src srclen nexthop metric ref use flags iface.
pub fn parse_ipv6_default_route(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = *f.get(9)?;
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            (f[0].bytes().all(|b| b == b'0') && f.get(1) == Some(&"00") && name != "lo")
                .then(|| (metric, name.to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// `net.ipv4.ip_local_port_range` of the calling thread's namespace.
pub fn ephemeral_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// Creates `dir` (and parents) on bpffs.
pub fn create_pin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "pin directory {} is not on a bpf filesystem (mount bpffs there or pick a directory under {BPFFS_ROOT})",
            dir.display()
        );
    }
    Ok(())
}

/// Seconds since the Unix epoch.
/// Seconds since the Unix epoch, with the fraction (for metrics).
pub fn now_secs_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Default location of Docker's ingress sandbox namespace.
pub fn default_sbox_netns() -> PathBuf {
    PathBuf::from("/var/run/docker/netns/ingress_sbox")
}

/// An exclusive advisory lock on a directory, released on drop: serialises
/// concurrent CLI invocations that change the same pinned state.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", dir.display()));
        }
        Ok(Self { _file: file })
    }
}

/// The interface a pinned XDP or TCX link is attached to, or 0 when the
/// kernel has detached it because the interface went away. A namespace that
/// Docker recreates may reuse the old inode number, so only the link itself
/// can tell whether it still drops anything.
pub fn link_ifindex(pin: &Path) -> Result<u32> {
    Ok(crate::bpf::pinned_link_info(pin)?.ifindex)
}

/// How many values a per-CPU map holds per key (possible CPUs).
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))
}

/// True when the pinned link no longer holds an interface, or cannot be
/// read at all: either way it drops nothing.
pub fn link_detached(pin: &Path) -> bool {
    link_ifindex(pin).map_or(true, |ifindex| ifindex == 0)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Result<String> {
    // SAFETY: uname fills the zeroed struct.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("uname");
    }
    // SAFETY: the kernel NUL-terminates the field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// The driver of interface `name` in the calling thread's namespace, as
/// `ethtool -i` shows it (SIOCETHTOOL, ETHTOOL_GDRVINFO).
pub fn driver_name(name: &str) -> Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, then driver[32] and more we do not read.
    let mut drvinfo = [0u8; 196];
    drvinfo[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // struct ifreq: the name, then a union holding our pointer.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut u8,
        _pad: [u8; 16],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: drvinfo.as_mut_ptr(),
        _pad: [0; 16],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket only to carry the ioctl; closed on drop.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET) for SIOCETHTOOL");
    }
    // SAFETY: the fd is ours.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: req points at a buffer as large as ETHTOOL_GDRVINFO writes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SIOCETHTOOL ETHTOOL_GDRVINFO on {name}"));
    }
    let driver = &drvinfo[4..36];
    let end = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Ok(String::from_utf8_lossy(&driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_default_route_lowest_metric() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t010012AC\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_ipv4_default_route(table).as_deref(), Some("eth0"));
        assert_eq!(parse_ipv4_default_route("Iface\n"), None);
    }

    #[test]
    fn ipv6_default_route() {
        let table = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens3\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(parse_ipv6_default_route(table).as_deref(), Some("ens3"));
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("garbage"), None);
    }
}
