//! One benchmark client: a real WebSocket connection that drives synthetic runs through the
//! wire protocol and checks every event it counts (its own user's, contiguous `seq`, every
//! run it saw start also ends).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// How long after the load stops a socket keeps reading for the runs still on their way
/// to it; a run that has not ended by then is counted as unfinished.
const RUN_GRACE: Duration = Duration::from_secs(30);

/// What one client is asked to do.
#[derive(Clone)]
pub struct ClientPlan {
    pub server: SocketAddr,
    pub source: IpAddr,
    pub user: String,
    pub token: String,
    /// This socket starts the user's runs (one driver per user).
    pub drives_runs: bool,
    pub events_per_run: u64,
    pub interval_ms: u64,
    /// Counts clients past their welcome (or failed): the ramp is over when all are.
    pub ready: Arc<AtomicUsize>,
    /// Set once every client is connected: start runs (and keep the socket) until then.
    pub go: tokio::sync::watch::Receiver<Option<Instant>>,
    /// Stop reading entirely (a slow consumer) after the welcome.
    pub stop_reading: bool,
}

/// The fields of a server frame the checks read. Strings borrow from the frame where they
/// can, and the event's `data` is skipped without being built, so checking an event costs
/// the load generator (which shares the machine with the server) as little as possible.
#[derive(Deserialize)]
struct FrameView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

/// What one client saw.
pub struct ClientRecord {
    pub connected: bool,
    pub connect_time: Duration,
    pub events: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misdelivered: u64,
    pub unfinished_runs: u64,
    /// The driving socket only (so each run counts once): runs that ended with
    /// `agent_completed`, and those that ended with `agent_error`, by error code.
    pub runs_completed: u64,
    pub runs_failed: BTreeMap<String, u64>,
    pub latency_us: Histogram<u64>,
    /// Events received per whole second since the benchmark's start.
    pub per_second: Vec<u64>,
    pub error: Option<String>,
}

impl ClientRecord {
    fn new() -> Self {
        ClientRecord {
            connected: false,
            connect_time: Duration::ZERO,
            events: 0,
            lost: 0,
            duplicated: 0,
            misdelivered: 0,
            unfinished_runs: 0,
            runs_completed: 0,
            runs_failed: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            per_second: Vec::new(),
            error: None,
        }
    }
}

pub async fn run(mut plan: ClientPlan, bench_start: Instant) -> ClientRecord {
    let mut record = ClientRecord::new();
    if let Err(error) = drive(&mut plan, bench_start, &mut record).await {
        if !record.connected {
            plan.ready.fetch_add(1, Ordering::SeqCst);
        }
        record.error = Some(error);
    }
    record
}

