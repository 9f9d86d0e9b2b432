//! The two clocks loopbpf reads: CLOCK_MONOTONIC, the kernel's timestamps
//! on every record, and the wall clock that dates what is shown and stored.
use std::time::{SystemTime, UNIX_EPOCH};

/// Converts CLOCK_MONOTONIC (the kernel's timestamps) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        WallClock {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    /// A clock whose CLOCK_REALTIME − CLOCK_MONOTONIC was measured before.
    pub fn with_offset(realtime_minus_monotonic_ns: i128) -> Self {
        WallClock {
            realtime_minus_monotonic_ns,
        }
    }

    /// Nanoseconds since the epoch of a monotonic timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i64 {
        (monotonic_ns as i128 + self.realtime_minus_monotonic_ns).clamp(0, i64::MAX as i128) as i64
    }

    /// `HH:MM:SS.mmm` UTC of a monotonic timestamp.
    pub fn format(&self, monotonic_ns: u64) -> String {
        let real_ms =
            ((monotonic_ns as i128 + self.realtime_minus_monotonic_ns) / 1_000_000).max(0) as u64;
        let day_ms = real_ms % 86_400_000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            day_ms / 3_600_000,
            day_ms / 60_000 % 60,
            day_ms / 1000 % 60,
            day_ms % 1000
        )
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_formats_now_as_a_time_of_day() {
        let c = WallClock::now();
        let s = c.format(monotonic_ns());
        assert_eq!(s.len(), 12, "{s}");
        assert_eq!(&s[2..3], ":");
    }
}
