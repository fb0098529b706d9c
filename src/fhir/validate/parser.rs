//! The single-pass parser's state (`Parser`, cursors, path segments) and its schema-free half:
//! issue reporting, strict RFC 8259 lexing (whitespace, literals, strings and numbers delegate
//! to the shared `crate::json`; separators and keys stay here, in the single pass), depth
//! accounting, and generic duplicate-checked JSON for values the schema does not type.
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
    /// The body's index when another policy lexed it already (`crate::json::LexedBody`):
    /// strings, numbers and literals are then looked up instead of scanned again. Only a
    /// complete index (valid JSON) is used, so every answer equals the lexer's.
    pub(super) ix: Option<crate::json::Seek<'a>>,
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

/// Decodes a validated JSON string body (without quotes) into `out`: the shared decoder
/// (`crate::json`). Content that did not come from a checked string token (the lenient
/// `resourceType` pre-scan) may stop decoding early; the strict parse refuses it later.
pub(super) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let _ = crate::json::decode_into(raw, out);
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
            ix: None,
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
        self.pos = crate::json::skip_ws(self.b, self.pos);
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

    /// A lexing refusal of the shared lexer, reported where it was found.
    #[cold]
    #[inline(never)]
    pub(super) fn lex_fail(&mut self, e: crate::json::Error) -> Stop {
        self.pos = e.at;
        self.fail(e.kind.message())
    }

    pub(super) fn literal(&mut self, lit: &[u8]) -> Res<()> {
        if let Some(end) = self.ix.as_mut().and_then(|ix| ix.literal(self.pos, lit)) {
            self.pos = end;
            return Ok(());
        }
        match crate::json::literal(self.b, self.pos, lit) {
            Ok(end) => {
                self.pos = end;
                Ok(())
            }
            Err(e) => Err(self.lex_fail(e)),
        }
    }

    /// Parses a string token at `"`; escapes, control characters and UTF-8 are checked by
    /// the shared lexer (`crate::json`), the one grammar every body-aware policy reads.
    #[inline]
    pub(super) fn string(&mut self) -> Res<Str<'a>> {
        let found = match self.ix.as_mut().and_then(|ix| ix.string(self.pos)) {
            Some(s) => Ok(s),
            None => crate::json::string(self.b, self.pos),
        };
        match found {
            Ok(s) => {
                self.pos = s.end + 1;
                Ok(Str {
                    raw: s.raw(self.b),
                    esc: s.esc,
                })
            }
            Err(e) => Err(self.lex_fail(e)),
        }
    }

    /// Parses a number token; returns (raw, is_integer_lexical).
    pub(super) fn number(&mut self) -> Res<(&'a [u8], bool)> {
        let start = self.pos;
        let found = match self.ix.as_mut().and_then(|ix| ix.number(start)) {
            Some(n) => Ok(n),
            None => crate::json::number(self.b, start),
        };
        match found {
            Ok((end, int)) => {
                self.pos = end;
                Ok((self.b.get(start..end).unwrap_or_default(), int))
            }
            Err(e) => Err(self.lex_fail(e)),
        }
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
            // A complete index has refused duplicates already.
            if self.ix.is_none() {
                let mut dk = Vec::new();
                if k.esc {
                    unescape(k.raw, &mut dk);
                } else {
                    dk.extend_from_slice(k.raw);
                }
                keys.push(dk);
            }
            self.path
                .push(Seg::Name(if k.esc { "?" } else { display_key(k.raw) }));
            self.any_value()?;
            self.path.pop();
            if !self.sep(b'}')? {
                break;
            }
        }
        if crate::json::has_duplicate(&mut keys) {
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
    /// Members before it are skipped with the shared lexer's checked `skip_value`: a body
    /// whose pre-scan fails is refused by the full parse anyway (as "no resourceType" plus
    /// its syntax error), so no second, looser reading of the same bytes exists.
    pub(super) fn find_resource_type(&self, start: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        use crate::json;
        let b = self.b;
        let left = self.max_depth.saturating_sub(self.depth + 1);
        let mut i = start + 1;
        loop {
            i = json::skip_ws(b, i);
            let k = json::string(b, i).ok()?;
            i = json::skip_ws(b, k.end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = json::skip_ws(b, i + 1);
            if *json::decode(k.raw(b), k.esc).ok()? == *b"resourceType" {
                let v = json::string(b, i).ok()?;
                return json::decode(v.raw(b), v.esc).ok();
            }
            i = json::skip_ws(b, json::skip_value(b, i, left).ok()?);
            match b.get(i)? {
                b',' => i += 1,
                _ => return None,
            }
        }
    }
}
