//! Every limit in the limits table, over real sockets, each driven one past its value: the
//! limit holds at the value and the documented error or close code comes one past it.

mod common;

use std::time::Duration;

use agentwire::{close_code, Config, OriginPolicy};
use common::{connect_raw, first_close_code, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

/// A `ping` frame padded with spaces to exactly `len` bytes.
fn ping_of_len(len: usize) -> String {
    let base = r#"{"type":"ping"}"#;
    format!("{}{}", " ".repeat(len - base.len()), base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_frame_passes_and_one_byte_more_closes_with_1009() {
    let server = TestServer::start_with(Config {
        max_frame_bytes: 1024,
        ..Config::default()
    });
    let mut client = server.connect("big").await;
    client
        .send_frame(Data::Text, ping_of_len(1024).as_bytes(), true)
        .await;
    client.expect("pong").await;
    client
        .send_frame(Data::Text, ping_of_len(1025).as_bytes(), true)
        .await;
    assert_eq!(client.expect_close().await, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_assembled_within_the_same_limit() {
    let server = TestServer::start_with(Config {
        max_frame_bytes: 1024,
        ..Config::default()
    });
    let mut client = server.connect("frag").await;
    let whole = ping_of_len(1024);
    let (a, rest) = whole.as_bytes().split_at(400);
    let (b, c) = rest.split_at(400);
    client.send_frame(Data::Text, a, false).await;
    client.send_frame(Data::Continue, b, false).await;
    client.send_frame(Data::Continue, c, true).await;
    client.expect("pong").await;

    let over = ping_of_len(1025);
    let (a, b) = over.as_bytes().split_at(600);
    client.send_frame(Data::Text, a, false).await;
    client.send_frame(Data::Continue, b, true).await;
    assert_eq!(client.expect_close().await, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_with_1003_unless_the_app_opts_in() {
    let refusing = TestServer::start();
    let mut client = refusing.connect("bin").await;
    client
        .send_frame(Data::Binary, br#"{"type":"ping"}"#, true)
        .await;
    assert_eq!(client.expect_close().await, close_code::UNSUPPORTED_DATA);

    let accepting = TestServer::start_with(Config {
        accept_binary: true,
        ..Config::default()
    });
    let mut client = accepting.connect("bin").await;
    client
        .send_frame(Data::Binary, br#"{"type":"ping","ref":3}"#, true)
        .await;
    assert_eq!(client.expect("pong").await["ref"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_closes_with_1007_once_the_message_is_whole() {
    let server = TestServer::start();
    // A whole text frame.
    let mut client = server.connect("utf").await;
    client
        .send_frame(Data::Text, &[b'{', 0xff, 0xfe, b'}'], true)
        .await;
    assert_eq!(client.expect_close().await, close_code::INVALID_PAYLOAD);

    // A character split between two fragments is valid: only the whole message counts.
    let mut client = server.connect("utf").await;
    let message = r#"{"type":"ping","ref":"é"}"#.as_bytes();
    let split = message.iter().position(|&b| b == 0xC3).unwrap() + 1;
    client
        .send_frame(Data::Text, &message[..split], false)
        .await;
    client
        .send_frame(Data::Continue, &message[split..], true)
        .await;
    assert_eq!(client.expect("pong").await["ref"], "é");

    // A message that ends in the middle of a character.
    client
        .send_frame(Data::Text, br#"{"type":"ping","ref":"#, false)
        .await;
    client
        .send_frame(Data::Continue, &[b'"', b'"', b'}', 0xC3], true)
        .await;
    assert_eq!(client.expect_close().await, close_code::INVALID_PAYLOAD);

    // Invalid bytes in a middle fragment.
    let mut client = server.connect("utf").await;
    client.send_frame(Data::Text, b"{", false).await;
    client
        .send_frame(Data::Continue, &[0xC0, 0x80], false)
        .await;
    client.send_frame(Data::Continue, b"}", true).await;
    assert_eq!(client.expect_close().await, close_code::INVALID_PAYLOAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_binary_message_that_is_not_utf8_gets_bad_utf8_and_the_socket_stays_open() {
    let server = TestServer::start_with(Config {
        accept_binary: true,
        ..Config::default()
    });
    let mut client = server.connect("bin-utf").await;
    client
        .send_frame(Data::Binary, &[b'{', 0xff, 0xfe, b'}'], true)
        .await;
    assert_eq!(client.expect("error").await["code"], "bad_utf8");
    client.send(json!({ "type": "ping" })).await;
    client.expect("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_past_the_per_user_limit_is_refused_and_the_others_stay() {
    let server = TestServer::start_with(Config {
        max_sockets_per_user: 3,
        ..Config::default()
    });
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.connect("many").await);
    }
    let mut fourth = connect_raw(&server.ws_url(), "many").await;
    assert_eq!(
        first_close_code(&mut fourth).await,
        close_code::TOO_MANY_SOCKETS
    );
    for client in &mut open {
        client.send(json!({ "type": "ping" })).await;
        client.expect("pong").await;
    }
    // Another user is not affected by this user's limit.
    server.connect("other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_past_the_total_limit_is_refused_with_1013() {
    let server = TestServer::start_with(Config {
        max_sessions: 3,
        ..Config::default()
    });
    let _a = server.connect("t1").await;
    let _b = server.connect("t2").await;
    let _c = server.connect("t3").await;
    let mut fourth = connect_raw(&server.ws_url(), "t4").await;
    assert_eq!(
        first_close_code(&mut fourth).await,
        close_code::TRY_AGAIN_LATER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_cap_expires_the_longest_idle_user_or_refuses() {
    let server = TestServer::start_with(Config {
        max_users: 2,
        ..Config::default()
    });
    let first = server.connect("cap-1").await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    let second = server.connect("cap-2").await;
    // Both connected: a third user is refused.
    let mut third = connect_raw(&server.ws_url(), "cap-3").await;
    assert_eq!(
        first_close_code(&mut third).await,
        close_code::TRY_AGAIN_LATER
    );
    // cap-1 leaves (resume window running): the next new user expires it early.
    first.abort();
    server.wait_for_sessions(1).await;
    let _third = server.connect("cap-3").await;
    // cap-2 leaves too; cap-1 comes back (evicting cap-2), but its numbering is gone.
    second.abort();
    server.wait_for_sessions(1).await;
    let mut back = server.connect_resuming("cap-1", &epoch, 0).await;
    assert_ne!(back.welcome["epoch"], epoch.as_str());
    assert_eq!(
        back.expect("resync_required").await["seq"],
        0,
        "cap-1 was expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_the_rate_get_errors_then_sustained_abuse_closes_with_4008() {
    let server = TestServer::start_with(Config {
        inbound_rate: 1,
        inbound_burst: 5,
        ..Config::default()
    });
    let mut client = server.connect("fast-talker").await;
    for i in 0..5 {
        client.send(json!({ "type": "ping", "ref": i })).await;
    }
    for i in 0..5 {
        assert_eq!(client.expect("pong").await["ref"], i);
    }
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.expect("error").await["code"], "rate_limited");
    for _ in 0..3 {
        client.send(json!({ "type": "ping" })).await;
        assert_eq!(client.expect("error").await["code"], "rate_limited");
    }
    // The fifth rejection in a row closes.
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.expect_close().await, close_code::RATE_LIMITED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_past_the_threshold_close_with_1008() {
    let server = TestServer::start_with(Config {
        max_invalid_frames: 3,
        ..Config::default()
    });
    let mut client = server.connect("sloppy").await;
    for _ in 0..3 {
        client.send_frame(Data::Text, b"not json", true).await;
        assert_eq!(client.expect("error").await["code"], "bad_json");
    }
    client.send_frame(Data::Text, b"not json", true).await;
    assert_eq!(client.expect_close().await, close_code::POLICY_VIOLATION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_per_user_run_limit_get_too_many_runs() {
    let server = TestServer::start_with(Config {
        max_runs_per_user: 2,
        ..Config::default()
    });
    let mut tab1 = server.connect("busy").await;
    let mut tab2 = server.connect("busy").await;
    tab1.send(json!({ "type": "start_agent", "user_request": "wait" }))
        .await;
    let first = tab1.expect("agent_started").await;
    tab1.expect("agent_thinking").await;
    tab2.send(json!({ "type": "start_agent", "user_request": "wait" }))
        .await;
    tab2.expect("agent_started").await;
    tab2.expect("agent_thinking").await;
    // The limit is per user, across tabs.
    tab2.send(json!({ "type": "start_agent", "user_request": "wait", "ref": "third" }))
        .await;
    loop {
        let frame = tab2.next().await;
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "too_many_runs");
            assert_eq!(frame["ref"], "third");
            break;
        }
    }
    // Stopping one frees a slot once its handler returns.
    tab1.send(json!({ "type": "stop_agent", "run_id": first["run_id"] }))
        .await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        tab1.send(json!({ "type": "start_agent", "user_request": "stream:0" }))
            .await;
        let frame = loop {
            let frame = tab1.next().await;
            if frame["type"] == "error" || frame["type"] == "agent_started" {
                break frame;
            }
        };
        if frame["type"] == "agent_started" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a slot was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    async fn status(url: &str, origin: Option<&str>) -> u16 {
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(other) => panic!("{other}"),
        }
    }
    let same_host = TestServer::start();
    let url = format!("{}?token={}", same_host.ws_url(), common::token("o", 60));
    let own = format!("http://{}", same_host.addr);
    assert_eq!(status(&url, Some("https://evil.example")).await, 403);
    assert_eq!(status(&url, Some(&own)).await, 101);
    assert_eq!(
        status(&url, None).await,
        101,
        "non-browser clients send no Origin"
    );

    let listed = TestServer::start_with(Config {
        origins: OriginPolicy::AllowList(vec!["https://app.example".into()]),
        ..Config::default()
    });
    let url = format!("{}?token={}", listed.ws_url(), common::token("o", 60));
    assert_eq!(status(&url, Some("https://app.example")).await, 101);
    assert_eq!(
        status(&url, Some(&format!("http://{}", listed.addr))).await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_4002_when_its_token_expires() {
    let server = TestServer::start();
    let url = server.ws_url();
    let mut client = common::Client::connect_subprotocol(&url, &common::token("brief", 2)).await;
    let started = std::time::Instant::now();
    assert_eq!(client.expect_close().await, close_code::TOKEN_EXPIRED);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed at expiry, not at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outliving_several_heartbeats_still_closes_with_4002_at_expiry() {
    // The expiry close is armed by the heartbeat once the token has less than one interval
    // left: here after a few heartbeats, not at connect.
    let server = TestServer::start_with(Config {
        heartbeat_interval: Duration::from_millis(300),
        client_timeout: Duration::from_secs(10),
        ..Config::default()
    });
    let url = server.ws_url();
    let mut client = common::Client::connect_subprotocol(&url, &common::token("lasting", 2)).await;
    let started = std::time::Instant::now();
    assert_eq!(client.expect_close().await, close_code::TOKEN_EXPIRED);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed at expiry, not at once ({waited:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_comes_first_even_when_the_client_speaks_first() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start();
    for _ in 0..20 {
        let mut socket = connect_raw(&server.ws_url(), "eager").await;
        socket.send(Message::text("not json")).await.unwrap();
        socket
            .send(Message::text(r#"{"type":"ping","ref":1}"#))
            .await
            .unwrap();
        let mut kinds = Vec::new();
        while kinds.len() < 3 {
            if let Some(Ok(Message::Text(text))) = socket.next().await {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                kinds.push(frame["type"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(kinds, ["welcome", "error", "pong"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_128_bytes_pass_and_129_get_invalid_field() {
    let server = TestServer::start();
    let mut client = server.connect("ids").await;
    client
        .send(json!({ "type": "switch_thread", "thread_id": "t".repeat(128) }))
        .await;
    client.expect("thread_switched").await;
    client
        .send(json!({ "type": "switch_thread", "thread_id": "t".repeat(129), "ref": "long" }))
        .await;
    let error = client.expect("error").await;
    assert_eq!(error["code"], "invalid_field");
    assert_eq!(error["ref"], "long");
    client
        .send(json!({ "type": "ping", "ref": "r".repeat(129) }))
        .await;
    assert_eq!(client.expect("error").await["code"], "invalid_field");
}
