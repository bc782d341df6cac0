//! The frame guard: a socket's inbound bytes, read one WebSocket frame header at a time
//! before the codec is given the frame.
//!
//! actix's WebSocket codec checks a frame's size only once its whole payload has arrived,
//! and actix-web-actors' reader buffers whatever the socket delivers. [`FrameGuard`] sits
//! between the socket's byte stream and that reader. It parses each frame header as its
//! bytes arrive (RFC 6455 §5.2: 2 to 14 bytes), adds a data frame's declared length to the
//! message the frame belongs to, and passes the frame on only if the message stays within
//! `max_frame_bytes`; a control frame may declare at most 125 bytes. A header that declares
//! more ends the stream right there, before any of its payload is read, and the session
//! learns why from the shared [`GuardVerdict`]: it closes with 1009 (a message too big) or
//! 1002 (a control frame too long, or a length with its most significant bit set).
//! Everything before that header has been passed on and handled first.
//!
//! The guard also passes on at most one complete frame before the codec has had a turn to
//! decode it, so the reader's buffer holds at most one frame (itself within the limit) plus
//! the bytes of the next one. The socket's own buffer applies backpressure beyond that.
//! Nothing else is checked here: opcodes, masking and fragment order are the codec's and
//! the gate's business.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

use crate::close_code;

/// The longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER_BYTES: usize = 14;

/// The largest length a header may declare: 63 bits, the most significant bit 0 (§5.2).
const MAX_LENGTH: u64 = i64::MAX as u64;

/// The longest payload a control frame may declare (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why a [`FrameGuard`] ended its stream early, shared with the session that reads it.
#[derive(Debug, Clone, Default)]
pub(super) struct GuardVerdict(Rc<Cell<Option<u16>>>);

impl GuardVerdict {
    /// The close code the guard ended the stream with, if it did.
    pub(super) fn close_code(&self) -> Option<u16> {
        self.0.get()
    }

    fn trip(&self, code: u16) {
        self.0.set(Some(code));
    }
}

/// The socket's byte stream, passed on frame by frame once each header is judged.
pub(super) struct FrameGuard<S> {
    inner: S,
    /// `max_frame_bytes`: the most a data message may declare, all its fragments together.
    limit: u64,
    verdict: GuardVerdict,
    /// The rest of the socket's last chunk, not yet passed on.
    rest: Bytes,
    /// A header split between chunks: its bytes so far, held back until it is judged.
    header: [u8; MAX_HEADER_BYTES],
    header_len: usize,
    /// Payload bytes of the current frame still to pass on.
    payload_left: u64,
    /// Declared payload bytes so far of the fragmented data message in progress.
    message_bytes: u64,
    /// Set once a frame's last byte was passed on: the codec gets a turn first.
    yield_next: bool,
    ended: bool,
}

/// What the guard does with the bytes at the front of its chunk.
enum Step {
    /// Pass on this many bytes of the chunk.
    Pass(usize),
    /// Pass on a header that was split between chunks (the chunk's part is consumed).
    PassHeader(Bytes),
    /// The chunk's bytes went into a header still incomplete.
    Held,
    /// End the stream: a header declared more than it may.
    Trip(u16),
}

