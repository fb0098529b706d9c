//! A body lexed once: the [`Index`] is every token of one document (kind, byte offsets, flags,
//! and for a container the position of its other bracket), built in one pass with the
//! grammar checked once — BOM, emptiness, strings (escapes, control bytes, UTF-8), numbers,
//! literals, separators, duplicates at any depth, depth up to [`MAX_DEPTH`], trailing data.
//! The pass is the [`Tokenizer`]'s grammar on the same `lex` primitives, written as one loop
//! (tests hold the two to the same tokens and the same errors).
//!
//! Why: a route with validation, authorization and DLP used to lex the same bytes three
//! times. With the index, the first reader pays for the lexing and the others read tokens
//! (a lookup instead of a string scan; a jump instead of re-lexing a skipped subtree).
//!
//! Two ways to read it, because the consumers have two designs:
//! * [`Cursor`]: the same pull API as [`Tokenizer::next`], replaying the tokens and then the
//!   error (if any) the tokenizer would have given, for a consumer's own depth limit too
//!   ([`Source`] lets a consumer take either).
//! * [`Seek`]: for single-pass walkers that keep their own byte position (the validator, the
//!   DLP walker): "the string / number / literal / value starting at byte `at`" answered from
//!   the index. Only a complete index (the body is valid JSON) offers it.
//!
//! Tokens are 16 bytes with `u32` offsets: a body of 4 GiB or more is not indexed
//! ([`Index::build`] returns `None`; such a body is far above every body cap anyway).

use super::lex::{skip_ws, Str};
use super::{Error, ErrorKind, Kind, Token, Tokenizer, MAX_DEPTH};

/// One token, compact. `link`: for `ObjStart`/`ArrStart` the index of the matching end
/// token (and back); `int`: a number with neither fraction nor exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tok {
    start: u32,
    end: u32,
    link: u32,
    kind: Kind,
    esc: bool,
    int: bool,
}

/// Every token of one JSON document, and the error that ended it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    toks: Vec<Tok>,
    len: usize,
    err: Option<Error>,
    /// The deepest nesting among the tokens (open containers after an opening bracket).
    nesting: usize,
}

impl Index {
    /// Lex `b` once (grammar, duplicates, depth up to [`MAX_DEPTH`]). `None` only for a
    /// body of 4 GiB or more. An invalid body still gives an index: its tokens up to the
    /// error, and the error (see [`Index::error`]).
    pub fn build(b: &[u8]) -> Option<Index> {
        u32::try_from(b.len()).ok()?;
        let mut ix = Index {
            // About one token per 8 bytes of FHIR JSON; capped so a huge body does not
            // reserve more than it will use.
            toks: Vec::with_capacity((b.len() / 8).min(1 << 20)),
            len: b.len(),
            err: None,
            nesting: 0,
        };
        if let Err(e) = ix.lex(b) {
            ix.err = Some(e);
        }
        Some(ix)
    }

