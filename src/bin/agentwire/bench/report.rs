//! What a benchmark run measured, and how it is shown: a short table on stdout and a JSON
//! file with stable field names (the SVG chart is `chart`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::ClientRecord;
use super::node_metrics::NodeMetrics;
use super::server::ProcessUsage;
use super::{BenchArgs, Scenario};

/// The figures of one scenario against one server.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The server, and for the slow-consumer scenario which pass (`reference` or `slow`).
    pub target: String,
    pub scenario: String,
    pub sockets: usize,
    pub connected: usize,
    pub failed: usize,
    pub events: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misdelivered: u64,
    pub unfinished_runs: u64,
    /// Runs that ended with `agent_completed`.
    pub runs_completed: u64,
    /// Runs that ended with `agent_error`, by error code (the server refused or cut them,
    /// for example `engine_unavailable` when the Redis engine's publish queue was full).
    pub runs_failed: BTreeMap<String, u64>,
    pub delivered_per_sec: f64,
    pub latency_us: Percentiles,
    /// Connections per second during the ramp.
    pub connects_per_sec: f64,
    /// Churn scenario: complete connections (handshake to welcome, then close) per second
    /// while the load ran.
    pub churn_connects_per_sec: Option<f64>,
    /// Server processes: 1, or the nodes of a cluster.
    pub nodes: usize,
    /// The open sessions each node counted when the ramp ended (from its `/metrics`; empty
    /// for a server that has none).
    pub sessions_per_node: Vec<u64>,
    /// Growth of the server's RSS (summed over its processes) over the ramp, per socket.
    pub server_rss_bytes_per_socket: Option<f64>,
    /// The server's CPU (summed over its processes) during the load, per event.
    pub server_cpu_us_per_event: Option<f64>,
    /// Redis's own CPU (`INFO cpu`, user plus system) during the load, per event: cluster
    /// runs only.
    pub redis_cpu_us_per_event: Option<f64>,
    /// The Redis engine's repairs during the load, over all nodes: cluster runs only.
    pub engine: Option<EngineCounters>,
    /// Where the server says events waited during the load, from its own histograms
    /// (agentwire only): p50 and p99 in milliseconds of `written` (emission to the
    /// socket write), and of `inbox` and `outbox` (the wait in each queue, servers built
    /// with the `stage-times` feature). Interpolated within buckets that double.
    pub server_waits_ms: BTreeMap<&'static str, [f64; 2]>,
    /// The load generator's own CPU (user plus system) during the load, per event: what it
    /// takes from the cores it shares with the server.
    pub generator_cpu_us_per_event: Option<f64>,
    /// Events received in each second of the load phase.
    pub throughput_per_sec: Vec<u64>,
    /// The first few client errors, for diagnosis.
    pub errors: Vec<String>,
}

/// What the Redis engine repaired during the load, summed over the nodes (from their
/// `/metrics`): none of it is visible to a client when the repair works.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct EngineCounters {
    /// Gaps in a user's pub/sub stream filled from history.
    pub gaps_repaired: u64,
    /// Streams continued at a new position (clients told `resync_required`).
    pub resyncs: u64,
    /// Failed Redis operations.
    pub errors: u64,
}

