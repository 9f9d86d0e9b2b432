//! loopbpf's userspace, in the order data flows through it:
//! kernel (load and attach the probes, decode ring-buffer records) → assembly
//! (episodes, loop statistics, threads, threadpool) → symbolize (with unwind
//! and v8) → export (reports, text, JSON lines, folded, pprof, SVG, HTML).
//! Front ends: `cli` (`loopbpf --pid`) and `daemon` (with its store and metrics).
pub mod assembly;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod export;
pub mod kernel;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod printable;
pub mod secure_fs;
pub mod symbolize;
pub mod unwind;
pub mod v8;
