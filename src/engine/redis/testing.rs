//! What the engine's tests share: settings with short timings, a node without tasks, an
//! [`Inbound`] that records what it is handed, and events to publish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::test_server::TestRedis;
use super::{
    BatchOutcome, Inbound, Monitor, NoMonitor, Node, NumberedEvent, OutgoingEvent, RedisConfig,
    RedisEngine,
};
use crate::envelope::RunFields;
use crate::event::{AgentCompleted, AgentEvent, AgentStarted, AgentThinking, RunMeta};
use crate::ids::UserId;

/// How long a test waits for what must happen before it gives up (a hang guard, not a
/// speed requirement).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Settings for `redis` with timings short enough for tests and a prefix of the test's own.
pub(crate) fn config(redis: &TestRedis, node_id: &str) -> RedisConfig {
    RedisConfig {
        node_id: Some(node_id.into()),
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        lease_ttl: Duration::from_millis(800),
        lease_refresh: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(200),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(600),
        ..RedisConfig::new(redis.url())
    }
}

/// A node's shared state, without its tasks.
pub(crate) fn node(config: &RedisConfig) -> Arc<Node> {
    Node::new(config, Arc::new(NoMonitor)).expect("valid settings")
}

/// A running engine that hands what it receives to `inbound`.
pub(crate) fn engine(config: RedisConfig, inbound: Arc<dyn Inbound>) -> RedisEngine {
    RedisEngine::start(config, inbound, Arc::new(NoMonitor)).expect("valid settings")
}

/// Subscribes `engine` to `user`'s events, waiting for the subscriber to be connected.
pub(crate) async fn subscribe(engine: &RedisEngine, user: &UserId) {
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = engine.subscriber().subscribe(user).await {
        assert!(Instant::now() < deadline, "could not subscribe: {error}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until everything `engine` queued is published.
pub(crate) async fn flushed(engine: &RedisEngine) {
    eventually("the queue to drain", || engine.publisher().queued() == 0).await;
}

/// A monitor that counts published batches.
#[derive(Default)]
pub(crate) struct BatchCounter {
    pub batches: AtomicUsize,
}

impl Monitor for BatchCounter {
    fn published(&self, _: &UserId, _: &[OutgoingEvent], _: &BatchOutcome, _: Duration) {
        self.batches.fetch_add(1, Ordering::SeqCst);
    }
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::new(name).expect("a valid user id")
}

pub(crate) fn run_meta(run_id: &str) -> RunMeta {
    RunMeta {
        run_id: run_id.into(),
        thread_id: format!("thread of {run_id}"),
        agent_name: "tester".into(),
    }
}

pub(crate) fn started() -> AgentEvent {
    AgentEvent::Started(AgentStarted {
        user_request: Some("go".into()),
        client_ref: None,
    })
}

pub(crate) fn thinking(text: impl Into<String>) -> AgentEvent {
    AgentEvent::Thinking(AgentThinking { text: text.into() })
}

pub(crate) fn completed() -> AgentEvent {
    AgentEvent::Completed(AgentCompleted {
        answer: "done".into(),
        duration_ms: 1,
    })
}

/// `event` of `run` for `user`, emitted now.
pub(crate) fn outgoing(user: &UserId, run: &RunMeta, event: &AgentEvent) -> OutgoingEvent {
    OutgoingEvent::new(
        user.clone(),
        run,
        &RunFields::new(run),
        SystemTime::now(),
        event,
    )
}

/// The text of an `agent_thinking` frame (to check order and content).
pub(crate) fn text_of(event: &NumberedEvent) -> String {
    let value: serde_json::Value = serde_json::from_str(&event.frame).expect("a JSON frame");
    value["data"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `done` holds, polling; panics after [`PATIENCE`].
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An [`Inbound`] that keeps everything it is handed.
#[derive(Default)]
pub(crate) struct Recorder {
    events: Mutex<HashMap<UserId, Vec<NumberedEvent>>>,
    stops: Mutex<Vec<(UserId, String)>>,
    resubscribed: AtomicUsize,
}

impl Recorder {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    pub(crate) fn events(&self, user: &UserId) -> Vec<NumberedEvent> {
        self.events.lock().get(user).cloned().unwrap_or_default()
    }

    pub(crate) fn seqs(&self, user: &UserId) -> Vec<u64> {
        self.events(user).iter().map(|e| e.seq).collect()
    }

    pub(crate) fn stops(&self) -> Vec<(UserId, String)> {
        self.stops.lock().clone()
    }

    pub(crate) fn resubscribed_count(&self) -> usize {
        self.resubscribed.load(Ordering::SeqCst)
    }
}

impl Inbound for Recorder {
    fn events(&self, user: &UserId, events: Vec<NumberedEvent>) {
        self.events
            .lock()
            .entry(user.clone())
            .or_default()
            .extend(events);
    }

    fn stop_requested(&self, user: UserId, run_id: String) {
        self.stops.lock().push((user, run_id));
    }

    fn resubscribed(&self) {
        self.resubscribed.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_redis_pauses_resumes_and_restarts_empty() {
        let mut redis = TestRedis::start();
        assert_eq!(redis.command("SET k v"), "+OK");
        redis.pause();
        assert!(!redis.ping(), "a paused server answers nothing");
        redis.resume();
        assert!(redis.ping());
        assert_eq!(redis.command("GET k"), "$1", "paused, not restarted");
        redis.restart();
        assert_eq!(redis.command("GET k"), "$-1", "restarted empty");
        redis.kill();
        assert!(!redis.ping());
    }
}