impl EngineCounters {
    /// The growth of each counter from `before` to `after` (both node by node).
    pub fn between(before: &[NodeMetrics], after: &[NodeMetrics]) -> EngineCounters {
        let mut counters = EngineCounters {
            gaps_repaired: 0,
            resyncs: 0,
            errors: 0,
        };
        for (b, a) in before.iter().zip(after) {
            counters.gaps_repaired += a.gaps_repaired.saturating_sub(b.gaps_repaired);
            counters.resyncs += a.resyncs.saturating_sub(b.resyncs);
            counters.errors += a.engine_errors.saturating_sub(b.engine_errors);
        }
        counters
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Outcome {
    pub(super) fn new(
        target: String,
        scenario: Scenario,
        records: Vec<ClientRecord>,
        phases: (Duration, Duration, Duration),
        usage: (
            Option<ProcessUsage>,
            Option<ProcessUsage>,
            Option<ProcessUsage>,
        ),
    ) -> Outcome {
        let (ramp, load_offset, _) = phases;
        let (before, connected_usage, after) = usage;
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut timeline: Vec<u64> = Vec::new();
        let mut outcome = Outcome {
            target,
            scenario: format!("{scenario:?}").to_lowercase(),
            sockets: records.len(),
            connected: 0,
            failed: 0,
            events: 0,
            lost: 0,
            duplicated: 0,
            misdelivered: 0,
            unfinished_runs: 0,
            runs_completed: 0,
            runs_failed: BTreeMap::new(),
            delivered_per_sec: 0.0,
            latency_us: Percentiles {
                p50: 0,
                p90: 0,
                p99: 0,
                p99_9: 0,
                max: 0,
            },
            connects_per_sec: 0.0,
            churn_connects_per_sec: None,
            nodes: 1,
            sessions_per_node: Vec::new(),
            server_rss_bytes_per_socket: None,
            server_cpu_us_per_event: None,
            redis_cpu_us_per_event: None,
            engine: None,
            server_waits_ms: BTreeMap::new(),
            generator_cpu_us_per_event: None,
            throughput_per_sec: Vec::new(),
            errors: Vec::new(),
        };
        for record in &records {
            if record.connected {
                outcome.connected += 1;
            } else {
                outcome.failed += 1;
            }
            outcome.events += record.events;
            outcome.lost += record.lost;
            outcome.duplicated += record.duplicated;
            outcome.misdelivered += record.misdelivered;
            outcome.unfinished_runs += record.unfinished_runs;
            outcome.runs_completed += record.runs_completed;
            for (code, count) in &record.runs_failed {
                *outcome.runs_failed.entry(code.clone()).or_default() += count;
            }
            let _ = latency.add(&record.latency_us);
            if timeline.len() < record.per_second.len() {
                timeline.resize(record.per_second.len(), 0);
            }
            for (second, count) in record.per_second.iter().enumerate() {
                timeline[second] += count;
            }
            if let Some(error) = &record.error {
                if outcome.errors.len() < 5 {
                    outcome.errors.push(error.clone());
                }
            }
        }
        let first = load_offset.as_secs() as usize;
        let active: Vec<u64> = timeline.into_iter().skip(first).collect();
        let last_busy = active.iter().rposition(|c| *c > 0).map_or(0, |i| i + 1);
        outcome.throughput_per_sec = active[..last_busy].to_vec();
        if last_busy > 0 {
            outcome.delivered_per_sec = outcome.events as f64 / last_busy as f64;
        }
        if !latency.is_empty() {
            outcome.latency_us = Percentiles {
                p50: latency.value_at_quantile(0.5),
                p90: latency.value_at_quantile(0.9),
                p99: latency.value_at_quantile(0.99),
                p99_9: latency.value_at_quantile(0.999),
                max: latency.max(),
            };
        }
        outcome.connects_per_sec = outcome.connected as f64 / ramp.as_secs_f64().max(1e-3);
        if let (Some(before), Some(connected)) = (before, connected_usage) {
            if outcome.connected > 0 {
                let grown = connected.rss_bytes.saturating_sub(before.rss_bytes);
                outcome.server_rss_bytes_per_socket = Some(grown as f64 / outcome.connected as f64);
            }
        }
        if let (Some(connected), Some(after)) = (connected_usage, after) {
            if outcome.events > 0 {
                let cpu = after.cpu_micros.saturating_sub(connected.cpu_micros);
                outcome.server_cpu_us_per_event = Some(cpu as f64 / outcome.events as f64);
            }
        }
        outcome
    }

    /// No event lost, duplicated, misdelivered, and every run ended.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.misdelivered == 0
            && self.unfinished_runs == 0
    }
}

/// A server-side wait's p50/p99 in milliseconds, or `n/a`.
fn waits(outcome: &Outcome, name: &str) -> String {
    outcome
        .server_waits_ms
        .get(name)
        .map_or("n/a".to_owned(), |[p50, p99]| format!("{p50:.2}/{p99:.2}"))
}

fn opt(value: Option<f64>, scale: f64, digits: usize) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{:.*}", digits, v / scale))
}

