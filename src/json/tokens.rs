//! The structural pass: a tokenizer that yields each token's kind and byte offsets while it
//! checks the grammar (separators, nesting), the depth limit and the duplicate-name rule.
//! No tree is built; a consumer iterates the tokens (and decodes the strings it needs).

use std::borrow::Cow;

use super::lex::{self, skip_ws};
use super::{Error, ErrorKind, MAX_DEPTH};

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ObjStart,
    ObjEnd,
    ArrStart,
    ArrEnd,
    /// A member name (the `:` after it is consumed with it).
    Key,
    Str,
    Num,
    True,
    False,
    Null,
}

/// A token and where it is. For `Key` and `Str`, `start..end` is the content between the
/// quotes (`esc`: it holds an escape; decode with [`super::decode`]); for the others it is
/// the token's own bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub esc: bool,
}

impl Token {
    /// The token's raw bytes (string content without quotes).
    pub fn raw<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        b.get(self.start..self.end).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (document start, after `:`).
    Value,
    /// A value after `,` in an array (`]` here is a trailing comma).
    NextItem,
    /// After `[`: a value or `]`.
    FirstItem,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key (`}` here is a trailing comma).
    NextKey,
    /// After a complete value: `,`, a closing bracket, or the end.
    After,
    Done,
}

struct Frame<'a> {
    obj: bool,
    keys: Vec<Cow<'a, [u8]>>,
}

/// Tokens of one JSON document (or of one value at an offset, see [`Tokenizer::value_at`]).
/// After an error every call returns that error again.
pub struct Tokenizer<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Frame<'a>>,
    pool: Vec<Vec<Cow<'a, [u8]>>>,
    max_depth: usize,
    expect: Expect,
    /// One value only: stop after it (no trailing-data check).
    single: bool,
    err: Option<Error>,
}

impl<'a> Tokenizer<'a> {
    /// A whole document: a leading BOM, an empty body and trailing data are refused.
    /// `max_depth` is capped at [`MAX_DEPTH`].
    pub fn new(b: &'a [u8], max_depth: usize) -> Self {
        let mut t = Tokenizer::value_at(b, 0, max_depth);
        t.single = false;
        if b.starts_with(&[0xEF, 0xBB, 0xBF]) {
            t.err = Some(Error::new(ErrorKind::Bom, 0));
        } else if skip_ws(b, 0) == b.len() {
            t.err = Some(Error::new(ErrorKind::Empty, b.len()));
        }
        t
    }

    /// The one value starting (after whitespace) at `at`; iteration ends right after it,
    /// whatever follows. `max_depth` counts from this value.
    pub fn value_at(b: &'a [u8], at: usize, max_depth: usize) -> Self {
        Tokenizer {
            b,
            pos: at,
            stack: Vec::new(),
            pool: Vec::new(),
            max_depth: max_depth.min(MAX_DEPTH),
            expect: Expect::Value,
            single: true,
            err: None,
        }
    }

