//! Policy validation of HL7 v2.x messages before Ward forwards them.
//!
//! [`validate`] frames the message with the ER7 parser, then checks the header, the
//! operator's allow-lists, required segments per message type and the data types of a few
//! fields that downstream systems key on. It returns either [`Validated`] (with everything
//! an AA needs) or a [`Rejection`] carrying HL7 table 0357 codes and locations, and the
//! header fields needed to address a NAK even when the body is broken.
//!
//! Required MSH fields: MSH-7 (date/time of message), MSH-9 (type), MSH-10 (control id),
//! MSH-11 (processing id), MSH-12 (version). MSH-3..MSH-6 are optional, as in every v2.x
//! version (real Oracle, converter and state-lab feeds leave MSH-3 empty), and nothing here
//! needs them; a rule that does — the MLLP listener's sender binding on MSH-3/MSH-4 —
//! checks them itself and fails closed when they are empty.
//!
//! Ack code: AR ("reject") when the header cannot be used — unframeable header, or a
//! missing/unsupported MSH-9, MSH-11 or MSH-12, matching HL7's definition of AR in original
//! acknowledgement mode; AE ("error") for everything else. Framing errors stop at the
//! first one; all other errors are collected, up to [`MAX_ERRORS`].
//!
//! Error texts are fixed strings: nothing from the message (PHI) is ever echoed.

use std::fmt;

use super::er7::AckCode;
use super::er7::{
    check_escapes, has_value, Field, HeaderInfo, Message, ParseError, ParseErrorKind, ParseOptions,
    Segment, DEFAULT_MAX_FIELD_LEN, DEFAULT_MAX_SEGMENTS,
};

/// HL7 table 0357 (message error condition codes) values used here.
pub const SEGMENT_SEQUENCE_ERROR: u16 = 100;
pub const REQUIRED_FIELD_MISSING: u16 = 101;
pub const DATA_TYPE_ERROR: u16 = 102;
pub const TABLE_VALUE_NOT_FOUND: u16 = 103;
pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
pub const UNSUPPORTED_EVENT_CODE: u16 = 201;
pub const UNSUPPORTED_PROCESSING_ID: u16 = 202;
pub const UNSUPPORTED_VERSION_ID: u16 = 203;
pub const APPLICATION_INTERNAL_ERROR: u16 = 207;

/// Enough to fix a message; more would only grow the NAK for a sender that sends garbage.
pub const MAX_ERRORS: usize = 10;

/// Operator policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// `"ADT^A01"` (exact), `"ADT^*"` or `"ADT"` (any trigger). Empty = any type.
    pub allowed_message_types: Vec<String>,
    /// Exact MSH-12.1 values (`"2.5"` does not admit `"2.5.1"`). Empty = any version.
    pub allowed_versions: Vec<String>,
    /// `(type pattern, segment ids)`; the first matching entry replaces the built-in list
    /// for that type (patterns as in `allowed_message_types`).
    pub required_segments: Vec<(String, Vec<String>)>,
    pub lenient_line_endings: bool,
    pub max_segments: usize,
    pub max_field_len: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            allowed_message_types: Vec::new(),
            allowed_versions: Vec::new(),
            required_segments: Vec::new(),
            lenient_line_endings: false,
            max_segments: DEFAULT_MAX_SEGMENTS,
            max_field_len: DEFAULT_MAX_FIELD_LEN,
        }
    }
}

/// MSH-11.1 (HL7 table 0103).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessingId {
    Production,
    Training,
    Debugging,
}

/// A message that passed every check.
#[derive(Clone, Debug)]
pub struct Validated<'a> {
    pub msg: Message<'a>,
    /// For building the AA (see `ack::build_ack`).
    pub header: HeaderInfo,
    /// `"ADT^A01"`, or just `"ACK"` when MSH-9.2 is empty. ASCII letters/digits only.
    pub message_type: String,
    /// MSH-10 unescaped: delimiter-independent, so it compares with what
    /// `ack::parse_ack` returns for the upstream's MSA-2.
    pub control_id: Vec<u8>,
    /// MSH-12.1, e.g. `"2.5.1"`. Digits and dots only.
    pub version: String,
    pub processing_id: ProcessingId,
}

/// One problem, located the way an ERR segment wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorLoc {
    /// Segment id; empty when the segment's own id is malformed (never echoed).
    pub segment: String,
    /// 1-based occurrence of `segment`; when `segment` is empty, the 1-based position of
    /// the segment in the message instead.
    pub sequence: usize,
    /// HL7 field number; 0 when the error concerns the whole segment.
    pub field: usize,
    pub component: Option<usize>,
    /// HL7 table 0357.
    pub code: u16,
    /// Fixed text: never message content.
    pub message: &'static str,
}

/// Why a message was refused, and what is needed to say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `AckCode::Error` (AE) or `AckCode::Reject` (AR).
    pub ack_code: AckCode,
    /// At least one, at most [`MAX_ERRORS`], in message order (header first).
    pub errors: Vec<ErrorLoc>,
    /// `None` when not even MSH-1/MSH-2 could be read (the NAK then uses defaults).
    pub header: Option<HeaderInfo>,
}

