//! A concurrency counter (`limit-conn`): requests in progress for a key, counted when one
//! is admitted and released when it ends (however it ends: the release is a guard's drop).

use super::table::Cell;
use super::Retired;
use std::sync::atomic::{AtomicI64, Ordering};

pub struct Conns(AtomicI64);

const RETIRED: i64 = i64::MIN;

impl Conns {
    /// Counts one more request unless that makes more than `most`; returns the count with
    /// it, or `None` when refused.
    pub fn enter(&self, most: i64) -> Result<Option<i64>, Retired> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current == RETIRED {
                return Err(Retired);
            }
            if current + 1 > most {
                return Ok(None);
            }
            match self.0.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Some(current + 1)),
                Err(seen) => current = seen,
            }
        }
    }

    /// Releases one request counted by [`Conns::enter`] (the cell cannot be retired while it
    /// counts one).
    pub fn leave(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Cell for Conns {
    type Params = ();

    fn fresh() -> Self {
        Conns(AtomicI64::new(0))
    }

    fn retire_if_idle(&self, _now: u64, _: &()) -> bool {
        self.0
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn is_retired(&self) -> bool {
        self.0.load(Ordering::Acquire) == RETIRED
    }
}
