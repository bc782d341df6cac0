//! The live supervision tree over real sockets and the admin routes: it follows sockets as
//! clients come and go, names its node, and its DOT output is valid Graphviz.

mod common;

use std::time::Duration;

use agentwire::Config;
use common::engine::is_redis;
use common::TestServer;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_follows_sockets_as_clients_come_and_go() {
    let server = TestServer::start_with(Config {
        resume_window: Duration::from_millis(200),
        ..Config::default()
    });
    async fn counts(server: &TestServer) -> Vec<(String, usize)> {
        let (status, body) = server.admin_get("/debug/tree?format=json").await;
        assert_eq!(status, 200);
        let tree: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(tree["kind"], "registry");
        let mut counts: Vec<(String, usize)> = tree["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                assert_eq!(u["kind"], "user");
                let sessions = u["children"].as_array().unwrap();
                assert!(sessions.iter().all(|s| s["kind"] == "session"));
                (u["id"].as_str().unwrap().to_owned(), sessions.len())
            })
            .collect();
        counts.sort();
        counts
    }
    assert_eq!(counts(&server).await, []);
    let e1 = server.connect("erin").await;
    let e2 = server.connect("erin").await;
    let f1 = server.connect("finn").await;
    assert_eq!(
        counts(&server).await,
        [("erin".into(), 2), ("finn".into(), 1)]
    );
    drop(e1);
    server.wait_for_sessions(2).await;
    assert_eq!(
        counts(&server).await,
        [("erin".into(), 1), ("finn".into(), 1)]
    );
    drop(f1);
    server.wait_for_sessions(1).await;
    // finn lingers for his resume window with no sessions, then goes.
    assert_eq!(
        counts(&server).await,
        [("erin".into(), 1), ("finn".into(), 0)]
    );
    server.wait_for_user_gone("finn").await;
    assert_eq!(counts(&server).await, [("erin".into(), 1)]);
    let (_, text) = server.admin_get("/debug/tree?format=text").await;
    let lines: Vec<&str> = text.lines().collect();
    // The root names the node: `local` in process, its cluster id with Redis.
    let snapshot = server.runtime.snapshot().await.unwrap();
    let (node, engine) = if is_redis() {
        assert!(snapshot.node.starts_with("node_"), "{}", snapshot.node);
        (snapshot.node.as_str(), "redis")
    } else {
        ("local", "local")
    };
    assert!(
        lines[0].starts_with(&format!(
            "registry@{node}  engine={engine} users=1 sessions=1"
        )),
        "{text}"
    );
    assert!(lines[1].starts_with("└── user:erin  live"), "{text}");
    assert!(lines[2].starts_with("    └── session:"), "{text}");
    drop(e2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dot_output_is_valid_graphviz() {
    let server = TestServer::start();
    let _a = server.connect("gia").await;
    let _b = server.connect("gia").await;
    let _c = server.connect("hu \"quoted\" \\ name").await;
    let (status, dot) = server.admin_get("/debug/tree?format=dot").await;
    assert_eq!(status, 200);
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Graphviz `dot` is installed (scripts/test installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "dot rejected:\n{dot}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = String::from_utf8_lossy(&output.stdout);
    assert!(svg.contains("<svg") && svg.contains("user:gia"));
}
