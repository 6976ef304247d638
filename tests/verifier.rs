//! Verifier margins: how much of the kernel's verifier budget each program
//! uses on this kernel, so that a change to the parser that eats the headroom
//! fails here instead of on an operator's machine.
//!
//! Every program is attached the way the product attaches it (native XDP and
//! generic XDP on veths in namespaces made here, TC through TCX), and each
//! attached program's `verified_insns` (bpf_prog_info, what the verifier
//! processed) is read back. aya shows the verifier log only when a load
//! fails, so for the stack depth each program is loaded once more by hand,
//! from the same object relocated by aya's own `aya-obj`, with a log at
//! BPF_LOG_STATS, whose "stack depth" and "processed N insns" lines are read.
//!
//! Limits: 1,000,000 processed instructions (BPF_COMPLEXITY_LIMIT_INSNS) and
//! 512 bytes of stack (MAX_BPF_STACK). The test fails below 50% headroom.
//!
//! Needs root (it loads and attaches programs and creates namespaces).

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::{maps::MapData, programs::loaded_programs};
use aya_obj::{EbpfSectionKind, Object, generated::bpf_insn};
use ingress_xdp::{
    EBPF_OBJECT,
    attach::{AttachPoint, AttachedMode, Hook, Target, XdpModeChoice, attach},
    pins::{PROG_TC, PROG_XDP},
};

/// BPF_COMPLEXITY_LIMIT_INSNS.
const INSN_LIMIT: u64 = 1_000_000;
/// MAX_BPF_STACK.
const STACK_LIMIT: u64 = 512;
/// Fail when a program uses more than this share of a limit.
const MAX_SHARE: f64 = 0.5;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_FREEZE: libc::c_long = 22;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_LOG_STATS: u32 = 4;

