//! The kernel-side toolchain: nightly's rust-src (for `-Z build-std=core`) and bpf-linker.
//!
//! bpf-linker has no prebuilt binary we can fetch, so it is built from crates.io against the
//! libLLVM that the nightly toolchain already ships (see shared/toolchain.md). A bpf-linker
//! built against one nightly's libLLVM breaks when rustup replaces that nightly, so the cache
//! remembers the libLLVM file name it was built against and rebuilds when that changes.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Holds the libLLVM file name the cached bpf-linker was linked against.
const STAMP: &str = ".loopbpf-libllvm";

/// Ensures rust-src and bpf-linker; returns the directory holding `bpf-linker`, for PATH.
pub fn setup(cache: &Path) -> Result<PathBuf> {
    let meta = nightly_meta()?;
    ensure_rust_src(&meta.release)?;
    let sysroot = PathBuf::from(cmd::output(
        Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?);
    let so = libllvm_name(&sysroot)?;
    let prefix = cache.join("llvm");
    link_libllvm(&prefix.join("lib"), &sysroot.join("lib").join(&so))?;
    ensure_bpf_linker(cache, &prefix, &so, &meta.llvm_major)
}

struct NightlyMeta {
    release: String,
    llvm_major: String,
}

fn nightly_meta() -> Result<NightlyMeta> {
    let version = || {
        let mut c = Command::new("rustup");
        c.args(["run", NIGHTLY, "rustc", "-vV"]);
        c
    };
    let text = match cmd::probe(&mut version()) {
        Some(text) => text,
        None => {
            // A fresh machine may lack nightly; aya-build needs it for -Z build-std anyway.
            cmd::run(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            cmd::output(&mut version())?
        }
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("`rustc +nightly -vV` has no `{name}` line"))
    };
    let llvm = field("LLVM version:")?;
    Ok(NightlyMeta {
        release: field("release:")?,
        llvm_major: llvm.split('.').next().unwrap_or_default().to_string(),
    })
}

fn ensure_rust_src(release: &str) -> Result<()> {
    // Listing is local; `component add` would consult the network even when installed.
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        println!("rust-src: already installed for {NIGHTLY} ({release})");
    } else {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
        println!("rust-src: installed for {NIGHTLY} ({release})");
    }
    Ok(())
}

/// The versioned name (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`) is bpf-linker's DT_NEEDED.
fn libllvm_name(sysroot: &Path) -> Result<String> {
    let lib = sysroot.join("lib");
    let mut names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    names.sort();
    match names.pop() {
        Some(name) => Ok(name),
        None => bail!(
            "{} has no libLLVM.so.*: is the nightly toolchain complete?",
            lib.display()
        ),
    }
}

/// `libLLVM.so` is what bpf-linker's build links to; the versioned name is what its rpath
/// resolves at run time. Other libLLVM links are removed so that a bpf-linker built against an
/// older nightly cannot keep loading a stale library and pass the `--version` check.
fn link_libllvm(lib_dir: &Path, target: &Path) -> Result<()> {
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let so = target.file_name().context("libLLVM path")?;
    for entry in fs::read_dir(lib_dir)? {
        let name = entry?.file_name();
        let ours = name == "libLLVM.so" || name == so;
        if !ours && name.to_string_lossy().starts_with("libLLVM") {
            fs::remove_file(lib_dir.join(&name))?;
        }
    }
    for name in [std::ffi::OsStr::new("libLLVM.so"), so] {
        let link = lib_dir.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target) {
            continue;
        }
        // Swap by rename so a concurrent build never sees the link missing.
        let tmp = lib_dir.join(format!(".tmp-link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        symlink(target, &tmp)?;
        fs::rename(&tmp, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn ensure_bpf_linker(cache: &Path, prefix: &Path, so: &str, llvm_major: &str) -> Result<PathBuf> {
    let root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}"));
    let bin_dir = root.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let stamp = root.join(STAMP);
    let stamped = fs::read_to_string(&stamp).ok();
    let stamp_ok = stamped.as_deref().map(str::trim).is_none_or(|s| s == so);
    let expected = format!("bpf-linker {BPF_LINKER_VERSION}");
    if linker.is_file() && stamp_ok {
        // A bpf-linker whose libLLVM went away fails to even start, so running it is the check.
        if cmd::probe(Command::new(&linker).arg("--version")).as_deref() == Some(&*expected) {
            if stamped.is_none() {
                // Cached before stamps existed; it runs against the current library, so keep it.
                fs::write(&stamp, format!("{so}\n"))?;
            }
            println!(
                "bpf-linker: cached {expected} at {} (linked to {so})",
                linker.display()
            );
            return Ok(bin_dir);
        }
    }
    let start = Instant::now();
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", prefix)
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .arg("--force")
            .arg("--root")
            .arg(&root),
    )?;
    let got = cmd::output(Command::new(&linker).arg("--version"))?;
    if got != expected {
        bail!(
            "{} --version printed {got:?}, expected {expected:?}",
            linker.display()
        );
    }
    fs::write(&stamp, format!("{so}\n"))?;
    println!(
        "bpf-linker: installed {expected} at {} (linked to {so}) in {:.0?}",
        linker.display(),
        start.elapsed()
    );
    Ok(bin_dir)
}
