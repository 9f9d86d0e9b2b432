//! Interned JIT function names for the perf map.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Each function is usually logged several times (once per tier) under the
/// same normalised name, so names are stored once. Keyed by hash so growing
/// the table never touches the strings again.
#[derive(Default)]
pub(super) struct NameTable {
    names: Vec<Box<str>>,
    /// Total length of `names`, which the perf map bounds.
    bytes: usize,
    ids_by_hash: HashMap<u64, u32, BuildHasherDefault<FxHasher>>,
}

impl NameTable {
    pub(super) fn intern(&mut self, name: &str) -> u32 {
        let mut hasher = FxHasher::default();
        hasher.write(name.as_bytes());
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct jit names");
        match self.ids_by_hash.entry(hasher.finish()) {
            Entry::Occupied(known) if *self.names[*known.get() as usize] == *name => {
                return *known.get();
            }
            // A hash collision only costs the sharing of this one name.
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        self.names.push(name.into());
        self.bytes += name.len();
        id
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn get(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }
}

/// FxHash: SipHash dominated loading a million-line map. The names are chosen
/// by the profiled program, but a collision only costs the sharing of one
/// name (see `intern`), never a probe chain, so forged collisions gain nothing.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.add(u64::from_le_bytes(tail));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits, which pick the bucket, poorly
        // mixed; rotating brings the well mixed high bits down.
        self.0.rotate_left(26)
    }
}
