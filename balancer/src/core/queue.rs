//! The balancer's wait queue: requests that found every backend full wait here, first in, first
//! out, until a slot frees, the queue timeout passes, or the client goes away. Sans-IO: the proxy
//! stores a wake-up handle per entry, the simulator a request id; time is passed in.

use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// What the dispatcher does with the request at the head of the queue (see
/// [`WaitQueue::dispatch`]).
#[derive(Debug)]
pub enum Head<R> {
    /// Give it `R` (a backend slot) and take it off the queue.
    Serve(R),
    /// Drop it: nobody waits for it any more (its client left).
    Discard,
    /// Ask again: the slot it was offered went to a racing request meanwhile. The rule stops
    /// after a few lost races in a row, so a dispatch never spins.
    Retry,
    /// Leave it at the head and stop: no backend can take it now.
    Stop,
}

/// Where an arriving request goes (see [`WaitQueue::admit`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<R, T> {
    /// Straight to a backend: nobody was waiting and the policy found a free slot.
    Served(R),
    /// It waits, with this ticket.
    Queued(u64),
    /// The queue is full: it is shed (503), and given back.
    Shed(T),
}

/// Lost races in a row after which a dispatch stops (the slots it saw free are being taken by
/// requests that arrived meanwhile; the next release dispatches again).
const MAX_LOST_RACES: u32 = 4;

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

    /// The arrival rule the proxy and the simulator share: a request that arrives while nobody
    /// waits asks the policy (`pick`); when nobody waits and the policy finds no free slot, or
    /// when others wait already (first come, first served: no overtaking the queue), it joins
    /// the queue, or is shed when the queue is full. The proxy takes the first branch without
    /// the queue's lock (its emptiness read from an atomic count) and, having pushed, dispatches
    /// once more, since a slot may have freed in between; the simulator has no in between.
    pub fn admit<R>(
        &mut self,
        item: T,
        now: Nanos,
        pick: impl FnOnce(&T) -> Option<R>,
    ) -> Admission<R, T> {
        if self.is_empty() {
            if let Some(r) = pick(&item) {
                return Admission::Served(r);
            }
        }
        match self.push(item, now) {
            Ok(ticket) => Admission::Queued(ticket),
            Err(item) => Admission::Shed(item),
        }
    }

    /// The dispatch rule the proxy and the simulator share, run whenever a slot frees or the
    /// fleet or the policy changes: hands slots to waiting requests from the head, in order,
    /// until `judge` finds none for the head. Strict FIFO (head-of-line): a waiter is never
    /// passed over for a later one whose key might fit, so none starves (the M/M/c central
    /// queue the `central_queue` policy models). `serve` gets each request taken with its slot;
    /// returns how many were served.
    pub fn dispatch<R>(
        &mut self,
        mut judge: impl FnMut(&T) -> Head<R>,
        mut serve: impl FnMut(T, R),
    ) -> usize {
        let (mut served, mut lost_races) = (0, 0);
        while let Some(head) = self.front() {
            match judge(head) {
                Head::Serve(r) => {
                    let item = self.pop().expect("the head exists").item;
                    serve(item, r);
                    served += 1;
                    lost_races = 0;
                }
                Head::Discard => {
                    self.pop();
                }
                Head::Retry => {
                    lost_races += 1;
                    if lost_races > MAX_LOST_RACES {
                        break;
                    }
                }
                Head::Stop => break,
            }
        }
        served
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
    fn arrivals_go_straight_to_a_free_backend_only_when_nobody_waits() {
        let mut q = WaitQueue::new(1);
        assert_eq!(q.admit("a", 0, |_| Some(7)), Admission::Served(7));
        assert_eq!(q.admit("b", 0, |_| None::<u32>), Admission::Queued(0));
        let mut asked = false;
        let c = q.admit("c", 1, |_| {
            asked = true;
            Some(7)
        });
        assert!(
            !asked,
            "no overtaking: the policy is not asked while others wait"
        );
        assert_eq!(c, Admission::Shed("c"), "the queue of one is full");
    }

    #[test]
    fn dispatch_serves_from_the_head_until_a_pick_fails() {
        let mut q = WaitQueue::new(10);
        for (i, w) in ["gone", "a", "b", "c"].into_iter().enumerate() {
            q.push(w, i as Nanos).unwrap();
        }
        let mut free = 2;
        let mut served = Vec::new();
        let n = q.dispatch(
            |w| match (*w, free) {
                ("gone", _) => Head::Discard,
                (_, 0) => Head::Stop,
                _ => {
                    free -= 1;
                    Head::Serve(free)
                }
            },
            |w, slot| served.push((w, slot)),
        );
        assert_eq!(n, 2);
        assert_eq!(served, vec![("a", 1), ("b", 0)]);
        assert_eq!(q.front(), Some(&"c"), "left waiting at the head");
    }

    #[test]
    fn dispatch_gives_up_after_a_few_lost_races() {
        let mut q = WaitQueue::new(10);
        q.push("a", 0).unwrap();
        let mut asked = 0;
        let n = q.dispatch(
            |_| {
                asked += 1;
                Head::<()>::Retry
            },
            |_, _| unreachable!(),
        );
        assert_eq!((n, asked), (0, MAX_LOST_RACES + 1));
        assert_eq!(q.len(), 1);
    }

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
