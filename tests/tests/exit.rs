//! Tearing a process down happens after its event loop has ended: there is
//! no next poll, so no iteration and no episode, however long the kernel
//! takes to free the memory (about 70 ms for the 1 GiB of `exit_heavy.js`).

use integration_tests::{node_tests, Scenario};

node_tests!(process_exit_is_not_an_episode =>
    process_exit_is_not_an_episode_node20 = 20,
    process_exit_is_not_an_episode_node22 = 22,
    process_exit_is_not_an_episode_node24 = 24,
);

fn process_exit_is_not_an_episode(major: u32) {
    let run = Scenario::new(major, "exit_heavy.js").run();
    let done = run.done_ns();
    let mut problems = Vec::new();
    for (e, line) in run.episodes().iter().zip(run.events("episode")) {
        let after_ms = (e.start_ns as f64 - done as f64) / 1e6;
        problems.push(format!(
            "episode starting {after_ms:+.2} ms after the script's last callback: {line}"
        ));
    }
    run.check(problems);
}
