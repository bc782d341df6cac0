//! A user's open sockets, as the registry records them.
//!
//! A user has at most `max_sockets_per_user` sockets (10 by default) and usually one, so a
//! small vector that holds the first one inline costs no allocation at all for most users
//! (a hash map's table would cost one per user), which matters at tens of thousands of idle
//! users.

use std::sync::Arc;

use actix::Addr;
use smallvec::SmallVec;

use crate::ids::SessionId;
use crate::session::Session;
use crate::stats::ActorStats;

/// The registry's record of one socket.
pub(super) struct SessionEntry {
    pub addr: Arc<Addr<Session>>,
    pub stats: Arc<ActorStats>,
}

/// One user's sockets, in the order they connected.
pub(super) struct Sockets(SmallVec<[(SessionId, SessionEntry); 1]>);

impl Sockets {
    pub(super) fn new() -> Self {
        Sockets(SmallVec::new())
    }

    pub(super) fn insert(&mut self, id: SessionId, entry: SessionEntry) {
        self.0.push((id, entry));
    }

    pub(super) fn remove(&mut self, id: &SessionId) -> Option<SessionEntry> {
        let at = self.0.iter().position(|(sid, _)| sid == id)?;
        Some(self.0.remove(at).1)
    }

    pub(super) fn get(&self, id: &SessionId) -> Option<&SessionEntry> {
        self.0.iter().find(|(sid, _)| sid == id).map(|(_, e)| e)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&SessionId, &SessionEntry)> {
        self.0.iter().map(|(id, entry)| (id, entry))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SessionEntry> {
        self.0.iter().map(|(_, entry)| entry)
    }
}
