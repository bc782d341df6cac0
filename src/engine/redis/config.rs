//! The Redis engine's settings, with their defaults and the arithmetic behind them.
//!
//! The bound on how soon a dead node's runs end (`agent_error` code `node_lost`): a node
//! refreshes its lease every `lease_refresh` (1 s) with a TTL of `lease_ttl` (5 s), so its
//! lease lapses at most `lease_ttl` after it died; every node sweeps every `sweep_interval`
//! (2 s), so the first sweep that finds it gone starts at most `lease_ttl + sweep_interval`
//! (7 s) after the death, and ending a run is one script call. The documented bound allows
//! that once more (a sweep that failed, or a sweeper that was itself waiting out a stall,
//! and the next one) plus one refresh: `2 × (lease_ttl + sweep_interval) + lease_refresh`,
//! 15 s by default ([`RedisConfig::node_lost_bound`]). A sweeper whose own lease refreshes
//! failed or were slow waits for a whole `lease_ttl` of healthy refreshes before it sweeps:
//! if Redis stalled for it, it stalled for the other nodes too, and their leases may have
//! lapsed without them being dead. So the bound holds from when Redis is reachable.

use std::time::Duration;

use super::keys::{validate_node_id, KeyError, Keys};

/// Settings of one node's Redis engine.
#[derive(Debug, Clone)]
pub(crate) struct RedisConfig {
    /// `redis://[user:password@]host:port/db`. Required.
    pub url: String,
    /// The prefix of every key and channel, so deployments can share a Redis. Default
    /// `agentwire`.
    pub prefix: String,
    /// This node's id (ASCII letters, digits, `-`, `_`, `.`). Default: `node_` and 16 random
    /// hex digits, new at every start.
    pub node_id: Option<String>,
    /// How many events each user's history stream keeps at least (trimmed with `MAXLEN ~`,
    /// so it may hold up to about 100 more). Default 1,000.
    pub history_max_events: usize,
    /// A user's history stream is deleted this long after the user's last event, so history
    /// is not kept for users nobody reads. Default 5 min.
    pub history_ttl: Duration,
    /// The most events one history read returns; a longer range is refused (the caller
    /// resyncs). Default 1,000.
    pub history_max_read: usize,
    /// A user's numbering (epoch and last seq, a few dozen bytes) and live runs are deleted
    /// this long after the user's last event, so a user whose history expired keeps its
    /// epoch and seq (connected sockets see no epoch change; a resume that missed nothing
    /// still succeeds). Runs leave the live runs when they end or their node is swept: this
    /// is only a backstop. Default 24 h.
    pub state_ttl: Duration,
    /// Events queued for publishing, at most (all users of the node). Default 262,144.
    pub queue_capacity: usize,
    /// The same bound in bytes of encoded events. Default 64 MiB.
    pub queue_capacity_bytes: usize,
    /// The most events of one user in one script call. Default 256.
    pub max_batch_events: usize,
    /// How many of a user's events a node's receiver posts ahead of the user's actor at
    /// least (it posts twice `max_user_backlog` when that is more); past it, the receiver
    /// lets events go and reads them back from history once the actor has caught up (a
    /// resync when history no longer holds them). Default 20,000: a burst that the actor
    /// takes a moment to fan out is delivered as it comes.
    pub receiver_ahead: usize,
    /// The most bytes of one user's events in one script call (a larger single event still
    /// goes, alone). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Script calls in flight at once (for different users). Default 64.
    pub max_in_flight: usize,
    /// How long a Redis command may take before it counts as failed. Default 2 s.
    pub command_timeout: Duration,
    /// How long connecting to Redis may take. Default 2 s.
    pub connect_timeout: Duration,
    /// The first and the longest delay between retries. Default 50 ms and 2 s.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// The lease's TTL. Default 5 s.
    pub lease_ttl: Duration,
    /// How often a node refreshes its lease. Default 1 s.
    pub lease_refresh: Duration,
    /// How often each node looks for nodes whose lease expired. Default 2 s.
    pub sweep_interval: Duration,
    /// How often the subscriber pings its connection, and how long a ping may take before
    /// the connection is dropped and made again. Default 1 s and 3 s.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

impl RedisConfig {
    /// The defaults, for the Redis at `url`.
    pub(crate) fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "agentwire".into(),
            node_id: None,
            history_max_events: 1_000,
            history_ttl: Duration::from_secs(300),
            history_max_read: 1_000,
            state_ttl: Duration::from_secs(24 * 3600),
            queue_capacity: 262_144,
            queue_capacity_bytes: 64 << 20,
            max_batch_events: 256,
            receiver_ahead: 20_000,
            max_batch_bytes: 1 << 20,
            max_in_flight: 64,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(5),
            lease_refresh: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(3),
        }
    }

    /// The documented bound from a node's death to its runs' `node_lost` errors.
    pub(crate) fn node_lost_bound(&self) -> Duration {
        (self.lease_ttl + self.sweep_interval) * 2 + self.lease_refresh
    }

    /// Refuses settings that contradict each other or cannot work.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        Keys::new(&self.prefix).map_err(ConfigError::Key)?;
        if let Some(id) = &self.node_id {
            validate_node_id(id).map_err(ConfigError::Key)?;
        }
        let checks: [(bool, &'static str); 9] = [
            (
                self.history_max_events >= 1,
                "history_max_events must be at least 1",
            ),
            (
                self.history_max_read >= 1,
                "history_max_read must be at least 1",
            ),
            (
                self.history_ttl >= Duration::from_millis(1) && self.state_ttl >= self.history_ttl,
                "history_ttl must be at least 1 ms and state_ttl at least history_ttl",
            ),
            (
                self.queue_capacity >= 1 && self.queue_capacity_bytes >= 1,
                "the publish queue needs room for at least one event",
            ),
            (
                self.max_batch_events >= 1 && self.max_batch_bytes >= 1 && self.max_in_flight >= 1,
                "batches need at least one event, one byte and one call in flight",
            ),
            (
                !self.command_timeout.is_zero() && !self.connect_timeout.is_zero(),
                "timeouts must be positive",
            ),
            (
                !self.retry_min.is_zero() && self.retry_max >= self.retry_min,
                "retry_min must be positive and at most retry_max",
            ),
            (
                !self.lease_refresh.is_zero()
                    && self.lease_ttl >= self.lease_refresh * 2
                    && !self.sweep_interval.is_zero(),
                "lease_ttl must be at least twice lease_refresh, and the intervals positive",
            ),
            (
                !self.ping_interval.is_zero() && !self.ping_timeout.is_zero(),
                "ping_interval and ping_timeout must be positive",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(ConfigError::Invalid(why)),
            None => Ok(()),
        }
    }
}

/// Settings the engine cannot start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigError {
    Key(KeyError),
    Invalid(&'static str),
    /// The URL is not a Redis URL.
    Url(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Key(error) => error.fmt(f),
            ConfigError::Invalid(why) => f.write_str(why),
            ConfigError::Url(why) => write!(f, "bad Redis URL: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_meet_the_documented_bound() {
        let config = RedisConfig::new("redis://127.0.0.1/");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.node_lost_bound(), Duration::from_secs(15));
    }

    #[test]
    fn contradictions_are_refused() {
        let base = RedisConfig::new("redis://127.0.0.1/");
        let bad = [
            RedisConfig {
                prefix: "a{b}".into(),
                ..base.clone()
            },
            RedisConfig {
                node_id: Some("a b".into()),
                ..base.clone()
            },
            RedisConfig {
                history_max_events: 0,
                ..base.clone()
            },
            RedisConfig {
                state_ttl: Duration::from_secs(1),
                ..base.clone()
            },
            RedisConfig {
                lease_ttl: Duration::from_secs(1),
                ..base.clone()
            },
            RedisConfig {
                retry_max: Duration::from_millis(1),
                ..base.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
