//! The body type inside the gateway, both directions. A leaf.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type inside the gateway, both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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