impl<S> FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    /// Guards `inner`, whose data messages may declare at most `limit` bytes; the reason
    /// the guard ends early is written to `verdict`.
    pub(super) fn new(inner: S, limit: usize, verdict: GuardVerdict) -> Self {
        FrameGuard {
            inner,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            verdict,
            rest: Bytes::new(),
            header: [0; MAX_HEADER_BYTES],
            header_len: 0,
            payload_left: 0,
            message_bytes: 0,
            yield_next: false,
            ended: false,
        }
    }

    /// Decides what to do with the front of `rest` (which is not empty).
    fn step(&mut self) -> Step {
        if self.payload_left > 0 {
            let passed = self.take_payload(0);
            return Step::Pass(passed);
        }
        if self.header_len == 0 {
            if let Some(size) = header_size(&self.rest).filter(|&size| size <= self.rest.len()) {
                let length = declared_length(&self.rest[..size]);
                if let Err(code) = self.judge(self.rest[0], length) {
                    return Step::Trip(code);
                }
                return Step::Pass(size + self.take_payload(size));
            }
        }
        // The header continues past this chunk: gather it byte by byte.
        let mut taken = 0;
        let complete = loop {
            let seen = &self.header[..self.header_len];
            if header_size(seen).is_some_and(|size| size == seen.len()) {
                break true;
            }
            let Some(&byte) = self.rest.get(taken) else {
                break false;
            };
            self.header[self.header_len] = byte;
            self.header_len += 1;
            taken += 1;
        };
        let _ = self.rest.split_to(taken);
        if !complete {
            return Step::Held;
        }
        let header = Bytes::copy_from_slice(&self.header[..self.header_len]);
        self.header_len = 0;
        if let Err(code) = self.judge(header[0], declared_length(&header)) {
            return Step::Trip(code);
        }
        if self.payload_left == 0 {
            self.yield_next = true;
        }
        Step::PassHeader(header)
    }

    /// How many payload bytes of the current frame `rest` holds from `at`; marks the frame
    /// complete when that is all of it.
    fn take_payload(&mut self, at: usize) -> usize {
        let available = u64::try_from(self.rest.len() - at).unwrap_or(u64::MAX);
        let taken = self.payload_left.min(available);
        self.payload_left -= taken;
        if self.payload_left == 0 {
            self.yield_next = true;
        }
        // `taken` is at most `available`, which came from a `usize`.
        usize::try_from(taken).unwrap_or(0)
    }

    /// Judges a complete header, from its first byte (FIN and opcode) and the payload
    /// length it declares: the frame's length against the limits, and the running total of
    /// a fragmented message. On success the frame's payload is next.
    fn judge(&mut self, first: u8, length: u64) -> Result<(), u16> {
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        if length > MAX_LENGTH {
            return Err(close_code::PROTOCOL_ERROR);
        }
        if opcode >= 0x8 {
            // Control frames (and reserved control opcodes) stand outside any message.
            if length > MAX_CONTROL_PAYLOAD {
                return Err(close_code::PROTOCOL_ERROR);
            }
        } else {
            // 0x0 continues a message; any other data opcode starts one.
            let so_far = if opcode == 0x0 { self.message_bytes } else { 0 };
            let total = so_far
                .checked_add(length)
                .filter(|&total| total <= self.limit)
                .ok_or(close_code::MESSAGE_TOO_BIG)?;
            self.message_bytes = if fin { 0 } else { total };
        }
        self.payload_left = length;
        Ok(())
    }
}

