//! The kernel's mount table (/proc/self/mountinfo) as typed entries: where a
//! path is mounted, how it propagates, and where a network namespace is bound.
//! The parser is pure; only [`read`] touches /proc.

use std::{fs, path::PathBuf};

/// How a mount point propagates mounts made beneath it elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// `shared:N`: mounts propagate both ways.
    Shared,
    /// `master:N` (rslave): receives the host's new mounts.
    Slave,
    /// Neither: nothing made after the bind shows up here.
    Private,
}

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mounted object's own root: a directory of the source filesystem,
    /// or `net:[INODE]` for a bound network namespace.
    pub root: String,
    pub mount_point: PathBuf,
    pub propagation: Propagation,
    pub fstype: String,
}

impl Mount {
    /// The inode of the network namespace bound here (an `ip netns` file or
    /// Docker's sandbox file), if this is one.
    pub fn netns_inode(&self) -> Option<u64> {
        if self.fstype != "nsfs" {
            return None;
        }
        self.root
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }
}

/// The entries of mountinfo text, in the kernel's order (later lines mount
/// over earlier ones). Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let root = unescape(fields.get(3)?);
    let mount_point = PathBuf::from(unescape(fields.get(4)?));
    let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let mut propagation = Propagation::Private;
    for tag in &fields[6..separator] {
        if tag.starts_with("shared:") {
            propagation = Propagation::Shared;
        } else if tag.starts_with("master:") && propagation != Propagation::Shared {
            propagation = Propagation::Slave;
        }
    }
    Some(Mount {
        root,
        mount_point,
        propagation,
        fstype: fields.get(separator + 1)?.to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&digits, 8) {
                out.push(byte as char);
                continue;
            }
            out.push(c);
            out.push_str(&digits);
        } else {
            out.push(c);
        }
    }
    out
}

/// This process's mount table; empty when /proc is not readable.
pub fn read() -> Vec<Mount> {
    parse(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Paths where the network namespace with inode `ino` is bound, first the
/// most recent.
pub fn netns_paths(mounts: &[Mount], ino: u64) -> Vec<PathBuf> {
    mounts
        .iter()
        .rev()
        .filter(|m| m.netns_inode() == Some(ino))
        .map(|m| m.mount_point.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn entries_and_namespaces() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
47 46 0:4 net:[4026532178] /run/netns/a\\040b rw shared:2 - nsfs nsfs rw
48 22 0:4 net:[4026532178] /tmp/exec/netns/ingress_sbox rw master:7 - nsfs nsfs rw
49 22 0:4 mnt:[4026532179] /run/x rw - nsfs nsfs rw
garbage
50 22 0:30 /x /var/run/docker/netns rw shared:3 master:4 - tmpfs tmpfs rw
";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 5, "the garbage line is skipped");
        assert_eq!(mounts[1].mount_point, Path::new("/run/netns/a b"));
        assert_eq!(mounts[1].netns_inode(), Some(4026532178));
        assert_eq!(mounts[3].netns_inode(), None, "a mount namespace");
        assert_eq!(mounts[0].netns_inode(), None);
        assert_eq!(mounts[2].propagation, Propagation::Slave);
        assert_eq!(mounts[4].propagation, Propagation::Shared);
        assert_eq!(mounts[4].root, "/x");
        assert_eq!(
            netns_paths(&mounts, 4026532178),
            vec![
                PathBuf::from("/tmp/exec/netns/ingress_sbox"),
                PathBuf::from("/run/netns/a b")
            ]
        );
        assert!(netns_paths(&mounts, 1).is_empty());
    }

    #[test]
    fn this_process_has_a_root_mount() {
        assert!(read().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