    /// The one pass: the [`Tokenizer`]'s grammar, state for state (the same tokens and the
    /// same first error, which `tests.rs` holds it to over generated variants), written as
    /// one loop over a flat stack for speed: no per-token state dispatch, member names kept
    /// as offsets and compared raw (decoded only when an object has an escaped one).
    fn lex(&mut self, b: &[u8]) -> Result<(), Error> {
        if b.starts_with(&[0xEF, 0xBB, 0xBF]) {
            return Err(Error::new(ErrorKind::Bom, 0));
        }
        let fail = |kind, at| Err(Error::new(kind, at));
        // Open containers: (is object, token index, first of its keys in `keys`).
        let mut stack: Vec<(bool, u32, usize)> = Vec::with_capacity(32);
        // Member names of the open objects (see `Name`).
        let mut keys: Vec<Name> = Vec::with_capacity(64);
        let mut names: Vec<&[u8]> = Vec::new();
        let Index { toks, nesting, .. } = self;
        // Offsets fit in u32: `build` checked the length.
        let tok = |kind, start: usize, end: usize| Tok {
            start: start as u32,
            end: end as u32,
            link: 0,
            kind,
            esc: false,
            int: false,
        };
        let mut pos = skip_ws(b, 0);
        if pos == b.len() {
            return fail(ErrorKind::Empty, b.len());
        }
        loop {
            // A value is expected at `pos` (whitespace skipped).
            let at = pos;
            match b.get(at) {
                Some(&c @ (b'{' | b'[')) => {
                    let obj = c == b'{';
                    if stack.len() >= MAX_DEPTH {
                        return fail(ErrorKind::TooDeep, at);
                    }
                    stack.push((obj, toks.len() as u32, keys.len()));
                    *nesting = (*nesting).max(stack.len());
                    toks.push(tok(
                        if obj { Kind::ObjStart } else { Kind::ArrStart },
                        at,
                        at + 1,
                    ));
                    pos = skip_ws(b, at + 1);
                    match (obj, b.get(pos)) {
                        (true, Some(b'"')) => {
                            pos = key(b, pos, toks, &mut keys)?;
                            continue;
                        }
                        (true, Some(b'}')) | (false, Some(b']')) => {}
                        (true, None) => return fail(ErrorKind::UnexpectedEnd, pos),
                        (true, Some(_)) => return fail(ErrorKind::ExpectedKey, pos),
                        // An array's first item (or a bad byte, reported as a value).
                        (false, _) => continue,
                    }
                }
                Some(b'"') => {
                    let s = super::lex::string(b, at)?;
                    let mut t = tok(Kind::Str, s.start, s.end);
                    t.esc = s.esc;
                    toks.push(t);
                    pos = s.end + 1;
                }
                Some(b't') => {
                    pos = super::lex::literal(b, at, b"true")?;
                    toks.push(tok(Kind::True, at, pos));
                }
                Some(b'f') => {
                    pos = super::lex::literal(b, at, b"false")?;
                    toks.push(tok(Kind::False, at, pos));
                }
                Some(b'n') => {
                    pos = super::lex::literal(b, at, b"null")?;
                    toks.push(tok(Kind::Null, at, pos));
                }
                Some(b'-' | b'0'..=b'9') => {
                    let (end, int) = super::lex::number(b, at)?;
                    let mut t = tok(Kind::Num, at, end);
                    t.int = int;
                    toks.push(t);
                    pos = end;
                }
                None => return fail(ErrorKind::UnexpectedEnd, at),
                Some(_) => return fail(ErrorKind::UnexpectedChar, at),
            }
            // After a complete value (or an empty container's opening, whose close is
            // next): separators and closes until the next value is due.
            loop {
                pos = skip_ws(b, pos);
                let Some(&(obj, open, kbase)) = stack.last() else {
                    if pos != b.len() {
                        return fail(ErrorKind::TrailingData, pos);
                    }
                    return Ok(());
                };
                match (obj, b.get(pos)) {
                    (true, Some(b',')) => {
                        pos = skip_ws(b, pos + 1);
                        match b.get(pos) {
                            Some(b'"') => {
                                pos = key(b, pos, toks, &mut keys)?;
                                break;
                            }
                            Some(b'}') => return fail(ErrorKind::TrailingComma, pos),
                            None => return fail(ErrorKind::UnexpectedEnd, pos),
                            Some(_) => return fail(ErrorKind::ExpectedKey, pos),
                        }
                    }
                    (false, Some(b',')) => {
                        pos = skip_ws(b, pos + 1);
                        if b.get(pos) == Some(&b']') {
                            return fail(ErrorKind::TrailingComma, pos);
                        }
                        break;
                    }
                    (true, Some(b'}')) | (false, Some(b']')) => {
                        if obj {
                            let mine = keys.get(kbase..).unwrap_or_default();
                            if duplicate(b, mine, &mut names)? {
                                return fail(ErrorKind::Duplicate, pos);
                            }
                            keys.truncate(kbase);
                        }
                        stack.pop();
                        let i = toks.len() as u32;
                        let mut t =
                            tok(if obj { Kind::ObjEnd } else { Kind::ArrEnd }, pos, pos + 1);
                        t.link = open;
                        toks.push(t);
                        if let Some(o) = toks.get_mut(open as usize) {
                            o.link = i;
                        }
                        pos += 1;
                    }
                    (_, None) => return fail(ErrorKind::UnexpectedEnd, pos),
                    (true, Some(_)) => return fail(ErrorKind::ExpectedCommaOrBrace, pos),
                    (false, Some(_)) => return fail(ErrorKind::ExpectedCommaOrBracket, pos),
                }
            }
        }
    }

