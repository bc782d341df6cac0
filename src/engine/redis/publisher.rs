//! The batching publisher: emitters enqueue events without waiting, and one flusher task
//! sends each user's queued events to Redis in one script call.
//!
//! The queue is bounded in events and in bytes (`queue_capacity`, `queue_capacity_bytes`):
//! [`Publisher::enqueue`] never blocks, and when the queue is full it hands the event back
//! in an [`EnqueueError`] for the caller to handle; nothing is dropped silently.
//! [`Publisher::has_room`] and [`Publisher::room`] let an emitter wait for room first;
//! [`Publisher::has_headroom`] (under half full) is what emitters' `ready()` waits for.
//!
//! The flusher keeps one batch per user in flight: while it is, that user's later events
//! gather in the queue and go together in the next batch, so under load a batch carries
//! everything a user emitted during one round trip, and a user's events reach Redis in the
//! order they were enqueued. Batches of different users go concurrently (up to
//! `max_in_flight`), pipelined on the one command connection. A batch that fails is retried
//! with backoff until Redis takes it (the script applies a retried batch once) and each
//! failure is reported to the [`super::Monitor`]; one that fails with an error a retry would
//! not change is reported as dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::backoff::Backoff;
use super::hooks::Part;
use super::outgoing::{OutgoingEvent, Step};
use super::record::node_run_member;
use super::script::{Batch, NodeRunsUpdate};
use super::Node;
use crate::ids::UserId;

/// Events taken off the channel per wakeup before the flusher starts batches again.
const DRAIN_PER_WAKEUP: usize = 4_096;

/// Sizes of the queue and of the batches.
#[derive(Debug, Clone)]
pub(crate) struct PublisherLimits {
    pub capacity: usize,
    pub capacity_bytes: usize,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_in_flight: usize,
}

/// Why an event was not queued; it is handed back.
#[derive(Debug)]
pub(crate) enum EnqueueError {
    /// The queue is full (Redis is slow or unreachable, or emitters outrun it).
    Full(Box<OutgoingEvent>),
    /// The engine is shutting down.
    Closed(Box<OutgoingEvent>),
}

/// The enqueueing side, cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    sender: mpsc::UnboundedSender<OutgoingEvent>,
    /// Events and bytes enqueued and not yet published (queued or in flight).
    events: AtomicUsize,
    bytes: AtomicUsize,
    capacity: usize,
    capacity_bytes: usize,
    closed: AtomicBool,
    /// Woken whenever events leave the queue.
    drained: Notify,
}

impl Shared {
    fn release(&self, events: usize, bytes: usize) {
        self.events.fetch_sub(events, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }
}

impl Publisher {
    /// Starts the flusher task on the current tokio runtime.
    pub(crate) fn start(
        node: Arc<Node>,
        limits: PublisherLimits,
    ) -> (Publisher, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sender,
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            capacity: limits.capacity,
            capacity_bytes: limits.capacity_bytes,
            closed: AtomicBool::new(false),
            drained: Notify::new(),
        });
        let flusher = Flusher {
            node,
            shared: shared.clone(),
            limits,
            pending: HashMap::new(),
            ready: VecDeque::new(),
            busy: HashSet::new(),
        };
        let task = tokio::spawn(flusher.run(receiver));
        (Publisher { shared }, task)
    }

    /// Queues `event` for publishing, or hands it back at once when the queue is full or
    /// closed. Never waits.
    pub(crate) fn enqueue(&self, event: OutgoingEvent) -> Result<(), EnqueueError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(EnqueueError::Closed(Box::new(event)));
        }
        let size = event.size();
        let events = shared.events.fetch_add(1, Ordering::AcqRel);
        let bytes = shared.bytes.fetch_add(size, Ordering::AcqRel);
        // One event bigger than the byte bound still goes when nothing else is queued.
        if events >= shared.capacity || (bytes > 0 && bytes + size > shared.capacity_bytes) {
            shared.events.fetch_sub(1, Ordering::AcqRel);
            shared.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(EnqueueError::Full(Box::new(event)));
        }
        shared.sender.send(event).map_err(|refused| {
            shared.events.fetch_sub(1, Ordering::AcqRel);
            shared.bytes.fetch_sub(size, Ordering::AcqRel);
            EnqueueError::Closed(Box::new(refused.0))
        })
    }

    /// Events enqueued and not yet published.
    pub(crate) fn queued(&self) -> usize {
        self.shared.events.load(Ordering::Acquire)
    }

    /// Bytes of the events enqueued and not yet published.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// Whether an event of `size` bytes would be queued now.
    pub(crate) fn has_room(&self, size: usize) -> bool {
        let bytes = self.queued_bytes();
        self.queued() < self.shared.capacity
            && (bytes == 0 || bytes + size <= self.shared.capacity_bytes)
    }

    /// Whether the queue is less than half full (in events and in bytes): what an emitter's
    /// `ready()` waits for. Emitters check between bursts of events, so the other half
    /// takes what they emit between two checks instead of refusing it.
    pub(crate) fn has_headroom(&self) -> bool {
        self.queued() < self.shared.capacity.div_ceil(2)
            && self.queued_bytes() < self.shared.capacity_bytes.div_ceil(2)
    }

    /// Completes once the queue has room for an event of `size` bytes.
    pub(crate) async fn room(&self, size: usize) {
        loop {
            let drained = self.shared.drained.notified();
            if self.has_room(size) {
                return;
            }
            drained.await;
        }
    }

    /// Completes once nothing is queued (counting what is enqueued meanwhile).
    pub(crate) async fn flushed(&self) {
        loop {
            let drained = self.shared.drained.notified();
            if self.queued() == 0 {
                return;
            }
            drained.await;
        }
    }

    /// Refuses further events and waits, at most `deadline`, for the queued ones to be
    /// published; returns how many were not.
    pub(crate) async fn close(&self, deadline: Duration) -> usize {
        self.shared.closed.store(true, Ordering::Release);
        let _ = tokio::time::timeout(deadline, self.flushed()).await;
        self.queued()
    }
}

