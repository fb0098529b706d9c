//! Zero-copy parser for HL7 v2.x messages in ER7 encoding ("pipe and hat").
//!
//! Why bytes and not `&str`: MSH-18 may declare ISO-8859-1 (or leave the charset to a
//! site agreement), so a message is not necessarily UTF-8; every delimiter is ASCII, which
//! makes byte-level splitting correct for ASCII, ISO-8859-x and UTF-8 alike. Values are
//! handed out as `&[u8]` borrowed from the input; unescaping copies into a `Vec<u8>` only
//! when asked.
//!
//! [`Message::parse`] makes one linear pass that frames segments and enforces the
//! structural rules (MSH first, sane encoding characters, well-formed segment ids, no empty
//! segments in the middle, no NUL or MLLP framing bytes, segment count and field length
//! limits); field, repetition, component and subcomponent access then split lazily. All
//! positions are 1-based, as in HL7 (`PID-5.1.1`). Structural errors stop at the first one:
//! once framing is wrong, later positions are meaningless.
//!
//! [`header`] parses only the first segment: an MLLP listener can identify the sender
//! (MSH-3/MSH-4) and charset (MSH-18), and a NAK can still be addressed, even when the
//! body is broken.

use std::fmt;

/// Generous defaults; an operator who accepts embedded documents (ED in OBX-5) raises
/// `max_field_len`.
pub const DEFAULT_MAX_SEGMENTS: usize = 2000;
pub const DEFAULT_MAX_FIELD_LEN: usize = 64 * 1024;

/// The separator and encoding characters from MSH-1 and MSH-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiters {
    pub field: u8,
    pub component: u8,
    pub repetition: u8,
    pub escape: u8,
    pub subcomponent: u8,
    /// v2.7+ fifth encoding character (usually `#`), marking a truncated value.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

/// A delimiter must be printable ASCII punctuation: letters and digits would make values
/// ambiguous, and control or 8-bit bytes would collide with segment terminators, MLLP
/// framing or ISO-8859-1/UTF-8 text.
fn is_allowed_delimiter(b: u8) -> bool {
    (0x21..=0x7E).contains(&b) && !b.is_ascii_alphanumeric()
}

impl Delimiters {
    /// Reads MSH-1 and MSH-2 from the first segment (already cut at its terminator).
    ///
    /// MSH-2 must hold exactly 4 characters (component, repetition, escape, subcomponent)
    /// or 5 (plus the v2.7 truncation character); we do not guess missing ones, because a
    /// receiver that guesses differently from the sender splits values differently.
    pub fn from_msh(segment: &[u8]) -> Result<Self, ParseErrorKind> {
        if !segment.starts_with(b"MSH") {
            return Err(ParseErrorKind::NotMsh);
        }
        let field = *segment.get(3).ok_or(ParseErrorKind::MshTooShort)?;
        let rest = segment.get(4..).unwrap_or_default();
        let enc_len = rest.iter().position(|&b| b == field).unwrap_or(rest.len());
        let d = match *rest.get(..enc_len).unwrap_or_default() {
            [component, repetition, escape, subcomponent] => Delimiters {
                field,
                component,
                repetition,
                escape,
                subcomponent,
                truncation: None,
            },
            [component, repetition, escape, subcomponent, t] => Delimiters {
                field,
                component,
                repetition,
                escape,
                subcomponent,
                truncation: Some(t),
            },
            _ => return Err(ParseErrorKind::BadEncodingChars),
        };
        if d.is_valid() {
            Ok(d)
        } else {
            Err(ParseErrorKind::BadEncodingChars)
        }
    }

    /// True when every character is allowed and no two are equal.
    pub fn is_valid(&self) -> bool {
        let all = [
            Some(self.field),
            Some(self.component),
            Some(self.repetition),
            Some(self.escape),
            Some(self.subcomponent),
            self.truncation,
        ];
        let present = all.iter().flatten();
        present.clone().all(|&b| is_allowed_delimiter(b))
            && present
                .clone()
                .enumerate()
                .all(|(i, a)| present.clone().skip(i + 1).all(|b| a != b))
    }

    /// Appends MSH-2 as it must appear on the wire.
    pub fn push_encoding_characters(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]);
        if let Some(t) = self.truncation {
            out.push(t);
        }
    }

    fn is_separator(&self, b: u8) -> bool {
        b == self.field || b == self.component || b == self.repetition || b == self.subcomponent
    }
}

