//! The subscriber: one pub/sub connection per node, on which the node subscribes to the
//! channel of every user it has an actor for, and to its own control channel.
//!
//! [`Subscriber::subscribe`] and [`Subscriber::unsubscribe`] change the set of wanted
//! channels and apply the change on the live connection. Messages are parsed here and handed
//! to [`Inbound`]: a user's numbered events to `events`, a stop request to `stop_requested`.
//!
//! The connection is pinged every `ping_interval`; when it drops, or a ping takes longer than
//! `ping_timeout` (a Redis that stalled, a peer that vanished), it is replaced: the
//! subscriber reconnects with backoff, subscribes every wanted channel again, and only then
//! calls [`Inbound::resubscribed`], so that a receiver that then checks its position misses
//! nothing published after the check. A `subscribe` that finds no connection keeps the
//! channel wanted (it is subscribed on reconnect, which `resubscribed` reports) and returns
//! [`EngineError::Disconnected`].
//!
//! [`Subscriber::sync`] publishes a marker on the node's own control channel and waits for
//! the reader to reach it: Redis writes a connection's messages in the order it published
//! them, so by then every message published before the marker was handed to [`Inbound`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, Value};
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::error::EngineError;
use super::hooks::{Inbound, Part};
use super::record::{encode_marker, parse_control, parse_message, ControlMessage};
use super::Node;
use crate::ids::UserId;

/// The most channels in one SUBSCRIBE while resubscribing.
const SUBSCRIBE_CHUNK: usize = 512;

/// Timings of the subscriber's connection.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberTimings {
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

/// The node's subscriber handle, cheap to clone.
#[derive(Clone)]
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
}

struct Shared {
    node: Arc<Node>,
    inbound: Arc<dyn Inbound>,
    timings: SubscriberTimings,
    control: String,
    state: Mutex<State>,
    /// The last marker number given out, and the highest the reader has reached.
    markers_sent: AtomicU64,
    marker_seen: AtomicU64,
    marker_reached: Notify,
}

#[derive(Default)]
struct State {
    /// Wanted channels, and whose they are.
    wanted: HashMap<String, UserId>,
    /// The live connection's command side, once every wanted channel is subscribed on it.
    sink: Option<PubSubSink>,
}

impl Subscriber {
    /// Starts the connection task on the current tokio runtime.
    pub(crate) fn start(
        node: Arc<Node>,
        inbound: Arc<dyn Inbound>,
        timings: SubscriberTimings,
    ) -> (Subscriber, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            control: node.keys.control(&node.id),
            node,
            inbound,
            timings,
            state: Mutex::new(State::default()),
            markers_sent: AtomicU64::new(0),
            marker_seen: AtomicU64::new(0),
            marker_reached: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone()));
        (Subscriber { shared }, task)
    }

    /// Subscribes to `user`'s events. `Ok` once the subscription is active: every event
    /// published after that reaches [`Inbound::events`] (unless the connection drops, which
    /// `resubscribed` reports).
    pub(crate) async fn subscribe(&self, user: &UserId) -> Result<(), EngineError> {
        let channel = self.shared.node.keys.user(user).events;
        let sink = {
            let mut state = self.shared.state.lock();
            state.wanted.insert(channel.clone(), user.clone());
            state.sink.clone()
        };
        let mut sink = sink.ok_or(EngineError::Disconnected)?;
        timeout(self.shared.timings.ping_timeout, sink.subscribe(&channel)).await??;
        Ok(())
    }

    /// Stops receiving `user`'s events.
    pub(crate) async fn unsubscribe(&self, user: &UserId) -> Result<(), EngineError> {
        let channel = self.shared.node.keys.user(user).events;
        let sink = {
            let mut state = self.shared.state.lock();
            state.wanted.remove(&channel);
            state.sink.clone()
        };
        // Without a connection there is nothing to undo: the next one will not have it.
        if let Some(mut sink) = sink {
            timeout(self.shared.timings.ping_timeout, sink.unsubscribe(&channel)).await??;
        }
        Ok(())
    }

    /// Waits until every message Redis sent this node's subscriber before now has been
    /// handed to [`Inbound`], by publishing a marker on the node's control channel and
    /// waiting for the reader to reach it. `Disconnected` when no subscriber received the
    /// marker; a connection lost meanwhile leaves it waiting (bound it with a timeout).
    pub(crate) async fn sync(&self) -> Result<(), EngineError> {
        let shared = &self.shared;
        let number = shared.markers_sent.fetch_add(1, Ordering::AcqRel) + 1;
        let receivers: u64 = shared
            .node
            .commands
            .query(
                redis::cmd("PUBLISH")
                    .arg(&shared.control)
                    .arg(encode_marker(number)),
            )
            .await?;
        if receivers == 0 {
            return Err(EngineError::Disconnected);
        }
        loop {
            let reached = shared.marker_reached.notified();
            if shared.marker_seen.load(Ordering::Acquire) >= number {
                return Ok(());
            }
            reached.await;
        }
    }

    #[cfg(test)]
    /// Whether the connection is up and every wanted channel subscribed on it.
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.state.lock().sink.is_some()
    }

    #[cfg(test)]
    /// How many users' channels are wanted.
    pub(crate) fn subscribed_users(&self) -> usize {
        self.shared.state.lock().wanted.len()
    }
}

