//! The balancer's wait queue: requests that found every backend full wait here, first in, first
//! out, until a slot frees, the queue timeout passes, or the client goes away. Sans-IO: the proxy
//! stores a wake-up handle per entry, the simulator a request id; time is passed in.

use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// A bounded FIFO of waiting requests. Tickets increase monotonically, so an entry can be found
/// (for removal when it times out or is cancelled) by binary search.
#[derive(Debug)]
pub struct WaitQueue<T> {
    entries: VecDeque<Entry<T>>,
    max_len: usize,
    next_ticket: u64,
}

#[derive(Debug)]
struct Entry<T> {
    ticket: u64,
    enqueued: Nanos,
    item: T,
}

/// An entry taken off the front of the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Dequeued<T> {
    /// The ticket `push` returned for it.
    pub ticket: u64,
    /// When it was queued.
    pub enqueued: Nanos,
    /// What was queued.
    pub item: T,
}

impl<T> WaitQueue<T> {
    /// An empty queue holding at most `max_len` entries (0: nothing ever waits).
    pub fn new(max_len: usize) -> Self {
        WaitQueue {
            entries: VecDeque::new(),
            max_len,
            next_ticket: 0,
        }
    }

    /// Queues `item` at the back. Gives the item back when the queue is full, so the caller can
    /// shed it.
    pub fn push(&mut self, item: T, now: Nanos) -> Result<u64, T> {
        if self.entries.len() >= self.max_len {
            return Err(item);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.entries.push_back(Entry {
            ticket,
            enqueued: now,
            item,
        });
        Ok(ticket)
    }

    /// Takes the oldest entry.
    pub fn pop(&mut self) -> Option<Dequeued<T>> {
        self.entries.pop_front().map(|e| Dequeued {
            ticket: e.ticket,
            enqueued: e.enqueued,
            item: e.item,
        })
    }

    /// The oldest entry, without taking it.
    pub fn front(&self) -> Option<&T> {
        self.entries.front().map(|e| &e.item)
    }

    /// Removes the entry with `ticket` (it timed out or its client left); None when it is no
    /// longer queued (it was dispatched or removed already).
    pub fn remove(&mut self, ticket: u64) -> Option<T> {
        let pos = self
            .entries
            .binary_search_by_key(&ticket, |e| e.ticket)
            .ok()?;
        self.entries.remove(pos).map(|e| e.item)
    }

    /// Removes and returns, oldest first, every entry queued at or before `deadline` (with one
    /// timeout for all, the timed-out entries are always at the front).
    pub fn expire(&mut self, deadline: Nanos) -> impl Iterator<Item = Dequeued<T>> + '_ {
        std::iter::from_fn(move || {
            if self.entries.front()?.enqueued <= deadline {
                self.pop()
            } else {
                None
            }
        })
    }

    /// How many entries wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound on `len`.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Changes the bound (on config reload); entries already queued stay.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// How long the oldest entry has waited.
    pub fn oldest_wait(&self, now: Nanos) -> Option<Nanos> {
        self.entries.front().map(|e| now.saturating_sub(e.enqueued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_in_fifo_order() {
        let mut q = WaitQueue::new(10);
        for i in 0..5 {
            q.push(i, i as Nanos).unwrap();
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.pop().map(|d| d.item)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_queue_gives_the_item_back() {
        let mut q = WaitQueue::new(2);
        q.push("a", 0).unwrap();
        q.push("b", 0).unwrap();
        assert_eq!(q.push("c", 0), Err("c"));
        assert_eq!(q.len(), 2);
        let mut none = WaitQueue::new(0);
        assert_eq!(none.push(1, 0), Err(1));
    }

    #[test]
    fn remove_takes_only_that_entry_and_keeps_order() {
        let mut q = WaitQueue::new(10);
        let tickets: Vec<u64> = (0..5).map(|i| q.push(i, 0).unwrap()).collect();
        assert_eq!(q.remove(tickets[2]), Some(2));
        assert_eq!(q.remove(tickets[2]), None, "already gone");
        let order: Vec<i32> = std::iter::from_fn(|| q.pop().map(|d| d.item)).collect();
        assert_eq!(order, vec![0, 1, 3, 4]);
        assert_eq!(
            q.remove(tickets[0]),
            None,
            "dispatched entries are not found"
        );
    }

    #[test]
    fn expire_takes_the_timed_out_front() {
        let mut q = WaitQueue::new(10);
        q.push('a', 100).unwrap();
        q.push('b', 200).unwrap();
        q.push('c', 300).unwrap();
        let gone: Vec<char> = q.expire(200).map(|d| d.item).collect();
        assert_eq!(gone, vec!['a', 'b']);
        assert_eq!(q.len(), 1);
        assert_eq!(q.oldest_wait(350), Some(50));
    }
}
