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
/// Speed: runs of plain content are found with `memchr2` (the quote or the backslash), and
/// each run is checked for control bytes and non-ASCII bytes in one branch-free fold the
/// compiler vectorises; UTF-8 is validated only for strings that hold a non-ASCII byte.
#[inline]
pub fn string(b: &[u8], at: usize) -> Result<Str, Error> {
    if b.get(at) != Some(&b'"') {
        return Err(Error::new(ErrorKind::UnexpectedChar, at));
    }
    let start = at + 1;
    let mut i = start;
    let mut esc = false;
    let mut high = false;
    loop {
        // Most FHIR strings are short (codes, ids, dates): one table lookup per byte finds
        // their end; a run longer than SHORT_RUN (narratives, notes) goes to memchr's SIMD
        // search, then one vectorisable pass checks it for control and non-ASCII bytes.
        let mut n = 0;
        let stop = loop {
            let Some(&c) = b.get(i) else {
                return Err(Error::new(ErrorKind::UnterminatedString, b.len()));
            };
            match STRING_CLASS[c as usize] {
                PLAIN => {}
                NON_ASCII => high = true,
                CONTROL => return Err(Error::new(ErrorKind::ControlChar, i)),
                _ => break c,
            }
            i += 1;
            n += 1;
            if n == SHORT_RUN {
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
                high |= h & 0x80 != 0;
                let Some(off) = found else {
                    return Err(Error::new(ErrorKind::UnterminatedString, b.len()));
                };
                i += off;
                break rest[off];
            }
        };
        if stop == b'"' {
            break;
        }
        esc = true;
        let (_, len) = escape_at(b, i).map_err(|k| Error::new(k, i))?;
        i += len;
    }
    if high && std::str::from_utf8(b.get(start..i).unwrap_or_default()).is_err() {
        return Err(Error::new(ErrorKind::BadUtf8, start));
    }
    Ok(Str { start, end: i, esc })
}

/// Bytes scanned one at a time before a string's run is handed to memchr.
const SHORT_RUN: usize = 32;

const PLAIN: u8 = 0;
const END: u8 = 1;
const CONTROL: u8 = 2;
const NON_ASCII: u8 = 3;

/// What each byte is inside a string: `"` and `\` end a run of plain content.
static STRING_CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i == b'"' as usize || i == b'\\' as usize {
            END
        } else if i < 0x20 {
            CONTROL
        } else if i >= 0x80 {
            NON_ASCII
        } else {
            PLAIN
        };
        i += 1;
    }
    t
};

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