/// Connects, reads until the connection is lost, and again, forever.
async fn run(shared: Arc<Shared>) {
    let node = &shared.node;
    let mut backoff = Backoff::new(node.retry_min, node.retry_max);
    loop {
        match connect(&shared).await {
            Ok((sink, stream)) => {
                backoff.reset();
                log::debug!("redis: subscriber connected");
                shared.inbound.resubscribed();
                read(&shared, sink, stream).await;
                shared.state.lock().sink = None;
                log::warn!("redis: subscriber connection lost; reconnecting");
                node.monitor.subscriber_disconnected();
            }
            Err(error) => {
                log::debug!("redis: subscriber cannot connect: {error}");
                node.monitor.error(Part::Subscribe, &error);
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// A new connection with the control channel and every wanted channel subscribed.
async fn connect(shared: &Shared) -> Result<(PubSubSink, PubSubStream), EngineError> {
    let timings = &shared.timings;
    let client = shared.node.commands.client();
    let pubsub = timeout(timings.connect_timeout, client.get_async_pubsub()).await??;
    let (mut sink, stream) = pubsub.split();
    timeout(timings.ping_timeout, sink.subscribe(&shared.control)).await??;
    let mut done: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = shared.state.lock().wanted.keys().cloned().collect();
    loop {
        for chunk in todo.chunks(SUBSCRIBE_CHUNK) {
            timeout(timings.ping_timeout, sink.subscribe(chunk)).await??;
        }
        done.extend(todo);
        // Channels wanted or unwanted meanwhile: applied before the connection is published.
        let stale: Vec<String> = {
            let mut state = shared.state.lock();
            todo = state
                .wanted
                .keys()
                .filter(|channel| !done.contains(*channel))
                .cloned()
                .collect();
            let stale = done
                .iter()
                .filter(|channel| !state.wanted.contains_key(*channel))
                .cloned()
                .collect();
            if todo.is_empty() {
                state.sink = Some(sink.clone());
            }
            stale
        };
        if !stale.is_empty() {
            timeout(timings.ping_timeout, sink.unsubscribe(&stale)).await??;
            for channel in &stale {
                done.remove(channel);
            }
        }
        if todo.is_empty() {
            return Ok((sink, stream));
        }
    }
}

/// Hands every message on to [`Inbound`] until the connection drops or stops answering.
async fn read(shared: &Shared, sink: PubSubSink, mut stream: PubSubStream) {
    let dead = CancellationToken::new();
    let pinger = tokio::spawn(ping(sink, shared.timings.clone(), dead.clone()));
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => handle(shared, message),
                None => break,
            },
            () = dead.cancelled() => break,
        }
    }
    pinger.abort();
}

async fn ping(mut sink: PubSubSink, timings: SubscriberTimings, dead: CancellationToken) {
    loop {
        tokio::time::sleep(timings.ping_interval).await;
        match timeout(timings.ping_timeout, sink.ping::<Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                log::debug!("redis: subscriber ping failed: {error}");
                break;
            }
            Err(_) => {
                log::warn!(
                    "redis: subscriber ping timed out after {:?}",
                    timings.ping_timeout
                );
                break;
            }
        }
    }
    dead.cancel();
}

