//! Boots a guest under qemu and follows its serial console: everything the
//! guest prints is echoed, and the line `END_MARKER <status>` its /init
//! prints last is the result.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest's last line before it powers off: `loopbpf-vm-test: exit N`.
pub const END_MARKER: &str = "loopbpf-vm-test: exit";

/// The kernel command line's init for the busybox initramfs.
pub const BUSYBOX_INIT: &str = "rdinit=/init";

/// How the guest's CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Pure emulation, single-threaded: works everywhere, JIT code ~100x slower.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mb: u32,
    /// Kernel command line after the console settings: the init to run.
    pub append: &'a str,
    /// Prefix of each echoed console line.
    pub tag: String,
    pub timeout: Duration,
}

/// What the guest printed and how it ended.
pub struct Outcome {
    pub lines: Vec<String>,
    /// The status after `END_MARKER`; None if the guest never got there.
    pub status: Option<i32>,
    pub took: Duration,
}

impl Boot<'_> {
    pub fn run(&self) -> Result<Outcome> {
        let mut c = Command::new("qemu-system-x86_64");
        match self.accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            // One host thread for all vCPUs: multi-threaded TCG crashed the
            // 6.12 guest at boot (an int3 from kernel text patching hit on
            // the other vCPU), and one thread leaves the shared host a core.
            Accel::Tcg => c.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        };
        c.args(["-m", &self.memory_mb.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            // panic=-1 and -no-reboot: a guest kernel panic ends qemu.
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off {}",
                self.append
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        eprintln!("$ {}", crate::cmd::show(&c));
        let start = Instant::now();
        let mut child = c
            .spawn()
            .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                // The console may carry \r and stray bytes: keep what is text.
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let deadline = start + self.timeout;
        let mut lines = Vec::new();
        let mut status = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => {
                    println!("{} {line}", self.tag);
                    if let Some(rest) = line.trim().strip_prefix(END_MARKER) {
                        status = rest.trim().parse().ok();
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    println!(
                        "{} (no end after {:?}: stopping the guest)",
                        self.tag, self.timeout
                    );
                    stop(&mut child);
                    break;
                }
                // qemu exited (the guest powered off, or qemu failed).
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let exit = wait_a_little(&mut child)?;
        if status.is_none() && exit.is_some_and(|s| !s.success()) {
            println!("{} qemu exited with {}", self.tag, exit.unwrap_or_default());
        }
        Ok(Outcome {
            lines,
            status,
            took: start.elapsed(),
        })
    }
}

/// qemu powers off with the guest; give it a moment, then stop it.
fn wait_a_little(child: &mut Child) -> Result<Option<std::process::ExitStatus>> {
    for _ in 0..100 {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
    Ok(None)
}

fn stop(child: &mut Child) {
    // Only the qemu this process started, by its handle.
    let _ = child.kill();
    let _ = child.wait();
}

/// Does a KVM guest boot here? Nested KVM can exist and still hang at boot
/// (as on the machine this was written on), so a tiny guest that only prints
/// the end marker is tried with a short timeout.
pub fn kvm_works(vmlinuz: &Path, probe_initrd: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let boot = Boot {
        vmlinuz,
        initrd: probe_initrd,
        accel: Accel::Kvm,
        cpus: 1,
        memory_mb: 256,
        append: BUSYBOX_INIT,
        tag: "[kvm probe]".into(),
        timeout: Duration::from_secs(30),
    };
    let outcome = boot.run()?;
    Ok(outcome.status == Some(0))
}

/// Fails unless the guest ran to its end marker with status 0.
pub fn check(kernel: &str, outcome: &Outcome) -> Result<()> {
    match outcome.status {
        Some(0) => Ok(()),
        Some(n) => bail!("kernel {kernel}: the guest's tests failed (status {n})"),
        None => bail!(
            "kernel {kernel}: the guest never reached its end ({} console lines, {:?}); see the log above",
            outcome.lines.len(),
            outcome.took
        ),
    }
}
