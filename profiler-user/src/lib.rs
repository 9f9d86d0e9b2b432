//! loopbpf's userspace, in the order data flows through it:
//! probes (load and attach) → collect (ring-buffer records) → episode (assembly)
//! → symbolize (perf maps, blazesym) → report → export (text, JSON lines, folded).
//! `run` wires one session together; `reporter` is its last, ordered stage.
pub mod breakdown;
pub mod cli;
pub mod collect;
pub mod daemon;
pub mod episode;
pub mod export;
pub mod html;
pub mod kernel_btf;
pub mod loop_stats;
pub mod metrics;
pub mod printable;
pub mod privileges;
pub mod probes;
mod probes_fentry;
pub mod report;
pub mod reporter;
pub mod ring_size;
pub mod run;
pub mod secure_fs;
pub mod startup;
pub mod store;
pub mod symbolize;
pub mod target;
pub mod threadpool;
pub mod threads;
pub mod unwind;
pub mod v8;
