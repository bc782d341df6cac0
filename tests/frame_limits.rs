//! The message limit applied at the frame header, over raw sockets: a frame (or a fragmented
//! message) that declares more than `max_frame_bytes` is closed with 1009 as soon as its
//! header arrives, before its payload is read, and the server does not buffer what follows.
//! The client here writes WebSocket frames byte by byte, because no WebSocket library sends
//! a header that lies about its length.

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::net::SocketAddr;

use serve_process::spawn_serve;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwire::{close_code, Config};
use common::{TestServer, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// The masking key of every client frame here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame header: FIN, opcode, the masking bit and `length` in the shortest form.
fn header(fin: bool, opcode: u8, length: u64) -> Vec<u8> {
    let mut header = vec![if fin { 0x80 } else { 0 } | opcode];
    if length < 126 {
        header.push(0x80 | length as u8);
    } else if let Ok(short) = u16::try_from(length) {
        header.push(0x80 | 126);
        header.extend_from_slice(&short.to_be_bytes());
    } else {
        header.push(0x80 | 127);
        header.extend_from_slice(&length.to_be_bytes());
    }
    header.extend_from_slice(&MASK);
    header
}

/// A whole masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = header(fin, opcode, payload.len() as u64);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// A WebSocket connection driven at the byte level: the server's frames, and the writer.
struct RawSocket {
    frames: Frames,
    writer: OwnedWriteHalf,
}

/// The read half of a [`RawSocket`]: frames from the server, parsed as they arrive.
struct Frames {
    reader: OwnedReadHalf,
    received: Vec<u8>,
}

impl RawSocket {
    /// Upgrades with `token` and reads the welcome.
    async fn connect(addr: SocketAddr, token: &str) -> RawSocket {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (reader, mut writer) = stream.into_split();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut frames = Frames {
            reader,
            received: Vec::new(),
        };
        let head = loop {
            if let Some(end) = frames.received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&frames.received[..end]).into_owned();
                frames.received.drain(..end + 4);
                break head;
            }
            assert!(frames.read_more().await, "the upgrade is answered");
        };
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let welcome = frames.next_text().await;
        assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");
        RawSocket { frames, writer }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    async fn close_code(&mut self) -> u16 {
        self.frames.close_code().await
    }

    async fn next_text(&mut self) -> String {
        self.frames.next_text().await
    }
}

