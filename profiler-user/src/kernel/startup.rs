//! Where start-up time goes: reading kernel BTF, creating the maps, loading
//! (verifying) each program, attaching, and preparing symbols. Reported with
//! the ready line, so an operator (and the bench) sees which phase to blame.
use std::time::{Duration, Instant};

/// One phase of start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Parsing /sys/kernel/btf/vmlinux.
    Btf,
    /// Parsing the eBPF object and creating its maps (no program loaded yet).
    Maps,
    /// Loading one program: almost all of it is the kernel's verifier.
    Load(&'static str),
    /// Attaching programs (all of them, summed).
    Attach,
    /// Threadpool uprobes: their programs' load and the uprobes themselves.
    Threadpool,
    /// Kernel symbols, the targets' symbol tables, perf maps and V8 layouts,
    /// read on the symbolizer thread while the programs load.
    Symbols,
    /// Unwind tables of the targets' executable files.
    UnwindTables,
}

impl Phase {
    pub fn name(self) -> String {
        match self {
            Phase::Btf => "btf".into(),
            Phase::Maps => "maps".into(),
            Phase::Load(program) => format!("load:{program}"),
            Phase::Attach => "attach".into(),
            Phase::Threadpool => "threadpool".into(),
            Phase::Symbols => "symbols".into(),
            Phase::UnwindTables => "unwind_tables".into(),
        }
    }
}

/// Time spent per phase, in the order phases first happened; a phase that
/// happens again (attach, per program) adds up.
#[derive(Clone, Debug, Default)]
pub struct Startup {
    phases: Vec<(Phase, Duration)>,
}

impl Startup {
    pub fn add(&mut self, phase: Phase, took: Duration) {
        match self.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, total)) => *total += took,
            None => self.phases.push((phase, took)),
        }
    }

    /// Runs `f`, counting its time to `phase`.
    pub fn time<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.add(phase, started.elapsed());
        out
    }

    /// Counts the time until the returned guard is dropped to `phase`.
    pub fn timer(&mut self, phase: Phase) -> Timer<'_> {
        Timer {
            startup: self,
            phase,
            started: Instant::now(),
        }
    }

    pub fn phases(&self) -> &[(Phase, Duration)] {
        &self.phases
    }

    /// All program loads together: the verifier's share of start-up.
    pub fn loading(&self) -> Duration {
        self.phases
            .iter()
            .filter(|(p, _)| matches!(p, Phase::Load(_)))
            .map(|(_, d)| *d)
            .sum()
    }

    /// `btf 12.3 ms, maps 4.0 ms, load:poll_enter 20.1 ms, …`, for the log.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(p, d)| format!("{} {:.1} ms", p.name(), d.as_secs_f64() * 1e3))
            .collect();
        parts.join(", ")
    }
}

/// See [`Startup::timer`].
pub struct Timer<'a> {
    startup: &'a mut Startup,
    phase: Phase,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.startup.add(self.phase, self.started.elapsed());
    }
}

/// Phase name → milliseconds (0.1 ms), kept in the order the phases ran.
#[derive(Debug)]
pub struct StartupMs(pub Vec<(String, f64)>);

impl serde::Serialize for StartupMs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(phase, ms)| (phase, ms)))
    }
}

impl StartupMs {
    pub fn of(startup: &crate::kernel::startup::Startup) -> StartupMs {
        StartupMs(
            startup
                .phases()
                .iter()
                .map(|(phase, took)| {
                    let ms = (took.as_secs_f64() * 1e4).round() / 10.0;
                    (phase.name(), ms)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_phases_add_up_in_first_seen_order() {
        let mut s = Startup::default();
        s.add(Phase::Btf, Duration::from_millis(3));
        s.add(Phase::Load("a"), Duration::from_millis(10));
        s.add(Phase::Attach, Duration::from_millis(1));
        s.add(Phase::Load("b"), Duration::from_millis(5));
        s.add(Phase::Attach, Duration::from_millis(2));
        let names: Vec<String> = s.phases().iter().map(|(p, _)| p.name()).collect();
        assert_eq!(names, ["btf", "load:a", "attach", "load:b"]);
        assert_eq!(s.phases()[2].1, Duration::from_millis(3));
        assert_eq!(s.loading(), Duration::from_millis(15));
        assert_eq!(
            s.describe(),
            "btf 3.0 ms, load:a 10.0 ms, attach 3.0 ms, load:b 5.0 ms"
        );
    }
}
