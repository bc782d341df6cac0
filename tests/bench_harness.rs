//! `agentwire bench` as a user runs it: the load generator starts both servers itself, drives
//! a small flat-out load with several sockets per user, and every event it counts checks
//! out (none lost, duplicated, misdelivered, or left in a run that never ended).

use std::process::Command;

use serde_json::Value;

#[test]
fn a_multi_socket_fanout_bench_loses_nothing_and_leaves_no_run_unfinished() {
    let dir = std::env::temp_dir().join(format!("agentwire-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fanout.json");
    // 40 sockets, 4 per user: 10 users, each with one socket that drives runs flat out
    // and three that only read. When the load stops, every user has a run on its way.
    let output = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args([
            "bench",
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
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("agentwire bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "agentwire bench failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report["sockets_per_user"], 4);
    let results = report["results"].as_array().unwrap();
    let targets: Vec<&str> = results
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["agentwire", "baseline"]);
    for result in results {
        let target = &result["target"];
        assert_eq!(result["connected"], 40, "{target}: {result}");
        assert_eq!(result["failed"], 0, "{target}: {result}");
        for check in ["lost", "duplicated", "misdelivered", "unfinished_runs"] {
            assert_eq!(result[check], 0, "{target}: {check} in {result}");
        }
        // Every socket of a user gets every event of the user's runs: at least one whole
        // run of 1,000 events for each of the 40 sockets.
        assert!(
            result["events"].as_u64().unwrap() >= 40_000,
            "{target}: {result}"
        );
        assert_eq!(result["errors"], serde_json::json!([]), "{target}");
    }
}
