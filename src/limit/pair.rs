//! Two 64-bit numbers updated together by one compare-and-swap (a window's end and count, a
//! bucket's last time and excess), or retired for good.

use super::Retired;
use portable_atomic::AtomicU128;
use std::sync::atomic::Ordering;

pub struct Pair(AtomicU128);

/// No update accepts it: the pair's cell is being unlinked (see `table.rs`).
const RETIRED: u128 = u128::MAX;

fn join((hi, lo): (u64, u64)) -> u128 {
    ((hi as u128) << 64) | lo as u128
}

fn split(word: u128) -> (u64, u64) {
    ((word >> 64) as u64, word as u64)
}

impl Pair {
    pub fn zero() -> Pair {
        Pair(AtomicU128::new(0))
    }

    /// Updates the pair with `next` (from the current value) until it sticks; `next` returns
    /// `Err` to leave the pair alone and return that.
    pub fn update<R>(
        &self,
        mut next: impl FnMut(u64, u64) -> Result<((u64, u64), R), R>,
    ) -> Result<R, Retired> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current == RETIRED {
                return Err(Retired);
            }
            let (hi, lo) = split(current);
            let (value, result) = match next(hi, lo) {
                Ok(update) => update,
                Err(result) => return Ok(result),
            };
            match self.0.compare_exchange_weak(
                current,
                join(value),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(result),
                Err(seen) => current = seen,
            }
        }
    }

    /// Retires the pair if `idle` says so of its value; returns whether it did.
    pub fn retire_if(&self, idle: impl FnOnce(u64, u64) -> bool) -> bool {
        let current = self.0.load(Ordering::Acquire);
        let (hi, lo) = split(current);
        current != RETIRED
            && idle(hi, lo)
            && self
                .0
                .compare_exchange(current, RETIRED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn is_retired(&self) -> bool {
        self.0.load(Ordering::Acquire) == RETIRED
    }
}
