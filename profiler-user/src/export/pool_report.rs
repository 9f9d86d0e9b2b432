//! A saturation with its stacks named, and what the workers were running.
use std::path::PathBuf;

use crate::{
    assembly::threadpool::{PoolEpisode, WORKER_LOOP},
    export::frames::{hottest_frame, HotFrame},
    symbolize::{Frame, StackRequest, SymbolizeError, Symbolizer},
};

/// Frames between libuv's worker loop and the work itself, which say only
/// that a callback was called (`uv__queue_work` is often a tail call, so
/// `worker` is the anchor; C++ thunks wrap the virtual call).
const DISPATCH_FRAMES: [&str; 5] = [
    "node::ThreadPoolWork::",
    "uv__queue_work",
    "uv__fs_work",
    "{virtual override thunk",
    "node::crypto::DeriveBitsJob<",
];

#[derive(Clone, Debug)]
pub struct PoolReport {
    pub episode: PoolEpisode,
    /// Root first, with the number of samples that had this stack.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    /// The leaf most samples were in.
    pub top_frame: Option<HotFrame>,
    /// The work most samples were running: the first frame below libuv's
    /// work function (`uv__fs_work`, `uv__queue_work`, …) that is not just
    /// dispatch, e.g. `node::crypto::PBKDF2Traits::DeriveBits`.
    pub top_work: Option<HotFrame>,
    pub folded_path: Option<PathBuf>,
    /// Every file written for it (folded, SVG, pprof, as chosen).
    pub files: Vec<PathBuf>,
    pub folded_error: Option<String>,
}

impl PoolReport {
    pub async fn symbolize(
        e: PoolEpisode,
        symbolizer: &Symbolizer,
    ) -> (Self, Option<SymbolizeError>) {
        let requests: Vec<StackRequest> = e
            .stacks
            .iter()
            .map(|(s, _)| StackRequest {
                user: s.user.to_vec(),
                kernel: s.kernel.to_vec(),
                v8: Vec::new(),
            })
            .collect();
        let (named, err) = match symbolizer.symbolize(e.pid, requests).await {
            Ok(sym) => (sym.stacks, None),
            Err(err) => (Vec::new(), Some(err)),
        };
        let mut named = named.into_iter();
        let stacks: Vec<(Vec<Frame>, u64)> = e
            .stacks
            .iter()
            .map(|(raw, n)| {
                let frames = named
                    .next()
                    .unwrap_or_else(|| crate::export::frames::unnamed(&raw.user, &raw.kernel));
                (frames, *n)
            })
            .collect();
        (PoolReport::new(e, stacks), err)
    }

    pub fn new(episode: PoolEpisode, stacks: Vec<(Vec<Frame>, u64)>) -> Self {
        let leaves: Vec<(Vec<Frame>, u64)> = stacks
            .iter()
            .map(|(f, n)| (f.last().cloned().into_iter().collect(), *n))
            .collect();
        let work: Vec<(Vec<Frame>, u64)> = stacks
            .iter()
            .filter_map(|(f, n)| work_frame(f).map(|w| (vec![w.clone()], *n)))
            .collect();
        PoolReport {
            episode,
            top_frame: hottest_frame(&leaves),
            top_work: hottest_frame(&work),
            stacks,
            folded_path: None,
            files: Vec::new(),
            folded_error: None,
        }
    }
}

/// In a root-first worker stack, the frame that says what the work was.
pub fn work_frame(frames: &[Frame]) -> Option<&Frame> {
    let entry = frames.iter().position(|f| f.name == WORKER_LOOP)?;
    frames[entry + 1..]
        .iter()
        .find(|f| !DISPATCH_FRAMES.iter().any(|d| f.name.starts_with(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::FrameKind;

    fn f(name: &str) -> Frame {
        Frame::new(name, FrameKind::Native)
    }

    #[test]
    fn the_work_is_the_first_frame_past_libuv_dispatch() {
        let stack = vec![
            f("start_thread"),
            f("worker"),
            f("uv__queue_work"),
            f("node::ThreadPoolWork::ScheduleWork()::{lambda(uv_work_s*)#1}::_FUN(uv_work_s*)"),
            f("{virtual override thunk({offset(-56)}, node::crypto::DeriveBitsJob<node::crypto::PBKDF2Traits>::DoThreadPoolWork())}"),
            f("node::crypto::PBKDF2Traits::DeriveBits(node::Environment*)"),
            f("PKCS5_PBKDF2_HMAC"),
            f("sha1_block_data_order"),
        ];
        assert_eq!(
            work_frame(&stack).unwrap().name,
            "node::crypto::PBKDF2Traits::DeriveBits(node::Environment*)"
        );
        let fs = vec![f("worker"), f("uv__fs_work"), f("uv__fs_read"), f("read")];
        assert_eq!(work_frame(&fs).unwrap().name, "uv__fs_read");
        assert_eq!(
            work_frame(&[f("worker"), f("uv_cond_wait")]).unwrap().name,
            "uv_cond_wait"
        );
        assert!(work_frame(&[f("sha512_block_data_order_avx2")]).is_none());
    }
}
