//! How far a Redis node's receiver posts ahead of the user's actor, and how it reads back
//! what it let go.
//!
//! Pub/sub does not wait for a user actor that falls behind (a node short of CPU, a user
//! with many sockets, emitters on other nodes that cannot see this node's inbox), so a
//! receiver bounds what it posts itself: at most its limit (twice `max_user_backlog`, and
//! at least `receiver_ahead`, 20,000 by default) events may wait in the actor's inbox. Past it, the receiver lets the user's events go
//! by, keeping only the newest `seq`; once the actor has worked its inbox down to half
//! the limit, it reads them back from history in order, a chunk at a time, and delivers
//! live again when it has caught up. What history no longer holds by then becomes a new
//! position (`resync_required`), as for any gap. So a node's memory per user stays bounded
//! whatever the rate of the user's stream, and nothing is skipped while history lasts.
//! While a receiver is behind, this node's emitters for the user wait in `ready()`.

use std::sync::Arc;
use std::time::Duration;

use super::cluster::Shared;
use super::receiver::{deliver, reposition, Receiver};
use super::{EngineError, NumberedEvent, RedisConfig};
use crate::ids::UserId;

/// How often a receiver that let events go checks whether its actor has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(2);

/// A catch-up's next step.
enum CatchUp {
    /// Nothing left to read back (or the receiver is gone).
    Done,
    /// The actor is still too far behind.
    Wait,
    /// Read the events after this position, up to the newest let go.
    Read(Arc<str>, u64, u64),
}

/// What a catch-up's read achieved.
enum Progress {
    Done,
    More,
    /// Redis did not answer: read again after a delay.
    Retry,
}

/// How far a receiver posts ahead of its actor: twice `max_user_backlog`, one share for
/// what this node's own emitters may have in flight (their `ready()` waits at
/// `max_user_backlog` queued for publishing) and one for the actor's inbox; and at least
/// `receiver_ahead`, so that a burst (emitters on other nodes that do not await `ready()`)
/// is delivered as it comes rather than read back from a history that may not hold it.
pub(super) fn receiver_limit(max_user_backlog: usize, config: &RedisConfig) -> u64 {
    (max_user_backlog as u64)
        .saturating_mul(2)
        .max(config.receiver_ahead as u64)
        .max(2)
}

impl Shared {
    /// How far a receiver posts ahead of its actor.
    pub(super) fn receiver_limit(&self) -> u64 {
        self.receiver_limit
    }

    /// Delivers the next event, or lets it go (and starts the catch-up) when the actor has
    /// `limit` events waiting already.
    pub(super) fn deliver_within(
        self: &Arc<Self>,
        receiver: &mut Receiver,
        user: &UserId,
        event: NumberedEvent,
        limit: u64,
    ) {
        if receiver.actor_backlog() < limit {
            deliver(receiver, event);
            return;
        }
        log::debug!(
            "redis engine: user:{user}'s actor has {limit} events waiting; this node lets \
             the next ones go and reads them back from history once it has caught up"
        );
        self.metrics.engine_caught_up();
        receiver.behind = Some(event.seq);
        self.catch_up(user.clone(), receiver.generation);
    }

