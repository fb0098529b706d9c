//! Request-path canonicalisation. The router decides on the canonical path and the proxy
//! forwards exactly that path, so no encoding trick can make the gateway and the upstream
//! disagree about which resource is addressed.
//!
//! Canonical form: percent-escapes of unreserved characters decoded (`%41` → `A`), other
//! escapes upper-cased. Anything whose meaning could differ between parsers is refused:
//! encoded `/` `\` `.` `%` (double encoding) and NUL/controls, raw backslashes, `.`/`..`
//! and empty segments.

use crate::error::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOrigin,
    BadEscape,
    EncodedSlash,
    Backslash,
    EncodedDot,
    DoubleEncoding,
    Nul,
    Control,
    DotSegment,
    EmptySegment,
    Parameters,
}

impl From<PathError> for Rejection {
    fn from(e: PathError) -> Self {
        use PathError::*;
        let (code, detail) = match e {
            NotOrigin => ("path_invalid", "request target must be an absolute path"),
            BadEscape => ("path_bad_escape", "malformed percent-encoding in path"),
            EncodedSlash => ("path_encoded_slash", "encoded slash in path"),
            Backslash => ("path_backslash", "backslash in path"),
            EncodedDot => ("path_encoded_dot", "encoded dot in path"),
            DoubleEncoding => ("path_double_encoding", "double percent-encoding in path"),
            Nul => ("path_nul", "NUL byte in path"),
            Control => ("path_control", "control character in path"),
            DotSegment => ("path_dot_segment", "dot segment in path"),
            EmptySegment => ("path_empty_segment", "empty segment in path"),
            Parameters => (
                "path_parameters",
                "path parameters (;) are not allowed on this route",
            ),
        };
        Rejection::bad_request(code, detail)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Canonicalise `raw` (the path part only, no query). Returns the canonical path, or
/// why it is refused. Allocation-free when the path is already canonical.
pub fn normalize(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotOrigin);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (h, l) = match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h << 4 | l;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    b'.' => return Err(PathError::EncodedDot),
                    b'%' => return Err(PathError::DoubleEncoding),
                    0 => return Err(PathError::Nul),
                    v if v < 0x20 || v == 0x7f => return Err(PathError::Control),
                    _ => {}
                }
                let unreserved = v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~';
                let canonical_escape = [b'%', HEX[h as usize], HEX[l as usize]];
                if unreserved || &b[i..i + 3] != canonical_escape.as_slice() {
                    let o = out.get_or_insert_with(|| b[..i].to_vec());
                    if unreserved {
                        o.push(v);
                    } else {
                        o.extend_from_slice(&canonical_escape);
                    }
                } else if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&b[i..i + 3]);
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            c if c < 0x20 || c == 0x7f => return Err(PathError::Control),
            _ => {}
        }
        if let Some(o) = out.as_mut() {
            o.push(c);
        }
        i += 1;
    }
    let path: std::borrow::Cow<'_, str> = match out {
        // Only ASCII bytes were pushed or copied from a &str at char boundaries.
        Some(v) => std::borrow::Cow::Owned(String::from_utf8(v).map_err(|_| PathError::BadEscape)?),
        None => std::borrow::Cow::Borrowed(raw),
    };
    // Escaped bytes must decode to UTF-8: overlong forms such as %C0%AE are how lenient
    // decoders are tricked into seeing `.` or `/`.
    if path.contains('%') && !decodes_to_utf8(path.as_bytes()) {
        return Err(PathError::BadEscape);
    }
    let mut segs = path[1..].split('/').peekable();
    while let Some(s) = segs.next() {
        // Servlet containers drop `;params` per segment, so `..;x` is `..` to them.
        let bare = s.split(';').next().unwrap_or("");
        if bare == "." || bare == ".." {
            return Err(PathError::DotSegment);
        }
        if bare.is_empty() && s.contains(';') {
            return Err(PathError::EmptySegment);
        }
        // A trailing slash is fine ("/fhir/"); "//" anywhere else is not.
        if s.is_empty() && segs.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(path)
}

