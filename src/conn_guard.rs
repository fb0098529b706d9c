//! Connection guard: a byte-level wrapper between the socket (after TLS) and hyper.
//!
//! Why it exists: hyper, following RFC 9112, *tolerates* some ambiguous framing — given
//! both `Content-Length` and `Transfer-Encoding` it silently drops the length, and it drops
//! a duplicate equal `Content-Length`. A gateway in front of a legacy EHR must instead
//! refuse them (the EHR's own parser may frame the bytes differently: request smuggling).
//! So for HTTP/1 we track message framing ourselves, look at every request head exactly as
//! the client sent it, and when a head is ambiguous hyper never sees it: it is replaced by
//! a fixed placeholder request, the verdict is queued for the request handler (which
//! answers with a JSON 400 and closes), and the rest of the byte stream is discarded.
//!
//! The guard also owns the connection's timers: an idle timeout between requests
//! (keep-alive), and a header-read timeout from the first byte of a head (slowloris).
//! For HTTP/2 it only runs the idle timer.
//!
//! And it lets an idle HTTP/1 connection give its memory back: hyper keeps an 8 KiB read
//! and an 8 KiB write buffer per connection for as long as the connection lives, so
//! thousands of idle keep-alive clients would cost tens of megabytes. Once a connection
//! has been idle for `idle_release` (every answer written and flushed, no byte of a next
//! request seen), the guard ends hyper's side of it with a clean end-of-stream — without
//! shutting the socket — and the server parks the bare stream until the client sends
//! again, then starts a fresh hyper connection on it (see `server::serve_io`).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::Rejection;

/// Why a request head was refused before hyper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    ContentLengthAndTransferEncoding,
    DuplicateContentLength,
    InvalidContentLength,
    InvalidTransferEncoding,
    HeadersTooLarge,
    TooManyHeaders,
    Malformed,
}

