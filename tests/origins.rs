//! The origin policy at the upgrade, over real connections: each `OriginPolicy`, requests
//! without an `Origin`, `Origin: null`, and origins that are not visible ASCII.

mod common;

use agentwire::{Config, OriginPolicy};
use common::TestServer;

/// The upgrade's answer (101 when upgraded) for a request carrying `origin` as raw bytes,
/// written by hand: client libraries refuse to send a header that is not visible ASCII.
async fn status(server: &TestServer, origin: Option<&[u8]>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n",
        common::token("o", 60),
        server.addr
    )
    .into_bytes();
    if let Some(origin) = origin {
        request.extend(b"Origin: ");
        request.extend(origin);
        request.extend(b"\r\n");
    }
    request.extend(b"\r\n");
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(common::PATIENCE, stream.read(&mut chunk))
            .await
            .expect("an answer within the patience window")
            .unwrap();
        assert!(n > 0, "the server answers before closing");
        response.extend_from_slice(&chunk[..n]);
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response[9..12].parse().unwrap();
    if status == 403 {
        // The body follows the head (Content-Length is set).
        let mut body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        while body.len() < "origin not allowed".len() {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        assert_eq!(body, "origin not allowed");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_accepts_the_servers_own_origin_and_no_origin_only() {
    let server = TestServer::start();
    let own = format!("http://{}", server.addr);
    assert_eq!(status(&server, Some(own.as_bytes())).await, 101);
    assert_eq!(
        status(&server, None).await,
        101,
        "non-browser clients send no Origin"
    );
    assert_eq!(status(&server, Some(b"https://evil.example")).await, 403);
    // Same host, another port.
    let other_port = format!("http://127.0.0.1:{}", server.addr.port() ^ 1);
    assert_eq!(status(&server, Some(other_port.as_bytes())).await, 403);
    // A sandboxed page or a file:// page sends `Origin: null`: no scheme, no host.
    assert_eq!(status(&server, Some(b"null")).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_accepts_exactly_the_listed_origins() {
    let server = TestServer::start_with(Config {
        origins: OriginPolicy::AllowList(vec!["https://app.example".into()]),
        ..Config::default()
    });
    assert_eq!(status(&server, Some(b"https://app.example")).await, 101);
    assert_eq!(status(&server, None).await, 101);
    // Exact, case-sensitive comparison: the server's own origin is not listed.
    let own = format!("http://{}", server.addr);
    assert_eq!(status(&server, Some(own.as_bytes())).await, 403);
    assert_eq!(status(&server, Some(b"https://APP.example")).await, 403);
    assert_eq!(status(&server, Some(b"https://app.example:443")).await, 403);
    assert_eq!(status(&server, Some(b"null")).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_accepts_every_ascii_origin_including_null() {
    let server = TestServer::start_with(Config {
        origins: OriginPolicy::Any,
        ..Config::default()
    });
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost:1",
        "not even a url",
    ] {
        assert_eq!(
            status(&server, Some(origin.as_bytes())).await,
            101,
            "{origin}"
        );
    }
    assert_eq!(status(&server, None).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_is_not_visible_ascii_is_refused_under_every_policy() {
    // `https://exämple.test` in UTF-8, as a browser never sends it (origins are ASCII,
    // with internationalized names in punycode).
    let non_ascii = "https://exämple.test".as_bytes();
    let policies = [
        OriginPolicy::SameHost,
        OriginPolicy::AllowList(vec!["https://exämple.test".into()]),
        OriginPolicy::Any,
    ];
    for policy in policies {
        let name = format!("{policy:?}");
        let server = TestServer::start_with(Config {
            origins: policy,
            ..Config::default()
        });
        assert_eq!(status(&server, Some(non_ascii)).await, 403, "{name}");
        // The same request without the Origin header is upgraded.
        assert_eq!(status(&server, None).await, 101, "{name}");
    }
}
