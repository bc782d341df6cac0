//! The Redis engine: several agentwire nodes sharing one Redis, with one ordered stream of
//! events per user that any node can publish to, deliver from and resume from.
//!
//! The model is centrifuge's Redis broker (one Lua script numbers, stores and publishes
//! atomically, so history order is pub/sub order), without its weak points: a receiver that
//! sees a gap reads exactly the missing range from history (no need to disconnect the
//! client), history expires when its user goes quiet, a read is never unbounded, the
//! subscriber resubscribes after every reconnect and says so, a retried publish applies
//! once, and a run whose node dies still ends.
//!
//! The parts, one per file:
//!
//! - `keys`: the key and channel layout (a hash tag per user: Redis Cluster ready).
//! - `record`: the length-prefixed records stored and published, and their parsers;
//!   `outgoing`: an event encoded for the script, all but its `seq` and `epoch`.
//! - `script` and `publish.lua`: the publish script, which numbers a batch of one user's
//!   events, appends them to the user's history stream, keeps the user's live runs,
//!   PUBLISHes the batch as one message, and applies a retried batch once.
//! - `publisher`: the bounded queue emitters enqueue into without waiting, and the flusher
//!   that sends each user's queued events in one script call, one batch per user in flight.
//! - `history`: a user's position, and exact ranges of their stored events (never partial,
//!   never unbounded).
//! - `subscriber`: the node's pub/sub connection (its users' channels and its control
//!   channel), reconnected and resubscribed on loss.
//! - `lease` and `sweeper`: each node's lease, and the sweep that ends a dead node's runs
//!   with `agent_error` code `node_lost` (once, however many nodes sweep).
//! - `stop`: `stop_agent` routed to the node that runs the run, scoped to the user.
//! - `cluster`: the engine behind the runtime's `Engine` seam (the publish side, stops,
//!   history reads), and `receiver`: each subscribed user's receiver on this node (position,
//!   order, gap repair, resync); `catch_up`: how far a receiver posts ahead of the user's
//!   actor, and reading back what it let go; `settle`: before a drain, everything
//!   published so far reaches the actors.
//! - `connection`: the command connection, `backoff`: retry delays, `error`: the error,
//!   `hooks`: the [`Inbound`] and [`Monitor`] traits the engine calls back into,
//!   `config`: the settings and the `node_lost` bound's arithmetic.
//!
//! [`RedisEngine::start`] starts the node's four tasks (flusher, subscriber, lease,
//! sweeper) on the current tokio runtime; dropping the engine stops them (a crash, to the
//! other nodes, once its lease expires); [`RedisEngine::shutdown`] flushes and leaves.
//!
//! The key layout is ready for Redis Cluster (every key the script touches is in its user's
//! slot); the engine itself connects to one Redis server (a primary, or a proxy in front of
//! a cluster).
//!
//! What a user sees when Redis fails: while Redis is unreachable or stalled, events queue
//! (bounded) and are published in order once it is back, each once; a full queue is an
//! error the emitter handles. When Redis comes back empty, the next event of each user
//! starts a new epoch, which receivers see as an epoch change (clients resync).

mod backoff;
mod catch_up;
pub(crate) mod cluster;
mod config;
mod connection;
mod error;
mod history;
mod hooks;
mod keys;
mod lease;
mod outgoing;
mod publisher;
mod receiver;
mod record;
mod script;
mod settle;
mod stop;
mod subscriber;
mod sweeper;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod testing;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

pub(crate) use config::{ConfigError, RedisConfig};
pub(crate) use error::EngineError;
pub(crate) use history::Position;
#[cfg(test)]
pub(crate) use hooks::NoMonitor;
pub(crate) use hooks::{Inbound, Monitor, Part};
pub(crate) use outgoing::{OutgoingEvent, Step};
pub(crate) use publisher::{EnqueueError, Publisher};
pub(crate) use record::NumberedEvent;
pub(crate) use script::BatchOutcome;
pub(crate) use stop::StopOutcome;
pub(crate) use subscriber::Subscriber;

use connection::Commands;
use keys::Keys;
use lease::{Health, LeaseTimings};
use publisher::PublisherLimits;
use script::{PublishScript, ScriptSettings};
use subscriber::SubscriberTimings;

