//! In-memory sockets: a real session, attached and fed like a TCP socket's, over in-process
//! streams. What a user checks: the handler is reached, events arrive in order and only to
//! their user, and a dropped socket leaves the registry.

mod common;

use std::time::Duration;

use agentwire::{InMemorySocket, JwtAuthenticator, Runtime, UserId};
use common::engine::TestRedis;
use common::{seqs, types, TestAgent};
use serde_json::{json, Value};

async fn next(socket: &mut InMemorySocket) -> Value {
    let text = tokio::time::timeout(common::PATIENCE, socket.recv())
        .await
        .expect("a frame in time")
        .expect("the connection is open");
    serde_json::from_str(&text).expect("JSON")
}

/// Frames up to and including the end of a run.
async fn run_frames(socket: &mut InMemorySocket) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next(socket).await;
        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
        if kind == "pong" || kind == "thread_switched" {
            continue;
        }
        frames.push(frame);
        if kind == "agent_completed" || kind == "agent_error" {
            return frames;
        }
    }
}

fn start(runtime_test: impl std::future::Future<Output = ()>) {
    actix_web::rt::System::new().block_on(runtime_test);
}

/// A runtime on the test engine, and its Redis (if any), to keep as long as the runtime.
fn runtime() -> (Runtime, Option<TestRedis>) {
    let builder = Runtime::builder(JwtAuthenticator::hs256(common::SECRET)).handler(TestAgent);
    let (builder, redis) = common::engine::on_test_engine(builder);
    (builder.start().expect("valid config"), redis)
}

#[test]
fn a_request_over_an_in_memory_socket_reaches_the_handler_and_its_run_comes_back_in_order() {
    start(async {
        let (runtime, _redis) = runtime();
        let mut socket = runtime.connect_in_memory(UserId::new("ines").unwrap());
        let welcome = next(&mut socket).await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["user_id"], "ines");
        let request = json!({ "type": "start_agent", "user_request": "golden" });
        assert!(socket.send(&request.to_string()).await);
        let frames = run_frames(&mut socket).await;
        assert_eq!(
            types(&frames),
            [
                "agent_started",
                "agent_thinking",
                "tool_executing",
                "tool_completed",
                "agent_completed"
            ]
        );
        assert_eq!(seqs(&frames), [1, 2, 3, 4, 5]);
    });
}

#[test]
fn in_memory_sockets_fan_out_per_user_and_leave_the_registry_when_dropped() {
    start(async {
        let (runtime, _redis) = runtime();
        let mut tabs = vec![
            runtime.connect_in_memory(UserId::new("jo").unwrap()),
            runtime.connect_in_memory(UserId::new("jo").unwrap()),
        ];
        let mut other = runtime.connect_in_memory(UserId::new("kai").unwrap());
        for socket in tabs.iter_mut().chain(std::iter::once(&mut other)) {
            assert_eq!(next(socket).await["type"], "welcome");
            assert!(socket.send(r#"{"type":"ping"}"#).await);
        }
        let run = runtime
            .user(UserId::new("jo").unwrap())
            .start_run("t", "app");
        run.thinking("for jo's tabs");
        run.complete("done");
        for socket in &mut tabs {
            let frames = run_frames(socket).await;
            assert_eq!(seqs(&frames), [1, 2, 3]);
            assert!(frames.iter().all(|f| f["thread_id"] == "t"));
        }
        // kai got nothing but the pong to its own ping.
        let pong = next(&mut other).await;
        assert_eq!(pong["type"], "pong");
        let nothing = tokio::time::timeout(Duration::from_millis(200), other.recv()).await;
        assert!(nothing.is_err(), "kai received {nothing:?}");

        assert_eq!(
            runtime.snapshot().await.unwrap().users["jo"].sessions.len(),
            2
        );
        drop(tabs);
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while !runtime.snapshot().await.unwrap().users["jo"]
            .sessions
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "dropped sockets stayed attached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