async fn drive(
    plan: &mut ClientPlan,
    start: Instant,
    record: &mut ClientRecord,
) -> Result<(), String> {
    let began = Instant::now();
    let mut ws = open(plan.server, plan.source, &plan.token).await?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("first frame was not a welcome: {welcome}"));
    }
    record.connected = true;
    record.connect_time = began.elapsed();
    plan.ready.fetch_add(1, Ordering::SeqCst);
    let run_until = plan
        .go
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the benchmark ended before it started".to_owned())?
        .unwrap_or_else(Instant::now);
    let hold_until = run_until;
    let epoch = welcome["epoch"].as_str().unwrap_or_default().to_owned();
    let mut last_seq = welcome["seq"].as_u64().unwrap_or(0);
    let thread = format!("bench-{}", plan.user);
    if plan.stop_reading {
        // A client that stops reading: hold the socket, read nothing.
        tokio::time::sleep_until(hold_until.into()).await;
        return Ok(());
    }
    let start_run = |ws_thread: &str| {
        json!({
            "type": "start_agent",
            "user_request": "bench",
            "thread_id": ws_thread,
            "context": { "synthetic": { "events": plan.events_per_run, "interval_ms": plan.interval_ms } }
        })
        .to_string()
    };
    if plan.drives_runs && Instant::now() < run_until {
        if plan.interval_ms > 0 {
            // A random phase within one interval, so a thousand paced runs offer a steady
            // rate instead of a burst from every socket at the same millisecond.
            let phase = rand::random_range(0..plan.interval_ms * 1000);
            tokio::time::sleep(Duration::from_micros(phase)).await;
        }
        send(&mut ws, start_run(&thread)).await?;
    } else {
        // Ends the server's resume hold at once.
        send(&mut ws, json!({ "type": "ping" }).to_string()).await?;
    }
    // The runs this socket saw start and not yet end: the driver's own, and on a user's
    // other sockets the driver's runs as they arrive.
    let mut open_runs: Vec<String> = Vec::new();
    let mut runs_in_flight = u64::from(plan.drives_runs && Instant::now() < run_until);
    loop {
        // Every socket reads until each run it started, or saw start, has ended; the end
        // of a run can arrive well after the load stops (flat out, latency is the length
        // of the queue). Never wait forever: what has not ended by the grace is reported.
        let deadline = if runs_in_flight > 0 || !open_runs.is_empty() {
            run_until + RUN_GRACE
        } else {
            hold_until
        };
        let message = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => break,
            Ok(None) => return Err("the server closed the socket".into()),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => return Err(format!("closed by the server: {frame:?}")),
            _ => continue,
        };
        let received = SystemTime::now();
        let frame: FrameView<'_> =
            serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))?;
        let Some(seq) = frame.seq else {
            continue; // pong and other control frames
        };
        record.events += 1;
        let second = start.elapsed().as_secs() as usize;
        if record.per_second.len() <= second {
            record.per_second.resize(second + 1, 0);
        }
        record.per_second[second] += 1;
        if frame.epoch.as_deref() != Some(epoch.as_str())
            || frame.thread_id.as_deref() != Some(thread.as_str())
        {
            record.misdelivered += 1;
        }
        if seq <= last_seq {
            record.duplicated += 1;
        } else {
            record.lost += seq - last_seq - 1;
            last_seq = seq;
        }
        if let Some(ts) = &frame.timestamp {
            if let Ok(sent) = humantime::parse_rfc3339(ts) {
                let micros = received
                    .duration_since(sent)
                    .unwrap_or_default()
                    .as_micros();
                let _ = record.latency_us.record((micros as u64).max(1));
            }
        }
        let run_id = frame.run_id.as_deref().unwrap_or_default();
        match &*frame.kind {
            "agent_started" => open_runs.push(run_id.to_owned()),
            "agent_completed" | "agent_error" => {
                open_runs.retain(|r| r != run_id);
                if plan.drives_runs {
                    if frame.kind == "agent_completed" {
                        record.runs_completed += 1;
                    } else {
                        *record.runs_failed.entry(error_code(&text)).or_default() += 1;
                    }
                    runs_in_flight = runs_in_flight.saturating_sub(1);
                    if Instant::now() < run_until {
                        send(&mut ws, start_run(&thread)).await?;
                        runs_in_flight += 1;
                    }
                }
            }
            _ => {}
        }
        if runs_in_flight == 0 && Instant::now() >= hold_until && open_runs.is_empty() {
            break;
        }
    }
    record.unfinished_runs = open_runs.len() as u64;
    let _ = ws.close(None).await;
    Ok(())
}

/// The `data.code` of an `agent_error` frame (parsed again in full: errors are rare, and
/// the common path skips `data`).
fn error_code(frame: &str) -> String {
    serde_json::from_str::<Value>(frame)
        .ok()
        .and_then(|v| v["data"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(no code)".to_owned())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from `source` and upgrades with `token` as the `jwt.` subprotocol.
async fn open(server: SocketAddr, source: IpAddr, token: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!("ws://{server}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let protocol = HeaderValue::from_str(&format!("jwt.{token}")).map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

/// The clients' WebSocket settings: a 4 KiB read buffer instead of tungstenite's 128 KiB,
/// which it zeroes on every read; with a thousand clients on the server's machine that
/// memset alone cost more CPU than the server's whole event path.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return Err("no welcome within 30 s".into()),
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(None) => return Err("closed before the welcome".into()),
        }
    }
}

/// Connects, waits for the welcome, and leaves, over and over until `until`; returns how
/// many connections completed (handshake, token check, registration, welcome).
pub async fn churn(server: SocketAddr, source: IpAddr, token: String, until: Instant) -> u64 {
    let mut completed = 0;
    while Instant::now() < until {
        let attempt = async {
            let mut ws = open(server, source, &token).await?;
            let welcome = next_json(&mut ws).await?;
            let _ = ws.close(None).await;
            if welcome["type"] == "welcome" {
                Ok(())
            } else {
                Err("no welcome".to_owned())
            }
        };
        match attempt.await {
            Ok(()) => completed += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    completed
}
