//! `cargo xtask bench` (section `poll`): a thread that does nothing but poll an
//! empty epoll set with timeout 0, the shortest possible event-loop
//! iteration. Prints `ready`, waits for a line on stdin, then prints
//! `ns_per_poll=N` for each of BATCHES batches of POLLS calls and exits; the
//! bench compares those with loopbpf absent, watching another process, and
//! watching this one (`--force`: it is not Node).
use std::io::BufRead;
use std::time::Instant;

const POLLS: u32 = 1_000_000;
const BATCHES: u32 = 3;

fn main() {
    // SAFETY: plain syscalls on an fd this process owns.
    let epfd = unsafe { libc::epoll_create1(0) };
    assert!(epfd >= 0, "epoll_create1 failed");
    println!("ready");
    let mut go = String::new();
    if std::io::stdin().lock().read_line(&mut go).is_err() {
        return;
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..POLLS {
            // SAFETY: `events` outlives the call and holds 8 entries.
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 8, 0) };
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(POLLS);
        println!("ns_per_poll={ns:.1}");
    }
}
