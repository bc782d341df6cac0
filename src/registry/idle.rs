//! The resume-window clock: which users have no socket, since when, and retiring each once
//! its window is over.
//!
//! Idle users sit in one set ordered by when they went idle, so the one idle the longest
//! (the user cap's eviction choice) and the next window to end are both at its front, and
//! one timer, armed for that front, serves every idle user. A timer per idle user would not
//! do: actix polls every timer an actor holds on every message it handles, so with thousands
//! of sockets leaving a second the registry would spend its time polling timers.

use std::collections::BTreeSet;
use std::time::Instant;

use actix::{AsyncContext, Context};

use super::Registry;
use crate::ids::UserId;
use crate::stats::ActorState;

/// The users without a socket, by when they went idle.
#[derive(Default)]
pub(super) struct IdleUsers {
    by_since: BTreeSet<(Instant, UserId)>,
    /// When the timer for the front of the set fires, if one is armed.
    timer_due: Option<Instant>,
}

impl IdleUsers {
    /// The user idle the longest.
    pub(super) fn oldest(&self) -> Option<&UserId> {
        self.by_since.first().map(|(_, user)| user)
    }

    /// Forgets `user`, idle since `since` (it has a socket again, or is gone).
    pub(super) fn remove(&mut self, since: Instant, user: &UserId) {
        self.by_since.remove(&(since, user.clone()));
    }
}

impl Registry {
    /// `user`'s last socket left: its resume window starts now.
    pub(super) fn went_idle(&mut self, user: &UserId, ctx: &mut Context<Self>) {
        let Some(member) = self.users.get_mut(user) else {
            return;
        };
        let now = Instant::now();
        if let Some(before) = member.idle_since.replace(now) {
            self.idle.remove(before, user);
        }
        member.stats.set_state(ActorState::Idle);
        self.idle.by_since.insert((now, user.clone()));
        self.arm_idle_timer(ctx);
    }

    /// `user` has a socket again (or is gone): its resume window no longer runs.
    pub(super) fn not_idle(&mut self, user: &UserId) {
        if let Some(since) = self.users.get_mut(user).and_then(|m| m.idle_since.take()) {
            self.idle.remove(since, user);
        }
    }

    /// Retires every user whose window is over, then re-arms for the next.
    fn retire_expired(&mut self, ctx: &mut Context<Self>) {
        self.idle.timer_due = None;
        let now = Instant::now();
        let window = self.config.resume_window;
        while let Some((since, _)) = self.idle.by_since.first() {
            if *since + window > now {
                break;
            }
            if let Some((_, user)) = self.idle.by_since.pop_first() {
                self.retire(&user, "resume window over");
            }
        }
        self.arm_idle_timer(ctx);
    }

    /// Makes sure a timer is armed for the front of the set (no-op if one already is, for
    /// the same front or an earlier one).
    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        let Some((since, _)) = self.idle.by_since.first() else {
            return;
        };
        let due = *since + self.config.resume_window;
        if self.idle.timer_due.is_some_and(|armed| armed <= due) {
            return;
        }
        self.idle.timer_due = Some(due);
        let wait = due.saturating_duration_since(Instant::now());
        ctx.run_later(wait, move |registry, ctx| {
            // A stale timer (the front it was armed for left the set early) still sweeps:
            // nothing is due, so it only re-arms.
            if registry.idle.timer_due == Some(due) {
                registry.retire_expired(ctx);
            }
        });
    }
}
