//! When was the whole threadpool busy? From each worker's busy periods (the
//! kernel reports those at least as long as the threshold, and userspace sees
//! the open ones in the map), the intervals in which `pool_size` of them
//! overlap. A saturation at least the threshold long needs every worker busy
//! for all of it, so the long periods alone are enough to find it.

/// One worker's busy period; `end_ns` is `None` while it is still busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPeriod {
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// Work items run in the period.
    pub items: u64,
}

/// An interval in which every worker of the pool was busy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saturation {
    pub start_ns: u64,
    /// `None`: still saturated.
    pub end_ns: Option<u64>,
    /// The workers busy throughout, by tid.
    pub workers: Vec<u32>,
    /// Items run in the periods that made it up (they may extend past it).
    pub items: u64,
}

/// Intervals in which at least `pool_size` of `periods` overlap, oldest first.
/// A worker's periods never overlap each other, so overlapping periods are
/// distinct workers. Periods that only touch do not overlap.
pub fn saturations(periods: &[BusyPeriod], pool_size: usize) -> Vec<Saturation> {
    if pool_size == 0 {
        return Vec::new();
    }
    // (time, is_start, index): ends sort before starts at the same instant.
    let mut edges: Vec<(u64, bool, usize)> = Vec::with_capacity(periods.len() * 2);
    for (i, p) in periods.iter().enumerate() {
        edges.push((p.start_ns, true, i));
        if let Some(end) = p.end_ns {
            edges.push((end, false, i));
        }
    }
    edges.sort_unstable();
    let mut active: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let mut open: Option<(u64, Vec<usize>)> = None;
    for (t, is_start, i) in edges {
        if is_start {
            active.push(i);
            if open.is_none() && active.len() >= pool_size {
                open = Some((t, active.clone()));
            }
        } else {
            active.retain(|&a| a != i);
            if active.len() < pool_size {
                if let Some((start, members)) = open.take() {
                    out.push(saturation(periods, start, Some(t), &members));
                }
            }
        }
    }
    if let Some((start, members)) = open {
        out.push(saturation(periods, start, None, &members));
    }
    out
}

fn saturation(
    periods: &[BusyPeriod],
    start: u64,
    end: Option<u64>,
    members: &[usize],
) -> Saturation {
    let mut workers: Vec<u32> = members.iter().map(|&i| periods[i].tid).collect();
    workers.sort_unstable();
    Saturation {
        start_ns: start,
        end_ns: end,
        workers,
        items: members.iter().map(|&i| periods[i].items).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tid: u32, start: u64, end: Option<u64>) -> BusyPeriod {
        BusyPeriod {
            tid,
            start_ns: start,
            end_ns: end,
            items: 2,
        }
    }

    #[test]
    fn all_workers_busy_is_a_saturation_from_last_start_to_first_end() {
        let periods = [p(1, 0, Some(100)), p(2, 10, Some(90)), p(3, 20, Some(120))];
        let s = saturations(&periods, 3);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].start_ns, s[0].end_ns), (20, Some(90)));
        assert_eq!(s[0].workers, vec![1, 2, 3]);
        assert_eq!(s[0].items, 6);
    }

    #[test]
    fn one_idle_worker_means_no_saturation() {
        let periods = [p(1, 0, Some(100)), p(2, 10, Some(90))];
        assert!(saturations(&periods, 3).is_empty());
    }

    #[test]
    fn touching_periods_do_not_overlap() {
        let periods = [p(1, 0, Some(50)), p(2, 50, Some(100))];
        assert!(saturations(&periods, 2).is_empty());
    }

    #[test]
    fn open_periods_make_an_ongoing_saturation() {
        let periods = [p(1, 0, None), p(2, 30, None), p(3, 5, Some(20))];
        let s = saturations(&periods, 2);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].start_ns, s[0].end_ns), (5, Some(20)));
        assert_eq!((s[1].start_ns, s[1].end_ns), (30, None));
    }

    #[test]
    fn a_worker_replaced_mid_saturation_keeps_it_going() {
        // Worker 2 goes idle at 60 as worker 3 (a fifth thread, pool grown)
        // is already busy: three of three stay busy.
        let periods = [
            p(1, 0, Some(100)),
            p(2, 0, Some(60)),
            p(3, 40, Some(100)),
            p(4, 0, Some(100)),
        ];
        let s = saturations(&periods, 3);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].start_ns, s[0].end_ns), (0, Some(100)));
    }
}