/// The size of the header that `bytes` starts with, once its first two bytes are known.
fn header_size(bytes: &[u8]) -> Option<usize> {
    let second = *bytes.get(1)?;
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// The payload length a complete header declares.
fn declared_length(header: &[u8]) -> u64 {
    match header[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut length = [0; 8];
            length.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(length)
        }
        short => u64::from(short),
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if std::mem::take(&mut this.yield_next) {
                // A whole frame was passed on: let the reader decode it before it reads
                // more, and come back for the rest.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.rest.is_empty() {
                match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => this.rest = chunk,
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                    Poll::Ready(None) => this.ended = true,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            match this.step() {
                Step::Held => {}
                Step::Pass(bytes) => return Poll::Ready(Some(Ok(this.rest.split_to(bytes)))),
                Step::PassHeader(header) => return Poll::Ready(Some(Ok(header))),
                Step::Trip(code) => {
                    this.verdict.trip(code);
                    this.ended = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;
    use proptest::prelude::*;

    /// A masked client frame header declaring `length` (masking key all zeros).
    fn header(fin: bool, opcode: u8, length: u64) -> Vec<u8> {
        let mut header = vec![u8::from(fin) << 7 | opcode];
        match length {
            0..=125 => header.push(0x80 | length as u8),
            126..=0xFFFF => {
                header.push(0x80 | 126);
                header.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                header.push(0x80 | 127);
                header.extend_from_slice(&length.to_be_bytes());
            }
        }
        header.extend_from_slice(&[0; 4]);
        header
    }

    fn frame(fin: bool, opcode: u8, payload_len: usize) -> Vec<u8> {
        let mut frame = header(fin, opcode, payload_len as u64);
        frame.resize(frame.len() + payload_len, b'x');
        frame
    }

    type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, PayloadError>>>;

    fn guarded(chunks: Vec<Vec<u8>>, limit: usize) -> (FrameGuard<Chunks>, GuardVerdict) {
        let chunks: Vec<_> = chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
        let verdict = GuardVerdict::default();
        let guard = FrameGuard::new(futures_util::stream::iter(chunks), limit, verdict.clone());
        (guard, verdict)
    }

    /// Polls to the end; returns what was passed on between the guard's yields.
    fn drain(guard: &mut FrameGuard<Chunks>) -> Vec<Vec<u8>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut turns = vec![Vec::new()];
        loop {
            match Pin::new(&mut *guard).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(bytes))) => turns.last_mut().unwrap().extend_from_slice(&bytes),
                Poll::Ready(Some(Err(error))) => panic!("{error}"),
                Poll::Ready(None) => return turns.into_iter().filter(|t| !t.is_empty()).collect(),
                Poll::Pending => turns.push(Vec::new()),
            }
        }
    }

    #[test]
    fn one_chunk_of_many_frames_is_passed_on_one_frame_per_turn() {
        let frames = [
            frame(true, 0x1, 3),
            frame(true, 0x9, 0),
            frame(true, 0x1, 200),
        ];
        let (mut guard, verdict) = guarded(vec![frames.concat()], 1024);
        assert_eq!(drain(&mut guard), frames.to_vec());
        assert_eq!(verdict.close_code(), None);
    }

    #[test]
    fn a_header_declaring_too_much_ends_the_stream_before_its_payload() {
        let ok = frame(false, 0x1, 600);
        let over = header(true, 0x0, 425);
        let (mut guard, verdict) =
            guarded(vec![[ok.clone(), over].concat(), vec![b'x'; 425]], 1024);
        assert_eq!(drain(&mut guard), vec![ok]);
        assert_eq!(verdict.close_code(), Some(close_code::MESSAGE_TOO_BIG));

        let (mut guard, verdict) = guarded(vec![header(true, 0xA, 126)], 1024);
        assert!(drain(&mut guard).is_empty());
        assert_eq!(verdict.close_code(), Some(close_code::PROTOCOL_ERROR));

        // A 64-bit length with its most significant bit set breaks the framing, whatever
        // the limit.
        let (mut guard, verdict) = guarded(vec![header(true, 0x2, 1 << 63)], usize::MAX);
        assert!(drain(&mut guard).is_empty());
        assert_eq!(verdict.close_code(), Some(close_code::PROTOCOL_ERROR));
    }

    proptest! {
        /// However the socket splits legal frames into chunks, the guard passes on exactly
        /// the same bytes, one whole frame per turn.
        #[test]
        fn legal_frames_pass_unchanged_however_they_are_split(
            lengths in prop::collection::vec((0usize..300, any::<bool>()), 1..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut frames = Vec::new();
            let mut fragmented = false;
            for (len, fin) in lengths {
                let opcode = if fragmented { 0x0 } else { 0x1 };
                frames.push(frame(fin, opcode, len.min(1024 / 12)));
                fragmented = !fin;
            }
            let bytes = frames.concat();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len())).collect();
            cuts.extend([0, bytes.len()]);
            cuts.sort_unstable();
            let chunks = cuts.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();
            let (mut guard, verdict) = guarded(chunks, 1024);
            let turns = drain(&mut guard);
            prop_assert_eq!(verdict.close_code(), None);
            prop_assert_eq!(turns.concat(), bytes);
            // No turn passes on the end of one frame and bytes of the next.
            let mut ends = Vec::new();
            let mut at = 0;
            for frame in &frames {
                at += frame.len();
                ends.push(at);
            }
            let mut at = 0;
            for turn in &turns {
                let next_end = *ends.iter().find(|&&end| end > at).unwrap();
                prop_assert!(at + turn.len() <= next_end);
                at += turn.len();
            }
        }
    }
}
