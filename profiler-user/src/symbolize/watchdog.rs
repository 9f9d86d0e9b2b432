//! When a symbolizer worker counts as stuck, and what then happens to the
//! process it was stuck on.
//!
//! A fixed wall-time limit cannot tell a hung read (a FIFO or a hung FUSE
//! file: the thread sleeps) from slow work (node's symbol table parsed under
//! emulation: the thread computes). So the worker's own CPU clock is its
//! progress: a request is stuck when the worker burnt no CPU for a `stall`
//! window, or when it outran a wall-time `budget` that bounds runaway work.
//! The process it was stuck on gets a strike, is benched for a backoff and
//! then retried with both limits doubled; after `max_strikes` it is given up
//! on until it exits (`forget`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::{Duration, Instant};

/// One request's fate: set once a watch abandons it as stuck.
pub(super) type Abandoned = Arc<OnceLock<Stuck>>;

/// The limits; production values in [`Policy::DEFAULT`], tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A request whose worker used no CPU for this long is stuck (first try).
    pub stall: Duration,
    /// Wall time a request may take however busy its worker is (first try).
    pub budget: Duration,
    /// How long a process is left unnamed after its first strike; doubles
    /// with each further strike.
    pub backoff: Duration,
    /// Strikes after which the process is not symbolized again.
    pub max_strikes: u32,
}

impl Policy {
    /// A hung read is noticed after 10 s; CPU-bound work may take a minute
    /// (node's ~100k symbols under TCG took over 10 s), then 2, 4 minutes on
    /// the retries 10 s, 20 s, 40 s later; the fourth strike gives up.
    pub const DEFAULT: Policy = Policy {
        stall: Duration::from_secs(10),
        budget: Duration::from_secs(60),
        backoff: Duration::from_secs(10),
        max_strikes: 4,
    };

    /// The (stall, budget) of a request for a process with `strikes`.
    fn limits(&self, strikes: u32) -> (Duration, Duration) {
        (grown(self.stall, strikes), grown(self.budget, strikes))
    }

    /// How often a waiter looks at the worker.
    pub(super) fn tick(&self) -> Duration {
        (self.stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// `base` doubled per strike (capped so it cannot overflow).
fn grown(base: Duration, strikes: u32) -> Duration {
    base.saturating_mul(1 << strikes.min(8))
}

/// Why a request was abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stuck {
    /// Its worker used no CPU for this long (a hung read).
    NoProgress(Duration),
    /// It ran this long, over its budget, while its worker kept computing.
    OverBudget(Duration),
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stuck::NoProgress(d) => write!(f, "made no progress for {:.1} s", d.as_secs_f64()),
            Stuck::OverBudget(d) => write!(f, "ran {:.1} s, over its budget", d.as_secs_f64()),
        }
    }
}

/// What one worker is doing, shared with the waiters that watch it. Each
/// worker has its own; a replaced worker keeps its (retired) one.
#[derive(Default)]
pub(super) struct Watch {
    /// The worker thread's CPU clock, set when it starts.
    clock: OnceLock<libc::clockid_t>,
    busy: Mutex<Option<Busy>>,
    retired: AtomicBool,
}

struct Busy {
    pid: u32,
    since: Instant,
    stall: Duration,
    budget: Duration,
    /// The worker's CPU time when last seen to move, and when that was.
    cpu: Option<Duration>,
    moved_at: Instant,
    abandoned: Abandoned,
}

/// A request the watch found stuck.
pub(super) struct Verdict {
    pub pid: u32,
    pub stuck: Stuck,
    pub abandoned: Abandoned,
}

