//! Deployment mistakes that would otherwise pass silently, found from where
//! the agent runs. Each finding is a sentence saying what is wrong and what to
//! do; the agent logs it as an error and reports it through `health`.
//!
//! - Not on the host network: the node's Swarm address is not an address of
//!   the namespace the agent runs in, so "the host NIC" would be the
//!   container's own interface.
//! - No sandbox in sight: the engine is in a swarm but its ingress_sbox file
//!   does not show up (the netns directory is not bind-mounted).
//! - A private bind of the netns directory: namespaces Docker creates after
//!   the agent started would stay empty files here (setns fails), so a
//!   recreated ingress_sbox would be missed.
//!
//! The parsers are pure; the reads of /proc and getifaddrs are at the edges.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::mountinfo::Mount;
pub use crate::mountinfo::Propagation;

/// The propagation of the mount point exactly at `path`; `None` when `path`
/// is not a mount point (then it is the host's own directory, and nothing is
/// missed).
pub fn mount_propagation(mounts: &[Mount], path: &Path) -> Option<Propagation> {
    // Later lines mount over earlier ones: the last match is what we see.
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.propagation)
}

/// A private bind of the netns directory, if that is what `netns_dir` is.
pub fn netns_mount_problem(mounts: &[Mount], netns_dir: &Path) -> Option<String> {
    (mount_propagation(mounts, netns_dir) == Some(Propagation::Private)).then(|| {
        format!(
            "{} is a private mount here: network namespaces Docker creates after this agent \
             started (a recreated ingress_sbox) stay invisible. Bind it with propagation rslave \
             (stack file: bind: {{propagation: rslave}}) and make it a shared mount on the host \
             before dockerd starts: mount --bind {dir} {dir} && mount --make-shared {dir}",
            netns_dir.display(),
            dir = netns_dir.display()
        )
    })
}

/// The node's Swarm address is not one of this namespace's.
pub fn host_network_problem(node_addr: Option<IpAddr>, local: &[IpAddr]) -> Option<String> {
    let addr = node_addr?;
    (!local.contains(&addr)).then(|| {
        format!(
            "this network namespace has no interface with the node's Swarm address {addr}: the \
             agent is not on the host network, so it filters its own container's interface. Run \
             it with the host network (stack file: networks: host, external)"
        )
    })
}

/// The engine is in a swarm but its ingress_sbox is not visible at `path`.
pub fn sbox_missing_problem(path: &Path) -> String {
    format!(
        "this node is in a swarm but {} does not exist here: the routing mesh's sandbox is not \
         filtered. Bind-mount Docker's netns directory (<exec root>/netns, usually \
         /var/run/docker/netns) at the same path, with propagation rslave",
        path.display()
    )
}

/// The netns directory that holds `sbox` (e.g. /var/run/docker/netns), with
/// symlinks resolved as the kernel's mount table shows them.
pub fn netns_dir_of(sbox: &Path) -> Option<PathBuf> {
    let dir = sbox.parent()?;
    Some(fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// Every address of every interface in this network namespace.
pub fn local_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
41 30 0:4 / /run/docker/netns/ingress_sbox rw shared:9 - nsfs nsfs rw
50 22 0:30 /x /var/run/docker/netns rw master:12 - tmpfs tmpfs rw
51 22 0:31 / /srv/private\\040dir rw - ext4 /dev/sdb rw
52 22 0:32 / /srv/both rw shared:3 master:4 - ext4 /dev/sdc rw
";

    #[test]
    fn propagation_of_a_mount_point() {
        let mounts = mountinfo::parse(MOUNTINFO);
        let at = |p: &str| mount_propagation(&mounts, Path::new(p));
        assert_eq!(at("/var/run/docker/netns"), Some(Propagation::Slave));
        assert_eq!(at("/run"), Some(Propagation::Shared));
        assert_eq!(at("/srv/private dir"), Some(Propagation::Private));
        assert_eq!(at("/srv/both"), Some(Propagation::Shared));
        assert_eq!(at("/run/docker"), None, "not a mount point");
        let over = format!("{MOUNTINFO}60 50 0:33 / /var/run/docker/netns rw - tmpfs t rw\n");
        assert_eq!(
            mount_propagation(&mountinfo::parse(&over), Path::new("/var/run/docker/netns")),
            Some(Propagation::Private),
            "the last mount on a path is the one seen"
        );
    }

    #[test]
    fn problems_name_the_fix() {
        let private = format!("{MOUNTINFO}60 22 0:33 / /mnt/netns rw - tmpfs t rw\n");
        let msg =
            netns_mount_problem(&mountinfo::parse(&private), Path::new("/mnt/netns")).unwrap();
        assert!(
            msg.contains("rslave") && msg.contains("--make-shared /mnt/netns"),
            "{msg}"
        );
        let mounts = mountinfo::parse(MOUNTINFO);
        assert!(netns_mount_problem(&mounts, Path::new("/var/run/docker/netns")).is_none());
        assert!(netns_mount_problem(&mounts, Path::new("/not/a/mount")).is_none());

        let node: IpAddr = "10.0.0.5".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let msg = host_network_problem(Some(node), &[lo]).unwrap();
        assert!(
            msg.contains("10.0.0.5") && msg.contains("host network"),
            "{msg}"
        );
        assert!(host_network_problem(Some(node), &[lo, node]).is_none());
        assert!(host_network_problem(None, &[lo]).is_none());
    }

    #[test]
    fn this_namespace_has_loopback() {
        assert!(local_addrs().contains(&"127.0.0.1".parse().unwrap()));
    }
}
