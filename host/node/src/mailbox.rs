//! A worker's mailbox: an unbounded FIFO with one receiver (the instance) and any number
//! of senders. tokio's unbounded channel would do, but it allocates a block of 32 slots
//! (1.3 KiB) at creation, and an idle worker keeps it: this queue holds nothing until a
//! message comes, which matters at a hundred thousand idle workers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    notify: Notify,
    senders: AtomicUsize,
    /// The receiver is gone: sends fail and hand the message back.
    closed: AtomicBool,
}

/// The sending side; cloned freely.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving side: the instance's task.
pub struct Receiver<T>(Arc<Shared<T>>);

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared { queue: Mutex::new(VecDeque::new()), notify: Notify::new(), senders: AtomicUsize::new(1), closed: AtomicBool::new(false) });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `msg`, or hands it back if the receiver is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        let mut q = self.0.queue.lock().unwrap();
        if self.0.closed.load(Ordering::Acquire) {
            return Err(msg);
        }
        q.push_back(msg);
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

impl<T> Receiver<T> {
    /// The next message in order; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let notified = self.0.notify.notified();
            {
                let mut q = self.0.queue.lock().unwrap();
                if let Some(msg) = q.pop_front() {
                    if q.is_empty() && q.capacity() > 16 {
                        // A burst is over: give its memory back.
                        q.shrink_to(4);
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

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Under the lock, so that no send slips in after the drain: callers waiting on
        // queued messages see their reply channels close.
        let drained: VecDeque<T> = {
            let mut q = self.0.queue.lock().unwrap();
            self.0.closed.store(true, Ordering::Release);
            std::mem::take(&mut *q)
        };
        drop(drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_senders_are_gone() {
        let (tx, mut rx) = channel();
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
        let (tx, rx) = channel();
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<()>();
        tx.send(Some(reply_tx)).unwrap();
        drop(rx);
        // The queued message was dropped with the receiver: its reply channel closed.
        assert!(reply_rx.await.is_err());
        assert!(matches!(tx.send(None), Err(None)), "a send to a closed mailbox hands the message back");
    }
}
