//! Builds the eBPF programs (crate `ingress-xdp-ebpf`) for the bpf target with
//! the nightly toolchain and bpf-linker; `cargo xtask setup` installs both.

mod build_ebpf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    build_ebpf::build(
        "ingress-xdp-ebpf",
        "ingress-xdp",
        &std::path::Path::new(&manifest_dir).join("../ingress-xdp-ebpf"),
    )
}
