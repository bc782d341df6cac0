//! The registry actor: the single source of truth for who is connected.
//!
//! Exactly one exists per [`crate::Runtime`], created by `Runtime::start` (its constructor is
//! crate-private). It is the only code that changes membership: it creates a user's actor when
//! the user's first socket connects, attaches and detaches sessions, retires the user's actor
//! when the last socket leaves, and is the only writer of the directory that emitters read.
//! User actors are spread round-robin over a small pool of arbiters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{Actor, Addr, ArbiterHandle, Context, Handler, Message, MessageResult};
use serde::Serialize;

use crate::bus::{Handoff, Published};
use crate::config::Config;
use crate::directory::DirectoryWriter;
use crate::ids::{SessionId, UserId};
use crate::session::Session;
use crate::stats::{ActorStats, StatsSnapshot};
use crate::user::{Attach, Detach, Retire, User};

/// The registry's record of one user.
struct Member {
    addr: Addr<User>,
    stats: Arc<ActorStats>,
    sessions: HashMap<SessionId, Arc<ActorStats>>,
}

pub(crate) struct Registry {
    config: Arc<Config>,
    directory: DirectoryWriter,
    user_arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    users: HashMap<UserId, Member>,
    /// Events for users without an actor, dropped (counted) until resume windows exist.
    dropped_for_absent_users: u64,
}

impl Registry {
    pub(crate) fn new(
        config: Arc<Config>,
        directory: DirectoryWriter,
        user_arbiters: Vec<ArbiterHandle>,
    ) -> Self {
        Registry {
            config,
            directory,
            user_arbiters,
            next_arbiter: 0,
            users: HashMap::new(),
            dropped_for_absent_users: 0,
        }
    }

    fn spawn_user(&mut self, user: &UserId) -> Member {
        let arbiter = &self.user_arbiters[self.next_arbiter % self.user_arbiters.len()];
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        let stats = Arc::new(ActorStats::default());
        let (id, config, user_stats) = (user.clone(), self.config.clone(), stats.clone());
        let addr = User::start_in_arbiter(arbiter, move |_| User::new(id, &config, user_stats));
        log::debug!("registry: started user:{user}");
        Member {
            addr,
            stats,
            sessions: HashMap::new(),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        log::info!(
            "registry: started with {} user arbiter(s)",
            self.user_arbiters.len()
        );
    }
}

/// A session's socket is open: attach it to its user (creating the user's actor if needed).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Connect {
    pub session_id: SessionId,
    pub user: UserId,
    pub addr: Addr<Session>,
    pub stats: Arc<ActorStats>,
}

impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) {
        if !self.users.contains_key(&msg.user) {
            let member = self.spawn_user(&msg.user);
            self.directory.insert(msg.user.clone(), member.addr.clone());
            self.users.insert(msg.user.clone(), member);
        }
        let Some(member) = self.users.get_mut(&msg.user) else {
            return;
        };
        member.sessions.insert(msg.session_id, msg.stats.clone());
        member.addr.do_send(Attach {
            session_id: msg.session_id,
            addr: msg.addr,
            stats: msg.stats,
        });
        log::debug!(
            "registry: session:{} joined user:{} ({} socket(s))",
            msg.session_id,
            msg.user,
            member.sessions.len()
        );
    }
}

/// A session's socket closed: detach it, and retire the user's actor with its last socket.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    pub session_id: SessionId,
    pub user: UserId,
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        let Some(member) = self.users.get_mut(&msg.user) else {
            return;
        };
        if member.sessions.remove(&msg.session_id).is_none() {
            return;
        }
        member.addr.do_send(Detach {
            session_id: msg.session_id,
        });
        log::debug!(
            "registry: session:{} left user:{} ({} socket(s) left)",
            msg.session_id,
            msg.user,
            member.sessions.len()
        );
        if member.sessions.is_empty() {
            // Unpublish first, so no emitter finds the actor after it is told to retire.
            self.directory.remove(&msg.user);
            if let Some(member) = self.users.remove(&msg.user) {
                member.addr.do_send(Retire);
            }
            log::debug!("registry: retired user:{}", msg.user);
        }
    }
}

/// An event for a user who has no actor in the directory.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PublishToAbsent {
    pub user: UserId,
    pub event: Published,
    /// Where the registry reports what it did, so the emitter can go direct again.
    pub handoff: Arc<Handoff>,
}

impl Handler<PublishToAbsent> for Registry {
    type Result = ();

    fn handle(&mut self, msg: PublishToAbsent, _: &mut Self::Context) {
        match self.users.get(&msg.user) {
            // The actor exists (the emitter raced its creation): deliver in order.
            Some(member) => {
                member.addr.do_send(msg.event);
                msg.handoff.record(Some(&member.addr));
            }
            None => {
                msg.handoff.record(None);
                self.dropped_for_absent_users += 1;
                log::debug!(
                    "registry: user:{} has no socket; dropped {} for run {}",
                    msg.user,
                    msg.event.event.wire_type(),
                    msg.event.meta.run_id
                );
            }
        }
    }
}

/// Asks for a copy of the tree: every user and their sessions, with counters.
#[derive(Message)]
#[rtype(result = "RegistrySnapshot")]
pub(crate) struct Snapshot;

/// The supervision tree as the registry sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RegistrySnapshot {
    /// Connected users by id.
    pub users: BTreeMap<String, UserSnapshot>,
    /// Events emitted for users who had no socket (and so no actor) at the time.
    pub dropped_for_absent_users: u64,
}

impl RegistrySnapshot {
    /// How many sockets are open, over all users.
    pub fn session_count(&self) -> usize {
        self.users.values().map(|u| u.sessions.len()).sum()
    }
}

/// One user's actor and its sessions.
#[derive(Debug, Clone, Serialize)]
pub struct UserSnapshot {
    /// The user actor's counters.
    pub stats: StatsSnapshot,
    /// Session id → that session's counters.
    pub sessions: BTreeMap<u64, StatsSnapshot>,
}

impl Handler<Snapshot> for Registry {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        let users = self
            .users
            .iter()
            .map(|(id, member)| {
                let sessions = member
                    .sessions
                    .iter()
                    .map(|(sid, stats)| (sid.0, stats.snapshot()))
                    .collect();
                let user = UserSnapshot {
                    stats: member.stats.snapshot(),
                    sessions,
                };
                (id.to_string(), user)
            })
            .collect();
        MessageResult(RegistrySnapshot {
            users,
            dropped_for_absent_users: self.dropped_for_absent_users,
        })
    }
}
