//! An event on its way to the publish script: encoded once on the emitter's thread, all but
//! its `seq` and `epoch` (which the script writes), with where it stands in its run.

use std::time::SystemTime;

use crate::envelope::{encode_tail, RunFields};
use crate::event::{AgentEvent, RunMeta};
use crate::ids::UserId;

/// Where an event stands in its run, which decides what the script does with the run's
/// live-runs entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The run's first event (`agent_started`): the run becomes live, owned by the sender.
    Start,
    /// A later event. (If the run is missing from the live runs because Redis lost them, it
    /// is recorded again; if it was ended with `node_lost`, the event is dropped.)
    Continue,
    /// The run's last event: the run is no longer live.
    End,
    /// A sweeper's `node_lost` error: published only while the run is live and owned by the
    /// batch's lost node, then the run is marked lost. Several sweepers end a run once.
    EndIfLost,
}

impl Step {
    pub(super) fn code(self) -> &'static str {
        match self {
            Step::Start => "s",
            Step::Continue => "c",
            Step::End => "e",
            Step::EndIfLost => "x",
        }
    }
}

/// One event to publish, encoded except for its `seq` and `epoch`.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingEvent {
    pub user: UserId,
    pub step: Step,
    pub wire_type: &'static str,
    pub run_id: String,
    pub thread_id: String,
    /// When the application emitted it, in µs since the Unix epoch.
    pub emitted_at_micros: u64,
    /// The envelope after its `epoch` field: the run's fields, then the rest.
    pub tail: Vec<u8>,
    /// How many bytes at the start of `tail` are the run's fields.
    pub run_fields_len: usize,
}

impl OutgoingEvent {
    /// Encodes `event` of the run `meta` (whose fields `run` holds) for `user`.
    pub(crate) fn new(
        user: UserId,
        meta: &RunMeta,
        run: &RunFields,
        emitted_at: SystemTime,
        event: &AgentEvent,
    ) -> Self {
        let step = match event {
            AgentEvent::Started(_) => Step::Start,
            event if event.is_terminal() => Step::End,
            _ => Step::Continue,
        };
        Self::from_run_fields(
            user,
            step,
            &meta.run_id,
            &meta.thread_id,
            run.as_bytes(),
            emitted_at,
            event,
        )
    }

    /// The same from the run's fields as bytes (as the live-runs hash stores them).
    pub(crate) fn from_run_fields(
        user: UserId,
        step: Step,
        run_id: &str,
        thread_id: &str,
        run_fields: &[u8],
        emitted_at: SystemTime,
        event: &AgentEvent,
    ) -> Self {
        let micros = emitted_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        OutgoingEvent {
            user,
            step,
            wire_type: event.wire_type(),
            run_id: run_id.to_owned(),
            thread_id: thread_id.to_owned(),
            emitted_at_micros: u64::try_from(micros).unwrap_or(u64::MAX),
            tail: encode_tail(run_fields, emitted_at, event),
            run_fields_len: run_fields.len(),
        }
    }

    /// Roughly the memory the queued event holds, in bytes.
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.tail.len() + self.run_id.len() + self.thread_id.len()
    }
}