    /// Why the body is not JSON; `None`: it is one valid document.
    pub fn error(&self) -> Option<Error> {
        self.err
    }

    /// The length of the body this index was built from.
    pub fn body_len(&self) -> usize {
        self.len
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.toks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.toks.is_empty()
    }

    /// The deepest nesting of containers among the tokens (`[[1]]`: 2). A consumer with a
    /// depth limit below [`MAX_DEPTH`] that reads [`Index::tokens`] checks it against this:
    /// [`Index::cursor`] would have failed with `TooDeep` exactly when it is above the limit.
    pub fn nesting(&self) -> usize {
        self.nesting
    }

    /// Every token, in order, without the cursor's bookkeeping: for a consumer that has
    /// checked [`Index::error`] (none) and [`Index::nesting`] (within its limit) first, and
    /// then reads exactly what the cursor would yield.
    pub fn tokens(&self) -> impl ExactSizeIterator<Item = Token> + '_ {
        self.toks.iter().map(|t| Token {
            kind: t.kind,
            start: t.start as usize,
            end: t.end as usize,
            esc: t.esc,
        })
    }

    /// The tokens as [`Tokenizer::new`]`(b, max_depth)` yields them.
    pub fn cursor(&self, max_depth: usize) -> Cursor<'_> {
        Cursor {
            ix: self,
            i: 0,
            depth: 0,
            max_depth: max_depth.min(MAX_DEPTH),
            err: None,
        }
    }

    /// Positional look-ups over `b`, for a complete index of exactly these bytes' length
    /// (the caller keys the index to its bytes; see `LexedBody`). `None`: the body is not
    /// valid JSON, or the lengths differ.
    pub fn seek<'a>(&'a self, b: &'a [u8]) -> Option<Seek<'a>> {
        (self.err.is_none() && b.len() == self.len).then_some(Seek {
            toks: &self.toks,
            b,
            hint: 0,
        })
    }
}

/// A member name of an open object: its content span, whether it holds an escape, and a
/// fingerprint of its raw bytes (equal raw names have equal fingerprints), so the duplicate
/// check compares two words instead of two byte strings for nearly every pair.
#[derive(Clone, Copy)]
struct Name {
    start: u32,
    end: u32,
    esc: bool,
    fp: u64,
}

/// A member name at `at` (its quote) and the `:` after it: the key token is pushed, its span
/// kept for the duplicate check; the offset of the value (whitespace skipped).
#[inline]
fn key(b: &[u8], at: usize, toks: &mut Vec<Tok>, keys: &mut Vec<Name>) -> Result<usize, Error> {
    let s = super::lex::string(b, at)?;
    let colon = skip_ws(b, s.end + 1);
    if b.get(colon) != Some(&b':') {
        return Err(Error::new(ErrorKind::ExpectedColon, colon));
    }
    // Offsets fit in u32: `Index::build` checked the length.
    let (start, end) = (s.start as u32, s.end as u32);
    keys.push(Name {
        start,
        end,
        esc: s.esc,
        fp: fingerprint(b, s.start, s.end),
    });
    toks.push(Tok {
        start,
        end,
        link: 0,
        kind: Kind::Key,
        esc: s.esc,
        int: false,
    });
    Ok(skip_ws(b, colon + 1))
}

