//! Where user actors run, and how each one is run supervised.
//!
//! By default ([`UserPlacement::WithFirstSocket`]) a user's actor runs on the thread of the
//! socket that created it: the HTTP worker that accepted the socket, which is also where the
//! application's handler tasks for that socket run. For the common single-socket user an
//! event then goes from handler to user actor to socket without crossing a thread, so
//! without a cross-thread wakeup. [`UserPlacement::Pool`] spreads user actors round-robin
//! over dedicated arbiters instead. A restarted actor goes back to where it ran; a thread
//! that has stopped (or a socket that runs outside any arbiter) falls back to the pool.
//!
//! Every actor runs inside a `catch_unwind` of its own, with a guard that reports an actor
//! whose thread stopped under it, so the registry hears of every actor that ended without
//! being told to stop.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::dev::channel::AddressReceiver;
use actix::{Addr, ArbiterHandle, AsyncContext, Context};
use futures_util::FutureExt;

use super::supervise::THREAD_STOPPED;
use super::{Registry, UserDied};
use crate::config::UserPlacement;
use crate::user::User;

/// Chooses arbiters for user actors and starts them there.
pub(super) struct Placement {
    policy: UserPlacement,
    pool: Vec<ArbiterHandle>,
    next: usize,
    /// The registry's address, shared by every actor's crash guard (an `Addr` clone
    /// allocates; an `Arc` clone does not).
    registry: Option<Arc<Addr<Registry>>>,
}

impl Placement {
    pub(super) fn new(policy: UserPlacement, pool: Vec<ArbiterHandle>) -> Self {
        Placement {
            policy,
            pool,
            next: 0,
            registry: None,
        }
    }

    /// The arbiter for a new user whose first socket runs on `socket_home`.
    pub(super) fn choose(&mut self, socket_home: Option<&ArbiterHandle>) -> ArbiterHandle {
        match (self.policy, socket_home) {
            (UserPlacement::WithFirstSocket, Some(home)) => home.clone(),
            _ => self.next_in_pool(),
        }
    }

    fn next_in_pool(&mut self) -> ArbiterHandle {
        let arbiter = self.pool[self.next % self.pool.len()].clone();
        self.next = self.next.wrapping_add(1);
        arbiter
    }

    /// Runs `actor` on `home` (or, if that thread has stopped, on the pool) inside its own
    /// `catch_unwind`; the registry gets `died` if the actor panics or its thread stops
    /// under it. Returns the arbiter it runs on.
    pub(super) fn run_supervised(
        &mut self,
        home: ArbiterHandle,
        actor: User,
        mailbox: AddressReceiver<User>,
        registry: &Context<Registry>,
        died: UserDied,
    ) -> ArbiterHandle {
        let registry = self
            .registry
            .get_or_insert_with(|| Arc::new(registry.address()))
            .clone();
        // The actor and its mailbox move into the task, which is built on the target
        // thread; if that thread is gone, `spawn_fn` hands nothing back, so the start is
        // retried on the pool with a fresh copy of the parts.
        let parts = Arc::new(parking_lot::Mutex::new(Some((actor, mailbox))));
        let start = |arbiter: &ArbiterHandle| {
            let parts = parts.clone();
            let registry = registry.clone();
            let died = died.clone();
            arbiter.spawn_fn(move || {
                if let Some((actor, mailbox)) = parts.lock().take() {
                    actix::spawn(supervised(actor, mailbox, registry, died));
                }
            })
        };
        if start(&home) {
            return home;
        }
        for _ in 0..self.pool.len() {
            let fallback = self.next_in_pool();
            if start(&fallback) {
                return fallback;
            }
        }
        // Every arbiter has stopped: the actix system is shutting down.
        log::warn!("registry: no running arbiter for user:{}", died.user);
        home
    }

    /// A one-line description for the registry's start-up log.
    pub(super) fn describe(&self) -> String {
        match self.policy {
            UserPlacement::WithFirstSocket => format!(
                "user actors on their first socket's thread ({} fallback arbiter(s))",
                self.pool.len()
            ),
            UserPlacement::Pool => format!("user actors on {} arbiter(s)", self.pool.len()),
        }
    }
}

/// One user actor's life: the actor's future inside `catch_unwind`, and a guard for a
/// thread that stops before the actor does. Built from combinators rather than an `async`
/// block, which would keep a second copy of the actor's slot in the task (a task per idle
/// user, so its size is memory per socket).
fn supervised(
    actor: User,
    mailbox: AddressReceiver<User>,
    registry: Arc<Addr<Registry>>,
    died: UserDied,
) -> impl std::future::Future<Output = ()> {
    let mut guard = ThreadStopGuard(Some((registry, died)));
    let running = Context::with_receiver(mailbox).into_future(actor);
    AssertUnwindSafe(running)
        .catch_unwind()
        .map(move |outcome| {
            if let Some((registry, died)) = guard.0.take() {
                if outcome.is_err() {
                    registry.do_send(died);
                }
            }
        })
}

/// Reports the actor as dead if its task is dropped unfinished (its thread stopped).
struct ThreadStopGuard(Option<(Arc<Addr<Registry>>, UserDied)>);

impl Drop for ThreadStopGuard {
    fn drop(&mut self) {
        if let Some((registry, mut died)) = self.0.take() {
            died.cause = THREAD_STOPPED;
            registry.do_send(died);
        }
    }
}
