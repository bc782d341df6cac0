//! A session's outbox: the one ordered queue from its user's actor to the session.
//!
//! Everything the user's actor sends a session after the welcome (events, control frames,
//! a replay, a close) goes through it, in order, as [`Outbound`] items in a
//! [`BurstQueue`]: the session takes a whole burst per wakeup. The user's actor creates a
//! fresh outbox for each attach and hands it over in the welcome: after a restart the
//! session drains the old actor's outbox to its end before it writes the new actor's
//! `resync_required` and switches to the new one, so numbering never interleaves.
//!
//! It is bounded from the sender's side: the user's actor counts every push into the
//! session's backlog and stops pushing (and cuts the session off) past the slow-consumer
//! limit. Once the session is gone, pushes are dropped.

use super::{Deliver, Replay};
use crate::burst_queue::BurstQueue;

/// One item for a session, in the order its user's actor sent it.
pub(crate) enum Outbound {
    /// A frame to write (an event or a control frame).
    Deliver(Deliver),
    /// The answer to a resume.
    Replay(Replay),
    /// Close the socket with this code after everything before it.
    Close(u16),
}

/// The queue shared by a user's actor (pushing) and one session (draining).
pub(crate) type Outbox = BurstQueue<Outbound>;
