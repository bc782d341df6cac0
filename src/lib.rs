//! # agentwire
//!
//! An actor-based WebSocket connection runtime for AI-agent backends, on actix. An actix-web
//! app mounts it in a few lines; browsers connect to `/ws`, and the app streams agent events
//! (`agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`,
//! `agent_error`) to the users who asked, in order, on every one of their tabs.
//!
//! ## The map of the crate
//!
//! The supervision tree, from the top:
//!
//! - [`Runtime`] (`runtime`): the cloneable handle, and the only way in. Starting one starts
//!   exactly one **registry** (`registry`), the single source of truth for who is connected,
//!   and the only code that subscribes users' actors to their streams in the engine.
//! - One **user actor** per connected user (`user`): the isolation boundary. It receives the
//!   user's stream from the engine and fans the shared bytes out to the user's sockets
//!   (cutting off one that stopped reading), and answers their resumes from the engine's
//!   history.
//! - One **session actor** per socket (`session`), the only module that touches
//!   actix-web-actors: it decodes client frames and writes what its user's actor queues in
//!   the session's outbox (one ordered queue per session, drained a burst per wakeup). A
//!   session can also run over in-process streams ([`InMemorySocket`], from
//!   [`Runtime::connect_in_memory`]) for tests and benchmarks without a network.
//!
//! Around the tree:
//!
//! - `burst_queue`: the queue on each hop of the delivery path (engine to user actor, the
//!   actor's inbox; user actor to session, the session's outbox), drained a whole burst per
//!   wakeup.
//! - [`event`]: the six agent events as types, and the JSON envelope they are encoded into;
//!   `envelope`: the user actor's encoder for it, which escapes a run's fixed fields once.
//! - [`inbound`] and [`outbound`]: the client's frames and the server's control frames;
//!   `inbound_gate`: the pure state machine every client frame passes first (fragments,
//!   size, binary policy, UTF-8, rate limit, invalid-frame threshold), fuzzed directly.
//! - [`close_code`]: the WebSocket close codes, one per kind of failure.
//! - `emit`: [`UserHandle`], [`AgentRun`] and [`ToolCall`], the scoped handles that are the
//!   only way to emit.
//! - `engine`: the seam every emitted event passes through, and the keeper of each user's
//!   stream: it numbers events (`seq` in an `epoch`), encodes each once, keeps the history a
//!   resume reads, stops runs, and hands the stream to the user's actor. `engine::local` is
//!   the in-process engine (the default), with its replay buffers (`engine::replay`) and the
//!   byte budget they share; `engine::redis` (feature `redis`) is the engine for several
//!   nodes on one Redis: the publish script, the batching publisher, history, the
//!   subscriber, node leases and the sweeper that ends a dead node's runs.
//! - `handler`: the [`AgentHandler`] trait the application implements for inbound requests.
//! - `auth` and `jwt`: the [`Authenticator`] trait and the shipped HS256 [`JwtAuthenticator`].
//! - `routes`: [`routes`], which mounts the endpoint in an actix-web app; `debug`:
//!   [`debug_routes`], the admin-only operator routes: the live supervision tree (JSON, DOT,
//!   text, a web page), the supervision log, fault injection and `/metrics` (off unless
//!   mounted).
//! - [`supervision`]: the restart policy for user actors and the bounded supervision log;
//!   `metrics`: the Prometheus metrics.
//! - [`Config`] (`config`): every timing and limit; `stats`: per-actor counters; `ids`:
//!   [`UserId`] (the isolation key), session ids, and the random run and thread ids.
//! - `inbound_fuzz` (tests only): property-based fuzzing of the decoder, and of the gate
//!   against `inbound_gate_model` (tests only), a model of its documented rules;
//!   `auth_fuzz` (tests only): of the JWT authenticator, with token text and signed tokens
//!   carrying any claim values.
//!
//! The `agentwire` binary (`src/bin/agentwire/`) adds the demo server, `agentwire tree` and
//! `agentwire bench`; `benches/baseline/` is the actor-free server the benchmarks compare
//! against. Both need the `cli` feature (on by default); the library needs no feature, so
//! an application depends on it with `default-features = false`.
//!
//! ## Embedding
//!
//! ```no_run
//! use actix_web::{web, App, HttpServer, Responder};
//! use agentwire::{AgentContext, AgentHandler, JwtAuthenticator, Runtime, StartAgent, UserId};
//!
//! struct Assistant;
//!
//! impl AgentHandler for Assistant {
//!     async fn start_agent(&self, ctx: AgentContext, request: StartAgent) {
//!         let run = ctx.start_run("assistant");
//!         run.thinking("Looking that up");
//!         let search = run.tool("web_search", serde_json::json!({ "q": request.user_request }));
//!         search.complete(serde_json::json!(["result"]));
//!         run.complete("Here is what I found.");
//!     }
//! }
//!
//! // Any handler of the app can emit to a user through the shared runtime.
//! async fn notify(runtime: web::Data<Runtime>) -> impl Responder {
//!     let run = runtime.user(UserId::new("alice").unwrap()).start_run("inbox", "mailer");
//!     run.complete("You have mail.");
//!     "sent"
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let runtime = Runtime::builder(JwtAuthenticator::hs256(b"a long random secret"))
//!         .handler(Assistant)
//!         .start()
//!         .expect("valid config");
//!     HttpServer::new(move || {
//!         App::new()
//!             .configure(agentwire::routes(runtime.clone()))
//!             .route("/notify", web::post().to(notify))
//!     })
//!     // Events are small frames sent as they happen: don't let Nagle hold them back.
//!     .tcp_nodelay(true)
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! }
//! ```

#![warn(missing_docs)]

mod auth;
#[cfg(test)]
mod auth_fuzz;
mod burst_queue;
pub mod close_code;
mod config;
mod debug;
mod emit;
mod engine;
mod envelope;
pub mod event;
mod handler;
mod ids;
pub mod inbound;
#[cfg(test)]
mod inbound_fuzz;
mod inbound_gate;
#[cfg(test)]
mod inbound_gate_model;
mod jwt;
mod metrics;
pub mod outbound;
mod registry;
mod routes;
mod runtime;
mod session;
mod stats;
pub mod supervision;
mod user;

pub use auth::{
    extract_token, AuthError, Authenticator, Identity, PresentedToken, SUBPROTOCOL_PREFIX,
};
pub use config::{Config, ConfigError, OriginPolicy, UserPlacement};
pub use debug::{debug_routes, Totals, TreeNode};
pub use emit::{AgentRun, ToolCall, UserHandle};
pub use handler::{AgentContext, AgentHandler};
pub use ids::{InvalidUserId, SessionId, UserId, MAX_USER_ID_BYTES};
pub use inbound::{StartAgent, UserMessage};
pub use jwt::{JwtAuthenticator, DEFAULT_LEEWAY_SECS};
pub use registry::{Fault, RegistrySnapshot, UserSnapshot};
pub use routes::routes;
pub use runtime::{FaultError, Runtime, RuntimeBuilder, RuntimeGone, ShutdownReport};
pub use session::InMemorySocket;
pub use stats::{ActorState, ActorStats, StatsSnapshot, StreamPosition};

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
