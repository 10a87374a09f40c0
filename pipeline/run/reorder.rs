//! The reorder buffer: messages arrive out of order (several workers finish batches in
//! any order) and leave in sequence order. Used by every stage's dispatcher and by the
//! sink.

use std::collections::BTreeMap;

/// Holds messages until their turn. Sequence numbers must be unique.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    pending: BTreeMap<u64, T>,
}

impl<T> Reorder<T> {
    /// A buffer whose first message is `start`.
    pub fn new(start: u64) -> Reorder<T> {
        Reorder {
            next: start,
            pending: BTreeMap::new(),
        }
    }

    /// Takes message `seq`.
    pub fn push(&mut self, seq: u64, msg: T) {
        self.pending.insert(seq, msg);
    }

    /// The next message in order, if it has arrived.
    pub fn pop(&mut self) -> Option<T> {
        let msg = self.pending.remove(&self.next)?;
        self.next += 1;
        Some(msg)
    }

    /// The sequence number of the next message to leave.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Messages waiting for an earlier one.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_whatever_the_arrival_order() {
        let mut r = Reorder::new(10);
        let mut out = Vec::new();
        for seq in [12, 10, 14, 11, 13] {
            r.push(seq, seq * 2);
            while let Some(m) = r.pop() {
                out.push(m);
            }
        }
        assert_eq!(out, [20, 22, 24, 26, 28]);
        assert_eq!(r.next_seq(), 15);
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn holds_everything_behind_a_gap() {
        let mut r = Reorder::new(0);
        r.push(1, "b");
        r.push(2, "c");
        assert_eq!(r.pop(), None);
        assert_eq!(r.waiting(), 2);
        r.push(0, "a");
        assert_eq!(
            [r.pop(), r.pop(), r.pop(), r.pop()],
            [Some("a"), Some("b"), Some("c"), None]
        );
    }
}
