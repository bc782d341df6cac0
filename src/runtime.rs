//! The [`Runtime`]: the cloneable handle that is the only way into agentwire.
//!
//! Starting a runtime starts its registry (on its own arbiter) and a small pool of arbiters
//! for user actors (their home with `UserPlacement::Pool`, otherwise only a fallback). The runtime is what an actix-web app mounts with [`crate::routes`] and
//! what application code emits through ([`Runtime::user`]), from any thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::emit::UserHandle;
use crate::engine::local::{LocalEngine, LocalLimits};
use crate::engine::SharedEngine;
use crate::handler::{AgentHandler, DynHandler};
use crate::ids::{SessionId, UserId};
use crate::metrics::Metrics;
use crate::registry::{DrainAll, Fault, InjectFault, Registry, RegistrySnapshot, Snapshot};
use crate::stats::ActorStats;
use crate::supervision::{SupervisionEvent, SupervisionLog};

/// What every actor of one runtime shares. Crate-private: outside code holds a [`Runtime`].
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub registry: Addr<Registry>,
    pub engine: SharedEngine,
    pub handler: Option<Arc<dyn DynHandler>>,
    pub authenticator: Arc<dyn Authenticator>,
    /// Set by [`Runtime::shutdown`]: new upgrades are refused with 503.
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub supervision: Arc<SupervisionLog>,
    /// The registry's mailbox counters (senders count what they queue).
    pub registry_stats: Arc<ActorStats>,
    next_session: AtomicU64,
}

