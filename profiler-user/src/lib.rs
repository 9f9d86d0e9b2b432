//! loopbpf's userspace, in the order data flows through it:
//! probes (load and attach) → collect (ring buffer records) → episode (assembly)
//! → symbolize (perf maps, blazesym) → export (text, JSON lines, folded).
pub mod symbolize;
