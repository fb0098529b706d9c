//! The body type inside the gateway, both directions. A leaf.

use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type inside the gateway, both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Bodies of at least this many bytes are processed — validated, scanned by DLP (HTTP JSON,
/// NDJSON lines, text, HL7 over HTTP and over MLLP alike), lexed into their shared index —
/// off the async workers, on tokio's blocking pool ([`by_size`], [`in_place_by_size`]).
///
/// Why one size for all three: a policy that works for milliseconds on a worker stalls every
/// other connection that worker serves, and the three run at comparable speeds (tens to a
/// few hundred MB/s per core: `benches/validate.rs` group `lex_once` times validation and
/// DLP of the same bodies), so the same size means about the same time on a worker for
/// each: at 256 KiB about a millisecond for validation and a few for Safe Harbor DLP — a
/// stall no client notices — while most FHIR bodies are a few KiB, whose work (microseconds)
/// is of the order of the hand-off to the pool (a task and a thread wake-up), so moving
/// them would only add latency. Before this rule DLP moved at this size, validation of up to 10 MiB ran inline on a worker, and MLLP
/// DLP always did. Not configurable: it follows the code's speed, not a deployment's needs.
pub const OFF_WORKER_BYTES: usize = 256 * 1024;

/// The one rule: is a body of `len` bytes processed off the async workers?
pub fn off_worker(len: usize) -> bool {
    len >= OFF_WORKER_BYTES
}

/// Run `f` (the processing of a body of `len` bytes) where [`off_worker`] says: inline on
/// this worker, or on the blocking pool. `None`: the blocking task panicked or was cancelled
/// (the caller fails closed).
pub async fn by_size<T, F>(len: usize, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if !off_worker(len) {
        return Some(f());
    }
    tokio::task::spawn_blocking(f).await.ok()
}

/// [`by_size`] for synchronous code that runs inside a task's poll (a streaming body's
/// per-line filter, which cannot await): above the threshold the worker hands its other
/// tasks to the runtime while `f` runs (`block_in_place`); on a single-threaded runtime,
/// where that is impossible, `f` runs inline.
pub fn in_place_by_size<T>(len: usize, f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if off_worker(len) && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

pub fn empty_body() -> Body {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}

/// Undo a `Content-Encoding`, at most `cap` bytes out. `Err(true)`: over the cap (a bomb);
/// `Err(false)`: unknown coding or corrupt data.
pub fn decode(
    encodings: http::header::GetAll<'_, http::HeaderValue>,
    body: &[u8],
    cap: usize,
) -> Result<Option<Vec<u8>>, bool> {
    // Every header line and every list item counts: `identity` on one line and `gzip` on
    // the next is gzip. More than one real coding is refused rather than half undone.
    let mut codings = Vec::new();
    for v in encodings {
        for c in v.to_str().map_err(|_| false)?.split(',') {
            let c = c.trim().to_ascii_lowercase();
            if !c.is_empty() && c != "identity" {
                codings.push(c);
            }
        }
    }
    let enc = match codings.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        _ => return Err(false),
    };
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let r = match enc.as_str() {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out),
        // `deflate` is zlib-wrapped per RFC 9110; some servers send raw deflate.
        "deflate" => {
            let r = flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out);
            if r.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        "br" => brotli_decompressor::Decompressor::new(body, 8192)
            .take(limit)
            .read_to_end(&mut out),
        _ => return Err(false),
    };
    r.map_err(|_| false)?;
    if out.len() > cap {
        return Err(true);
    }
    Ok(Some(out))
}

/// What a [`lines`] adapter does with each line of a newline-delimited body (NDJSON).
pub trait LineFilter: Send + 'static {
    /// One complete line, without its `\n`. `None` removes it; `Some(b)` sends `b`
    /// followed by a `\n`.
    fn line(&mut self, line: &[u8]) -> Option<Bytes>;
    /// The line grew past the bound before its `\n`: `true` passes it through unread,
    /// `false` removes it (up to and including its `\n`).
    fn too_long(&mut self) -> bool;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Collecting a line into the buffer.
    Collect,
    /// Inside an over-long line that is passed through unread.
    Pass,
    /// Inside an over-long line that is removed.
    Skip,
}

