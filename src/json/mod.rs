//! The gateway's one JSON lexer: every body-aware policy (the FHIR validator, the DLP walker,
//! the compartment guard's `strict_json`) reads JSON through the definitions here, so two
//! components can never disagree on what a body says (a parser differential is a hole: the
//! guard decides on one reading, the upstream acts on another).
//!
//! # The grammar, decided once (RFC 8259, read strictly)
//! * **Whitespace**: space, tab, LF, CR — nothing else (no NBSP, no form feed, no comments).
//! * **Byte-order mark**: refused. RFC 8259 §8.1 says a sender MUST NOT add one; the validator
//!   refused it before this module existed, serde_json never skipped it and the DLP walker
//!   could not read it, so refusing keeps every consumer where it was.
//! * **Strings**: the eight two-byte escapes and `\uXXXX` (hex in either case). A high
//!   surrogate must be followed by `\u` + a low one; a lone half (either) is refused, because
//!   readers disagree on it (U+FFFD, WTF-8, error) and it is not a character. Raw bytes below
//!   0x20 are refused (§7: they MUST be escaped). The content must be UTF-8 (§8.1).
//! * **Numbers**: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` and nothing glued
//!   to it (`1x`, `1.2.3`, `01` are refused here rather than as a missing comma). Ranges are
//!   the consumer's business (serde_json refuses `1e400`; see `fhir::strict_json`).
//! * **Literals**: `true`, `false`, `null`, not followed by a letter or digit.
//! * **Depth**: each consumer passes its own limit (the validator's is configurable, the
//!   guard keeps serde_json's), never above [`MAX_DEPTH`], so recursion is always bounded.
//! * **Duplicate member names**: refused at any depth, compared after unescaping
//!   (`"a"` equals `"\u0061"`): readers keep the first, the last, or refuse.
//! * **Trailing data** after the document (other than whitespace): refused.
//!
//! # Shape
//! `lex.rs` holds the primitives (whitespace, strings, numbers, literals, decoding), usable
//! from any position of a body by a consumer with its own single-pass design (the validator,
//! the DLP walker). `tokens.rs` holds the structural pass: a [`Tokenizer`] yielding
//! [`Token`]s with byte offsets (kind, start, end, has-escape) that a consumer iterates,
//! checking the grammar, the depth and the duplicate rule on the way. Consumers that edit the
//! original bytes (DLP) use the offsets; nothing here allocates a tree.
//!
//! `index.rs` holds the same tokens lexed once and kept (an [`Index`]), read back with the
//! tokenizer's pull API ([`Cursor`], or [`Source`] for either) or by position ([`Seek`]);
//! `lexed.rs` the typed extension ([`LexedBody`]) that shares one index between the
//! policies of a request or response, keyed to the exact bytes.

mod index;
mod lex;
mod lexed;
#[cfg(test)]
mod tests;
mod tokens;

pub use index::{Cursor, Index, Seek, Source};
pub use lexed::LexedBody;

pub use lex::{
    decode, decode_into, decode_map, decode_str, escape_at, is_ws, literal, number, skip_ws,
    string, Str,
};
pub use tokens::{check, has_duplicate, skip_value, Kind, Token, Tokenizer};

/// Hard upper bound on nesting (objects and arrays) for any consumer: a recursive walker
/// over a body this deep stays far from the stack's end.
pub const MAX_DEPTH: usize = 256;

/// Why a body is not JSON (as this gateway reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Bom,
    Empty,
    UnexpectedEnd,
    UnexpectedChar,
    UnterminatedString,
    ControlChar,
    BadEscape,
    BadUnicodeEscape,
    LoneSurrogate,
    BadUtf8,
    BadNumber,
    BadLiteral,
    ExpectedKey,
    ExpectedColon,
    ExpectedCommaOrBrace,
    ExpectedCommaOrBracket,
    TrailingComma,
    TrailingData,
    TooDeep,
    Duplicate,
}

impl ErrorKind {
    /// A short, PHI-free description (the validator puts it in its OperationOutcome).
    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::Bom => "byte order mark is not allowed",
            ErrorKind::Empty => "empty body",
            ErrorKind::UnexpectedEnd => "unexpected end of input",
            ErrorKind::UnexpectedChar => "unexpected character",
            ErrorKind::UnterminatedString => "unterminated string",
            ErrorKind::ControlChar => "unescaped control character in string",
            ErrorKind::BadEscape => "invalid escape sequence",
            ErrorKind::BadUnicodeEscape => "invalid \\u escape",
            ErrorKind::LoneSurrogate => "unpaired UTF-16 surrogate escape",
            ErrorKind::BadUtf8 => "invalid UTF-8 in string",
            ErrorKind::BadNumber => "invalid number",
            ErrorKind::BadLiteral => "invalid literal",
            ErrorKind::ExpectedKey => "expected a member name string",
            ErrorKind::ExpectedColon => "expected ':'",
            ErrorKind::ExpectedCommaOrBrace => "expected ',' or '}'",
            ErrorKind::ExpectedCommaOrBracket => "expected ',' or ']'",
            ErrorKind::TrailingComma => "trailing comma",
            ErrorKind::TrailingData => "unexpected data after the JSON value",
            ErrorKind::TooDeep => "nesting too deep",
            ErrorKind::Duplicate => "duplicate member name",
        }
    }
}

/// A refusal and the byte offset where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub at: usize,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, at: usize) -> Self {
        Error { kind, at }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte offset {}", self.kind.message(), self.at)
    }
}

impl std::error::Error for Error {}