/// A function of the bytes of `b[start..end]` only (its length, first and last eight
/// bytes), read as whole words of the body where it has them (no copy).
#[inline]
fn fingerprint(b: &[u8], start: usize, end: usize) -> u64 {
    let n = end.saturating_sub(start);
    let head = match super::lex::word(b, start) {
        // Bytes past the name (its quote, the colon...) are masked off.
        Some(w) if n < 8 => w & ((1u64 << (8 * n)) - 1),
        Some(w) => w,
        // Fewer than eight bytes left in the body.
        None => b
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .rev()
            .fold(0u64, |acc, &c| (acc << 8) | u64::from(c)),
    };
    let tail = if n > 8 {
        super::lex::word(b, end - 8).unwrap_or(0)
    } else {
        0
    };
    (head ^ tail.rotate_left(29)).wrapping_add((n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Objects up to this many members are checked pair by pair (on fingerprints); larger ones
/// by sorting their fingerprints.
const PAIRWISE: usize = 16;

/// Do the member names of one object (spans into `b`) hold a name twice, compared after
/// unescaping? Raw bytes are compared unless a name has an escape (rare in FHIR), and only
/// for the pairs whose fingerprints are equal.
fn duplicate<'a>(b: &'a [u8], keys: &[Name], names: &mut Vec<&'a [u8]>) -> Result<bool, Error> {
    if keys.len() < 2 {
        return Ok(false);
    }
    let raw = |k: &Name| b.get(k.start as usize..k.end as usize).unwrap_or_default();
    if keys.iter().any(|k| k.esc) {
        let mut decoded = keys
            .iter()
            .map(|k| super::lex::decode(raw(k), k.esc))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(super::has_duplicate(&mut decoded));
    }
    if keys.len() <= PAIRWISE {
        for (i, k) in keys.iter().enumerate() {
            for l in keys.get(..i).unwrap_or_default() {
                if l.fp == k.fp && raw(l) == raw(k) {
                    return Ok(true);
                }
            }
        }
        return Ok(false);
    }
    // Sorted by fingerprint, then (for equal fingerprints: the same name, or a collision an
    // adversary can make on purpose) by bytes, as before: O(n log n) whatever the names.
    names.clear();
    names.extend(keys.iter().map(raw));
    let mut order: Vec<(u64, &[u8])> = keys.iter().map(|k| k.fp).zip(names.drain(..)).collect();
    order.sort_unstable();
    if order.windows(2).any(|w| w[0] == w[1]) {
        return Ok(true);
    }
    Ok(false)
}

/// Replays an [`Index`] with the pull API of [`Tokenizer::next`]: the same tokens, then the
/// same error or `Ok(None)`. A depth limit below the index's own is applied on the way.
pub struct Cursor<'a> {
    ix: &'a Index,
    i: usize,
    depth: usize,
    max_depth: usize,
    err: Option<Error>,
}

impl Cursor<'_> {
    /// The next token; `Ok(None)` once the document is complete. After an error every call
    /// returns it again.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> Result<Option<Token>, Error> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let Some(t) = self.ix.toks.get(self.i) else {
            return match self.ix.err {
                Some(e) => {
                    self.err = Some(e);
                    Err(e)
                }
                None => Ok(None),
            };
        };
        match t.kind {
            Kind::ObjStart | Kind::ArrStart => {
                if self.depth >= self.max_depth {
                    let e = Error::new(ErrorKind::TooDeep, t.start as usize);
                    self.err = Some(e);
                    return Err(e);
                }
                self.depth += 1;
            }
            Kind::ObjEnd | Kind::ArrEnd => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        self.i += 1;
        Ok(Some(Token {
            kind: t.kind,
            start: t.start as usize,
            end: t.end as usize,
            esc: t.esc,
        }))
    }

    /// Open containers.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

