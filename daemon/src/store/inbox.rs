//! The store writer's queue: many senders, one receiver, and a receiver
//! that can say which items are worth waking up for.
//!
//! Written by hand because std's `mpsc` (and crossbeam's, and tokio's)
//! wake a blocked receiver for every item. While the writer lingers for
//! more job-progress writes (see `Writer::linger`), each such write woke
//! it only for it to go back to sleep: about one thread switch per write,
//! which on a VM costs more than queueing the write. Here a sender wakes
//! the receiver only if it waits for anything, or if it lingers and the
//! item is urgent (something a client waits on) or fills the batch.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Creates a queue.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inbox = Arc::new(Inbox {
        state: Mutex::new(State {
            items: VecDeque::new(),
            wants: Wants::Nothing,
            senders: 1,
            receiver_gone: false,
            wakes: 0,
        }),
        wake: Condvar::new(),
    });
    (
        Sender {
            inbox: inbox.clone(),
        },
        Receiver { inbox },
    )
}

struct Inbox<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

struct State<T> {
    /// Queued items, oldest first, each with whether it is urgent.
    items: VecDeque<(T, bool)>,
    /// What the receiver is blocked waiting for, if it is.
    wants: Wants,
    senders: usize,
    receiver_gone: bool,
    /// How many times a sender woke the receiver, for tests.
    wakes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wants {
    /// Not blocked: no sender needs to wake it.
    Nothing,
    /// Blocked until any item comes.
    Anything,
    /// Lingering: blocked until an urgent item comes or `full` are queued.
    Urgent { full: usize },
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The critical sections only move items; a panic in one leaves the
        // queue consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side; clone it for each sender.
pub struct Sender<T> {
    inbox: Arc<Inbox<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`. An `urgent` item ends the receiver's linger at once.
    /// Gives the item back if the receiver is gone.
    pub fn send(&self, item: T, urgent: bool) -> Result<(), T> {
        let mut s = self.inbox.lock();
        if s.receiver_gone {
            return Err(item);
        }
        s.items.push_back((item, urgent));
        let wake = match s.wants {
            Wants::Nothing => false,
            Wants::Anything => true,
            Wants::Urgent { full } => urgent || s.items.len() >= full,
        };
        if wake {
            // Said once: later senders need not wake it again.
            s.wants = Wants::Nothing;
            s.wakes += 1;
            drop(s);
            self.inbox.wake.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inbox.lock().senders += 1;
        Sender {
            inbox: self.inbox.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.inbox.lock();
        s.senders -= 1;
        if s.senders == 0 {
            // A receiver blocked for more would otherwise wait forever.
            s.wants = Wants::Nothing;
            drop(s);
            self.inbox.wake.notify_one();
        }
    }
}

/// The receiving side.
pub struct Receiver<T> {
    inbox: Arc<Inbox<T>>,
}

impl<T> Receiver<T> {
    /// Waits until at least one item is queued, then moves up to `max` of
    /// them, oldest first, onto `out`. Returns false, moving nothing, once
    /// every sender is gone and the queue is empty.
    pub fn recv(&self, out: &mut Vec<T>, max: usize) -> bool {
        let mut s = self.inbox.lock();
        while s.items.is_empty() {
            if s.senders == 0 {
                return false;
            }
            s.wants = Wants::Anything;
            s = self
                .inbox
                .wake
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
        s.wants = Wants::Nothing;
        take(&mut s, out, max);
        true
    }

    /// Moves more items onto `out` until one of them is urgent, `out` holds
    /// `max`, or `deadline` passes, sleeping meanwhile. Items that are not
    /// urgent are queued without waking it.
    pub fn linger(&self, out: &mut Vec<T>, max: usize, deadline: Instant) {
        let mut s = self.inbox.lock();
        loop {
            if take(&mut s, out, max) || out.len() >= max || s.senders == 0 {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            s.wants = Wants::Urgent {
                full: max - out.len(),
            };
            s = self
                .inbox
                .wake
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        s.wants = Wants::Nothing;
    }
}

/// Moves queued items onto `out` until it holds `max`; returns whether one
/// of them was urgent.
fn take<T>(s: &mut State<T>, out: &mut Vec<T>, max: usize) -> bool {
    let mut urgent = false;
    while out.len() < max {
        let Some((item, u)) = s.items.pop_front() else {
            break;
        };
        urgent |= u;
        out.push(item);
    }
    urgent
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Dropping what is queued drops its reply channels, so whoever waits
        // on one learns at once that the writer is gone. Dropped outside the
        // lock: an item's drop may wake a task.
        let items = {
            let mut s = self.inbox.lock();
            s.receiver_gone = true;
            std::mem::take(&mut s.items)
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn items_come_out_in_order_and_in_batches_of_at_most_max() {
        let (tx, rx) = channel();
        for i in 0..5 {
            tx.send(i, false).unwrap();
        }
        let mut out = Vec::new();
        assert!(rx.recv(&mut out, 3));
        assert_eq!(out, [0, 1, 2]);
        out.clear();
        assert!(rx.recv(&mut out, 3));
        assert_eq!(out, [3, 4]);
    }

    #[test]
    fn recv_reports_the_end_once_every_sender_is_gone_and_the_queue_is_empty() {
        let (tx, rx) = channel();
        let tx2 = tx.clone();
        tx.send(1, false).unwrap();
        drop(tx);
        let waiter = std::thread::spawn(move || {
            let mut out = Vec::new();
            let first = rx.recv(&mut out, 10);
            let second = rx.recv(&mut out, 10);
            (first, second, out)
        });
        // The waiter sees the queued item, then blocks until the last
        // sender goes.
        drop(tx2);
        let (first, second, out) = waiter.join().unwrap();
        assert!(first);
        assert!(!second);
        assert_eq!(out, [1]);
    }

    #[test]
    fn a_send_after_the_receiver_is_gone_gives_the_item_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(7, true), Err(7));
    }

    #[test]
    fn dropping_the_receiver_drops_what_is_queued() {
        let (tx, rx) = channel();
        let (reply, replied) = std::sync::mpsc::channel::<()>();
        tx.send(reply, false).unwrap();
        drop(rx);
        // The only sender of `replied` was queued; it is gone now.
        assert!(replied.recv().is_err());
    }

    impl<T> Sender<T> {
        /// Blocks until the receiver lingers.
        fn until_lingering(&self) {
            while !matches!(self.inbox.lock().wants, Wants::Urgent { .. }) {
                std::thread::yield_now();
            }
        }

        fn wakes(&self) -> u64 {
            self.inbox.lock().wakes
        }
    }

    #[test]
    fn items_that_are_not_urgent_join_a_linger_without_waking_it() {
        let (tx, rx) = channel();
        let window = Duration::from_millis(50);
        let lingerer = std::thread::spawn(move || {
            let mut out = Vec::new();
            let started = Instant::now();
            rx.linger(&mut out, 100, started + window);
            (out, started.elapsed())
        });
        tx.until_lingering();
        for i in 0..3 {
            tx.send(i, false).unwrap();
        }
        let (out, waited) = lingerer.join().unwrap();
        assert_eq!(out, [0, 1, 2]);
        assert!(
            waited >= window,
            "the linger ended after {waited:?}, before its deadline"
        );
        assert_eq!(
            tx.wakes(),
            0,
            "a write that may wait woke the lingering receiver"
        );
    }

    #[test]
    fn a_receiver_waiting_for_anything_is_woken_once() {
        let (tx, rx) = channel();
        let receiver = std::thread::spawn(move || {
            let mut out = Vec::new();
            rx.recv(&mut out, 100);
            // Kept alive, so that the second send succeeds either way.
            (out, rx)
        });
        while tx.inbox.lock().wants != Wants::Anything {
            std::thread::yield_now();
        }
        tx.send(0, false).unwrap();
        tx.send(1, false).unwrap();
        let (out, _rx) = receiver.join().unwrap();
        assert!(out == [0] || out == [0, 1], "got {out:?}");
        assert_eq!(tx.wakes(), 1);
    }

    #[test]
    fn an_urgent_item_ends_the_linger_at_once() {
        let (tx, rx) = channel();
        tx.send(0, false).unwrap();
        let mut out = Vec::new();
        let lingerer = std::thread::spawn(move || {
            // An hour: the test would hang, not pass, if urgency were ignored.
            rx.linger(&mut out, 100, Instant::now() + Duration::from_secs(3600));
            out
        });
        tx.until_lingering();
        tx.send(1, false).unwrap();
        tx.send(2, true).unwrap();
        let out = lingerer.join().unwrap();
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(tx.wakes(), 1);
    }

    #[test]
    fn a_full_batch_ends_the_linger_at_once() {
        let (tx, rx) = channel();
        let lingerer = std::thread::spawn(move || {
            let mut out = vec![0];
            rx.linger(&mut out, 3, Instant::now() + Duration::from_secs(3600));
            (out, rx)
        });
        tx.until_lingering();
        tx.send(1, false).unwrap();
        tx.send(2, false).unwrap();
        tx.send(3, false).unwrap();
        // At most `max`; the rest stays queued.
        let (out, rx) = lingerer.join().unwrap();
        assert_eq!(out, [0, 1, 2]);
        let mut rest = Vec::new();
        assert!(rx.recv(&mut rest, 10));
        assert_eq!(rest, [3]);
    }

    #[test]
    fn the_last_sender_leaving_ends_the_linger() {
        let (tx, rx) = channel::<u32>();
        let lingerer = std::thread::spawn(move || {
            let mut out = Vec::new();
            rx.linger(&mut out, 3, Instant::now() + Duration::from_secs(3600));
            out
        });
        drop(tx);
        assert!(lingerer.join().unwrap().is_empty());
    }
}