    /// The offset after the last token read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Open containers.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    fn fail(&mut self, kind: ErrorKind, at: usize) -> Error {
        let e = Error::new(kind, at);
        self.err = Some(e);
        e
    }

    /// The next token; `Ok(None)` once the document (or value) is complete.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Token>, Error> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let r = self.step();
        if let Err(e) = r {
            self.err = Some(e);
        }
        r
    }

    fn step(&mut self) -> Result<Option<Token>, Error> {
        let b = self.b;
        let before = self.pos;
        self.pos = skip_ws(b, self.pos);
        let at = self.pos;
        let c = b.get(at).copied();
        match self.expect {
            Expect::Done => Ok(None),
            Expect::After => match (self.stack.last().map(|f| f.obj), c) {
                (None, _) => {
                    self.expect = Expect::Done;
                    if self.single {
                        // The value ends where its last token did, not after whitespace.
                        self.pos = before;
                    } else if at != b.len() {
                        return Err(self.fail(ErrorKind::TrailingData, at));
                    }
                    Ok(None)
                }
                (Some(true), Some(b',')) => {
                    self.pos += 1;
                    self.expect = Expect::NextKey;
                    self.step()
                }
                (Some(false), Some(b',')) => {
                    self.pos += 1;
                    self.expect = Expect::NextItem;
                    self.step()
                }
                (Some(true), Some(b'}')) => self.close(true),
                (Some(false), Some(b']')) => self.close(false),
                (Some(_), None) => Err(self.fail(ErrorKind::UnexpectedEnd, at)),
                (Some(true), _) => Err(self.fail(ErrorKind::ExpectedCommaOrBrace, at)),
                (Some(false), _) => Err(self.fail(ErrorKind::ExpectedCommaOrBracket, at)),
            },
            Expect::FirstKey | Expect::NextKey => match c {
                Some(b'"') => self.key(),
                Some(b'}') if self.expect == Expect::FirstKey => self.close(true),
                Some(b'}') => Err(self.fail(ErrorKind::TrailingComma, at)),
                None => Err(self.fail(ErrorKind::UnexpectedEnd, at)),
                Some(_) => Err(self.fail(ErrorKind::ExpectedKey, at)),
            },
            Expect::FirstItem | Expect::NextItem | Expect::Value => match c {
                Some(b']') if self.expect == Expect::FirstItem => self.close(false),
                Some(b']') if self.expect == Expect::NextItem => {
                    Err(self.fail(ErrorKind::TrailingComma, at))
                }
                _ => self.value(),
            },
        }
    }

    fn value(&mut self) -> Result<Option<Token>, Error> {
        let b = self.b;
        let at = self.pos;
        let scalar = |kind, end| Token {
            kind,
            start: at,
            end,
            esc: false,
        };
        let tok = match b.get(at) {
            Some(&c @ (b'{' | b'[')) => {
                let obj = c == b'{';
                if self.stack.len() >= self.max_depth {
                    return Err(self.fail(ErrorKind::TooDeep, at));
                }
                let mut keys = self.pool.pop().unwrap_or_default();
                keys.clear();
                self.stack.push(Frame { obj, keys });
                self.pos = at + 1;
                self.expect = if obj {
                    Expect::FirstKey
                } else {
                    Expect::FirstItem
                };
                return Ok(Some(scalar(
                    if obj { Kind::ObjStart } else { Kind::ArrStart },
                    at + 1,
                )));
            }
            Some(b'"') => {
                let s = lex::string(b, at)?;
                self.pos = s.end + 1;
                Token {
                    kind: Kind::Str,
                    start: s.start,
                    end: s.end,
                    esc: s.esc,
                }
            }
            Some(b't') => scalar(Kind::True, lex::literal(b, at, b"true")?),
            Some(b'f') => scalar(Kind::False, lex::literal(b, at, b"false")?),
            Some(b'n') => scalar(Kind::Null, lex::literal(b, at, b"null")?),
            Some(b'-' | b'0'..=b'9') => scalar(Kind::Num, lex::number(b, at)?.0),
            None => return Err(self.fail(ErrorKind::UnexpectedEnd, at)),
            Some(_) => return Err(self.fail(ErrorKind::UnexpectedChar, at)),
        };
        self.pos = self.pos.max(tok.end);
        self.expect = Expect::After;
        Ok(Some(tok))
    }

    fn key(&mut self) -> Result<Option<Token>, Error> {
        let b = self.b;
        let s = lex::string(b, self.pos)?;
        let colon = skip_ws(b, s.end + 1);
        if b.get(colon) != Some(&b':') {
            return Err(self.fail(ErrorKind::ExpectedColon, colon));
        }
        let name = lex::decode(s.raw(b), s.esc)?;
        if let Some(f) = self.stack.last_mut() {
            f.keys.push(name);
        }
        self.pos = colon + 1;
        self.expect = Expect::Value;
        Ok(Some(Token {
            kind: Kind::Key,
            start: s.start,
            end: s.end,
            esc: s.esc,
        }))
    }

    fn close(&mut self, obj: bool) -> Result<Option<Token>, Error> {
        let at = self.pos;
        if let Some(mut f) = self.stack.pop() {
            if obj && has_duplicate(&mut f.keys) {
                return Err(self.fail(ErrorKind::Duplicate, at));
            }
            f.keys.clear();
            self.pool.push(f.keys);
        }
        self.pos = at + 1;
        self.expect = Expect::After;
        Ok(Some(Token {
            kind: if obj { Kind::ObjEnd } else { Kind::ArrEnd },
            start: at,
            end: at + 1,
            esc: false,
        }))
    }
}

/// Does `keys` (decoded member names of one object) hold a name twice? Reorders `keys`.
pub fn has_duplicate<K: AsRef<[u8]> + Ord>(keys: &mut [K]) -> bool {
    // Small objects (most of FHIR) are cheaper to compare pairwise than to sort.
    if keys.len() <= 8 {
        (1..keys.len()).any(|i| keys[..i].iter().any(|k| k.as_ref() == keys[i].as_ref()))
    } else {
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0].as_ref() == w[1].as_ref())
    }
}

/// Check that `b` is one JSON document as this gateway reads it.
pub fn check(b: &[u8], max_depth: usize) -> Result<(), Error> {
    let mut t = Tokenizer::new(b, max_depth);
    while t.next()?.is_some() {}
    Ok(())
}

/// Skip the one value starting (after whitespace) at `at`, checking it fully (grammar,
/// strings, numbers, duplicates, `max_depth` levels below it): the offset after it.
pub fn skip_value(b: &[u8], at: usize, max_depth: usize) -> Result<usize, Error> {
    let start = skip_ws(b, at);
    // Scalars need no tokenizer (the common case when a walker skips a leaf).
    match b.get(start) {
        Some(b'"') => return lex::string(b, start).map(|s| s.end + 1),
        Some(b'-' | b'0'..=b'9') => return lex::number(b, start).map(|n| n.0),
        Some(b't') => return lex::literal(b, start, b"true"),
        Some(b'f') => return lex::literal(b, start, b"false"),
        Some(b'n') => return lex::literal(b, start, b"null"),
        _ => {}
    }
    let mut t = Tokenizer::value_at(b, start, max_depth);
    while t.next()?.is_some() {}
    Ok(t.pos())
}
