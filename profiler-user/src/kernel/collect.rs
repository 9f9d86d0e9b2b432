//! Ring-buffer records → typed events. Each record's fixed part is read as
//! the type profiler-common defines for it (the kernel writes that same
//! type); the variable parts (frames, V8 slots, stack copy) are bounded by the
//! counts in it. A short or unknown record is reported, never reinterpreted.
use std::mem::size_of;

use bytes::Buf;
use profiler_common::{
    EpisodeEvent, OffCpuEvent, OffCpuHeader, PoolBusyEvent, ProcessEvent, SampleEvent,
    SampleHeader, UserRegs, EVENT_EPISODE, EVENT_EXEC, EVENT_EXIT, EVENT_OFF_CPU, EVENT_POOL_BUSY,
    EVENT_POOL_SAMPLE, EVENT_SAMPLE, MAX_KERNEL_FRAMES, MAX_USER_FRAMES, STACK_COPY_BYTES,
    STACK_RED_ZONE, V8_FRAMES,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes is too short")]
    Short(usize),
    #[error("ring buffer record has unknown kind {0}")]
    UnknownKind(u32),
}

/// One stack sample of a busy loop thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub busy_start_ns: u64,
    pub time_ns: u64,
    /// Leaf first; empty when the kernel could not walk the stack. The
    /// kernel's frame-pointer walk until [`crate::unwind::Unwinder::apply`]
    /// replaces it with the unwound stack.
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// Per user frame (leaf first, at most `V8_FRAMES`): the words at fp-16
    /// and fp-8 when the sample was taken (a V8 frame's function and context).
    pub v8: Vec<[u64; 2]>,
    /// User registers and the copy of the stack from `regs.sp -
    /// regs.below_sp` up (emptied once unwound).
    pub regs: UserRegs,
    pub stack: Vec<u8>,
}

/// A busy loop thread was off the CPU: asleep, then waiting for a CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffCpu {
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// When it left the CPU.
    pub time_ns: u64,
    /// Leaf first, taken as it left the CPU (see `Sample::user`).
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// V8 slots per user frame, as [`Sample::v8`]: read along the kernel's
    /// frame-pointer walk (its recovered one past a libc wrapper).
    pub v8: Vec<[u64; 2]>,
    pub regs: UserRegs,
    pub stack: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Episode(EpisodeEvent),
    Sample(Sample),
    /// A sample of a busy threadpool worker: `seq` is the worker's item count,
    /// `busy_start_ns` the start of its busy period.
    PoolSample(Sample),
    /// A threadpool worker's busy period of at least the threshold.
    PoolBusy(PoolBusyEvent),
    OffCpu(OffCpu),
    /// A process started a new program (only when discovering).
    Exec {
        pid: u32,
        time_ns: u64,
    },
    /// A watched process's main thread exited.
    Exit {
        pid: u32,
        time_ns: u64,
    },
}

pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
    let len = buf.len();
    if len < 4 {
        return Err(DecodeError::Short(len));
    }
    match (&buf[..4]).get_u32_le() {
        EVENT_EPISODE => Ok(Record::Episode(fixed::<EpisodeEvent>(buf)?)),
        kind @ (EVENT_SAMPLE | EVENT_POOL_SAMPLE) => {
            if len < size_of::<SampleEvent>() {
                return Err(DecodeError::Short(len));
            }
            let h = fixed::<SampleHeader>(buf)?;
            let buf = &buf[size_of::<SampleHeader>()..];
            let user = frames(&buf[..MAX_USER_FRAMES * 8], h.user_bytes);
            let kernel = frames(&buf[MAX_USER_FRAMES * 8..], h.kernel_bytes);
            let buf = &buf[(MAX_USER_FRAMES + MAX_KERNEL_FRAMES) * 8..];
            let v8 = v8_slots(buf, user.len());
            let regs = checked(h.regs);
            let stack = copy(&buf[8 + V8_FRAMES * 16..], &regs);
            let sample = Sample {
                pid: h.pid,
                tid: h.tid,
                seq: h.seq,
                busy_start_ns: h.busy_start_ns,
                time_ns: h.time_ns,
                user,
                kernel,
                v8,
                regs,
                stack,
            };
            Ok(if kind == EVENT_SAMPLE {
                Record::Sample(sample)
            } else {
                Record::PoolSample(sample)
            })
        }
        EVENT_OFF_CPU => {
            if len < size_of::<OffCpuEvent>() {
                return Err(DecodeError::Short(len));
            }
            let h = fixed::<OffCpuHeader>(buf)?;
            let buf = &buf[size_of::<OffCpuHeader>()..];
            let regs = checked(h.regs);
            let user = frames(&buf[..MAX_USER_FRAMES * 8], h.user_bytes);
            let kernel = frames(&buf[MAX_USER_FRAMES * 8..], h.kernel_bytes);
            let buf = &buf[(MAX_USER_FRAMES + MAX_KERNEL_FRAMES) * 8..];
            let v8 = slots(buf, h.v8_frames.into(), user.len());
            let stack = copy(&buf[V8_FRAMES * 16..], &regs);
            Ok(Record::OffCpu(OffCpu {
                pid: h.pid,
                tid: h.tid,
                seq: h.seq,
                blocked_ns: h.blocked_ns,
                runq_ns: h.runq_ns,
                time_ns: h.time_ns,
                user,
                kernel,
                v8,
                regs,
                stack,
            }))
        }
        EVENT_POOL_BUSY => Ok(Record::PoolBusy(fixed::<PoolBusyEvent>(buf)?)),
        kind @ (EVENT_EXEC | EVENT_EXIT) => {
            let e = fixed::<ProcessEvent>(buf)?;
            let (pid, time_ns) = (e.pid, e.time_ns);
            Ok(if kind == EVENT_EXEC {
                Record::Exec { pid, time_ns }
            } else {
                Record::Exit { pid, time_ns }
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The fixed part of a record, read as profiler-common defines it (one
/// definition for the kernel's writes and these reads). Too short: an error,
/// never a partial value.
fn fixed<T: aya::Pod>(buf: &[u8]) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: `buf` holds at least size_of::<T>() bytes, read unaligned; T is
    // Pod (integers only, no padding: asserted in profiler-common), so any
    // bytes are a valid value.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// The registers as recorded, with `below_sp` kept only when it is the whole
/// red zone (the kernel copies all of it or none; anything else would put
/// the copy's start outside its area).
fn checked(mut regs: UserRegs) -> UserRegs {
    if regs.below_sp as usize != STACK_RED_ZONE {
        regs.below_sp = 0;
    }
    regs
}

/// The filled part of the stack copy, from `sp - below_sp` (the kernel never
/// claims more than it holds, but the counts are bounded here all the same).
fn copy(area: &[u8], regs: &UserRegs) -> Vec<u8> {
    let above = (regs.stack_bytes as usize).min(STACK_COPY_BYTES - STACK_RED_ZONE);
    let start = STACK_RED_ZONE - regs.below_sp as usize;
    let end = (STACK_RED_ZONE + above).min(area.len());
    area.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
}

/// The first `bytes` bytes of `area` as addresses (a negative count is an errno:
/// no frames).
fn frames(mut area: &[u8], bytes: i32) -> Vec<u64> {
    let n = (bytes.max(0) as usize / 8).min(area.len() / 8);
    (0..n)
        .map(|_| area.get_u64_le())
        .filter(|&a| a != 0)
        .collect()
}

/// The V8 slots of a sample: as many as the kernel copied, never more than
/// the user frames they belong to.
fn v8_slots(mut buf: &[u8], user_frames: usize) -> Vec<[u64; 2]> {
    let copied = buf.get_u64_le();
    slots(buf, copied, user_frames)
}

/// `copied` V8 slots from `buf`, bounded by the array and the user frames.
fn slots(mut buf: &[u8], copied: u64, user_frames: usize) -> Vec<[u64; 2]> {
    let n = (copied.min(V8_FRAMES as u64) as usize).min(user_frames);
    (0..n)
        .map(|_| [buf.get_u64_le(), buf.get_u64_le()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn sample_bytes(user: &[u64], kernel_bytes: i32) -> Vec<u8> {
        sample_bytes_below(user, kernel_bytes, 0)
    }

    fn sample_bytes_below(user: &[u64], kernel_bytes: i32, below_sp: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u32_le(EVENT_SAMPLE);
        b.put_u32_le(10);
        b.put_u32_le(11);
        b.put_u32_le(1);
        b.put_i32_le((user.len() * 8) as i32);
        b.put_i32_le(kernel_bytes);
        b.put_u64_le(7);
        b.put_u64_le(100);
        b.put_u64_le(150);
        // regs: ip, sp, bp, 3 bytes of stack copied above sp
        b.put_u64_le(0x1234);
        b.put_u64_le(0x7000);
        b.put_u64_le(0x7010);
        b.put_u32_le(3);
        b.put_u32_le(below_sp);
        for i in 0..MAX_USER_FRAMES {
            b.put_u64_le(user.get(i).copied().unwrap_or(0xdead));
        }
        for i in 0..MAX_KERNEL_FRAMES {
            b.put_u64_le(0xffff_0000 + i as u64);
        }
        // Two frames' V8 slots; the rest of the array is stale.
        b.put_u64_le(2);
        for i in 0..V8_FRAMES as u64 {
            b.put_u64_le(0x1000 + i);
            b.put_u64_le(0x2000 + i);
        }
        for i in 0..STACK_COPY_BYTES {
            b.put_u8((i as u8).wrapping_add(1));
        }
        b
    }

    #[test]
    fn sample_keeps_only_the_filled_frames() {
        let Record::Sample(s) = decode(&sample_bytes(&[1, 2, 3], 16)).unwrap() else {
            panic!("not a sample")
        };
        assert_eq!(
            (s.pid, s.tid, s.seq, s.busy_start_ns, s.time_ns),
            (10, 11, 7, 100, 150)
        );
        assert_eq!(s.user, vec![1, 2, 3]);
        assert_eq!(s.kernel, vec![0xffff_0000, 0xffff_0001]);
        assert_eq!(s.v8, vec![[0x1000, 0x2000], [0x1001, 0x2001]]);
        assert_eq!((s.regs.ip, s.regs.sp, s.regs.bp), (0x1234, 0x7000, 0x7010));
        // The stack from sp sits after the red zone's bytes.
        assert_eq!(s.stack, vec![129, 130, 131]);
    }

    #[test]
    fn stack_copy_starts_below_sp_only_with_the_whole_red_zone() {
        let red = STACK_RED_ZONE as u32;
        let Record::Sample(s) = decode(&sample_bytes_below(&[1], 8, red)).unwrap() else {
            panic!("not a sample")
        };
        assert_eq!(s.regs.below_sp, red);
        let want: Vec<u8> = (1..=131).collect();
        assert_eq!(s.stack, want);
        // A partial red zone is not something the kernel side writes: ignored.
        let Record::Sample(s) = decode(&sample_bytes_below(&[1], 8, 64)).unwrap() else {
            panic!("not a sample")
        };
        assert_eq!((s.regs.below_sp, s.stack.len()), (0, 3));
    }

    #[test]
    fn failed_stack_walk_gives_no_frames() {
        let Record::Sample(s) = decode(&sample_bytes(&[], -14)).unwrap() else {
            panic!("not a sample")
        };
        assert!(s.kernel.is_empty());
        assert!(s.v8.is_empty(), "no slots without user frames");
    }

    fn off_cpu_bytes(user: &[u64], v8_frames: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u32_le(EVENT_OFF_CPU);
        b.put_u32_le(10);
        b.put_u32_le(11);
        b.put_u32_le(v8_frames);
        b.put_i32_le((user.len() * 8) as i32);
        b.put_i32_le(16);
        for word in [7, 300_000_000, 1_000, 150] {
            b.put_u64_le(word);
        }
        for word in [0x1234, 0x7000, 0x7010] {
            b.put_u64_le(word);
        }
        b.put_u32_le(3);
        b.put_u32_le(0);
        for i in 0..MAX_USER_FRAMES {
            b.put_u64_le(user.get(i).copied().unwrap_or(0xdead));
        }
        for i in 0..MAX_KERNEL_FRAMES {
            b.put_u64_le(0xffff_0000 + i as u64);
        }
        for i in 0..V8_FRAMES as u64 {
            b.put_u64_le(0x1000 + i);
            b.put_u64_le(0x2000 + i);
        }
        for i in 0..STACK_COPY_BYTES {
            b.put_u8((i as u8).wrapping_add(1));
        }
        assert_eq!(b.len(), size_of::<OffCpuEvent>());
        b
    }

    #[test]
    fn off_cpu_keeps_the_slots_of_its_frames_only() {
        let Record::OffCpu(o) = decode(&off_cpu_bytes(&[1, 2, 3], 2)).unwrap() else {
            panic!("not an off-CPU record")
        };
        assert_eq!(
            (o.pid, o.tid, o.seq, o.blocked_ns),
            (10, 11, 7, 300_000_000)
        );
        assert_eq!(o.user, vec![1, 2, 3]);
        assert_eq!(o.kernel, vec![0xffff_0000, 0xffff_0001]);
        assert_eq!(o.v8, vec![[0x1000, 0x2000], [0x1001, 0x2001]]);
        assert_eq!(o.stack, vec![129, 130, 131]);
        // A count beyond the user frames (or the array) is cut to them.
        let Record::OffCpu(o) = decode(&off_cpu_bytes(&[1, 2, 3], u32::MAX)).unwrap() else {
            panic!("not an off-CPU record")
        };
        assert_eq!(o.v8.len(), 3);
        let short = off_cpu_bytes(&[1], 1);
        assert_eq!(
            decode(&short[..short.len() - 1]),
            Err(DecodeError::Short(short.len() - 1))
        );
    }

    #[test]
    fn episode_round_trips() {
        let mut b = Vec::new();
        b.put_u32_le(EVENT_EPISODE);
        b.put_u32_le(5);
        b.put_u32_le(6);
        b.put_i32_le(13);
        b.put_u64_le(42);
        b.put_u64_le(9_000);
        b.put_u64_le(3_000);
        b.put_u64_le(2_000);
        b.put_u64_le(500);
        let Record::Episode(e) = decode(&b).unwrap() else {
            panic!("not an episode")
        };
        assert_eq!(
            (
                e.pid,
                e.tid,
                e.epfd,
                e.seq,
                e.end_ns,
                e.busy_ns,
                e.blocked_ns,
                e.runq_ns
            ),
            (5, 6, 13, 42, 9_000, 3_000, 2_000, 500)
        );
    }

    #[test]
    fn process_events_decode() {
        let mut b = Vec::new();
        b.put_u32_le(EVENT_EXIT);
        b.put_u32_le(77);
        b.put_u64_le(123);
        assert_eq!(
            decode(&b),
            Ok(Record::Exit {
                pid: 77,
                time_ns: 123
            })
        );
        b[0] = EVENT_EXEC as u8;
        assert_eq!(
            decode(&b),
            Ok(Record::Exec {
                pid: 77,
                time_ns: 123
            })
        );
        assert_eq!(decode(&b[..12]), Err(DecodeError::Short(12)));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short(2)));
        assert_eq!(decode(&[2, 0, 0, 0, 1]), Err(DecodeError::Short(5)));
        assert_eq!(decode(&[99, 0, 0, 0]), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn pool_records_decode() {
        let mut b = sample_bytes(&[4], 0);
        b[..4].copy_from_slice(&EVENT_POOL_SAMPLE.to_le_bytes());
        let Record::PoolSample(s) = decode(&b).unwrap() else {
            panic!("not a pool sample")
        };
        assert_eq!((s.tid, s.user.as_slice()), (11, &[4][..]));
        let mut b = Vec::new();
        b.put_u32_le(EVENT_POOL_BUSY);
        b.put_u32_le(5);
        b.put_u32_le(6);
        b.put_u32_le(0);
        b.put_u64_le(100);
        b.put_u64_le(900);
        b.put_u64_le(8);
        let Record::PoolBusy(p) = decode(&b).unwrap() else {
            panic!("not a busy period")
        };
        assert_eq!(
            (p.pid, p.tid, p.start_ns, p.end_ns, p.items),
            (5, 6, 100, 900, 8)
        );
        assert_eq!(decode(&b[..30]), Err(DecodeError::Short(30)));
    }
}
