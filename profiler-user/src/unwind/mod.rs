//! User-stack unwinding from a copy of the stack taken with each sample:
//! unwind tables (`.eh_frame`) for native code, frame pointers for JIT code.
mod snapshot;

pub use snapshot::{StackSnapshot, UnwoundFrame, UnwoundStack};
