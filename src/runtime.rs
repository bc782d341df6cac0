//! The [`Runtime`]: the cloneable handle that is the only way into agentwire.
//!
//! Starting a runtime starts its registry (on its own arbiter) and the pool of arbiters its
//! user actors run on. The runtime is what an actix-web app mounts with [`crate::routes`] and
//! what application code emits through ([`Runtime::user`]), from any thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter};

use crate::auth::Authenticator;
use crate::bus::{LocalBus, SharedBus};
use crate::config::{Config, ConfigError};
use crate::directory;
use crate::emit::UserHandle;
use crate::handler::{AgentHandler, DynHandler};
use crate::ids::{SessionId, UserId};
use crate::registry::{Registry, RegistrySnapshot, Snapshot};

/// What every actor of one runtime shares. Crate-private: outside code holds a [`Runtime`].
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub registry: Addr<Registry>,
    pub bus: SharedBus,
    pub handler: Option<Arc<dyn DynHandler>>,
    pub authenticator: Arc<dyn Authenticator>,
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
        }
    }

    /// A handle bound to one user, for emitting runs to that user from anywhere.
    pub fn user(&self, user_id: UserId) -> UserHandle {
        UserHandle::new(user_id, self.shared.bus.clone())
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

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Configures and starts a [`Runtime`].
pub struct RuntimeBuilder {
    config: Config,
    authenticator: Arc<dyn Authenticator>,
    handler: Option<Arc<dyn DynHandler>>,
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

    /// Starts the registry and the user arbiters. Must be called inside a running actix
    /// system (for example from `#[actix_web::main]`).
    pub fn start(self) -> Result<Runtime, ConfigError> {
        self.config.validate()?;
        let config = Arc::new(self.config);
        let user_arbiters = (0..config.user_arbiters)
            .map(|_| Arbiter::new().handle())
            .collect();
        let (writer, reader) = directory::new();
        let registry_config = config.clone();
        let registry = Registry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Registry::new(registry_config, writer, user_arbiters)
        });
        let bus: SharedBus = Arc::new(LocalBus::new(reader, registry.clone()));
        Ok(Runtime {
            shared: Arc::new(Shared {
                config,
                registry,
                bus,
                handler: self.handler,
                authenticator: self.authenticator,
                next_session: AtomicU64::new(1),
            }),
        })
    }
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