impl Shared {
    pub(crate) fn next_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running agentwire instance: one registry, its user actors, and their sessions.
///
/// Cheap to clone; every clone is the same runtime.
///
/// ```no_run
/// use agentwire::{JwtAuthenticator, Runtime};
/// # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(JwtAuthenticator::hs256(b"secret")).start()?;
/// let alice = runtime.user(agentwire::UserId::new("alice")?);
/// let run = alice.start_run("thread-1", "scheduler");
/// run.complete("Your meeting is booked.");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Starts building a runtime that authenticates sockets with `authenticator`.
    pub fn builder(authenticator: impl Authenticator) -> RuntimeBuilder {
        RuntimeBuilder {
            config: Config::default(),
            authenticator: Arc::new(authenticator),
            handler: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// A handle bound to one user, for emitting runs to that user from anywhere.
    pub fn user(&self, user_id: UserId) -> UserHandle {
        UserHandle::new(user_id, self.shared.engine.clone())
    }

    /// The configuration the runtime was started with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A copy of the supervision tree: connected users, their sessions, and counters.
    pub async fn snapshot(&self) -> Result<RegistrySnapshot, RuntimeGone> {
        self.shared
            .registry
            .send(Snapshot)
            .await
            .map_err(|_| RuntimeGone)
    }

    /// Drains the runtime: new upgrades get HTTP 503, and every open socket is closed with
    /// 1012 (service restart), a batch of users at a time, each after everything already
    /// queued to it has been written. Resolves when no socket is left or `deadline` passed.
    /// With Redis, the events emitted before the call (on any node) that are still on their
    /// way to this node's user actors reach them first: the drain waits for them for at most
    /// half of `deadline`.
    ///
    /// Clients should reconnect with `resume`. With the in-process engine, users' streams
    /// live in this process: a client that reconnects to a restarted process gets
    /// `resync_required`.
    ///
    /// Call it before stopping the `HttpServer`. From the moment it begins, the registry
    /// restarts no user actor: the workers stopping end the user actors that run on them
    /// (idle users in their resume window included), and that is the shutdown, not a crash.
    /// Without it, a stopping worker looks like a thread that died under running actors.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, RuntimeGone> {
        let started = Instant::now();
        self.shared.draining.store(true, Ordering::SeqCst);
        let open_before = self.snapshot().await?.session_count();
        // What was emitted before now reaches the user actors first (with Redis it may still
        // be on its way), so the 1012 closes come after it; at most half the deadline.
        self.shared.engine.settle(deadline / 2).await;
        self.shared
            .registry
            .send(DrainAll)
            .await
            .map_err(|_| RuntimeGone)?;
        loop {
            let open = self.snapshot().await?.session_count();
            if open == 0 || started.elapsed() >= deadline {
                let report = ShutdownReport {
                    closed: open_before.saturating_sub(open),
                    still_open: open,
                    took: started.elapsed(),
                };
                log::info!("runtime: drained: {report:?}");
                let left = deadline.saturating_sub(started.elapsed());
                self.shared.engine.shutdown(left).await;
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The recent supervision events (restarts, escalations, slow-consumer closes,
    /// heartbeat timeouts, injected faults), oldest first; at most
    /// [`crate::supervision::SUPERVISION_LOG_CAPACITY`].
    pub fn supervision_events(&self) -> Vec<SupervisionEvent> {
        self.shared.supervision.events()
    }

    /// Metrics in the Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String, RuntimeGone> {
        let snapshot = self.snapshot().await?;
        Ok(self.shared.metrics.encode(&snapshot))
    }

    /// Injects a fault (crash a user's actor, stall a session), for tests and for rehearsing
    /// incidents. The debug routes expose it behind the admin token.
    pub async fn inject_fault(&self, fault: Fault) -> Result<(), FaultError> {
        self.shared
            .registry
            .send(InjectFault(fault))
            .await
            .map_err(|_| FaultError(RuntimeGone.to_string()))?
            .map_err(FaultError)
    }

    /// Opens an in-memory connection for `user`: a real session, attached and welcomed like
    /// a socket's, whose frames travel in-process instead of over TCP. No token is checked
    /// (the caller vouches for the user). For testing handlers without a network, and for
    /// benchmarking the delivery path without the kernel's socket costs. Must be called and
    /// used on a thread of the actix system the runtime runs in.
    ///
    /// ```
    /// use agentwire::{JwtAuthenticator, Runtime, UserId};
    /// actix_web::rt::System::new().block_on(async {
    ///     let runtime = Runtime::builder(JwtAuthenticator::hs256(b"secret")).start().unwrap();
    ///     let alice = UserId::new("alice").unwrap();
    ///     let mut socket = runtime.connect_in_memory(alice.clone());
    ///     let welcome = socket.recv().await.unwrap();
    ///     assert!(welcome.contains(r#""type":"welcome""#));
    ///     socket.send(r#"{"type":"ping"}"#).await; // ends the resume hold
    ///     assert!(socket.recv().await.unwrap().contains(r#""type":"pong""#));
    ///     runtime.user(alice).start_run("t1", "helper").complete("done");
    ///     let started = socket.recv().await.unwrap();
    ///     assert!(started.contains(r#""type":"agent_started","seq":1"#));
    /// });
    /// ```
    pub fn connect_in_memory(&self, user: UserId) -> crate::InMemorySocket {
        crate::session::connect_in_memory(self.shared.clone(), user)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Configures and starts a [`Runtime`].
pub struct RuntimeBuilder {
    config: Config,
    authenticator: Arc<dyn Authenticator>,
    handler: Option<Arc<dyn DynHandler>>,
    #[cfg(feature = "redis")]
    redis: Option<crate::engine::redis::RedisConfig>,
}

impl RuntimeBuilder {
    /// Replaces the default [`Config`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The application's answer to `start_agent` and `user_message`. Without one, clients
    /// get an `error` frame with code `unsupported`.
    pub fn handler(mut self, handler: impl AgentHandler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Makes this runtime one node of a cluster: every node started with the same Redis (at
    /// `url`, `redis://[user:password@]host:port/db`) and prefix shares each user's stream,
    /// so a user's sockets on any node receive every event emitted on any node, in one
    /// order, and resume on any node. Without it, streams live in this process. Connecting
    /// happens in the background: a Redis that is down at start is retried. See
    /// `docs/scaling.md`.
    ///
    /// ```no_run
    /// use agentwire::{JwtAuthenticator, Runtime};
    /// # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = Runtime::builder(JwtAuthenticator::hs256(b"secret"))
    ///     .redis("redis://127.0.0.1:6379/0")
    ///     .redis_prefix("agentwire-staging")
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        let config = self
            .redis
            .get_or_insert_with(|| crate::engine::redis::RedisConfig::new(String::new()));
        config.url = url;
        self
    }

    /// The prefix of every Redis key and channel of this cluster (default `agentwire`), so
    /// several deployments can share one Redis. Only with [`RuntimeBuilder::redis`].
    #[cfg(feature = "redis")]
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        let config = self
            .redis
            .get_or_insert_with(|| crate::engine::redis::RedisConfig::new(String::new()));
        config.prefix = prefix.into();
        self
    }

    /// How many events this node's publish queue holds, over all users (default 262,144;
    /// at most 64 MiB whatever this says). While Redis is unreachable or slower than the
    /// emitters, events wait there; an event that does not fit stops its run, which ends
    /// with `agent_error` code `engine_unavailable` once the queue has room. Only with
    /// [`RuntimeBuilder::redis`]; at least 1.
    #[cfg(feature = "redis")]
    pub fn redis_queue_capacity(mut self, events: usize) -> Self {
        let config = self
            .redis
            .get_or_insert_with(|| crate::engine::redis::RedisConfig::new(String::new()));
        config.queue_capacity = events;
        self
    }

    /// Checks a Redis key prefix as [`RuntimeBuilder::start`] does (1 to 64 bytes, no braces,
    /// whitespace or control characters), so that a program can refuse a bad setting (a
    /// command-line flag, say) before it starts anything.
    #[cfg(feature = "redis")]
    pub fn check_redis_prefix(prefix: &str) -> Result<(), ConfigError> {
        crate::engine::redis::check_prefix(prefix).map_err(|e| ConfigError::new(e.to_string()))
    }

    /// Checks a Redis URL as [`RuntimeBuilder::start`] does (its form only: nothing is
    /// connected to), for the same purpose as [`RuntimeBuilder::check_redis_prefix`].
    #[cfg(feature = "redis")]
    pub fn check_redis_url(url: &str) -> Result<(), ConfigError> {
        crate::engine::redis::check_url(url).map_err(|e| ConfigError::new(e.to_string()))
    }

    /// Starts the registry and the user arbiters. Must be called inside a running actix
    /// system (for example from `#[actix_web::main]`).
    pub fn start(self) -> Result<Runtime, ConfigError> {
        self.config.validate()?;
        let config = Arc::new(self.config);
        let user_arbiters = (0..config.user_arbiters)
            .map(|_| Arbiter::new().handle())
            .collect();
        let placement = config.user_placement;
        let registry_config = config.clone();
        let metrics = Arc::new(Metrics::default());
        let engine = start_engine(
            &config,
            metrics.clone(),
            #[cfg(feature = "redis")]
            self.redis,
        )?;
        let registry_engine = engine.clone();
        let supervision = Arc::new(SupervisionLog::default());
        let registry_stats = Arc::new(ActorStats::default());
        let observers = (metrics.clone(), supervision.clone());
        let stats = registry_stats.clone();
        let registry = Registry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Registry::new(
                registry_config,
                observers,
                stats,
                registry_engine,
                (placement, user_arbiters),
            )
        });
        Ok(Runtime {
            shared: Arc::new(Shared {
                config,
                registry,
                engine,
                handler: self.handler,
                authenticator: self.authenticator,
                draining: AtomicBool::new(false),
                metrics,
                supervision,
                registry_stats,
                next_session: AtomicU64::new(1),
            }),
        })
    }
}

/// The engine the configuration asks for: the in-process one, or (with a Redis URL) this
/// node's Redis engine, which keeps as much history per user as the in-process one would.
fn start_engine(
    config: &Config,
    metrics: Arc<Metrics>,
    #[cfg(feature = "redis")] redis: Option<crate::engine::redis::RedisConfig>,
) -> Result<SharedEngine, ConfigError> {
    let max_user_backlog = usize::try_from(config.max_user_backlog).unwrap_or(usize::MAX);
    #[cfg(feature = "redis")]
    if let Some(mut redis) = redis {
        if redis.url.is_empty() {
            return Err(ConfigError::new(
                "a Redis setting (redis_prefix, redis_queue_capacity) was given without a Redis URL",
            ));
        }
        redis.history_max_events = config.replay_max_events.max(1);
        redis.history_ttl = config.replay_max_age;
        redis.history_max_read = config.replay_max_events.max(1);
        let engine = crate::engine::ClusterEngine::start(redis, max_user_backlog, metrics)
            .map_err(|e| ConfigError::new(format!("redis: {e}")))?;
        return Ok(Arc::new(engine));
    }
    Ok(Arc::new(LocalEngine::new(
        LocalLimits {
            replay_max_events: config.replay_max_events,
            replay_max_age: config.replay_max_age,
            max_replay_bytes: config.max_replay_bytes,
            max_user_backlog,
        },
        metrics,
    )))
}

/// The runtime's registry is no longer running (its actix system stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeGone;

impl std::fmt::Display for RuntimeGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the agentwire runtime has stopped")
    }
}

impl std::error::Error for RuntimeGone {}

/// What [`Runtime::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sockets closed with 1012.
    pub closed: usize,
    /// Sockets still open at the deadline (stalled clients that could not be closed yet).
    pub still_open: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// A fault could not be injected (no such user or session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultError(pub String);

impl std::fmt::Display for FaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultError {}
