//! The user directory: a read-mostly map from user id to that user's actor address.
//!
//! Emitters read it to reach a user's actor without queuing behind the registry's mailbox.
//! Only the registry writes it: [`new`] returns one [`DirectoryWriter`] (not `Clone`), which
//! the registry owns, and any number of [`DirectoryReader`]s. Readers post to an actor while
//! holding the read lock, so once the registry's `remove` returns, no further event can
//! reach that actor's mailbox.

use std::collections::HashMap;
use std::sync::Arc;

use actix::Addr;
use parking_lot::RwLock;

use crate::ids::UserId;
use crate::stats::ActorStats;
use crate::user::User;

/// A published user actor: its address, and its counters (the bus counts what it queues).
struct Entry {
    addr: Arc<Addr<User>>,
    stats: Arc<ActorStats>,
}

type Map = Arc<RwLock<HashMap<UserId, Entry>>>;

/// Read access, held by the bus.
#[derive(Clone)]
pub(crate) struct DirectoryReader(Map);

/// Write access, owned by the registry alone.
pub(crate) struct DirectoryWriter(Map);

/// Creates an empty directory: the single writer and a reader.
pub(crate) fn new() -> (DirectoryWriter, DirectoryReader) {
    let map: Map = Arc::default();
    (DirectoryWriter(map.clone()), DirectoryReader(map))
}

impl DirectoryReader {
    /// Posts `message` to the user's actor, or gives it back when the user has none.
    pub(crate) fn post<M>(&self, user: &UserId, message: M) -> Result<(), M>
    where
        M: actix::Message<Result = ()> + Send + 'static,
        User: actix::Handler<M>,
    {
        let map = self.0.read();
        match map.get(user) {
            Some(entry) if entry.addr.connected() => {
                entry.stats.queued(0);
                entry.addr.do_send(message);
                Ok(())
            }
            _ => Err(message),
        }
    }

    /// How many messages wait in the user actor's mailbox (0 when it has none).
    pub(crate) fn backlog(&self, user: &UserId) -> u64 {
        self.0
            .read()
            .get(user)
            .map_or(0, |entry| entry.stats.backlog().0)
    }
}

impl DirectoryWriter {
    pub(crate) fn insert(&mut self, user: UserId, addr: Arc<Addr<User>>, stats: Arc<ActorStats>) {
        self.0.write().insert(user, Entry { addr, stats });
    }

    pub(crate) fn remove(&mut self, user: &UserId) {
        self.0.write().remove(user);
    }
}