/// Positions and codes only, so a rejection can be logged as is.
impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HL7 message rejected ({}), {} error(s)",
            self.ack_code.as_str(),
            self.errors.len()
        )?;
        if let Some(e) = self.errors.first() {
            write!(
                f,
                "; first: {} {} at {}[{}]-{}",
                e.code, e.message, e.segment, e.sequence, e.field
            )?;
            if let Some(c) = e.component {
                write!(f, ".{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

#[derive(Default)]
struct Errors {
    list: Vec<ErrorLoc>,
    reject: bool,
}

impl Errors {
    /// The AR flag is kept even past the cap, so a late header error still turns AE into AR.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        reject: bool,
        segment: &str,
        sequence: usize,
        field: usize,
        component: Option<usize>,
        code: u16,
        message: &'static str,
    ) {
        self.reject |= reject;
        if self.list.len() < MAX_ERRORS {
            self.list.push(ErrorLoc {
                segment: segment.to_owned(),
                sequence,
                field,
                component,
                code,
                message,
            });
        }
    }

    fn full(&self) -> bool {
        self.list.len() >= MAX_ERRORS
    }
}

/// Header fields whose failure makes the whole message unacceptable (AR), not just wrong.
fn header_rejects(field: usize) -> bool {
    matches!(field, 9 | 11 | 12)
}

/// Checks `bytes` (one message, MLLP envelope removed) against `rules`.
// `Rejection` is large because it owns the header for the NAK; boxing it would cost an
// allocation on exactly the path hostile traffic takes, for a one-off 280-byte move.
#[allow(clippy::result_large_err)]
pub fn validate<'a>(bytes: &'a [u8], rules: &Rules) -> Result<Validated<'a>, Rejection> {
    let opts = ParseOptions {
        lenient_line_endings: rules.lenient_line_endings,
        max_segments: rules.max_segments,
        max_field_len: rules.max_field_len,
    };
    let msg = Message::parse(bytes, &opts).map_err(|e| rejection_from_parse(bytes, &e))?;
    let msh = msg.msh();
    let header = HeaderInfo::from_msh(&msh);
    let head = Head::new(msh);
    let mut errs = Errors::default();

    if let Some(f) = required(&mut errs, &head, 1, 7) {
        if !is_valid_dtm(first_component(&f)) {
            errs.push(
                false,
                "MSH",
                1,
                7,
                Some(1),
                DATA_TYPE_ERROR,
                "invalid date/time",
            );
        }
    }
    let message_type = check_message_type(&head, rules, &mut errs);
    let control_id = required(&mut errs, &head, 1, 10).and_then(|f| f.unescape().ok());
    let processing_id =
        required(&mut errs, &head, 1, 11).and_then(|f| check_processing_id(&f, &mut errs));
    let version =
        required(&mut errs, &head, 1, 12).and_then(|f| check_version(&f, rules, &mut errs));
    check_lengths(&msh, 1, MSH_CAPS, &mut errs);

    if let Some((code, trigger)) = &message_type {
        check_required_segments(&msg, rules, code, trigger, &mut errs);
    }
    for (i, pid) in msg.segments_by_id("PID").enumerate() {
        let seq = i.saturating_add(1);
        check_pid(&pid, seq, &mut errs);
        check_lengths(&pid, seq, PID_CAPS, &mut errs);
    }
    check_all_escapes(&msg, &mut errs);

    if errs.list.is_empty() {
        if let (Some((code, trigger)), Some(control_id), Some(version), Some(processing_id)) =
            (message_type, control_id, version, processing_id)
        {
            let message_type = if trigger.is_empty() {
                code
            } else {
                format!("{code}^{trigger}")
            };
            return Ok(Validated {
                msg,
                header,
                message_type,
                control_id,
                version,
                processing_id,
            });
        }
        // Every `None` above comes with an error (an undecodable MSH-10 is reported by the
        // escape check); reaching this is a bug here, and the sender must not get an AA for it.
        errs.push(
            false,
            "MSH",
            1,
            0,
            None,
            APPLICATION_INTERNAL_ERROR,
            "internal validation error",
        );
    }
    Err(Rejection {
        ack_code: if errs.reject {
            AckCode::Reject
        } else {
            AckCode::Error
        },
        errors: errs.list,
        header: Some(header),
    })
}

fn rejection_from_parse(bytes: &[u8], e: &ParseError) -> Rejection {
    let header = super::er7::header(bytes);
    let code = match e.kind {
        ParseErrorKind::MshTooShort => REQUIRED_FIELD_MISSING,
        ParseErrorKind::BadEncodingChars
        | ParseErrorKind::ForbiddenByte
        | ParseErrorKind::BareLineFeed
        | ParseErrorKind::FieldTooLong => DATA_TYPE_ERROR,
        ParseErrorKind::Empty
        | ParseErrorKind::NotMsh
        | ParseErrorKind::BadSegmentId
        | ParseErrorKind::EmptySegment
        | ParseErrorKind::DuplicateMsh
        | ParseErrorKind::TooManySegments => SEGMENT_SEQUENCE_ERROR,
    };
    let (segment, sequence) = match e.segment_id_str() {
        Some(id) => (id.to_owned(), e.occurrence),
        None => (String::new(), e.segment_index.saturating_add(1)),
    };
    let reject = e.kind.is_header_error() || header.is_none();
    // Unusable encoding characters: the rest of the header cannot be trusted, but a plain
    // MSH-10 can still address the NAK (everything else stays at the defaults).
    let header = header.or_else(|| {
        super::er7::control_id_fallback(bytes).map(|control_id| HeaderInfo {
            control_id,
            ..HeaderInfo::default()
        })
    });
    Rejection {
        ack_code: if reject {
            AckCode::Reject
        } else {
            AckCode::Error
        },
        errors: vec![ErrorLoc {
            segment,
            sequence,
            field: e.field,
            component: None,
            code,
            message: e.kind.text(),
        }],
        header,
    }
}

/// A segment with its first fields split once: the checks look up several of them, and
/// `Segment::field` rescans from the start each time.
struct Head<'a> {
    seg: Segment<'a>,
    fields: [Option<Field<'a>>; 13],
}

impl<'a> Head<'a> {
    fn new(seg: Segment<'a>) -> Self {
        let mut fields = [None; 13];
        for (n, f) in seg.fields() {
            match fields.get_mut(n) {
                Some(slot) => *slot = Some(f),
                None => break,
            }
        }
        Head { seg, fields }
    }

    fn field(&self, n: usize) -> Option<Field<'a>> {
        match self.fields.get(n) {
            Some(f) => *f,
            None => self.seg.field(n),
        }
    }
}

