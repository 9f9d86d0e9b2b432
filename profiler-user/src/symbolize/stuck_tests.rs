//! The watchdog with a real worker thread: hung reads, slow work, runaway
//! work and requests queued behind a stuck one.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tests::{native_addr, user_stack};
use super::*;

/// Perf maps of pid 1 that never come back until the returned sender is
/// dropped (a hung FUSE read: the worker sleeps); other pids have none.
fn hanging_pid_1(policy: Policy) -> (Symbolizer, Sender<()>) {
    let (release, stalled) = channel::<()>();
    let stalled = Mutex::new(stalled);
    let symbolizer = Symbolizer::start_with(
        Arc::new(move |pid| {
            if pid == 1 {
                let _ = stalled.lock().unwrap().recv();
            }
            PerfMap::new("/nonexistent/perf.map")
        }),
        policy,
    )
    .unwrap();
    (symbolizer, release)
}

/// Perf maps of pid 1 take `work` of computing (a huge symbol table under
/// emulation: the worker's CPU clock moves all along).
fn computing_pid_1(policy: Policy, work: Duration) -> Symbolizer {
    Symbolizer::start_with(
        Arc::new(move |pid| {
            if pid == 1 {
                let until = Instant::now() + work;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            PerfMap::new("/nonexistent/perf.map")
        }),
        policy,
    )
    .unwrap()
}

fn timed_out(result: &Result<Symbolized, SymbolizeError>) -> Option<Stuck> {
    match result {
        Err(SymbolizeError::TimedOut { pid: 1, stuck }) => Some(*stuck),
        _ => None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_process_is_retried_after_a_backoff_then_given_up() {
    let (symbolizer, release) = hanging_pid_1(Policy {
        stall: Duration::from_secs(1),
        budget: Duration::from_secs(60),
        backoff: Duration::from_secs(1),
        max_strikes: 2,
    });
    let started = Instant::now();
    let stuck = symbolizer.symbolize(1, vec![user_stack(&[0x1])]).await;
    assert!(
        matches!(timed_out(&stuck), Some(Stuck::NoProgress(_))),
        "{stuck:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "noticed late");
    // Benched for its backoff: not asked, answered at once.
    let benched = symbolizer.symbolize(1, vec![user_stack(&[0x1])]).await;
    assert!(
        matches!(benched, Err(SymbolizeError::Skipped { pid: 1 })),
        "{benched:?}"
    );
    // A fresh worker serves other processes.
    let other = symbolizer
        .symbolize(std::process::id(), vec![user_stack(&[native_addr()])])
        .await
        .unwrap();
    assert_eq!(other.stacks[0][0].kind, FrameKind::Native);
    // Retried after it, with the stall window doubled; the second strike
    // is the last.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let again = symbolizer.prepare(1).await;
    assert!(timed_out(&again).is_some(), "{again:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "limits did not grow"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gave_up = symbolizer.symbolize(1, vec![user_stack(&[0x1])]).await;
    assert!(
        matches!(gave_up, Err(SymbolizeError::GaveUp { pid: 1 })),
        "{gave_up:?}"
    );
    assert_eq!(
        symbolizer.health(),
        SymbolizerHealth {
            restarts: 2,
            timeouts: 2,
            retries: 1,
            gave_up: 1,
            skipped: 2,
            ..SymbolizerHealth::default()
        }
    );
    // Once it exits (forgotten), the pid starts clean.
    drop(release);
    symbolizer.forget(1);
    let fresh = symbolizer.symbolize(1, vec![user_stack(&[0x1])]).await;
    assert!(fresh.is_ok(), "{fresh:?}");
}

#[test]
fn slow_but_computing_work_is_not_abandoned() {
    let symbolizer = computing_pid_1(
        Policy {
            stall: Duration::from_millis(500),
            budget: Duration::from_secs(60),
            ..Policy::DEFAULT
        },
        Duration::from_secs(2),
    );
    // Four stall windows long; the worker computes all along.
    let slow = symbolizer.symbolize_blocking(1, vec![user_stack(&[0x1])]);
    assert!(slow.is_ok(), "{slow:?}");
    assert_eq!(symbolizer.health(), SymbolizerHealth::default());
}

#[test]
fn runaway_work_gets_a_bigger_budget_on_retry() {
    let symbolizer = computing_pid_1(
        Policy {
            stall: Duration::from_millis(500),
            budget: Duration::from_secs(1),
            backoff: Duration::from_millis(100),
            max_strikes: 3,
        },
        Duration::from_millis(1500),
    );
    let first = symbolizer.symbolize_blocking(1, Vec::new());
    assert!(
        matches!(timed_out(&first), Some(Stuck::OverBudget(_))),
        "{first:?}"
    );
    std::thread::sleep(Duration::from_millis(150));
    // Twice the budget: the same work now fits.
    let retry = symbolizer.symbolize_blocking(1, Vec::new());
    assert!(retry.is_ok(), "{retry:?}");
    let health = symbolizer.health();
    assert_eq!((health.timeouts, health.retries, health.gave_up), (1, 1, 0));
}

#[test]
fn a_request_queued_behind_a_stuck_one_is_served_by_the_replacement() {
    let (symbolizer, release) = hanging_pid_1(Policy {
        stall: Duration::from_secs(1),
        ..Policy::DEFAULT
    });
    let stuck = {
        let symbolizer = symbolizer.clone();
        std::thread::spawn(move || symbolizer.symbolize_blocking(1, Vec::new()))
    };
    // Queued behind pid 1's request on the same worker.
    std::thread::sleep(Duration::from_millis(200));
    let behind = symbolizer
        .symbolize_blocking(std::process::id(), vec![user_stack(&[native_addr()])])
        .expect("served by the replacement worker");
    assert_eq!(behind.stacks[0][0].kind, FrameKind::Native);
    let stuck = stuck.join().unwrap();
    assert!(timed_out(&stuck).is_some(), "{stuck:?}");
    // Only pid 1 was struck.
    let health = symbolizer.health();
    assert_eq!(
        (health.timeouts, health.restarts, health.skipped),
        (1, 1, 0)
    );
    drop(release);
}
