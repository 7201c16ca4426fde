//! A leaky bucket (`limit-req`, nginx's `limit_req` algorithm): requests fill the bucket by
//! one each and it drains at `rate` per second; a request that finds more than `burst` in it
//! is refused, one that finds some is delayed until what is ahead of it has drained.

use super::pair::Pair;
use super::table::Cell;
use super::Retired;

/// The time of the last admitted request (monotonic ms; 0: none yet) and the excess then,
/// in thousandths of a request, as nginx keeps them.
pub struct Bucket(Pair);

/// The bucket's parameters: `rate` and `burst` in thousandths (per second; of a request).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub rate_milli: u64,
    pub burst_milli: u64,
}

/// What one request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through after `delay_ms` (0: at once); `excess` thousandths were ahead of it.
    Pass {
        delay_ms: u64,
        excess: u64,
    },
    Reject,
}

impl Rate {
    /// The excess a request at `now` finds, given the last admitted one (`last`, `excess`).
    fn excess_at(&self, last: u64, excess: u64, now: u64) -> u64 {
        if last == 0 {
            return 0;
        }
        let drained = self.rate_milli as u128 * now.saturating_sub(last) as u128 / 1000;
        (excess as u128 + 1000).saturating_sub(drained) as u64
    }
}

impl Bucket {
    pub fn take(&self, now: u64, rate: &Rate) -> Result<Verdict, Retired> {
        self.0.update(|last, excess| {
            let excess = rate.excess_at(last, excess, now);
            if excess > rate.burst_milli {
                return Err(Verdict::Reject);
            }
            let pass = Verdict::Pass {
                delay_ms: excess * 1000 / rate.rate_milli.max(1),
                excess,
            };
            Ok(((now, excess), pass))
        })
    }
}

impl Cell for Bucket {
    type Params = Rate;

    fn fresh() -> Self {
        Bucket(Pair::zero())
    }

    /// Idle once the next request would find it empty, as if the key were new.
    fn retire_if_idle(&self, now: u64, rate: &Rate) -> bool {
        self.0
            .retire_if(|last, excess| last == 0 || rate.excess_at(last, excess, now) == 0)
    }

    fn is_retired(&self) -> bool {
        self.0.is_retired()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_refuses_then_drains() {
        // 10 per second, burst 2: three at once pass (excess 0, 1, 2), the fourth is refused.
        let rate = Rate {
            rate_milli: 10_000,
            burst_milli: 2_000,
        };
        let b = Bucket::fresh();
        assert_eq!(
            b.take(1000, &rate),
            Ok(Verdict::Pass {
                delay_ms: 0,
                excess: 0
            })
        );
        assert_eq!(
            b.take(1000, &rate),
            Ok(Verdict::Pass {
                delay_ms: 100,
                excess: 1000
            })
        );
        assert_eq!(
            b.take(1000, &rate),
            Ok(Verdict::Pass {
                delay_ms: 200,
                excess: 2000
            })
        );
        assert_eq!(b.take(1000, &rate), Ok(Verdict::Reject));
        // 100 ms later one request has drained.
        assert_eq!(
            b.take(1100, &rate),
            Ok(Verdict::Pass {
                delay_ms: 200,
                excess: 2000
            })
        );
        assert!(!b.retire_if_idle(1200, &rate));
        assert!(b.retire_if_idle(1500, &rate));
    }
}
