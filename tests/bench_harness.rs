//! `agentwire bench` as a user runs it: the load generator starts both servers itself, drives
//! a small flat-out load with several sockets per user, and every event it counts checks
//! out (none lost, duplicated, misdelivered, or left in a run that never ended). The same
//! with agentwire as three nodes on one Redis (a real `redis-server` the test starts, or
//! one the bench starts itself), each user's sockets on different nodes.

#[path = "../src/engine/redis/test_server.rs"]
#[allow(dead_code)]
mod test_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use test_server::TestRedis;

/// Runs `agentwire bench` with `args` and `--json`, and returns its report.
fn bench(name: &str, args: &[&str]) -> (Output, Value) {
    let dir = std::env::temp_dir().join(format!(
        "agentwire-bench-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("agentwire bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "agentwire bench failed:\n{stdout}\n{stderr}"
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (output, report)
}

/// Every socket connected, and every event it counted checked out.
fn assert_all_checked(result: &Value, sockets: u64) {
    let target = &result["target"];
    assert_eq!(result["connected"], sockets, "{target}: {result}");
    assert_eq!(result["failed"], 0, "{target}: {result}");
    for check in ["lost", "duplicated", "misdelivered", "unfinished_runs"] {
        assert_eq!(result[check], 0, "{target}: {check} in {result}");
    }
    assert_eq!(result["errors"], serde_json::json!([]), "{target}");
}

/// Runs that ended, completed or failed, as the driving sockets counted them.
fn runs_ended(result: &Value) -> u64 {
    let failed: u64 = result["runs_failed"]
        .as_object()
        .expect("runs_failed is an object")
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    result["runs_completed"].as_u64().unwrap() + failed
}

/// The number of keys in database 0 of the Redis at `port` (`DBSIZE`).
fn keys_in(port: u16) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("Redis answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"DBSIZE\r\n").unwrap();
    let mut reply = Vec::new();
    let mut byte = [0];
    while !reply.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("a reply");
        reply.push(byte[0]);
    }
    let reply = String::from_utf8(reply).unwrap();
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("DBSIZE answered {reply}"))
}

#[test]
fn a_multi_socket_fanout_bench_loses_nothing_and_leaves_no_run_unfinished() {
    // 40 sockets, 4 per user: 10 users, each with one socket that drives runs flat out
    // and three that only read. When the load stops, every user has a run on its way.
    let (_, report) = bench(
        "fanout",
        &[
            "--scenario",
            "fanout",
            "--sockets",
            "40",
            "--sockets-per-user",
            "4",
            "--events",
            "1000",
            "--duration-s",
            "2",
            "--compare",
            "baseline",
        ],
    );
    assert_eq!(report["sockets_per_user"], 4);
    let results = report["results"].as_array().unwrap();
    let targets: Vec<&str> = results
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["agentwire", "baseline"]);
    for result in results {
        let target = &result["target"];
        assert_all_checked(result, 40);
        // Every socket of a user gets every event of the user's runs: at least one whole
        // run of 1,000 events for each of the 40 sockets.
        assert!(
            result["events"].as_u64().unwrap() >= 40_000,
            "{target}: {result}"
        );
        // Each user's runs counted once, on the socket that drives them: every user's
        // first run at least, and none cut short by the server.
        assert!(runs_ended(result) >= 10, "{target}: {result}");
        assert_eq!(result["runs_failed"], serde_json::json!({}), "{target}");
    }
}

#[test]
fn a_fanout_bench_on_three_nodes_and_one_redis_loses_nothing() {
    let redis = TestRedis::start();
    let url = redis.url();
    let port: u16 = url
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // 60 sockets, 3 per user: 20 users, each with one socket on each node; the users'
    // runs are driven from all three nodes, flat out.
    let (_, report) = bench(
        "cluster",
        &[
            "--scenario",
            "fanout",
            "--sockets",
            "60",
            "--sockets-per-user",
            "3",
            "--nodes",
            "3",
            "--redis",
            &url,
            "--events",
            "1000",
            "--duration-s",
            "3",
        ],
    );
    assert_eq!(report["nodes"], 3);
    assert_eq!(report["redis"], true);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let result = &results[0];
    assert_eq!(result["target"], "agentwire-redis (3 nodes)");
    assert_all_checked(result, 60);
    assert_eq!(result["nodes"], 3);
    // What each node counted itself: a third of the sockets.
    assert_eq!(result["sessions_per_node"], serde_json::json!([20, 20, 20]));
    // Every socket got at least its user's first whole run.
    assert!(result["events"].as_u64().unwrap() >= 60_000, "{result}");
    assert!(runs_ended(result) >= 20, "{result}");
    assert!(result["server_cpu_us_per_event"].as_f64().unwrap() > 0.0);
    assert!(result["redis_cpu_us_per_event"].as_f64().unwrap() > 0.0);
    assert_eq!(result["engine"]["resyncs"], 0, "{result}");
    // The run's keys are gone from a Redis the bench did not start.
    assert_eq!(keys_in(port), 0);
}

#[test]
fn a_cluster_bench_without_a_redis_url_starts_its_own_and_stops_it() {
    let (output, report) = bench(
        "own-redis",
        &[
            "--scenario",
            "paced",
            "--sockets",
            "20",
            "--sockets-per-user",
            "2",
            "--nodes",
            "2",
            "--redis",
            "--events",
            "20",
            "--interval-ms",
            "10",
            "--duration-s",
            "1",
            "--compare",
            "agentwire",
        ],
    );
    // The in-process engine beside the Redis one, in the same run.
    let results = report["results"].as_array().unwrap();
    let targets: Vec<&str> = results
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["agentwire-redis (2 nodes)", "agentwire"]);
    assert_all_checked(&results[0], 20);
    assert_all_checked(&results[1], 20);
    assert_eq!(results[0]["sessions_per_node"], serde_json::json!([10, 10]));
    assert_eq!(results[1]["redis_cpu_us_per_event"], Value::Null);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let address = stderr
        .lines()
        .find_map(|l| l.strip_prefix("redis-server started by the bench on "))
        .unwrap_or_else(|| panic!("the bench says where its Redis is:\n{stderr}"));
    assert!(
        TcpStream::connect(address.trim()).is_err(),
        "the bench's redis-server is gone once the bench has ended"
    );
}
