//! The node's lease: proof to the other nodes that this node is alive.
//!
//! Every `lease_refresh` the node sets its lease key (`P:node:N:lease`) with a TTL of
//! `lease_ttl` and adds itself to the nodes set; a node whose lease expired is dead to the
//! sweepers (`sweeper.rs`). A refresh that finds the key gone means the node stalled for
//! longer than the TTL (or Redis lost its data): its runs may have been ended with
//! `node_lost` already, which is reported ([`super::Monitor::lease_lost`]); the node takes
//! a new lease and puts its live runs back in its runs set, so that if it dies now they are
//! still swept.
//!
//! The lease task also judges Redis's health for the sweeper: [`Health::may_sweep`] is true
//! only once refreshes have all succeeded, each within one refresh interval, for a whole
//! `lease_ttl`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;

use super::error::EngineError;
use super::hooks::Part;
use super::Node;

/// Since when this node's refreshes have been healthy (`None`: the last one was not).
#[derive(Debug, Default)]
pub(crate) struct Health {
    healthy_since: Mutex<Option<Instant>>,
}

impl Health {
    fn record(&self, healthy: bool) {
        let mut since = self.healthy_since.lock();
        if !healthy {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// Whether Redis has answered this node's refreshes in time for at least `period`.
    pub(crate) fn may_sweep(&self, period: Duration) -> bool {
        self.healthy_since
            .lock()
            .is_some_and(|since| since.elapsed() >= period)
    }
}

/// Lease timings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseTimings {
    pub ttl: Duration,
    pub refresh: Duration,
}

/// Refreshes the lease forever.
pub(crate) async fn run(node: Arc<Node>, timings: LeaseTimings, health: Arc<Health>) {
    let mut held = false;
    let mut ticks = tokio::time::interval(timings.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        match refresh(&node, timings, held).await {
            Ok(()) => {
                held = true;
                node.set_lease_taken();
                health.record(started.elapsed() <= timings.refresh);
            }
            Err(error) => {
                log::debug!("redis: lease refresh failed: {error}");
                node.monitor.error(Part::Lease, &error);
                health.record(false);
            }
        }
    }
}

async fn refresh(node: &Node, timings: LeaseTimings, held: bool) -> Result<(), EngineError> {
    let lease = node.keys.lease(&node.id);
    let ttl = u64::try_from(timings.ttl.as_millis()).unwrap_or(u64::MAX);
    let mut pipeline = redis::pipe();
    pipeline
        .cmd("SET")
        .arg(&lease)
        .arg(&node.id)
        .arg("PX")
        .arg(ttl)
        .arg("XX")
        .cmd("SADD")
        .arg(node.keys.nodes())
        .arg(&node.id)
        .ignore();
    let (refreshed,): (Value,) = node.commands.pipeline(&pipeline).await?;
    if refreshed != Value::Nil {
        return Ok(());
    }
    if held {
        log::warn!(
            "redis: node {} lost its lease (it stalled, or Redis lost its data): \
             other nodes may have ended its runs",
            node.id
        );
        node.monitor.lease_lost();
    }
    let runs: Vec<Vec<u8>> = node.live_runs.lock().iter().cloned().collect();
    let mut pipeline = redis::pipe();
    pipeline
        .cmd("SET")
        .arg(&lease)
        .arg(&node.id)
        .arg("PX")
        .arg(ttl)
        .ignore();
    if !runs.is_empty() {
        pipeline
            .cmd("SADD")
            .arg(node.keys.node_runs(&node.id))
            .arg(runs)
            .ignore();
    }
    node.commands.pipeline::<()>(&pipeline).await?;
    Ok(())
}

/// Gives the lease up at a clean shutdown, when this node has no live run left (with live
/// runs it lets the lease expire, so that the sweepers end them).
pub(crate) async fn release(node: &Node) -> Result<bool, EngineError> {
    if !node.live_runs.lock().is_empty() {
        return Ok(false);
    }
    let mut pipeline = redis::pipe();
    pipeline
        .cmd("DEL")
        .arg(node.keys.lease(&node.id))
        .ignore()
        .cmd("SREM")
        .arg(node.keys.nodes())
        .arg(&node.id)
        .ignore();
    node.commands.pipeline::<()>(&pipeline).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::record::node_run_member;
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::super::{Monitor, RedisEngine};
    use super::*;

    #[test]
    fn sweeping_waits_for_a_healthy_lease_ttl() {
        let health = Health::default();
        assert!(!health.may_sweep(Duration::ZERO), "no refresh yet");
        health.record(true);
        assert!(health.may_sweep(Duration::ZERO));
        assert!(!health.may_sweep(Duration::from_secs(3600)));
        health.record(false);
        assert!(
            !health.may_sweep(Duration::ZERO),
            "a failed refresh starts over"
        );
    }

    #[derive(Default)]
    struct LeaseWatch {
        lost: AtomicUsize,
    }

    impl Monitor for LeaseWatch {
        fn lease_lost(&self) {
            self.lost.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_is_reported_and_taken_again_with_the_live_runs() {
        let redis = TestRedis::start();
        let watch = Arc::new(LeaseWatch::default());
        let engine =
            RedisEngine::start(config(&redis, "a"), Recorder::new(), watch.clone()).unwrap();
        let alice = user("alice");
        let meta = run_meta("run_1");
        assert!(engine
            .publisher()
            .enqueue(outgoing(&alice, &meta, &started()))
            .is_ok());
        flushed(&engine).await;
        let node = &engine.node;
        let lease = node.keys.lease("a");
        let runs = node.keys.node_runs("a");
        let exists = |key: String| async move {
            node.commands
                .query::<bool>(redis::cmd("EXISTS").arg(key))
                .await
                .unwrap()
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while !exists(lease.clone()).await {
            assert!(std::time::Instant::now() < deadline, "no lease taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            watch.lost.load(Ordering::SeqCst),
            0,
            "taking the first lease is no loss"
        );
        // As if Redis lost its data.
        node.commands
            .query::<()>(redis::cmd("DEL").arg(&lease).arg(&runs))
            .await
            .unwrap();
        eventually("the loss to be reported", || {
            watch.lost.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(exists(lease.clone()).await, "a new lease");
        let member: bool = node
            .commands
            .query(
                redis::cmd("SISMEMBER")
                    .arg(&runs)
                    .arg(node_run_member(&alice, "run_1")),
            )
            .await
            .unwrap();
        assert!(member, "the live run is back in the node's set");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_run_starts_before_the_node_holds_its_lease() {
        let redis = TestRedis::start();
        let setup = node(&config(&redis, "setup"));
        // A nodes set of the wrong type: the lease cannot be taken.
        setup
            .commands
            .query::<()>(redis::cmd("SET").arg(setup.keys.nodes()).arg("blocked"))
            .await
            .unwrap();
        let engine = engine(config(&redis, "a"), Recorder::new());
        let (alice, bob) = (user("alice"), user("bob"));
        let publisher = engine.publisher();
        assert!(publisher
            .enqueue(outgoing(&alice, &run_meta("run_1"), &started()))
            .is_ok());
        assert!(publisher
            .enqueue(outgoing(&bob, &run_meta("run_2"), &thinking("x")))
            .is_ok());
        let deadline = std::time::Instant::now() + PATIENCE;
        while engine.position(&bob).await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "bob's event was not published"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            engine.position(&alice).await.unwrap(),
            None,
            "alice's run waits"
        );
        setup
            .commands
            .query::<()>(redis::cmd("DEL").arg(setup.keys.nodes()))
            .await
            .unwrap();
        flushed(&engine).await;
        assert_eq!(
            engine.position(&alice).await.unwrap().map(|p| p.seq),
            Some(1)
        );
        let known: bool = setup
            .commands
            .query(redis::cmd("SISMEMBER").arg(setup.keys.nodes()).arg("a"))
            .await
            .unwrap();
        assert!(
            known,
            "the node the run started on is known to the sweepers"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_shutdown_leaves_unless_a_run_is_live() {
        let redis = TestRedis::start();
        let observer = node(&config(&redis, "observer"));
        let alice = user("alice");
        let known = |id: &'static str| {
            let observer = observer.clone();
            async move {
                observer
                    .commands
                    .pipeline::<(bool, bool)>(
                        redis::pipe()
                            .cmd("EXISTS")
                            .arg(observer.keys.lease(id))
                            .cmd("SISMEMBER")
                            .arg(observer.keys.nodes())
                            .arg(id),
                    )
                    .await
                    .unwrap()
            }
        };
        for (id, ends) in [("done", true), ("busy", false)] {
            let engine = engine(config(&redis, id), Recorder::new());
            let meta = run_meta(id);
            assert!(engine
                .publisher()
                .enqueue(outgoing(&alice, &meta, &started()))
                .is_ok());
            if ends {
                assert!(engine
                    .publisher()
                    .enqueue(outgoing(&alice, &meta, &completed()))
                    .is_ok());
            }
            assert_eq!(
                engine.shutdown(PATIENCE).await,
                0,
                "everything queued was published"
            );
        }
        assert_eq!(
            known("done").await,
            (false, false),
            "no live run: gone at once"
        );
        assert_eq!(
            known("busy").await,
            (true, true),
            "a live run: left for the sweepers"
        );
        let position = last_seq(&observer, &alice).await;
        assert_eq!(position, 3, "both runs' events were published");
    }

    async fn last_seq(node: &Node, user: &crate::ids::UserId) -> u64 {
        super::super::history::position(&node.commands, &node.keys, user)
            .await
            .unwrap()
            .map_or(0, |p| p.seq)
    }
}