/// A body that hands each line of `inner` to a filter as it streams: at most `max` bytes
/// of one line are ever held, never the whole body (a bulk-export file can be gigabytes).
struct Lines {
    inner: Body,
    buf: bytes::BytesMut,
    max: usize,
    state: LineState,
    filter: Box<dyn LineFilter>,
    done: bool,
}

/// Split `body` on `\n` and pass every line through `filter`; lines longer than `max`
/// bytes go to [`LineFilter::too_long`]. Trailers are dropped (they described the bytes
/// before filtering).
pub fn lines(body: Body, max: usize, filter: Box<dyn LineFilter>) -> Body {
    Lines {
        inner: body,
        buf: bytes::BytesMut::new(),
        max: max.max(1),
        state: LineState::Collect,
        filter,
        done: false,
    }
    .boxed_unsync()
}

impl Lines {
    fn emit(&mut self, out: &mut bytes::BytesMut) {
        let line = std::mem::take(&mut self.buf);
        if let Some(b) = self.filter.line(&line) {
            out.extend_from_slice(&b);
            out.extend_from_slice(b"\n");
        }
    }

    fn feed(&mut self, mut rest: &[u8]) -> Bytes {
        let mut out = bytes::BytesMut::new();
        while !rest.is_empty() {
            let nl = rest.iter().position(|b| *b == b'\n');
            let (chunk, after) = match nl {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            match self.state {
                LineState::Collect if self.buf.len() + chunk.len() > self.max => {
                    if self.filter.too_long() {
                        out.extend_from_slice(&self.buf);
                        out.extend_from_slice(chunk);
                        self.state = LineState::Pass;
                    } else {
                        self.state = LineState::Skip;
                    }
                    self.buf.clear();
                    if nl.is_some() {
                        if self.state == LineState::Pass {
                            out.extend_from_slice(b"\n");
                        }
                        self.state = LineState::Collect;
                    }
                }
                LineState::Collect => {
                    self.buf.extend_from_slice(chunk);
                    if nl.is_some() {
                        self.emit(&mut out);
                    }
                }
                LineState::Pass => {
                    out.extend_from_slice(chunk);
                    if nl.is_some() {
                        out.extend_from_slice(b"\n");
                        self.state = LineState::Collect;
                    }
                }
                LineState::Skip => {
                    if nl.is_some() {
                        self.state = LineState::Collect;
                    }
                }
            }
            rest = after;
        }
        out.freeze()
    }
}

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(d) = frame.into_data() else { continue };
                    let out = this.feed(&d);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    // A last line without its `\n`.
                    let mut out = bytes::BytesMut::new();
                    if this.state == LineState::Collect && !this.buf.is_empty() {
                        this.emit(&mut out);
                    }
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(out.freeze()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A body gathered into memory by [`gather`].
pub enum Gathered {
    /// All of it.
    Whole(Bytes),
    /// More than the cap: what was read (past the cap by at most one frame), and the rest.
    Over { front: Bytes, rest: Body },
}

/// Read a body into one buffer, stopping once it passes `max` bytes; non-data frames
/// (trailers) are dropped. A body that comes as one frame — the common case for an upstream
/// answer read at once, or a body a policy already buffered — is handed on without a copy;
/// otherwise the buffer is sized from the body's length when it says it.
pub async fn gather(mut body: Body, max: usize) -> Result<Gathered, BoxError> {
    let hint = http_body::Body::size_hint(&body).exact().map_or(0, |n| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(max.saturating_add(1))
    });
    let mut first: Option<Bytes> = None;
    let mut buf: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(d) = frame?.into_data() else { continue };
        if d.is_empty() {
            continue;
        }
        len = len.saturating_add(d.len());
        match (&mut buf, first.take()) {
            (Some(b), _) => b.extend_from_slice(&d),
            (None, None) => first = Some(d),
            (None, Some(f)) => {
                let mut b = bytes::BytesMut::with_capacity(hint.max(len));
                b.extend_from_slice(&f);
                b.extend_from_slice(&d);
                buf = Some(b);
            }
        }
        if len > max {
            let front = match buf {
                Some(b) => b.freeze(),
                None => first.unwrap_or_default(),
            };
            return Ok(Gathered::Over { front, rest: body });
        }
    }
    Ok(Gathered::Whole(match buf {
        Some(b) => b.freeze(),
        None => first.unwrap_or_default(),
    }))
}

