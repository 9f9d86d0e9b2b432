//! The agent's own heap: how it is kept small (see the README's "The agent's
//! own footprint").
//!
//! glibc's malloc gives each thread that allocates its own arena (up to 8 per
//! CPU) and keeps what is freed there for that thread. loopbpf's start-up
//! frees a lot (kernel BTF, the BPF object, ELF parses) on one thread while
//! others (the symbolizer, the unwind-table reader) allocate what stays, so
//! with one arena per thread nothing freed is reused and the peak is the sum.
//! One arena lets the freed memory be reused; the few threads loopbpf has
//! rarely allocate at the same time. musl (the released static binary) has a
//! single heap already.

/// Caps malloc at one arena. Call first thing in `main`, before any thread.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Large buffers (a 5 MiB BTF file, a binary's unwind section, a
        // vector growing) are mmapped and unmapped when freed. A fixed
        // threshold stops glibc raising it after the first such free, which
        // would put the next ones in the heap, where they stay.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Gives the pages of freed heap memory back to the kernel (start-up's
/// parses are done and will not come back), so they leave the RSS.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
