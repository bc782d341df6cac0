//! A subscribed user's receiver on a Redis node: what turns the user's channel (at most once,
//! possibly late or with gaps) into the exact stream the user's actor needs.
//!
//! A receiver first learns where the stream stands (starting a numbering when Redis has
//! none) and sends it to the actor as a `Position`; then it hands over every event in `seq`
//! order. An event after a gap waits while the missing ones are read from history; what
//! history can no longer supply, an epoch change (Redis lost its data), or a receiver too
//! far behind becomes a new position, which the user's sockets receive as
//! `resync_required`. After every reconnect of the subscriber, each receiver compares its
//! position with the stored one and catches up the same way.
//! A receiver posts at most its limit ahead of the actor (`catch_up` holds that side). The
//! repairs run on the engine's thread; `cluster` owns the receivers and calls in here.

use std::sync::Arc;
use std::time::Duration;

use super::cluster::Shared;
use super::NumberedEvent;
use crate::engine::{Delivery, DeliveryTarget, StreamEvent};
use crate::ids::UserId;

/// Events a receiver holds while it learns its position or repairs a gap; past it (or past
/// [`MAX_HELD_BYTES`]), the held events are let go and the stream continues from a new
/// position.
const MAX_HELD_EVENTS: usize = 10_000;

/// The same bound in bytes of encoded events.
const MAX_HELD_BYTES: usize = 32 << 20;

/// One subscribed user's delivery state.
pub(super) struct Receiver {
    pub(super) target: DeliveryTarget,
    pub(super) generation: u64,
    /// The stream's epoch and the last `seq` delivered; `None` until known.
    pub(super) position: Option<(Arc<str>, u64)>,
    /// Set while history is read to fill a gap: events wait in `held` meanwhile.
    pub(super) repairing: bool,
    held: Vec<NumberedEvent>,
    held_bytes: usize,
    /// Set while the actor is too far behind: the newest `seq` let go (in the position's
    /// epoch), which the catch-up reads back from history.
    pub(super) behind: Option<u64>,
}

impl Receiver {
    pub(super) fn new(target: DeliveryTarget, generation: u64) -> Self {
        Receiver {
            target,
            generation,
            position: None,
            repairing: false,
            held: Vec::new(),
            held_bytes: 0,
            behind: None,
        }
    }

    /// Whether everything that reached this receiver was handed to the actor (nothing
    /// held, repaired or let go).
    pub(super) fn is_settled(&self) -> bool {
        self.position.is_some() && !self.repairing && self.behind.is_none()
    }

    /// Events posted to the actor and not yet handled by it.
    pub(super) fn actor_backlog(&self) -> u64 {
        self.target.stats.backlog().0
    }
}

