//! `execSync` runs a nested libuv loop on the main thread; its polls must not
//! end the outer iteration, so the whole call is one episode.

use integration_tests::{contains, node_tests, Scenario};

node_tests!(exec_sync_is_one_episode =>
    exec_sync_is_one_episode_node20 = 20,
    exec_sync_is_one_episode_node22 = 22,
    exec_sync_is_one_episode_node24 = 24,
);

fn exec_sync_is_one_episode(major: u32) {
    let run = Scenario::new(major, "exec_sync.js").run();
    let call = match &run.blocks()[..] {
        [call] if call.name == "runChildSync" && call.ms >= 290.0 => call.clone(),
        _ => run.fail("exec_sync.js did not report one runChildSync of >= 290 ms"),
    };
    let episodes = run.episodes();
    let mut problems = Vec::new();
    match episodes
        .iter()
        .find(|e| contains(e.span(), call.span(), 1_000_000))
    {
        None => problems.push(format!(
            "no episode contains the call [{}, {}] ({:.1} ms); episodes: {episodes:#?}",
            call.start_ns, call.end_ns, call.ms
        )),
        Some(e) if e.duration_ms < 250.0 => problems.push(format!(
            "the episode lasts {:.1} ms, want >= 250: {e:?}",
            e.duration_ms
        )),
        Some(_) => {}
    }
    run.check(problems);
}
