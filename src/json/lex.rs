//! Lexing primitives, each usable at any offset of a body: whitespace, strings (scan and
//! decode, with an optional map from decoded bytes back to body offsets), numbers, literals.
//! The grammar each one accepts is stated in `mod.rs`.

use std::borrow::Cow;

use super::{Error, ErrorKind};

/// JSON whitespace (RFC 8259 §2): nothing else counts.
#[inline]
pub fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first offset at or after `i` that is not whitespace.
///
/// Byte by byte, and small enough to be inlined everywhere: a run is mostly one space or
/// none (compact JSON, `": "`, `", "`). Reading runs a word at a time was measured
/// (callgrind, `benches/insns.sh`): it cost more on the FHIR examples than it saved, because
/// the larger function stopped the validator's callers from being inlined.
#[inline]
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// A string token: its content is `start..end` (between the quotes; the closing quote is at
/// `end`, so the token ends at `end + 1`), `esc` when it holds a backslash escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str {
    pub start: usize,
    pub end: usize,
    pub esc: bool,
}

impl Str {
    /// The raw content (escapes not decoded).
    #[inline]
    pub fn raw<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        b.get(self.start..self.end).unwrap_or_default()
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let h = b.get(i..i.checked_add(4)?)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// The character of the escape whose backslash is at `raw[i]`, and the escape's length in
/// bytes (2, 6, or 12 for a surrogate pair). Lone surrogates are refused.
pub fn escape_at(raw: &[u8], i: usize) -> Result<(char, usize), ErrorKind> {
    let c = match raw.get(i + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let hi = hex4(raw, i + 2).ok_or(ErrorKind::BadUnicodeEscape)?;
            return match hi {
                0xD800..=0xDBFF => {
                    let lo = (raw.get(i + 6..i + 8) == Some(b"\\u"))
                        .then(|| hex4(raw, i + 8))
                        .flatten()
                        .filter(|lo| (0xDC00..=0xDFFF).contains(lo))
                        .ok_or(ErrorKind::LoneSurrogate)?;
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    Ok((char::from_u32(cp).ok_or(ErrorKind::LoneSurrogate)?, 12))
                }
                0xDC00..=0xDFFF => Err(ErrorKind::LoneSurrogate),
                _ => Ok((char::from_u32(hi).ok_or(ErrorKind::BadUnicodeEscape)?, 6)),
            };
        }
        _ => return Err(ErrorKind::BadEscape),
    };
    Ok((c, 2))
}

/// Scan the string whose opening quote is at `b[at]`. Checks escapes, raw control bytes and
/// UTF-8; the token ends at `end + 1`.
///
/// Speed: content is read eight bytes at a time as a `u64` (SWAR: one word answers "is there
/// a quote, a backslash or a control byte in these eight, and which comes first"), so a short
/// FHIR string (a code, an id, a date) costs a few words instead of a table lookup per byte;
/// a run longer than [`LONG_RUN`] (narratives, notes) goes to memchr's SIMD search, then one
/// vectorisable pass checks it for control and non-ASCII bytes. Non-ASCII bytes only set a
/// flag: UTF-8 is validated once, over the whole content, for strings that hold one. The
/// last few bytes of a body (fewer than a word) are read one at a time.
#[inline]
pub fn string(b: &[u8], at: usize) -> Result<Str, Error> {
    if b.get(at) != Some(&b'"') {
        return Err(Error::new(ErrorKind::UnexpectedChar, at));
    }
    let start = at + 1;
    let mut i = start;
    let mut esc = false;
    // OR of every word read: its high bits say a non-ASCII byte may be in the content (bytes
    // read past the closing quote can only make this say "validate", never "skip").
    let mut high = 0u64;
    loop {
        let stop = 'run: {
            let mut words = 0;
            while let Some(w) = word(b, i) {
                high |= w;
                let m = stops(w);
                if m != 0 {
                    let k = m.trailing_zeros() / 8;
                    i += k as usize;
                    break 'run (w >> (8 * k)) as u8;
                }
                i += 8;
                words += 1;
                if words == LONG_RUN / 8 {
                    let rest = b.get(i..).unwrap_or_default();
                    let found = memchr::memchr2(b'"', b'\\', rest);
                    let run = &rest[..found.unwrap_or(rest.len())];
                    let (low, h) = run
                        .iter()
                        .fold((0xFFu8, 0u8), |(lo, hi), &c| (lo.min(c), hi | c));
                    if low < 0x20 {
                        let p = run.iter().position(|&c| c < 0x20).unwrap_or(0);
                        return Err(Error::new(ErrorKind::ControlChar, i + p));
                    }
                    high |= u64::from(h);
                    let Some(off) = found else {
                        return Err(Error::new(ErrorKind::UnterminatedString, b.len()));
                    };
                    i += off;
                    break 'run rest[off];
                }
            }
            // Fewer than eight bytes left in the body.
            loop {
                let Some(&c) = b.get(i) else {
                    return Err(Error::new(ErrorKind::UnterminatedString, b.len()));
                };
                match c {
                    b'"' | b'\\' => break 'run c,
                    0..=0x1F => break 'run c,
                    _ => high |= u64::from(c),
                }
                i += 1;
            }
        };
        match stop {
            b'"' => break,
            b'\\' => {
                esc = true;
                let (_, len) = escape_at(b, i).map_err(|k| Error::new(k, i))?;
                i += len;
            }
            _ => return Err(Error::new(ErrorKind::ControlChar, i)),
        }
    }
    if high & HIGH_BITS != 0 && std::str::from_utf8(b.get(start..i).unwrap_or_default()).is_err() {
        return Err(Error::new(ErrorKind::BadUtf8, start));
    }
    Ok(Str { start, end: i, esc })
}

