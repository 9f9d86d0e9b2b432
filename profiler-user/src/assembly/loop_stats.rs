//! Reads the kernel's per-loop busy-time histogram: percentiles, utilization.
use profiler_common::{histogram, LoopStats};

/// What the summary reports for one loop.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoopFigures {
    pub iterations: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    /// Busy share of the time the loop was observed (event-loop utilization).
    pub utilization: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub episodes: u64,
    /// Of `busy_ns`: asleep, and runnable but waiting for a CPU.
    pub blocked_ns: u64,
    pub runq_ns: u64,
}

/// Value at quantile `q` (0..=1): the midpoint of the bucket holding it, which
/// is within half a bucket width (≤ 3.2%) of every value in that bucket, and
/// never above the exact maximum.
pub fn quantile(buckets: &[u64], q: f64, max_ns: u64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let (lo, hi) = (histogram::bucket_lower(i), histogram::bucket_upper(i));
            let mid = if hi == u64::MAX {
                lo
            } else {
                lo + (hi - lo) / 2
            };
            return mid.min(max_ns);
        }
    }
    max_ns
}

impl LoopFigures {
    pub fn from_stats(s: &LoopStats) -> Self {
        let observed = s.busy_ns + s.idle_ns;
        LoopFigures {
            iterations: s.iterations,
            busy_ns: s.busy_ns,
            idle_ns: s.idle_ns,
            utilization: if observed == 0 {
                0.0
            } else {
                s.busy_ns as f64 / observed as f64
            },
            p50_ns: quantile(&s.buckets, 0.50, s.max_busy_ns),
            p90_ns: quantile(&s.buckets, 0.90, s.max_busy_ns),
            p99_ns: quantile(&s.buckets, 0.99, s.max_busy_ns),
            max_ns: s.max_busy_ns,
            episodes: s.episodes,
            blocked_ns: s.blocked_ns,
            runq_ns: s.runq_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(values: &[u64]) -> LoopStats {
        let mut s = LoopStats::ZERO;
        for &v in values {
            s.iterations += 1;
            s.busy_ns += v;
            s.max_busy_ns = s.max_busy_ns.max(v);
            s.buckets[histogram::bucket(v)] += 1;
        }
        s
    }

    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_are_within_5_percent_of_exact() {
        // A spread from 3 µs to 2 s, skewed like a real loop: mostly short.
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| 3_000 + (i * i * 37 + i * 7919) % 2_000_000_000 / (1 + i % 97))
            .collect();
        let s = stats_of(&values);
        values.sort_unstable();
        for q in [0.5, 0.9, 0.99] {
            let (got, want) = (quantile(&s.buckets, q, s.max_busy_ns), exact(&values, q));
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(
                err <= 0.05,
                "q{q}: got {got}, exact {want}, error {:.1}%",
                err * 100.0
            );
        }
        assert_eq!(LoopFigures::from_stats(&s).max_ns, *values.last().unwrap());
    }

    #[test]
    fn utilization_is_busy_over_observed() {
        let mut s = stats_of(&[10, 30]);
        s.idle_ns = 60;
        let f = LoopFigures::from_stats(&s);
        assert!((f.utilization - 0.4).abs() < 1e-9, "{}", f.utilization);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let f = LoopFigures::from_stats(&LoopStats::ZERO);
        assert_eq!((f.p50_ns, f.p99_ns, f.utilization), (0, 0, 0.0));
    }
}
