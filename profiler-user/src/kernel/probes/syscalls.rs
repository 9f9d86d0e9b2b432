//! Which syscall probes time the event loop's polls: fentry where the kernel
//! allows it, else the per-syscall tracepoints (tracefs), else BTF raw
//! tracepoints on every syscall (the costly fallback, said to the user).
use aya::{
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf,
};

use super::{fentry, program, ProbeError};
use crate::kernel::startup::{Phase, Startup};

/// Where tracefs is looked for, in aya's order (the first non-empty one).
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Where loopbpf mounts tracefs when it is in neither place.
pub const TRACEFS_MOUNT_POINT: &str = "/sys/kernel/tracing";
/// Selects the syscall probes: `auto` (the default), `fentry`, `tracepoint` or `tp_btf`.
pub const SYSCALL_PROBES_ENV: &str = "LOOPBPF_SYSCALL_PROBES";

/// Classic tracepoints (category `syscalls`) of each syscall program.
const CLASSIC_SYSCALL_PROBES: [(&str, &[&str]); 4] = [
    (
        "poll_enter",
        &[
            "sys_enter_epoll_wait",
            "sys_enter_epoll_pwait",
            "sys_enter_epoll_pwait2",
        ],
    ),
    (
        "poll_exit",
        &[
            "sys_exit_epoll_wait",
            "sys_exit_epoll_pwait",
            "sys_exit_epoll_pwait2",
        ],
    ),
    ("close_enter", &["sys_enter_close"]),
    ("exit_group_enter", &["sys_enter_exit_group"]),
];
/// The fallback: BTF tracepoints that run on every syscall of the host.
const BTF_SYSCALL_PROBES: [(&str, &str); 2] =
    [("btf_sys_enter", "sys_enter"), ("btf_sys_exit", "sys_exit")];

/// Which programs watch the epoll wait, `close` and `exit_group` syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallProbes {
    /// fentry/fexit on the syscall handlers (`__x64_sys_epoll_pwait`, …):
    /// they run on those syscalls only and put no other syscall on a slow
    /// path. The kernel must allow ftrace function hooks.
    Fentry,
    /// Classic per-syscall tracepoints (`syscalls:sys_enter_epoll_pwait`, …):
    /// they run on those syscalls only. Found through tracefs.
    Tracepoint,
    /// BTF tracepoints `sys_enter`/`sys_exit`: they run on every syscall of
    /// the host, watched or not, and filter on its number.
    TpBtf,
}

impl SyscallProbes {
    pub fn as_str(self) -> &'static str {
        match self {
            SyscallProbes::Fentry => "fentry",
            SyscallProbes::Tracepoint => "tracepoint",
            SyscallProbes::TpBtf => "tp_btf",
        }
    }
}

/// What `LOOPBPF_SYSCALL_PROBES` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallProbesChoice {
    /// fentry/fexit, else the classic tracepoints, else the BTF ones (with
    /// a warning).
    Auto,
    /// These and no others: loopbpf fails if they cannot be attached.
    Only(SyscallProbes),
}

impl SyscallProbesChoice {
    pub fn parse(value: &str) -> Result<Self, ProbeError> {
        match value {
            "" | "auto" => Ok(SyscallProbesChoice::Auto),
            "fentry" => Ok(SyscallProbesChoice::Only(SyscallProbes::Fentry)),
            "tracepoint" => Ok(SyscallProbesChoice::Only(SyscallProbes::Tracepoint)),
            "tp_btf" => Ok(SyscallProbesChoice::Only(SyscallProbes::TpBtf)),
            other => Err(ProbeError::SyscallProbesChoice(other.to_string())),
        }
    }

    /// From `LOOPBPF_SYSCALL_PROBES`; unset means `auto`.
    pub fn from_env() -> Result<Self, ProbeError> {
        match std::env::var(SYSCALL_PROBES_ENV) {
            Ok(v) => Self::parse(v.trim()),
            Err(std::env::VarError::NotPresent) => Ok(SyscallProbesChoice::Auto),
            Err(std::env::VarError::NotUnicode(v)) => Err(ProbeError::SyscallProbesChoice(
                v.to_string_lossy().into_owned(),
            )),
        }
    }
}

/// The syscall probes attached, and why those.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallProbesInUse {
    pub probes: SyscallProbes,
    pub reason: String,
}

impl SyscallProbesInUse {
    /// One line for the log: which probes, what they cost, and why.
    pub fn describe(&self) -> String {
        match self.probes {
            SyscallProbes::Fentry => format!(
                "syscall probes: fentry/fexit on __x64_sys_epoll_* ({})",
                self.reason
            ),
            SyscallProbes::Tracepoint => format!(
                "syscall probes: per-syscall tracepoints syscalls:sys_{{enter,exit}}_epoll_* ({})",
                self.reason
            ),
            SyscallProbes::TpBtf => format!(
                "syscall probes: tp_btf sys_enter/sys_exit, which run on every syscall of the host (about twice what the per-syscall tracepoints add to each syscall: ~155 against ~75 ns on a 2-core VM), because {}",
                self.reason
            ),
        }
    }
}

