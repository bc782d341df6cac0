//! The registry actor: the single source of truth for who is connected.
//!
//! Exactly one exists per [`crate::Runtime`], created by `Runtime::start` (its constructor is
//! crate-private). It is the only code that changes membership: it creates a user's actor when
//! the user's first socket connects, attaches and detaches sessions, keeps a user's actor for
//! the resume window after the last socket leaves and then retires it, enforces the global
//! user cap, and drains every socket on shutdown. It alone subscribes a user's actor to the
//! user's stream in the engine, and unsubscribes it before the actor goes. Where each user's
//! actor runs is `placement`'s choice: by default on the thread of the user's first socket.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Context, Handler, Message};

use crate::close_code;
use crate::config::{Config, UserPlacement};
use crate::engine::{DeliveryTarget, Inbox, SharedEngine};
use crate::ids::{SessionId, UserId};
use crate::metrics::Metrics;
use crate::session::{CloseSession, Session};
use crate::stats::{ActorState, ActorStats};
use crate::supervision::{RestartHistory, SupervisionLog};
use crate::user::{Attach, Detach, Drain, Retire, User};

mod idle;
mod placement;
mod snapshot;
mod sockets;
mod supervise;

use idle::IdleUsers;
use placement::Placement;
use sockets::{SessionEntry, Sockets};

pub(crate) use snapshot::Snapshot;
pub use snapshot::{RegistrySnapshot, UserSnapshot};
pub use supervise::Fault;
pub(crate) use supervise::{InjectFault, UserDied};

/// The bounded part of a user actor's mailbox (actix's default; `do_send` ignores it).
const MAILBOX_CAPACITY: usize = 16;

/// How often a drain closes the next batch of users' sockets.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// The registry's record of one user.
struct Member {
    addr: Arc<Addr<User>>,
    stats: Arc<ActorStats>,
    sessions: Sockets,
    /// The arbiter the user's actor runs on (a restart goes back there).
    home: ArbiterHandle,
    /// Which spawn of this user's actor is current (unique for the registry's lifetime), so
    /// a crash report from an older actor is ignored.
    generation: u64,
    /// Recent crashes, for the restart-intensity limit.
    restarts: RestartHistory,
    /// The user's client requests running in handler tasks; kept across restarts, since
    /// those tasks outlive a crashed actor.
    running_requests: Arc<AtomicUsize>,
    /// Since when the user has had no socket (its resume window is running); the same
    /// instant keys it in `Registry::idle`.
    idle_since: Option<Instant>,
}

/// A freshly started user actor.
struct Spawned {
    addr: Arc<Addr<User>>,
    stats: Arc<ActorStats>,
    generation: u64,
    home: ArbiterHandle,
}

pub(crate) struct Registry {
    config: Arc<Config>,
    /// Counters of this actor's mailbox: senders count Connect and Disconnect as queued;
    /// the handlers count them handled.
    stats: Arc<ActorStats>,
    metrics: Arc<Metrics>,
    supervision: Arc<SupervisionLog>,
    engine: SharedEngine,
    placement: Placement,
    /// Boxed: at tens of thousands of users, the table's empty slots then cost a pointer
    /// each instead of a whole record.
    users: HashMap<UserId, Box<Member>>,
    /// Open sockets over all users.
    sessions: usize,
    draining: bool,
    /// The users without a socket, and the one timer for their resume windows.
    idle: IdleUsers,
    /// Source of unique actor generations.
    user_generations: u64,
}

impl Registry {
    pub(crate) fn new(
        config: Arc<Config>,
        observers: (Arc<Metrics>, Arc<SupervisionLog>),
        stats: Arc<ActorStats>,
        engine: SharedEngine,
        placement: (UserPlacement, Vec<ArbiterHandle>),
    ) -> Self {
        let (metrics, supervision) = observers;
        Registry {
            config,
            stats,
            metrics,
            supervision,
            engine,
            placement: Placement::new(placement.0, placement.1),
            users: HashMap::new(),
            sessions: 0,
            draining: false,
            idle: IdleUsers::default(),
            user_generations: 0,
        }
    }

