//! An in-memory socket: a real session actor whose WebSocket frames travel over in-process
//! byte streams instead of TCP.
//!
//! Everything past the transport is the same as for a network socket: the session is
//! registered with the registry, attached to its user's actor, welcomed, gated, and fed by
//! the same fan-out. It exists so application tests can talk to their handler without a
//! network, and so benchmarks can measure the registry → user actor → session path without
//! the kernel's socket costs. There is no HTTP upgrade, so no token and no origin check:
//! the caller vouches for the user, as it does when it emits through [`crate::Runtime::user`].

use std::sync::Arc;

use actix_http::ws::{Codec, Frame, Message};
use actix_web::error::PayloadError;
use actix_web::web::{Bytes, BytesMut};
use actix_web_actors::ws;
use futures_util::stream::{LocalBoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

use super::frame_guard::FrameGuard;
use super::{Session, SessionStart};
use crate::ids::UserId;
use crate::runtime::Shared;

/// Client frames an in-memory socket may have in flight to its session before `send` waits.
const INBOUND_CAPACITY: usize = 64;

/// The client end of an in-memory connection to a [`crate::Runtime`] (see
/// [`crate::Runtime::connect_in_memory`]).
///
/// Must be used on a thread of the actix system the runtime runs in (the session actor runs
/// as this value is polled). Dropping it closes the connection, as a dropped TCP socket would.
pub struct InMemorySocket {
    /// The WebSocket bytes the session writes.
    output: LocalBoxStream<'static, Result<Bytes, actix_web::Error>>,
    /// Client-side framing: decodes the server's frames, masks the client's.
    codec: Codec,
    /// Received bytes not yet decoded into a frame.
    received: BytesMut,
    /// Client frames on their way to the session.
    input: mpsc::Sender<Result<Bytes, PayloadError>>,
    /// The close code the server sent, once it closed the connection.
    close_code: Option<u16>,
}

/// Starts a session for `user` over in-memory streams.
pub(crate) fn connect_in_memory(shared: Arc<Shared>, user: UserId) -> InMemorySocket {
    let max_frame = shared.config.max_frame_bytes;
    let session = Session::new(
        shared,
        SessionStart {
            user_id: user,
            token_expires_at: None,
            subprotocol: None,
            resume_at_connect: None,
        },
    );
    let (input, inbound) = mpsc::channel(INBOUND_CAPACITY);
    let inbound = Box::pin(futures_util::stream::unfold(
        inbound,
        |mut inbound| async move { inbound.recv().await.map(|item| (item, inbound)) },
    ));
    let inbound = FrameGuard::new(inbound, max_frame, session.frame_guard.clone());
    let output =
        ws::WebsocketContext::with_codec(session, inbound, Codec::new().max_size(max_frame));
    InMemorySocket {
        output: Box::pin(output),
        codec: Codec::new().max_size(usize::MAX).client_mode(),
        received: BytesMut::new(),
        input,
        close_code: None,
    }
}

impl InMemorySocket {
    /// The next text frame from the server (the welcome first), or `None` once the server
    /// closed the connection (see [`InMemorySocket::close_code`]). Pings are answered and
    /// other control frames skipped.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            match self.codec.decode(&mut self.received) {
                Ok(Some(Frame::Text(bytes))) => {
                    // The server writes UTF-8; the lossy path is only a fallback.
                    return Some(match std::str::from_utf8(&bytes) {
                        Ok(text) => text.to_owned(),
                        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
                    });
                }
                Ok(Some(Frame::Close(reason))) => {
                    self.close_code = Some(reason.map_or(1005, |r| u16::from(r.code)));
                    return None;
                }
                Ok(Some(Frame::Ping(payload))) => {
                    self.send_message(Message::Pong(payload)).await;
                    continue;
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.output.next().await {
                Some(Ok(bytes)) => self.received.extend_from_slice(&bytes),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends one text frame to the server, as a browser's `socket.send(text)` would.
    /// Returns false if the session has ended.
    pub async fn send(&mut self, text: &str) -> bool {
        self.send_message(Message::Text(text.to_owned().into()))
            .await
    }

    /// The code the server closed the connection with, once [`InMemorySocket::recv`] has
    /// seen its close frame.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    async fn send_message(&mut self, message: Message) -> bool {
        let mut frame = BytesMut::new();
        if self.codec.encode(message, &mut frame).is_err() {
            return false;
        }
        // The session reads its input only while its output is polled: send without
        // waiting on a full channel while the session cannot drain it.
        let mut send = std::pin::pin!(self.input.send(Ok(frame.freeze())));
        loop {
            tokio::select! {
                sent = &mut send => return sent.is_ok(),
                bytes = self.output.next() => match bytes {
                    Some(Ok(bytes)) => self.received.extend_from_slice(&bytes),
                    Some(Err(_)) | None => return false,
                },
            }
        }
    }
}

impl std::fmt::Debug for InMemorySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemorySocket")
            .field("close_code", &self.close_code)
            .finish_non_exhaustive()
    }
}
