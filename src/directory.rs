//! The user directory: a read-mostly map from user id to that user's actor address.
//!
//! Emitters read it to reach a user's actor without queuing behind the registry's mailbox.
//! Only the registry writes it: [`new`] returns one [`DirectoryWriter`] (not `Clone`), which
//! the registry owns, and any number of [`DirectoryReader`]s.

use std::collections::HashMap;
use std::sync::Arc;

use actix::Addr;
use parking_lot::RwLock;

use crate::ids::UserId;
use crate::user::User;

type Map = Arc<RwLock<HashMap<UserId, Addr<User>>>>;

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
    /// The user's actor, if the user currently has one.
    pub(crate) fn get(&self, user: &UserId) -> Option<Addr<User>> {
        self.0.read().get(user).cloned()
    }
}

impl DirectoryWriter {
    pub(crate) fn insert(&mut self, user: UserId, addr: Addr<User>) {
        self.0.write().insert(user, addr);
    }

    pub(crate) fn remove(&mut self, user: &UserId) {
        self.0.write().remove(user);
    }
}
