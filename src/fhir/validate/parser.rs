//! The single-pass parser's state (`Parser`, cursors, path segments) and its schema-free half:
//! issue reporting, strict RFC 8259 lexing (whitespace, literals, strings, numbers, separators,
//! keys), depth accounting, and generic duplicate-checked JSON for values the schema does not type.
//! The schema-driven methods live in `walker.rs`, the document entry points in `document.rs`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub(super) enum Seg<'a> {
    Name(&'a str),
    Idx(usize),
}

/// Validation must stop (syntax error, limit, or max_issues reached); the reason is recorded.
pub(super) struct Stop;
pub(super) type Res<T> = Result<T, Stop>;

#[derive(Clone, Copy)]
pub(super) struct Str<'a> {
    pub(super) raw: &'a [u8],
    pub(super) esc: bool,
}

pub(super) struct Seen {
    pub(super) elem: u16,
    pub(super) ty: TypeId,
    pub(super) under: bool,
    pub(super) many: bool,
    pub(super) len: u32,
    pub(super) nulls: Vec<u32>,
}

/// Per-object presence state (bit i = element i of the type).
pub(super) struct ObjState {
    pub(super) val: u64,
    pub(super) und: u64,
    pub(super) rt_seen: bool,
    pub(super) align: bool,
    pub(super) frame: usize,
    pub(super) entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Top,
    Entry,
    Contained,
    Nested,
}

#[derive(Clone, Copy)]
pub(super) struct Cursor {
    pub(super) rule: u32,
    pub(super) step: u32,
    pub(super) slot: u32,
}

pub(super) enum Found {
    ResourceType,
    Member(&'static Member, bool),
    UnderscoreNonPrimitive(&'static Member),
    Unknown,
}

pub(super) struct Parser<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) depth: usize,
    pub(super) max_depth: usize,
    pub(super) s: &'static Schema,
    pub(super) root: &'static str,
    pub(super) path: Vec<Seg<'a>>,
    pub(super) issues: Vec<Issue>,
    pub(super) has_error: bool,
    pub(super) max_issues: usize,
    pub(super) scratch: Vec<u8>,
    pub(super) seen: Vec<Seen>,
    pub(super) prof: Option<&'a Compiled>,
    pub(super) cursors: Vec<Cursor>,
    pub(super) req_hits: Vec<bool>,
    pub(super) role: Role,
    /// What the string value being parsed is, for checks beyond its primitive type.
    pub(super) want: Want,
    /// Enclosing Bundles, innermost last (conditional references wait for `Bundle.type`).
    pub(super) bundles: Vec<BundleFrame>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Want {
    #[default]
    Nothing,
    Reference,
    BundleType,
}

/// A Bundle being parsed. Its `type` may come after its entries, so conditional references
/// found in its entry resources are held (by path) until the Bundle ends.
#[derive(Default)]
pub(super) struct BundleFrame {
    /// `type` is `transaction` or `batch`.
    pub(super) submits: bool,
    /// Entry resources (role `Entry`) of this Bundle currently open.
    pub(super) in_entry: u32,
    pub(super) conditional: Vec<String>,
}

pub(super) const LO: u64 = 0x0101_0101_0101_0101;
pub(super) const HI: u64 = 0x8080_8080_8080_8080;

pub(super) fn hex4(s: &[u8], i: usize) -> Option<u32> {
    let h = s.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// Decodes a validated JSON string body (without quotes) into `out`.
pub(super) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let next = raw
            .get(i..)
            .and_then(|r| r.iter().position(|&c| c == b'\\'))
            .map_or(raw.len(), |p| i + p);
        out.extend_from_slice(raw.get(i..next).unwrap_or_default());
        i = next;
        if i >= raw.len() {
            break;
        }
        let c = match raw.get(i + 1) {
            Some(b'n') => '\n',
            Some(b't') => '\t',
            Some(b'r') => '\r',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'u') => {
                let hi = hex4(raw, i + 2).unwrap_or(0xFFFD);
                if (0xD800..0xDC00).contains(&hi) {
                    let lo = hex4(raw, i + 8).unwrap_or(0xDC00);
                    i += 6;
                    char::from_u32(
                        0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF),
                    )
                    .unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(hi).unwrap_or('\u{FFFD}')
                }
            }
            Some(&c) => char::from(c),
            None => break,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i += if raw.get(i + 1) == Some(&b'u') { 6 } else { 2 };
    }
}

/// Member names are echoed in paths only if they look like identifiers (no PHI in keys).
pub(super) fn display_key(raw: &[u8]) -> &str {
    if !raw.is_empty()
        && raw.len() <= 64
        && raw.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
    {
        std::str::from_utf8(raw).unwrap_or("?")
    } else {
        "?"
    }
}

