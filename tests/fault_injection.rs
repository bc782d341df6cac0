//! The fault injection route (`POST /debug/fault`) refuses what it must: a request without
//! the admin token before anything else, then a body that is not JSON or names no actor.
//! What an injected fault does is in `supervision.rs`.

mod common;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_needs_the_admin_token_before_anything_else() {
    let server = TestServer::start();
    let (status, _) = common::http(server.addr, "POST", "/debug/fault", Some("{oops"), "").await;
    assert_eq!(status, 401);
    let auth = format!("Authorization: Bearer {}\r\n", common::ADMIN);
    let (status, _) = common::http(server.addr, "POST", "/debug/fault", Some("{oops"), &auth).await;
    assert_eq!(status, 400);
    let body = r#"{"action":"crash_user","user":"nobody"}"#;
    let (status, _) = common::http(server.addr, "POST", "/debug/fault", Some(body), &auth).await;
    assert_eq!(status, 404);
}

/// `POST /debug/fault` with the body and the `Content-Type` line given, and the admin token;
/// the status and body of the answer.
async fn post_fault(server: &TestServer, content_type: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /debug/fault HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        server.addr,
        common::ADMIN,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap_or_default().1;
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_takes_only_a_json_body() {
    let server = TestServer::start();
    let _tess = server.connect("tess").await;
    let crash_tess = r#"{"action":"crash_user","user":"tess"}"#;
    for content_type in ["", "Content-Type: text/plain\r\n"] {
        let (status, body) = post_fault(&server, content_type, crash_tess).await;
        assert_eq!(status, 400, "{content_type:?}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    let events = server.runtime.supervision_events();
    assert!(events.is_empty(), "nothing was injected: {events:?}");

    let json = "Content-Type: application/json; charset=utf-8\r\n";
    let (status, body) = post_fault(&server, json, crash_tess).await;
    assert_eq!(status, 202, "{body}");
}
