//! A body lexed once: the [`Index`] is every token of one document (kind, byte offsets, flags,
//! and for a container the position of its other bracket), built in one pass of the
//! [`Tokenizer`] with the grammar checked once — BOM, emptiness, strings (escapes, control
//! bytes, UTF-8), numbers, literals, separators, duplicates at any depth, depth up to
//! [`MAX_DEPTH`], trailing data.
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
}

impl Index {
    /// Lex `b` once (grammar, duplicates, depth up to [`MAX_DEPTH`]). `None` only for a
    /// body of 4 GiB or more. An invalid body still gives an index: its tokens up to the
    /// error, and the error (see [`Index::error`]).
    pub fn build(b: &[u8]) -> Option<Index> {
        u32::try_from(b.len()).ok()?;
        // About one token per 8 bytes of FHIR JSON; capped so a huge body does not
        // reserve more than it will use.
        let mut toks: Vec<Tok> = Vec::with_capacity((b.len() / 8).min(1 << 20));
        let mut open: Vec<u32> = Vec::new();
        let mut t = Tokenizer::new(b, MAX_DEPTH);
        let err = loop {
            match t.next() {
                Ok(Some(tok)) => {
                    let i = toks.len() as u32;
                    let mut link = i;
                    match tok.kind {
                        Kind::ObjStart | Kind::ArrStart => open.push(i),
                        Kind::ObjEnd | Kind::ArrEnd => {
                            if let Some(s) = open.pop() {
                                link = s;
                                if let Some(st) = toks.get_mut(s as usize) {
                                    st.link = i;
                                }
                            }
                        }
                        _ => {}
                    }
                    let int = tok.kind == Kind::Num
                        && !tok.raw(b).iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                    toks.push(Tok {
                        // The body fits in u32 (checked above), so every offset does.
                        start: tok.start as u32,
                        end: tok.end as u32,
                        link,
                        kind: tok.kind,
                        esc: tok.esc,
                        int,
                    });
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        Some(Index {
            toks,
            len: b.len(),
            err,
        })
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
        let h = self.hint;
        for i in [h, h + 1] {
            if let Some(t) = self.toks.get(i) {
                if t.start == start {
                    self.hint = i + 1;
                    return Some(*t);
                }
            }
        }
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
