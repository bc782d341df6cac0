//! A session's outbox: the one ordered queue from its user's actor to the session.
//!
//! Everything the user's actor sends a session after the welcome (events, control frames,
//! a replay, a close) goes through it, in order. The actor pushes; the session drains it as
//! a stream, so a burst of events costs the session one wakeup rather than one actor
//! message (an allocated envelope and a mailbox node) per event. The user's actor creates
//! a fresh outbox for each attach and hands it over in the welcome: after a restart the
//! session drains the old actor's outbox to its end before it writes the new actor's
//! `resync_required` and switches to the new one, so numbering never interleaves.
//!
//! It is bounded from the sender's side: the user's actor counts every push into the
//! session's backlog and stops pushing (and cuts the session off) past the slow-consumer
//! limit. Once the session is gone, pushes are dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use parking_lot::Mutex;

use super::{Deliver, Replay};

/// One item for a session, in the order its user's actor sent it.
pub(crate) enum Outbound {
    /// A frame to write (an event or a control frame).
    Deliver(Deliver),
    /// The answer to a resume.
    Replay(Replay),
    /// Close the socket with this code after everything before it.
    Close(u16),
}

/// The queue shared by a user's actor (pushing) and one session (draining).
#[derive(Default)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    waker: AtomicWaker,
    /// Set when the session is gone: later pushes are dropped.
    closed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// Queues `item` and wakes the session.
    pub(crate) fn push(&self, item: Outbound) {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        self.queue.lock().push_back(item);
        self.waker.wake();
    }

    /// The next item, if one is queued.
    pub(crate) fn pop(&self) -> Option<Outbound> {
        self.queue.lock().pop_front()
    }

    /// The session is gone: drop what is queued and whatever comes later.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.queue.lock().clear();
    }
}

/// The session's end of an outbox, polled by its context.
pub(crate) struct OutboxStream(pub Arc<Outbox>);

impl Stream for OutboxStream {
    type Item = Outbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(item) = self.0.pop() {
            return Poll::Ready(Some(item));
        }
        self.0.waker.register(cx.waker());
        // A push between the pop and the registration would otherwise go unnoticed.
        match self.0.pop() {
            Some(item) => Poll::Ready(Some(item)),
            None => Poll::Pending,
        }
    }
}