impl Shared {
    /// Hands `events` to `user`'s receiver, in order, repairing what is missing.
    pub(super) fn accept(self: &Arc<Self>, user: &UserId, events: Vec<NumberedEvent>) {
        let mut receivers = self.receivers.lock();
        let Some(receiver) = receivers.get_mut(user) else {
            return;
        };
        if receiver.position.is_none() || receiver.repairing {
            hold(receiver, events);
            return;
        }
        let limit = self.receiver_limit();
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            let Some((epoch, seq)) = receiver.position.clone() else {
                return;
            };
            if *event.epoch != *epoch {
                // Redis lost the stream (restarted empty): a new numbering.
                self.metrics.engine_resynced();
                let start = event.seq.saturating_sub(1);
                reposition(receiver, event.epoch.clone(), start);
                if receiver.behind.is_some() {
                    receiver.behind = Some(event.seq);
                } else {
                    self.deliver_within(receiver, user, event, limit);
                }
            } else if let Some(newest) = receiver.behind {
                // Let go: the catch-up reads everything up to the newest from history.
                receiver.behind = Some(newest.max(event.seq));
            } else if event.seq <= seq {
                // Already delivered (a repair and a late message overlapped).
            } else if event.seq == seq + 1 {
                self.deliver_within(receiver, user, event, limit);
            } else {
                let gap_end = event.seq - 1;
                receiver.repairing = true;
                hold(receiver, std::iter::once(event).chain(events).collect());
                let generation = receiver.generation;
                drop(receivers);
                self.repair(user.clone(), generation, epoch, seq, gap_end);
                return;
            }
        }
    }

    /// Reads `user`'s events after `after` up to `upto` from history and delivers them
    /// ahead of what was held; what history cannot supply becomes a new position.
    fn repair(
        self: &Arc<Self>,
        user: UserId,
        generation: u64,
        epoch: Arc<str>,
        after: u64,
        upto: u64,
    ) {
        let this = self.clone();
        self.arbiter.spawn(async move {
            let read = match this.core() {
                Some(core) => core.history(&user, &epoch, after, upto).await,
                None => Ok(None),
            };
            let mut receivers = this.receivers.lock();
            let Some(receiver) = receivers
                .get_mut(&user)
                .filter(|r| r.generation == generation)
            else {
                return;
            };
            match read {
                Ok(Some(events)) => {
                    this.metrics.engine_gap_repaired();
                    for event in events {
                        deliver(receiver, event);
                    }
                }
                Ok(None) | Err(_) => {
                    log::warn!(
                        "redis engine: user:{user}'s events {}..={upto} are no longer in \
                         history; sockets resync",
                        after + 1
                    );
                    this.metrics.engine_resynced();
                    reposition(receiver, epoch, upto);
                }
            }
            receiver.repairing = false;
            let held = take_held(receiver);
            drop(receivers);
            if !held.is_empty() {
                this.accept(&user, held);
            }
        });
    }

    /// Learns where `user`'s stream stands (starting one when Redis has none), retrying
    /// until Redis answers or the subscription is gone, then delivers what was held.
    pub(super) fn locate(self: &Arc<Self>, user: UserId, generation: u64) {
        let this = self.clone();
        self.arbiter.spawn(async move {
            let Some(core) = this.core() else { return };
            let mut delay = Duration::from_millis(50);
            let position = loop {
                if !this.is_current(&user, generation) {
                    return;
                }
                match core.ensure_position(&user).await {
                    Ok(position) => break position,
                    Err(error) => {
                        log::debug!("redis engine: position of user:{user}: {error}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let mut receivers = this.receivers.lock();
            let Some(receiver) = receivers
                .get_mut(&user)
                .filter(|r| r.generation == generation)
            else {
                return;
            };
            match receiver.position.clone() {
                None => {
                    receiver.position = Some((position.epoch.clone(), position.seq));
                    receiver.target.send(Delivery::Position {
                        epoch: position.epoch,
                        seq: position.seq,
                    });
                }
                Some((epoch, _)) if epoch != position.epoch => {
                    // Nothing of the old epoch is left to read back.
                    receiver.behind = None;
                    this.metrics.engine_resynced();
                    reposition(receiver, position.epoch, position.seq);
                }
                Some(_) if receiver.behind.is_some() => {
                    // The catch-up reads up to the stored position too.
                    receiver.behind = receiver.behind.max(Some(position.seq));
                }
                Some((epoch, seq)) if position.seq > seq && !receiver.repairing => {
                    // Events were published while the subscriber was away.
                    receiver.repairing = true;
                    drop(receivers);
                    this.repair(user, generation, epoch, seq, position.seq);
                    return;
                }
                Some(_) => {}
            }
            let held = take_held(receiver);
            drop(receivers);
            if !held.is_empty() {
                this.accept(&user, held);
            }
        });
    }

    fn is_current(&self, user: &UserId, generation: u64) -> bool {
        self.receivers
            .lock()
            .get(user)
            .is_some_and(|r| r.generation == generation)
    }
}

/// Holds events until the receiver can deliver them, within a bound.
fn hold(receiver: &mut Receiver, events: Vec<NumberedEvent>) {
    let bytes: usize = events.iter().map(|e| e.frame.len()).sum();
    if receiver.held.len() + events.len() > MAX_HELD_EVENTS
        || receiver.held_bytes + bytes > MAX_HELD_BYTES
    {
        // Too far behind to catch up event by event: continue after the newest.
        if let (Some(last), Some((epoch, _))) = (events.last(), receiver.position.clone()) {
            let (epoch, seq) = if last.epoch == epoch {
                (epoch, last.seq)
            } else {
                (last.epoch.clone(), last.seq)
            };
            receiver.held.clear();
            receiver.held_bytes = 0;
            receiver.repairing = false;
            receiver.behind = None;
            reposition(receiver, epoch, seq);
            return;
        }
        receiver.held.clear();
        receiver.held_bytes = 0;
    }
    receiver.held_bytes += bytes;
    receiver.held.extend(events);
}

/// Takes what `receiver` held.
fn take_held(receiver: &mut Receiver) -> Vec<NumberedEvent> {
    receiver.held_bytes = 0;
    std::mem::take(&mut receiver.held)
}

/// The stream continues at `(epoch, seq)`: the user's actor tells its sockets to resync.
pub(super) fn reposition(receiver: &mut Receiver, epoch: Arc<str>, seq: u64) {
    receiver.position = Some((epoch.clone(), seq));
    receiver.target.send(Delivery::Position { epoch, seq });
}

/// Delivers the next event of the stream to the user's actor.
pub(super) fn deliver(receiver: &mut Receiver, event: NumberedEvent) {
    if let Some((_, seq)) = &mut receiver.position {
        *seq = event.seq;
    }
    receiver.target.send(Delivery::Event(StreamEvent {
        seq: event.seq,
        frame: event.frame,
        thread_id: Arc::from(&*event.thread_id),
        event_type: event.wire_type,
        emitted_at: event.emitted_at,
    }));
}
