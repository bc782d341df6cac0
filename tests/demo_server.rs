//! The `agentwire` binary as a user runs it: a separate process on an ephemeral loopback
//! port, driven over real HTTP and WebSocket connections — the page, the demo login, the
//! simulated agent's realistic run, stop_agent, and the synthetic load contract.

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::net::SocketAddr;

use serve_process::spawn_serve;
use std::process::{Child, Command};

use common::{types, Client};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct DemoServer {
    child: Child,
    addr: SocketAddr,
}

impl DemoServer {
    fn start() -> DemoServer {
        let (child, addr) = spawn_serve(&[
            "--jwt-secret",
            "demo test secret",
            "--admin-token",
            "admin test token",
        ]);
        DemoServer { child, addr }
    }

    async fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.http_with(method, path, body, "").await
    }

    /// An HTTP/1.1 request; `headers` are extra header lines, each ending in `\r\n`.
    async fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &str,
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    async fn login(&self, user: &str) -> String {
        let (status, body) = self
            .http(
                "POST",
                "/demo/login",
                Some(&json!({ "user": user }).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn connect(&self, user: &str) -> Client {
        let token = self.login(user).await;
        Client::connect_subprotocol(&format!("ws://{}/ws", self.addr), &token).await
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_the_client_and_the_demo_login_are_served() {
    let server = DemoServer::start();
    let (status, page) = server.http("GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("/agentwire.js"));
    let (status, js) = server.http("GET", "/agentwire.js", None).await;
    assert_eq!(status, 200);
    assert!(js.contains("AgentwireClient"));

    let (status, _) = server
        .http("POST", "/demo/login", Some(r#"{"user":""}"#))
        .await;
    assert_eq!(status, 400, "an empty name is refused");
    let (status, _) = server.http("POST", "/demo/login", Some("nonsense")).await;
    assert_eq!(status, 400);
    let token = server.login("zoe").await;
    assert_eq!(token.split('.').count(), 3, "a JWT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_agent_answers_with_a_realistic_run() {
    let server = DemoServer::start();
    let mut zoe = server.connect("zoe").await;
    assert_eq!(zoe.welcome["user_id"], "zoe");

    zoe.send(json!({ "type": "start_agent", "user_request": "What is 6 times 7?" }))
        .await;
    let frames = zoe.collect_run().await;
    let kinds = types(&frames);
    assert_eq!(kinds.first(), Some(&"agent_started"));
    assert_eq!(kinds.last(), Some(&"agent_completed"));
    let thinking = kinds.iter().filter(|k| **k == "agent_thinking").count();
    let tools = kinds.iter().filter(|k| **k == "tool_executing").count();
    assert!(thinking >= 2, "streamed thinking: {kinds:?}");
    assert!((1..=2).contains(&tools), "one or two tool calls: {kinds:?}");
    // Every tool call completes, right after it started, with arguments and a result.
    for (i, frame) in frames.iter().enumerate() {
        if frame["type"] == "tool_executing" {
            assert!(frame["data"]["args"].is_object());
            let done = &frames[i + 1];
            assert_eq!(done["type"], "tool_completed");
            assert_eq!(done["data"]["tool_call_id"], frame["data"]["tool_call_id"]);
            assert_eq!(done["data"]["status"], "ok");
        }
    }
    let answer = frames.last().unwrap();
    assert!(answer["data"]["answer"].as_str().unwrap().len() > 20);
    let took = answer["data"]["duration_ms"].as_u64().unwrap();
    assert!(
        // Pauses happened (a floor); the ceiling only catches a run that never paced itself
        // and is loose for loaded machines.
        (500..=30_000).contains(&took),
        "a run with short pauses, took {took} ms"
    );

    // A follow-up on the same thread is answered too.
    let thread = frames[0]["thread_id"].clone();
    zoe.send(json!({ "type": "user_message", "content": "and why?", "thread_id": thread }))
        .await;
    let frames = zoe.collect_run().await;
    assert_eq!(frames[0]["thread_id"], thread);
    assert_eq!(frames.last().unwrap()["type"], "agent_completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_agent_stops_the_simulated_agent() {
    let server = DemoServer::start();
    let mut zoe = server.connect("zoe").await;
    zoe.send(json!({ "type": "start_agent", "user_request": "a long question" }))
        .await;
    let started = zoe.expect("agent_started").await;
    zoe.send(json!({ "type": "stop_agent", "run_id": started["run_id"] }))
        .await;
    let frames = zoe.collect_run().await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "agent_error");
    assert_eq!(last["data"]["code"], "cancelled");
    // Nothing of that run follows (the simulated agent is still pausing between steps when
    // it is stopped): the next event is the first of a new run, numbered right after the
    // cancellation.
    zoe.send(json!({
        "type": "start_agent",
        "user_request": "synthetic",
        "context": { "synthetic": { "events": 2, "interval_ms": 0 } }
    }))
    .await;
    let next = zoe.collect_run().await;
    assert_eq!(types(&next), ["agent_started", "agent_completed"]);
    assert_eq!(next[0]["seq"], last["seq"].as_u64().unwrap() + 1);
    assert_ne!(next[0]["run_id"], started["run_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_runs_follow_the_load_contract() {
    let server = DemoServer::start();
    let mut load = server.connect("load-1").await;

    load.send(json!({
        "type": "start_agent",
        "user_request": "synthetic",
        "context": { "synthetic": { "events": 500, "interval_ms": 0 } }
    }))
    .await;
    let frames = load.collect_run().await;
    assert_eq!(frames.len(), 500);
    assert_eq!(frames[0]["type"], "agent_started");
    assert!(frames[1..499].iter().all(|f| f["type"] == "agent_thinking"));
    assert_eq!(frames[499]["type"], "agent_completed");
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());

    load.send(json!({
        "type": "start_agent",
        "user_request": "synthetic",
        "context": { "synthetic": { "events": 5, "interval_ms": 30 } }
    }))
    .await;
    let frames = load.collect_run().await;
    assert_eq!(types(&frames).len(), 5);
    let took = frames[4]["data"]["duration_ms"].as_u64().unwrap();
    assert!(took >= 4 * 30, "paced 30 ms apart, took {took} ms");

    // A malformed synthetic context fails the run with a message, it does not hang.
    load.send(json!({
        "type": "start_agent",
        "user_request": "synthetic",
        "context": { "synthetic": { "events": "many" } }
    }))
    .await;
    let frames = load.collect_run().await;
    assert_eq!(types(&frames), ["agent_started", "agent_error"]);
    assert_eq!(frames[1]["data"]["code"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_tree_needs_the_admin_token_and_matches_the_sockets() {
    let server = DemoServer::start();
    let (status, _) = server.http("GET", "/debug/tree", None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .http_with(
            "GET",
            "/debug/tree",
            None,
            "Authorization: Bearer wrong\r\n",
        )
        .await;
    assert_eq!(status, 401);
    let zoe_token = server.login("zoe").await;
    let (status, _) = server
        .http_with(
            "GET",
            "/debug/tree",
            None,
            &format!("Authorization: Bearer {zoe_token}\r\n"),
        )
        .await;
    assert_eq!(status, 401, "a user's token is not the admin token");

    let _zoe1 = server.connect("zoe").await;
    let _zoe2 = server.connect("zoe").await;
    let _yan = server.connect("yan").await;
    let (status, body) = server
        .http_with(
            "GET",
            "/debug/tree",
            None,
            "Authorization: Bearer admin test token\r\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tree: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tree["kind"], "registry");
    let users = tree["children"].as_array().unwrap();
    let sessions_of = |id: &str| {
        users
            .iter()
            .find(|u| u["id"] == id)
            .map(|u| {
                assert_eq!(u["kind"], "user");
                u["children"].as_array().unwrap().len()
            })
            .unwrap_or(0)
    };
    assert_eq!(users.len(), 2);
    assert_eq!(sessions_of("zoe"), 2);
    assert_eq!(sessions_of("yan"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_socket_with_1012_and_exits() {
    let mut server = DemoServer::start();
    let mut clients = Vec::new();
    for user in ["sig-a", "sig-b", "sig-b"] {
        let mut client = server.connect(user).await;
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
        clients.push(client);
    }
    // A synthetic run in flight: what was sent before the signal arrives in order.
    clients[0]
        .send(json!({
            "type": "start_agent",
            "user_request": "synthetic",
            "context": { "synthetic": { "events": 100000, "interval_ms": 1 } }
        }))
        .await;
    let started = clients[0].expect("agent_started").await;
    clients[0].welcome["seq"] = started["seq"].clone();
    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: `kill` only sends a signal to the server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for client in &mut clients {
        let (frames, code) = client.frames_until_close().await;
        let first = client.welcome["seq"].as_u64().unwrap() + 1;
        let events: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
        assert!(
            events
                .iter()
                .copied()
                .eq(first..first + events.len() as u64),
            "no gap before the drain"
        );
        assert_eq!(code, agentwire::close_code::SERVICE_RESTART);
    }
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "agentwire serve exits cleanly after the drain: {exit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_tree_prints_the_live_tree() {
    let server = DemoServer::start();
    let _a = server.connect("tree-a").await;
    let _b = server.connect("tree-a").await;
    let _c = server.connect("tree-b").await;
    let url = format!("http://{}", server.addr);
    let tree = |format: &'static str, token: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_agentwire"))
                .args([
                    "tree",
                    "--url",
                    &url,
                    "--admin-token",
                    token,
                    "--format",
                    format,
                ])
                .output()
                .unwrap()
        })
    };
    let out = tree("json", "admin test token").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["sessions"], 3);
    assert_eq!(json["totals"]["users"], 2);

    let out = tree("text", "admin test token").await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("registry@local  engine=local users=2 sessions=3"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("session:")).count(), 3);

    let out = tree("dot", "admin test token").await.unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("digraph agentwire {"));

    let out = tree("text", "wrong token").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the admin token"));
}
