//! The node's command connection: one multiplexed connection to Redis shared by every task
//! of the engine (the publisher's concurrent script calls are pipelined on it), through
//! redis-rs's `ConnectionManager`, which reconnects when the connection drops.
//!
//! Every command has a timeout. The manager does not reconnect on timeouts (the connection
//! may only be slow), so a connection on which several commands in a row timed out is
//! replaced: that is how a half-open connection (a peer that vanished without a reset) is
//! left behind. A command that timed out may still run later; the publish script makes a
//! retried batch apply once (see `script.rs`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, Pipeline, RedisResult};

/// Commands that time out in a row before the connection is replaced.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// A cloneable handle on the node's command connection.
#[derive(Clone)]
pub(crate) struct Commands {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ConnectionManagerConfig,
    manager: Mutex<ConnectionManager>,
    timeouts_in_a_row: AtomicU32,
}

impl Commands {
    /// A handle that connects on first use. Must be called within a tokio runtime.
    pub(crate) fn new(
        client: Client,
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(command_timeout))
            .set_connection_timeout(Some(connect_timeout))
            // The engine's own loops retry with their own backoff.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Commands {
            inner: Arc::new(Inner {
                client,
                config,
                manager: Mutex::new(manager),
                timeouts_in_a_row: AtomicU32::new(0),
            }),
        })
    }

    /// The client, for connections of other kinds (the subscriber's).
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    fn manager(&self) -> ConnectionManager {
        self.inner.manager.lock().clone()
    }

    /// Counts timeouts in a row, and replaces the connection after too many.
    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(error) if error.is_timeout() => {
                let count = self.inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if count >= TIMEOUTS_BEFORE_RECONNECT {
                    self.inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    match ConnectionManager::new_lazy_with_config(
                        self.inner.client.clone(),
                        self.inner.config.clone(),
                    ) {
                        Ok(fresh) => {
                            log::warn!("redis: {count} commands in a row timed out; reconnecting");
                            *self.inner.manager.lock() = fresh;
                        }
                        Err(error) => log::warn!("redis: cannot make a new connection: {error}"),
                    }
                }
            }
            _ => self.inner.timeouts_in_a_row.store(0, Ordering::Relaxed),
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let result = cmd.query_async(&mut self.manager()).await;
        self.observe(&result);
        result
    }

    pub(crate) async fn pipeline<T: FromRedisValue>(&self, pipeline: &Pipeline) -> RedisResult<T> {
        let result = pipeline.query_async(&mut self.manager()).await;
        self.observe(&result);
        result
    }

    /// Loads `script` into Redis's script cache (after a NOSCRIPT: Redis restarted).
    pub(crate) async fn load_script(&self, script: &redis::Script) -> RedisResult<()> {
        let result = script
            .prepare_invoke()
            .load_async(&mut self.manager())
            .await;
        self.observe(&result);
        result.map(drop)
    }
}
