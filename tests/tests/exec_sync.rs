//! `execSync` runs a nested libuv loop on the main thread; its polls must not
//! end the outer iteration, so the whole call is one episode.

use integration_tests::{checks, node_tests, Scenario};

node_tests!(exec_sync_is_one_episode =>
    exec_sync_is_one_episode_node20 = 20,
    exec_sync_is_one_episode_node22 = 22,
    exec_sync_is_one_episode_node24 = 24,
);

fn exec_sync_is_one_episode(major: u32) {
    let run = Scenario::new(major, "exec_sync.js").run();
    let problems = checks::exec_sync_is_one_episode(&run);
    run.check(problems);
}