/// bpf(2) with `attr` (a prefix of `union bpf_attr`); returns the result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised prefix of union bpf_attr of the
    // size passed; the kernel reads (and for some commands writes) only that.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new file descriptor the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct MapFdAttr {
    map_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_id`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// A map for a data section (.rodata holding ATTACH_ID, .bss, .data), made
/// as aya makes it: filled with the section, frozen if read-only.
fn section_map(map: &aya_obj::Map) -> OwnedFd {
    let mut attr = MapCreateAttr {
        map_type: map.map_type(),
        key_size: map.key_size(),
        value_size: map.value_size(),
        max_entries: map.max_entries(),
        map_flags: map.map_flags(),
        ..Default::default()
    };
    attr.map_name[..6].copy_from_slice(b"ixtfvs");
    let fd = owned(bpf(BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE for a data section"));
    let mut data = map.data().to_vec();
    if !data.is_empty() {
        let key = 0u32;
        let mut attr = MapElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            pad: 0,
            key: &raw const key as u64,
            value: data.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).expect("fill the data section");
    }
    if map.section_kind() == EbpfSectionKind::Rodata {
        let mut attr = MapFdAttr {
            map_fd: fd.as_raw_fd() as u32,
        };
        bpf(BPF_MAP_FREEZE, &mut attr).expect("freeze .rodata");
    }
    fd
}

/// What the verifier says about one program.
#[derive(Debug)]
struct VerifierStats {
    processed: u64,
    /// Stack depth of each subprogram ("stack depth 48+0").
    stack: Vec<u64>,
}

impl VerifierStats {
    /// The deepest the stack can get: the main program and every
    /// subprogram on top of it (an upper bound of the deepest call chain).
    fn stack_total(&self) -> u64 {
        self.stack.iter().sum()
    }
}

fn parse_stats(log: &str) -> Option<VerifierStats> {
    let processed = log
        .lines()
        .find_map(|l| l.strip_prefix("processed "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stack = log
        .lines()
        .find_map(|l| l.strip_prefix("stack depth "))?
        .trim()
        .split('+')
        .map(|d| d.trim().parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some(VerifierStats { processed, stack })
}

/// Loads program `name` of the eBPF object as `prog_type`, relocated against
/// the maps pinned in `pins` (and fresh data-section maps), with `ATTACH_ID`
/// set as the loader sets it for point `attach_id` (the verifier knows the
/// frozen constant, and its walk depends on it), with a verifier log at
/// BPF_LOG_STATS; returns the log.
fn load_with_log(
    pins: &ingress_xdp::pins::Pins,
    name: &str,
    prog_type: u32,
    attach_id: u32,
) -> String {
    let mut obj = Object::parse(EBPF_OBJECT).expect("parse the eBPF object");
    let attach_id = attach_id.to_ne_bytes();
    obj.patch_map_data(HashMap::from([("ATTACH_ID", (&attach_id[..], true))]))
        .expect("set ATTACH_ID");
    let mut pinned: Vec<(String, MapData)> = Vec::new();
    let mut made: Vec<(String, OwnedFd)> = Vec::new();
    for (map_name, map) in &obj.maps {
        match map.section_kind() {
            EbpfSectionKind::Rodata | EbpfSectionKind::Bss | EbpfSectionKind::Data => {
                made.push((map_name.clone(), section_map(map)));
            }
            _ => pinned.push((
                map_name.clone(),
                MapData::from_pin(pins.map(map_name))
                    .unwrap_or_else(|e| panic!("pinned map {map_name}: {e}")),
            )),
        }
    }
    let mut fds: HashMap<String, RawFd> = HashMap::new();
    for (n, m) in &pinned {
        fds.insert(n.clone(), m.fd().as_fd().as_raw_fd());
    }
    for (n, fd) in &made {
        fds.insert(n.clone(), fd.as_raw_fd());
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let maps: Vec<(String, RawFd, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(n, m)| (n.clone(), fds[n], m.clone()))
        .collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .expect("relocate maps");
    obj.relocate_calls(&text_sections).expect("relocate calls");

    let program = obj.programs.get(name).expect("program in the object");
    let insns: &[bpf_insn] = &obj.functions[&program.function_key()].instructions;
    let license = CString::new(program.license.as_bytes()).unwrap();
    let mut log = vec![0u8; 1 << 20];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: BPF_LOG_STATS,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let res = bpf(BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    let fd = res.unwrap_or_else(|e| panic!("BPF_PROG_LOAD of {name}: {e}\n{text}"));
    drop(owned(fd));
    text
}

fn verified_insns(program_id: u32) -> u64 {
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .unwrap_or_else(|| panic!("program {program_id} is loaded"));
    u64::from(
        info.verified_instruction_count()
            .expect("verified_insns (kernel >= 5.16)"),
    )
}

#[test]
fn verifier_margins() {
    support::require_root();
    let pins = support::TestPins::new("fver");

    // Two namespaces joined by two veth pairs: native XDP on one end of the
    // first, generic XDP on its peer, TC on the second pair.
    let ns_a = support::Netns::new("fa");
    let ns_b = support::Netns::new("fb");
    let (xa, xb) = (support::unique("fx"), support::unique("fx"));
    let (ta, tb) = (support::unique("ft"), support::unique("ft"));
    for (a, b) in [(&xa, &xb), (&ta, &tb)] {
        support::sh(&format!(
            "ip link add {a} netns {} type veth peer name {b} netns {}",
            ns_a.name, ns_b.name
        ));
        ns_a.exec(&format!("ip link set {a} up"));
        ns_b.exec(&format!("ip link set {b} up"));
    }
    let target = |ns: &support::Netns, iface: &str| Target {
        netns: Some(ns.path()),
        iface: iface.to_string(),
    };
    let native = attach(
        &pins.pins,
        &target(&ns_a, &xa),
        Hook::Xdp,
        XdpModeChoice::Native,
    )
    .expect("attach XDP native");
    let generic = attach(
        &pins.pins,
        &target(&ns_b, &xb),
        Hook::Xdp,
        XdpModeChoice::Generic,
    )
    .expect("attach XDP generic");
    let tc = attach(
        &pins.pins,
        &target(&ns_a, &ta),
        Hook::Tc,
        XdpModeChoice::Auto,
    )
    .expect("attach TC");
    assert_eq!(native.point.mode, Some(AttachedMode::Native));
    assert_eq!(generic.point.mode, Some(AttachedMode::Generic));
    assert_eq!(tc.point.hook, Hook::Tc);

    // The stack depth per point, from a load of our own with a log.
    let stats_of = |name: &str, prog_type: u32, point: &AttachPoint| {
        let log = load_with_log(&pins.pins, name, prog_type, point.id);
        parse_stats(&log).unwrap_or_else(|| panic!("no stats in\n{log}"))
    };
    let native_stats = stats_of(PROG_XDP, BPF_PROG_TYPE_XDP, &native.point);
    let generic_stats = stats_of(PROG_XDP, BPF_PROG_TYPE_XDP, &generic.point);
    let tc_stats = stats_of(PROG_TC, BPF_PROG_TYPE_SCHED_CLS, &tc.point);

    let mut failures = Vec::new();
    eprintln!(
        "verifier margins on {} (limits: {INSN_LIMIT} processed insns, {STACK_LIMIT} bytes of stack; failing above {:.0}%):",
        support::sh("uname -r").trim(),
        MAX_SHARE * 100.0
    );
    for (what, point, stats) in [
        ("XDP native ", &native.point, &native_stats),
        ("XDP generic", &generic.point, &generic_stats),
        ("TC (TCX)   ", &tc.point, &tc_stats),
    ] {
        let insns = verified_insns(point.program_id);
        let stack = stats.stack_total();
        eprintln!(
            "  {what}: program {:>6}: verified_insns {insns:>6} ({:.2}% of the limit); stack {stack:>3} bytes ({:.1}%, per subprogram {:?}); own load processed {}",
            point.program_id,
            100.0 * insns as f64 / INSN_LIMIT as f64,
            100.0 * stack as f64 / STACK_LIMIT as f64,
            stats.stack,
            stats.processed,
        );
        if insns as f64 > MAX_SHARE * INSN_LIMIT as f64 {
            failures.push(format!("{what}: {insns} verified instructions"));
        }
        if stack as f64 > MAX_SHARE * STACK_LIMIT as f64 {
            failures.push(format!("{what}: {stack} bytes of stack"));
        }
        // Our own load is the same program against the same kind of maps:
        // the verifier must have walked it the same way.
        if stats.processed != insns {
            failures.push(format!(
                "{what}: the reload processed {} instructions, the attached program {insns}: the stack figure may not be this program's",
                stats.processed
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