/// Field `n` when it carries a value; otherwise records "required field missing".
fn required<'a>(errs: &mut Errors, head: &Head<'a>, seq: usize, n: usize) -> Option<Field<'a>> {
    match head.field(n).filter(Field::has_value) {
        Some(f) => Some(f),
        None => {
            let id = head.seg.id();
            let reject = id == "MSH" && header_rejects(n);
            errs.push(
                reject,
                id,
                seq,
                n,
                None,
                REQUIRED_FIELD_MISSING,
                "required field missing",
            );
            None
        }
    }
}

fn first_component<'a>(f: &Field<'a>) -> &'a [u8] {
    f.component(1).map(|c| c.raw()).unwrap_or_default()
}

fn is_code(b: &[u8]) -> bool {
    b.len() == 3
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn ascii_string(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// `pattern` is `CODE`, `CODE^*` or `CODE^TRIGGER` (a third component is ignored).
fn type_matches(pattern: &str, code: &str, trigger: &str) -> bool {
    let mut parts = pattern.split('^');
    let p_code = parts.next().unwrap_or_default();
    match parts.next() {
        None | Some("*") => p_code == code,
        Some(p_trigger) => p_code == code && p_trigger == trigger,
    }
}

/// Returns `(code, trigger)` when MSH-9 is well-formed and allowed.
fn check_message_type(
    head: &Head<'_>,
    rules: &Rules,
    errs: &mut Errors,
) -> Option<(String, String)> {
    let f = required(errs, head, 1, 9)?;
    let rep = f.repetition(1)?;
    let part = |n: usize| rep.component(n).map(|c| c.raw()).unwrap_or_default();
    let (code, trigger, structure) = (part(1), part(2), part(3));
    if !is_code(code) {
        errs.push(
            true,
            "MSH",
            1,
            9,
            Some(1),
            UNSUPPORTED_MESSAGE_TYPE,
            "malformed message type",
        );
        return None;
    }
    if !(trigger.is_empty() || is_code(trigger)) {
        errs.push(
            true,
            "MSH",
            1,
            9,
            Some(2),
            UNSUPPORTED_EVENT_CODE,
            "malformed trigger event",
        );
        return None;
    }
    // MSH-9.3 (message structure, v2.3.1+) is tolerated but must look like one.
    let structure_ok = structure.len() <= 7
        && structure
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_');
    if !structure_ok {
        errs.push(
            true,
            "MSH",
            1,
            9,
            Some(3),
            UNSUPPORTED_MESSAGE_TYPE,
            "malformed message structure",
        );
        return None;
    }
    let (code, trigger) = (ascii_string(code), ascii_string(trigger));
    let allowed = &rules.allowed_message_types;
    if !allowed.is_empty() && !allowed.iter().any(|p| type_matches(p, &code, &trigger)) {
        // Known type with an unexpected trigger gets the more precise 201.
        let code_known = allowed
            .iter()
            .any(|p| p.split('^').next().unwrap_or_default() == code);
        if code_known {
            errs.push(
                true,
                "MSH",
                1,
                9,
                Some(2),
                UNSUPPORTED_EVENT_CODE,
                "unsupported event code",
            );
        } else {
            errs.push(
                true,
                "MSH",
                1,
                9,
                Some(1),
                UNSUPPORTED_MESSAGE_TYPE,
                "unsupported message type",
            );
        }
        return None;
    }
    Some((code, trigger))
}

fn check_processing_id(f: &Field<'_>, errs: &mut Errors) -> Option<ProcessingId> {
    let rep = f.repetition(1)?;
    let id = match rep.component(1).map(|c| c.raw()).unwrap_or_default() {
        b"P" => Some(ProcessingId::Production),
        b"T" => Some(ProcessingId::Training),
        b"D" => Some(ProcessingId::Debugging),
        _ => None,
    };
    if id.is_none() {
        errs.push(
            true,
            "MSH",
            1,
            11,
            Some(1),
            UNSUPPORTED_PROCESSING_ID,
            "unsupported processing id",
        );
        return None;
    }
    // Processing mode, HL7 table 0207 (empty = current processing).
    let mode = rep.component(2).map(|c| c.raw()).unwrap_or_default();
    if !matches!(mode, b"" | b"A" | b"R" | b"I" | b"T") {
        errs.push(
            true,
            "MSH",
            1,
            11,
            Some(2),
            UNSUPPORTED_PROCESSING_ID,
            "unsupported processing mode",
        );
        return None;
    }
    id
}

fn is_version(v: &[u8]) -> bool {
    (1..=10).contains(&v.len())
        && v.iter().all(|c| c.is_ascii_digit() || *c == b'.')
        && v.first().is_some_and(u8::is_ascii_digit)
        && v.last().is_some_and(u8::is_ascii_digit)
        && !v.windows(2).any(|w| w == b"..")
}

fn check_version(f: &Field<'_>, rules: &Rules, errs: &mut Errors) -> Option<String> {
    let v = first_component(f);
    if !is_version(v) {
        errs.push(
            true,
            "MSH",
            1,
            12,
            Some(1),
            UNSUPPORTED_VERSION_ID,
            "malformed version id",
        );
        return None;
    }
    let v = ascii_string(v);
    if !rules.allowed_versions.is_empty() && !rules.allowed_versions.contains(&v) {
        errs.push(
            true,
            "MSH",
            1,
            12,
            Some(1),
            UNSUPPORTED_VERSION_ID,
            "unsupported version id",
        );
        return None;
    }
    Some(v)
}

/// Per-repetition length caps `(field, bytes)`, escaped form. The largest value any
/// version from 2.3 to 2.8 allows, so conformant traffic from any of them passes; the point
/// is to stop absurd values in fields that downstream systems store in fixed-size columns.
const MSH_CAPS: &[(usize, usize)] = &[
    (3, 227),
    (4, 227),
    (5, 227),
    (6, 227),
    (7, 26),
    (9, 15),
    (10, 199),
    (11, 3),
    (12, 60),
];
const PID_CAPS: &[(usize, usize)] = &[(3, 250), (5, 250), (7, 26)];

fn check_lengths(seg: &Segment<'_>, seq: usize, caps: &[(usize, usize)], errs: &mut Errors) {
    let id = seg.id();
    let is_msh = seg.id_bytes() == b"MSH";
    let last = caps.iter().map(|&(n, _)| n).max().unwrap_or(0);
    for (n, f) in seg.fields() {
        if n > last {
            break;
        }
        // MSH-3..12 are not repeatable: a repetition could make hops disagree on routing.
        if is_msh && n >= 3 && f.repetitions().nth(1).is_some() {
            errs.push(
                header_rejects(n),
                id,
                seq,
                n,
                None,
                DATA_TYPE_ERROR,
                "unexpected repetition",
            );
            continue;
        }
        let cap = caps.iter().find(|&&(c, _)| c == n).map(|&(_, cap)| cap);
        if let Some(cap) = cap {
            if f.repetitions().any(|r| r.raw().len() > cap) {
                errs.push(
                    is_msh && header_rejects(n),
                    id,
                    seq,
                    n,
                    None,
                    DATA_TYPE_ERROR,
                    "field too long",
                );
            }
        }
    }
}

/// Built-in minimum segments per type, from the HL7 abstract message definitions.
fn default_required(code: &str, trigger: &str) -> &'static [&'static str] {
    match (code, trigger) {
        ("ADT", "A01" | "A04" | "A08") => &["MSH", "EVN", "PID", "PV1"],
        ("ORU", "R01") => &["MSH", "PID", "OBR", "OBX"],
        ("ORM", "O01") => &["MSH", "PID", "ORC"],
        ("SIU", "S12") => &["MSH", "SCH"],
        ("ACK", _) => &["MSH", "MSA"],
        _ => &["MSH"],
    }
}

fn check_required_segments(
    msg: &Message<'_>,
    rules: &Rules,
    code: &str,
    trigger: &str,
    errs: &mut Errors,
) {
    let mut missing = |id: &str| {
        if msg.segment(id).is_none() {
            errs.push(
                false,
                id,
                1,
                0,
                None,
                SEGMENT_SEQUENCE_ERROR,
                "required segment missing",
            );
        }
    };
    match rules
        .required_segments
        .iter()
        .find(|(p, _)| type_matches(p, code, trigger))
    {
        Some((_, ids)) => ids.iter().for_each(|id| missing(id)),
        None => default_required(code, trigger)
            .iter()
            .for_each(|id| missing(id)),
    }
}

fn check_pid(pid: &Segment<'_>, seq: usize, errs: &mut Errors) {
    let d = pid.delimiters();
    let head = Head::new(*pid);
    // PID-3 (CX): at least one repetition with an ID number.
    if let Some(f) = required(errs, &head, seq, 3) {
        if !f
            .repetitions()
            .any(|r| r.component(1).is_some_and(|c| c.has_value()))
        {
            errs.push(
                false,
                "PID",
                seq,
                3,
                Some(1),
                REQUIRED_FIELD_MISSING,
                "patient identifier missing",
            );
        }
    }
    // PID-5 (XPN): at least one repetition with a family name (FN.1) or a given name.
    if let Some(f) = required(errs, &head, seq, 5) {
        let named = f.repetitions().any(|r| {
            let family = r
                .component(1)
                .and_then(|c| c.subcomponents().next())
                .is_some_and(|s| has_value(s, &d));
            family || r.component(2).is_some_and(|c| c.has_value())
        });
        if !named {
            errs.push(
                false,
                "PID",
                seq,
                5,
                Some(1),
                REQUIRED_FIELD_MISSING,
                "patient name missing",
            );
        }
    }
    // PID-7 (TS/DTM) is optional, but must be a real date when present.
    if let Some(f) = head.field(7).filter(Field::has_value) {
        if !is_valid_dtm(first_component(&f)) {
            errs.push(
                false,
                "PID",
                seq,
                7,
                Some(1),
                DATA_TYPE_ERROR,
                "invalid date/time",
            );
        }
    }
}

/// Every escape sequence in the message must decode, so that what we forward has one
/// meaning. Reported per field, at the first bad component.
fn check_all_escapes(msg: &Message<'_>, errs: &mut Errors) {
    let d = msg.delimiters();
    for (idx, seg) in msg.segments().enumerate() {
        if errs.full() {
            return;
        }
        if !seg.raw().contains(&d.escape) {
            continue;
        }
        let id = seg.id();
        for (n, f) in seg.fields() {
            // MSH-1/MSH-2 hold the delimiters themselves.
            if id == "MSH" && n <= 2 {
                continue;
            }
            if !f.raw().contains(&d.escape) {
                continue;
            }
            let bad = f.repetitions().find_map(|r| {
                r.components()
                    .position(|c| c.subcomponents().any(|s| check_escapes(s, &d).is_err()))
            });
            if let Some(comp) = bad {
                let seq = msg
                    .segments()
                    .take(idx)
                    .filter(|s| s.id() == id)
                    .count()
                    .saturating_add(1);
                errs.push(
                    false,
                    id,
                    seq,
                    n,
                    Some(comp.saturating_add(1)),
                    DATA_TYPE_ERROR,
                    "malformed escape sequence",
                );
                if errs.full() {
                    return;
                }
            }
        }
    }
}

fn two_digits(s: &[u8], at: usize) -> Option<u32> {
    match s.get(at..at.checked_add(2)?)? {
        &[a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// HL7 DTM: `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`, with calendar checks (day
/// against the month, leap years) and a UTC offset of at most ±14:59.
pub fn is_valid_dtm(v: &[u8]) -> bool {
    let (main, tz) = match v.iter().position(|&b| b == b'+' || b == b'-') {
        Some(i) => (v.get(..i).unwrap_or_default(), v.get(i.saturating_add(1)..)),
        None => (v, None),
    };
    if let Some(tz) = tz {
        let ok = tz.len() == 4
            && two_digits(tz, 0).is_some_and(|h| h <= 14)
            && two_digits(tz, 2).is_some_and(|m| m <= 59);
        if !ok {
            return false;
        }
    }
    let (dt, frac) = match main.iter().position(|&b| b == b'.') {
        Some(i) => (
            main.get(..i).unwrap_or_default(),
            main.get(i.saturating_add(1)..),
        ),
        None => (main, None),
    };
    if !matches!(dt.len(), 4 | 6 | 8 | 10 | 12 | 14) || !dt.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if let Some(frac) = frac {
        if dt.len() != 14 || !(1..=4).contains(&frac.len()) || !frac.iter().all(u8::is_ascii_digit)
        {
            return false;
        }
    }
    let year = match (two_digits(dt, 0), two_digits(dt, 2)) {
        (Some(c), Some(y)) => c * 100 + y,
        _ => return false,
    };
    let month = two_digits(dt, 4);
    let in_range = |v: Option<u32>, lo: u32, hi: u32| v.is_none_or(|v| (lo..=hi).contains(&v));
    in_range(month, 1, 12)
        && in_range(
            two_digits(dt, 6),
            1,
            days_in_month(year, month.unwrap_or(1)),
        )
        && in_range(two_digits(dt, 8), 0, 23)
        && in_range(two_digits(dt, 10), 0, 59)
        && in_range(two_digits(dt, 12), 0, 59)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::super::samples::{self, msg};
    use super::*;

    /// Replaces the first occurrence of `from` (test messages are built so it is unique).
    fn replace(m: &[u8], from: &str, to: &str) -> Vec<u8> {
        let from = from.as_bytes();
        let i = m
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{from:?} not in message"));
        let mut out = m[..i].to_vec();
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(&m[i + from.len()..]);
        out
    }

    fn reject(m: &[u8]) -> Rejection {
        validate(m, &Rules::default()).unwrap_err()
    }

    #[track_caller]
    fn assert_err(
        r: &Rejection,
        seg: &str,
        seq: usize,
        field: usize,
        comp: Option<usize>,
        code: u16,
    ) {
        assert!(
            r.errors.iter().any(|e| e.segment == seg
                && e.sequence == seq
                && e.field == field
                && e.component == comp
                && e.code == code),
            "expected {seg}^{seq}^{field} {comp:?} code {code}, got {:#?}",
            r.errors
        );
    }

    #[test]
    fn valid_messages_pass() {
        let cases: [(Vec<u8>, &str, &str, &[u8]); 10] = [
            (samples::adt_a01(), "ADT^A01", "2.5.1", b"MSG00001"),
            (samples::adt_a04(), "ADT^A04", "2.5", b"A04-77"),
            (samples::adt_a08_v23(), "ADT^A08", "2.3", b"20001"),
            (samples::oru_r01(), "ORU^R01", "2.5.1", b"LAB-9001"),
            (samples::orm_o01(), "ORM^O01", "2.4", b"ORM1"),
            (samples::siu_s12(), "SIU^S12", "2.5.1", b"SIU1"),
            (samples::hash_delimited(), "ADT^A01", "2.5.1", b"HASH1"),
            (samples::latin1(), "ADT^A01", "2.5", b"L1"),
            (samples::v27_truncation(), "ADT^A08", "2.7", b"T27"),
            (samples::ack(), "ACK^A01", "2.5.1", b"ACK1"),
        ];
        for (m, ty, ver, ctl) in cases {
            let v = validate(&m, &Rules::default()).unwrap_or_else(|r| panic!("{ty}: {r:?}"));
            assert_eq!(v.message_type, ty);
            assert_eq!(v.version, ver);
            assert_eq!(v.control_id, ctl);
        }
        let m = samples::adt_a08_v23();
        let v = validate(&m, &Rules::default()).unwrap();
        assert_eq!(v.processing_id, ProcessingId::Training);
        assert_eq!(v.msg.segment_count(), 4);
    }

    #[test]
    fn realistic_adt_a01_details() {
        let m = samples::adt_a01();
        let v = validate(&m, &Rules::default()).unwrap();
        let pid = v.msg.segment("PID").unwrap();
        assert_eq!(pid.field(3).unwrap().repetitions().count(), 3);
        assert_eq!(
            pid.field(5)
                .unwrap()
                .component(1)
                .unwrap()
                .unescape()
                .unwrap(),
            b"O'Brien&Kelly"
        );
        assert!(v.msg.segment("ZPD").is_some());
        assert_eq!(v.header.sending_facility_ns(), b"STMARYS");
    }

    #[test]
    fn latin1_name_survives() {
        let m = samples::latin1();
        let v = validate(&m, &Rules::default()).unwrap();
        let fam = v
            .msg
            .segment("PID")
            .unwrap()
            .field(5)
            .unwrap()
            .component(1)
            .unwrap();
        assert_eq!(fam.raw(), b"Ren\xE9");
        assert!(
            std::str::from_utf8(&m).is_err(),
            "the sample really is not UTF-8"
        );
    }

    #[test]
    fn crlf_needs_lenient_flag() {
        let m: Vec<u8> = samples::adt_a04()
            .split(|&b| b == b'\r')
            .filter(|s| !s.is_empty())
            .flat_map(|s| s.iter().copied().chain(*b"\r\n"))
            .collect();
        let r = reject(&m);
        assert_eq!(r.ack_code, AckCode::Error);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].code, DATA_TYPE_ERROR);
        assert_eq!(r.errors[0].message, "line feed in message");
        // The `\n` opens what would be the second segment, so only its position is known.
        assert_eq!(
            (r.errors[0].segment.as_str(), r.errors[0].sequence),
            ("", 2)
        );
        assert!(r.header.is_some());
        let lenient = Rules {
            lenient_line_endings: true,
            ..Rules::default()
        };
        let v = validate(&m, &lenient).unwrap();
        assert_eq!(v.message_type, "ADT^A04");
    }

    #[test]
    fn msh3_to_msh6_are_optional_in_every_version() {
        // Every shape of "no sending application", in every sample (v2.3 to v2.5.1), alone
        // and with MSH-4..6 empty too.
        let samples = [
            samples::adt_a01(),
            samples::adt_a04(),
            samples::adt_a08_v23(),
        ];
        for base in &samples {
            let msh_end = base.iter().position(|&b| b == b'\r').unwrap();
            let msh = std::str::from_utf8(&base[..msh_end]).unwrap();
            let fields: Vec<&str> = msh.split('|').collect();
            for empty3 in ["", "\"\"", "^^", "^", "&"] {
                for empty_rest in [false, true] {
                    let mut f = fields.clone();
                    f[2] = empty3;
                    if empty_rest {
                        f[3] = "";
                        f[4] = "";
                        f[5] = "";
                    }
                    let new_msh = f.join("|");
                    let mut m = new_msh.into_bytes();
                    m.extend_from_slice(&base[msh_end..]);
                    let v = validate(&m, &Rules::default())
                        .unwrap_or_else(|r| panic!("{empty3:?} {empty_rest}: {r:?}"));
                    assert_eq!(v.header.sending_application, empty3.as_bytes());
                }
            }
        }
        // Still bounded: MSH-3 may not repeat.
        let r = reject(&replace(&samples::adt_a04(), "|REG|", "|A~B|"));
        assert!(r.errors.iter().any(|e| e.segment == "MSH" && e.field == 3));
    }

    #[test]
    fn msh7_required_and_typed() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|202403150830||", "|||"));
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, "MSH", 1, 7, None, REQUIRED_FIELD_MISSING);
        for bad in [
            "2024131508",
            "20240230",
            "20230229",
            "20240431",
            "2024031524",
            "202403152360",
            "20240315235960",
            "2024031",
            "20240315.5",
            "20240315120000.12345",
            "20240315120000+1",
            "20240315+1500",
            "2024-03-15",
            "20240315120000+0160",
            "x",
        ] {
            let r = reject(&replace(&base, "|202403150830|", &format!("|{bad}|")));
            assert_err(&r, "MSH", 1, 7, Some(1), DATA_TYPE_ERROR);
        }
        for good in [
            "2024",
            "202403",
            "20240229",
            "20240315235959.9999-1200",
            "20240315+1400",
            "202403150830^M",
        ] {
            assert!(
                validate(
                    &replace(&base, "|202403150830|", &format!("|{good}|")),
                    &Rules::default()
                )
                .is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn msh9_required_well_formed_and_allowed() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|ADT^A04^ADT_A01|", "||"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 9, None, REQUIRED_FIELD_MISSING);
        let r = reject(&replace(&base, "ADT^A04^ADT_A01", "adt^A04"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 9, Some(1), UNSUPPORTED_MESSAGE_TYPE);
        let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A4"));
        assert_err(&r, "MSH", 1, 9, Some(2), UNSUPPORTED_EVENT_CODE);
        let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A04^adt a01"));
        assert_err(&r, "MSH", 1, 9, Some(3), UNSUPPORTED_MESSAGE_TYPE);
        let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A04~ORU^R01"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 9, None, DATA_TYPE_ERROR);

        let rules = Rules {
            allowed_message_types: vec![
                "ADT^A01".into(),
                "ADT^A08".into(),
                "ORU^*".into(),
                "ACK".into(),
            ],
            ..Rules::default()
        };
        let r = validate(&base, &rules).unwrap_err();
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 9, Some(2), UNSUPPORTED_EVENT_CODE);
        let r = validate(&samples::siu_s12(), &rules).unwrap_err();
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 9, Some(1), UNSUPPORTED_MESSAGE_TYPE);
        for ok in [
            samples::adt_a01(),
            samples::adt_a08_v23(),
            samples::oru_r01(),
            samples::ack(),
        ] {
            validate(&ok, &rules).unwrap();
        }
    }

    #[test]
    fn msh10_required() {
        let r = reject(&replace(&samples::adt_a04(), "|A04-77|", "||"));
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, "MSH", 1, 10, None, REQUIRED_FIELD_MISSING);
        let long = "C".repeat(200);
        let r = reject(&replace(
            &samples::adt_a04(),
            "|A04-77|",
            &format!("|{long}|"),
        ));
        assert_err(&r, "MSH", 1, 10, None, DATA_TYPE_ERROR);
    }

    #[test]
    fn msh11_required_and_in_table() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|P|2.5", "||2.5"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 11, None, REQUIRED_FIELD_MISSING);
        let r = reject(&replace(&base, "|P|2.5", "|X|2.5"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 11, Some(1), UNSUPPORTED_PROCESSING_ID);
        let r = reject(&replace(&base, "|P|2.5", "|P^Q|2.5"));
        assert_err(&r, "MSH", 1, 11, Some(2), UNSUPPORTED_PROCESSING_ID);
        let m = replace(&base, "|P|2.5", "|D^T|2.5");
        let v = validate(&m, &Rules::default()).unwrap();
        assert_eq!(v.processing_id, ProcessingId::Debugging);
    }

    #[test]
    fn msh12_required_well_formed_and_allowed() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|P|2.5\r", "|P|\r"));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 12, None, REQUIRED_FIELD_MISSING);
        // Absent entirely (MSH ends after MSH-11).
        let r = reject(&replace(&base, "|P|2.5\r", "|P\r"));
        assert_err(&r, "MSH", 1, 12, None, REQUIRED_FIELD_MISSING);
        for bad in ["2.x", "v2.5", "2..5", "2.5.", "12345678901"] {
            let r = reject(&replace(&base, "|P|2.5\r", &format!("|P|{bad}\r")));
            assert_eq!(r.ack_code, AckCode::Reject);
            assert_err(&r, "MSH", 1, 12, Some(1), UNSUPPORTED_VERSION_ID);
        }
        let rules = Rules {
            allowed_versions: vec!["2.5.1".into(), "2.5".into()],
            ..Rules::default()
        };
        validate(&base, &rules).unwrap();
        validate(&samples::adt_a01(), &rules).unwrap();
        let r = validate(&samples::adt_a08_v23(), &rules).unwrap_err();
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 12, Some(1), UNSUPPORTED_VERSION_ID);
        // VID with components: only component 1 is the version.
        validate(&replace(&base, "|P|2.5\r", "|P|2.5^CHE\r"), &rules).unwrap();
    }

    #[test]
    fn required_segments_per_type() {
        let cases = [
            (
                replace(
                    &samples::adt_a01(),
                    "EVN|A01|20240315083000|||JSMITH^Smith^John\r",
                    "",
                ),
                "EVN",
            ),
            (
                replace(&samples::adt_a04(), "PV1||O|OPD^^^CLINIC\r", ""),
                "PV1",
            ),
            (
                replace(
                    &samples::adt_a08_v23(),
                    "PID|||A100^^^GEN||Smith^John^Q^Jr||\"\"|M\r",
                    "",
                ),
                "PID",
            ),
            (
                replace(
                    &samples::oru_r01(),
                    "OBR|1|ORD1|FIL1|24331-1^Lipid panel^LN|||20240315090000\r",
                    "",
                ),
                "OBR",
            ),
            (
                msg(&[
                    r"MSH|^~\&|LAB|C||W|20240315||ORU^R01|1|P|2.5",
                    "PID|||1||A^B",
                    "OBR|1",
                ]),
                "OBX",
            ),
            (
                replace(
                    &samples::orm_o01(),
                    "ORC|NW|ORD448|||||^^^20240315120000\r",
                    "",
                ),
                "ORC",
            ),
            (
                replace(
                    &samples::siu_s12(),
                    "SCH|1001|2002|||||CHECKUP^Annual checkup|||30|min\r",
                    "",
                ),
                "SCH",
            ),
            (replace(&samples::ack(), "MSA|AA|MSG00001\r", ""), "MSA"),
        ];
        for (m, missing) in cases {
            let r = reject(&m);
            assert_eq!(r.ack_code, AckCode::Error);
            assert_err(&r, missing, 1, 0, None, SEGMENT_SEQUENCE_ERROR);
        }
        // Unknown types only need MSH.
        validate(
            &msg(&[r"MSH|^~\&|A|B|C|D|20240315||MDM^T02|9|P|2.5"]),
            &Rules::default(),
        )
        .unwrap();
    }

    #[test]
    fn required_segments_config_overrides_defaults() {
        let no_evn_pv1 = msg(&[
            r"MSH|^~\&|A|B|C|D|20240315||ADT^A01|9|P|2.5",
            "PID|||1||Doe^J",
        ]);
        assert!(validate(&no_evn_pv1, &Rules::default()).is_err());
        let rules = Rules {
            required_segments: vec![("ADT^A01".into(), vec!["MSH".into(), "PID".into()])],
            ..Rules::default()
        };
        validate(&no_evn_pv1, &rules).unwrap();
        let rules = Rules {
            required_segments: vec![("ADT^*".into(), vec!["ZPD".into()])],
            ..Rules::default()
        };
        validate(&samples::adt_a01(), &rules).unwrap();
        let r = validate(&samples::adt_a04(), &rules).unwrap_err();
        assert_err(&r, "ZPD", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
    }

    #[test]
    fn pid3_patient_identifier() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|55501^^^CLINIC^MR|", "||"));
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, "PID", 1, 3, None, REQUIRED_FIELD_MISSING);
        let r = reject(&replace(
            &base,
            "|55501^^^CLINIC^MR|",
            "|^^^CLINIC^MR~\"\"^^^X|",
        ));
        assert_err(&r, "PID", 1, 3, Some(1), REQUIRED_FIELD_MISSING);
        validate(
            &replace(&base, "|55501^^^CLINIC^MR|", "|^^^CLINIC^MR~77^^^X|"),
            &Rules::default(),
        )
        .unwrap();
        let long = "9".repeat(251);
        let r = reject(&replace(&base, "|55501^^^CLINIC^MR|", &format!("|{long}|")));
        assert_err(&r, "PID", 1, 3, None, DATA_TYPE_ERROR);
    }

    #[test]
    fn pid5_patient_name() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|Doe^Jane|", "||"));
        assert_err(&r, "PID", 1, 5, None, REQUIRED_FIELD_MISSING);
        let r = reject(&replace(&base, "|Doe^Jane|", "|^^^^Dr~&van|"));
        assert_err(&r, "PID", 1, 5, Some(1), REQUIRED_FIELD_MISSING);
        validate(&replace(&base, "|Doe^Jane|", "|^Jane|"), &Rules::default()).unwrap();
        validate(
            &replace(&base, "|Doe^Jane|", "|~Doe&van|"),
            &Rules::default(),
        )
        .unwrap();
    }

    #[test]
    fn pid7_birth_date() {
        let base = samples::adt_a04();
        let r = reject(&replace(&base, "|19751231|", "|19751301|"));
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, "PID", 1, 7, Some(1), DATA_TYPE_ERROR);
        validate(&replace(&base, "|19751231|", "||"), &Rules::default()).unwrap();
        validate(&replace(&base, "|19751231|", "|\"\"|"), &Rules::default()).unwrap();
    }

    #[test]
    fn second_pid_is_located_by_occurrence() {
        let m = msg(&[
            r"MSH|^~\&|A|B|C|D|20240315||ADT^A17|9|P|2.5",
            "EVN|A17",
            "PID|||1||Doe^J",
            "PV1||I",
            "PID|||2||Roe^K||1999",
            "PV1||I",
            "PID|||3||^^^^Dr",
        ]);
        let r = reject(&m);
        assert_eq!(r.errors.len(), 1);
        assert_err(&r, "PID", 3, 5, Some(1), REQUIRED_FIELD_MISSING);
    }

    #[test]
    fn malformed_escapes_are_located() {
        let base = samples::adt_a01();
        let r = reject(&replace(
            &base,
            r"12 Main St\S\Apt 4^^Springfield",
            r"12 Main St^^Spr\Qingfield",
        ));
        assert_eq!(r.ack_code, AckCode::Error);
        assert_eq!(r.errors.len(), 1);
        assert_err(&r, "PID", 1, 11, Some(3), DATA_TYPE_ERROR);
        let r = reject(&replace(&base, "ZZ1|", r"ZZ1|x^y&unterminated\"));
        assert_err(&r, "ZZ1", 1, 1, Some(2), DATA_TYPE_ERROR);
        // An escape in MSH-10 is checked too (MSH-1/2 are exempt).
        let r = reject(&replace(&base, "|MSG00001|", r"|MSG\X1\|"));
        assert_err(&r, "MSH", 1, 10, Some(1), DATA_TYPE_ERROR);
    }

    #[test]
    fn collects_several_errors_in_order() {
        let m = msg(&[
            r"MSH|^~\&||B|C|D|20241301||ADT^A04||P|2.5",
            "EVN|A04",
            "PID|||||Doe^J||19990230",
            r"PV1||I|\bad\",
        ]);
        let r = reject(&m);
        assert_eq!(r.ack_code, AckCode::Error);
        let got: Vec<_> = r
            .errors
            .iter()
            .map(|e| (e.segment.as_str(), e.field, e.code))
            .collect();
        assert_eq!(
            got,
            [
                ("MSH", 7, 102),
                ("MSH", 10, 101),
                ("PID", 3, 101),
                ("PID", 7, 102),
                ("PV1", 3, 102)
            ]
        );
    }

    #[test]
    fn error_list_is_bounded() {
        let mut lines = vec![
            r"MSH|^~\&||B|C|D|x||ADT^A04||P|2.5",
            "EVN|A04",
            "PID|||1||A^B",
            "PV1||I",
        ];
        let bad = r"ZBD|\Q\|\Q\|\Q\|\Q\";
        lines.extend(std::iter::repeat_n(bad, 5));
        let m = msg(&lines);
        let r = reject(&m);
        assert_eq!(r.errors.len(), MAX_ERRORS);
        assert_eq!(r.errors[0].field, 7);
        assert_eq!(r.errors[9].segment, "ZBD");
        assert_eq!(r.errors[9].sequence, 2);
    }

    #[test]
    fn framing_errors_become_rejections() {
        // Body error: header still usable → AE, header kept for the NAK.
        let m = replace(&samples::adt_a01(), "Springfield", "Spring\0field");
        let r = reject(&m);
        assert_eq!(r.ack_code, AckCode::Error);
        assert_eq!(
            r.errors,
            [ErrorLoc {
                segment: "PID".into(),
                sequence: 1,
                field: 11,
                component: None,
                code: DATA_TYPE_ERROR,
                message: "forbidden control byte",
            }]
        );
        assert_eq!(r.header.unwrap().control_id, b"MSG00001");

        let r = reject(&replace(&samples::adt_a01(), "ZPD|", "zpd|"));
        assert_eq!(r.errors[0].segment, "");
        assert_eq!(r.errors[0].sequence, 5);
        assert_eq!(r.errors[0].code, SEGMENT_SEQUENCE_ERROR);

        let r = reject(&replace(&samples::adt_a01(), "EVN|A01|", "MSH|^~\\&|"));
        assert_err(&r, "MSH", 2, 0, None, SEGMENT_SEQUENCE_ERROR);

        // Header unusable → AR, no header.
        let r = reject(b"HELLO\r");
        assert_eq!(r.ack_code, AckCode::Reject);
        assert!(r.header.is_none());
        assert_err(&r, "MSH", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
        let r = reject(b"MSH|^^\\&|A\r");
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 2, None, DATA_TYPE_ERROR);
        let r = reject(b"");
        assert_eq!(r.ack_code, AckCode::Reject);
        let r = reject(b"MSH\rPID|1\r");
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 1, None, REQUIRED_FIELD_MISSING);

        let rules = Rules {
            max_segments: 3,
            ..Rules::default()
        };
        let r = validate(&samples::adt_a01(), &rules).unwrap_err();
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, "PV1", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
        let rules = Rules {
            max_field_len: 40,
            ..Rules::default()
        };
        let r = validate(&samples::adt_a01(), &rules).unwrap_err();
        assert_err(&r, "PID", 1, 3, None, DATA_TYPE_ERROR);
    }

    #[test]
    fn rejection_display_has_no_content() {
        let r = reject(&replace(&samples::adt_a04(), "|Doe^Jane|", "|^^^^Dr|"));
        let s = r.to_string();
        assert_eq!(
            s,
            "HL7 message rejected (AE), 1 error(s); first: 101 patient name missing at PID[1]-5.1"
        );
    }

    #[test]
    fn dtm_grammar() {
        for ok in [
            "2024",
            "202402",
            "20240229",
            "2000022923",
            "200002292359",
            "20000229235959",
            "20000229235959.1",
            "19991231235959.1234+0000",
            "2024-0530",
        ] {
            assert!(is_valid_dtm(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "202",
            "20241",
            "19000229",
            "20240001",
            "20240100",
            "2024010100.5",
            "2024+",
            "2024+01000",
            "+0100",
            "2024 01",
            "٢٠٢٤",
        ] {
            assert!(!is_valid_dtm(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn type_patterns() {
        assert!(type_matches("ADT^A01", "ADT", "A01"));
        assert!(!type_matches("ADT^A01", "ADT", "A02"));
        assert!(type_matches("ADT^*", "ADT", "A02"));
        assert!(type_matches("ADT", "ADT", "A02"));
        assert!(type_matches("ADT^A01^ADT_A01", "ADT", "A01"));
        assert!(!type_matches("ADT^*", "ORU", "R01"));
    }
}
