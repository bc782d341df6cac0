//! The test agent: the application handler of every test server, whose behaviour each
//! request's text picks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentwire::{AgentContext, AgentHandler, StartAgent};
use serde_json::json;

/// The test agent. The request text picks the behaviour:
/// - `golden`: every event type of a successful run;
/// - `stream:N`: N thinking events (awaiting `ready()` every 16), then completed;
/// - `drop`: a thinking event, then the run is dropped;
/// - `drop_tool`: a tool call is opened, then run and call are dropped;
/// - `panic`: a tool call is opened, then the handler panics;
/// - `wait`: waits (up to 30 s) for `stop_agent`, then returns;
/// - `fail`: the run fails;
/// - `pace:N:MS`: N thinking events MS milliseconds apart, then completed;
/// - `block:MS`: blocks the worker thread it runs on for MS milliseconds (what an
///   application must never do), with [`WORKER_BLOCKED`] set meanwhile; starts no run.
pub struct TestAgent;

/// Set while a `block:MS` request holds its worker thread.
pub static WORKER_BLOCKED: AtomicBool = AtomicBool::new(false);

impl AgentHandler for TestAgent {
    async fn start_agent(&self, ctx: AgentContext, request: StartAgent) {
        if let Some(ms) = request.user_request.strip_prefix("block:") {
            let ms = ms.parse().unwrap_or(1000);
            WORKER_BLOCKED.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            WORKER_BLOCKED.store(false, Ordering::SeqCst);
            return;
        }
        let run = ctx.start_run("test-agent");
        match request.user_request.as_str() {
            "golden" => {
                run.thinking("thinking about it");
                let call = run.tool("search", json!({ "q": "agentwire" }));
                call.complete(json!({ "hits": 3 }));
                run.complete("the answer");
            }
            "drop" => run.thinking("about to be dropped"),
            "drop_tool" => {
                let _call = run.tool("search", json!({}));
            }
            "panic" => {
                let _call = run.tool("search", json!({}));
                panic!("the test agent panics on purpose");
            }
            "wait" => {
                run.thinking("waiting to be stopped");
                let stopped = tokio::time::timeout(Duration::from_secs(30), run.cancelled()).await;
                if stopped.is_ok() {
                    // Ignored on the wire: the user's actor already ended the run.
                    run.thinking("after the stop");
                }
            }
            "fail" => run.fail("the test agent fails on purpose"),
            paced if paced.starts_with("pace:") => {
                let mut parts = paced
                    .split(':')
                    .skip(1)
                    .map(|n| n.parse::<u64>().unwrap_or(1));
                let (n, ms) = (parts.next().unwrap_or(1), parts.next().unwrap_or(10));
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    run.thinking(format!("step {i}"));
                }
                run.complete("paced");
            }
            other => {
                let n: usize = other
                    .strip_prefix("stream:")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                for i in 0..n {
                    if i % 16 == 0 {
                        // As a producer emitting in a tight loop should: wait while the
                        // engine has no room (with Redis, while the node's publish queue is
                        // half full or more).
                        run.ready().await;
                    }
                    run.thinking(format!("step {i}"));
                }
                run.complete("streamed");
            }
        }
    }
}