    /// Reads what `user`'s receiver let go back from history, a chunk at a time, each once
    /// the actor has worked its inbox down to half the limit; what history no longer
    /// holds becomes a new position.
    fn catch_up(self: &Arc<Self>, user: UserId, generation: u64) {
        let this = self.clone();
        self.arbiter.spawn(async move {
            let Some(core) = this.core() else { return };
            let half = this.receiver_limit() / 2;
            let chunk = half.min(core.max_read() as u64).max(1);
            let mut delay = Duration::from_millis(50);
            loop {
                tokio::time::sleep(CATCH_UP_POLL).await;
                let (epoch, after, newest) = match this.catch_up_next(&user, generation, half) {
                    CatchUp::Done => return,
                    CatchUp::Wait => continue,
                    CatchUp::Read(epoch, after, newest) => (epoch, after, newest),
                };
                let upto = newest.min(after + chunk);
                let read = core.history(&user, &epoch, after, upto).await;
                match this.caught_up(&user, generation, (epoch, after), read) {
                    Progress::Done => return,
                    Progress::More => delay = Duration::from_millis(50),
                    Progress::Retry => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// What a catch-up does next: read from the receiver's position up to the newest event
    /// let go, once the actor has at most `half` events waiting.
    fn catch_up_next(&self, user: &UserId, generation: u64, half: u64) -> CatchUp {
        let mut receivers = self.receivers.lock();
        let Some(receiver) = receivers
            .get_mut(user)
            .filter(|r| r.generation == generation)
        else {
            return CatchUp::Done;
        };
        let (Some(newest), Some((epoch, after))) = (receiver.behind, receiver.position.clone())
        else {
            return CatchUp::Done;
        };
        if after >= newest {
            receiver.behind = None;
            return CatchUp::Done;
        }
        if receiver.actor_backlog() > half {
            return CatchUp::Wait;
        }
        CatchUp::Read(epoch, after, newest)
    }

    /// Delivers what a catch-up read from `after` on (unless the receiver moved meanwhile),
    /// or repositions when history no longer holds it.
    fn caught_up(
        &self,
        user: &UserId,
        generation: u64,
        (epoch, after): (Arc<str>, u64),
        read: Result<Option<Vec<NumberedEvent>>, EngineError>,
    ) -> Progress {
        let mut receivers = self.receivers.lock();
        let Some(receiver) = receivers
            .get_mut(user)
            .filter(|r| r.generation == generation)
        else {
            return Progress::Done;
        };
        if receiver.position.as_ref() != Some(&(epoch.clone(), after)) {
            // Repositioned meanwhile (a new epoch): read again from there.
            return Progress::More;
        }
        let Some(newest) = receiver.behind else {
            return Progress::Done;
        };
        match read {
            Ok(Some(events)) => {
                for event in events {
                    deliver(receiver, event);
                }
            }
            Ok(None) => {
                log::warn!(
                    "redis engine: user:{user}'s events {}..={newest} are no longer in \
                     history when its actor caught up; sockets resync",
                    after + 1
                );
                self.metrics.engine_resynced();
                reposition(receiver, epoch, newest);
            }
            Err(error) => {
                log::debug!("redis engine: catching up user:{user}: {error}");
                return Progress::Retry;
            }
        }
        if receiver
            .position
            .as_ref()
            .is_some_and(|(_, seq)| *seq >= newest)
        {
            receiver.behind = None;
            return Progress::Done;
        }
        Progress::More
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use std::time::SystemTime;

    use std::collections::VecDeque;

    use actix::Arbiter;
    use futures_util::StreamExt;
    use parking_lot::Mutex;

    use super::super::test_server::TestRedis;
    use super::super::testing::{self, eventually, run_meta, thinking, user};
    use super::super::RedisConfig;
    use crate::burst_queue::Bursts;
    use crate::engine::{ClusterEngine, Delivery, DeliveryTarget, Engine, Inbox};
    use crate::metrics::Metrics;
    use crate::stats::ActorStats;

    /// What the target was handed, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Seen {
        Position(u64),
        Event(u64),
    }

    /// A delivery target that stands still while `closed` is set, as a user actor on a
    /// thread that has no time for it: what it was handed waits in its inbox. It takes its
    /// inbox as the user actor does, a burst at a time, on a thread of its own.
    fn stalling(
        closed: Arc<AtomicBool>,
        seen: Arc<Mutex<Vec<Seen>>>,
        stats: Arc<ActorStats>,
    ) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::with_room());
        let mut bursts = Bursts(inbox.clone());
        let taking = inbox.clone();
        Arbiter::new().spawn(async move {
            let mut burst = VecDeque::new();
            while bursts.next().await.is_some() {
                while closed.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                taking.take_all(&mut burst);
                for delivery in burst.drain(..) {
                    seen.lock().push(match delivery {
                        Delivery::Position { seq, .. } => Seen::Position(seq),
                        Delivery::Event(event) => Seen::Event(event.seq),
                    });
                    stats.handled(0);
                }
            }
        });
        inbox
    }

    struct Harness {
        engine: ClusterEngine,
        closed: Arc<AtomicBool>,
        seen: Arc<Mutex<Vec<Seen>>>,
        stats: Arc<ActorStats>,
    }

    /// An engine on `redis` with `max_user_backlog` 50 (a receiver limit of 100) and a
    /// history of `history` events, and alice subscribed with a stalling target that has
    /// handled her position.
    async fn harness(redis: &TestRedis, history: usize) -> Harness {
        let config = RedisConfig {
            history_max_events: history,
            // The receiver's limit is the one from max_user_backlog.
            receiver_ahead: 0,
            ..testing::config(redis, "n1")
        };
        let engine = ClusterEngine::start(config, 50, Arc::new(Metrics::default())).unwrap();
        let (closed, seen) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let stats = Arc::new(ActorStats::default());
        let target = DeliveryTarget {
            inbox: stalling(closed.clone(), Arc::clone(&seen), stats.clone()),
            stats: stats.clone(),
        };
        engine.subscribe(&user("alice"), target);
        let harness = Harness {
            engine,
            closed,
            seen,
            stats,
        };
        eventually("alice's position", || harness.seen().len() == 1).await;
        assert_eq!(harness.seen(), [Seen::Position(0)]);
        harness
    }

    impl Harness {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().clone()
        }

        /// Publishes `count` events of one run of alice's (seq 1 to `count`).
        fn publish(&self, count: usize) -> Arc<crate::engine::RunStream> {
            let run = self.engine.open_run(user("alice"), run_meta("run_1"));
            for i in 0..count {
                self.engine
                    .publish(&run, thinking(format!("{i}")), SystemTime::now());
            }
            run
        }

        /// The newest seq alice's receiver let go.
        fn behind(&self) -> Option<u64> {
            let receivers = self.engine.shared().receivers.lock();
            receivers.get(&user("alice")).and_then(|r| r.behind)
        }
    }

    fn events(seen: &[Seen]) -> Vec<u64> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Event(seq) => Some(*seq),
                Seen::Position(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_receiver_posts_at_most_its_limit_ahead_and_reads_the_rest_back_in_order() {
        let redis = TestRedis::start();
        actix_web::rt::System::new().block_on(async {
            let h = harness(&redis, 10_000).await;
            h.closed.store(true, Ordering::Release);
            let run = h.publish(2_000);
            eventually("the receiver to let seq 2,000 go", || {
                h.behind() == Some(2_000)
            })
            .await;
            // Nothing more than the limit waits for the actor, and this node's emitters wait.
            assert!(h.stats.backlog().0 <= 100, "{:?}", h.stats.backlog());
            assert!(!h.engine.has_room(&run));

            h.closed.store(false, Ordering::Release);
            eventually("all 2,000 events", || events(&h.seen()).len() >= 2_000).await;
            let seen = h.seen();
            assert_eq!(seen[0], Seen::Position(0), "no resync: {seen:?}");
            assert_eq!(events(&seen), (1..=2_000).collect::<Vec<_>>());
            assert_eq!(seen.len(), 2_001);
            assert_eq!(h.behind(), None);
            assert!(h.engine.has_room(&run));

            // Live delivery goes on after the catch-up.
            h.engine.publish(&run, thinking("after"), SystemTime::now());
            eventually("the next event", || h.seen().len() == 2_002).await;
            assert_eq!(h.seen()[2_001], Seen::Event(2_001));
        });
    }

    #[test]
    fn what_history_no_longer_holds_when_the_actor_catches_up_becomes_a_new_position() {
        let redis = TestRedis::start();
        actix_web::rt::System::new().block_on(async {
            // History keeps about the last 100 events: far fewer than are let go.
            let h = harness(&redis, 100).await;
            h.closed.store(true, Ordering::Release);
            let run = h.publish(2_000);
            eventually("the receiver to let seq 2,000 go", || {
                h.behind() == Some(2_000)
            })
            .await;
            h.closed.store(false, Ordering::Release);
            eventually("the new position", || {
                h.seen().last() == Some(&Seen::Position(2_000))
            })
            .await;
            let seen = h.seen();
            let delivered = events(&seen);
            // What was posted before the limit, in order, then the stream continues after
            // the newest event.
            assert!(!delivered.is_empty() && delivered.len() <= 100, "{seen:?}");
            assert_eq!(delivered, (1..=delivered.len() as u64).collect::<Vec<_>>());
            assert_eq!(seen.len(), delivered.len() + 2, "{seen:?}");
            h.engine.publish(&run, thinking("after"), SystemTime::now());
            eventually("the next event", || {
                h.seen().last() == Some(&Seen::Event(2_001))
            })
            .await;
        });
    }
}