    /// Starts an actor for `user` on `home` (or a fallback, if that thread has stopped) and
    /// subscribes it to the user's stream.
    fn spawn_user(
        &mut self,
        user: &UserId,
        home: ArbiterHandle,
        running_requests: Arc<AtomicUsize>,
        ctx: &mut Context<Self>,
    ) -> Spawned {
        self.user_generations += 1;
        let generation = self.user_generations;
        let stats = Arc::new(ActorStats::default());
        stats.set_state(ActorState::Live);
        let inbox = Arc::new(Inbox::with_room());
        let actor = User::new(
            user.clone(),
            &self.config,
            self.engine.clone(),
            inbox.clone(),
            stats.clone(),
            (self.metrics.clone(), self.supervision.clone()),
            running_requests,
        );
        let (tx, rx) = actix::dev::channel::channel(MAILBOX_CAPACITY);
        let addr = Arc::new(Addr::new(tx));
        let died = UserDied {
            user: user.clone(),
            generation,
            cause: supervise::PANICKED,
        };
        let home = self.placement.run_supervised(home, actor, rx, ctx, died);
        self.engine.subscribe(
            user,
            DeliveryTarget {
                inbox,
                stats: stats.clone(),
            },
        );
        log::debug!("registry: started user:{user} (generation {generation})");
        Spawned {
            addr,
            stats,
            generation,
            home,
        }
    }

    /// Removes a user's actor: unsubscribed first, so nothing reaches it after it is told
    /// to retire.
    fn retire(&mut self, user: &UserId, why: &str) {
        self.not_idle(user);
        self.engine.unsubscribe(user);
        if let Some(member) = self.users.remove(user) {
            member.addr.do_send(Retire);
            log::debug!("registry: retired user:{user} ({why})");
        }
    }

    /// At the user cap: expires the user idle the longest. False when every user has a
    /// socket.
    fn make_room(&mut self) -> bool {
        match self.idle.oldest().cloned() {
            Some(user) => {
                self.retire(&user, "user cap reached; idle the longest");
                true
            }
            None => false,
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        log::info!("registry: started; {}", self.placement.describe());
    }
}

/// A session's socket is open: attach it to its user (creating the user's actor if needed).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Connect {
    pub session_id: SessionId,
    pub user: UserId,
    pub addr: Arc<Addr<Session>>,
    pub stats: Arc<ActorStats>,
    pub resume: Option<(String, u64)>,
    /// The arbiter the session runs on (None outside an actix arbiter).
    pub home: Option<ArbiterHandle>,
}

impl Registry {
    /// Why a new socket may not join, if it may not: the close code and a reason for the
    /// log. At the user cap this expires the longest-idle user to make room.
    fn refusal(&mut self, msg: &Connect) -> Option<(u16, String)> {
        if self.draining {
            return Some((close_code::SERVICE_RESTART, "draining".to_owned()));
        }
        if self.sessions >= self.config.max_sessions {
            let why = format!("{} sockets open (max_sessions)", self.sessions);
            return Some((close_code::TRY_AGAIN_LATER, why));
        }
        let user_sockets = self.users.get(&msg.user).map_or(0, |m| m.sessions.len());
        if user_sockets >= self.config.max_sockets_per_user {
            let why = format!("the user already has {user_sockets} sockets");
            return Some((close_code::TOO_MANY_SOCKETS, why));
        }
        let new_user = !self.users.contains_key(&msg.user);
        if new_user && self.users.len() >= self.config.max_users && !self.make_room() {
            let why = format!("{} users, all connected (max_users)", self.users.len());
            return Some((close_code::TRY_AGAIN_LATER, why));
        }
        None
    }
}

impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Connect, ctx: &mut Self::Context) {
        self.stats.handled(0);
        self.stats.active_at(std::time::SystemTime::now());
        if let Some((code, why)) = self.refusal(&msg) {
            log::info!(
                "registry: refusing session:{} of user:{} with {code}: {why}",
                msg.session_id,
                msg.user
            );
            msg.addr.do_send(CloseSession(code));
            return;
        }
        if !self.users.contains_key(&msg.user) {
            let running_requests = Arc::new(AtomicUsize::new(0));
            let home = self.placement.choose(msg.home.as_ref());
            let spawned = self.spawn_user(&msg.user, home, running_requests.clone(), ctx);
            let member = Member {
                addr: spawned.addr,
                stats: spawned.stats,
                home: spawned.home,
                sessions: Sockets::new(),
                generation: spawned.generation,
                restarts: RestartHistory::default(),
                running_requests,
                idle_since: None,
            };
            self.users.insert(msg.user.clone(), Box::new(member));
        }
        self.not_idle(&msg.user);
        let Some(member) = self.users.get_mut(&msg.user) else {
            return;
        };
        member.stats.set_state(ActorState::Live);
        member.sessions.insert(
            msg.session_id,
            SessionEntry {
                addr: msg.addr.clone(),
                stats: msg.stats.clone(),
            },
        );
        self.sessions += 1;
        self.metrics.connected();
        member.addr.do_send(Attach {
            user_addr: member.addr.clone(),
            session_id: msg.session_id,
            addr: msg.addr,
            stats: msg.stats,
            resume: msg.resume,
            after_restart: false,
        });
        log::debug!(
            "registry: session:{} joined user:{} ({} socket(s))",
            msg.session_id,
            msg.user,
            member.sessions.len()
        );
    }
}

/// A session's socket closed: detach it; with the user's last socket, start the resume
/// window, after which the user's actor is retired.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    pub session_id: SessionId,
    pub user: UserId,
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        self.stats.handled(0);
        self.stats.active_at(std::time::SystemTime::now());
        let Some(member) = self.users.get_mut(&msg.user) else {
            return;
        };
        if member.sessions.remove(&msg.session_id).is_none() {
            return;
        }
        self.sessions -= 1;
        member.addr.do_send(Detach {
            session_id: msg.session_id,
        });
        log::debug!(
            "registry: session:{} left user:{} ({} socket(s) left)",
            msg.session_id,
            msg.user,
            member.sessions.len()
        );
        if !member.sessions.is_empty() {
            return;
        }
        if self.config.resume_window.is_zero() || self.draining {
            self.retire(&msg.user, "last socket left");
            return;
        }
        self.went_idle(&msg.user, ctx);
    }
}

/// Shutdown: refuse new sockets and close every open one with 1012, a batch of users per
/// tick, each after what was already queued to it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct DrainAll;

impl Handler<DrainAll> for Registry {
    type Result = ();

    fn handle(&mut self, _: DrainAll, ctx: &mut Self::Context) {
        if self.draining {
            return;
        }
        self.draining = true;
        let pending: Vec<Arc<Addr<User>>> = self
            .users
            .values()
            .filter(|m| !m.sessions.is_empty())
            .map(|m| m.addr.clone())
            .collect();
        log::info!("registry: draining {} user(s)", pending.len());
        drain_batches(pending, self.config.drain_batch_users, ctx);
    }
}

/// Drains one batch of users now and schedules the rest, a batch per tick.
fn drain_batches(mut pending: Vec<Arc<Addr<User>>>, batch: usize, ctx: &mut Context<Registry>) {
    let cut = pending.len().saturating_sub(batch);
    for user in pending.drain(cut..) {
        user.do_send(Drain);
    }
    if !pending.is_empty() {
        ctx.run_later(DRAIN_TICK, move |_, ctx| drain_batches(pending, batch, ctx));
    }
}
