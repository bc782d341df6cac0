//! Prometheus metrics, exposed as text at `GET /metrics` by [`crate::debug_routes`].
//!
//! Counters are bumped where things happen (atomics inside prometheus-client, no lock on the
//! hot path); gauges of current state (sessions, users, backlogs) are read from the registry's
//! snapshot at scrape time. Names are prefixed `agentwire_`; labels are bounded sets (event
//! type, close code, drop reason, actor kind), never user ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::close_code;
use crate::registry::RegistrySnapshot;

/// Label: an agent event's wire type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventType {
    r#type: &'static str,
}

/// Label: a close code (codes agentwire does not define are reported as `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseCode {
    code: &'static str,
}

/// Labels: why an event did not reach a socket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Dropped {
    r#type: &'static str,
    reason: &'static str,
}

/// Label: which kind of actor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActorKind {
    kind: &'static str,
}

/// Label: a queue on the delivery path (the `stage-times` feature's histograms).
#[cfg(feature = "stage-times")]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabel {
    stage: &'static str,
}

/// A queue an event waits in on its way to a socket (the `stage-times` feature).
#[cfg(feature = "stage-times")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// From emission to the user's actor taking it from its inbox.
    Inbox,
    /// From the user's actor queuing it for a session to the session writing it.
    Outbox,
}

/// Label: which part of the Redis engine failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EnginePart {
    part: &'static str,
}

/// Why an event was dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DropReason {
    /// The user had no actor (never connected, or past the resume window).
    NoUser,
    /// The run was stopped by the client; its later events are swallowed.
    StoppedRun,
    /// The session was cut off as a slow consumer.
    SlowConsumer,
    /// Still queued to a user actor that crashed.
    Crashed,
    /// The engine could not take the event (its Redis was unreachable or too slow for
    /// longer than its publish queue could hold).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    EngineUnavailable,
    /// The session was being closed by a drain.
    Draining,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::NoUser => "no_user",
            DropReason::StoppedRun => "stopped_run",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Crashed => "crashed",
            DropReason::EngineUnavailable => "engine_unavailable",
            DropReason::Draining => "draining",
        }
    }
}

/// Every metric of one runtime.
pub(crate) struct Metrics {
    registry: Registry,
    sessions: Gauge,
    users: Gauge,
    backlog: Family<ActorKind, Gauge>,
    connects: Counter,
    disconnects: Family<CloseCode, Counter>,
    published: Family<EventType, Counter>,
    delivered: Family<EventType, Counter>,
    dropped: Family<Dropped, Counter>,
    latency: Histogram,
    restarts: Counter,
    escalations: Counter,
    /// The Redis engine's: publish latency, errors by part, gaps repaired, catch-ups,
    /// resyncs.
    engine_publish: Histogram,
    engine_errors: Family<EnginePart, Counter>,
    engine_gaps_repaired: Counter,
    engine_catch_ups: Counter,
    engine_resyncs: Counter,
    /// The per-type counters of `published` and `delivered`, created once, so the per-event
    /// path bumps an atomic without looking anything up (a family lookup takes a lock).
    published_by_type: [Counter; EVENT_TYPES.len()],
    delivered_by_type: [Counter; EVENT_TYPES.len()],
    /// With the `stage-times` feature: how long events wait in each queue.
    #[cfg(feature = "stage-times")]
    stages: [Histogram; 2],
}

/// Every agent event's wire type, in a fixed order.
const EVENT_TYPES: [&str; 6] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
    "agent_error",
];

/// 10 µs to about 5 s.
#[cfg(feature = "stage-times")]
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

