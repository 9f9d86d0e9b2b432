//! What `cargo xtask dist` ships, used the way an operator would: the .deb
//! installed with dpkg on this machine, the static binary run with no Rust
//! toolchain on PATH against a real Node process.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::daemon::node_target;
use integration_tests::{dist_dir, loopbpf_bin, Process};

/// Only system directories: no ~/.cargo/bin, no rustup.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "loopbpf"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

/// Purges the package however the test ends: this machine is shared.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "loopbpf"]).output();
    }
}

fn the_deb(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}", dir.display()))
}

#[test]
fn deb_installs_documents_verifies_and_purges_cleanly() {
    let deb = the_deb(&dist_dir());
    assert!(
        !installed(),
        "a loopbpf package is already installed here: not touching it"
    );
    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&deb));

    let version = text(&run(Command::new("/usr/bin/loopbpf").arg("--version")));
    assert_eq!(
        version.trim(),
        format!("loopbpf {}", env!("CARGO_PKG_VERSION"))
    );
    for page in ["loopbpf", "loopbpf-daemon"] {
        let man = text(&run(Command::new("man")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")));
        assert!(
            man.contains("--threshold") && (page == "loopbpf" || man.contains("--config")),
            "man {page}:\n{man}"
        );
    }
    for f in [
        "/usr/share/bash-completion/completions/loopbpf",
        "/usr/share/zsh/vendor-completions/_loopbpf",
        "/usr/share/fish/vendor_completions.d/loopbpf.fish",
        "/usr/share/doc/loopbpf/LICENSE-MIT",
        "/usr/share/doc/loopbpf/LICENSE-APACHE",
        "/usr/share/doc/loopbpf/copyright",
        "/usr/share/loopbpf/grafana-dashboard.json",
        "/usr/share/loopbpf/prometheus-rules.yml",
        "/usr/share/loopbpf/daemonset.yaml",
    ] {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/loopbpf").unwrap();
    assert!(bash.contains("--threshold"), "bash completion:\n{bash}");
    let conffiles = text(&run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Conffiles}",
        "loopbpf",
    ])));
    assert!(
        conffiles.contains("/etc/loopbpf/loopbpf.toml"),
        "conffiles: {conffiles}"
    );

    // The installed unit, with its man pages now present: verify checks
    // ExecStart's binary and Documentation=.
    let unit = "/usr/lib/systemd/system/loopbpf.service";
    let unit_text = std::fs::read_to_string(unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/loopbpf daemon"),
        "{unit_text}"
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", unit])
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("loopbpf")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {unit}: {}\n{stderr}",
        out.status
    );
    if Path::new("/run/systemd/system").is_dir() {
        // Installed, not enabled, not started: the operator decides.
        for (query, not) in [("is-enabled", "enabled"), ("is-active", "active")] {
            let state = Command::new("systemctl")
                .args([query, "loopbpf.service"])
                .output()
                .map(|o| text(&o))
                .unwrap_or_default();
            assert_ne!(state.trim(), not, "systemctl {query} loopbpf after dpkg -i");
        }
    }

    run(Command::new("dpkg").args(["--purge", "loopbpf"]));
    assert!(!installed(), "loopbpf still installed after dpkg --purge");
    for gone in [
        "/usr/bin/loopbpf",
        unit,
        "/etc/loopbpf/loopbpf.toml",
        "/usr/share/man/man1/loopbpf.1.gz",
        "/usr/share/loopbpf",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}

/// Whether an ELF64 file has a PT_INTERP program header (asks for ld.so).
fn has_interpreter(elf: &[u8]) -> bool {
    let at = |o: usize, n: usize| elf.get(o..o + n).map(|b| b.to_vec());
    let le = |b: Vec<u8>| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64);
    let (Some(phoff), Some(size), Some(count)) = (at(0x20, 8), at(0x36, 2), at(0x38, 2)) else {
        return true;
    };
    let (phoff, size) = (le(phoff) as usize, le(size) as usize);
    (0..le(count) as usize).any(|i| at(phoff + i * size, 4).map(le) == Some(3))
}

#[test]
fn static_binary_runs_without_a_toolchain_and_reports_a_block() {
    let bin = dist_dir().join("loopbpf");
    // loopbpf_bin() checks we are root, as the kernel part needs.
    let _ = loopbpf_bin();
    let elf = std::fs::read(&bin).unwrap();
    assert!(elf.starts_with(b"\x7fELF"), "{} is not ELF", bin.display());
    assert!(
        !has_interpreter(&elf),
        "{} needs a dynamic loader",
        bin.display()
    );
    for dir in SYSTEM_PATH.split(':') {
        for tool in ["cargo", "rustc", "rustup"] {
            assert!(
                !Path::new(dir).join(tool).exists(),
                "{dir}/{tool} exists: the test would not prove the binary needs no toolchain"
            );
        }
    }

    let mut node = node_target(20);
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("PATH", SYSTEM_PATH)
        .args([
            "--pid",
            &node.pid().to_string(),
            "--json",
            "-d",
            "20s",
            "-t",
            "50ms",
        ])
        .arg("-o")
        .arg(out.path());
    let mut loopbpf = Process::spawn("static loopbpf", &mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    if let Err(e) = loopbpf.wait_for_line(deadline, "ready", |l| l.contains("\"ready\"")) {
        panic!("{e}:\n{}", loopbpf.describe());
    }
    node.write_line("block 300").unwrap();
    let episode = loopbpf.wait_for_line(Instant::now() + Duration::from_secs(15), "episode", |l| {
        // Each line is held to the JSON contract as it comes.
        integration_tests::schema::loopbpf_line(l)
            .unwrap_or_else(|e| panic!("static loopbpf: {e}"))
            .is_some_and(|v| {
                v["type"] == "episode" && v["duration_ms"].as_f64().is_some_and(|ms| ms >= 250.0)
            })
    });
    loopbpf.interrupt();
    let _ = loopbpf.wait_exit(Instant::now() + Duration::from_secs(15));
    if let Err(e) = episode {
        panic!(
            "the static binary reported no episode of the 300 ms block: {e}\n{}",
            loopbpf.describe()
        );
    }
}
