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
mod tests;