/// Parser limits and leniency, normally derived from [`crate::hl7v2::Rules`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept `\n` and `\r\n` as segment terminators (some interface engines and every
    /// hand-edited file). Off by default: a stray `\n` otherwise ends up inside a value.
    pub lenient_line_endings: bool,
    pub max_segments: usize,
    /// Maximum length in bytes of one field, all repetitions and delimiters included.
    pub max_field_len: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            lenient_line_endings: false,
            max_segments: DEFAULT_MAX_SEGMENTS,
            max_field_len: DEFAULT_MAX_FIELD_LEN,
        }
    }
}

/// Why a message could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    Empty,
    NotMsh,
    /// Nothing after `MSH` (no field separator).
    MshTooShort,
    /// MSH-2 has the wrong length, or a character repeats or is not allowed.
    BadEncodingChars,
    /// Not three uppercase ASCII letters/digits followed by the field separator.
    BadSegmentId,
    /// Two terminators in a row (one trailing terminator is fine).
    EmptySegment,
    /// A second MSH: batches are not accepted, and a second header smuggled into a message
    /// could be read differently by the next hop.
    DuplicateMsh,
    /// NUL, or an MLLP framing byte (0x0B, 0x1C) inside the payload.
    ForbiddenByte,
    /// `\n` while `lenient_line_endings` is off.
    BareLineFeed,
    TooManySegments,
    FieldTooLong,
}

impl ParseErrorKind {
    /// Fixed text, safe to log and to put in an ERR segment.
    pub fn text(self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "empty message",
            ParseErrorKind::NotMsh => "message does not start with MSH",
            ParseErrorKind::MshTooShort => "message header too short",
            ParseErrorKind::BadEncodingChars => "invalid encoding characters",
            ParseErrorKind::BadSegmentId => "invalid segment id",
            ParseErrorKind::EmptySegment => "empty segment",
            ParseErrorKind::DuplicateMsh => "more than one MSH segment",
            ParseErrorKind::ForbiddenByte => "forbidden control byte",
            ParseErrorKind::BareLineFeed => "line feed in message",
            ParseErrorKind::TooManySegments => "too many segments",
            ParseErrorKind::FieldTooLong => "field too long",
        }
    }

    /// Errors that leave the header itself unusable (as opposed to the body).
    pub fn is_header_error(self) -> bool {
        matches!(
            self,
            ParseErrorKind::Empty
                | ParseErrorKind::NotMsh
                | ParseErrorKind::MshTooShort
                | ParseErrorKind::BadEncodingChars
        )
    }
}

/// Where framing failed. Carries positions only, never content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// 0-based position of the offending segment in the message.
    pub segment_index: usize,
    /// The segment's id when it is a well-formed one (a malformed id is not echoed).
    pub segment_id: Option<[u8; 3]>,
    /// 1-based occurrence of `segment_id` in the message (1 when the id is unknown).
    pub occurrence: usize,
    /// HL7 field number (MSH numbering honoured); 0 when the error concerns the segment.
    pub field: usize,
}

impl ParseError {
    fn header(kind: ParseErrorKind) -> Self {
        let field = match kind {
            ParseErrorKind::MshTooShort => 1,
            ParseErrorKind::BadEncodingChars => 2,
            _ => 0,
        };
        ParseError {
            kind,
            segment_index: 0,
            segment_id: Some(*b"MSH"),
            occurrence: 1,
            field,
        }
    }

    /// The segment id as text, when known.
    pub fn segment_id_str(&self) -> Option<&str> {
        self.segment_id
            .as_ref()
            .and_then(|id| std::str::from_utf8(id).ok())
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (segment #{} {}, field {})",
            self.kind.text(),
            self.segment_index.saturating_add(1),
            self.segment_id_str().unwrap_or("?"),
            self.field
        )
    }
}

impl std::error::Error for ParseError {}

fn is_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Splits on an optional separator; `None` yields the input once (MSH-1/MSH-2 must never
/// be split even though they contain the delimiters).
#[derive(Clone)]
struct Split<'a> {
    rest: Option<&'a [u8]>,
    sep: Option<u8>,
}