fn decodes_to_utf8(b: &[u8]) -> bool {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::str::from_utf8(&out).is_ok()
}

/// FHIR routes also refuse matrix parameters: `Patient;x=1/123` means different things to
/// different servers.
pub fn check_fhir(path: &str) -> Result<(), PathError> {
    if path.contains(';') {
        Err(PathError::Parameters)
    } else {
        Ok(())
    }
}

/// Does `path` fall under `prefix` at a segment boundary (`/fhir` covers `/fhir` and
/// `/fhir/x`, never `/fhirx`)?
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(normalize("/fhir/Patient/1").unwrap(), "/fhir/Patient/1");
        assert_eq!(normalize("/%66hir/Patient").unwrap(), "/fhir/Patient");
        assert_eq!(normalize("/a%7e%2Db").unwrap(), "/a~-b");
        assert_eq!(normalize("/a%3ab").unwrap(), "/a%3Ab");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize("/fhir/").unwrap(), "/fhir/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/a;v=1/b").unwrap(), "/a;v=1/b");
    }

    #[test]
    fn bypass_forms_refused() {
        use PathError::*;
        for (p, e) in [
            ("/fhir%2fPatient", EncodedSlash),
            ("/fhir%2FPatient", EncodedSlash),
            ("/fhir%5cPatient", Backslash),
            ("/fhir\\Patient", Backslash),
            ("/fhir/%2e%2e/admin", EncodedDot),
            ("/fhir/%2E/x", EncodedDot),
            ("/fhir/../admin", DotSegment),
            ("/fhir/./x", DotSegment),
            ("/fhir/..", DotSegment),
            ("/fhir%00", Nul),
            ("/fhir%252e%252e/x", DoubleEncoding),
            ("/fhir%25", DoubleEncoding),
            ("/fhir%", BadEscape),
            ("/fhir%g1", BadEscape),
            ("/fhir%0a", Control),
            ("//fhir", EmptySegment),
            ("/fhir//Patient", EmptySegment),
            ("fhir", NotOrigin),
            ("/public/..;/admin", DotSegment),
            ("/public/.;x/admin", DotSegment),
            ("/public/;x/admin", EmptySegment),
            ("/a%C0%AE%C0%AE/b", BadEscape),
            ("/a%C0%AF", BadEscape),
            ("*", NotOrigin),
        ] {
            assert_eq!(normalize(p).unwrap_err(), e, "{p}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(under_prefix("/fhir", "/fhir"));
        assert!(under_prefix("/fhir/x", "/fhir"));
        assert!(!under_prefix("/fhirx", "/fhir"));
        assert!(!under_prefix("/fhir;x", "/fhir"));
        assert!(under_prefix("/anything", "/"));
    }

    #[test]
    fn fhir_params() {
        assert!(check_fhir("/fhir/Patient;x=1/1").is_err());
        assert!(check_fhir("/fhir/Patient/1").is_ok());
    }

    /// Deterministic fuzzing: canonicalisation never panics, is idempotent, and its output
    /// contains none of the forms it refuses.
    #[test]
    fn random_paths() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "/", "a", ".", "..", "%", "2e", "2E", "2f", "5c", "25", "41", "c0", "ae", ";", "\\",
            "%00", "~", "fhir", "%C3%A9", "//",
        ];
        for _ in 0..20000 {
            let mut p = String::from("/");
            for _ in 0..(rnd() % 8) {
                p.push_str(pieces[(rnd() % pieces.len() as u64) as usize]);
            }
            if let Ok(n) = normalize(&p) {
                assert_eq!(
                    normalize(&n).as_deref().ok(),
                    Some(&*n),
                    "not idempotent: {p} -> {n}"
                );
                let lower = n.to_ascii_lowercase();
                assert!(
                    !lower.contains("%2f")
                        && !lower.contains("%2e")
                        && !lower.contains("%25")
                        && !n.contains('\\'),
                    "{p} -> {n}"
                );
                assert!(
                    !n.contains("//") && !n.split('/').any(|s| s == ".." || s == "."),
                    "{p} -> {n}"
                );
            }
        }
    }
}