impl Frames {
    async fn read_more(&mut self) -> bool {
        let mut buffer = [0; 4096];
        match tokio::time::timeout(PATIENCE, self.reader.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.received.extend_from_slice(&buffer[..n]);
                true
            }
            Err(_) => panic!("nothing from the server within {PATIENCE:?}"),
        }
    }

    /// The next frame from the server (opcode and payload), or `None` once the connection
    /// ended; panics if nothing arrives within the patience window.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.received.len() >= 2 {
                let (start, length) = match self.received[1] & 0x7F {
                    126 if self.received.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.received[2], self.received[3]])),
                    ),
                    127 => panic!("the server sent a frame over 64 KiB"),
                    126 => (usize::MAX, 0),
                    short => (2, usize::from(short)),
                };
                if start != usize::MAX && self.received.len() >= start + length {
                    let opcode = self.received[0] & 0x0F;
                    let payload = self.received[start..start + length].to_vec();
                    self.received.drain(..start + length);
                    return Some((opcode, payload));
                }
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// The server's close code, skipping any other frame before it.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.next_frame().await.expect("a close frame");
            if opcode == CLOSE {
                assert!(payload.len() >= 2, "the close frame carries a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// The next text frame, skipping pings.
    async fn next_text(&mut self) -> String {
        loop {
            let (opcode, payload) = self.next_frame().await.expect("a text frame");
            match opcode {
                TEXT => return String::from_utf8(payload).unwrap(),
                PING => continue,
                other => panic!("expected a text frame, got opcode {other}"),
            }
        }
    }
}

fn limited(max_frame_bytes: usize) -> TestServer {
    TestServer::start_with(Config {
        max_frame_bytes,
        ..Config::default()
    })
}

async fn connect(server: &TestServer, user: &str) -> RawSocket {
    RawSocket::connect(server.addr, &common::token(user, 3600)).await
}

const PING_MESSAGE: &[u8] = br#"{"type":"ping","ref":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_frame_is_closed_with_1009_at_its_header() {
    let server = TestServer::start();
    let mut socket = connect(&server, "two-mib").await;
    // The header and the first KiB of a 2 MiB text frame; the rest never comes.
    socket.write(&header(true, TEXT, 2 << 20)).await;
    socket.write(&[b' '; 1024]).await;
    assert_eq!(socket.close_code().await, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_adding_up_past_the_limit_are_closed_at_the_header_that_passes_it() {
    let server = limited(1024);
    let mut socket = connect(&server, "fragments").await;
    // 600 + 424 bytes: exactly the limit, assembled and answered.
    let whole = format!("{:>1024}", std::str::from_utf8(PING_MESSAGE).unwrap());
    let (first, last) = whole.as_bytes().split_at(600);
    socket.write(&frame(false, TEXT, first)).await;
    socket.write(&frame(true, CONTINUATION, last)).await;
    assert!(socket.next_text().await.contains(r#""type":"pong""#));
    // Each fragment is legal on its own; the second one's header takes the message to 1,025
    // bytes. Its payload is never sent: the close must not wait for it.
    socket.write(&frame(false, TEXT, &[b' '; 600])).await;
    socket.write(&header(true, CONTINUATION, 425)).await;
    assert_eq!(socket.close_code().await, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_the_oversized_header_are_handled_first() {
    let server = limited(1024);
    let mut socket = connect(&server, "before").await;
    // One write: a whole ping message, then a header declaring a frame past the limit.
    let mut bytes = frame(true, TEXT, PING_MESSAGE);
    bytes.extend(header(true, TEXT, 1025));
    socket.write(&bytes).await;
    assert!(socket.next_text().await.contains(r#""ref":1"#));
    assert_eq!(socket.close_code().await, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_frame_declaring_more_than_125_bytes_is_closed_with_1002_at_its_header() {
    let server = TestServer::start();
    let mut socket = connect(&server, "control").await;
    socket.write(&header(true, PING, 1 << 40)).await;
    assert_eq!(socket.close_code().await, close_code::PROTOCOL_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arriving_a_byte_at_a_time_are_read_whole() {
    let server = limited(1024);
    let mut socket = connect(&server, "trickle").await;
    // A 64-bit length header (legal, within the limit) and a 16-bit one, split everywhere.
    let mut bytes = vec![0x80 | TEXT, 0x80 | 127];
    bytes.extend_from_slice(&(PING_MESSAGE.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&MASK);
    bytes.extend(
        PING_MESSAGE
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4]),
    );
    let padded = format!("{:>200}", std::str::from_utf8(PING_MESSAGE).unwrap());
    bytes.extend(frame(true, TEXT, padded.as_bytes()));
    for byte in bytes {
        socket.write(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(socket.next_text().await.contains(r#""ref":1"#));
    assert!(socket.next_text().await.contains(r#""ref":1"#));
    // A header split the same way is still judged before its payload.
    for byte in header(true, TEXT, 1 << 62) {
        socket.write(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(socket.close_code().await, close_code::MESSAGE_TOO_BIG);
}

/// The `agentwire` binary in its own process, so its memory can be read on its own.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

const PROCESS_SECRET: &str = "frame limits test secret";

impl ServerProcess {
    fn start() -> ServerProcess {
        let (child, addr) = spawn_serve(&["--jwt-secret", PROCESS_SECRET]);
        ServerProcess { child, addr }
    }

    fn token(&self, user: &str) -> String {
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": user, "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(PROCESS_SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// The process's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_claiming_2_to_the_62_bytes_is_closed_and_what_follows_is_not_buffered() {
    const STREAMED: u64 = 16 << 20;
    let server = ServerProcess::start();
    let mut socket = RawSocket::connect(server.addr, &server.token("flood")).await;
    socket.write(&frame(true, TEXT, PING_MESSAGE)).await;
    assert!(socket.next_text().await.contains(r#""type":"pong""#));
    let before = server.rss();

    let RawSocket {
        mut frames,
        mut writer,
    } = socket;
    let written = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let streaming = {
        let (written, finished) = (written.clone(), finished.clone());
        tokio::spawn(async move {
            writer.write_all(&header(true, TEXT, 1 << 62)).await?;
            let chunk = vec![b' '; 64 * 1024];
            while written.load(Ordering::Relaxed) < STREAMED {
                writer.write_all(&chunk).await?;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            finished.store(true, Ordering::Relaxed);
            std::io::Result::Ok(())
        })
    };
    // The close; or, if the server waits for the payload, the end of the streaming.
    let close = tokio::select! {
        code = frames.close_code() => Some(code),
        _ = async {
            while !finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => None,
    };
    // Let the client send what it still can: the server discards the rest of the frame, and
    // ends the connection soon after its close.
    let _ = tokio::time::timeout(PATIENCE, streaming).await;
    let grown = server.rss().saturating_sub(before);
    let sent = written.load(Ordering::Relaxed);
    assert!(
        grown < 4 << 20,
        "the server's memory grew by {grown} bytes while the client sent {sent} bytes"
    );
    assert_eq!(
        close,
        Some(close_code::MESSAGE_TOO_BIG),
        "the server closes at the header, not after the payload"
    );
}