/// Frames already taken from a body, then the rest of it: a body read partly (to decide on
/// it, or to keep a copy for a retry) is handed on whole.
pub fn prefixed(front: VecDeque<Result<Frame<Bytes>, BoxError>>, rest: Body) -> Body {
    Prefixed { front, rest }.boxed_unsync()
}

struct Prefixed {
    front: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.front.pop_front() {
            return Poll::Ready(Some(f));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.rest.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let front: u64 = self
            .front
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower().saturating_add(front));
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(front));
        }
        h
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    struct Upper;
    impl LineFilter for Upper {
        fn line(&mut self, line: &[u8]) -> Option<Bytes> {
            (!line.starts_with(b"drop")).then(|| Bytes::from(line.to_ascii_uppercase()))
        }
        fn too_long(&mut self) -> bool {
            false
        }
    }

    /// A body that yields the given chunks one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);
    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    async fn run(chunks: &[&str], max: usize) -> String {
        let body = Chunks(chunks.iter().map(|c| Bytes::from(c.to_string())).collect());
        let out = lines(body.boxed_unsync(), max, Box::new(Upper))
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn lines_split_across_any_chunking() {
        let text = "ab\ndrop me\ncd\nlooooooooooong\nef";
        // Every split point of the text into two chunks gives the same answer.
        for i in 0..=text.len() {
            let (a, b) = text.split_at(i);
            assert_eq!(run(&[a, b], 8).await, "AB\nCD\nEF\n", "split at {i}");
        }
        assert_eq!(run(&["x\n\n"], 8).await, "X\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `parts` as separate frames, with empty frames and trailers between them.
    fn framed(parts: &[&[u8]]) -> Body {
        let mut frames: VecDeque<Result<Frame<Bytes>, BoxError>> = VecDeque::new();
        for p in parts {
            frames.push_back(Ok(Frame::data(Bytes::copy_from_slice(p))));
            frames.push_back(Ok(Frame::data(Bytes::new())));
        }
        frames.push_back(Ok(Frame::trailers(http::HeaderMap::new())));
        prefixed(frames, empty_body())
    }

    async fn all(b: Body) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn gathered_bodies_are_whole_or_split_at_the_cap_with_nothing_lost() {
        let data: Vec<u8> = (0..200u8).collect();
        // Every way of cutting the data into up to three frames, against caps around every
        // total: below, at, and above.
        for a in 0..=data.len() {
            for b in [a, (a + data.len()) / 2, data.len()] {
                let parts = [&data[..a], &data[a..b], &data[b..]];
                for max in [0, a, b, data.len() - 1, data.len(), data.len() + 1] {
                    match gather(framed(&parts), max).await.unwrap() {
                        Gathered::Whole(got) => {
                            assert!(data.len() <= max, "{a} {b} {max}");
                            assert_eq!(&got[..], &data[..]);
                        }
                        Gathered::Over { front, rest } => {
                            assert!(data.len() > max, "{a} {b} {max}");
                            assert!(front.len() > max);
                            let mut again = front.to_vec();
                            again.extend(all(rest).await);
                            assert_eq!(again, data, "{a} {b} {max}");
                        }
                    }
                }
            }
        }
        // One frame is handed on as it came (no copy).
        let one = Bytes::from(data.clone());
        let body = http_body_util::Full::new(one.clone())
            .map_err(|n| match n {})
            .boxed_unsync();
        match gather(body, 1000).await.unwrap() {
            Gathered::Whole(got) => assert_eq!(got.as_ptr(), one.as_ptr()),
            Gathered::Over { .. } => panic!("under the cap"),
        }
    }
}
