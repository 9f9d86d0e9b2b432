// Builds the eBPF crate with aya-build (nightly, bpf-linker on PATH: `cargo xtask build`
// provides both) so the object can be embedded with include_bytes_aligned!.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).parent().unwrap();
    let ebpf_dir = root.join("profiler-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("profiler-common").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir: ebpf_dir.to_str().unwrap(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
