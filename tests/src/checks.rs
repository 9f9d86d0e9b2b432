//! Checks more than one test file makes of a run.
use crate::{contains, Episode, FoldedStack, Run};

/// exec_sync.js's one `runChildSync` (`execSync('sleep 0.3')`) lies inside
/// one episode of at least 250 ms: the nested loop's polls did not end the
/// outer iteration.
pub fn exec_sync_is_one_episode(run: &Run) -> Vec<String> {
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
    problems
}

/// The episode's folded stacks without the bare `[runqueue]` lines: a
/// preempted thread's wait for a CPU has no stack by design (no stack is
/// taken on preemption, for cost), so it can name no function.
pub fn folded_with_stacks(run: &Run, episode: &Episode) -> Result<Vec<FoldedStack>, String> {
    let mut stacks = run.folded(episode)?;
    stacks.retain(|s| s.frames != ["[runqueue]"]);
    Ok(stacks)
}