fn handle(shared: &Shared, message: Msg) {
    let channel = message.get_channel_name();
    let parsed = if channel == shared.control {
        parse_control(message.get_payload_bytes()).map(|control| match control {
            ControlMessage::Stop(user, run_id) => shared.inbound.stop_requested(user, run_id),
            ControlMessage::Marker(number) => {
                shared.marker_seen.fetch_max(number, Ordering::AcqRel);
                shared.marker_reached.notify_waiters();
            }
        })
    } else {
        let Some(user) = shared.state.lock().wanted.get(channel).cloned() else {
            // A channel unsubscribed a moment ago.
            return;
        };
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        parse_message(payload).map(|events| shared.inbound.events(&user, events))
    };
    if let Err(error) = parsed {
        log::error!("redis: a message on {channel} is malformed: {error}");
        shared.node.monitor.error(Part::Subscribe, &error.into());
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::RedisEngine;
    use super::*;

    fn publish(engine: &RedisEngine, user: &UserId, texts: impl IntoIterator<Item = String>) {
        let meta = run_meta("run_1");
        for text in texts {
            let event = outgoing(user, &meta, &thinking(text));
            assert!(engine.publisher().enqueue(event).is_ok());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_users_events_arrive_in_order() {
        let redis = TestRedis::start();
        let recorder = Recorder::new();
        let engine = engine(config(&redis, "n1"), recorder.clone());
        let alice = user("alice");
        subscribe(&engine, &alice).await;
        publish(&engine, &alice, (0..100).map(|i| format!("event {i}")));
        eventually("100 events", || recorder.events(&alice).len() >= 100).await;
        let events = recorder.events(&alice);
        assert_eq!(recorder.seqs(&alice), (1..=100).collect::<Vec<_>>());
        let expected: Vec<String> = (0..100).map(|i| format!("event {i}")).collect();
        assert_eq!(events.iter().map(text_of).collect::<Vec<_>>(), expected);
        assert!(events.iter().all(|e| e.epoch == events[0].epoch));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_redis_is_resubscribed_and_reported() {
        let mut redis = TestRedis::start();
        let recorder = Recorder::new();
        let engine = engine(config(&redis, "n1"), recorder.clone());
        let alice = user("alice");
        subscribe(&engine, &alice).await;
        publish(&engine, &alice, (0..5).map(|i| format!("before {i}")));
        eventually("the first events", || recorder.events(&alice).len() == 5).await;
        let reported = recorder.resubscribed_count();
        redis.restart();
        eventually("the reconnect to be reported", || {
            recorder.resubscribed_count() > reported && engine.subscriber().is_connected()
        })
        .await;
        publish(&engine, &alice, (0..5).map(|i| format!("after {i}")));
        eventually("the later events", || recorder.events(&alice).len() == 10).await;
        let events = recorder.events(&alice);
        assert_ne!(
            events[5].epoch, events[4].epoch,
            "Redis lost everything: a new epoch"
        );
        assert_eq!(recorder.seqs(&alice)[5..], [1, 2, 3, 4, 5]);
        assert_eq!(text_of(&events[9]), "after 4");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unsubscribed_user_is_not_delivered() {
        let redis = TestRedis::start();
        let recorder = Recorder::new();
        let engine = engine(config(&redis, "n1"), recorder.clone());
        let (alice, bob) = (user("alice"), user("bob"));
        subscribe(&engine, &alice).await;
        subscribe(&engine, &bob).await;
        engine.subscriber().unsubscribe(&alice).await.unwrap();
        assert_eq!(engine.subscriber().subscribed_users(), 1);
        publish(&engine, &alice, ["for alice".to_owned()]);
        flushed(&engine).await;
        publish(&engine, &bob, ["for bob".to_owned()]);
        // Both were published on one connection in this order: once bob's arrived, alice's
        // would have too.
        eventually("bob's event", || recorder.events(&bob).len() == 1).await;
        assert!(recorder.events(&alice).is_empty());
    }
}
