//! A worker's mailbox: a FIFO with one receiver (the instance) and any number of
//! senders. tokio's channels would do, but they allocate a block of 32 slots (1.3 KiB)
//! at creation, and an idle worker keeps it: this queue holds nothing until a message
//! comes, which matters at a hundred thousand idle workers.
//!
//! What others send (calls and casts: messages whose [`Weigh::weight`] is `Some`) is
//! bounded, in messages and in bytes: a sender faster than the instance, or one that
//! sends without end, is refused once the queue holds that much, instead of growing the
//! node's memory until it is killed with every other worker on it (Orleans refuses
//! requests past `MaxEnqueuedRequestsHardLimit` the same way). What the host itself
//! queues (stops, merges, membership events, timers with their own cap) always goes in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a queued message counts against the mailbox's bounds.
pub trait Weigh {
    /// Its size in bytes when it counts (a call's or a cast's message); `None` for what
    /// the host queues itself, which is never refused.
    fn weight(&self) -> Option<usize>;
}

/// How much a mailbox holds of what counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Messages waiting.
    pub messages: usize,
    /// Their bytes; one message larger than this is still taken into an empty queue
    /// (whether it fits its instance is the instance's affair).
    pub bytes: usize,
}

impl Bounds {
    /// No bounds at all (tests, and mailboxes whose senders are all the host's).
    pub const NONE: Bounds = Bounds { messages: usize::MAX, bytes: usize::MAX };
}

/// Why a send did not queue its message, which it hands back.
#[derive(Debug)]
pub enum Refused<T> {
    /// The receiver is gone.
    Closed(T),
    /// The queue holds its bounds' worth already: how much, with the bounds.
    Full { msg: T, messages: usize, bytes: usize, bounds: Bounds },
}

impl<T> Refused<T> {
    /// The message that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            Refused::Closed(msg) | Refused::Full { msg, .. } => msg,
        }
    }
}

struct Queue<T> {
    items: VecDeque<T>,
    /// Of `items`, the messages that count, and their bytes.
    messages: usize,
    bytes: usize,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    bounds: Bounds,
    notify: Notify,
    senders: AtomicUsize,
    /// The receiver is gone: sends fail and hand the message back.
    closed: AtomicBool,
}

/// The sending side; cloned freely.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving side: the instance's task.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A mailbox holding at most `bounds` of what counts.
pub fn channel<T: Weigh>(bounds: Bounds) -> (Sender<T>, Receiver<T>) {
    let queue = Queue { items: VecDeque::new(), messages: 0, bytes: 0 };
    let shared = Arc::new(Shared { queue: Mutex::new(queue), bounds, notify: Notify::new(), senders: AtomicUsize::new(1), closed: AtomicBool::new(false) });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T: Weigh> Sender<T> {
    /// Queues `msg`; hands it back if the receiver is gone, or if it counts and the queue
    /// holds its bounds' worth (in messages, or in bytes with it added).
    pub fn send(&self, msg: T) -> Result<(), Refused<T>> {
        let mut q = self.0.queue.lock().unwrap();
        if self.0.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed(msg));
        }
        if let Some(w) = msg.weight() {
            let bounds = self.0.bounds;
            if q.messages >= bounds.messages || (q.bytes > 0 && q.bytes.saturating_add(w) > bounds.bytes) {
                return Err(Refused::Full { msg, messages: q.messages, bytes: q.bytes, bounds });
            }
            q.messages += 1;
            q.bytes += w;
        }
        q.items.push_back(msg);
        drop(q);
        self.0.notify.notify_one();
        Ok(())
    }

    /// Queues `msg` ahead of the messages that count (calls and casts) but behind what
    /// the host queued itself, never refused for the bounds: a stop that moves the
    /// instance goes before the calls and casts that will follow it, and after the
    /// merges and events it must take in first. Hands it back if the receiver is gone.
    pub fn send_ahead(&self, msg: T) -> Result<(), Refused<T>> {
        let mut q = self.0.queue.lock().unwrap();
        if self.0.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed(msg));
        }
        if let Some(w) = msg.weight() {
            q.messages += 1;
            q.bytes += w;
        }
        let at = q.items.iter().rposition(|m| m.weight().is_none()).map_or(0, |i| i + 1);
        q.items.insert(at, msg);
        drop(q);
        self.0.notify.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.notify.notify_one();
        }
    }
}

impl<T: Weigh> Receiver<T> {
    /// The next message in order; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let notified = self.0.notify.notified();
            {
                let mut q = self.0.queue.lock().unwrap();
                if let Some(msg) = q.items.pop_front() {
                    if let Some(w) = msg.weight() {
                        q.messages -= 1;
                        q.bytes -= w;
                    }
                    if q.items.is_empty() && q.items.capacity() > 16 {
                        // A burst is over: give its memory back.
                        q.items.shrink_to(4);
                    }
                    return Some(msg);
                }
                if self.0.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
            }
            notified.await;
        }
    }
}