impl Watch {
    /// Called on the worker thread before its first request.
    pub fn enter(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self() is this live thread; `clock` is a valid out pointer.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            let _ = self.clock.set(clock);
        }
    }

    fn cpu(&self) -> Option<Duration> {
        let clock = *self.clock.get()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out pointer; a clock of an exited thread
        // only makes the call fail.
        let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0;
        ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// The worker starts a request for `pid`, which has `strikes`.
    pub fn begin(&self, pid: u32, strikes: u32, policy: &Policy, abandoned: Abandoned) {
        let (stall, budget) = policy.limits(strikes);
        let now = Instant::now();
        *lock(&self.busy) = Some(Busy {
            pid,
            since: now,
            stall,
            budget,
            cpu: self.cpu(),
            moved_at: now,
            abandoned,
        });
    }

    pub fn end(&self) {
        *lock(&self.busy) = None;
    }

    /// The worker was replaced: once its request returns, it exits.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Looks at the worker (called by waiters every tick): the request it is
    /// stuck on, if any.
    pub fn check(&self, now: Instant) -> Option<Verdict> {
        let cpu = self.cpu();
        let mut busy = lock(&self.busy);
        let b = busy.as_mut()?;
        if cpu.is_some() && cpu != b.cpu {
            b.cpu = cpu;
            b.moved_at = now;
        }
        let ran = now.saturating_duration_since(b.since);
        let idle = now.saturating_duration_since(b.moved_at);
        let stuck = if idle >= b.stall {
            Stuck::NoProgress(idle)
        } else if ran >= b.budget {
            Stuck::OverBudget(ran)
        } else {
            return None;
        };
        Some(Verdict {
            pid: b.pid,
            stuck,
            abandoned: b.abandoned.clone(),
        })
    }
}

/// Whether a request for a process may go to the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// With this many strikes so far; `retry`: the first after a backoff.
    Go { strikes: u32, retry: bool },
    /// In its backoff: answered with addresses, not asked.
    Benched,
    /// Struck out: not symbolized until it exits.
    GaveUp,
}

/// What a strike did to the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Struck {
    Benched { strikes: u32, backoff: Duration },
    GaveUp,
}

/// Strikes per process. Entries go when the process is forgotten (on exit);
/// a process is struck at most `max_strikes` times, so the table holds at
/// most one entry per watched process.
#[derive(Debug, Default)]
pub(super) struct Strikes {
    by_pid: HashMap<u32, Strike>,
}

#[derive(Debug)]
struct Strike {
    count: u32,
    /// End of its backoff; `None` once given up on.
    until: Option<Instant>,
    /// A request went through since the last strike.
    retried: bool,
}

impl Strikes {
    pub fn admit(&mut self, pid: u32, now: Instant) -> Admit {
        let Some(strike) = self.by_pid.get_mut(&pid) else {
            return Admit::Go {
                strikes: 0,
                retry: false,
            };
        };
        match strike.until {
            None => Admit::GaveUp,
            Some(until) if now < until => Admit::Benched,
            Some(_) => {
                let retry = !strike.retried;
                strike.retried = true;
                Admit::Go {
                    strikes: strike.count,
                    retry,
                }
            }
        }
    }

    /// The strikes of `pid` as the worker starts its request, or `None` if
    /// it was benched after the request was queued.
    pub fn current(&self, pid: u32, now: Instant) -> Option<u32> {
        match self.by_pid.get(&pid) {
            None => Some(0),
            Some(Strike {
                until: Some(until),
                count,
                ..
            }) if now >= *until => Some(*count),
            Some(_) => None,
        }
    }