/// Bytes read word by word before a string's run is handed to memchr.
const LONG_RUN: usize = 32;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The eight bytes at `b[i..]` as a little-endian word (byte `i` lowest), if there are eight.
#[inline]
pub(super) fn word(b: &[u8], i: usize) -> Option<u64> {
    // `i + 8` cannot wrap for an offset into a slice; if it did, the range would be empty.
    let w: [u8; 8] = b.get(i..i.wrapping_add(8))?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// A mask whose lowest set bit is the high bit of the first byte of `w` (lowest first) that
/// ends a run of string content: `"`, `\` or a byte below 0x20. Zero when there is none.
///
/// `(x - 0x01..) & !x & 0x80..` flags the zero bytes of `x` and, through the borrow, possibly
/// bytes above a flagged one, never a byte below the first: only the lowest bit is exact,
/// and only the lowest bit is used. `!w` keeps bytes of 0x80 and above (UTF-8) unflagged.
#[inline]
fn stops(w: u64) -> u64 {
    // `"` and `\` are ASCII: a byte's high bit is the same in `w` and in `w ^ pattern`,
    // so one `& !w` serves the three tests.
    let quote = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
    let backslash = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    let control = w.wrapping_sub(ONES * 0x20);
    (quote | backslash | control) & !w & HIGH_BITS
}

/// Decode string content `raw` (between the quotes) into `out` (cleared first).
pub fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let Some(off) = memchr::memchr(b'\\', &raw[i..]) else {
            out.extend_from_slice(&raw[i..]);
            break;
        };
        out.extend_from_slice(&raw[i..i + off]);
        i += off;
        let (ch, len) = escape_at(raw, i).map_err(|k| Error::new(k, i))?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        i += len;
    }
    Ok(())
}

/// Decoded content: borrowed when there is no escape.
pub fn decode(raw: &[u8], esc: bool) -> Result<Cow<'_, [u8]>, Error> {
    if !esc {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    decode_into(raw, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Decoded content as text: borrowed when there is no escape. `raw` must come from a string
/// token (already UTF-8); anything else is refused, not repaired.
pub fn decode_str(raw: &[u8], esc: bool) -> Result<Cow<'_, str>, Error> {
    let bad = |e: std::str::Utf8Error| Error::new(ErrorKind::BadUtf8, e.valid_up_to());
    match decode(raw, esc)? {
        Cow::Borrowed(r) => std::str::from_utf8(r).map(Cow::Borrowed).map_err(bad),
        Cow::Owned(v) => String::from_utf8(v)
            .map(Cow::Owned)
            .map_err(|e| bad(e.utf8_error())),
    }
}

/// Decode content `raw` that starts at body offset `base` into `out`, with `map[k]` = the
/// body range `(start, end)` that produced `out[k]` (so an edit found in decoded text can be
/// applied to the original bytes).
pub fn decode_map(
    raw: &[u8],
    base: usize,
    out: &mut Vec<u8>,
    map: &mut Vec<(u32, u32)>,
) -> Result<(), Error> {
    let at = |n: usize| u32::try_from(base + n).unwrap_or(u32::MAX);
    out.clear();
    map.clear();
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            map.push((at(i), at(i + 1)));
            i += 1;
            continue;
        }
        let (ch, len) = escape_at(raw, i).map_err(|k| Error::new(k, base + i))?;
        let mut buf = [0u8; 4];
        for &e in ch.encode_utf8(&mut buf).as_bytes() {
            out.push(e);
            map.push((at(i), at(i + len)));
        }
        i += len;
    }
    Ok(())
}

/// Scan the number starting at `b[at]`: `(end, integer)` where `integer` says the lexeme
/// has neither fraction nor exponent.
pub fn number(b: &[u8], at: usize) -> Result<(usize, bool), Error> {
    let mut i = at;
    let bad = |i: usize| Err(Error::new(ErrorKind::BadNumber, i));
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return bad(i),
    }
    let mut int = true;
    if b.get(i) == Some(&b'.') {
        int = false;
        i += 1;
        let d = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == d {
            return bad(i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        int = false;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let d = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == d {
            return bad(i);
        }
    }
    // Something number-like glued on (`01`, `1.2.3`, `1e5e5`, `2x`) is a bad number, not a
    // missing comma: one message for one mistake.
    if matches!(b.get(i), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-')) {
        return bad(i);
    }
    Ok((i, int))
}

/// Scan literal `lit` (`true`, `false`, `null`) at `b[at]`: its end.
pub fn literal(b: &[u8], at: usize, lit: &[u8]) -> Result<usize, Error> {
    let end = at + lit.len();
    if b.get(at..end) == Some(lit) && !b.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        Ok(end)
    } else {
        Err(Error::new(ErrorKind::BadLiteral, at))
    }
}