impl<'a> Parser<'a> {
    pub(super) fn new(
        b: &'a [u8],
        limits: &Limits,
        s: &'static Schema,
        root: &'static str,
        prof: Option<&'a Compiled>,
    ) -> Self {
        Parser {
            b,
            pos: 0,
            depth: 0,
            max_depth: limits.max_depth.min(HARD_MAX_DEPTH),
            s,
            root,
            path: Vec::with_capacity(32),
            issues: Vec::new(),
            has_error: false,
            max_issues: limits.max_issues.max(1),
            scratch: Vec::new(),
            seen: Vec::with_capacity(64),
            prof,
            cursors: Vec::new(),
            req_hits: Vec::new(),
            role: Role::Top,
            want: Want::Nothing,
            bundles: Vec::new(),
        }
    }

    // ----- issues -----

    #[cold]
    #[inline(never)]
    pub(super) fn render_path(&self) -> String {
        let mut out = String::with_capacity(64);
        for seg in &self.path {
            match seg {
                Seg::Name(n) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(n);
                }
                Seg::Idx(i) => {
                    if out.is_empty() {
                        out.push_str(self.root);
                    }
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        if out.is_empty() {
            out.push_str(self.root);
        }
        out
    }

    #[cold]
    #[inline(never)]
    pub(super) fn report_at(
        &mut self,
        sev: Severity,
        code: &'static str,
        expression: String,
        message: String,
    ) -> Res<()> {
        if self.issues.len() >= self.max_issues {
            return Err(Stop);
        }
        if sev == Severity::Error {
            self.has_error = true;
        }
        self.issues.push(Issue {
            severity: sev,
            code,
            expression,
            message,
        });
        if self.issues.len() >= self.max_issues {
            Err(Stop)
        } else {
            Ok(())
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn err(&mut self, code: &'static str, msg: impl Into<String>) -> Res<()> {
        let e = self.render_path();
        self.report_at(Severity::Error, code, e, msg.into())
    }

    #[cold]
    #[inline(never)]
    pub(super) fn warn(&mut self, code: &'static str, msg: impl Into<String>) -> Res<()> {
        let e = self.render_path();
        self.report_at(Severity::Warning, code, e, msg.into())
    }

    /// Fatal JSON syntax error.
    #[cold]
    #[inline(never)]
    pub(super) fn fail(&mut self, what: &str) -> Stop {
        let msg = format!("invalid JSON: {what} at byte offset {}", self.pos);
        let _ = self.err("structure", msg);
        self.has_error = true;
        Stop
    }

    // ----- lexing -----

    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    pub(super) fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            let msg = format!("JSON nesting depth exceeds the limit of {}", self.max_depth);
            let _ = self.err("too-costly", msg);
            self.has_error = true;
            return Err(Stop);
        }
        Ok(())
    }

    #[inline]
    pub(super) fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    pub(super) fn literal(&mut self, lit: &[u8]) -> Res<()> {
        if self.b.get(self.pos..self.pos + lit.len()) == Some(lit)
            && !self
                .b
                .get(self.pos + lit.len())
                .is_some_and(u8::is_ascii_alphanumeric)
        {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.fail("invalid literal"))
        }
    }

    /// Parses a string token at `"`; validates escapes, control characters and UTF-8.
    #[inline]
    pub(super) fn string(&mut self) -> Res<Str<'a>> {
        let b = self.b;
        let start = self.pos + 1;
        let mut i = start;
        let mut esc = false;
        let mut acc: u64 = 0;
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let Ok(arr) = <[u8; 8]>::try_from(chunk) else {
                    break;
                };
                let v = u64::from_le_bytes(arr);
                let q = v ^ (LO * u64::from(b'"'));
                let bs = v ^ (LO * u64::from(b'\\'));
                let t = ((q.wrapping_sub(LO) & !q)
                    | (bs.wrapping_sub(LO) & !bs)
                    | (v.wrapping_sub(LO * 0x20) & !v))
                    & HI;
                acc |= v;
                if t != 0 {
                    // The lowest flagged byte is always a true hit (false positives only occur
                    // above a true hit of the same test).
                    i += (t.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match b.get(i) {
                None => {
                    self.pos = i;
                    return Err(self.fail("unterminated string"));
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    esc = true;
                    i = match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i + 2,
                        Some(b'u') => match hex4(b, i + 2) {
                            Some(0xD800..=0xDBFF) => {
                                if b.get(i + 6) == Some(&b'\\')
                                    && b.get(i + 7) == Some(&b'u')
                                    && matches!(hex4(b, i + 8), Some(0xDC00..=0xDFFF))
                                {
                                    i + 12
                                } else {
                                    self.pos = i;
                                    return Err(self.fail("unpaired UTF-16 surrogate escape"));
                                }
                            }
                            Some(0xDC00..=0xDFFF) => {
                                self.pos = i;
                                return Err(self.fail("unpaired UTF-16 surrogate escape"));
                            }
                            Some(_) => i + 6,
                            None => {
                                self.pos = i;
                                return Err(self.fail("invalid \\u escape"));
                            }
                        },
                        _ => {
                            self.pos = i;
                            return Err(self.fail("invalid escape sequence"));
                        }
                    };
                }
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return Err(self.fail("unescaped control character in string"));
                }
                Some(&c) => {
                    acc |= u64::from(c);
                    i += 1;
                }
            }
        }
        let raw = b.get(start..i).unwrap_or_default();
        if acc & HI != 0 && std::str::from_utf8(raw).is_err() {
            self.pos = start;
            return Err(self.fail("invalid UTF-8 in string"));
        }
        self.pos = i + 1;
        Ok(Str { raw, esc })
    }

    /// Parses a number token; returns (raw, is_integer_lexical).
    pub(super) fn number(&mut self) -> Res<(&'a [u8], bool)> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
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
            _ => {
                self.pos = i;
                return Err(self.fail("invalid number"));
            }
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
                self.pos = i;
                return Err(self.fail("invalid number"));
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
                self.pos = i;
                return Err(self.fail("invalid number"));
            }
        }
        self.pos = i;
        if matches!(b.get(i), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-'))
        {
            return Err(self.fail("invalid number"));
        }
        Ok((b.get(start..i).unwrap_or_default(), int))
    }

    /// Expects `,` (returns true: more) or `close` (returns false).
    #[inline]
    pub(super) fn sep(&mut self, close: u8) -> Res<bool> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.ws();
                if matches!(self.peek(), Some(b'}' | b']')) {
                    return Err(self.fail("trailing comma"));
                }
                Ok(true)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.fail(if close == b'}' {
                "expected ',' or '}'"
            } else {
                "expected ',' or ']'"
            })),
        }
    }

    /// Parses `"key" :` ; returns the key token.
    #[inline]
    pub(super) fn key(&mut self) -> Res<Str<'a>> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a member name string"));
        }
        let k = self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.fail("expected ':'"));
        }
        self.pos += 1;
        Ok(k)
    }

    // ----- generic JSON (validated, duplicate-checked, no schema) -----

    pub(super) fn any_value(&mut self) -> Res<()> {
        self.ws();
        match self.peek() {
            Some(b'{') => self.any_object(),
            Some(b'[') => self.any_array(),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            None => Err(self.fail("unexpected end of input")),
            Some(_) => Err(self.fail("unexpected character")),
        }
    }

    pub(super) fn any_object(&mut self) -> Res<()> {
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.leave();
            return Ok(());
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let k = self.key()?;
            let mut dk = Vec::new();
            if k.esc {
                unescape(k.raw, &mut dk);
            } else {
                dk.extend_from_slice(k.raw);
            }
            keys.push(dk);
            self.path
                .push(Seg::Name(if k.esc { "?" } else { display_key(k.raw) }));
            self.any_value()?;
            self.path.pop();
            if !self.sep(b'}')? {
                break;
            }
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
            self.err("structure", "object has duplicate member names")?;
        }
        self.leave();
        Ok(())
    }

    pub(super) fn any_array(&mut self) -> Res<()> {
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.leave();
            return Ok(());
        }
        let mut i = 0;
        loop {
            self.path.push(Seg::Idx(i));
            self.any_value()?;
            self.path.pop();
            i += 1;
            if !self.sep(b']')? {
                break;
            }
        }
        self.leave();
        Ok(())
    }

    /// Scans the object starting at `start` (a `{`) for a top-level `"resourceType": "<string>"`
    /// member without recursion and without reporting; fast when it is the first member.
    pub(super) fn find_resource_type(&self, start: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        let b = self.b;
        let mut i = start + 1;
        let skip_ws = |i: &mut usize| {
            while matches!(b.get(*i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                *i += 1;
            }
        };
        let skip_str = |i: &mut usize| -> Option<(usize, usize)> {
            // at '"'
            let s = *i + 1;
            let mut j = s;
            loop {
                match b.get(j)? {
                    b'"' => break,
                    b'\\' => j += 2,
                    _ => j += 1,
                }
            }
            *i = j + 1;
            Some((s, j))
        };
        loop {
            skip_ws(&mut i);
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (ks, ke) = skip_str(&mut i)?;
            skip_ws(&mut i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            skip_ws(&mut i);
            let key = b.get(ks..ke)?;
            let is_rt = key == b"resourceType"
                || (key.contains(&b'\\') && {
                    let mut d = Vec::new();
                    unescape(key, &mut d);
                    d == b"resourceType"
                });
            if is_rt {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let (vs, ve) = skip_str(&mut i)?;
                let v: &'a [u8] = b.get(vs..ve)?;
                if v.contains(&b'\\') {
                    let mut out = Vec::new();
                    unescape(v, &mut out);
                    return Some(std::borrow::Cow::Owned(out));
                }
                return Some(std::borrow::Cow::Borrowed(v));
            }
            // skip the value
            match b.get(i)? {
                b'"' => {
                    skip_str(&mut i)?;
                }
                b'{' | b'[' => {
                    let mut d = 0usize;
                    loop {
                        match b.get(i)? {
                            b'"' => {
                                skip_str(&mut i)?;
                                continue;
                            }
                            b'{' | b'[' => d += 1,
                            b'}' | b']' => {
                                d = d.checked_sub(1)?;
                                if d == 0 {
                                    i += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                }
                _ => {
                    while !matches!(b.get(i)?, b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
                        i += 1;
                    }
                }
            }
            skip_ws(&mut i);
            match b.get(i)? {
                b',' => i += 1,
                _ => return None,
            }
        }
    }
}
