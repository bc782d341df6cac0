//! `/metrics` over real sockets: the Prometheus text the operator routes serve, parsed and
//! compared value by value after a known sequence of connects, runs and closes.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_bounded_labels() {
    let server = TestServer::start();
    let (status, _) = common::http(server.addr, "GET", "/metrics", None, "").await;
    assert_eq!(status, 401, "metrics need the admin token");
    let mut jo = server.connect("jo-secret-user-name").await;
    jo.send(json!({ "type": "start_agent", "user_request": "golden" }))
        .await;
    jo.collect_run().await;
    jo.send(json!({ "type": "ping" })).await;
    jo.expect("pong").await;
    let kay = server.connect("kay").await;
    kay.abort();
    server.wait_for_sessions(1).await;
    let metrics = server.metrics().await;
    // jo's golden run: one event of each type but agent_error, all delivered live (the
    // start_agent ended the resume hold before the run began).
    let mut expected = vec![
        ("agentwire_sessions", 1.0),
        ("agentwire_users", 2.0),
        ("agentwire_connects_total", 2.0),
        ("agentwire_disconnects_total{code=\"1006\"}", 1.0),
        ("agentwire_delivery_latency_seconds_count", 5.0),
        ("agentwire_actor_restarts_total", 0.0),
        ("agentwire_escalations_total", 0.0),
        ("agentwire_backlog{kind=\"registry\"}", 0.0),
        ("agentwire_backlog{kind=\"user\"}", 0.0),
        ("agentwire_backlog{kind=\"session\"}", 0.0),
    ];
    let types = [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_error",
    ];
    let published: Vec<(String, f64)> = types
        .iter()
        .flat_map(|t| {
            let n = if *t == "agent_error" { 0.0 } else { 1.0 };
            [
                (
                    format!("agentwire_events_published_total{{type=\"{t}\"}}"),
                    n,
                ),
                (
                    format!("agentwire_events_delivered_total{{type=\"{t}\"}}"),
                    n,
                ),
            ]
        })
        .collect();
    expected.extend(published.iter().map(|(s, n)| (s.as_str(), *n)));
    for (series, value) in expected {
        assert_eq!(metrics.get(series), value, "{series}");
    }
    // Only the one close so far, and nothing dropped.
    assert_eq!(metrics.series("agentwire_disconnects_total").len(), 1);
    assert!(metrics.series("agentwire_events_dropped_total").is_empty());
    // Bounded labels only: no user id anywhere.
    assert!(
        !metrics.text().contains("jo-secret"),
        "no user ids in metrics"
    );
}
