//! MLLP framing (HL7 v2 Minimal Lower Layer Protocol): `0x0B message 0x1C 0x0D`.
//!
//! [`FrameReader`] turns a byte stream into messages with hostile senders in mind: bytes
//! before a start block are discarded and counted (never parsed), a frame is bounded in
//! size and in the time it may take to arrive, and every way a frame can go wrong is its
//! own error, so the listener can answer (a NAK when the sender can still use one) or
//! close. The same reader reads ACKs from upstreams.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub const START: u8 = 0x0B;
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// Why no frame came out.
#[derive(Debug)]
pub enum FrameError {
    /// No start block within the idle timeout (between messages): close quietly.
    Idle,
    /// A start block arrived inside an unfinished frame. The partial frame is given back
    /// (so the sender can get a NAK); reading continues with the new frame.
    NestedStart(Vec<u8>),
    /// The frame passed the size limit (its first bytes given back, for the NAK). The
    /// rest of the stream cannot be trusted to resynchronise: close after answering.
    TooLarge(Vec<u8>),
    /// `0x1C` not followed by `0x0D`.
    BadEnd(Vec<u8>),
    /// The frame did not complete within the frame timeout (a slow or stalled sender).
    Timeout(Vec<u8>),
    /// The peer closed the connection inside a frame.
    Truncated(Vec<u8>),
    Io(std::io::Error),
}

impl FrameError {
    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::Idle => "idle",
            FrameError::NestedStart(_) => "nested_start",
            FrameError::TooLarge(_) => "too_large",
            FrameError::BadEnd(_) => "bad_end",
            FrameError::Timeout(_) => "frame_timeout",
            FrameError::Truncated(_) => "truncated",
            FrameError::Io(_) => "io",
        }
    }
}

/// How much of an oversized frame is kept to address the NAK (MSH is at the front).
const HEADER_KEEP: usize = 4096;

pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    /// Bytes seen outside any frame since the last call to [`take_discarded`].
    discarded: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(8192),
            max: max_frame,
            discarded: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Nothing buffered and nothing waiting on the connection (checked without waiting):
    /// a pooled upstream connection with a late or extra ACK pending, or already closed by
    /// the peer, must not carry the next message.
    pub async fn idle_clean(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        // `timeout` polls the read once before looking at the (already expired) deadline.
        tokio::time::timeout(Duration::ZERO, self.inner.read(&mut b))
            .await
            .is_err()
    }

    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }

    /// Read more bytes; `Ok(false)` at end of stream.
    async fn fill(&mut self, deadline: Instant) -> Result<bool, Option<std::io::Error>> {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk)).await {
            Err(_) => Err(None),
            Ok(Err(e)) => Err(Some(e)),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                Ok(true)
            }
        }
    }

    /// The next complete frame's payload, or `Ok(None)` when the peer closed cleanly
    /// between frames.
    pub async fn next(
        &mut self,
        idle: Duration,
        frame: Duration,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        // Between frames: discard until a start block.
        let idle_deadline = Instant::now() + idle;
        loop {
            match self.buf.iter().position(|&b| b == START) {
                Some(i) => {
                    self.discarded += i as u64;
                    self.buf.drain(..i);
                    break;
                }
                None => {
                    self.discarded += self.buf.len() as u64;
                    self.buf.clear();
                    match self.fill(idle_deadline).await {
                        Ok(true) => {}
                        Ok(false) => return Ok(None),
                        Err(None) => return Err(FrameError::Idle),
                        Err(Some(e)) => return Err(FrameError::Io(e)),
                    }
                }
            }
        }
        // In a frame: `buf[0]` is the start block.
        let deadline = Instant::now() + frame;
        let mut scanned = 1;
        loop {
            let hit = self
                .buf
                .get(scanned..)
                .unwrap_or_default()
                .iter()
                .position(|&b| b == END || b == START)
                .map(|p| p + scanned);
            match hit {
                Some(i) if self.buf.get(i) == Some(&START) => {
                    let partial = self.buf.get(1..i).unwrap_or_default().to_vec();
                    self.buf.drain(..i);
                    return Err(FrameError::NestedStart(partial));
                }
                Some(i) => match self.buf.get(i + 1) {
                    Some(&CR) => {
                        if i - 1 > self.max {
                            // Complete, but too large all the same (it arrived in one read).
                            let keep = self
                                .buf
                                .get(1..HEADER_KEEP.min(i))
                                .unwrap_or_default()
                                .to_vec();
                            self.buf.drain(..i + 2);
                            return Err(FrameError::TooLarge(keep));
                        }
                        let payload = self.buf.get(1..i).unwrap_or_default().to_vec();
                        self.buf.drain(..i + 2);
                        return Ok(Some(payload));
                    }
                    Some(_) => {
                        let partial = self.buf.get(1..i).unwrap_or_default().to_vec();
                        self.buf.clear();
                        return Err(FrameError::BadEnd(partial));
                    }
                    None => scanned = i, // need the byte after the end block
                },
                None => scanned = self.buf.len(),
            }
            if self.buf.len().saturating_sub(1) > self.max {
                let keep = self
                    .buf
                    .get(1..HEADER_KEEP.min(self.buf.len()))
                    .unwrap_or_default()
                    .to_vec();
                self.buf.clear();
                return Err(FrameError::TooLarge(keep));
            }
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    let partial = self.buf.get(1..).unwrap_or_default().to_vec();
                    self.buf.clear();
                    return Err(FrameError::Truncated(partial));
                }
                Err(None) => {
                    let partial = self.buf.get(1..).unwrap_or_default().to_vec();
                    self.buf.clear();
                    return Err(FrameError::Timeout(partial));
                }
                Err(Some(e)) => return Err(FrameError::Io(e)),
            }
        }
    }
}

