//! The simulator's event queue: events in virtual-time order, first-in first-out among
//! events scheduled for the same instant (so two messages sent at once on one link arrive in
//! the order they were sent).
//!
//! Events live in a slab that reuses its slots; the heap orders small `(time, sequence,
//! slot)` keys, so sifting never moves an event itself and scheduling allocates nothing once
//! the slab has grown to the number of events in flight.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shoal_proto::Instant;

#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<E>>,
    free_slots: Vec<u32>,
    next_sequence: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue::new()
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> EventQueue<E> {
        EventQueue {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free_slots: Vec::new(),
            next_sequence: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn schedule(&mut self, at: Instant, event: E) {
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slab.push(Some(event));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap
            .push(Reverse((at.as_nanos(), self.next_sequence, slot)));
        self.next_sequence += 1;
    }

    /// When the earliest event is due.
    pub fn next_time(&self) -> Option<Instant> {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| Instant::from_nanos(*at))
    }

    /// Removes the earliest event.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let event = self.slab[slot as usize]
            .take()
            .expect("every heap entry names a filled slot");
        self.free_slots.push(slot);
        Some((Instant::from_nanos(at), event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_order_then_fifo() {
        let mut queue = EventQueue::new();
        queue.schedule(Instant::from_nanos(5), "late");
        queue.schedule(Instant::from_nanos(1), "first");
        queue.schedule(Instant::from_nanos(1), "second");
        queue.schedule(Instant::from_nanos(3), "middle");
        let order: Vec<&str> = std::iter::from_fn(|| queue.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["first", "second", "middle", "late"]);
        assert!(queue.is_empty());
    }
}
