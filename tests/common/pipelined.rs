//! A raw WebSocket client over TCP whose upgrade request and first messages are written in
//! one go, so the messages reach the server before any welcome can; it reads the server's
//! frames as they are on the wire.

use super::{token, TestServer, PATIENCE};

/// A raw client connection: its upgrade request and first messages were written in one go,
/// so they reach the server before any welcome can.
pub struct Pipelined {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl Pipelined {
    /// Writes the upgrade request for `user`, then `messages` as masked text frames, and
    /// returns once the server's answer to the upgrade arrived, with its status line.
    pub async fn open(server: &TestServer, user: &str, messages: &[String]) -> (String, Pipelined) {
        use tokio::io::AsyncWriteExt;
        let mut bytes = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            token(user, 60),
            server.addr
        )
        .into_bytes();
        for message in messages {
            assert!(message.len() < 126, "short frames only");
            // FIN + text; masked with a zero key, so the payload goes as it is.
            bytes.extend([0x81, 0x80 | message.len() as u8, 0, 0, 0, 0]);
            bytes.extend(message.as_bytes());
        }
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut client = Pipelined {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(at) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(client.read_more().await, "the server answers the upgrade");
        };
        let head: Vec<u8> = client.buffer.drain(..head_end).collect();
        let status = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        (status, client)
    }

    /// Reads more bytes; false at the end of the stream.
    async fn read_more(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("bytes or the end of the stream within the patience window")
            .expect("read");
        self.buffer.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next frame the server sent, as (opcode, payload), or `None` once it closed the
    /// connection.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 2 {
                let (len, header) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    126 => (usize::MAX, 4),
                    127 => panic!("no large frames expected"),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let frame: Vec<u8> = self.buffer.drain(..header + len).collect();
                    return Some((frame[0] & 0x0f, frame[header..].to_vec()));
                }
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// The next text frame as JSON, skipping pings; panics on anything else.
    pub async fn next_json(&mut self) -> serde_json::Value {
        loop {
            match self.next_frame().await {
                Some((0x1, payload)) => return serde_json::from_slice(&payload).unwrap(),
                Some((0x9, _)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}
