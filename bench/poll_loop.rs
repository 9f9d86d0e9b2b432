//! `cargo xtask bench` (section `poll`) and `cargo xtask vm-test --bench`: a
//! thread that does nothing but poll an empty epoll set with timeout 0, the
//! shortest possible event-loop iteration. Prints `ready`, waits for a line on
//! stdin, then prints `ns_per_poll=N` for each of BATCHES batches of CALLS
//! calls and exits; the bench compares those with loopbpf absent, watching
//! another process, and watching this one (`--force`: it is not Node).
//!
//! `poll_loop getppid [CALLS]` calls getppid instead and prints
//! `ns_per_call=N`: the cost loopbpf's probes add to a syscall it does not
//! watch. CALLS (default 1000000) is smaller in an emulated guest.
use std::io::BufRead;
use std::time::Instant;

const CALLS: u32 = 1_000_000;
const BATCHES: u32 = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let getppid = args.first().is_some_and(|a| a == "getppid");
    let calls = match args.get(1).map(|n| n.parse::<u32>()) {
        None => CALLS,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("poll_loop: CALLS must be a positive number");
            std::process::exit(2);
        }
    };
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
        for _ in 0..calls {
            if getppid {
                // SAFETY: no arguments, no side effects.
                unsafe { libc::getppid() };
            } else {
                // SAFETY: `events` outlives the call and holds 8 entries.
                unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 8, 0) };
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(calls);
        if getppid {
            println!("ns_per_call={ns:.1}");
        } else {
            println!("ns_per_poll={ns:.1}");
        }
    }
}