/// Write one framed message.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.push(END);
    out.push(CR);
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn reader(bytes: &[u8], max: usize) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        FrameReader::new(std::io::Cursor::new(bytes.to_vec()), max)
    }

    #[tokio::test]
    async fn frames_garbage_and_pipelining() -> Result<(), FrameError> {
        let mut r = reader(b"junk\x0bMSH|1\r\x1c\x0d\x0bMSH|2\r\x1c\x0d\x00\x01", 100);
        assert_eq!(r.next(T, T).await?, Some(b"MSH|1\r".to_vec()));
        assert_eq!(r.take_discarded(), 4);
        assert_eq!(r.next(T, T).await?, Some(b"MSH|2\r".to_vec()));
        assert_eq!(r.next(T, T).await?, None);
        assert_eq!(r.take_discarded(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn broken_frames_are_told_apart() {
        let mut r = reader(b"\x0bMSH|a\x0bMSH|b\x1c\x0d", 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::NestedStart(p)) if p == b"MSH|a"));
        assert_eq!(r.next(T, T).await.ok().flatten(), Some(b"MSH|b".to_vec()));
        let mut r = reader(b"\x0bMSH|a\x1cX", 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::BadEnd(_))));
        let mut r = reader(b"\x0bMSH|no end", 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::Truncated(p)) if p == b"MSH|no end"));
        let mut r = reader(&[&b"\x0b"[..], &[b'x'; 300][..]].concat(), 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::TooLarge(_))));
        let mut r = reader(&[&b"\x0b"[..], &[b'x'; 101][..], b"\x1c\x0d"].concat(), 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::TooLarge(_))));
        // The end block split from its CR across reads still frames.
        let mut r = reader(b"\x0bMSH|z\x1c", 100);
        assert!(matches!(r.next(T, T).await, Err(FrameError::Truncated(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sender_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut r = FrameReader::new(server, 100);
        let mut client = client;
        client.write_all(b"\x0bMSH|slow").await.ok();
        let got = r
            .next(Duration::from_secs(60), Duration::from_secs(5))
            .await;
        assert!(matches!(got, Err(FrameError::Timeout(p)) if p == b"MSH|slow"));
        // Between frames, the idle timeout applies.
        let got = r.next(Duration::from_secs(1), Duration::from_secs(5)).await;
        assert!(matches!(got, Err(FrameError::Idle)));
        drop(client);
    }
}
