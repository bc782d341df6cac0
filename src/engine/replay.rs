//! A user's replay buffer: the recent encoded events a reconnecting socket can resume from.
//!
//! The in-process engine's history: one per subscribed user, owned by that user's stream.
//! Bounded by count and age (from [`crate::Config`]) and, together
//! with every other user's buffer, by a global byte budget: a push that takes the total over
//! the budget makes this buffer drop its own oldest events until the total is back under it.
//! A resume is answered from here only when the buffer still holds every event it asks for
//! (or, for a partial resume, from its oldest event on); otherwise the client must resync. Age is enforced lazily, on every push and before every
//! resume, so an idle user costs no timer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::outbound::Frame;

/// The byte budget shared by all replay buffers of one runtime.
#[derive(Debug)]
pub(crate) struct ReplayBudget {
    used: AtomicUsize,
    max: usize,
}

impl ReplayBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ReplayBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held by all buffers now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One buffered event.
pub(crate) struct Buffered {
    pub seq: u64,
    pub frame: Frame,
    /// The event's thread, for sockets that filter on it.
    pub thread_id: Arc<str>,
    /// When the event was emitted: its age counts from there.
    at: SystemTime,
}

pub(crate) struct ReplayBuffer {
    entries: VecDeque<Buffered>,
    /// When the oldest entry gets too old (`None`: empty, or never): kept here so a push
    /// does not read the oldest entry, long out of the cache, to find out.
    oldest_expires: Option<SystemTime>,
    bytes: usize,
    max_events: usize,
    max_age: Duration,
    budget: Arc<ReplayBudget>,
}

impl ReplayBuffer {
    pub(crate) fn new(max_events: usize, max_age: Duration, budget: Arc<ReplayBudget>) -> Self {
        ReplayBuffer {
            entries: VecDeque::new(),
            oldest_expires: None,
            bytes: 0,
            max_events,
            max_age,
            budget,
        }
    }

    /// Appends the event numbered `seq` (always one more than the last pushed), emitted
    /// `at` (a moment ago: it also serves as "now" for expiring older events, which saves
    /// reading the clock once per event).
    pub(crate) fn push(&mut self, seq: u64, frame: Frame, thread_id: Arc<str>, at: SystemTime) {
        if self.max_events == 0 {
            return;
        }
        self.expire(at);
        if self.entries.is_empty() {
            self.oldest_expires = at.checked_add(self.max_age);
        }
        let size = frame.len();
        self.bytes += size;
        self.budget.used.fetch_add(size, Ordering::Relaxed);
        self.entries.push_back(Buffered {
            seq,
            frame,
            thread_id,
            at,
        });
        while self.entries.len() > self.max_events
            || (self.budget.used() > self.budget.max && !self.entries.is_empty())
        {
            self.pop_oldest();
        }
    }