/// Where a consumer's tokens come from: lexed now, or replayed from an index lexed earlier.
pub enum Source<'a> {
    Lex(Tokenizer<'a>),
    Index(Cursor<'a>),
}

impl<'a> Source<'a> {
    /// From `index` when there is one (it must be of `b`), else a fresh tokenizer.
    pub fn new(b: &'a [u8], index: Option<&'a Index>, max_depth: usize) -> Self {
        match index {
            Some(ix) if ix.body_len() == b.len() => Source::Index(ix.cursor(max_depth)),
            _ => Source::Lex(Tokenizer::new(b, max_depth)),
        }
    }

    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next(&mut self) -> Result<Option<Token>, Error> {
        match self {
            Source::Lex(t) => t.next(),
            Source::Index(c) => c.next(),
        }
    }

    pub fn depth(&self) -> usize {
        match self {
            Source::Lex(t) => t.depth(),
            Source::Index(c) => c.depth(),
        }
    }
}

/// Positional look-ups in a complete index, for walkers that keep their own byte position:
/// each answers what the matching `lex` primitive would answer at that offset of a valid
/// body, or `None` when no token starts there (the caller then uses the primitive, so a
/// consumer's own error reporting is unchanged). Sequential reads cost O(1) (a hint follows
/// the last hit); jumps back (a look-ahead) a binary search.
#[derive(Clone, Copy)]
pub struct Seek<'a> {
    toks: &'a [Tok],
    b: &'a [u8],
    hint: usize,
}

impl<'a> Seek<'a> {
    #[inline]
    fn find(&mut self, start: usize) -> Option<Tok> {
        let start = u32::try_from(start).ok()?;
        // Forward from the last hit: a walker reads in document order, skipping only the
        // brackets and separators it handles itself (`}]},{` between two members).
        let end = self.toks.len().min(self.hint + 16);
        for i in self.hint..end {
            let t = *self.toks.get(i)?;
            if t.start == start {
                self.hint = i + 1;
                return Some(t);
            }
            if t.start > start {
                break;
            }
        }
        // A jump (a look-ahead, or back from one): binary search.
        let i = self.toks.partition_point(|t| t.start < start);
        let t = *self.toks.get(i)?;
        if t.start != start {
            return None;
        }
        self.hint = i + 1;
        Some(t)
    }

    /// The string (value or member name) whose opening quote is at `quote`: as
    /// [`super::string`] would return it.
    #[inline]
    pub fn string(&mut self, quote: usize) -> Option<Str> {
        let t = self.find(quote.checked_add(1)?)?;
        matches!(t.kind, Kind::Str | Kind::Key).then_some(Str {
            start: t.start as usize,
            end: t.end as usize,
            esc: t.esc,
        })
    }

    /// The number at `at`: (end, is integer lexical), as [`super::number`] returns it.
    #[inline]
    pub fn number(&mut self, at: usize) -> Option<(usize, bool)> {
        let t = self.find(at)?;
        (t.kind == Kind::Num).then_some((t.end as usize, t.int))
    }

    /// The end of the literal `lit` at `at`, as [`super::literal`] returns it.
    #[inline]
    pub fn literal(&mut self, at: usize, lit: &[u8]) -> Option<usize> {
        let t = self.find(at)?;
        let want = match lit {
            b"true" => Kind::True,
            b"false" => Kind::False,
            b"null" => Kind::Null,
            _ => return None,
        };
        (t.kind == want).then_some(t.end as usize)
    }

    /// The offset after the one value starting (after whitespace) at `at`, as
    /// [`super::skip_value`] returns it for a valid body: a container is skipped by a jump
    /// to its closing bracket, without reading what is inside.
    #[inline]
    pub fn value_end(&mut self, at: usize) -> Option<usize> {
        let at = skip_ws(self.b, at);
        if self.b.get(at) == Some(&b'"') {
            return self.string(at).map(|s| s.end + 1);
        }
        let t = self.find(at)?;
        match t.kind {
            Kind::ObjStart | Kind::ArrStart => {
                let close = *self.toks.get(t.link as usize)?;
                self.hint = t.link as usize + 1;
                Some(close.end as usize)
            }
            Kind::Num | Kind::True | Kind::False | Kind::Null => Some(t.end as usize),
            _ => None,
        }
    }
}
