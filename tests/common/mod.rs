//! Shared test harness: a real agentwire server on an ephemeral loopback port, real
//! WebSocket clients (tokio-tungstenite), tokens signed like an application would, and a
//! test agent whose behaviour is chosen by the request text.

#![allow(dead_code)]

pub mod agent;
pub mod engine;
pub mod metrics;
pub mod pipelined;

pub use agent::TestAgent;
use engine::TestRedis;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpServer};
use agentwire::{Config, JwtAuthenticator, Runtime};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test secret, long enough for HS256";

/// The admin token of the test server's debug routes.
pub const ADMIN: &str = "test admin token";

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A server running in its own thread, with its own actix system, on the test engine
/// (see [`engine`]).
pub struct TestServer {
    pub addr: SocketAddr,
    pub runtime: Runtime,
    system: actix_web::rt::System,
    /// The server's own Redis, when the tests run on the Redis engine; killed after the
    /// server stops.
    redis: Option<TestRedis>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Config::default())
    }

    pub fn start_with(config: Config) -> TestServer {
        Self::start_node(config, true)
    }

    /// A server whose runtime has no agent handler (`start_agent` is `unsupported`).
    pub fn start_without_handler(config: Config) -> TestServer {
        Self::start_node(config, false)
    }

    /// A node of a cluster on the Redis at `redis_url` (keys under `prefix`), whatever the
    /// test engine.
    pub fn start_clustered(config: Config, redis_url: &str, prefix: &str) -> TestServer {
        Self::start_on(
            config,
            true,
            Some((redis_url.to_owned(), prefix.to_owned())),
            None,
        )
    }

    /// A server on the test engine.
    fn start_node(config: Config, with_handler: bool) -> TestServer {
        let redis = engine::redis_for_runtime();
        let cluster = redis.as_ref().map(|r| (r.url(), engine::PREFIX.to_owned()));
        Self::start_on(config, with_handler, cluster, redis)
    }

    fn start_on(
        config: Config,
        with_handler: bool,
        redis: Option<(String, String)>,
        own_redis: Option<TestRedis>,
    ) -> TestServer {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let mut builder = Runtime::builder(JwtAuthenticator::hs256(SECRET)).config(config);
                if with_handler {
                    builder = builder.handler(TestAgent);
                }
                if let Some((url, prefix)) = redis {
                    builder = builder.redis(url).redis_prefix(prefix);
                }
                let runtime = builder.start().expect("valid config");
                let app_runtime = runtime.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .configure(agentwire::routes(app_runtime.clone()))
                        .configure(agentwire::debug_routes(app_runtime.clone(), ADMIN))
                })
                .workers(2)
                .disable_signals()
                .bind("127.0.0.1:0")
                .expect("bind loopback");
                let addr = server.addrs()[0];
                tx.send((addr, runtime, actix_web::rt::System::current()))
                    .expect("test alive");
                server.run().await.expect("server runs");
            });
        });
        let (addr, runtime, system) = rx.recv().expect("server started");
        TestServer {
            addr,
            runtime,
            system,
            redis: own_redis,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects as `user` with a valid token in the subprotocol.
    pub async fn connect(&self, user: &str) -> Client {
        Client::connect_subprotocol(&self.ws_url(), &token(user, 3600)).await
    }

    /// Connects as `user`, resuming at connect with `?epoch=&last_seq=`.
    pub async fn connect_resuming(&self, user: &str, epoch: &str, last_seq: u64) -> Client {
        let url = format!("{}?epoch={epoch}&last_seq={last_seq}", self.ws_url());
        Client::connect_subprotocol(&url, &token(user, 3600)).await
    }

    /// A handle for emitting to `user` from the application side.
    pub fn user(&self, user: &str) -> agentwire::UserHandle {
        self.runtime.user(agentwire::UserId::new(user).unwrap())
    }

    /// Waits until the registry reports `sessions` open sockets.
    pub async fn wait_for_sessions(&self, sessions: usize) -> agentwire::RegistrySnapshot {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let snapshot = self.runtime.snapshot().await.expect("runtime alive");
            if snapshot.session_count() == sessions {
                return snapshot;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {sessions} sessions, registry has {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl TestServer {
    /// Waits until `user`'s actor on this server has received their stream up to `seq`:
    /// at once on the in-process engine, which hands each event to the actor as it numbers
    /// it; the Redis engine numbers an event in Redis and delivers it through pub/sub, a
    /// moment after the emitter's call returned. Returns the stream's epoch.
    pub async fn wait_for_seq(&self, user: &str, seq: u64) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let snapshot = self.runtime.snapshot().await.expect("runtime alive");
            let stream = snapshot
                .users
                .get(user)
                .and_then(|u| u.stats.stream.clone());
            if let Some(stream) = stream.filter(|s| s.seq >= seq) {
                return stream.epoch;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user}'s stream never reached seq {seq}: {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `user` has no actor any more (its resume window ran out).
    pub async fn wait_for_user_gone(&self, user: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let snapshot = self.runtime.snapshot().await.expect("runtime alive");
            if !snapshot.users.contains_key(user) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} still has an actor: {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.system.stop();
    }
}

/// A JWT for `user` expiring `expires_in_secs` from now (negative: already expired).
pub fn token(user: &str, expires_in_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": now + expires_in_secs }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that records every frame it receives.
pub struct Client {
    pub socket: Socket,
    pub welcome: Value,
    /// The subprotocol the server answered with.
    pub subprotocol: Option<String>,
}

impl Client {
    pub async fn connect_subprotocol(url: &str, token: &str) -> Client {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&format!("jwt.{token}")).unwrap(),
        );
        Self::connect_request(request).await
    }

    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Client {
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade accepted");
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut client = Client {
            socket,
            welcome: Value::Null,
            subprotocol,
        };
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "first frame is the welcome");
        client.welcome = welcome;
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON; panics after [`PATIENCE`] or if the socket closes.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame within the patience window")
                .expect("socket open")
                .expect("frame ok");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame of type `kind`, skipping nothing: panics if another type comes first.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["type"], kind, "unexpected frame {frame}");
        frame
    }

    /// Frames until (and including) the terminal event of a run.
    pub async fn collect_run(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let done = matches!(
                frame["type"].as_str(),
                Some("agent_completed" | "agent_error")
            );
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Sends one raw WebSocket frame (fragments, invalid UTF-8, binary).
    pub async fn send_frame(&mut self, opcode: Data, payload: &[u8], is_final: bool) {
        let frame = Frame::message(payload.to_vec(), OpCode::Data(opcode), is_final);
        self.socket
            .send(Message::Frame(frame))
            .await
            .expect("send frame");
    }

    /// Drops the connection with a TCP reset: no close frame, as when a network dies.
    pub fn abort(self) {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        }
    }

    /// Reads every text frame until the server closes: the frames, parsed, and the close
    /// code. Each read waits at most the patience window.
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, u16) {
        let mut frames = Vec::new();
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame within the patience window");
            match message {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(Some(frame)))) => return (frames, u16::from(frame.code)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame or a close, got {other:?}"),
            }
        }
    }

    /// Waits for the close frame and returns its code; panics on anything but control frames.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("close within the patience window");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

pub fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

/// Connects and returns the socket without expecting a welcome (for refusals right after
/// the upgrade).
pub async fn connect_raw(url: &str, user: &str) -> Socket {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("jwt.{}", token(user, 3600))).unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade accepted")
        .0
}

/// The close code the server sends first on `socket`, skipping nothing but pings.
pub async fn first_close_code(socket: &mut Socket) -> u16 {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame within the patience window")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A plain HTTP/1.1 request to `addr`; returns the status and the body. `headers` are extra
/// header lines, each ending in `\r\n`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

impl TestServer {
    /// `GET path` on the debug routes, with the admin token.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http(
            self.addr,
            "GET",
            path,
            None,
            &format!("Authorization: Bearer {ADMIN}\r\n"),
        )
        .await
    }
}