impl From<FrameError> for Rejection {
    fn from(e: FrameError) -> Self {
        use FrameError::*;
        let r = match e {
            ContentLengthAndTransferEncoding => Rejection::bad_request(
                "framing_cl_te",
                "request has both Content-Length and Transfer-Encoding",
            ),
            DuplicateContentLength => Rejection::bad_request(
                "framing_duplicate_cl",
                "request has several Content-Length headers",
            ),
            InvalidContentLength => {
                Rejection::bad_request("framing_invalid_cl", "malformed Content-Length")
            }
            InvalidTransferEncoding => Rejection::bad_request(
                "framing_invalid_te",
                "Transfer-Encoding other than a single `chunked`",
            ),
            HeadersTooLarge | TooManyHeaders => Rejection::headers_too_large(),
            Malformed => Rejection::bad_request("malformed_request", "malformed HTTP request"),
        };
        r.closing()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Reject(FrameError),
}

/// State shared between the guard (socket side) and the request handler.
#[derive(Debug)]
pub struct ConnShared {
    verdicts: Mutex<VecDeque<Verdict>>,
    inflight: AtomicUsize,
    /// HTTP/1 heads handed to hyper, and requests whose answer has ended: equal only when
    /// hyper has no message in hand (a head it read but has not dispatched yet counts).
    heads: AtomicU64,
    answered: AtomicU64,
    born: Instant,
    /// Milliseconds after `born` when the connection last became idle.
    idle_since_ms: std::sync::atomic::AtomicU64,
    /// A request asked for this connection to be retired (graceful shutdown).
    close: tokio::sync::Notify,
    /// A response asked for this connection to be closed at once (a client that stopped
    /// reading, see `context::ConnectionAbort`).
    pub abort: Arc<tokio::sync::Notify>,
}

impl Default for ConnShared {
    fn default() -> Self {
        ConnShared {
            verdicts: Mutex::default(),
            inflight: AtomicUsize::new(0),
            heads: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            born: Instant::now(),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
            close: tokio::sync::Notify::new(),
            abort: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl ConnShared {
    /// The verdict for the next HTTP/1 request, in arrival order.
    pub fn next_verdict(&self) -> Option<Verdict> {
        self.verdicts.lock().ok()?.pop_front()
    }
    fn push(&self, v: Verdict) {
        self.heads.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut q) = self.verdicts.lock() {
            q.push_back(v);
        }
    }
    pub fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }
    pub fn end(&self) {
        self.answered.fetch_add(1, Ordering::AcqRel);
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.born.elapsed().as_millis() as u64;
            self.idle_since_ms.store(ms, Ordering::Release);
        }
    }
    /// Ask the connection's driver to shut it down gracefully.
    pub fn request_close(&self) {
        self.close.notify_one();
    }
    pub async fn close_requested(&self) {
        self.close.notified().await;
    }
    fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
    fn busy(&self) -> bool {
        self.inflight.load(Ordering::Acquire) > 0
    }
    /// Every head hyper was given has been answered (and nothing is in flight).
    fn all_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire) == self.heads.load(Ordering::Acquire) && !self.busy()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GuardSettings {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// HTTP/1: idle time after which hyper's side of the connection is released.
    pub idle_release: Duration,
}

/// Room for the request line on top of the header budget.
const REQUEST_LINE_ALLOWANCE: usize = 8 * 1024;
/// Bound on chunk-extension and trailer bytes we are willing to track.
const MAX_CHUNK_META: usize = 8 * 1024;

/// What hyper receives instead of a refused head. It carries no client data; the queued
/// verdict tells the handler what really happened.
const PLACEHOLDER: &[u8] = b"GET / HTTP/1.1\r\nhost: rejected.invalid\r\nconnection: close\r\n\r\n";

#[derive(Debug, Clone, Copy)]
enum ChunkPhase {
    Size {
        value: u64,
        digits: u32,
        ext: usize,
        cr: bool,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section after the last chunk: lines end in CRLF (a bare LF is refused: hyper
    /// would read it differently), an empty line ends the message.
    Trailer {
        line: usize,
        total: usize,
        cr: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Head,
    Fixed(u64),
    Chunked(ChunkPhase),
}

struct H1 {
    state: State,
    head_buf: Vec<u8>,
    head_started: Option<Instant>,
    poisoned: bool,
}

pub struct GuardedIo<T> {
    io: T,
    h1: Option<H1>,
    shared: Arc<ConnShared>,
    settings: GuardSettings,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// Bytes were written since the last completed flush: an answer may still be on its
    /// way, so the connection is not idle whatever the request count says.
    unflushed: bool,
    /// hyper was handed a release end-of-stream; the connection is parked (or about to be).
    released: bool,
}

/// Which deadline the guard's timer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Between requests: the connection is cut (postponed while a request is in flight).
    Idle,
    /// A head started and has not completed: the connection is cut.
    HeaderRead,
    /// Between requests, HTTP/1: hyper's side is released (the connection stays).
    Release,
}

impl<T> GuardedIo<T> {
    /// `http1 = false` for HTTP/2 connections: bytes pass through untouched.
    pub fn new(io: T, http1: bool, shared: Arc<ConnShared>, settings: GuardSettings) -> Self {
        let now = Instant::now();
        GuardedIo {
            io,
            h1: http1.then(|| H1 {
                state: State::Head,
                head_buf: Vec::new(),
                head_started: None,
                poisoned: false,
            }),
            shared,
            settings,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            timer: Box::pin(tokio::time::sleep_until(now + settings.idle_timeout)),
            timer_at: None,
            unflushed: false,
            released: false,
        }
    }

    /// Whether the last end-of-stream hyper saw was a release (not the client closing).
    pub fn released(&self) -> bool {
        self.released
    }

    /// Nothing is pending in either direction and no byte of a next request has arrived:
    /// hyper would only be waiting for the next head.
    fn releasable(&self) -> bool {
        match &self.h1 {
            Some(h) => {
                !self.released
                    && !self.eof
                    && !h.poisoned
                    && matches!(h.state, State::Head)
                    && h.head_buf.is_empty()
                    && self.out_pos >= self.out.len()
                    && !self.unflushed
                    && self.shared.all_answered()
            }
            None => false,
        }
    }

    /// Give back what a released connection kept and note the release.
    fn release(&mut self) {
        self.released = true;
        self.out = Vec::new();
        self.out_pos = 0;
        if let Some(h) = self.h1.as_mut() {
            h.head_buf = Vec::new();
        }
    }

    /// Bytes hyper had read but not used when it let go of the connection: they are served
    /// again, first, to the next hyper connection (they already passed the guard).
    pub fn unread(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.out
                .splice(self.out_pos..self.out_pos, bytes.iter().copied());
        }
    }

    /// Park a released connection: wait, holding no buffer of hyper's, until the client
    /// sends something hyper can use. `Ok(true)`: input is ready for a new hyper connection;
    /// `Ok(false)`: the client closed. Timeouts still apply (idle, then header read).
    pub fn poll_resume(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>
    where
        T: AsyncRead + Unpin,
    {
        if self.out_pos < self.out.len() {
            self.released = false;
            return Poll::Ready(Ok(true));
        }
        // A small stack buffer: the guard keeps what it reads (a head is held until it is
        // complete), and whatever it lets through goes back in front of its output.
        let mut space = [0u8; 1024];
        let mut buf = ReadBuf::new(&mut space);
        std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.unread(buf.filled());
        self.released = false;
        Poll::Ready(Ok(true))
    }

    /// When this connection should be cut (or released) if nothing happens, and why.
    fn deadline(&self) -> Option<(Instant, Deadline)> {
        let idle = || {
            (
                self.shared.idle_since() + self.settings.idle_timeout,
                Deadline::Idle,
            )
        };
        match &self.h1 {
            // HTTP/2: idle means no request in flight since the last one ended; bytes are
            // no measure (keep-alive PINGs and their PONGs flow on idle connections).
            None => Some(idle()),
            Some(h) => match (h.state, h.head_started) {
                (State::Head, Some(t)) => {
                    Some((t + self.settings.header_read_timeout, Deadline::HeaderRead))
                }
                // Between requests: idle since the last response ended (or since accept).
                (State::Head, None) => {
                    let release = self.shared.idle_since() + self.settings.idle_release;
                    if self.settings.idle_release < self.settings.idle_timeout && self.releasable()
                    {
                        Some((release, Deadline::Release))
                    } else {
                        Some(idle())
                    }
                }
                // Body pace is enforced per request (body deadline in the limits layer).
                _ => None,
            },
        }
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some((at, kind)) = self.deadline() else {
                return Poll::Pending;
            };
            // Activity only ever moves a deadline later, so the timer is re-armed lazily:
            // when it fires early, or when the deadline moved earlier (a new head started).
            // Resetting it on every read would touch the timer wheel per packet.
            if self.timer_at.is_none_or(|t| at < t) {
                self.timer.as_mut().reset(at);
                self.timer_at = Some(at);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    if Instant::now() < at {
                        self.timer.as_mut().reset(at);
                        self.timer_at = Some(at);
                        continue;
                    }
                    if kind == Deadline::Release {
                        // `deadline` offered it only while nothing is pending: hyper gets
                        // a clean end-of-stream at a message boundary and lets go.
                        self.timer_at = None;
                        self.release();
                        return Poll::Ready(Ok(()));
                    }
                    if self.shared.busy() {
                        // A request is being answered: neither idle, nor a slow head (a
                        // pipelined head waits for the answer). Check again later.
                        let later = Instant::now()
                            + self
                                .settings
                                .header_read_timeout
                                .min(self.settings.idle_timeout);
                        self.timer.as_mut().reset(later);
                        self.timer_at = Some(later);
                        continue;
                    }
                    let what = if kind == Deadline::Idle {
                        "idle timeout"
                    } else {
                        "header read timeout"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
            }
        }
    }
}

use std::future::Future;

impl H1 {
    fn reject(&mut self, out: &mut Vec<u8>, shared: &ConnShared, e: FrameError) {
        shared.push(Verdict::Reject(e));
        out.extend_from_slice(PLACEHOLDER);
        self.poisoned = true;
        self.head_buf = Vec::new();
    }

    /// Feed bytes read from the client; bytes hyper may see are appended to `out`.
    fn feed(
        &mut self,
        mut cur: &[u8],
        out: &mut Vec<u8>,
        shared: &ConnShared,
        s: &GuardSettings,
    ) -> io::Result<()> {
        loop {
            if self.poisoned {
                return Ok(());
            }
            if let State::Head = self.state {
                // A head can only complete on a LF: skip re-parsing otherwise (a head sent
                // byte by byte would cost a full parse per byte). Leftover bytes from a
                // pipelined message are parsed once when they arrive here with `cur` empty.
                let worth_parsing = cur.is_empty() || cur.contains(&b'\n');
                self.head_buf.extend_from_slice(cur);
                cur = &[];
                if self.head_buf.is_empty() {
                    return Ok(());
                }
                // Empty lines before a request (RFC 9112 §2.2) do not start the header clock.
                if self.head_started.is_none()
                    && self.head_buf.iter().any(|b| *b != b'\r' && *b != b'\n')
                {
                    self.head_started = Some(Instant::now());
                }
                let parsed = if worth_parsing {
                    parse_head(&self.head_buf, s)
                } else {
                    HeadParse::Partial
                };
                match parsed {
                    HeadParse::Partial => {
                        if self.head_buf.len() > s.max_header_bytes + REQUEST_LINE_ALLOWANCE {
                            self.reject(out, shared, FrameError::HeadersTooLarge);
                        }
                        return Ok(());
                    }
                    HeadParse::Reject(e) => {
                        self.reject(out, shared, e);
                        return Ok(());
                    }
                    HeadParse::Complete(len, next) => {
                        out.extend_from_slice(&self.head_buf[..len]);
                        shared.push(Verdict::Ok);
                        self.head_started = None;
                        self.state = next;
                        let mut rest = std::mem::take(&mut self.head_buf);
                        rest.drain(..len);
                        if !matches!(self.state, State::Head) {
                            let n = self.consume_body(&rest, out)?;
                            rest.drain(..n);
                        }
                        // Whatever remains starts the next head (pipelining); nothing kept
                        // allocated between requests otherwise.
                        self.head_buf = if rest.is_empty() { Vec::new() } else { rest };
                        if cur.is_empty()
                            && (self.head_buf.is_empty() || !matches!(self.state, State::Head))
                        {
                            return Ok(());
                        }
                    }
                }
            } else {
                let n = self.consume_body(cur, out)?;
                cur = &cur[n..];
                if cur.is_empty() {
                    return Ok(());
                }
            }
        }
    }

    /// Track a body's framing; returns how many bytes belong to the current message.
    fn consume_body(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let lost = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Head => break,
                State::Fixed(rem) => {
                    let take = (*rem).min((input.len() - i) as u64) as usize;
                    i += take;
                    *rem -= take as u64;
                    if *rem == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(phase) => match phase {
                    ChunkPhase::Data(rem) => {
                        let take = (*rem).min((input.len() - i) as u64) as usize;
                        i += take;
                        *rem -= take as u64;
                        if *rem == 0 {
                            *phase = ChunkPhase::DataCr;
                        }
                    }
                    ChunkPhase::DataCr => {
                        if input[i] != b'\r' {
                            return Err(lost("chunk data not followed by CRLF"));
                        }
                        *phase = ChunkPhase::DataLf;
                        i += 1;
                    }
                    ChunkPhase::DataLf => {
                        if input[i] != b'\n' {
                            return Err(lost("chunk data not followed by CRLF"));
                        }
                        *phase = ChunkPhase::Size {
                            value: 0,
                            digits: 0,
                            ext: 0,
                            cr: false,
                        };
                        i += 1;
                    }
                    ChunkPhase::Size {
                        value,
                        digits,
                        ext,
                        cr,
                    } => {
                        let c = input[i];
                        i += 1;
                        if *cr {
                            if c != b'\n' {
                                return Err(lost("bad chunk size line"));
                            }
                            if *digits == 0 {
                                return Err(lost("empty chunk size"));
                            }
                            *phase = if *value == 0 {
                                ChunkPhase::Trailer {
                                    line: 0,
                                    total: 0,
                                    cr: false,
                                }
                            } else {
                                ChunkPhase::Data(*value)
                            };
                        } else if c == b'\r' {
                            *cr = true;
                        } else if *ext > 0 {
                            *ext += 1;
                            if *ext > MAX_CHUNK_META || c == b'\n' {
                                return Err(lost("bad chunk extension"));
                            }
                        } else if let Some(d) = (c as char).to_digit(16) {
                            if *digits >= 15 {
                                return Err(lost("chunk size too large"));
                            }
                            *value = *value * 16 + u64::from(d);
                            *digits += 1;
                        } else if c == b';' || c == b' ' || c == b'\t' {
                            *ext = 1;
                        } else {
                            return Err(lost("bad chunk size"));
                        }
                    }
                    ChunkPhase::Trailer { line, total, cr } => {
                        let c = input[i];
                        i += 1;
                        *total += 1;
                        if *total > MAX_CHUNK_META {
                            return Err(lost("trailers too large"));
                        }
                        if *cr {
                            if c != b'\n' {
                                return Err(lost("bad trailer line ending"));
                            }
                            *cr = false;
                            if *line == 0 {
                                self.state = State::Head;
                            } else {
                                *line = 0;
                            }
                        } else if c == b'\r' {
                            *cr = true;
                        } else if c == b'\n' {
                            return Err(lost("bare LF in trailers"));
                        } else {
                            *line += 1;
                        }
                    }
                },
            }
        }
        out.extend_from_slice(&input[..i]);
        Ok(i)
    }
}

enum HeadParse {
    Partial,
    Complete(usize, State),
    Reject(FrameError),
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn parse_head(buf: &[u8], s: &GuardSettings) -> HeadParse {
    // Stack storage for the usual limit; a heap one only for unusually large limits.
    let mut stack = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if s.max_headers <= stack.len() {
        &mut stack[..s.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; s.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return HeadParse::Reject(FrameError::TooManyHeaders)
        }
        Err(_) => return HeadParse::Reject(FrameError::Malformed),
    };
    let mut header_bytes = 0usize;
    let (mut cl_count, mut te_count) = (0, 0);
    let mut cl_value: Option<u64> = None;
    let (mut bad_cl, mut bad_te) = (false, false);
    for h in req.headers.iter() {
        header_bytes += h.name.len() + h.value.len() + 4;
        if h.name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            let v = trim(h.value);
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                bad_cl = true;
            } else {
                cl_value = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            if !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                bad_te = true;
            }
        }
    }
    if header_bytes > s.max_header_bytes {
        return HeadParse::Reject(FrameError::HeadersTooLarge);
    }
    if cl_count > 0 && te_count > 0 {
        return HeadParse::Reject(FrameError::ContentLengthAndTransferEncoding);
    }
    if cl_count > 1 {
        return HeadParse::Reject(FrameError::DuplicateContentLength);
    }
    if bad_cl {
        return HeadParse::Reject(FrameError::InvalidContentLength);
    }
    // HTTP/1.0 has no chunked encoding; several TE headers are a classic obfuscation.
    if te_count > 1 || bad_te || (te_count == 1 && req.version != Some(1)) {
        return HeadParse::Reject(FrameError::InvalidTransferEncoding);
    }
    let next = if te_count == 1 {
        State::Chunked(ChunkPhase::Size {
            value: 0,
            digits: 0,
            ext: 0,
            cr: false,
        })
    } else {
        match cl_value {
            Some(n) if n > 0 => State::Fixed(n),
            _ => State::Head,
        }
    };
    HeadParse::Complete(len, next)
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.h1.is_none() {
            return match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Pending => this.poll_timer(cx),
                ready => ready,
            };
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    // Drained: an idle connection keeps no body-sized buffer.
                    if this.out.capacity() > 4096 {
                        this.out = Vec::new();
                    } else {
                        this.out.clear();
                    }
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.h1.as_ref().is_some_and(|h| h.poisoned) {
                // Nothing more is read from a poisoned stream. Not EOF: hyper would drop the
                // connection before writing the 400; the placeholder's `Connection: close`
                // ends it once the answer is out (the idle timer is the backstop).
                return this.poll_timer(cx);
            }
            if buf.remaining() == 0 {
                // Nothing can be read into a full buffer (and a zero-byte read is not EOF).
                return Poll::Ready(Ok(()));
            }
            // Read straight into the caller's buffer, then let the guard take the bytes back
            // out (it holds a head until it is complete and judged). No read buffer of our
            // own: an idle keep-alive connection should cost kilobytes, not a 16 KiB scratch.
            let before = buf.filled().len();
            let res = Pin::new(&mut this.io).poll_read(cx, buf);
            let n = buf.filled().len() - before;
            let result = match res {
                Poll::Pending => None,
                Poll::Ready(Err(e)) => Some(Err(e)),
                Poll::Ready(Ok(())) if n == 0 => {
                    // Client closed: hand hyper any partial head so it sees the truncation.
                    if let Some(h) = this.h1.as_mut() {
                        this.out.append(&mut h.head_buf);
                    }
                    this.eof = true;
                    Some(Ok(()))
                }
                Poll::Ready(Ok(())) => {
                    let fed = match this.h1.as_mut() {
                        Some(h) => h.feed(
                            &buf.filled()[before..],
                            &mut this.out,
                            &this.shared,
                            &this.settings,
                        ),
                        None => Ok(()),
                    };
                    buf.set_filled(before);
                    Some(fed)
                }
            };
            match result {
                None => return this.poll_timer(cx),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(())) => continue,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.unflushed = false;
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.released {
            // hyper closes its side after a release end-of-stream; the socket stays open
            // for the next hyper connection. Only what it wrote is pushed out.
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GuardSettings {
        GuardSettings {
            max_header_bytes: 4096,
            max_headers: 20,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            idle_release: Duration::from_secs(5),
        }
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Verdict>, io::Result<()>) {
        let shared = ConnShared::default();
        let mut h = H1 {
            state: State::Head,
            head_buf: Vec::new(),
            head_started: None,
            poisoned: false,
        };
        let mut out = Vec::new();
        let mut res = Ok(());
        for c in chunks {
            res = h.feed(c, &mut out, &shared, &settings());
            if res.is_err() {
                break;
            }
        }
        let mut v = Vec::new();
        while let Some(x) = shared.next_verdict() {
            v.push(x);
        }
        (out, v, res)
    }

    #[test]
    fn pipelined_requests_pass_through() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, v, r) = run(&[input]);
        r.unwrap();
        assert_eq!(out, input);
        assert_eq!(v, vec![Verdict::Ok; 4]);
        // Byte by byte gives the same result.
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (out, v, r) = run(&chunks);
        r.unwrap();
        assert_eq!(out, input);
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn smuggling_heads_are_replaced() {
        for (req, e) in [
            (&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..], FrameError::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", FrameError::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", FrameError::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", FrameError::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", FrameError::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", FrameError::InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", FrameError::InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", FrameError::InvalidTransferEncoding),
            (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", FrameError::InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", FrameError::Malformed),
        ] {
            let (out, v, r) = run(&[req]);
            r.unwrap();
            assert_eq!(out, PLACEHOLDER, "{}", String::from_utf8_lossy(req));
            assert_eq!(v, vec![Verdict::Reject(e)], "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn second_pipelined_head_rejected_after_first_passes() {
        let input: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (out, v, _) = run(&[input]);
        assert_eq!(
            v,
            vec![
                Verdict::Ok,
                Verdict::Reject(FrameError::ContentLengthAndTransferEncoding)
            ]
        );
        assert!(out.starts_with(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(out.ends_with(PLACEHOLDER));
    }

    #[test]
    fn oversized_head_rejected() {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 5000));
        req.extend_from_slice(b"\r\n\r\n");
        let (_, v, _) = run(&[&req]);
        assert_eq!(v, vec![Verdict::Reject(FrameError::HeadersTooLarge)]);
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..30 {
            req.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let (_, v, _) = run(&[&req]);
        assert_eq!(v, vec![Verdict::Reject(FrameError::TooManyHeaders)]);
    }

    #[test]
    fn bare_lf_in_trailers_cuts_the_connection() {
        // hyper reads `\n` after the last chunk as the start of a trailer block; agreeing
        // on a message end there would let the next head slip past unchecked.
        let (_, _, r) = run(&[b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 90\r\n\r\n"]);
        assert!(r.is_err());
        let (_, _, r) = run(&[
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
        ]);
        assert!(r.is_err());
        let (out, v, r) = run(&[b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"]);
        r.unwrap();
        assert_eq!(v, vec![Verdict::Ok, Verdict::Ok]);
        assert!(out.ends_with(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"));
    }

    #[test]
    fn bad_chunk_framing_cuts_the_connection() {
        let (_, _, r) =
            run(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]);
        assert!(r.is_err());
        let (_, _, r) =
            run(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX"]);
        assert!(r.is_err());
    }

    /// Deterministic fuzzing: random mutations of request streams, fed in random chunk
    /// sizes. The guard must never panic, and the chunking must not change its decisions.
    #[test]
    fn random_streams_are_chunking_independent() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let corpus: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: v\r\n\r\n",
            b"\r\nGET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ];
        let alphabet: &[u8] =
            b"\r\n:; 0123456789abcdefABCDEF-Content-LengthTransfer-Encodingchunked\t\x00\x0b";
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(1 + rnd() % 4) {
                input.extend_from_slice(corpus[(rnd() % corpus.len() as u64) as usize]);
            }
            for _ in 0..(rnd() % 6) {
                let pos = (rnd() % (input.len() as u64 + 1)) as usize;
                let c = alphabet[(rnd() % alphabet.len() as u64) as usize];
                match rnd() % 3 {
                    0 if pos < input.len() => input[pos] = c,
                    1 if pos < input.len() => {
                        input.remove(pos);
                    }
                    _ => input.insert(pos, c),
                }
            }
            let whole = run(&[&input]);
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut rest: &[u8] = &input;
            while !rest.is_empty() {
                let n = 1 + (rnd() % 17) as usize;
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            let split = run(&chunks);
            let show = String::from_utf8_lossy(&input);
            assert_eq!(whole.2.is_ok(), split.2.is_ok(), "{show:?}");
            if whole.1 == split.1 {
                if whole.2.is_ok() {
                    assert_eq!(whole.0, split.0, "{show:?}");
                }
            } else {
                // Heads are only re-parsed when a line ends, so a malformed *partial* line
                // is reported once its line ends rather than at once; nothing else may
                // differ, and nothing is released to hyper before the verdict.
                let mut expected = split.1.clone();
                expected.push(Verdict::Reject(FrameError::Malformed));
                assert_eq!(whole.1, expected, "verdicts differ for {show:?}");
                let mut out = split.0.clone();
                out.extend_from_slice(PLACEHOLDER);
                assert_eq!(whole.0, out, "{show:?}");
            }
        }
    }
}
