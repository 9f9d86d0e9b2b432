//! The perf-map parser on arbitrary bytes, fed in arbitrary pieces (V8 may
//! be midway through a line when loopbpf reads), under small limits so the
//! overflow paths run too. Lookups must not panic and must only return names
//! that are safe in a folded stack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_user::symbolize::{Limits, PerfMap};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        line_bytes: 256,
        read_per_refresh: 1024,
        read_total: 1 << 20,
        entries: 64,
        name_bytes: 1024,
    };
    let mut map = PerfMap::new("/nonexistent").with_limits(limits);
    let cut = usize::from(split).min(rest.len());
    map.feed(&rest[..cut]);
    map.feed(&rest[cut..]);
    assert!(map.len() <= limits.entries);
    for addr in rest.chunks_exact(8).take(16) {
        let addr = u64::from_le_bytes(addr.try_into().unwrap());
        if let Some(name) = map.lookup(addr) {
            assert!(!name.contains(';') && !name.contains('\n'), "{name:?}");
        }
    }
});