impl<'a> Split<'a> {
    fn new(input: &'a [u8], sep: Option<u8>) -> Self {
        Split {
            rest: Some(input),
            sep,
        }
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let Some(sep) = self.sep else {
            self.rest = None;
            return Some(rest);
        };
        match rest.iter().position(|&b| b == sep) {
            Some(i) => {
                self.rest = rest.get(i.saturating_add(1)..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// 1-based `nth`; position 0 does not exist in HL7 numbering.
fn nth1<'a>(mut it: impl Iterator<Item = &'a [u8]>, n: usize) -> Option<&'a [u8]> {
    it.nth(n.checked_sub(1)?)
}

/// Framing state for the single pass of [`Message::parse`].
struct Scan<'a, 'o> {
    bytes: &'a [u8],
    opts: &'o ParseOptions,
    fs: u8,
    segments: Vec<&'a [u8]>,
    seg_start: usize,
    field_start: usize,
    field_idx: usize,
}

impl<'a> Scan<'a, '_> {
    fn err(&self, kind: ParseErrorKind) -> ParseError {
        self.err_in_field(kind, self.field_idx)
    }

    /// Segment-level errors pass `field_idx` 0 so they are not pinned on the last field.
    fn err_in_field(&self, kind: ParseErrorKind, field_idx: usize) -> ParseError {
        let seg = self.bytes.get(self.seg_start..).unwrap_or_default();
        let id = seg
            .get(..3)
            .filter(|id| is_segment_id(id))
            .filter(|_| {
                seg.get(3)
                    .is_none_or(|&b| b == self.fs || b == b'\r' || b == b'\n')
            })
            .and_then(|id| <[u8; 3]>::try_from(id).ok());
        let occurrence = match &id {
            Some(id) => self
                .segments
                .iter()
                .filter(|s| s.get(..3) == Some(id.as_slice()))
                .count()
                .saturating_add(1),
            None => 1,
        };
        let field = if id == Some(*b"MSH") && field_idx >= 1 {
            field_idx.saturating_add(1)
        } else {
            field_idx
        };
        ParseError {
            kind,
            segment_index: self.segments.len(),
            segment_id: id,
            occurrence,
            field,
        }
    }

    fn end_field(&self, pos: usize) -> Result<(), ParseError> {
        if pos.saturating_sub(self.field_start) > self.opts.max_field_len {
            Err(self.err(ParseErrorKind::FieldTooLong))
        } else {
            Ok(())
        }
    }

    fn end_segment(&mut self, pos: usize) -> Result<(), ParseError> {
        let seg = self.bytes.get(self.seg_start..pos).unwrap_or_default();
        if seg.is_empty() {
            return Err(self.err_in_field(ParseErrorKind::EmptySegment, 0));
        }
        let id_ok =
            seg.get(..3).is_some_and(is_segment_id) && seg.get(3).is_none_or(|&b| b == self.fs);
        if !id_ok {
            return Err(self.err_in_field(ParseErrorKind::BadSegmentId, 0));
        }
        if !self.segments.is_empty() && seg.starts_with(b"MSH") {
            return Err(self.err_in_field(ParseErrorKind::DuplicateMsh, 0));
        }
        if self.segments.len() >= self.opts.max_segments {
            return Err(self.err_in_field(ParseErrorKind::TooManySegments, 0));
        }
        self.segments.push(seg);
        Ok(())
    }

    fn start_segment(&mut self, at: usize) {
        self.seg_start = at;
        self.field_start = at;
        self.field_idx = 0;
    }
}

/// A framed message borrowing the input bytes.
#[derive(Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delims: Delimiters,
    segments: Vec<&'a [u8]>,
}

/// Content is PHI: Debug shows structure only.
impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.bytes.len())
            .field(
                "segments",
                &self.segments().map(|s| s.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'a> Message<'a> {
    /// Frames `bytes` (one message, MLLP envelope already removed).
    pub fn parse(bytes: &'a [u8], opts: &ParseOptions) -> Result<Self, ParseError> {
        if bytes.is_empty() {
            return Err(ParseError::header(ParseErrorKind::Empty));
        }
        let first_end = bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(bytes.len());
        let delims = Delimiters::from_msh(bytes.get(..first_end).unwrap_or_default())
            .map_err(ParseError::header)?;
        let mut scan = Scan {
            bytes,
            opts,
            fs: delims.field,
            segments: Vec::new(),
            seg_start: 0,
            field_start: 0,
            field_idx: 0,
        };
        let mut pos = 0usize;
        while let Some(&b) = bytes.get(pos) {
            let next = pos.saturating_add(1);
            if b == scan.fs {
                scan.end_field(pos)?;
                scan.field_idx = scan.field_idx.saturating_add(1);
                scan.field_start = next;
                pos = next;
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    if b == b'\n' && !opts.lenient_line_endings {
                        return Err(scan.err(ParseErrorKind::BareLineFeed));
                    }
                    scan.end_field(pos)?;
                    scan.end_segment(pos)?;
                    let mut after = next;
                    if b == b'\r' && opts.lenient_line_endings && bytes.get(after) == Some(&b'\n') {
                        after = after.saturating_add(1);
                    }
                    scan.start_segment(after);
                    pos = after;
                }
                0x00 | 0x0B | 0x1C => return Err(scan.err(ParseErrorKind::ForbiddenByte)),
                _ => pos = next,
            }
        }
        // No terminator after the last segment is accepted; a single one was consumed above.
        if scan.seg_start < bytes.len() {
            scan.end_field(bytes.len())?;
            scan.end_segment(bytes.len())?;
        }
        Ok(Message {
            bytes,
            delims,
            segments: scan.segments,
        })
    }

    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The header segment (a parsed message always has one, first).
    pub fn msh(&self) -> Segment<'a> {
        Segment {
            raw: self.segments.first().copied().unwrap_or_default(),
            delims: self.delims,
        }
    }

    /// All segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        let delims = self.delims;
        self.segments
            .iter()
            .map(move |&raw| Segment { raw, delims })
    }

    /// First segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'a>> {
        self.segments_by_id(id).next()
    }

    /// Every occurrence of a segment id, in order (occurrence n is `.nth(n - 1)`).
    pub fn segments_by_id<'s>(&'s self, id: &'s str) -> impl Iterator<Item = Segment<'a>> + 's {
        self.segments()
            .filter(move |s| s.id_bytes() == id.as_bytes())
    }
}

