//! The ring-buffer record decoder on arbitrary bytes: a kernel/user layout
//! mismatch or a truncated record must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = profiler_user::kernel::collect::decode(data);
});
