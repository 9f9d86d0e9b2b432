//! The command line: its arguments, and the `loopbpf --pid` session with its
//! terminal/JSON reporter.
pub mod args;
pub mod reporter;
pub mod run;
