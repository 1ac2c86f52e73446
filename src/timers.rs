//! The timer heap: deadlines in order, cancelled timers dropped lazily.
//!
//! Cancelling a timer only marks it (the handle's own flag); the heap drops marked
//! entries when they reach the top, or all at once when they make up most of the heap,
//! so `cancel()` stays O(1) and a loop that schedules and cancels many timeouts (every
//! `asyncio.wait_for`) does not grow without bound.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Below this many timers the heap is never compacted: popping cancelled heads is cheaper.
const COMPACT_MIN_TIMERS: usize = 100;

/// What the heap needs of a timer besides its deadline: its place in scheduling order, the
/// tie-break among equal deadlines. Kept in the timer itself, since only ties read it: the
/// entry is then 16 bytes, four to a cache line.
pub trait Sequenced {
    fn set_seq(&self, seq: u64);
    fn seq(&self) -> u64;
}

struct Entry<T> {
    /// The deadline as `ordered_bits`: sifting compares integers.
    deadline: u64,
    timer: T,
}

impl<T> Entry<T> {
    fn when(&self) -> f64 {
        from_ordered_bits(self.deadline)
    }
}

/// A deadline as an integer of the same order (IEEE-754 total order), NaN lowest: the
/// stdlib runs a NaN deadline at once.
fn ordered_bits(when: f64) -> u64 {
    if when.is_nan() {
        return 0;
    }
    let bits = when.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The inverse of `ordered_bits` (a NaN comes back as a NaN).
fn from_ordered_bits(ordered: u64) -> f64 {
    if ordered >> 63 == 1 {
        f64::from_bits(ordered & !(1 << 63))
    } else {
        f64::from_bits(!ordered)
    }
}

impl<T: Sequenced> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T: Sequenced> Eq for Entry<T> {}
impl<T: Sequenced> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Sequenced> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline, and among
    /// equal deadlines the one scheduled first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .cmp(&self.deadline)
            .then_with(|| other.timer.seq().cmp(&self.timer.seq()))
    }
}

