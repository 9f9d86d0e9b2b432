//! Can this process load BPF programs and open perf events? Checked up front so
//! the user gets one line naming the missing capability, not an EPERM from
//! deep inside the loader.
use std::fs;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("missing capability {0}: loopbpf loads eBPF programs and opens perf events; run it as root (sudo loopbpf …) or grant CAP_BPF and CAP_PERFMON")]
    Missing(&'static str),
    #[error("reading /proc/self/status failed: {0}")]
    Status(#[source] std::io::Error),
}

fn effective_caps() -> Result<u64, PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Status)?;
    Ok(parse_cap_eff(&status).unwrap_or(0))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing(caps: u64) -> Option<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    if !has(CAP_BPF) {
        return Some("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        return Some("CAP_PERFMON");
    }
    None
}

pub fn check() -> Result<(), PrivilegeError> {
    match missing(effective_caps()?) {
        Some(cap) => Err(PrivilegeError::Missing(cap)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_bpf_plus_perfmon_is_enough() {
        assert_eq!(missing(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
    }

    #[test]
    fn the_first_missing_capability_is_named() {
        assert_eq!(missing(0), Some("CAP_BPF"));
        assert_eq!(missing(1 << CAP_BPF), Some("CAP_PERFMON"));
    }

    #[test]
    fn cap_eff_is_read_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }
}
