//! How big the EVENTS ring buffer must be: sized at start from what it must
//! hold between two drains, not fixed at the largest case. Its pages are
//! mapped into loopbpf twice (the kernel maps the data area twice so records
//! never wrap), so every byte of it costs two in RSS once written.
//!
//! What it must hold: samples of every CPU at the sampling frequency (one
//! sample per CPU per tick at most, ~18.5 KiB each with the stack copy) for
//! [`HOLD`], two drain periods (the drain runs every 100 ms; one late drain
//! must not lose data). Off-CPU stacks (the same size) come at most once per
//! time a busy loop thread leaves the CPU for over 200 µs, episodes are 56 B:
//! [`MIN_BYTES`] holds ~110 of those between two drains even with sampling
//! off. The kernel wants a power of two.
//!
//! One process must not take it all: off-CPU stacks come as often as a busy
//! loop thread sleeps (a thread sleeping 0.3 ms at a time sends ~3,000 a
//! second, 55 MB), and episodes and threadpool events as often as iterations
//! end. So each process has a budget of [`process_budget`] bytes of those
//! records per [`BUDGET_WINDOW`] (one drain period), enforced in the kernel,
//! and what exceeds it is dropped and counted (`*_budget` in
//! `loopbpf_kernel_dropped_total`). Samples are not charged: they come once
//! per CPU per tick for the whole host, whichever process runs, and the ring
//! holds two drain periods of them, so they fill at most half of it between
//! two drains. A process's window opens at its first record after the last
//! one ended, so one drain period sees at most two windows of it: a quarter
//! of the ring. Samples and two processes at their full budget fit between
//! two drains.
use std::time::Duration;

use profiler_common::{OffCpuEvent, SampleEvent};

/// Drained every 100 ms (`run::DRAIN_EVERY`); room for one late drain.
pub const HOLD: Duration = Duration::from_millis(200);
/// Room for off-CPU stacks and episodes with sampling off or slow.
pub const MIN_BYTES: u64 = 2 << 20;
/// Beyond this (many CPUs at a high frequency), a full ring buffer shows in
/// the loss counters rather than in loopbpf's memory.
pub const MAX_BYTES: u64 = 64 << 20;
/// A process's budget is counted per drain period (`limits::DRAIN_EVERY`).
pub const BUDGET_WINDOW: Duration = crate::limits::DRAIN_EVERY;
/// Each record carries an 8-byte header in the ring buffer.
const RECORD_HEADER: u64 = 8;

/// The largest record: a stack sample or an off-CPU stack.
pub fn record_bytes() -> u64 {
    let largest = size_of::<SampleEvent>().max(size_of::<OffCpuEvent>()) as u64;
    // The kernel rounds each record up to 8 bytes.
    (largest + RECORD_HEADER).next_multiple_of(8)
}

/// The ring buffer's size for `cpus` CPUs sampled at `frequency_hz`.
pub fn events_bytes(cpus: u64, frequency_hz: u64) -> u64 {
    let per_hold = cpus
        .saturating_mul(frequency_hz)
        .saturating_mul(record_bytes())
        .saturating_mul(HOLD.as_millis() as u64)
        / 1000;
    per_hold
        .clamp(MIN_BYTES, MAX_BYTES)
        .checked_next_power_of_two()
        .unwrap_or(MAX_BYTES)
        .min(MAX_BYTES)
}

/// Bytes of off-CPU stacks, episodes and threadpool events one process may
/// send per [`BUDGET_WINDOW`]: an eighth of the ring of `ring_bytes`. With the
/// smallest ring (2 MiB) that is 14 off-CPU stacks per 100 ms, or 4,600
/// episodes; a loop thread blocking longer than `OFF_CPU_MIN_NS` more often
/// keeps exact blocked and run-queue totals (kept in the kernel) but loses the
/// excess intervals' stacks.
pub fn process_budget(ring_bytes: u64) -> u64 {
    ring_bytes / 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_from_cpus_and_frequency() {
        let record = record_bytes();
        // The README's sizing table is worked out from this figure.
        assert_eq!(record, 18_520);
        // This VM: 2 CPUs. 199 Hz: 2 x 199 x 0.2 s = 80 records, 1.5 MB.
        assert_eq!(events_bytes(2, 199), 2 << 20);
        // 999 Hz: 400 records, 7.4 MB.
        assert_eq!(events_bytes(2, 999), 8 << 20);
        assert_eq!(events_bytes(2, 0), MIN_BYTES);
        assert_eq!(events_bytes(16, 199), 16 << 20);
        assert_eq!(events_bytes(1024, 10_000), MAX_BYTES);
        for (cpus, hz) in [(1, 1), (3, 333), (96, 999), (2, 10_000)] {
            let bytes = events_bytes(cpus, hz);
            assert!(bytes.is_power_of_two(), "{cpus} x {hz}: {bytes}");
            let needed = cpus * hz * record * HOLD.as_millis() as u64 / 1000;
            assert!(bytes >= needed.min(MAX_BYTES), "{cpus} x {hz}: {bytes}");
        }
    }

    #[test]
    fn samples_and_two_processes_at_their_budget_fit_between_two_drains() {
        for (cpus, hz) in [(1, 1), (2, 199), (2, 999), (16, 199), (96, 999)] {
            let ring = events_bytes(cpus, hz);
            let samples = (cpus * hz * record_bytes() * BUDGET_WINDOW.as_millis() as u64 / 1000)
                .min(ring / 2);
            // At most two windows of each process fall in one drain period.
            let floods = 2 * 2 * process_budget(ring);
            assert!(samples + floods <= ring, "{cpus} x {hz}: {ring}");
            // And the budget holds a handful of the largest records.
            assert!(process_budget(ring) >= 10 * record_bytes(), "{ring}");
        }
    }
}