/// One segment: `raw` runs from the id to just before the terminator.
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    raw: &'a [u8],
    delims: Delimiters,
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id())
            .field("len", &self.raw.len())
            .finish()
    }
}

impl<'a> Segment<'a> {
    /// The segment id; ASCII by construction for parsed messages.
    pub fn id(&self) -> &'a str {
        std::str::from_utf8(self.raw.get(..3).unwrap_or_default()).unwrap_or("")
    }

    pub fn id_bytes(&self) -> &'a [u8] {
        self.raw.get(..3).unwrap_or_default()
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    fn is_msh(&self) -> bool {
        self.raw.starts_with(b"MSH")
    }

    /// Field `n` (1-based). MSH is numbered the HL7 way: MSH-1 is the field separator
    /// itself and MSH-2 the encoding characters (both returned unsplit), so MSH-3 is the
    /// first value after them. `None` when the segment has fewer fields.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let delims = self.delims;
        let is_msh = self.is_msh();
        if is_msh && n == 1 {
            return self.raw.get(3..4).map(|raw| Field {
                raw,
                delims,
                literal: true,
            });
        }
        let idx = n.checked_sub(if is_msh { 2 } else { 1 })?;
        let raw = Split::new(self.raw.get(4..)?, Some(delims.field)).nth(idx)?;
        Some(Field {
            raw,
            delims,
            literal: is_msh && idx == 0,
        })
    }

    /// Number of fields present (for MSH, counting MSH-1 and MSH-2).
    pub fn field_count(&self) -> usize {
        let seps = self.raw.iter().filter(|&&b| b == self.delims.field).count();
        if self.is_msh() {
            seps.saturating_add(1)
        } else {
            seps
        }
    }

    /// `(number, field)` pairs in one linear pass (calling [`Segment::field`] in a loop
    /// would rescan the segment each time: quadratic on hostile segments).
    pub fn fields(&self) -> impl Iterator<Item = (usize, Field<'a>)> + 'a {
        let delims = self.delims;
        let is_msh = self.is_msh();
        let msh1 = if is_msh {
            self.raw.get(3..4).map(|raw| {
                (
                    1,
                    Field {
                        raw,
                        delims,
                        literal: true,
                    },
                )
            })
        } else {
            None
        };
        let first = if is_msh { 2 } else { 1 };
        let rest = self.raw.get(4..);
        msh1.into_iter().chain(rest.into_iter().flat_map(move |r| {
            Split::new(r, Some(delims.field))
                .enumerate()
                .map(move |(i, raw)| {
                    (
                        first + i,
                        Field {
                            raw,
                            delims,
                            literal: is_msh && i == 0,
                        },
                    )
                })
        }))
    }
}

