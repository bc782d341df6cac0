//! The demo server's simulated agent.
//!
//! For a person, it answers `start_agent` and `user_message` with a realistic run: streamed
//! thinking, one or two tool calls with arguments and results, and a final answer, with short
//! pauses (about 1 to 3 s in all). For load tools, `start_agent` with
//! `context: {"synthetic": {"events": N, "interval_ms": X}}` emits `agent_started`, N−2
//! `agent_thinking` and `agent_completed`, X ms apart (0 = flat out) on a fixed schedule: the
//! n-th event is due n·X ms after the start, so timer slack never lowers the rate a load tool
//! asked for. Every pause gives way to `stop_agent`.

use std::time::Duration;

use tokio::time::Instant;

use agentwire::{AgentContext, AgentHandler, AgentRun, StartAgent};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

/// The most events one synthetic run may ask for.
pub const MAX_SYNTHETIC_EVENTS: u64 = 1_000_000;
/// The longest pause a synthetic run may ask for between events.
pub const MAX_SYNTHETIC_INTERVAL_MS: u64 = 60_000;

pub struct DemoAgent;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Synthetic {
    events: u64,
    #[serde(default)]
    interval_ms: u64,
}

impl AgentHandler for DemoAgent {
    async fn start_agent(&self, ctx: AgentContext, request: StartAgent) {
        let synthetic = request
            .context
            .as_ref()
            .and_then(|context| context.get("synthetic"))
            .cloned();
        match synthetic {
            Some(spec) => synthetic_run(ctx, spec).await,
            None => realistic_run(ctx, &request.user_request).await,
        }
    }
}

/// Waits `ms`, or returns false at once if the client stopped the run.
async fn pause(run: &AgentRun, ms: u64) -> bool {
    pause_until(run, Instant::now() + Duration::from_millis(ms)).await
}

/// Waits until `deadline`, or returns false at once if the client stopped the run.
async fn pause_until(run: &AgentRun, deadline: Instant) -> bool {
    tokio::select! {
        biased; // the timer first: polling the cancellation takes a lock
        _ = tokio::time::sleep_until(deadline) => true,
        _ = run.cancelled() => false,
    }
}

fn jitter(base: u64) -> u64 {
    base + rand::rng().random_range(0..=base / 2)
}

async fn realistic_run(ctx: AgentContext, question: &str) {
    let run = ctx.start_run("demo-assistant");
    let topic: String = question.chars().take(80).collect();
    let thoughts = [
        "Reading the question carefully".to_owned(),
        format!("The user wants to know about \"{topic}\""),
        "I should look this up before answering".to_owned(),
    ];
    for thought in &thoughts {
        if !pause(&run, jitter(120)).await {
            return;
        }
        run.thinking(thought.clone());
    }

    let search = run.tool("web_search", json!({ "query": topic, "max_results": 3 }));
    if !pause(&run, jitter(450)).await {
        return;
    }
    let results = json!([
        { "title": format!("{topic}: an overview"), "url": "https://example.com/overview" },
        { "title": format!("Frequently asked questions about {topic}"), "url": "https://example.com/faq" },
        { "title": "A worked example", "url": "https://example.com/example" }
    ]);
    search.complete(json!({ "results": results }));

    let has_numbers = question.chars().any(|c| c.is_ascii_digit());
    if has_numbers {
        let digits: u64 = question
            .chars()
            .filter_map(|c| c.to_digit(10))
            .map(u64::from)
            .sum();
        let calc = run.tool(
            "calculator",
            json!({ "expression": "sum of the digits in the question" }),
        );
        if !pause(&run, jitter(250)).await {
            return;
        }
        calc.complete(json!({ "value": digits }));
    } else {
        let read = run.tool(
            "read_page",
            json!({ "url": "https://example.com/overview" }),
        );
        if !pause(&run, jitter(300)).await {
            return;
        }
        read.complete(
            json!({ "words": 812, "summary": format!("A short introduction to {topic}.") }),
        );
    }

    if !pause(&run, jitter(150)).await {
        return;
    }
    run.thinking("Putting the answer together");
    if !pause(&run, jitter(200)).await {
        return;
    }
    run.complete(format!(
        "Here is what I found about \"{topic}\": the overview and the FAQ agree on the basics, \
         and the worked example shows it in practice. (This is the agentwire demo agent; \
         the sources are made up.)"
    ));
}

async fn synthetic_run(ctx: AgentContext, spec: serde_json::Value) {
    let run = ctx.start_run("synthetic");
    let spec: Synthetic = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(error) => {
            run.fail(format!(
                "context.synthetic must be {{\"events\": N, \"interval_ms\": X}}: {error}"
            ));
            return;
        }
    };
    let events = spec.events.clamp(2, MAX_SYNTHETIC_EVENTS);
    let interval = Duration::from_millis(spec.interval_ms.min(MAX_SYNTHETIC_INTERVAL_MS));
    let began = Instant::now();
    let due = |n: u64| began + interval * u32::try_from(n).unwrap_or(u32::MAX);
    // One timer and one cancellation waiter for the whole run, re-armed for each event,
    // rather than a new pair per event: a load tool's runs are mostly waiting.
    let finished = {
        let stopped = run.cancelled();
        let mut stopped = std::pin::pin!(stopped);
        let timer = tokio::time::sleep_until(began);
        let mut timer = std::pin::pin!(timer);
        let mut wait_until = async |deadline: Instant| {
            timer.as_mut().reset(deadline);
            tokio::select! {
                biased; // the timer first: polling the cancellation takes a lock
                () = timer.as_mut() => true,
                () = stopped.as_mut() => false,
            }
        };
        'emit: {
            for n in 1..=events - 2 {
                if !interval.is_zero() {
                    if !wait_until(due(n)).await {
                        break 'emit false;
                    }
                } else if n % 64 == 0 {
                    // Flat out, but never faster than the user's actor keeps up, and
                    // letting the worker's other tasks (and sockets) run.
                    run.ready().await;
                    tokio::task::yield_now().await;
                    if run.is_cancelled() {
                        break 'emit false;
                    }
                }
                run.thinking(format!("synthetic event {n}"));
            }
            interval.is_zero() || wait_until(due(events - 1)).await
        }
    };
    if !finished {
        return;
    }
    run.complete(format!("synthetic run of {events} events done"));
}
