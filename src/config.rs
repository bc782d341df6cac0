//! Runtime configuration: every timing and limit agentwire enforces, in one place.
//!
//! A [`Config`] is handed to [`crate::Runtime::builder`]; each field has a documented default
//! (see `docs/architecture.md` and `docs/protocol.md`). Fields are public so an application can
//! start from `Config::default()` and change what it needs.

use std::time::Duration;

/// Settings for one [`crate::Runtime`].
///
/// ```
/// use std::time::Duration;
/// let config = agentwire::Config {
///     heartbeat_interval: Duration::from_secs(5),
///     client_timeout: Duration::from_secs(15),
///     ..agentwire::Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the server sends a WebSocket ping to each socket. Default 10 s.
    pub heartbeat_interval: Duration,
    /// A socket from which nothing (no frame, no pong) arrived for this long is closed with
    /// close code 4000 and leaves the registry. Default 30 s.
    pub client_timeout: Duration,
    /// The largest inbound WebSocket frame, in bytes; larger frames close the socket with
    /// 1009. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// How many client frames a session holds while it waits for its welcome frame (the
    /// registration round trip, normally microseconds). Past this the socket is closed with
    /// 1008. Default 16.
    pub max_frames_before_welcome: usize,
    /// Which browser origins may open sockets (checked at the upgrade; refused with 403).
    /// Default [`OriginPolicy::SameHost`].
    pub origins: OriginPolicy,
    /// Whether binary frames are accepted (as UTF-8 JSON, like text). Default false: a
    /// binary frame closes the socket with 1003.
    pub accept_binary: bool,
    /// Open sockets per user; the next one is closed with 4003 right after the upgrade.
    /// Default 10.
    pub max_sockets_per_user: usize,
    /// Open sockets in total; the next one is closed with 1013. Default 100,000.
    pub max_sessions: usize,
    /// Client messages per second per socket (token bucket refill rate). Default 20.
    pub inbound_rate: u32,
    /// Token bucket size: messages a socket may send at once. A message over the rate gets a
    /// `rate_limited` error; `inbound_burst` of them in a row close the socket with 4008.
    /// Default 40.
    pub inbound_burst: u32,
    /// Invalid client frames (bad JSON, unknown type, bad fields, bad UTF-8) tolerated within
    /// any minute; one more closes the socket with 1008. Default 20.
    pub max_invalid_frames: usize,
    /// Client requests (`start_agent`, `user_message`) a user may have running at once; the
    /// next gets a `too_many_runs` error. Default 8.
    pub max_runs_per_user: usize,
    /// Restart intensity: a user actor that crashes is restarted at most this many times
    /// within `restart_window`; one crash more escalates (its sockets are closed with 1011).
    /// Default 3.
    pub max_restarts: u32,
    /// See `max_restarts`. Default 60 s.
    pub restart_window: Duration,
    /// Where user actors run. Default [`UserPlacement::WithFirstSocket`].
    pub user_placement: UserPlacement,
    /// How many dedicated arbiter threads user actors are spread over with
    /// [`UserPlacement::Pool`] (with `WithFirstSocket` they are only the fallback for a
    /// socket whose thread has stopped). Default: one per core.
    pub user_arbiters: usize,
    /// How many recent events each user's replay buffer keeps. Default 1,000. With Redis,
    /// how many of the last events of a user's stream a resume may replay.
    pub replay_max_events: usize,
    /// How old a buffered event may get before it is dropped from the replay buffer.
    /// Default 5 min. With Redis, the oldest event a resume may replay, and how long after a
    /// user's last event their history is kept.
    pub replay_max_age: Duration,
    /// How long a user's actor (and, in process, its numbering and replay buffer) outlives
    /// the user's last socket, so a reconnect can resume. Default 2 min. With Redis the
    /// stream lives in Redis and outlives the actor: a resume after the window is still
    /// exact while its events are within the replay bounds.
    pub resume_window: Duration,
    /// The most user actors at once, connected or within their resume window. At the cap,
    /// the user idle the longest is expired early; if every user is connected, the new
    /// socket is closed with 1013. Default 100,000.
    pub max_users: usize,
    /// The most bytes all replay buffers together may hold. A push that crosses it makes the
    /// pushing user drop its own oldest buffered events until the total is under it again.
    /// Default 256 MiB. In process only: with Redis, history is in Redis, bounded per user
    /// by `replay_max_events` and `replay_max_age`.
    pub max_replay_bytes: usize,
    /// A socket with this many frames sent to it but not yet written (a client that stopped
    /// reading) gets no more live events and is closed with 4001 once it can be. Default 4,096.
    pub max_session_backlog_frames: u64,
    /// The same limit in bytes. Default 8 MiB.
    pub max_session_backlog_bytes: u64,
    /// How many of a user's events may wait on the way to the user's actor before
    /// [`crate::AgentRun::ready`] makes emitters wait: in process, in the actor's inbox
    /// (the actor takes them all at once and wakes the emitters); with Redis, in this
    /// node's queue for publishing. Default 64: an emitter runs at most this far ahead of
    /// the user's delivery, so under load events wait on the way to the socket instead of
    /// in a queue.
    pub max_user_backlog: u64,
    /// How long a new socket holds back live events waiting for the client's first frame,
    /// so that a `resume` sent right after the welcome is answered before any live event.
    /// Zero disables holding (then only `?epoch=&last_seq=` at connect, or a `resume`
    /// before any live event reached the socket, can be exact). Default 1 s.
    pub resume_hold: Duration,
    /// How many users' sockets [`crate::Runtime::shutdown`] closes per 10 ms tick.
    /// Default 200.
    pub drain_batch_users: usize,
    /// The path of the WebSocket endpoint mounted by [`crate::routes`]. Default `/ws`.
    pub ws_path: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_secs(10),
            client_timeout: Duration::from_secs(30),
            max_frame_bytes: 64 * 1024,
            max_frames_before_welcome: 16,
            origins: OriginPolicy::SameHost,
            accept_binary: false,
            max_sockets_per_user: 10,
            max_sessions: 100_000,
            inbound_rate: 20,
            inbound_burst: 40,
            max_invalid_frames: 20,
            max_runs_per_user: 8,
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
            user_placement: UserPlacement::default(),
            user_arbiters: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            replay_max_events: 1_000,
            replay_max_age: Duration::from_secs(5 * 60),
            resume_window: Duration::from_secs(2 * 60),
            max_users: 100_000,
            max_replay_bytes: 256 * 1024 * 1024,
            max_session_backlog_frames: 4_096,
            max_session_backlog_bytes: 8 * 1024 * 1024,
            max_user_backlog: 64,
            resume_hold: Duration::from_secs(1),
            drain_batch_users: 200,
            ws_path: "/ws".to_owned(),
        }
    }
}