/// True when a value carries data: not empty, not the HL7 null `""`, and not only
/// separators (`^^^`).
pub(crate) fn has_value(raw: &[u8], d: &Delimiters) -> bool {
    raw != b"\"\"" && raw.iter().any(|&b| !d.is_separator(b))
}

macro_rules! value_common {
    () => {
        /// The bytes as sent (still escaped).
        pub fn raw(&self) -> &'a [u8] {
            self.raw
        }

        pub fn is_empty(&self) -> bool {
            self.raw.is_empty()
        }

        /// The HL7 explicit null `""`.
        pub fn is_null(&self) -> bool {
            self.raw == b"\"\""
        }

        /// Neither empty, null nor separators only.
        pub fn has_value(&self) -> bool {
            has_value(self.raw, &self.delims)
        }

        /// Decodes escape sequences into an owned buffer (delimiters inside stay literal).
        pub fn unescape(&self) -> Result<Vec<u8>, EscapeError> {
            if self.literal {
                Ok(self.raw.to_vec())
            } else {
                unescape(self.raw, &self.delims)
            }
        }
    };
}

/// A field: one or more repetitions.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    raw: &'a [u8],
    delims: Delimiters,
    /// MSH-1/MSH-2: never split, never unescaped.
    literal: bool,
}

/// One repetition of a field: one or more components.
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a [u8],
    delims: Delimiters,
    literal: bool,
}

/// One component: one or more subcomponents.
#[derive(Clone, Copy)]
pub struct Component<'a> {
    raw: &'a [u8],
    delims: Delimiters,
    literal: bool,
}

macro_rules! debug_len {
    ($t:ident) => {
        impl fmt::Debug for $t<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("len", &self.raw.len())
                    .finish()
            }
        }
    };
}
debug_len!(Field);
debug_len!(Repetition);
debug_len!(Component);

impl<'a> Field<'a> {
    value_common!();

    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let (delims, literal) = (self.delims, self.literal);
        let sep = (!literal).then_some(delims.repetition);
        Split::new(self.raw, sep).map(move |raw| Repetition {
            raw,
            delims,
            literal,
        })
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Repetition<'a>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.repetition(1)?.component(n)
    }
}

impl<'a> Repetition<'a> {
    value_common!();

    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let (delims, literal) = (self.delims, self.literal);
        let sep = (!literal).then_some(delims.component);
        Split::new(self.raw, sep).map(move |raw| Component {
            raw,
            delims,
            literal,
        })
    }

    /// Component `n` (1-based).
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.components().nth(n.checked_sub(1)?)
    }
}

impl<'a> Component<'a> {
    value_common!();

    /// Subcomponents, still escaped (unescape with [`unescape`]).
    pub fn subcomponents(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let sep = (!self.literal).then_some(self.delims.subcomponent);
        Split::new(self.raw, sep)
    }

    /// Subcomponent `n` (1-based).
    pub fn subcomponent(&self, n: usize) -> Option<&'a [u8]> {
        nth1(self.subcomponents(), n)
    }
}

/// A malformed escape sequence. Carries no content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapeError {
    /// Escape character without a closing one.
    Unterminated,
    /// A sequence we do not know (`\Zxx\`, `\Cxxyy\`, `\.sp\`, `\\`…).
    Unknown,
    /// `\X…\` with no digits, an odd count, or a non-hex digit.
    BadHex,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EscapeError::Unterminated => "unterminated escape sequence",
            EscapeError::Unknown => "unknown escape sequence",
            EscapeError::BadHex => "malformed hexadecimal escape",
        })
    }
}

