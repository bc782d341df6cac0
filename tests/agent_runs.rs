//! Agent runs end to end over real sockets: the golden path, stop_agent, runs that end
//! without finishing, and bad client frames.

mod common;

use common::{seqs, types, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_path_delivers_every_event_in_order_with_one_run_id() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    assert_eq!(alice.welcome["user_id"], "alice");
    assert_eq!(alice.welcome["seq"], 0);
    assert_eq!(alice.welcome["protocol"], 1);
    let epoch = alice.welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16);

    alice
        .send(json!({ "type": "start_agent", "user_request": "golden", "thread_id": "t1", "ref": "r1" }))
        .await;
    let frames = alice.collect_run().await;
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
    let run_id = &frames[0]["run_id"];
    assert!(run_id.as_str().unwrap().starts_with("run_"));
    for frame in &frames {
        assert_eq!(&frame["run_id"], run_id);
        assert_eq!(frame["epoch"], epoch.as_str());
        assert_eq!(frame["thread_id"], "t1");
        assert_eq!(frame["agent_name"], "test-agent");
        let ts = frame["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "RFC 3339 µs UTC: {ts}");
    }
    assert_eq!(frames[0]["data"]["user_request"], "golden");
    assert_eq!(
        frames[0]["data"]["ref"], "r1",
        "the run names the request that started it"
    );
    assert_eq!(frames[2]["tool_name"], "search");
    assert_eq!(frames[2]["data"]["args"], json!({ "q": "agentwire" }));
    assert_eq!(frames[3]["tool_name"], "search");
    assert_eq!(
        frames[3]["data"]["tool_call_id"],
        frames[2]["data"]["tool_call_id"]
    );
    assert_eq!(frames[3]["data"]["status"], "ok");
    assert_eq!(frames[3]["data"]["result"], json!({ "hits": 3 }));
    assert_eq!(frames[4]["data"]["answer"], "the answer");

    // A second run continues the user's numbering.
    alice
        .send(json!({ "type": "user_message", "content": "stream:2", "thread_id": "t1" }))
        .await;
    let frames = alice.collect_run().await;
    assert_eq!(seqs(&frames), [6, 7, 8, 9]);
    assert_ne!(&frames[0]["run_id"], run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_agent_without_a_thread_gets_a_new_thread() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "stream:0" }))
        .await;
    let frames = alice.collect_run().await;
    let thread = frames[0]["thread_id"].as_str().unwrap();
    assert!(thread.starts_with("thread_"), "{thread}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_agent_cancels_the_run_and_nothing_follows() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "wait" }))
        .await;
    let started = alice.expect("agent_started").await;
    alice.expect("agent_thinking").await;
    let run_id = started["run_id"].as_str().unwrap();
    alice
        .send(json!({ "type": "stop_agent", "run_id": run_id, "ref": 1 }))
        .await;
    let error = alice.expect("agent_error").await;
    assert_eq!(error["run_id"], run_id);
    assert_eq!(error["data"]["code"], "cancelled");
    assert_eq!(error["seq"], 3);

    // The handler saw the cancellation and tried to emit once more; nothing of that run
    // may follow its agent_error. A ping proves the socket is otherwise live and ordered.
    alice.send(json!({ "type": "ping", "ref": "after" })).await;
    let pong = alice.expect("pong").await;
    assert_eq!(pong["ref"], "after");
    alice
        .send(json!({ "type": "start_agent", "user_request": "stream:0" }))
        .await;
    let next = alice.expect("agent_started").await;
    assert_eq!(next["seq"], 4, "no event of the stopped run was delivered");

    // Stopping it again (or any unknown run) is `not_found`.
    alice
        .send(json!({ "type": "stop_agent", "run_id": run_id, "ref": "again" }))
        .await;
    // The stream:0 run's completion and the error come from different sources, in either
    // order.
    let (a, b) = (alice.next().await, alice.next().await);
    let (completed, error) = if a["type"] == "error" { (b, a) } else { (a, b) };
    assert_eq!(completed["type"], "agent_completed");
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["ref"], "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_run_still_ends_with_agent_error() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;

    alice
        .send(json!({ "type": "start_agent", "user_request": "drop" }))
        .await;
    let frames = alice.collect_run().await;
    assert_eq!(
        types(&frames),
        ["agent_started", "agent_thinking", "agent_error"]
    );
    assert_eq!(frames[2]["data"]["code"], "dropped");

    alice
        .send(json!({ "type": "start_agent", "user_request": "drop_tool" }))
        .await;
    let frames = alice.collect_run().await;
    assert_eq!(
        types(&frames),
        [
            "agent_started",
            "tool_executing",
            "tool_completed",
            "agent_error"
        ]
    );
    assert_eq!(frames[2]["data"]["status"], "error");
    assert_eq!(frames[3]["data"]["code"], "dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_ends_its_run_and_the_socket_lives_on() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "panic" }))
        .await;
    let frames = alice.collect_run().await;
    assert_eq!(
        types(&frames),
        [
            "agent_started",
            "tool_executing",
            "tool_completed",
            "agent_error"
        ]
    );
    assert_eq!(frames[2]["data"]["status"], "error");
    assert_eq!(frames[3]["data"]["code"], "panicked");

    alice
        .send(json!({ "type": "start_agent", "user_request": "golden" }))
        .await;
    assert_eq!(alice.collect_run().await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_ends_with_code_failed() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "fail" }))
        .await;
    let frames = alice.collect_run().await;
    assert_eq!(types(&frames), ["agent_started", "agent_error"]);
    assert_eq!(frames[1]["data"]["code"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    let cases = [
        ("{oops", "bad_json"),
        ("[]", "bad_frame"),
        (r#"{"type":"nope","ref":5}"#, "unknown_type"),
        (r#"{"type":"stop_agent","ref":6}"#, "invalid_field"),
        (
            r#"{"type":"stop_agent","run_id":"run_x","ref":7}"#,
            "not_found",
        ),
    ];
    for (text, code) in cases {
        alice
            .socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let error = alice.expect("error").await;
        assert_eq!(error["code"], code, "for {text}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    alice.send(json!({ "type": "ping", "ref": 8 })).await;
    assert_eq!(alice.expect("pong").await["ref"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_server_without_an_agent_handler_get_unsupported() {
    let server = TestServer::start_without_handler(agentwire::Config::default());
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "hello", "ref": "s1" }))
        .await;
    let error = alice.expect("error").await;
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("unsupported"), &json!("s1"))
    );
    alice
        .send(json!({ "type": "user_message", "content": "hi", "thread_id": "t", "ref": 7 }))
        .await;
    let error = alice.expect("error").await;
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("unsupported"), &json!(7))
    );
    // Not an invalid frame: more of them than `max_invalid_frames` (20) leave the socket
    // open.
    for i in 0..21 {
        alice
            .send(json!({ "type": "start_agent", "user_request": "again", "ref": i }))
            .await;
        assert_eq!(alice.expect("error").await["ref"], i);
    }
    alice.send(json!({ "type": "ping", "ref": "open" })).await;
    assert_eq!(alice.expect("pong").await["ref"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_without_a_replay_buffer_answers_resync_required() {
    let server = TestServer::start();
    let mut alice = server.connect("alice").await;
    alice
        .send(json!({ "type": "start_agent", "user_request": "stream:1" }))
        .await;
    alice.collect_run().await;
    alice
        .send(json!({ "type": "resume", "epoch": "0000000000000000", "last_seq": 1 }))
        .await;
    let resync = alice.expect("resync_required").await;
    assert_eq!(resync["epoch"], alice.welcome["epoch"]);
    assert_eq!(resync["seq"], 3);
}

use futures_util::SinkExt;