    /// Drops events older than the maximum age (by the wall clock: a clock stepped back
    /// keeps events longer, still within the count and byte bounds).
    pub(crate) fn expire(&mut self, now: SystemTime) {
        while self.oldest_expires.is_some_and(|expires| now > expires) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.frame.len();
            self.budget
                .used
                .fetch_sub(entry.frame.len(), Ordering::Relaxed);
        }
        self.oldest_expires = self
            .entries
            .front()
            .and_then(|oldest| oldest.at.checked_add(self.max_age));
    }

    /// Every buffered event with `after < seq <= upto`, or `None` when the buffer no longer
    /// holds all of them.
    pub(crate) fn range(&self, after: u64, upto: u64) -> Option<impl Iterator<Item = &Buffered>> {
        if after >= upto {
            return Some(self.entries.range(0..0));
        }
        let first = self.entries.front()?.seq;
        let last = self.entries.back()?.seq;
        if first > after + 1 || last < upto {
            return None;
        }
        let start = (after + 1 - first) as usize;
        let end = (upto - first + 1) as usize;
        Some(self.entries.range(start..end))
    }

    /// Where a partial resume after `after` (up to `upto`) starts: `after` itself while the
    /// buffer still holds the event after it, otherwise just before the oldest event it
    /// holds, if that one is at most `upto` (else `after`: nothing of the range is left).
    pub(crate) fn partial_start(&self, after: u64, upto: u64) -> u64 {
        match self.entries.front() {
            Some(oldest) if oldest.seq.saturating_sub(1) > after && oldest.seq <= upto => {
                oldest.seq - 1
            }
            _ => after,
        }
    }

    /// Events held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread() -> Arc<str> {
        "t".into()
    }

    fn seqs(buffer: &ReplayBuffer, after: u64, upto: u64) -> Option<Vec<u64>> {
        buffer
            .range(after, upto)
            .map(|r| r.map(|e| e.seq).collect())
    }

    #[test]
    fn ranges_are_exact_or_refused() {
        let budget = ReplayBudget::new(1 << 20);
        let mut buffer = ReplayBuffer::new(3, Duration::from_secs(60), budget.clone());
        for seq in 1..=5 {
            buffer.push(
                seq,
                Frame::from(format!("event {seq}")),
                thread(),
                SystemTime::now(),
            );
        }
        assert_eq!(buffer.len(), 3, "bounded by count");
        assert_eq!(seqs(&buffer, 2, 5), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&buffer, 3, 4), Some(vec![4]));
        assert_eq!(seqs(&buffer, 5, 5), Some(vec![]));
        assert_eq!(seqs(&buffer, 1, 5), None, "event 2 was evicted");
        assert_eq!(seqs(&buffer, 2, 6), None, "event 6 does not exist");
        assert_eq!(
            buffer.partial_start(0, 5),
            2,
            "a partial resume starts at the oldest"
        );
        assert_eq!(buffer.partial_start(3, 5), 3, "nothing after 3 was evicted");
        assert_eq!(buffer.partial_start(0, 2), 0, "nothing of 1..=2 is left");
        assert_eq!(buffer.partial_start(u64::MAX, 5), u64::MAX);
        assert_eq!(budget.used(), 3 * "event 1".len());
        drop(buffer);
        assert_eq!(budget.used(), 0, "a dropped buffer returns its bytes");
    }

    #[test]
    fn the_global_budget_evicts_the_pushers_oldest() {
        let budget = ReplayBudget::new(20);
        let mut a = ReplayBuffer::new(100, Duration::from_secs(60), budget.clone());
        let mut b = ReplayBuffer::new(100, Duration::from_secs(60), budget.clone());
        a.push(1, Frame::from("0123456789"), thread(), SystemTime::now());
        b.push(1, Frame::from("0123456789"), thread(), SystemTime::now());
        b.push(2, Frame::from("0123456789"), thread(), SystemTime::now());
        assert!(budget.used() <= 20);
        assert_eq!((a.len(), b.len()), (1, 1), "b dropped its own oldest");
    }

    #[test]
    fn events_expire_oldest_first_by_their_own_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut buffer = ReplayBuffer::new(3, Duration::from_secs(15), ReplayBudget::new(1 << 20));
        for (seq, secs) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
            buffer.push(seq, Frame::from("x"), thread(), at(secs));
        }
        // Pushing 4 at 30 s expired 1 (30 s old) and 2 (20 s old) by age; count allowed 3.
        assert_eq!(seqs(&buffer, 2, 4), Some(vec![3, 4]));
        buffer.expire(at(35));
        assert_eq!(
            seqs(&buffer, 2, 4),
            Some(vec![3, 4]),
            "3 is exactly 15 s old"
        );
        buffer.expire(at(36));
        assert_eq!(seqs(&buffer, 3, 4), Some(vec![4]));
        assert_eq!(seqs(&buffer, 2, 4), None);
        buffer.expire(at(46));
        assert_eq!(buffer.len(), 0);
        // An empty buffer starts the clock again with its next event.
        buffer.push(5, Frame::from("x"), thread(), at(100));
        buffer.expire(at(110));
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn old_events_expire() {
        let mut buffer =
            ReplayBuffer::new(10, Duration::from_millis(0), ReplayBudget::new(1 << 20));
        buffer.push(1, Frame::from("x"), thread(), SystemTime::now());
        buffer.expire(SystemTime::now() + Duration::from_millis(5));
        assert_eq!(buffer.len(), 0);
    }
}
