//! The queue between two actors on the delivery path, drained one burst per wakeup.
//!
//! The engine hands a user's stream to the user's actor through one (the actor's inbox), and
//! the user's actor hands frames to each session through another (the session's outbox).
//! The producer pushes; the consumer's context polls a [`Bursts`] stream, which says only
//! "there is something", and the consumer's handler takes everything queued at once into a
//! buffer of its own. A burst of events so costs the consumer one wakeup and one lock rather
//! than an actor message (an allocated envelope and a mailbox node) per event, and the
//! consumer handles the whole burst before the scheduler moves on (actix yields a stream
//! after 16 items, which would send a long burst around the worker's run queue several
//! times). In steady state nothing is allocated: the two buffers trade places.
//!
//! The queue does not bound itself: each producer bounds what it pushes (the engine by the
//! emitters' `ready()`, the user's actor by each session's backlog limit). A queue built
//! [`BurstQueue::with_room`] lets producers wait until it has room ([`BurstQueue::room`]):
//! the consumer wakes them when it takes a burst, with no polling. Once the consumer is gone
//! (its stream dropped with its actor, also when the actor panicked), pushes are dropped and
//! waiting producers let go, so nothing accumulates for, or waits on, a dead actor.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// An ordered queue from one producer side to one consuming actor.
pub(crate) struct BurstQueue<T> {
    items: Mutex<VecDeque<T>>,
    /// How many items `items` holds, readable without the lock.
    queued: AtomicUsize,
    waker: AtomicWaker,
    /// Set when the consumer is gone: later pushes are dropped.
    closed: AtomicBool,
    /// Producers waiting for room (only queues built `with_room`).
    room: Option<Box<Room>>,
}

/// Producers waiting until the consumer takes a burst.
#[derive(Default)]
struct Room {
    taken: Notify,
    waiting: AtomicUsize,
}

impl<T> Default for BurstQueue<T> {
    fn default() -> Self {
        BurstQueue {
            items: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            room: None,
        }
    }
}

impl<T> BurstQueue<T> {
    /// A queue whose producers can wait for room ([`BurstQueue::room`]).
    pub(crate) fn with_room() -> Self {
        BurstQueue {
            room: Some(Box::default()),
            ..BurstQueue::default()
        }
    }

    /// Items queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Resolves once fewer than `limit` items are queued, or the consumer is gone. At once
    /// for a queue not built `with_room`.
    pub(crate) async fn room(&self, limit: usize) {
        let Some(room) = &self.room else {
            return;
        };
        loop {
            let taken = room.taken.notified();
            let mut taken = std::pin::pin!(taken);
            // Registered before the check: a take between the check and the await wakes it.
            taken.as_mut().enable();
            let _waiting = Waiting::new(&room.waiting);
            if self.closed.load(Ordering::Acquire) || self.len() < limit {
                return;
            }
            taken.await;
        }
    }

    /// Lets waiting producers check again (after a take or a close).
    fn wake_producers(&self) {
        if let Some(room) = &self.room {
            if room.waiting.load(Ordering::SeqCst) > 0 {
                room.taken.notify_waiters();
            }
        }
    }

    /// Queues `item`, waking the consumer if the queue was empty (otherwise a wakeup is
    /// already on its way: the consumer empties the queue on every wakeup). False, and the
    /// item dropped, when the consumer is gone.
    pub(crate) fn push(&self, item: T) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let was_empty = {
            let mut items = self.items.lock();
            let was_empty = items.is_empty();
            items.push_back(item);
            self.queued.store(items.len(), Ordering::SeqCst);
            was_empty
        };
        if was_empty {
            self.waker.wake();
        }
        true
    }

    /// Moves everything queued to the back of `into` (an empty `into` trades buffers with
    /// the queue, so a consumer that keeps its buffer allocates nothing).
    pub(crate) fn take_all(&self, into: &mut VecDeque<T>) {
        {
            let mut items = self.items.lock();
            if into.is_empty() {
                std::mem::swap(&mut *items, into);
            } else {
                into.extend(items.drain(..));
            }
            self.queued.store(0, Ordering::SeqCst);
        }
        self.wake_producers();
    }

    /// The consumer is gone: drop what is queued and whatever comes later.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped = {
            let mut items = self.items.lock();
            self.queued.store(0, Ordering::SeqCst);
            std::mem::take(&mut *items)
        };
        drop(dropped);
        self.wake_producers();
    }
}

/// Counts one waiting producer while it lives (also when its wait is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The consumer's end: yields a [`Burst`] whenever the queue has something. The actor
/// adds it to its context (`ctx.add_stream`) and takes the queue's items in its handler.
/// Dropping it (with the actor's context) closes the queue.
pub(crate) struct Bursts<T>(pub Arc<BurstQueue<T>>);

/// "The queue has items": the consumer takes them with [`BurstQueue::take_all`].
pub(crate) struct Burst;

impl<T> Stream for Bursts<T> {
    type Item = Burst;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Burst>> {
        if self.0.len() > 0 {
            return Poll::Ready(Some(Burst));
        }
        self.0.waker.register(cx.waker());
        // A push between the check and the registration would otherwise go unnoticed.
        if self.0.len() == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Some(Burst))
        }
    }
}

impl<T> Drop for Bursts<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_burst_is_taken_whole_and_in_order_and_a_closed_queue_drops_pushes() {
        let queue = Arc::new(BurstQueue::default());
        let mut bursts = Bursts(queue.clone());
        for n in 0..100 {
            assert!(queue.push(n));
        }
        assert!(bursts.next().await.is_some());
        let mut taken = VecDeque::new();
        queue.take_all(&mut taken);
        assert_eq!(
            taken.iter().copied().collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        taken.clear();

        // A push after the consumer went to sleep wakes it.
        let waiter = tokio::spawn(async move {
            let burst = bursts.next().await;
            (burst.is_some(), bursts)
        });
        tokio::task::yield_now().await;
        assert!(queue.push(7));
        let (woke, bursts) = waiter.await.expect("the consumer task ran");
        assert!(woke);
        queue.take_all(&mut taken);
        assert_eq!(taken, [7]);

        drop(bursts);
        assert!(!queue.push(8), "the consumer is gone");
        taken.clear();
        queue.take_all(&mut taken);
        assert!(taken.is_empty());
    }

    #[tokio::test]
    async fn a_producer_waits_for_room_until_the_consumer_takes_a_burst() {
        let queue = Arc::new(BurstQueue::with_room());
        let bursts = Bursts(queue.clone());
        for n in 0..3 {
            queue.push(n);
        }
        queue.room(4).await; // 3 < 4: room at once
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.room(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "3 queued, limit 3: no room");
        queue.take_all(&mut VecDeque::new());
        waiter.await.expect("the producer was let go by the take");

        // A producer waiting on a consumer that goes away is let go too.
        for n in 0..3 {
            queue.push(n);
        }
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.room(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(bursts);
        waiter.await.expect("the producer was let go by the close");
    }
}
