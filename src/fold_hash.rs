//! A fast hash for maps looked up on every request whose keys a client cannot choose: keys
//! from the config (node addresses, route paths), or keyed digests (credentials, limit keys:
//! a client's input already hashed under a secret random key).
//!
//! std's default SipHash resists hash flooding: an attacker who chooses the *inserted* keys
//! cannot make them collide. Config maps are filled from the config only (client input is
//! only looked up, which cannot degrade a map whatever it hashes to); a keyed digest is
//! random to a client even when the client's input inserts it. So a multiplicative hash
//! (FxHash's step: rotate, xor, multiply per word) serves, at a fraction of SipHash's cost,
//! which was a visible share of a small request's CPU.

use std::hash::{BuildHasher, Hasher};

/// Builds [`FoldHasher`]s. Use only for maps whose keys clients cannot choose (see above).
#[derive(Default, Clone, Copy, Debug)]
pub struct FoldHash;

impl BuildHasher for FoldHash {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

/// Folds every written word into the state with one multiply.
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_of_every_length_stay_apart() {
        let mut m: HashMap<Box<[u8]>, usize, FoldHash> = HashMap::default();
        let keys: Vec<String> = (0..2000).map(|i| format!("/api/v{i}/x")).collect();
        for (i, k) in keys.iter().enumerate() {
            m.insert(k.as_bytes().into(), i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k.as_bytes()), Some(&i));
        }
        assert_eq!(m.get(&b"/api/v1/y"[..]), None);
    }
}
