//! Which engine the tests' servers run on, so the same tests check both engines.
//!
//! `AGENTWIRE_TEST_ENGINE` chooses: unset (or `local`) for the in-process engine, `redis`
//! for the Redis engine, where every test server (and every runtime a test starts through
//! [`on_test_engine`]) gets a `redis-server` of its own on a free loopback port, killed with
//! the server. `scripts/test` runs the delivery, resume, isolation, supervision,
//! backpressure and drain suites a second time with `AGENTWIRE_TEST_ENGINE=redis`.
//!
//! Where the engines legitimately differ (a user's stream outlives the user's actor only in
//! Redis, for example), a test asks [`is_redis`] and says why in a comment.

#[path = "../../src/engine/redis/test_server.rs"]
mod test_server;

pub(crate) use test_server::TestRedis;

use agentwire::RuntimeBuilder;

/// The environment variable that picks the engine.
pub const ENGINE_VAR: &str = "AGENTWIRE_TEST_ENGINE";

/// The engines the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestEngine {
    /// The in-process engine (the default).
    Local,
    /// The Redis engine, each server on a `redis-server` of its own.
    Redis,
}

/// The engine chosen by [`ENGINE_VAR`]; panics on a value it does not know, so a typo
/// cannot quietly test the default engine twice.
pub fn test_engine() -> TestEngine {
    match std::env::var(ENGINE_VAR).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "local") => TestEngine::Local,
        Ok("redis") => TestEngine::Redis,
        other => panic!("{ENGINE_VAR} must be `local` or `redis`, not {other:?}"),
    }
}

/// Whether the tests run on the Redis engine.
pub fn is_redis() -> bool {
    test_engine() == TestEngine::Redis
}

/// The key prefix of the test servers' Redis (each has a Redis of its own).
pub const PREFIX: &str = "agentwire-test";

/// A `redis-server` of its own for a new runtime when the tests run on the Redis engine.
pub fn redis_for_runtime() -> Option<TestRedis> {
    is_redis().then(TestRedis::start)
}

/// `builder` on the test engine: unchanged for the in-process engine; for Redis, pointed at
/// a new `redis-server`, which the caller keeps alive as long as the runtime.
pub fn on_test_engine(builder: RuntimeBuilder) -> (RuntimeBuilder, Option<TestRedis>) {
    match redis_for_runtime() {
        None => (builder, None),
        Some(redis) => (builder.redis(redis.url()).redis_prefix(PREFIX), Some(redis)),
    }
}
