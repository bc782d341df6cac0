//! Correctly signed tokens with extreme claim values, presented on real upgrade requests:
//! each is answered (101 or 401), never with a dropped connection, and the server goes on
//! serving. `src/auth_fuzz.rs` fuzzes the same authenticator directly.

mod common;

use common::{Client, TestServer, SECRET};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error;

/// A token signed with the test server's secret, carrying exactly `claims`.
fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// The HTTP status the upgrade with `token` gets (101 when a socket opened).
async fn upgrade_status(server: &TestServer, token: &str) -> u16 {
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("the upgrade got no answer: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_past_what_the_clock_can_hold_gets_401_and_the_server_goes_on() {
    let server = TestServer::start();
    for exp in [json!(1u64 << 63), json!(u64::MAX)] {
        let token = signed(json!({ "sub": "far", "exp": exp }));
        assert_eq!(upgrade_status(&server, &token).await, 401, "exp {exp}");
    }
    // Still serving, on every worker.
    for i in 0..4 {
        server.connect(&format!("after-{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_claim_values_get_401() {
    let server = TestServer::start();
    let now = jsonwebtoken::get_current_timestamp();
    let refused = [
        json!({ "sub": "odd", "exp": -1 }),
        json!({ "sub": "odd", "exp": i64::MIN }),
        json!({ "sub": "odd", "exp": now as f64 + 3600.5 }),
        json!({ "sub": "odd", "exp": 1e300 }),
        json!({ "sub": "odd", "exp": "tomorrow" }),
        json!({ "sub": "odd", "exp": null }),
        json!({ "sub": "odd", "exp": now + 3600, "nbf": u64::MAX }),
        json!({ "sub": "odd", "exp": now + 3600, "nbf": -1 }),
        json!({ "sub": 7, "exp": now + 3600 }),
        json!({ "sub": "x".repeat(257), "exp": now + 3600 }),
    ];
    for claims in refused {
        let status = upgrade_status(&server, &signed(claims.clone())).await;
        assert_eq!(status, 401, "claims {claims}");
    }
    server.connect("after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_exp_the_clock_can_hold_is_accepted() {
    let server = TestServer::start();
    let token = signed(json!({ "sub": "forever", "exp": i64::MAX }));
    let mut client = Client::connect_subprotocol(&server.ws_url(), &token).await;
    assert_eq!(client.welcome["user_id"], "forever");
    client.send(json!({ "type": "ping", "ref": 1 })).await;
    assert_eq!(client.expect("pong").await["ref"], 1);
}
