//! Every limit in the limits table, over real sockets, each driven one past its value: the
//! limit holds at the value and the documented error or close code comes one past it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire::{close_code, Config};
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
async fn a_message_inside_an_unfinished_one_or_a_stray_continuation_closes_with_1002() {
    let server = TestServer::start();
    let ping = br#"{"type":"ping"}"#;
    // Each case: the frames a client sends (opcode, payload, final), all but the last
    // legal on their own.
    let cases: [&[(Data, &[u8], bool)]; 4] = [
        // A whole text message started inside a fragmented one.
        &[(Data::Text, b"{\"type\":", false), (Data::Text, ping, true)],
        // A first fragment started inside a fragmented one.
        &[
            (Data::Text, b"{\"type\":", false),
            (Data::Text, b"{", false),
        ],
        // A continuation with no message to continue.
        &[(Data::Continue, ping, false)],
        // A last fragment with no message to continue.
        &[(Data::Continue, ping, true)],
    ];
    for (i, frames) in cases.into_iter().enumerate() {
        let mut client = server.connect(&format!("framing-{i}")).await;
        for (opcode, payload, is_final) in frames {
            client.send_frame(*opcode, payload, *is_final).await;
        }
        assert_eq!(
            client.expect_close().await,
            close_code::PROTOCOL_ERROR,
            "case {i}"
        );
    }
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
    let snapshot = server.runtime.snapshot().await.unwrap();
    assert_eq!(
        snapshot.users.keys().collect::<Vec<_>>(),
        ["cap-2", "cap-3"],
        "cap-1 was expired"
    );
    // cap-2 leaves too; cap-1 comes back (evicting cap-2).
    second.abort();
    server.wait_for_sessions(1).await;
    let mut back = server.connect_resuming("cap-1", &epoch, 0).await;
    let snapshot = server.runtime.snapshot().await.unwrap();
    assert_eq!(
        snapshot.users.keys().collect::<Vec<_>>(),
        ["cap-1", "cap-3"],
        "cap-2 was expired"
    );
    if common::engine::is_redis() {
        // With Redis the stream lives in Redis, not in the expired actor: cap-1 finds its
        // numbering as it left it, and the resume is exact (nothing was missed).
        assert_eq!(back.welcome["epoch"], epoch.as_str());
        let resumed = back.expect("resumed").await;
        assert_eq!(
            (resumed["from_seq"].as_u64(), resumed["to_seq"].as_u64()),
            (Some(1), Some(0))
        );
    } else {
        // In process the numbering went with the actor.
        assert_ne!(back.welcome["epoch"], epoch.as_str());
        assert_eq!(back.expect("resync_required").await["seq"], 0);
    }
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

/// A token for `user` whose `exp` lies `whole_secs - 0.5` seconds from now (the function
/// first waits for the middle of a wall-clock second), and that expiry.
async fn token_expiring_soon(user: &str, whole_secs: u64) -> (String, SystemTime) {
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis((1500 - into_second) % 1000)).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let exp = now.as_secs() + whole_secs;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    (token, UNIX_EPOCH + Duration::from_secs(exp))
}

/// Asserts that a close observed at `closed_at` came at `expiry`: not before it (beyond the
/// clock's granularity), and not a heartbeat or the 5 s leeway later, with room for a
/// loaded machine.
fn assert_closed_at_expiry(closed_at: SystemTime, expiry: SystemTime) {
    let early = Duration::from_millis(50);
    let late = Duration::from_millis(1000);
    assert!(
        closed_at + early >= expiry,
        "closed {:?} before the token's exp",
        expiry.duration_since(closed_at).unwrap_or_default()
    );
    assert!(
        closed_at <= expiry + late,
        "closed {:?} after the token's exp",
        closed_at.duration_since(expiry).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_4002_when_its_token_expires() {
    // The token expires within the first heartbeat interval (10 s): the timer is armed
    // when the session starts.
    let server = TestServer::start();
    let (token, expiry) = token_expiring_soon("brief", 3).await;
    let mut client = common::Client::connect_subprotocol(&server.ws_url(), &token).await;
    assert_eq!(client.expect_close().await, close_code::TOKEN_EXPIRED);
    assert_closed_at_expiry(SystemTime::now(), expiry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outliving_several_heartbeats_still_closes_with_4002_at_expiry() {
    // Heartbeats at 3 s and 6 s after connecting; the token expires 7.5 s after it. The
    // 6 s heartbeat arms the close for the expiry itself, 1.5 s before the next heartbeat.
    let server = TestServer::start_with(Config {
        heartbeat_interval: Duration::from_secs(3),
        client_timeout: Duration::from_secs(10),
        ..Config::default()
    });
    let (token, expiry) = token_expiring_soon("lasting", 8).await;
    let mut client = common::Client::connect_subprotocol(&server.ws_url(), &token).await;
    assert_eq!(client.expect_close().await, close_code::TOKEN_EXPIRED);
    assert_closed_at_expiry(SystemTime::now(), expiry);
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
            let message = tokio::time::timeout(common::PATIENCE, socket.next())
                .await
                .expect("a frame within the patience window");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                    kinds.push(frame["type"].as_str().unwrap().to_owned());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected welcome, error, pong; got {other:?} after {kinds:?}"),
            }
        }
        assert_eq!(kinds, ["welcome", "error", "pong"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_the_welcome_are_held_up_to_the_limit_and_one_more_closes_with_1008() {
    let server = TestServer::start_with(Config {
        max_frames_before_welcome: 4,
        ..Config::default()
    });
    let pings = |n: usize| -> Vec<String> {
        (1..=n)
            .map(|i| format!(r#"{{"type":"ping","ref":{i}}}"#))
            .collect()
    };

    // At the limit: the welcome first, then all four answered in order.
    let (status, mut client) =
        common::pipelined::Pipelined::open(&server, "early-4", &pings(4)).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert_eq!(client.next_json().await["type"], "welcome");
    for i in 1..=4 {
        let pong = client.next_json().await;
        assert_eq!((&pong["type"], &pong["ref"]), (&json!("pong"), &json!(i)));
    }

    // One past the limit: closed with 1008, with no welcome (nor anything else) first.
    let (status, mut client) =
        common::pipelined::Pipelined::open(&server, "early-5", &pings(5)).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (opcode, payload) = client.next_frame().await.expect("a frame");
    assert_eq!(opcode, 0x8, "a close frame first, got {payload:?}");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        close_code::POLICY_VIOLATION
    );
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
    // A `ref` of 128 bytes is echoed unchanged, in a `pong` and in an `error`; one of 129
    // bytes is itself the invalid field, so nothing is echoed.
    let longest_ref = "r".repeat(128);
    client
        .send(json!({ "type": "ping", "ref": longest_ref }))
        .await;
    assert_eq!(client.expect("pong").await["ref"], longest_ref.as_str());
    client
        .send(json!({ "type": "stop_agent", "run_id": "", "ref": longest_ref }))
        .await;
    let error = client.expect("error").await;
    assert_eq!(error["code"], "invalid_field");
    assert_eq!(error["ref"], longest_ref.as_str());
    for bad_ref in [json!("r".repeat(129)), json!({}), json!([1]), json!(true)] {
        client.send(json!({ "type": "ping", "ref": bad_ref })).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], "invalid_field", "ref {bad_ref}");
        assert_eq!(error.get("ref"), None, "ref {bad_ref}");
    }
    // A `ref` of null is the same as none.
    client.send(json!({ "type": "ping", "ref": null })).await;
    assert_eq!(client.expect("pong").await, json!({ "type": "pong" }));
}