/// Finds tracefs where aya looks for it, or mounts it at
/// `/sys/kernel/tracing`. Returns where it is and whether we mounted it.
fn ensure_tracefs() -> Result<(&'static str, bool), ProbeError> {
    // aya takes the first of these that exists and is not empty.
    let mounted = |p: &str| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    if let Some(p) = TRACEFS_PATHS.into_iter().find(|p| mounted(p)) {
        return Ok((p, false));
    }
    let target = std::ffi::CString::new(TRACEFS_MOUNT_POINT).expect("no NUL in a constant");
    let fstype = c"tracefs";
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::TracefsMount(std::io::Error::last_os_error()));
    }
    Ok((TRACEFS_MOUNT_POINT, true))
}

/// Loads and attaches the classic per-syscall tracepoint programs.
fn attach_classic_syscall_probes(
    ebpf: &mut Ebpf,
    startup: &mut Startup,
) -> Result<String, ProbeError> {
    let (tracefs, mounted_now) = ensure_tracefs()?;
    for (name, tracepoints) in CLASSIC_SYSCALL_PROBES {
        let prog: &mut TracePoint = program(ebpf, name)?;
        startup
            .time(Phase::Load(name), || prog.load())
            .map_err(|source| ProbeError::Program { name, source })?;
        let _attach = startup.timer(Phase::Attach);
        for &tracepoint in tracepoints {
            prog.attach("syscalls", tracepoint)
                .map_err(|source| ProbeError::TracePoint {
                    name,
                    tracepoint,
                    source,
                })?;
        }
    }
    Ok(if mounted_now {
        format!("tracefs was not mounted: loopbpf mounted it at {tracefs}")
    } else {
        format!("tracefs at {tracefs}")
    })
}

/// Undoes a partial `attach_classic_syscall_probes`: both sets at once would
/// see every poll twice.
fn unload_classic_syscall_probes(ebpf: &mut Ebpf) {
    for (name, _) in CLASSIC_SYSCALL_PROBES {
        if let Ok(prog) = program::<TracePoint>(ebpf, name) {
            // Not loaded (never got that far) is the only error, and fine.
            let _ = prog.unload();
        }
    }
}

fn attach_btf_syscall_probes(
    ebpf: &mut Ebpf,
    btf: &Btf,
    startup: &mut Startup,
) -> Result<(), ProbeError> {
    attach_btf_tracepoints(ebpf, btf, &BTF_SYSCALL_PROBES, startup)
}

pub(super) fn attach_btf_tracepoints(
    ebpf: &mut Ebpf,
    btf: &Btf,
    programs: &[(&'static str, &str)],
    startup: &mut Startup,
) -> Result<(), ProbeError> {
    for &(name, tracepoint) in programs {
        let prog: &mut BtfTracePoint = program(ebpf, name)?;
        startup
            .time(Phase::Load(name), || prog.load(tracepoint, btf))
            .and_then(|()| startup.time(Phase::Attach, || prog.attach().map(drop)))
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(())
}

/// Attaches the syscall probes `choice` asks for.
pub(super) fn attach_syscall_probes(
    ebpf: &mut Ebpf,
    btf: &Btf,
    choice: SyscallProbesChoice,
    startup: &mut Startup,
) -> Result<SyscallProbesInUse, ProbeError> {
    let (probes, reason) = match choice {
        SyscallProbesChoice::Only(SyscallProbes::TpBtf) => {
            attach_btf_syscall_probes(ebpf, btf, startup)?;
            let why = format!("{SYSCALL_PROBES_ENV}=tp_btf asks for them");
            (SyscallProbes::TpBtf, why)
        }
        SyscallProbesChoice::Only(SyscallProbes::Fentry) => {
            fentry::attach(ebpf, btf, startup)?;
            let why = format!("{SYSCALL_PROBES_ENV}=fentry asks for them");
            (SyscallProbes::Fentry, why)
        }
        SyscallProbesChoice::Only(SyscallProbes::Tracepoint) => {
            let why = attach_classic_syscall_probes(ebpf, startup)?;
            let why = format!("{why}; {SYSCALL_PROBES_ENV}=tracepoint");
            (SyscallProbes::Tracepoint, why)
        }
        SyscallProbesChoice::Auto => {
            let fentry = fentry::attach(ebpf, btf, startup);
            match fentry {
                Ok(()) => (SyscallProbes::Fentry, "the kernel allows them".to_string()),
                Err(refused) => {
                    fentry::unload(ebpf);
                    let refused = format!("fentry refused: {refused}");
                    match attach_classic_syscall_probes(ebpf, startup) {
                        Ok(why) => (SyscallProbes::Tracepoint, format!("{why}; {refused}")),
                        Err(e) => {
                            unload_classic_syscall_probes(ebpf);
                            attach_btf_syscall_probes(ebpf, btf, startup)?;
                            let why = format!(
                                "{e}; with tracefs mounted (mount -t tracefs tracefs {TRACEFS_MOUNT_POINT}) loopbpf uses the per-syscall tracepoints; {refused}"
                            );
                            (SyscallProbes::TpBtf, why)
                        }
                    }
                }
            }
        }
    };
    Ok(SyscallProbesInUse { probes, reason })
}
