//! One socket: a writer task drains the socket's unbounded channel into the sink, and the
//! reader answers `ping`, starts synthetic runs for `start_agent`, and refuses the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Verifier;
use crate::hub::{random_hex, Control, Hub, Outbox, RunEmitter};

/// Same bounds as the demo server's synthetic agent.
const MAX_EVENTS: u64 = 1_000_000;
const MAX_INTERVAL_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Synthetic {
    events: u64,
    #[serde(default)]
    interval_ms: u64,
}

pub async fn serve(stream: TcpStream, hub: Arc<Hub>, verifier: Arc<Verifier>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024);
    let mut user = None;
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    let callback = |request: &_, response| verifier.handshake(request, response, &mut user);
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(error) => {
            log::debug!("handshake failed: {error}");
            return;
        }
    };
    let Some(user) = user else { return };
    let (mut sink, mut source) = ws.split();
    let (outbox, mut inbox) = mpsc::unbounded_channel::<Message>();
    let session_id = hub.attach(&user, outbox.clone());

    let writer = tokio::spawn(async move {
        while let Some(message) = inbox.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            // Write whatever else is already queued, then flush once.
            while let Ok(message) = inbox.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(Ok(message)) = source.next().await {
        // Pings are answered by tungstenite; close replies too. Binary frames are ignored.
        if let Message::Text(text) = message {
            handle(&hub, &user, &outbox, text.as_str());
        }
    }
    hub.detach(&user, session_id);
    drop(outbox);
    let _ = writer.await;
}

fn error(outbox: &Outbox, code: &str, message: &str, client_ref: Option<&Value>) {
    let frame = Control::Error {
        code,
        message,
        client_ref,
    };
    let _ = outbox.send(frame.message());
}

fn handle(hub: &Arc<Hub>, user: &str, outbox: &Outbox, frame: &str) {
    let Ok(value) = serde_json::from_str::<Value>(frame) else {
        return error(outbox, "bad_json", "the message is not valid JSON", None);
    };
    let Some(object) = value.as_object() else {
        return error(outbox, "bad_frame", "expected a JSON object", None);
    };
    let client_ref = object.get("ref").filter(|r| !r.is_null());
    match object.get("type").and_then(Value::as_str) {
        Some("ping") => {
            let _ = outbox.send(Control::Pong { client_ref }.message());
        }
        Some("start_agent") => start_agent(hub, user, outbox, object, client_ref),
        Some(other) => error(
            outbox,
            "unsupported",
            &format!("the baseline server does not handle `{other}`"),
            client_ref,
        ),
        None => error(outbox, "bad_frame", "missing string field `type`", None),
    }
}

fn start_agent(
    hub: &Arc<Hub>,
    user: &str,
    outbox: &Outbox,
    frame: &Map<String, Value>,
    client_ref: Option<&Value>,
) {
    let Some(user_request) = frame.get("user_request").and_then(Value::as_str) else {
        let message = "`user_request` must be a string";
        return error(outbox, "invalid_field", message, client_ref);
    };
    let thread_id = match frame.get("thread_id") {
        None | Some(Value::Null) => random_hex("thread_"),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        Some(_) => {
            let message = "`thread_id` must be a string of 1 to 128 bytes";
            return error(outbox, "invalid_field", message, client_ref);
        }
    };
    let Some(spec) = frame.get("context").and_then(|c| c.get("synthetic")) else {
        let message = "the baseline server only runs `context.synthetic`";
        return error(outbox, "unsupported", message, client_ref);
    };
    let Ok(spec) = Synthetic::deserialize(spec) else {
        let message = "context.synthetic must be {\"events\": N, \"interval_ms\": X}";
        return error(outbox, "invalid_field", message, client_ref);
    };
    let Some(epoch) = hub.epoch(user) else { return };
    let started = Started {
        user_request,
        client_ref,
    };
    let started = serde_json::to_string(&started).expect("agent_started data serializes");
    let run = RunSpec {
        user: user.to_owned(),
        epoch,
        thread_id,
        started,
        events: spec.events.clamp(2, MAX_EVENTS),
        interval: Duration::from_millis(spec.interval_ms.min(MAX_INTERVAL_MS)),
    };
    tokio::spawn(synthetic_run(Arc::clone(hub), run));
}

/// `agent_started`'s data, fields in agentwire's order.
#[derive(Serialize)]
struct Started<'a> {
    user_request: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    client_ref: Option<&'a Value>,
}

struct RunSpec {
    user: String,
    epoch: String,
    thread_id: String,
    /// The encoded data of `agent_started`.
    started: String,
    events: u64,
    interval: Duration,
}

/// `agent_started`, N − 2 `agent_thinking`, `agent_completed`, `interval` apart (flat out
/// when zero, yielding every 64 events). Stops when the user has no socket left.
async fn synthetic_run(hub: Arc<Hub>, run: RunSpec) {
    let began = Instant::now();
    let run_id = random_hex("run_");
    let emitter = RunEmitter::new(&hub, run.user, run.epoch, &run.thread_id, &run_id);
    if !emitter.emit("agent_started", &run.started) {
        return;
    }
    // The n-th event is due n·interval after the start (a fixed schedule, as agentwire's
    // demo agent keeps), so timer slack never lowers the offered rate.
    let due = |n: u64| began + run.interval * u32::try_from(n).unwrap_or(u32::MAX);
    for n in 1..=run.events - 2 {
        if !run.interval.is_zero() {
            tokio::time::sleep_until(due(n).into()).await;
        } else if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
        let data = format!("{{\"text\":\"synthetic event {n}\"}}");
        if !emitter.emit("agent_thinking", &data) {
            return;
        }
    }
    if !run.interval.is_zero() {
        tokio::time::sleep_until(due(run.events - 1).into()).await;
    }
    let data = format!(
        "{{\"answer\":\"synthetic run of {} events done\",\"duration_ms\":{}}}",
        run.events,
        began.elapsed().as_millis()
    );
    emitter.emit("agent_completed", &data);
}