/// Refuses a prefix the engine cannot use (see [`keys::Keys::new`]).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    Keys::new(prefix).map(drop).map_err(ConfigError::Key)
}

/// Refuses a URL the Redis client cannot use (it is not connected to: that happens later,
/// in the background).
pub(crate) fn check_url(url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url).map(drop).map_err(|e| {
        ConfigError::Url(format!(
            "expected redis://[user:password@]host:port/db ({e})"
        ))
    })
}

/// What every task of one node's engine shares.
pub(crate) struct Node {
    /// This node's id.
    id: String,
    /// The sender id of this node's sweeper (its batches are numbered apart from the
    /// publisher's).
    sweeper_id: String,
    keys: Keys,
    commands: Commands,
    script: PublishScript,
    monitor: Arc<dyn Monitor>,
    batch_numbers: AtomicU64,
    /// This node's live runs, as members of its runs set: put back in the set when the node
    /// finds its lease lost.
    live_runs: Mutex<HashSet<Vec<u8>>>,
    /// Set once the node has taken its lease: until then a run may not start, since a
    /// sweeper would not know the node (nor could tell it from a dead one).
    lease_taken: AtomicBool,
    lease_taken_notify: Notify,
    retry_min: Duration,
    retry_max: Duration,
}

impl Node {
    /// The shared state of a node (no task started). Must be called within a tokio runtime.
    fn new(config: &RedisConfig, monitor: Arc<dyn Monitor>) -> Result<Arc<Node>, ConfigError> {
        config.validate()?;
        let keys = Keys::new(&config.prefix).map_err(ConfigError::Key)?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| ConfigError::Url(e.to_string()))?;
        let commands = Commands::new(client, config.command_timeout, config.connect_timeout)
            .map_err(|e| ConfigError::Url(e.to_string()))?;
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| crate::ids::random_id("node"));
        Ok(Arc::new(Node {
            sweeper_id: format!("{id}.sweeper"),
            id,
            keys,
            commands,
            script: PublishScript::new(ScriptSettings {
                history_max_events: config.history_max_events,
                history_ttl: config.history_ttl,
                state_ttl: config.state_ttl,
            }),
            monitor,
            batch_numbers: AtomicU64::new(0),
            live_runs: Mutex::new(HashSet::new()),
            lease_taken: AtomicBool::new(false),
            lease_taken_notify: Notify::new(),
            retry_min: config.retry_min,
            retry_max: config.retry_max,
        }))
    }

    fn set_lease_taken(&self) {
        if !self.lease_taken.swap(true, Ordering::AcqRel) {
            self.lease_taken_notify.notify_waiters();
        }
    }

    /// Completes once the node has taken its lease.
    async fn lease_taken(&self) {
        loop {
            let taken = self.lease_taken_notify.notified();
            if self.lease_taken.load(Ordering::Acquire) {
                return;
            }
            taken.await;
        }
    }

    fn next_batch_number(&self) -> u64 {
        self.batch_numbers.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One node's Redis engine.
pub(crate) struct RedisEngine {
    node: Arc<Node>,
    publisher: Publisher,
    subscriber: Subscriber,
    history_max_read: usize,
    replay_window: history::ReplayWindow,
    state_ttl: Duration,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisEngine {
    /// Starts the engine's tasks on the current tokio runtime (it must be called within
    /// one). Connecting happens in the background: a Redis that is down at start is
    /// retried like one that went down later.
    pub(crate) fn start(
        config: RedisConfig,
        inbound: Arc<dyn Inbound>,
        monitor: Arc<dyn Monitor>,
    ) -> Result<Self, ConfigError> {
        let node = Node::new(&config, monitor)?;
        let (publisher, flusher) = Publisher::start(
            node.clone(),
            PublisherLimits {
                capacity: config.queue_capacity,
                capacity_bytes: config.queue_capacity_bytes,
                max_batch_events: config.max_batch_events,
                max_batch_bytes: config.max_batch_bytes,
                max_in_flight: config.max_in_flight,
            },
        );
        let (subscriber, reader) = Subscriber::start(
            node.clone(),
            inbound,
            SubscriberTimings {
                connect_timeout: config.connect_timeout,
                ping_interval: config.ping_interval,
                ping_timeout: config.ping_timeout,
            },
        );
        let health = Arc::new(Health::default());
        let lease = tokio::spawn(lease::run(
            node.clone(),
            LeaseTimings {
                ttl: config.lease_ttl,
                refresh: config.lease_refresh,
            },
            health.clone(),
        ));
        let sweeper = tokio::spawn(sweeper::run(
            node.clone(),
            config.sweep_interval,
            config.lease_ttl,
            health,
        ));
        Ok(RedisEngine {
            node,
            publisher,
            subscriber,
            history_max_read: config.history_max_read,
            replay_window: history::ReplayWindow {
                max_events: config.history_max_events as u64,
                max_age: config.history_ttl,
            },
            state_ttl: config.state_ttl,
            tasks: Mutex::new(vec![flusher, reader, lease, sweeper]),
        })
    }

    /// The most events one history read returns.
    pub(crate) fn max_read(&self) -> usize {
        self.history_max_read
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.node.id
    }

    /// Where emitters enqueue events.
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Which users' events this node receives.
    pub(crate) fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    #[cfg(test)]
    /// `user`'s current position, or `None` when Redis holds none.
    pub(crate) async fn position(
        &self,
        user: &crate::ids::UserId,
    ) -> Result<Option<Position>, EngineError> {
        history::position(&self.node.commands, &self.node.keys, user).await
    }

    /// `user`'s position, starting a numbering (a new epoch) when Redis holds none.
    pub(crate) async fn ensure_position(
        &self,
        user: &crate::ids::UserId,
    ) -> Result<Position, EngineError> {
        let ttl_ms = u64::try_from(self.state_ttl.as_millis()).unwrap_or(u64::MAX);
        history::ensure_position(&self.node.commands, &self.node.keys, user, ttl_ms).await
    }

    /// `user`'s events with `after < seq <= upto` in `epoch`, all of them, or `None` (see
    /// `history.rs`): what a gap repair reads, everything the stream still holds.
    pub(crate) async fn history(
        &self,
        user: &crate::ids::UserId,
        epoch: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<Vec<NumberedEvent>>, EngineError> {
        let limits = history::ReadLimits {
            max_read: self.history_max_read,
            window: None,
        };
        let (commands, keys) = (&self.node.commands, &self.node.keys);
        history::range(commands, keys, user, epoch, (after, upto), false, limits).await
    }

    /// What a resume replays: like [`RedisEngine::history`], counting only the events within
    /// the replay window (the last `history_max_events`, none older than `history_ttl`) as
    /// held, and with `partial`, the tail of the range still held when its oldest are gone.
    pub(crate) async fn replay(
        &self,
        user: &crate::ids::UserId,
        epoch: &str,
        (after, upto): (u64, u64),
        partial: bool,
    ) -> Result<Option<Vec<NumberedEvent>>, EngineError> {
        let limits = history::ReadLimits {
            max_read: self.history_max_read,
            window: Some(self.replay_window),
        };
        let (commands, keys) = (&self.node.commands, &self.node.keys);
        history::range(commands, keys, user, epoch, (after, upto), partial, limits).await
    }

    /// Asks the node running `user`'s run `run_id` to stop it.
    pub(crate) async fn stop(
        &self,
        user: &crate::ids::UserId,
        run_id: &str,
    ) -> Result<StopOutcome, EngineError> {
        stop::stop(&self.node.commands, &self.node.keys, user, run_id).await
    }

    /// Refuses new events, publishes the queued ones (waiting at most `deadline`), stops the
    /// tasks, and gives up the lease when this node has no live run left (otherwise it
    /// expires and the other nodes end those runs). Returns how many queued events were not
    /// published.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> usize {
        let unpublished = self.publisher.close(deadline).await;
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        if let Err(error) = lease::release(&self.node).await {
            log::warn!("redis: could not give up the lease: {error}");
        }
        unpublished
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for task in self.tasks.lock().iter() {
            task.abort();
        }
    }
}
