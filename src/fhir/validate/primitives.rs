//! Lexical checks of FHIR primitive values: the R4 regexes of date/time, id, code, uri, oid,
//! uuid, base64, string and the narrative `div`, hand-written as byte matchers (no regex engine on
//! the request path), the `Reference.reference` form classifier and the JSON Pointer check used by
//! JSON Patch.

use super::*;

// ---------------------------------------------------------------------------------------------
// Primitive lexical matchers (R4 regexes, hand-written)
// ---------------------------------------------------------------------------------------------

/// Whitespace per the Java/XML-Schema `\s` class used by the R4 regexes.
pub(super) fn is_rx_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

pub(super) fn two_digits(s: &[u8], i: usize) -> Option<u32> {
    match (s.get(i), s.get(i + 1)) {
        (Some(a), Some(b)) if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

pub(super) fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// `([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)`: four digits, not `0000`.
pub(super) fn m_year(s: &[u8]) -> bool {
    matches!(s.get(..4), Some(y) if all_digits(y) && y != b"0000")
}

/// Matches `-MM` at i; returns the index after it.
pub(super) fn m_month(s: &[u8], i: usize) -> Option<usize> {
    (s.get(i) == Some(&b'-') && matches!(two_digits(s, i + 1), Some(1..=12))).then_some(i + 3)
}

pub(super) fn m_day(s: &[u8], i: usize) -> Option<usize> {
    (s.get(i) == Some(&b'-') && matches!(two_digits(s, i + 1), Some(1..=31))).then_some(i + 3)
}

/// `([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?` at i; returns the end index.
pub(super) fn m_time_at(s: &[u8], i: usize) -> Option<usize> {
    if !matches!(two_digits(s, i), Some(0..=23))
        || s.get(i + 2) != Some(&b':')
        || !matches!(two_digits(s, i + 3), Some(0..=59))
        || s.get(i + 5) != Some(&b':')
        || !matches!(two_digits(s, i + 6), Some(0..=60))
    {
        return None;
    }
    let mut j = i + 8;
    if s.get(j) == Some(&b'.') {
        let start = j + 1;
        j = start;
        while s.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start {
            return None;
        }
    }
    Some(j)
}

/// `(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))` exactly at the end of s.
pub(super) fn m_tz_end(s: &[u8], i: usize) -> bool {
    match s.get(i) {
        Some(b'Z') => s.len() == i + 1,
        Some(b'+' | b'-') => {
            s.len() == i + 6
                && s.get(i + 3) == Some(&b':')
                && match (two_digits(s, i + 1), two_digits(s, i + 4)) {
                    (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                    _ => false,
                }
        }
        _ => false,
    }
}

pub(super) fn m_date(s: &[u8]) -> bool {
    if !m_year(s) {
        return false;
    }
    if s.len() == 4 {
        return true;
    }
    match m_month(s, 4) {
        Some(7) if s.len() == 7 => true,
        Some(7) => m_day(s, 7) == Some(10) && s.len() == 10,
        _ => false,
    }
}

pub(super) fn m_datetime(s: &[u8]) -> bool {
    if !m_year(s) {
        return false;
    }
    if s.len() == 4 {
        return true;
    }
    if m_month(s, 4).is_none() {
        return false;
    }
    if s.len() == 7 {
        return true;
    }
    if m_day(s, 7).is_none() {
        return false;
    }
    if s.len() == 10 {
        return true;
    }
    s.get(10) == Some(&b'T') && m_time_at(s, 11).is_some_and(|e| m_tz_end(s, e))
}

pub(super) fn m_instant(s: &[u8]) -> bool {
    m_year(s)
        && m_month(s, 4).is_some()
        && m_day(s, 7).is_some()
        && s.get(10) == Some(&b'T')
        && m_time_at(s, 11).is_some_and(|e| m_tz_end(s, e))
}

pub(super) fn m_time(s: &[u8]) -> bool {
    m_time_at(s, 0) == Some(s.len())
}

/// `[A-Za-z0-9\-\.]{1,64}`
pub(super) fn m_id(s: &[u8]) -> bool {
    (1..=64).contains(&s.len())
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// True if no byte is <= 0x20 (space or control), checked 8 bytes at a time.
pub(super) fn no_space_or_ctl(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_le_bytes(w);
        if v.wrapping_sub(LO * 0x21) & !v & HI != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&c| c > 0x20)
}

/// `[^\s]+(\s[^\s]+)*`
pub(super) fn m_code(s: &[u8]) -> bool {
    if no_space_or_ctl(s) {
        return !s.is_empty();
    }
    match (s.first(), s.last()) {
        (Some(&a), Some(&z)) if !is_rx_ws(a) && !is_rx_ws(z) => !s
            .windows(2)
            .any(|w| matches!(w, [x, y] if is_rx_ws(*x) && is_rx_ws(*y))),
        _ => false,
    }
}

/// `\S*` (non-empty is enforced separately)
pub(super) fn m_uri(s: &[u8]) -> bool {
    no_space_or_ctl(s) || !s.iter().any(|&c| is_rx_ws(c))
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
pub(super) fn m_oid(s: &[u8]) -> bool {
    let Some(rest) = s.strip_prefix(b"urn:oid:") else {
        return false;
    };
    let mut parts = rest.split(|&c| c == b'.');
    if !matches!(parts.next(), Some([b'0'..=b'2'])) {
        return false;
    }
    let mut n = 0;
    for p in parts {
        if !all_digits(p) || (p.len() > 1 && p.first() == Some(&b'0')) {
            return false;
        }
        n += 1;
    }
    n >= 1
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
pub(super) fn m_uuid(s: &[u8]) -> bool {
    let Some(rest) = s.strip_prefix(b"urn:uuid:") else {
        return false;
    };
    rest.len() == 36
        && rest.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
            }
        })
}

pub(super) const CONDITIONAL_ONLY_IN_BUNDLES: &str =
    "invalid reference: a conditional reference (Type?query) is only allowed in the entries of a transaction or batch Bundle";

/// What a `Reference.reference` string is (R4 references.html#literal).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RefForm {
    /// Relative `Type/id[/_history/vid][#id]`, `#` / `#id` (contained), `urn:uuid:`,
    /// `urn:oid:`, or any other absolute URI.
    Literal,
    /// `Type?query`: legal only inside transaction/batch Bundle entries.
    Conditional,
    Invalid(&'static str),
}

/// RFC 3986 scheme: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, followed by `:` before any
/// `/`, `?` or `#` (so `Patient/1` is relative, `urn:x` and `https://…` are absolute).
pub(super) fn uri_scheme(v: &[u8]) -> Option<&[u8]> {
    let colon = v
        .iter()
        .position(|&c| matches!(c, b':' | b'/' | b'?' | b'#'))?;
    let scheme = v.get(..colon)?;
    (v.get(colon) == Some(&b':')
        && scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))
    .then_some(scheme)
}

/// `urn:uuid:` + a UUID; hex digits of either case (RFC 4122: case-insensitive on input,
/// and `Reference.reference` is a string, not the lowercase-only R4 `uuid` type).
pub(super) fn m_uuid_any_case(v: &[u8]) -> bool {
    m_uuid(&v.to_ascii_lowercase())
}

/// Classifies a `Reference.reference` value (non-empty, valid UTF-8). Absolute URIs are
/// accepted whatever they point at — R4 allows references to any resource on any server,
/// and logical/canonical URLs — once they are well-formed: no whitespace or control
/// characters, and an authority for `http(s)`. Relative references must name a concrete R4
/// resource type and a valid id, because a server resolves them against its own base.
pub(super) fn reference_form(s: &Schema, v: &[u8]) -> RefForm {
    use RefForm::*;
    if !no_space_or_ctl(v) {
        return Invalid("a reference must not contain whitespace or control characters");
    }
    if let Some(frag) = v.strip_prefix(b"#") {
        return if frag.is_empty() || m_id(frag) {
            Literal
        } else {
            Invalid("a local reference is '#' or '#' followed by a contained resource id")
        };
    }
    if let Some(scheme) = uri_scheme(v) {
        if scheme.eq_ignore_ascii_case(b"urn") {
            let lower = v.get(..9).map(<[u8]>::to_ascii_lowercase);
            if lower.as_deref() == Some(b"urn:uuid:") {
                return if m_uuid_any_case(v) {
                    Literal
                } else {
                    Invalid("urn:uuid: must be followed by a UUID")
                };
            }
            if v.get(..8).map(<[u8]>::to_ascii_lowercase).as_deref() == Some(b"urn:oid:") {
                let mut norm = b"urn:oid:".to_vec();
                norm.extend_from_slice(v.get(8..).unwrap_or_default());
                return if m_oid(&norm) {
                    Literal
                } else {
                    Invalid("urn:oid: must be followed by an OID")
                };
            }
        }
        if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") {
            let rest = v.get(scheme.len() + 1..).unwrap_or_default();
            let Some(auth) = rest.strip_prefix(b"//") else {
                return Invalid("an http(s) reference must be an absolute URL (scheme://host/...)");
            };
            let host_end = auth
                .iter()
                .position(|&c| matches!(c, b'/' | b'?' | b'#'))
                .unwrap_or(auth.len());
            if host_end == 0 {
                return Invalid("an http(s) reference must name a host");
            }
        }
        return if v.len() > scheme.len() + 1 {
            Literal
        } else {
            Invalid("an absolute reference needs more than a scheme")
        };
    }
    // Relative to the server's base: `Type/id[/_history/vid]`, or a conditional `Type?query`.
    if let Some(q) = v.iter().position(|&c| c == b'?') {
        let (ty, query) = v.split_at(q);
        return if s.resource_type(ty).is_none() {
            Invalid("a conditional reference must start with an R4 resource type")
        } else if query.len() < 2 {
            Invalid("a conditional reference needs search parameters after '?'")
        } else {
            Conditional
        };
    }
    let (path, frag) = match v.iter().position(|&c| c == b'#') {
        Some(i) => (v.get(..i).unwrap_or_default(), v.get(i + 1..)),
        None => (v, None),
    };
    if frag.is_some_and(|f| !m_id(f)) {
        return Invalid("a fragment must be a contained resource id");
    }
    let mut parts = path.split(|&c| c == b'/');
    let (ty, id) = (parts.next(), parts.next());
    let version = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(b"_history"), Some(vid), None) => Some(vid),
        _ => return Invalid("a relative reference is Type/id, optionally /_history/version"),
    };
    if ty.and_then(|t| s.resource_type(t)).is_none() {
        return Invalid("a relative reference must start with an R4 resource type");
    }
    if !id.is_some_and(m_id) || version.is_some_and(|vid| !m_id(vid)) {
        return Invalid("a relative reference needs an id of 1-64 letters, digits, '-' or '.'");
    }
    Literal
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`
pub(super) fn m_base64(s: &[u8]) -> bool {
    let mut i = 0;
    let mut groups = 0usize;
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
    while i < s.len() {
        while s.get(i).is_some_and(|&c| is_rx_ws(c)) {
            i += 1;
        }
        if i == s.len() {
            break;
        }
        match s.get(i..i + 4) {
            Some(g) if g.iter().all(|&c| is_b64(c)) => {
                groups += 1;
                i += 4;
            }
            _ => return false,
        }
    }
    groups > 0
}

/// `[ \r\n\t\S]+` (string, markdown): forbids vertical tab and form feed.
pub(super) fn m_string(s: &[u8]) -> bool {
    !s.iter().any(|&c| c == 0x0B || c == 0x0C)
}

/// Shallow xhtml check: `<div` start tag ... ending in `>`.
pub(super) fn m_xhtml_div(s: &[u8]) -> bool {
    let t = s.trim_ascii();
    t.starts_with(b"<div")
        && matches!(t.get(4), Some(b' ' | b'>' | b'/' | b'\t' | b'\n' | b'\r'))
        && t.ends_with(b">")
}

pub(super) fn check_prim_lexical(p: Prim, s: &[u8]) -> bool {
    match p {
        Prim::Base64Binary => m_base64(s),
        Prim::Canonical | Prim::Uri | Prim::Url => m_uri(s),
        Prim::Code => m_code(s),
        Prim::Date => m_date(s),
        Prim::DateTime => m_datetime(s),
        Prim::Id => m_id(s),
        Prim::Instant => m_instant(s),
        Prim::Markdown | Prim::String => m_string(s),
        Prim::Oid => m_oid(s),
        Prim::Time => m_time(s),
        Prim::Uuid => m_uuid(s),
        Prim::Xhtml => m_xhtml_div(s),
        Prim::Boolean | Prim::Decimal | Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
            false
        }
    }
}

/// JSON-pointer syntax (RFC 6901).
pub(super) fn m_json_pointer(s: &[u8]) -> bool {
    if s.is_empty() {
        return true;
    }
    if s.first() != Some(&b'/') {
        return false;
    }
    s.iter()
        .enumerate()
        .all(|(i, &c)| c != b'~' || matches!(s.get(i + 1), Some(b'0' | b'1')))
}