    pub fn strike(&mut self, pid: u32, now: Instant, policy: &Policy) -> Struck {
        let strike = self.by_pid.entry(pid).or_insert(Strike {
            count: 0,
            until: Some(now),
            retried: false,
        });
        if strike.until.is_none() {
            return Struck::GaveUp;
        }
        strike.count += 1;
        strike.retried = false;
        if strike.count >= policy.max_strikes {
            strike.until = None;
            return Struck::GaveUp;
        }
        let backoff = grown(policy.backoff, strike.count - 1);
        strike.until = Some(now + backoff);
        Struck::Benched {
            strikes: strike.count,
            backoff,
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain fields, consistent at every step: a panic elsewhere leaves them usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        stall: Duration::from_secs(1),
        budget: Duration::from_secs(4),
        backoff: Duration::from_secs(2),
        max_strikes: 3,
    };

    #[test]
    fn strikes_bench_with_a_growing_backoff_then_give_up() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut strikes = Strikes::default();
        assert_eq!(
            strikes.admit(7, t0),
            Admit::Go {
                strikes: 0,
                retry: false
            }
        );
        let backoff = Duration::from_secs(2);
        assert_eq!(
            strikes.strike(7, t0, &POLICY),
            Struck::Benched {
                strikes: 1,
                backoff
            }
        );
        assert_eq!(strikes.admit(7, s(1)), Admit::Benched);
        assert_eq!(strikes.current(7, s(1)), None);
        // The first request after the backoff is the retry, with 1 strike.
        let go = |retry| Admit::Go { strikes: 1, retry };
        assert_eq!(strikes.admit(7, s(2)), go(true));
        assert_eq!(strikes.admit(7, s(3)), go(false));
        assert_eq!(strikes.current(7, s(3)), Some(1));
        let backoff = Duration::from_secs(4);
        assert_eq!(
            strikes.strike(7, s(3), &POLICY),
            Struck::Benched {
                strikes: 2,
                backoff
            }
        );
        assert_eq!(strikes.admit(7, s(6)), Admit::Benched);
        assert_eq!(strikes.strike(7, s(7), &POLICY), Struck::GaveUp);
        assert_eq!(strikes.admit(7, s(1000)), Admit::GaveUp);
        assert_eq!(strikes.strike(7, s(1000), &POLICY), Struck::GaveUp);
        // Another process is not affected; a forgotten one starts clean.
        assert_eq!(strikes.current(8, s(3)), Some(0));
        strikes.forget(7);
        assert_eq!(
            strikes.admit(7, s(1000)),
            Admit::Go {
                strikes: 0,
                retry: false
            }
        );
    }

    #[test]
    fn limits_double_per_strike() {
        assert_eq!(
            POLICY.limits(0),
            (Duration::from_secs(1), Duration::from_secs(4))
        );
        assert_eq!(
            POLICY.limits(2),
            (Duration::from_secs(4), Duration::from_secs(16))
        );
        assert_eq!(grown(Duration::MAX, 30), Duration::MAX);
    }

    #[test]
    fn a_sleeping_worker_is_stuck_and_a_computing_one_is_not() {
        use std::sync::mpsc::channel;
        let watch = Arc::new(Watch::default());
        let (go, told) = channel::<()>();
        let (done, spun) = channel::<()>();
        let worker = {
            let watch = watch.clone();
            std::thread::spawn(move || {
                watch.enter();
                watch.begin(7, 0, &POLICY, Arc::default());
                // Computes 30 ms each time it is told, sleeps in between.
                while told.recv().is_ok() {
                    let until = Instant::now() + Duration::from_millis(30);
                    while Instant::now() < until {}
                    done.send(()).unwrap();
                }
            })
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        go.send(()).unwrap();
        spun.recv().unwrap();
        assert!(watch.check(at(900)).is_none(), "it computed");
        assert!(
            watch.check(at(1500)).is_none(),
            "asleep for less than the stall window"
        );
        let verdict = watch.check(at(2000)).unwrap();
        assert_eq!(verdict.pid, 7);
        assert_eq!(
            verdict.stuck,
            Stuck::NoProgress(Duration::from_millis(1100))
        );
        // Computing again, but past its budget.
        go.send(()).unwrap();
        spun.recv().unwrap();
        let verdict = watch.check(at(5000)).unwrap();
        assert!(
            matches!(verdict.stuck, Stuck::OverBudget(_)),
            "{:?}",
            verdict.stuck
        );
        watch.end();
        assert!(watch.check(at(60_000)).is_none(), "idle, not busy");
        drop(go);
        worker.join().unwrap();
    }
}
