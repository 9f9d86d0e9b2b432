//! The agent's own cost, for the conventional `process_*` series every
//! Prometheus exporter has: CPU from getrusage (all threads), resident memory
//! from /proc/self/status.
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub start_unix_seconds: f64,
}

impl Usage {
    /// Unknown figures are 0 rather than an error: a scrape must not fail.
    pub fn read(started: Instant) -> Usage {
        // SAFETY: getrusage writes one rusage into the zeroed struct we own.
        let cpu_seconds = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0 {
                let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
                t(ru.ru_utime) + t(ru.ru_stime)
            } else {
                0.0
            }
        };
        let rss_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
                kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
            .map_or(0, |kb| kb * 1024);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Usage {
            cpu_seconds,
            rss_bytes,
            start_unix_seconds: now - started.elapsed().as_secs_f64(),
        }
    }
}
