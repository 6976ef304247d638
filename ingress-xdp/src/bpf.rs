//! The bpf(2) commands aya 0.14 does not expose, made directly: opening
//! pins, reading link and map info, batched map reads, a read-only mapping
//! of an mmapable array, and replacing a link's program in place.
//!
//! Each error names the command and the object it was made on.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_QUERY: libc::c_long = 16;

/// `union bpf_attr` is at most this big for the commands used here; the
/// kernel accepts a larger, zero-filled buffer.
const ATTR_LEN: usize = 128;

fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of the announced length; every
    // pointer inside it is valid for the kernel to read or write.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_LEN) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(attr: &mut [u8; ATTR_LEN], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; ATTR_LEN], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Opens a pinned object (map, program or link): BPF_OBJ_GET.
pub fn obj_get(pin: &Path) -> Result<OwnedFd> {
    let c_path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; ATTR_LEN];
    put_u64(&mut attr, 0, c_path.as_ptr() as u64);
    let fd =
        bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("BPF_OBJ_GET {}", pin.display()))?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program by id (to hold it, or put it back on a link): BPF_PROG_GET_FD_BY_ID.
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a link says of itself (struct bpf_link_info, the part we read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// The interface of an XDP or TCX link; 0 once the kernel detached it
    /// because the interface went away.
    pub ifindex: u32,
}

pub fn link_info(fd: BorrowedFd<'_>, what: &Path) -> Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the per-type
    // union, whose first u32 is the ifindex for both xdp and tcx links.
    let mut info = [0u64; 16];
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, (info.len() * 8) as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD on {}", what.display()))?;
    Ok(LinkInfo {
        id: (info[0] >> 32) as u32,
        prog_id: (info[1] & 0xFFFF_FFFF) as u32,
        ifindex: (info[2] & 0xFFFF_FFFF) as u32,
    })
}

/// Info of the link pinned at `pin`.
pub fn pinned_link_info(pin: &Path) -> Result<LinkInfo> {
    let fd = obj_get(pin)?;
    link_info(fd.as_fd(), pin)
}

/// Puts `new_prog` on the link pinned at `pin` in one step (BPF_LINK_UPDATE):
/// the interface is never without a program. With `expected_old`, the
/// kernel refuses (EPERM) if the link holds another program by then.
pub fn link_update(
    pin: &Path,
    new_prog: BorrowedFd<'_>,
    expected_old: Option<BorrowedFd<'_>>,
) -> Result<()> {
    const BPF_F_REPLACE: u32 = 1 << 2;
    let link = obj_get(pin)?;
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, link.as_raw_fd() as u32);
    put_u32(&mut attr, 4, new_prog.as_raw_fd() as u32);
    if let Some(old) = expected_old {
        put_u32(&mut attr, 8, BPF_F_REPLACE);
        put_u32(&mut attr, 12, old.as_raw_fd() as u32);
    }
    bpf(BPF_LINK_UPDATE, &mut attr)
        .with_context(|| format!("BPF_LINK_UPDATE on {}", pin.display()))?;
    Ok(())
}

/// Every (key, value) of a map in as few syscalls as the kernel allows
/// (BPF_MAP_LOOKUP_BATCH), as raw bytes. `value_len` is what the kernel
/// copies per element: for per-CPU maps, the value rounded up to 8 bytes
/// times the possible CPUs.
pub fn lookup_batch(
    map: BorrowedFd<'_>,
    key_len: usize,
    value_len: usize,
    max_entries: u32,
    what: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut chunk = max_entries.clamp(1, 8192) as usize;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    // Batch tokens: a u32 bucket (hash) or the last key (array, 4 bytes).
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    loop {
        let done = keys.len() / key_len.max(1);
        let (kstart, vstart) = (keys.len(), values.len());
        keys.resize(kstart + chunk * key_len, 0);
        values.resize(vstart + chunk * value_len, 0);
        let mut attr = [0u8; ATTR_LEN];
        put_u64(
            &mut attr,
            0,
            if first { 0 } else { token_in.as_ptr() as u64 },
        );
        put_u64(&mut attr, 8, token_out.as_mut_ptr() as u64);
        put_u64(&mut attr, 16, keys[kstart..].as_mut_ptr() as u64);
        put_u64(&mut attr, 24, values[vstart..].as_mut_ptr() as u64);
        put_u32(&mut attr, 32, chunk as u32);
        put_u32(&mut attr, 36, map.as_raw_fd() as u32);
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes")) as usize;
        keys.truncate(kstart + got * key_len);
        values.truncate(vstart + got * value_len);
        match res {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values)),
            // A hash bucket holds more elements than the chunk: grow it.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("BPF_MAP_LOOKUP_BATCH on {what} (after {done} elements)")
                });
            }
        }
        token_in = token_out;
        first = false;
    }
}

