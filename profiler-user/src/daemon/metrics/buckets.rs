//! Prometheus buckets from the in-kernel log-linear histogram.
//!
//! The kernel counts busy times in buckets `[lower, upper)` whose edges are
//! 2^m + k·2^(m-4) ns: no round number of milliseconds is an edge. Prometheus
//! users want round `le` values (`le="0.05"` next to a 50 ms threshold), so the
//! mapping is **conservative**: the series `le="X"` counts the iterations in
//! every kernel bucket that ends at or below X, i.e. iterations shorter than
//! the largest kernel edge ≤ X. It never counts an iteration longer than X; it
//! may leave out iterations in the last ≤ 6.25% below X (the one kernel bucket
//! straddling X). So "slower than X" derived from it is never under-reported.
use profiler_common::histogram;

/// `le` values in seconds: 1 ms to 10 s, 1-2.5-5 steps.
pub const LE_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Kernel buckets below this index lie entirely at or below `le_ns`.
pub fn buckets_below(le_ns: u64) -> usize {
    // bucket(le) is the bucket containing le; all before it end at or below le.
    histogram::bucket(le_ns)
}

/// `(le, count in (previous le, le])` for `MetricEncoder::encode_histogram`,
/// ending with `+Inf`; the counts add up to the histogram's total.
pub fn prometheus_buckets(kernel: &[u64]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(LE_SECONDS.len() + 1);
    let mut from = 0;
    for le in LE_SECONDS {
        let to = buckets_below((le * 1e9).round() as u64).min(kernel.len());
        out.push((le, kernel[from..to].iter().sum()));
        from = to;
    }
    out.push((f64::INFINITY, kernel[from..].iter().sum()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_never_include_longer_iterations() {
        let values: Vec<u64> = (0..5000u64).map(|i| 200_000 + i * i * 517).collect();
        let mut kernel = vec![0u64; histogram::BUCKETS];
        for &v in &values {
            kernel[histogram::bucket(v)] += 1;
        }
        let mut cumulative = 0;
        for (le, n) in prometheus_buckets(&kernel) {
            cumulative += n;
            if le.is_infinite() {
                assert_eq!(cumulative, values.len() as u64);
                continue;
            }
            let le_ns = (le * 1e9) as u64;
            let at_most = values.iter().filter(|&&v| v <= le_ns).count() as u64;
            let well_below = values.iter().filter(|&&v| v * 16 < le_ns * 15).count() as u64;
            assert!(cumulative <= at_most, "le {le}: {cumulative} > {at_most}");
            assert!(
                cumulative >= well_below,
                "le {le}: {cumulative} < {well_below}"
            );
        }
    }

    #[test]
    fn every_le_maps_to_a_kernel_edge_within_6_25_percent() {
        for le in LE_SECONDS {
            let le_ns = (le * 1e9) as u64;
            let edge = histogram::bucket_lower(buckets_below(le_ns));
            assert!(
                edge <= le_ns && (le_ns - edge) * 16 <= le_ns,
                "{le}: edge {edge}"
            );
        }
    }
}
