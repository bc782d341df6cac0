//! The gate and the heartbeat over real sockets: tokens from each of the three places,
//! 401 before the upgrade for anything invalid, and silent clients dropped by the server.

mod common;

use std::time::Duration;

use common::{token, Client, TestServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn status_of(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => 101,
    }
}

fn with_subprotocol(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_forged_and_expired_tokens_get_401_before_the_upgrade() {
    let server = TestServer::start();
    let url = server.ws_url();

    // Each refused token names its own user, so one that got through would show up in the
    // registry under that name.
    assert_eq!(
        status_of(url.as_str().into_client_request().unwrap()).await,
        401
    );
    assert_eq!(
        status_of(with_subprotocol(&url, "jwt.not-a-jwt")).await,
        401
    );

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "forged-user", "exp": 4_000_000_000u64 }),
        &jsonwebtoken::EncodingKey::from_secret(b"some other secret"),
    )
    .unwrap();
    assert_eq!(
        status_of(with_subprotocol(&url, &format!("jwt.{forged}"))).await,
        401
    );

    let expired = token("expired-by-subprotocol", -3600);
    assert_eq!(
        status_of(with_subprotocol(&url, &format!("jwt.{expired}"))).await,
        401
    );
    let expired = token("expired-by-query", -3600);
    assert_eq!(
        status_of(
            format!("{url}?token={expired}")
                .into_client_request()
                .unwrap()
        )
        .await,
        401
    );

    let no_sub = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "exp": 4_000_000_000u64 }),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    assert_eq!(
        status_of(with_subprotocol(&url, &format!("jwt.{no_sub}"))).await,
        401
    );

    // A valid token is accepted (status 101), and it is the only user the registry ever
    // saw: nothing above reached it.
    assert_eq!(
        status_of(with_subprotocol(
            &url,
            &format!("jwt.{}", token("alice", 60))
        ))
        .await,
        101
    );
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let snapshot = loop {
        let snapshot = server.runtime.snapshot().await.unwrap();
        if !snapshot.users.is_empty() {
            break snapshot;
        }
        assert!(tokio::time::Instant::now() < deadline, "alice registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(snapshot.users.keys().collect::<Vec<_>>(), ["alice"]);
    let metrics = server.metrics().await;
    assert_eq!(metrics.get("agentwire_connects_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_from_subprotocol_header_and_query() {
    let server = TestServer::start();
    let url = server.ws_url();

    let by_protocol = Client::connect_subprotocol(&url, &token("p-user", 60)).await;
    assert_eq!(by_protocol.welcome["user_id"], "p-user");
    let echoed = by_protocol
        .subprotocol
        .as_deref()
        .expect("subprotocol echoed");
    assert!(echoed.starts_with("jwt.") && echoed.len() > 20, "{echoed}");

    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", token("h-user", 60))).unwrap(),
    );
    let by_header = Client::connect_request(request).await;
    assert_eq!(by_header.welcome["user_id"], "h-user");
    assert_eq!(by_header.subprotocol, None);

    let by_query = Client::connect_request(
        format!("{url}?token={}", token("q-user", 60))
            .into_client_request()
            .unwrap(),
    )
    .await;
    assert_eq!(by_query.welcome["user_id"], "q-user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_by_the_heartbeat_and_leaves_the_registry() {
    let server = TestServer::start_with(agentwire::Config {
        heartbeat_interval: Duration::from_millis(100),
        client_timeout: Duration::from_millis(800),
        resume_window: Duration::from_millis(300),
        ..agentwire::Config::default()
    });
    // `silent` never reads again, so it never answers a ping; `lively` keeps reading (the
    // client library answers pings while it reads).
    let silent = server.connect("quiet-user").await;
    let mut lively = server.connect("lively-user").await;
    server.wait_for_sessions(2).await;

    let lively_reader = tokio::spawn(async move {
        // Read for well past the timeout: pings arrive and are answered; nothing else comes.
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut other_frames = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(2500), async {
            while let Some(message) = lively.socket.next().await {
                match message {
                    Ok(Message::Ping(_)) => {}
                    other => other_frames.push(format!("{other:?}")),
                }
            }
        })
        .await;
        (lively, other_frames)
    });

    let snapshot = server.wait_for_sessions(1).await;
    assert_eq!(snapshot.users["lively-user"].sessions.len(), 1);
    // The quiet user's socket is gone; its actor outlives it for the resume window only.
    if let Some(quiet) = snapshot.users.get("quiet-user") {
        assert!(
            quiet.sessions.is_empty() && quiet.idle_ms.is_some(),
            "{snapshot:?}"
        );
    }
    server.wait_for_user_gone("quiet-user").await;

    let (mut lively, other_frames) = lively_reader.await.unwrap();
    assert!(
        other_frames.is_empty(),
        "the lively client got only pings: {other_frames:?}"
    );
    assert_eq!(server.wait_for_sessions(1).await.session_count(), 1);

    // The silent client's socket was closed with 4000. Its WebSocket library would try to
    // answer the queued pings first (and fail on the closed socket), so read the raw bytes
    // the server sent after the welcome: pings, then the close frame.
    assert_eq!(
        close_code_in_raw_stream(silent).await,
        agentwire::close_code::HEARTBEAT_TIMEOUT
    );
    lively.send(serde_json::json!({ "type": "ping" })).await;
    lively.expect("pong").await;
}

/// Reads a client's socket to EOF without answering anything and returns the code of the
/// close frame the server sent.
async fn close_code_in_raw_stream(client: Client) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut stream = match client.socket.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(stream) => stream,
        _ => unreachable!("tests use plain TCP"),
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("server closes the TCP connection")
        .expect("read");
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => panic!("no large frames expected"),
            n => (n as usize, 2),
        };
        let payload = &bytes[at + header..at + header + len];
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
        assert_eq!(opcode, 0x9, "only pings precede the close");
        at += header + len;
    }
    panic!("no close frame in {bytes:?}");
}
