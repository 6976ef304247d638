//! rtnetlink queries (NETLINK_ROUTE) for what else runs on an interface:
//! its XDP programs (RTM_GETLINK) and its `tc filter ... bpf` classifiers
//! (RTM_GETTFILTER). Each runs in the calling thread's network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use crate::sys::errno_of;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR_LEN: usize = 16;

/// Ids of the XDP programs on interface `ifindex`, whichever way they were
/// attached (bpf_link or netlink; any mode), from IFLA_XDP.
pub fn xdp_prog_ids(ifindex: u32) -> Result<Vec<u32>> {
    const RTM_GETLINK: u16 = 18;
    const IFINFOMSG_LEN: usize = 16;
    const IFLA_XDP: u16 = 43;
    // IFLA_XDP_PROG_ID, _DRV_PROG_ID, _SKB_PROG_ID, _HW_PROG_ID
    const PROG_ID_ATTRS: [u16; 4] = [4, 5, 6, 7];
    let mut ifinfo = [0u8; IFINFOMSG_LEN];
    ifinfo[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let what = format!("RTM_GETLINK of ifindex {ifindex}");
    let mut ids = Vec::new();
    for msg in query(RTM_GETLINK, NLM_F_REQUEST, &ifinfo, &what)? {
        for (kind, value) in rtattrs(msg.get(IFINFOMSG_LEN..).unwrap_or_default()) {
            if kind & NLA_TYPE_MASK != IFLA_XDP {
                continue;
            }
            for (inner, v) in rtattrs(value) {
                if let Some(id) = PROG_ID_ATTRS.contains(&inner).then(|| u32_of(v)).flatten()
                    && id != 0
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

/// Where a classic tc filter hangs: the clsact qdisc's ingress (what
/// `tc filter add dev X ingress` means) or the old `ingress` qdisc.
const TC_PARENTS: [(u32, &str); 2] = [(0xffff_fff2, "clsact ingress"), (0xffff_0000, "ingress")];

/// The `bpf` (cls_bpf) filters on interface `ifindex`'s ingress, as program
/// ids; 0 for a filter of classic BPF bytecode, which has no id. An
/// interface with neither qdisc has none.
pub fn tc_filter_prog_ids(ifindex: u32) -> Result<Vec<u32>> {
    const RTM_GETTFILTER: u16 = 46;
    const TCMSG_LEN: usize = 20;
    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TCA_BPF_ID: u16 = 11;
    let mut ids = Vec::new();
    for (parent, parent_name) in TC_PARENTS {
        // tcmsg: family, pad (3), ifindex, handle, parent, info.
        let mut tcmsg = [0u8; TCMSG_LEN];
        tcmsg[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        tcmsg[12..16].copy_from_slice(&parent.to_ne_bytes());
        let what = format!("RTM_GETTFILTER {parent_name} of ifindex {ifindex}");
        let msgs = match query(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, &tcmsg, &what) {
            Ok(msgs) => msgs,
            // No such qdisc on the interface.
            Err(e) if errno_of(&e).is_some_and(|n| n == libc::EINVAL || n == libc::ENOENT) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        for msg in msgs {
            let attrs = rtattrs(msg.get(TCMSG_LEN..).unwrap_or_default());
            let is_bpf = attrs
                .iter()
                .any(|(kind, v)| kind & NLA_TYPE_MASK == TCA_KIND && v.starts_with(b"bpf\0"));
            // A dump also lists each priority's chain head, without options.
            let Some((_, options)) = attrs
                .iter()
                .find(|(kind, _)| kind & NLA_TYPE_MASK == TCA_OPTIONS)
            else {
                continue;
            };
            if !is_bpf {
                continue;
            }
            let id = rtattrs(options)
                .into_iter()
                .find(|(kind, _)| kind & NLA_TYPE_MASK == TCA_BPF_ID)
                .and_then(|(_, v)| u32_of(v))
                .unwrap_or(0);
            ids.push(id);
        }
    }
    Ok(ids)
}

/// NLA_F_NESTED and NLA_F_NET_BYTEORDER are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Sends one request (`body` after the header) and returns the payload of
/// every answer message of type other than NLMSG_DONE, reading a dump to
/// its end. A netlink error answer is the errno it carries.
fn query(kind: u16, flags: u16, body: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    // SAFETY: a netlink socket, owned (closed on drop) right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_NETLINK, NETLINK_ROUTE)");
    }
    // SAFETY: the fd is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
    req.extend(((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
    req.extend(kind.to_ne_bytes());
    req.extend(flags.to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // sequence number
    req.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend(body);
    // SAFETY: sending our buffer on our socket (to the kernel: no address).
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("netlink {what}"));
    }
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into our buffer.
        let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("netlink answer to {what}"));
        }
        let (msgs, done) = split_messages(&buf[..got as usize])
            .with_context(|| format!("netlink answer to {what}"))?;
        out.extend(msgs);
        if done || !dump {
            return Ok(out);
        }
    }
}

/// The payloads of the messages in one datagram, and whether it ended the
/// answer (NLMSG_DONE).
fn split_messages(mut bytes: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let mut out = Vec::new();
    while bytes.len() >= NLMSG_HDR_LEN {
        let len = u32_of(bytes).unwrap_or(0) as usize;
        if len < NLMSG_HDR_LEN || len > bytes.len() {
            bail!("a netlink message of {len} bytes in {} left", bytes.len());
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let payload = &bytes[NLMSG_HDR_LEN..len];
        match kind {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let errno = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno).into());
                }
                // An acknowledgement.
                return Ok((out, true));
            }
            _ => out.push(payload.to_vec()),
        }
        bytes = bytes.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    Ok((out, false))
}

/// The (type, payload) of each netlink attribute in `bytes` (4-aligned).
fn rtattrs(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[4..len]));
        bytes = bytes.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_attributes_nest_and_pad() {
        // IFLA_XDP (43) holding IFLA_XDP_ATTACHED (2, u8, padded) and
        // IFLA_XDP_PROG_ID (4, u32), then IFLA_MTU (4, u32).
        let mut inner = vec![5, 0, 2, 0, 1, 0, 0, 0];
        inner.extend([8, 0, 4, 0]);
        inner.extend(77u32.to_ne_bytes());
        let mut outer = ((inner.len() + 4) as u16).to_ne_bytes().to_vec();
        outer.extend(43u16.to_ne_bytes());
        outer.extend(&inner);
        outer.extend([8, 0, 4, 0]);
        outer.extend(1500u32.to_ne_bytes());
        let attrs = rtattrs(&outer);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].0, 43);
        let nested = rtattrs(attrs[0].1);
        assert_eq!(nested[0], (2, &[1u8][..]));
        assert_eq!(nested[1], (4, &77u32.to_ne_bytes()[..]));
        assert_eq!(attrs[1], (4, &1500u32.to_ne_bytes()[..]));
        assert!(rtattrs(&[3, 0, 1]).is_empty(), "a cut attribute is dropped");
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDR_LEN + payload.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0; 10]);
        m.extend(payload);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn a_dump_ends_at_done_and_an_error_is_its_errno() {
        let mut datagram = message(44, &[1, 2, 3]);
        datagram.extend(message(44, &[4; 8]));
        let (msgs, done) = split_messages(&datagram).unwrap();
        assert_eq!(msgs, [vec![1, 2, 3], vec![4; 8]]);
        assert!(!done, "no NLMSG_DONE yet: read on");
        datagram.extend(message(3, &[0; 4]));
        assert!(split_messages(&datagram).unwrap().1);

        let err = split_messages(&message(2, &(-libc::EINVAL).to_ne_bytes())).unwrap_err();
        assert_eq!(errno_of(&err), Some(libc::EINVAL));
        let (msgs, done) = split_messages(&message(2, &0i32.to_ne_bytes())).unwrap();
        assert!(msgs.is_empty() && done, "an ack");
        assert!(split_messages(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