impl std::error::Error for EscapeError {}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the text between two escape characters. Supported: `F S T R E` (delimiters),
/// `P` (truncation character, v2.7), `Xhh…` (raw bytes), `.br` (line break, decoded as
/// `\n` because `\r` is the segment terminator), and `H`/`N` (highlight on/off: no byte
/// form, dropped). Anything else is an error rather than passed through, so a value that
/// validated always decodes to something well-defined.
pub(crate) fn decode_escape(
    seq: &[u8],
    d: &Delimiters,
    out: Option<&mut Vec<u8>>,
) -> Result<(), EscapeError> {
    let single = match seq {
        b"F" => Some(d.field),
        b"S" => Some(d.component),
        b"T" => Some(d.subcomponent),
        b"R" => Some(d.repetition),
        b"E" => Some(d.escape),
        b"P" => Some(d.truncation.ok_or(EscapeError::Unknown)?),
        b".br" => Some(b'\n'),
        b"H" | b"N" => None,
        [b'X', hex @ ..] => {
            if hex.is_empty() || hex.len() % 2 != 0 {
                return Err(EscapeError::BadHex);
            }
            let mut decoded = Vec::new();
            for pair in hex.chunks_exact(2) {
                let (hi, lo) = match pair {
                    &[hi, lo] => (hex_val(hi), hex_val(lo)),
                    _ => (None, None),
                };
                match (hi, lo) {
                    (Some(hi), Some(lo)) => decoded.push(hi << 4 | lo),
                    _ => return Err(EscapeError::BadHex),
                }
            }
            if let Some(out) = out {
                out.extend_from_slice(&decoded);
            }
            return Ok(());
        }
        _ => return Err(EscapeError::Unknown),
    };
    if let (Some(b), Some(out)) = (single, out) {
        out.push(b);
    }
    Ok(())
}

/// Walks `raw`, optionally decoding into `out`. Returns the first error.
fn walk_escapes(
    raw: &[u8],
    d: &Delimiters,
    mut out: Option<&mut Vec<u8>>,
) -> Result<(), EscapeError> {
    let mut rest = raw;
    while let Some(start) = rest.iter().position(|&b| b == d.escape) {
        if let Some(o) = out.as_deref_mut() {
            o.extend_from_slice(rest.get(..start).unwrap_or_default());
        }
        let after = rest.get(start.saturating_add(1)..).unwrap_or_default();
        let end = after
            .iter()
            .position(|&b| b == d.escape)
            .ok_or(EscapeError::Unterminated)?;
        decode_escape(after.get(..end).unwrap_or_default(), d, out.as_deref_mut())?;
        rest = after.get(end.saturating_add(1)..).unwrap_or_default();
    }
    if let Some(o) = out {
        o.extend_from_slice(rest);
    }
    Ok(())
}

/// Decodes HL7 escape sequences in `raw` into an owned buffer. Raw delimiters in `raw` are
/// kept literally, so pass the smallest unit you need (a subcomponent) when splitting
/// matters.
pub fn unescape(raw: &[u8], d: &Delimiters) -> Result<Vec<u8>, EscapeError> {
    let mut out = Vec::with_capacity(raw.len());
    walk_escapes(raw, d, Some(&mut out))?;
    Ok(out)
}

/// Checks escape sequences without allocating.
pub fn check_escapes(raw: &[u8], d: &Delimiters) -> Result<(), EscapeError> {
    walk_escapes(raw, d, None)
}

/// Declared character set (MSH-18, first repetition; HL7 table 0211).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// MSH-18 empty or `ASCII`: HL7's default.
    Ascii,
    /// `8859/1`.
    Latin1,
    /// `UNICODE UTF-8` (and the common non-standard `UTF-8`).
    Utf8,
    /// Anything else; the value is in [`HeaderInfo::charset`].
    Other,
}

/// The MSH fields needed to route, authenticate the sender and address an ACK, copied out
/// (owned) so they outlive the input buffer and survive a rejected body.
///
/// Values are raw ER7 — still escaped, relative to `delimiters` — which is exactly what an
/// ACK using the same encoding characters must echo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// MSH-1/MSH-2.
    pub delimiters: Delimiters,
    /// MSH-3.
    pub sending_application: Vec<u8>,
    /// MSH-4.
    pub sending_facility: Vec<u8>,
    /// MSH-5.
    pub receiving_application: Vec<u8>,
    /// MSH-6.
    pub receiving_facility: Vec<u8>,
    /// MSH-9.1.
    pub message_code: Vec<u8>,
    /// MSH-9.2.
    pub trigger_event: Vec<u8>,
    /// MSH-10.
    pub control_id: Vec<u8>,
    /// MSH-11.
    pub processing_id: Vec<u8>,
    /// MSH-12 (whole VID field; the version number is component 1).
    pub version: Vec<u8>,
    /// MSH-18, first repetition.
    pub charset: Vec<u8>,
}