impl Config {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::new(
                "heartbeat_interval must be greater than zero",
            ));
        }
        if self.client_timeout <= self.heartbeat_interval {
            return Err(ConfigError::new(
                "client_timeout must be longer than heartbeat_interval",
            ));
        }
        if self.max_frame_bytes < 128 {
            return Err(ConfigError::new("max_frame_bytes must be at least 128"));
        }
        if self.user_arbiters == 0 {
            return Err(ConfigError::new("user_arbiters must be at least 1"));
        }
        if self.max_sockets_per_user == 0 || self.max_sessions == 0 {
            return Err(ConfigError::new("socket limits must be at least 1"));
        }
        if self.inbound_rate == 0 || self.inbound_burst == 0 {
            return Err(ConfigError::new(
                "inbound_rate and inbound_burst must be at least 1",
            ));
        }
        if self.max_runs_per_user == 0 {
            return Err(ConfigError::new("max_runs_per_user must be at least 1"));
        }
        if self.max_users == 0 {
            return Err(ConfigError::new("max_users must be at least 1"));
        }
        if self.max_session_backlog_frames == 0 || self.max_session_backlog_bytes == 0 {
            return Err(ConfigError::new(
                "session backlog limits must be greater than zero",
            ));
        }
        if self.max_user_backlog == 0 {
            return Err(ConfigError::new("max_user_backlog must be at least 1"));
        }
        if self.drain_batch_users == 0 {
            return Err(ConfigError::new("drain_batch_users must be at least 1"));
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::new("ws_path must start with '/'"));
        }
        Ok(())
    }
}

/// Which `Origin` headers may open a socket.
///
/// Browsers always send `Origin` on a WebSocket upgrade and let any page open a socket to any
/// host, with the user's cookies; checking the origin stops a hostile page from using a
/// logged-in user's browser (cross-site WebSocket hijacking). Requests without `Origin`
/// (non-browser clients) are allowed under every policy: they must still present a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// The origin's host (and port) must equal the request's `Host` header: the page was
    /// served by this server. The default.
    SameHost,
    /// Only these exact origins, e.g. `https://app.example.com`.
    AllowList(Vec<String>),
    /// Any origin (for development, or when a proxy checks origins).
    Any,
}

/// Where user actors run.
///
/// Every user actor is its own task with its own crash guard wherever it runs; placement
/// decides only which thread it shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserPlacement {
    /// On the thread of the socket that created the user's actor: the HTTP worker that
    /// accepted it, where the handler tasks of that socket's requests run too. A
    /// single-socket user's events then never cross a thread between handler, user actor and
    /// socket. A user's fan-out shares its worker with that worker's sockets. The default.
    #[default]
    WithFirstSocket,
    /// Round-robin over `user_arbiters` dedicated threads: fan-out never shares a thread with
    /// socket I/O or handler code, at the cost of two cross-thread hops per event (handler to
    /// user actor, user actor to socket).
    Pool,
}

/// A [`Config`] whose settings contradict each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(std::borrow::Cow<'static, str>);

impl ConfigError {
    pub(crate) fn new(message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        ConfigError(message.into())
    }

    /// What is wrong, without the `invalid agentwire config:` that `Display` puts first.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid agentwire config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_contradictions_are_refused() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            client_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