fn type_index(event_type: &str) -> usize {
    EVENT_TYPES
        .iter()
        .position(|t| *t == event_type)
        .unwrap_or(0)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentwire");
        let metrics = Metrics {
            sessions: Gauge::default(),
            users: Gauge::default(),
            backlog: Family::default(),
            connects: Counter::default(),
            disconnects: Family::default(),
            published: Family::default(),
            delivered: Family::default(),
            dropped: Family::default(),
            // 50 µs to about 26 s.
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            restarts: Counter::default(),
            escalations: Counter::default(),
            // 100 µs to about 52 s.
            engine_publish: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            engine_errors: Family::default(),
            engine_gaps_repaired: Counter::default(),
            engine_catch_ups: Counter::default(),
            engine_resyncs: Counter::default(),
            published_by_type: Default::default(),
            delivered_by_type: Default::default(),
            #[cfg(feature = "stage-times")]
            stages: std::array::from_fn(|_| stage_histogram()),
            registry: Registry::default(),
        };
        let metrics = Metrics {
            published_by_type: EVENT_TYPES.map(|t| {
                metrics
                    .published
                    .get_or_create_owned(&EventType { r#type: t })
            }),
            delivered_by_type: EVENT_TYPES.map(|t| {
                metrics
                    .delivered
                    .get_or_create_owned(&EventType { r#type: t })
            }),
            ..metrics
        };
        registry.register(
            "sessions",
            "Open WebSocket sessions",
            metrics.sessions.clone(),
        );
        registry.register(
            "users",
            "User actors (connected, or within their resume window)",
            metrics.users.clone(),
        );
        registry.register(
            "backlog",
            "Messages waiting for actors of each kind (queued minus handled)",
            metrics.backlog.clone(),
        );
        registry.register("connects", "Sessions opened", metrics.connects.clone());
        registry.register(
            "disconnects",
            "Sessions closed, by close code",
            metrics.disconnects.clone(),
        );
        registry.register(
            "events_published",
            "Agent events numbered in a user's stream (with Redis: queued for publishing by this node), by type",
            metrics.published.clone(),
        );
        registry.register(
            "events_delivered",
            "Agent events written to a socket, by type",
            metrics.delivered.clone(),
        );
        registry.register(
            "events_dropped",
            "Agent events that did not reach a socket, by type and reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From emission to being written to a socket",
            metrics.latency.clone(),
        );
        registry.register(
            "actor_restarts",
            "User actors restarted after a crash",
            metrics.restarts.clone(),
        );
        registry.register(
            "escalations",
            "Users whose actor crashed past the restart limit (sockets closed with 1011)",
            metrics.escalations.clone(),
        );
        registry.register(
            "engine_publish_seconds",
            "Redis engine: from queuing a batch of events to Redis applying it",
            metrics.engine_publish.clone(),
        );
        registry.register(
            "engine_errors",
            "Redis engine: failed Redis operations, by part (publish, subscribe, lease, sweep)",
            metrics.engine_errors.clone(),
        );
        registry.register(
            "engine_gaps_repaired",
            "Redis engine: gaps in a user's stream filled from history",
            metrics.engine_gaps_repaired.clone(),
        );
        registry.register(
            "engine_catch_ups",
            "Redis engine: times a user's actor fell twice max_user_backlog events behind and this node let its events go, to read them back from history",
            metrics.engine_catch_ups.clone(),
        );
        registry.register(
            "engine_resyncs",
            "Redis engine: streams continued at a new position (history lost, or Redis restarted empty)",
            metrics.engine_resyncs.clone(),
        );
        #[cfg(feature = "stage-times")]
        let metrics = {
            let family: Family<StageLabel, Histogram, fn() -> Histogram> =
                Family::new_with_constructor(stage_histogram);
            registry.register(
                "stage_wait_seconds",
                "How long agent events wait in each queue on the delivery path: `inbox` (from emission to the user's actor), `outbox` (from the user's actor to the session's write); built with the stage-times feature",
                family.clone(),
            );
            Metrics {
                stages: ["inbox", "outbox"]
                    .map(|stage| family.get_or_create_owned(&StageLabel { stage })),
                ..metrics
            }
        };
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub(crate) fn connected(&self) {
        self.connects.inc();
    }

    pub(crate) fn disconnected(&self, code: u16) {
        let code = close_code_label(code);
        self.disconnects.get_or_create(&CloseCode { code }).inc();
    }

    pub(crate) fn published(&self, event_type: &'static str) {
        self.published_by_type[type_index(event_type)].inc();
    }

    pub(crate) fn delivered(&self, event_type: &'static str, latency_secs: f64) {
        self.delivered_by_type[type_index(event_type)].inc();
        self.latency.observe(latency_secs);
    }

    /// An event waited `waited` in `stage`.
    #[cfg(feature = "stage-times")]
    pub(crate) fn waited(&self, stage: Stage, waited: std::time::Duration) {
        self.stages[stage as usize].observe(waited.as_secs_f64());
    }

    pub(crate) fn dropped(&self, event_type: &'static str, reason: DropReason, count: u64) {
        let labels = Dropped {
            r#type: event_type,
            reason: reason.label(),
        };
        self.dropped.get_or_create(&labels).inc_by(count);
    }

    pub(crate) fn restarted(&self) {
        self.restarts.inc();
    }

    pub(crate) fn escalated(&self) {
        self.escalations.inc();
    }

    // The engine's own metrics: only the Redis engine reports them.

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn engine_published(&self, latency_secs: f64) {
        self.engine_publish.observe(latency_secs);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn engine_error(&self, part: &'static str) {
        self.engine_errors.get_or_create(&EnginePart { part }).inc();
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn engine_gap_repaired(&self) {
        self.engine_gaps_repaired.inc();
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn engine_caught_up(&self) {
        self.engine_catch_ups.inc();
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn engine_resynced(&self) {
        self.engine_resyncs.inc();
    }

    /// The text exposition, with the state gauges set from `snapshot`.
    pub(crate) fn encode(&self, snapshot: &RegistrySnapshot) -> String {
        self.sessions.set(snapshot.session_count() as i64);
        self.users.set(snapshot.users.len() as i64);
        let user_backlog: u64 = snapshot.users.values().map(|u| u.stats.backlog).sum();
        let session_backlog: u64 = snapshot
            .users
            .values()
            .flat_map(|u| u.sessions.values())
            .map(|s| s.backlog)
            .sum();
        let kinds = [
            ("registry", snapshot.registry.backlog),
            ("user", user_backlog),
            ("session", session_backlog),
        ];
        for (kind, value) in kinds {
            self.backlog
                .get_or_create(&ActorKind { kind })
                .set(value as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Close codes as a bounded label set: agentwire's own codes, 1001 and 1005/1006 as clients
/// and the network produce them, everything else `other`.
fn close_code_label(code: u16) -> &'static str {
    match code {
        close_code::NORMAL => "1000",
        1001 => "1001",
        close_code::PROTOCOL_ERROR => "1002",
        close_code::UNSUPPORTED_DATA => "1003",
        1005 => "1005",
        1006 => "1006",
        close_code::INVALID_PAYLOAD => "1007",
        close_code::POLICY_VIOLATION => "1008",
        close_code::MESSAGE_TOO_BIG => "1009",
        close_code::INTERNAL_ERROR => "1011",
        close_code::SERVICE_RESTART => "1012",
        close_code::TRY_AGAIN_LATER => "1013",
        close_code::HEARTBEAT_TIMEOUT => "4000",
        close_code::SLOW_CONSUMER => "4001",
        close_code::TOKEN_EXPIRED => "4002",
        close_code::TOO_MANY_SOCKETS => "4003",
        close_code::RATE_LIMITED => "4008",
        _ => "other",
    }
}
