//! Stopping a run wherever it runs: the node that received `stop_agent` looks the run up in
//! the user's own live-runs hash and publishes a stop request on the owning node's control
//! channel; the owner's subscriber hands it to [`super::Inbound::stop_requested`].
//!
//! The lookup is scoped to the asking user's hash, so a user can never reach another user's
//! run: an unknown run, and another user's run, are both [`StopOutcome::NotFound`].

use super::connection::Commands;
use super::error::EngineError;
use super::keys::Keys;
use super::record::{encode_stop, parse_live_run};
use crate::ids::UserId;

/// What became of a stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// The request was published to the run's node; `delivered` is false when no
    /// subscriber received it (the node is gone: its sweeper-to-be will end the run).
    Sent { node: String, delivered: bool },
    /// The user has no live run with that id.
    NotFound,
}

pub(crate) async fn stop(
    commands: &Commands,
    keys: &Keys,
    user: &UserId,
    run_id: &str,
) -> Result<StopOutcome, EngineError> {
    let runs = keys.user(user).runs;
    let live: Option<Vec<u8>> = commands
        .query(redis::cmd("HGET").arg(&runs).arg(run_id))
        .await?;
    let Some(live) = live else {
        return Ok(StopOutcome::NotFound);
    };
    let node = parse_live_run(&live)?.node;
    let receivers: u64 = commands
        .query(
            redis::cmd("PUBLISH")
                .arg(keys.control(&node))
                .arg(encode_stop(user, run_id)),
        )
        .await?;
    Ok(StopOutcome::Sent {
        node,
        delivered: receivers > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::super::testing::*;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_reaches_the_owning_node_and_only_for_the_runs_user() {
        let redis = TestRedis::start();
        let (owner_seen, asker_seen) = (Recorder::new(), Recorder::new());
        let owner = engine(config(&redis, "a"), owner_seen.clone());
        let asker = engine(config(&redis, "b"), asker_seen.clone());
        let (alice, bob) = (user("alice"), user("bob"));
        let meta = run_meta("run_1");
        assert!(owner
            .publisher()
            .enqueue(outgoing(&alice, &meta, &started()))
            .is_ok());
        flushed(&owner).await;
        eventually("the owner's subscriber", || {
            owner.subscriber().is_connected()
        })
        .await;

        assert_eq!(
            asker.stop(&alice, "run_1").await.unwrap(),
            StopOutcome::Sent {
                node: "a".into(),
                delivered: true
            }
        );
        eventually("the owner to be asked", || !owner_seen.stops().is_empty()).await;
        assert_eq!(owner_seen.stops(), [(alice.clone(), "run_1".to_owned())]);
        assert!(asker_seen.stops().is_empty());

        // Another user cannot reach alice's run, and unknown runs are unknown.
        assert_eq!(
            asker.stop(&bob, "run_1").await.unwrap(),
            StopOutcome::NotFound
        );
        assert_eq!(
            asker.stop(&alice, "run_2").await.unwrap(),
            StopOutcome::NotFound
        );
        // A run that ended is no longer live.
        assert!(owner
            .publisher()
            .enqueue(outgoing(&alice, &meta, &completed()))
            .is_ok());
        flushed(&owner).await;
        assert_eq!(
            asker.stop(&alice, "run_1").await.unwrap(),
            StopOutcome::NotFound
        );
        assert_eq!(owner_seen.stops().len(), 1);
    }
}
