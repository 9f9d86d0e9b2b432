//! Exporters: the same reports as text for a terminal, as JSON lines for
//! machines, and as folded stacks for flamegraph tools.
pub mod folded;
pub mod json;
pub mod text;
