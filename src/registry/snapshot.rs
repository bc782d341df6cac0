//! The registry's view of the tree, copied out for reports: the debug routes, the metrics
//! and [`crate::Runtime::snapshot`].

use std::collections::BTreeMap;

use actix::{Handler, Message, MessageResult};
use serde::Serialize;

use super::Registry;
use crate::stats::StatsSnapshot;

/// How the tree names the node of an engine of one process.
const LOCAL_NODE: &str = "local";

/// Asks for a copy of the tree: every user and their sessions, with counters.
#[derive(Message)]
#[rtype(result = "RegistrySnapshot")]
pub(crate) struct Snapshot;

/// The supervision tree as the registry sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RegistrySnapshot {
    /// This node: its id among the nodes sharing a Redis (the Redis engine), or `local`
    /// (the in-process engine, where the process is the whole cluster).
    pub node: String,
    /// The engine that keeps the users' streams: `local` or `redis`.
    pub engine: &'static str,
    /// Users with an actor (connected, or within their resume window), by id.
    pub users: BTreeMap<String, UserSnapshot>,
    /// Events emitted for users who had no actor at the time (never connected, or past
    /// their resume window).
    pub dropped_for_absent_users: u64,
    /// Bytes held by all replay buffers.
    pub replay_bytes: usize,
    /// True once shutdown began.
    pub draining: bool,
    /// The registry's own counters (its mailbox backlog: connects, disconnects and events
    /// for users without an actor, waiting).
    pub registry: StatsSnapshot,
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
    /// Milliseconds since the last socket left, while the resume window runs.
    pub idle_ms: Option<u64>,
}

impl Handler<Snapshot> for Registry {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.stats();
        let users = self
            .users
            .iter()
            .map(|(id, member)| {
                let sessions = member
                    .sessions
                    .iter()
                    .map(|(sid, entry)| (sid.0, entry.stats.snapshot()))
                    .collect();
                let user = UserSnapshot {
                    stats: member.stats.snapshot(),
                    sessions,
                    idle_ms: member.idle_since.map(|t| t.elapsed().as_millis() as u64),
                };
                (id.to_string(), user)
            })
            .collect();
        MessageResult(RegistrySnapshot {
            node: self.engine.node_id().unwrap_or(LOCAL_NODE).to_owned(),
            engine: self.engine.kind(),
            users,
            dropped_for_absent_users: engine.dropped_for_absent_users,
            replay_bytes: engine.history_bytes as usize,
            draining: self.draining,
            registry: self.stats.snapshot(),
        })
    }
}