/// Prints the table (and ratios against the first target).
pub fn print(outcomes: &[Outcome]) {
    type Column = Box<dyn Fn(&Outcome) -> String>;
    let rows: Vec<(&str, Column)> = vec![
        (
            "sockets connected",
            Box::new(|o| format!("{}/{}", o.connected, o.sockets)),
        ),
        (
            "delivered events/s",
            Box::new(|o| format!("{:.0}", o.delivered_per_sec)),
        ),
        (
            "latency p50 ms",
            Box::new(|o| format!("{:.2}", o.latency_us.p50 as f64 / 1e3)),
        ),
        (
            "latency p90 ms",
            Box::new(|o| format!("{:.2}", o.latency_us.p90 as f64 / 1e3)),
        ),
        (
            "latency p99 ms",
            Box::new(|o| format!("{:.2}", o.latency_us.p99 as f64 / 1e3)),
        ),
        (
            "latency p99.9 ms",
            Box::new(|o| format!("{:.2}", o.latency_us.p99_9 as f64 / 1e3)),
        ),
        (
            "latency max ms",
            Box::new(|o| format!("{:.2}", o.latency_us.max as f64 / 1e3)),
        ),
        (
            "connects/s (ramp)",
            Box::new(|o| format!("{:.0}", o.connects_per_sec)),
        ),
        (
            "connects/s (churn, under load)",
            Box::new(|o| opt(o.churn_connects_per_sec, 1.0, 0)),
        ),
        ("server processes", Box::new(|o| o.nodes.to_string())),
        (
            "sessions per node (at load)",
            Box::new(|o| {
                if o.sessions_per_node.is_empty() {
                    "n/a".to_owned()
                } else {
                    let counts: Vec<String> =
                        o.sessions_per_node.iter().map(u64::to_string).collect();
                    counts.join("/")
                }
            }),
        ),
        (
            "server RSS KiB/socket",
            Box::new(|o| opt(o.server_rss_bytes_per_socket, 1024.0, 1)),
        ),
        (
            "server CPU µs/event",
            Box::new(|o| opt(o.server_cpu_us_per_event, 1.0, 2)),
        ),
        (
            "Redis CPU µs/event",
            Box::new(|o| opt(o.redis_cpu_us_per_event, 1.0, 2)),
        ),
        (
            "engine gaps repaired/resyncs/errors",
            Box::new(|o| {
                o.engine.map_or("n/a".to_owned(), |e| {
                    format!("{}/{}/{}", e.gaps_repaired, e.resyncs, e.errors)
                })
            }),
        ),
        (
            "server: emitted → written p50/p99 ms",
            Box::new(|o| waits(o, "written")),
        ),
        (
            "server: inbox wait p50/p99 ms",
            Box::new(|o| waits(o, "inbox")),
        ),
        (
            "server: outbox wait p50/p99 ms",
            Box::new(|o| waits(o, "outbox")),
        ),
        (
            "load generator CPU µs/event",
            Box::new(|o| opt(o.generator_cpu_us_per_event, 1.0, 2)),
        ),
        ("events checked", Box::new(|o| o.events.to_string())),
        (
            "runs completed/failed",
            Box::new(|o| {
                let failed: u64 = o.runs_failed.values().sum();
                format!("{}/{failed}", o.runs_completed)
            }),
        ),
        (
            "lost/dup/misdelivered/unfinished",
            Box::new(|o| {
                format!(
                    "{}/{}/{}/{}",
                    o.lost, o.duplicated, o.misdelivered, o.unfinished_runs
                )
            }),
        ),
    ];
    let width = outcomes
        .iter()
        .map(|o| o.target.chars().count())
        .max()
        .unwrap_or(0)
        .max(18)
        + 2;
    let mut header = format!(
        "{:<36}",
        outcomes.first().map_or("", |o| o.scenario.as_str())
    );
    for o in outcomes {
        let _ = write!(header, "{:>width$}", o.target);
    }
    println!("{header}");
    for (name, value) in &rows {
        let mut line = format!("{name:<36}");
        for o in outcomes {
            let _ = write!(line, "{:>width$}", value(o));
        }
        println!("{line}");
    }
    for pair in outcomes.chunks(2) {
        if let [reference, slow] = pair {
            if slow.target.ends_with("(slow)") && reference.latency_us.p99 > 0 {
                let change = slow.latency_us.p99 as f64 / reference.latency_us.p99 as f64 - 1.0;
                println!(
                    "{}: readers' p99 moved by {:+.1} % with a tenth of the sockets not reading",
                    slow.target.trim_end_matches(" (slow)"),
                    change * 100.0
                );
            }
        }
    }
    if let [a, b] = outcomes {
        if b.delivered_per_sec > 0.0 && !b.target.ends_with("(slow)") {
            println!(
                "throughput ratio {}/{}: {:.2}",
                a.target,
                b.target,
                a.delivered_per_sec / b.delivered_per_sec
            );
        }
    }
    for o in outcomes {
        for (code, count) in &o.runs_failed {
            eprintln!("{}: {count} run(s) ended with agent_error {code}", o.target);
        }
        for error in &o.errors {
            eprintln!("{}: client error: {error}", o.target);
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    scenario: String,
    sockets: usize,
    sockets_per_user: usize,
    nodes: u16,
    /// Whether agentwire ran on the Redis engine (the URL is not written: it may hold a
    /// password).
    redis: bool,
    events_per_run: u64,
    interval_ms: u64,
    duration_s: u64,
    results: &'a [Outcome],
}

/// The JSON report.
pub fn json(args: &BenchArgs, outcomes: &[Outcome]) -> String {
    let report = Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        sockets: args.sockets,
        sockets_per_user: args.sockets_per_user,
        nodes: args.nodes,
        redis: args.redis.is_some(),
        events_per_run: args.events,
        interval_ms: args.interval_ms,
        duration_s: args.duration_s,
        results: outcomes,
    };
    serde_json::to_string_pretty(&report).unwrap_or_default()
}