/// The flusher task's state.
struct Flusher {
    node: Arc<Node>,
    shared: Arc<Shared>,
    limits: PublisherLimits,
    /// Each user's queued events, in enqueue order.
    pending: HashMap<UserId, VecDeque<OutgoingEvent>>,
    /// Users with queued events and no batch in flight, in the order they became so.
    ready: VecDeque<UserId>,
    /// Users with a batch in flight.
    busy: HashSet<UserId>,
}

impl Flusher {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<OutgoingEvent>) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.limits.max_in_flight {
                let Some(user) = self.ready.pop_front() else {
                    break;
                };
                let events = self.take_batch(&user);
                self.busy.insert(user.clone());
                in_flight.push(send(self.node.clone(), user, events));
            }
            tokio::select! {
                received = receiver.recv() => match received {
                    Some(event) => {
                        self.add(event);
                        for _ in 0..DRAIN_PER_WAKEUP {
                            match receiver.try_recv() {
                                Ok(event) => self.add(event),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                Some((user, events, bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.busy.remove(&user);
                    self.shared.release(events, bytes);
                    if self.pending.contains_key(&user) {
                        self.ready.push_back(user);
                    }
                }
            }
        }
    }

    fn add(&mut self, event: OutgoingEvent) {
        let queue = self.pending.entry(event.user.clone()).or_default();
        let was_empty = queue.is_empty();
        let user = event.user.clone();
        queue.push_back(event);
        if was_empty && !self.busy.contains(&user) {
            self.ready.push_back(user);
        }
    }

    /// The next batch of `user`'s events: as many as the batch bounds allow, at least one.
    fn take_batch(&mut self, user: &UserId) -> Vec<OutgoingEvent> {
        let Some(queue) = self.pending.get_mut(user) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(event) = queue.front() {
            let size = event.size();
            if !batch.is_empty()
                && (batch.len() >= self.limits.max_batch_events
                    || bytes + size > self.limits.max_batch_bytes)
            {
                break;
            }
            bytes += size;
            batch.extend(queue.pop_front());
        }
        if queue.is_empty() {
            self.pending.remove(user);
        }
        batch
    }
}

/// Sends one batch until Redis takes it (or refuses it for good); returns the user, and the
/// events and bytes that left the queue.
async fn send(node: Arc<Node>, user: UserId, events: Vec<OutgoingEvent>) -> (UserId, usize, usize) {
    let bytes = events.iter().map(OutgoingEvent::size).sum();
    let keys = node.keys.user(&user);
    let runs_key = node.keys.node_runs(&node.id);
    let member = |event: &OutgoingEvent| node_run_member(&user, &event.run_id);
    let add: Vec<_> = events
        .iter()
        .filter(|e| e.step == Step::Start)
        .map(member)
        .collect();
    let remove: Vec<_> = events
        .iter()
        .filter(|e| e.step == Step::End)
        .map(member)
        .collect();
    if !add.is_empty() {
        // A run starts only on a node the sweepers know.
        node.lease_taken().await;
        node.live_runs.lock().extend(add.iter().cloned());
    }
    let batch = Batch {
        keys: &keys,
        node: &node.id,
        sender: &node.id,
        number: node.next_batch_number(),
        lost_node: None,
        events: &events,
        node_runs: Some(NodeRunsUpdate {
            key: &runs_key,
            add,
            remove,
        }),
    };
    let started = Instant::now();
    let mut backoff = Backoff::new(node.retry_min, node.retry_max);
    loop {
        match node.script.run(&node.commands, &batch).await {
            Ok(outcome) => {
                node.monitor
                    .published(&user, &events, &outcome, started.elapsed());
                break;
            }
            Err(error) if error.is_transient() => {
                log::debug!("redis: publishing {user:?}'s events failed, retrying: {error}");
                node.monitor.error(Part::Publish, &error);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                log::error!(
                    "redis: {} event(s) of {user:?} not published: {error}",
                    events.len()
                );
                node.monitor.batch_dropped(&user, events.len(), &error);
                break;
            }
        }
    }
    if let Some(runs) = &batch.node_runs {
        let mut live = node.live_runs.lock();
        for member in &runs.remove {
            live.remove(member);
        }
    }
    (user, events.len(), bytes)
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::{RedisConfig, RedisEngine};
    use super::*;
    use crate::event::RunMeta;

    fn texts(events: &[super::super::NumberedEvent]) -> Vec<String> {
        events.iter().map(text_of).collect()
    }

    async fn stored_texts(engine: &RedisEngine, user: &UserId, upto: u64) -> Vec<String> {
        let position = engine.position(user).await.unwrap().expect("a position");
        assert_eq!(position.seq, upto, "{user:?}'s events numbered once each");
        let events = engine
            .history(user, &position.epoch, 0, upto)
            .await
            .unwrap()
            .expect("the whole history");
        texts(&events)
    }

    fn enqueue(engine: &RedisEngine, user: &UserId, meta: &RunMeta, text: String) {
        let event = outgoing(user, meta, &thinking(text));
        assert!(engine.publisher().enqueue(event).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_and_makes_room_when_redis_is_back() {
        let redis = TestRedis::start();
        let engine = engine(
            RedisConfig {
                queue_capacity: 3,
                ..config(&redis, "n1")
            },
            Recorder::new(),
        );
        let alice = user("alice");
        let meta = run_meta("run_1");
        redis.pause();
        assert!(engine.publisher().has_headroom());
        for i in 0..3 {
            enqueue(&engine, &alice, &meta, format!("event {i}"));
            // Emitters wait from half full on, before the queue refuses anything.
            assert_eq!(engine.publisher().has_headroom(), i == 0, "after {i}");
        }
        assert!(!engine.publisher().has_room(0));
        match engine
            .publisher()
            .enqueue(outgoing(&alice, &meta, &thinking("one too many")))
        {
            Err(EnqueueError::Full(event)) => assert_eq!(event.user, alice, "handed back"),
            other => panic!("expected a full queue, got {other:?}"),
        }
        redis.resume();
        tokio::time::timeout(PATIENCE, engine.publisher().room(0))
            .await
            .expect("room once Redis is back");
        flushed(&engine).await;
        assert_eq!(
            stored_texts(&engine, &alice, 3).await,
            ["event 0", "event 1", "event 2"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_redis_delays_events_but_loses_and_repeats_none() {
        let redis = TestRedis::start();
        let recorder = Recorder::new();
        let engine = engine(config(&redis, "n1"), recorder.clone());
        let users = [user("alice"), user("bob")];
        for user in &users {
            subscribe(&engine, user).await;
        }
        let meta = run_meta("run_1");
        for i in 0..10 {
            for user in &users {
                enqueue(&engine, user, &meta, format!("{user} {i}"));
            }
        }
        flushed(&engine).await;
        redis.pause();
        for i in 10..50 {
            for user in &users {
                enqueue(&engine, user, &meta, format!("{user} {i}"));
            }
        }
        // Long enough for calls to time out and be retried, the command connection to be
        // replaced, and the subscriber's ping to time out.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        redis.resume();
        flushed(&engine).await;
        for user in &users {
            let expected: Vec<String> = (0..50).map(|i| format!("{user} {i}")).collect();
            assert_eq!(stored_texts(&engine, user, 50).await, expected);
        }
        eventually("the subscriber to come back", || {
            recorder.resubscribed_count() >= 2 && engine.subscriber().is_connected()
        })
        .await;
        // What the subscriber received is in order and without repeats (what it missed
        // while reconnecting is the receiver's to read from history).
        for user in &users {
            let seqs = recorder.seqs(user);
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            assert!(seqs.iter().all(|&seq| (1..=50).contains(&seq)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_users_events_keep_their_order_and_go_in_batches() {
        let redis = TestRedis::start();
        let counter = Arc::new(BatchCounter::default());
        let engine = RedisEngine::start(
            RedisConfig {
                max_batch_events: 16,
                ..config(&redis, "n1")
            },
            Recorder::new(),
            counter.clone(),
        )
        .unwrap();
        let users: Vec<UserId> = (0..5).map(|i| user(&format!("user {i}"))).collect();
        let meta = run_meta("run_1");
        for user in &users {
            enqueue(&engine, user, &meta, "warm-up".into());
        }
        flushed(&engine).await;
        // While Redis is paused every user's events pile up behind its first batch.
        redis.pause();
        counter.batches.store(0, Ordering::SeqCst);
        for i in 0..200 {
            for user in &users {
                enqueue(&engine, user, &meta, format!("{user} {i}"));
            }
        }
        redis.resume();
        flushed(&engine).await;
        for user in &users {
            let mut expected = vec!["warm-up".to_owned()];
            expected.extend((0..200).map(|i| format!("{user} {i}")));
            assert_eq!(stored_texts(&engine, user, 201).await, expected);
        }
        // At most one batch stuck while paused, then full batches of 16: 1 + 13 per user.
        let batches = counter.batches.load(Ordering::SeqCst);
        assert!(batches <= 5 * 14, "{batches} batches for 1,000 events");
    }
}
