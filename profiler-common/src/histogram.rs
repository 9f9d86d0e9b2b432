//! Log-linear buckets for busy time in nanoseconds, shared by the kernel (which
//! counts) and userspace (which reads percentiles).
//!
//! Below 16 ns a bucket per value; above, 16 buckets per power of two. A bucket
//! spans at most 1/16 = 6.25% of its lower bound, so reporting its midpoint is
//! within 3.2% of any value in it: the 5% the percentiles must meet.

/// Sub-buckets per power of two, as a power of two.
pub const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked; longer iterations (over ~275 s) share the top bucket.
pub const MAX_MSB: u32 = 37;
pub const BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * SUB as usize;

/// Index of the most significant set bit, by halving: no loop, no `clz`
/// instruction (BPF has none), a handful of verifier-friendly branches.
#[inline(always)]
pub fn msb(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket of a busy time in nanoseconds; always `< BUCKETS`.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let m = msb(ns);
    if m > MAX_MSB {
        return BUCKETS - 1;
    }
    let sub = (ns >> (m - SUB_BITS)) & (SUB - 1);
    ((m - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// Smallest value that falls into bucket `idx`.
pub fn bucket_lower(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let m = idx / SUB + SUB_BITS as u64 - 1;
    let sub = idx % SUB;
    (1u64 << m) + (sub << (m - SUB_BITS as u64))
}

/// One past the largest value of bucket `idx`.
pub fn bucket_upper(idx: usize) -> u64 {
    if idx + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_lower(idx + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_contain_their_values() {
        let mut v = 0u64;
        while v < 1 << 38 {
            let b = bucket(v);
            assert!(b < BUCKETS, "bucket({v}) = {b} out of range");
            assert!(
                bucket_lower(b) <= v && v < bucket_upper(b),
                "{v} not in bucket {b} [{}, {})",
                bucket_lower(b),
                bucket_upper(b)
            );
            v = v * 21 / 20 + 1;
        }
    }

    #[test]
    fn bucket_width_is_within_6_25_percent() {
        for b in SUB as usize..BUCKETS - 1 {
            let (lo, hi) = (bucket_lower(b), bucket_upper(b));
            assert!((hi - lo) * 16 <= lo, "bucket {b} [{lo}, {hi}) too wide");
        }
    }

    #[test]
    fn huge_values_land_in_the_top_bucket() {
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 40), BUCKETS - 1);
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for v in [1u64, 2, 3, 15, 16, 17, 1 << 31, (1 << 32) + 5, u64::MAX] {
            assert_eq!(msb(v), 63 - v.leading_zeros(), "msb({v})");
        }
    }
}