impl HeaderInfo {
    /// Copies the header fields out of an MSH segment.
    pub fn from_msh(msh: &Segment<'_>) -> Self {
        let mut h = HeaderInfo {
            delimiters: msh.delims,
            ..HeaderInfo::default()
        };
        for (n, f) in msh.fields() {
            let raw = f.raw();
            match n {
                3 => h.sending_application = raw.to_vec(),
                4 => h.sending_facility = raw.to_vec(),
                5 => h.receiving_application = raw.to_vec(),
                6 => h.receiving_facility = raw.to_vec(),
                9 => {
                    let part =
                        |c: usize| f.component(c).map(|c| c.raw().to_vec()).unwrap_or_default();
                    h.message_code = part(1);
                    h.trigger_event = part(2);
                }
                10 => h.control_id = raw.to_vec(),
                11 => h.processing_id = raw.to_vec(),
                12 => h.version = raw.to_vec(),
                18 => {
                    h.charset = f
                        .repetition(1)
                        .map(|r| r.raw().to_vec())
                        .unwrap_or_default()
                }
                n if n > 18 => break,
                _ => {}
            }
        }
        h
    }

    pub fn charset(&self) -> Charset {
        match self.charset.as_slice() {
            b"" | b"ASCII" => Charset::Ascii,
            b"8859/1" => Charset::Latin1,
            b"UNICODE UTF-8" | b"UTF-8" => Charset::Utf8,
            _ => Charset::Other,
        }
    }

    /// MSH-3.1 (namespace id), what sender allow-lists usually match on.
    pub fn sending_application_ns(&self) -> &[u8] {
        first_component(&self.sending_application, &self.delimiters)
    }

    /// MSH-4.1 (namespace id).
    pub fn sending_facility_ns(&self) -> &[u8] {
        first_component(&self.sending_facility, &self.delimiters)
    }
}

fn first_component<'v>(v: &'v [u8], d: &Delimiters) -> &'v [u8] {
    Split::new(v, Some(d.component)).next().unwrap_or_default()
}

/// Header-only parse of the first segment: no body checks, no limits beyond the first
/// terminator. `None` unless it is an MSH with valid encoding characters.
pub fn header(bytes: &[u8]) -> Option<HeaderInfo> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let first = bytes.get(..end)?;
    let delims = Delimiters::from_msh(first).ok()?;
    Some(HeaderInfo::from_msh(&Segment { raw: first, delims }))
}

/// MSH-10 of a message whose MSH-2 is unusable, for the MSA-2 of its NAK: a sender
/// matches NAKs to messages by it, and an AR it cannot match is retried forever.
///
/// Without trusted encoding characters nothing can be unescaped or split below the field
/// level, so only a control id that needs neither is returned: the field separator (MSH-1)
/// must itself be a valid delimiter, and the value 1..=199 printable ASCII characters other
/// than the standard delimiters `^~\&|` (which the NAK's default encoding would read
/// as structure). Anything else: `None`, and the NAK's MSA-2 stays empty.
pub fn control_id_fallback(bytes: &[u8]) -> Option<Vec<u8>> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let first = bytes.get(..end)?;
    if !first.starts_with(b"MSH") {
        return None;
    }
    let sep = *first.get(3)?;
    if !is_allowed_delimiter(sep) {
        return None;
    }
    // Split index 0 is "MSH", 1 is MSH-2 (MSH-1 is the separator itself), so MSH-n is n-1.
    let v = first.split(|&b| b == sep).nth(9)?;
    let readable = (1..=199).contains(&v.len())
        && v.iter()
            .all(|&b| (0x21..=0x7E).contains(&b) && !br"^~\&|".contains(&b));
    readable.then(|| v.to_vec())
}

/// MSA-1 values (HL7 table 0008). Here, beside the parser, because both the validator (which
/// picks AE or AR) and the ACK builder use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// AA
    Accept,
    /// AE
    Error,
    /// AR
    Reject,
    /// CA (enhanced mode, commit accept)
    CommitAccept,
    /// CE
    CommitError,
    /// CR
    CommitReject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
            AckCode::CommitAccept => "CA",
            AckCode::CommitError => "CE",
            AckCode::CommitReject => "CR",
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(match b {
            b"AA" => AckCode::Accept,
            b"AE" => AckCode::Error,
            b"AR" => AckCode::Reject,
            b"CA" => AckCode::CommitAccept,
            b"CE" => AckCode::CommitError,
            b"CR" => AckCode::CommitReject,
            _ => return None,
        })
    }

    /// AA or CA.
    pub fn is_positive(self) -> bool {
        matches!(self, AckCode::Accept | AckCode::CommitAccept)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests;
