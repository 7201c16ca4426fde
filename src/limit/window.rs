//! A fixed window counter (`limit-count`): the window starts at a key's first request and
//! lasts `time_window`; within it at most `count` requests pass (APISIX's `fixed` window).

use super::pair::Pair;
use super::table::Cell;
use super::Retired;

/// The window's end (monotonic ms) and the requests counted in it, in one word so that
/// starting a window and counting in it are one compare-and-swap.
pub struct Window(Pair);

/// What counting one request decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through; `remaining` requests are left in the window, which ends in `reset_ms`
    /// (`first`: this request opened the window).
    Pass {
        remaining: u64,
        reset_ms: u64,
        first: bool,
    },
    /// Over the limit until the window ends, in `reset_ms`.
    Reject { reset_ms: u64 },
}

impl Window {
    /// Counts `cost` requests at `now` against `limit` per `window_ms`. A refused request is
    /// not counted.
    pub fn take(
        &self,
        now: u64,
        window_ms: u64,
        limit: u64,
        cost: u64,
    ) -> Result<Verdict, Retired> {
        self.0.update(|end, used| {
            let (end, used, first) = match end > now {
                true => (end, used, false),
                false => (now + window_ms, 0, true),
            };
            if used + cost > limit {
                return Err(Verdict::Reject {
                    reset_ms: end - now,
                });
            }
            let pass = Verdict::Pass {
                remaining: limit - used - cost,
                reset_ms: end - now,
                first,
            };
            Ok(((end, used + cost), pass))
        })
    }
}

impl Cell for Window {
    type Params = ();

    fn fresh() -> Self {
        Window(Pair::zero())
    }

    fn retire_if_idle(&self, now: u64, _: &()) -> bool {
        self.0.retire_if(|end, _| end <= now)
    }

    fn is_retired(&self) -> bool {
        self.0.is_retired()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_starts_a_new_one_after() {
        let w = Window::fresh();
        let pass = |r: Result<Verdict, Retired>| matches!(r, Ok(Verdict::Pass { .. }));
        assert_eq!(
            w.take(1000, 500, 2, 1),
            Ok(Verdict::Pass {
                remaining: 1,
                reset_ms: 500,
                first: true
            })
        );
        assert!(pass(w.take(1100, 500, 2, 1)));
        assert_eq!(
            w.take(1200, 500, 2, 1),
            Ok(Verdict::Reject { reset_ms: 300 })
        );
        assert!(!w.retire_if_idle(1499, &()));
        assert!(pass(w.take(1500, 500, 2, 1)));
        assert!(w.retire_if_idle(2000, &()));
        assert_eq!(w.take(2000, 500, 2, 1), Err(Retired));
    }
}