/// Timers ordered by deadline (seconds on the loop clock), first-scheduled first on ties.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T: Sequenced> TimerHeap<T> {
    pub fn push(&mut self, when: f64, timer: T) {
        timer.set_seq(self.next_seq);
        self.next_seq += 1;
        let deadline = ordered_bits(when);
        self.heap.push(Entry { deadline, timer });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest deadline, if any timer is left.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(Entry::when)
    }

    /// Pops the earliest timer if its deadline is not after `now` (a NaN deadline is due).
    pub fn pop_due(&mut self, now: f64) -> Option<T> {
        match self.heap.peek() {
            Some(e) if e.when().is_nan() || e.when() <= now => self.heap.pop().map(|e| e.timer),
            _ => None,
        }
    }

    /// Pops cancelled timers off the top into `garbage`.
    pub fn drop_cancelled_heads(&mut self, cancelled: impl Fn(&T) -> bool, garbage: &mut Vec<T>) {
        while self.heap.peek().is_some_and(|e| cancelled(&e.timer)) {
            if let Some(e) = self.heap.pop() {
                garbage.push(e.timer);
            }
        }
    }

    /// When more than half of at least `COMPACT_MIN_TIMERS` timers are cancelled, moves all
    /// cancelled ones into `garbage` and rebuilds the heap. Returns whether it compacted.
    pub fn compact_if_mostly_cancelled(
        &mut self,
        cancelled_count: usize,
        cancelled: impl Fn(&T) -> bool,
        garbage: &mut Vec<T>,
    ) -> bool {
        let len = self.heap.len();
        if len <= COMPACT_MIN_TIMERS || cancelled_count * 2 <= len {
            return false;
        }
        let mut kept = Vec::with_capacity(len - cancelled_count.min(len));
        for entry in std::mem::take(&mut self.heap).into_vec() {
            if cancelled(&entry.timer) {
                garbage.push(entry.timer);
            } else {
                kept.push(entry);
            }
        }
        self.heap = BinaryHeap::from(kept);
        true
    }

    /// The timers, in heap order (not deadline order).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.timer)
    }

    /// Removes every timer (the caller drops them outside its locks).
    pub fn drain_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.timer)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::{from_ordered_bits, ordered_bits, Sequenced, TimerHeap};

    /// A timer for the tests: an id, and the sequence number the heap gives it.
    struct Timer(u32, Cell<u64>);

    impl Sequenced for Timer {
        fn set_seq(&self, seq: u64) {
            self.1.set(seq);
        }
        fn seq(&self) -> u64 {
            self.1.get()
        }
    }

    fn t(id: u32) -> Timer {
        Timer(id, Cell::new(u64::MAX))
    }

    fn ids(timers: &[Timer]) -> Vec<u32> {
        timers.iter().map(|timer| timer.0).collect()
    }

    fn due(heap: &mut TimerHeap<Timer>, now: f64) -> Vec<u32> {
        std::iter::from_fn(|| heap.pop_due(now).map(|timer| timer.0)).collect()
    }

    #[test]
    fn pops_in_deadline_order_then_fifo() {
        let mut heap = TimerHeap::default();
        heap.push(3.0, t(30));
        heap.push(1.0, t(10));
        heap.push(2.0, t(20));
        heap.push(1.0, t(11));
        assert_eq!(due(&mut heap, 2.5), vec![10, 11, 20]);
        assert_eq!(heap.next_deadline(), Some(3.0));
        assert_eq!(due(&mut heap, 2.9), Vec::<u32>::new());
        assert_eq!(
            due(&mut heap, 3.0),
            vec![30],
            "a deadline equal to now is due"
        );
    }

    #[test]
    fn ordered_bits_round_trip_and_keep_the_order() {
        let deadlines = [
            f64::NEG_INFINITY,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            7.25,
            f64::INFINITY,
        ];
        for pair in deadlines.windows(2) {
            assert!(ordered_bits(pair[0]) < ordered_bits(pair[1]), "{pair:?}");
        }
        for when in deadlines {
            assert_eq!(
                from_ordered_bits(ordered_bits(when)).to_bits(),
                when.to_bits()
            );
        }
        assert!(from_ordered_bits(ordered_bits(f64::NAN)).is_nan());
    }

    #[test]
    fn nan_deadline_is_due_first() {
        let mut heap = TimerHeap::default();
        heap.push(5.0, t(1));
        heap.push(f64::NAN, t(2));
        assert_eq!(due(&mut heap, 0.0), vec![2]);
    }

    #[test]
    fn orders_negative_zero_and_infinite_deadlines() {
        let mut heap = TimerHeap::default();
        let deadlines = [
            3.5,
            -0.0,
            f64::INFINITY,
            -2.0,
            0.0,
            f64::NEG_INFINITY,
            -1e-300,
            1e-300,
        ];
        for (i, when) in deadlines.iter().enumerate() {
            heap.push(*when, t(i as u32));
        }
        // -0.0 and 0.0 are equal deadlines for `<=` but total order puts -0.0 first.
        assert_eq!(due(&mut heap, f64::INFINITY), vec![5, 3, 6, 1, 4, 7, 0, 2]);
    }

    #[test]
    fn compaction_keeps_live_timers_in_order() {
        let mut heap = TimerHeap::default();
        for i in 0..1000u32 {
            heap.push(f64::from(i), t(i));
        }
        let cancelled = |timer: &Timer| timer.0 % 10 != 0;
        let mut garbage = Vec::new();
        assert!(!heap.compact_if_mostly_cancelled(400, cancelled, &mut garbage));
        assert!(heap.compact_if_mostly_cancelled(900, cancelled, &mut garbage));
        assert_eq!(garbage.len(), 900);
        assert_eq!(heap.len(), 100);
        let expected: Vec<u32> = (0..1000).filter(|t| t % 10 == 0).collect();
        assert_eq!(due(&mut heap, 1e9), expected);
    }

    #[test]
    fn cancelled_heads_are_dropped() {
        let mut heap = TimerHeap::default();
        for i in 0..5u32 {
            heap.push(f64::from(i), t(i));
        }
        let mut garbage = Vec::new();
        heap.drop_cancelled_heads(|timer| timer.0 < 3, &mut garbage);
        assert_eq!(ids(&garbage), vec![0, 1, 2]);
        assert_eq!(heap.next_deadline(), Some(3.0));
    }
}
