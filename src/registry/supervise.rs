//! The registry as supervisor: restarting a user actor that crashed (within the restart
//! intensity limit), escalating past it, and the fault injection operators use to rehearse
//! both.
//!
//! Once the runtime drains ([`crate::Runtime::shutdown`]) nothing is restarted: the process
//! is stopping, and the HTTP workers stopping after the drain end the user actors that run
//! on them. That is the shutdown, not a crash: such an actor is let go without a restart, a
//! supervision event or a warning.

use std::time::Duration;

use actix::{Context, Handler, Message};

use super::{Member, Registry};
use crate::close_code;
use crate::ids::{SessionId, UserId};
use crate::metrics::DropReason;
use crate::session::{CloseSession, Stall};
use crate::supervision::SupervisionKind;
use crate::user::{Attach, Crash};

/// A user actor ended without being told to stop; sent by its crash guard.
#[derive(Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct UserDied {
    pub user: UserId,
    pub generation: u64,
    /// What happened, for the supervision log: [`PANICKED`] or [`THREAD_STOPPED`].
    pub cause: &'static str,
}

/// `UserDied::cause` for a panic in one of the actor's handlers.
pub(crate) const PANICKED: &str = "the actor panicked";
/// `UserDied::cause` for an actor whose thread stopped under it.
pub(crate) const THREAD_STOPPED: &str = "its thread stopped";

impl Handler<UserDied> for Registry {
    type Result = ();

    fn handle(&mut self, msg: UserDied, ctx: &mut Context<Self>) {
        let current = self
            .users
            .get(&msg.user)
            .is_some_and(|m| m.generation == msg.generation);
        if !current {
            return;
        }
        let Some(mut member) = self.users.remove(&msg.user) else {
            return;
        };
        self.engine.unsubscribe(&msg.user);
        if self.draining {
            self.ended_while_draining(&msg, &member);
            return;
        }
        let actor = format!("user:{}", msg.user);
        let (lost, _) = member.stats.backlog();
        if lost > 0 {
            self.metrics.dropped("unknown", DropReason::Crashed, lost);
        }
        let (max, window) = (self.config.max_restarts, self.config.restart_window);
        if !member.restarts.allow_restart(max, window) {
            if let Some(since) = member.idle_since {
                self.idle.remove(since, &msg.user);
            }
            for session in member.sessions.values() {
                session
                    .addr
                    .do_send(CloseSession(close_code::INTERNAL_ERROR));
            }
            self.sessions -= member.sessions.len();
            self.metrics.escalated();
            self.supervision.record(
                SupervisionKind::Escalation,
                actor,
                format!(
                    "{}; crashed more than {max} times within {window:?}; {} socket(s) closed \
                     with 1011, {lost} queued event(s) lost",
                    msg.cause,
                    member.sessions.len()
                ),
            );
            return;
        }
        let spawned = self.spawn_user(
            &msg.user,
            member.home.clone(),
            member.running_requests.clone(),
            ctx,
        );
        spawned.stats.inherit_restarts(&member.stats);
        spawned.stats.restarted();
        let addr = spawned.addr.clone();
        member.addr = spawned.addr;
        member.stats = spawned.stats;
        member.generation = spawned.generation;
        member.home = spawned.home;
        for (session_id, session) in member.sessions.iter() {
            addr.do_send(Attach {
                user_addr: addr.clone(),
                session_id: *session_id,
                addr: session.addr.clone(),
                stats: session.stats.clone(),
                resume: None,
                after_restart: true,
            });
        }
        self.metrics.restarted();
        self.supervision.record(
            SupervisionKind::Restart,
            actor,
            format!(
                "{}; restarted, {} socket(s) told to resync, {lost} queued event(s) lost",
                msg.cause,
                member.sessions.len()
            ),
        );
        if member.sessions.is_empty() {
            // Still within its resume window, and still in the idle set under the same
            // instant: the window's end retires it as before.
            member.stats.set_state(crate::stats::ActorState::Idle);
        }
        self.users.insert(msg.user, member);
    }
}

impl Registry {
    /// A user actor ended after the drain began: not restarted. Its thread stopping is the
    /// shutdown itself (logged at debug); a panic is still a bug worth a warning, but not a
    /// restart. Sockets it still had get the drain's 1012.
    fn ended_while_draining(&mut self, msg: &UserDied, member: &Member) {
        if let Some(since) = member.idle_since {
            self.idle.remove(since, &msg.user);
        }
        for session in member.sessions.values() {
            session
                .addr
                .do_send(CloseSession(close_code::SERVICE_RESTART));
        }
        self.sessions -= member.sessions.len();
        if msg.cause == THREAD_STOPPED {
            log::debug!(
                "registry: user:{} ended with its thread during the shutdown",
                msg.user
            );
        } else {
            log::warn!(
                "user:{}: {} during the drain; not restarted (shutting down), {} socket(s) \
                 closed with 1012",
                msg.user,
                msg.cause,
                member.sessions.len()
            );
        }
    }
}

/// A fault to inject, for tests and incident rehearsal (debug routes, admin token only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Make the user's actor panic.
    CrashUser(UserId),
    /// Make a session stop writing (as if its client stopped reading) for a while.
    StallSession {
        /// The session.
        session: SessionId,
        /// For how long.
        duration: Duration,
    },
}

/// Injects a fault; answers whether the target exists.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct InjectFault(pub Fault);

impl Handler<InjectFault> for Registry {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        match msg.0 {
            Fault::CrashUser(user) => {
                let member = self
                    .users
                    .get(&user)
                    .ok_or_else(|| format!("no actor for user {user}"))?;
                member.addr.do_send(Crash);
                self.supervision.record(
                    SupervisionKind::FaultInjected,
                    format!("user:{user}"),
                    "crash requested through the debug routes".to_owned(),
                );
            }
            Fault::StallSession { session, duration } => {
                let entry = self
                    .users
                    .values()
                    .find_map(|m| m.sessions.get(&session))
                    .ok_or_else(|| format!("no session {session}"))?;
                entry.addr.do_send(Stall(duration));
                self.supervision.record(
                    SupervisionKind::FaultInjected,
                    format!("session:{session}"),
                    format!("stall for {duration:?} requested through the debug routes"),
                );
            }
        }
        Ok(())
    }
}