/// The plain-data records packed in `bytes` (a batch's keys or values),
/// read unaligned.
pub fn records<T: aya::Pod>(bytes: &[u8]) -> impl Iterator<Item = T> + '_ {
    bytes.chunks_exact(size_of::<T>()).map(|c| {
        // SAFETY: T is Pod (#[repr(C)], every bit pattern valid) and the
        // chunk holds exactly one T; read_unaligned needs no alignment.
        unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) }
    })
}

/// A read-only mapping of a BPF_F_MMAPABLE array's values, unmapped on drop.
/// The programs and map updates write the same memory, so reads are live.
pub struct MappedArray {
    ptr: *mut libc::c_void,
    mapped_bytes: usize,
    stride: usize,
    entries: usize,
}

// SAFETY: the mapping is read-only from our side and owned by this value.
unsafe impl Send for MappedArray {}
// SAFETY: shared access only reads, with volatile loads.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    pub fn new(map: BorrowedFd<'_>, value_size: usize, entries: usize, what: &str) -> Result<Self> {
        // Array elements are rounded up to 8 bytes.
        let stride = value_size.div_ceil(8) * 8;
        let len = stride * entries;
        if len == 0 {
            bail!("mapping {what}: empty array");
        }
        // SAFETY: a fresh read-only shared mapping of the map's fd; the
        // kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of {what} (is it BPF_F_MMAPABLE?)"));
        }
        Ok(Self {
            ptr,
            mapped_bytes: len,
            stride,
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The value at `index`, read once (the data plane's view may change
    /// right after).
    pub fn get<T: Copy>(&self, index: usize) -> T {
        assert!(index < self.entries && size_of::<T>() <= self.stride);
        // SAFETY: in bounds of the mapping (checked above); values are
        // 8-aligned and T is plain data of at most `stride` bytes.
        unsafe {
            std::ptr::read_volatile((self.ptr as *const u8).add(index * self.stride) as *const T)
        }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.mapped_bytes) };
    }
}

/// Loads (and at once drops) the smallest XDP program, `return XDP_PASS`:
/// whether bpf(2) works here for this process at all (kernel support,
/// privileges, seccomp), asked the way `attach` will ask. Returns whether
/// the kernel JIT-compiled it (bpf_prog_info.jited_prog_len), which holds
/// in every network namespace, unlike net.core.bpf_jit_enable.
pub fn probe_xdp_load() -> Result<bool> {
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // r0 = 2 (XDP_PASS); exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    let fd =
        bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of a 2-instruction XDP program")?;
    // SAFETY: the kernel returned a new fd that we own; closing unloads it.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_prog_info: type, id, tag[8], jited_prog_len, ...
    let mut info = [0u8; 64];
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .context("BPF_OBJ_GET_INFO_BY_FD on the probe program")?;
    Ok(u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")) > 0)
}

/// Ids of the programs attached to TCX ingress of interface `ifindex` in the
/// calling thread's namespace (BPF_PROG_QUERY); none on kernels without TCX.
pub fn tcx_ingress_prog_ids(ifindex: u32) -> Result<Vec<u32>> {
    const BPF_TCX_INGRESS: u32 = 46;
    let mut ids = [0u32; 64];
    let mut attr = [0u8; ATTR_LEN];
    put_u32(&mut attr, 0, ifindex);
    put_u32(&mut attr, 4, BPF_TCX_INGRESS);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    match bpf(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => {}
        // Before 6.6 the kernel does not know the attach type.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("BPF_PROG_QUERY tcx ingress of ifindex {ifindex}"));
        }
    }
    let count = u32::from_ne_bytes(attr[24..28].try_into().expect("4 bytes")) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}
