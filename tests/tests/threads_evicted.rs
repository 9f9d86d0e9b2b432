//! The THREADS map is an LRU: when more threads poll than it holds, it evicts
//! a thread's loop state silently (a live loop loses an iteration). Userspace
//! counts evictions from the kernel side's insert count, what it deleted and
//! what is present; the summary says how many. A THREADS map of 4 entries
//! (`LOOPBPF_THREADS_MAX_ENTRIES`, same code, smaller map) and twelve worker
//! loops at once must evict; the default size must not.
use integration_tests::{node_tests, Scenario};

node_tests!(evictions_of_loop_threads_are_counted =>
    evictions_of_loop_threads_are_counted_node20 = 20,
    evictions_of_loop_threads_are_counted_node22 = 22,
);

fn evictions_of_loop_threads_are_counted(major: u32) {
    let small = Scenario::new(major, "many_loops.js")
        .loopbpf_env("LOOPBPF_THREADS_MAX_ENTRIES", "4")
        .run();
    let evicted = small.summary()["threads_evicted"].as_u64();
    // 13 loops (main and 12 workers) in 4 entries: at least 9 evicted.
    if evicted < Some(9) {
        small.fail(&format!(
            "threads_evicted {evicted:?} with a THREADS map of 4 and 13 loops, want >= 9"
        ));
    }
    println!("threads_evicted with 4 entries: {evicted:?}");
    let default = Scenario::new(major, "many_loops.js").run();
    let evicted = default.summary()["threads_evicted"].as_u64();
    if evicted != Some(0) {
        default.fail(&format!(
            "threads_evicted {evicted:?} with the default THREADS map, want 0"
        ));
    }
}