impl<T> Receiver<T> {
    /// Closes the mailbox and hands back what waits in it, in order: sends fail from
    /// now on. Under the lock, so that no send slips in after the drain.
    pub fn close(&mut self) -> VecDeque<T> {
        let mut q = self.0.queue.lock().unwrap();
        self.0.closed.store(true, Ordering::Release);
        (q.messages, q.bytes) = (0, 0);
        std::mem::take(&mut q.items)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Callers waiting on queued messages see their reply channels close.
        drop(self.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test message: a number counts as that many bytes; `None` does not count.
    impl Weigh for Option<usize> {
        fn weight(&self) -> Option<usize> {
            *self
        }
    }

    impl<T> Weigh for Option<tokio::sync::oneshot::Sender<T>> {
        fn weight(&self) -> Option<usize> {
            None
        }
    }

    impl Weigh for i32 {
        fn weight(&self) -> Option<usize> {
            Some(1)
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_senders_are_gone() {
        let (tx, mut rx) = channel(Bounds::NONE);
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        let late = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx2.send(3).unwrap();
        });
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        late.await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_send_after_the_receiver_is_gone_hands_the_message_back() {
        let (tx, rx) = channel(Bounds::NONE);
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<()>();
        tx.send(Some(reply_tx)).unwrap();
        drop(rx);
        // The queued message was dropped with the receiver: its reply channel closed.
        assert!(reply_rx.await.is_err());
        assert!(matches!(tx.send(None), Err(Refused::Closed(None))), "a send to a closed mailbox hands the message back");
    }

    #[tokio::test]
    async fn what_counts_is_refused_past_the_bounds_and_taken_again_once_handled() {
        let bounds = Bounds { messages: 3, bytes: 100 };
        let (tx, mut rx) = channel::<Option<usize>>(bounds);
        for _ in 0..3 {
            tx.send(Some(10)).unwrap();
        }
        // A fourth message is one too many; what the host queues still goes in.
        match tx.send(Some(1)) {
            Err(Refused::Full { msg: Some(1), messages: 3, bytes: 30, bounds: b }) => assert_eq!(b, bounds),
            other => panic!("expected a full mailbox, got {other:?}"),
        }
        tx.send(None).unwrap();
        assert_eq!(rx.recv().await, Some(Some(10)));
        // One handled makes room for one.
        tx.send(Some(70)).unwrap();
        assert!(matches!(tx.send(Some(1)), Err(Refused::Full { messages: 3, bytes: 90, .. })));
        for want in [Some(10), Some(10), None, Some(70)] {
            assert_eq!(rx.recv().await, Some(want));
        }
        // Empty again: bytes past the bound refuse a second message, not the first.
        tx.send(Some(60)).unwrap();
        assert!(matches!(tx.send(Some(41)), Err(Refused::Full { messages: 1, bytes: 60, .. })));
        tx.send(Some(40)).unwrap();
        assert_eq!(rx.recv().await, Some(Some(60)));
        assert_eq!(rx.recv().await, Some(Some(40)));
        tx.send(Some(500)).unwrap();
        assert!(matches!(tx.send(Some(0)), Err(Refused::Full { bytes: 500, .. })), "no more while a message past the bound waits");
        assert_eq!(rx.recv().await, Some(Some(500)));
        tx.send(Some(100)).unwrap();
    }

    /// A stop that moves the instance goes ahead of the calls and casts that wait, full
    /// as the mailbox may be, and behind what the host queued; closing hands back the
    /// rest in order, and later sends fail.
    #[tokio::test]
    async fn a_message_sent_ahead_passes_what_counts_and_closing_hands_back_the_rest() {
        let (tx, mut rx) = channel::<Option<usize>>(Bounds { messages: 2, bytes: 100 });
        tx.send(Some(1)).unwrap();
        tx.send(Some(2)).unwrap();
        tx.send_ahead(None).unwrap();
        assert_eq!(rx.recv().await, Some(None));
        assert_eq!(rx.recv().await, Some(Some(1)));
        // Behind the host's own message (a merge), ahead of the call after it.
        tx.send(None).unwrap();
        tx.send(Some(3)).unwrap();
        tx.send_ahead(None).unwrap();
        assert_eq!(rx.close(), VecDeque::from([Some(2), None, None, Some(3)]));
        assert!(matches!(tx.send(Some(4)), Err(Refused::Closed(Some(4)))));
        assert!(matches!(tx.send_ahead(None), Err(Refused::Closed(None))));
    }
}
