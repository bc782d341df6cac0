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
