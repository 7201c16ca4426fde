//! Spare objects a core keeps for reuse (connection scratch sets, relay buffers), trimmed to
//! what recent load needed.
//!
//! Recycling keeps allocation off the request path, but a pool that only grows keeps a
//! burst's peak for good: 256 idle 32 KiB relay buffers per core outlive the burst that
//! made them. Each [`Spares`] remembers the fewest items it held since its last
//! [`Spares::trim`] (run every second): that many were never needed over the interval and
//! are freed. A steady load keeps what it uses; after a burst the memory goes back within
//! two trims.

use std::cell::{Cell, RefCell};

pub struct Spares<T> {
    items: RefCell<Vec<T>>,
    /// The fewest items held since the last trim.
    low: Cell<usize>,
    /// Items kept at most; more given back are dropped.
    max: usize,
}

impl<T> Spares<T> {
    pub fn new(max: usize) -> Spares<T> {
        Spares {
            items: RefCell::new(Vec::new()),
            low: Cell::new(0),
            max,
        }
    }

    /// A spare, if any.
    pub fn take(&self) -> Option<T> {
        let mut items = self.items.borrow_mut();
        let item = items.pop();
        self.low.set(self.low.get().min(items.len()));
        item
    }

    /// Keeps `item` for reuse, or drops it when `max` are kept.
    pub fn give(&self, item: T) {
        let mut items = self.items.borrow_mut();
        if items.len() < self.max {
            items.push(item);
        }
    }

    /// Frees the items not taken since the last trim; returns how many.
    pub fn trim(&self) -> usize {
        let mut items = self.items.borrow_mut();
        let surplus = self.low.get().min(items.len());
        let keep = items.len() - surplus;
        items.truncate(keep);
        items.shrink_to(keep.max(16));
        self.low.set(keep);
        surplus
    }

    /// Frees every item.
    pub fn clear(&self) {
        *self.items.borrow_mut() = Vec::new();
        self.low.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::Spares;

    #[test]
    fn trim_frees_what_an_interval_did_not_use() {
        let s = Spares::new(8);
        for i in 0..6 {
            s.give(i);
        }
        // The first interval saw the pool empty: nothing is surplus yet.
        assert_eq!(s.trim(), 0);
        // Two taken and given back: four were never needed.
        let (a, b) = (s.take().unwrap(), s.take().unwrap());
        s.give(a);
        s.give(b);
        assert_eq!(s.trim(), 4);
        assert_eq!(s.trim(), 2, "unused for a whole interval");
        assert!(s.take().is_none());
    }

    #[test]
    fn at_most_max_are_kept() {
        let s = Spares::new(2);
        for i in 0..5 {
            s.give(i);
        }
        assert_eq!(s.items.borrow().len(), 2);
        s.clear();
        assert!(s.take().is_none());
    }
}
