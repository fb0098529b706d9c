//! DLP over JSON (FHIR or not): one walk that applies the path rules and the free-text
//! detectors, and writes the result as a list of byte edits to the original body.
//!
//! Why edits and not a tree: a response without findings must go out byte for byte (report
//! mode, ETags, signatures), and a rewritten one should differ only where PHI was. Parsing
//! into a tree and printing it back would reorder, re-escape and reformat everything.
//!
//! How the walk decides:
//! - Path rules (`path.rs`) are matched top-down as member keys are read. A `where`
//!   condition is evaluated by looking ahead at the filtered object's direct members before
//!   walking it, so every decision is known when an element starts.
//! - The free-text detectors ran once over the whole body before the walk (`detect/`: one
//!   pass for all patterns). The walk hands each string value the hits inside it; a string
//!   with escapes (`\u0031`), a hit that crosses the string's edge, and every XHTML
//!   narrative are decoded and scanned on their own instead, so escaping cannot hide PHI.
//! - Element types come from the R4 schema: in `string`/`markdown` a finding is replaced in
//!   place; in narrative XHTML only text is replaced, never markup; in other primitives
//!   (`id`, `uri`, `date`…) the value cannot be edited and keep its type, so the element
//!   goes.
//! - Removing an element is finished when its object closes: commas are fixed, a `_x`
//!   extension sibling follows `x`, an object or array left empty is removed from its own
//!   parent (FHIR forbids empty ones), and an element the definition requires (min 1) is
//!   replaced by a `data-absent-reason = masked` extension instead.
//! - Every changed resource that is not itself contained gets a `meta.security` label
//!   `REDACTED` (v3-ObservationValue), and date shifts are resolved when the resource closes,
//!   once the patient it belongs to (its `id`, or `subject`/`patient` reference) is known.
//!
//! # Layout
//! This file holds the outcome types, [`process`], the walker's state, the JSON escaping of
//! replacements and the final splice of edits into the output body. Lexing and decoding are
//! the gateway's shared ones (`crate::json`). The walker's methods: `lex` (its cursor over
//! the shared lexer), `walk` (values, objects, arrays), `close` (closing objects and resources),
//! `values` (scanning and transforming leaf values); `tests`.

use crate::dlp::actions::{self, Action, REDACTED};
use crate::dlp::detect::Hit;
use crate::dlp::{Engine, Report, RuleState};
use crate::fhir::validate::{resource_type_of, FhirType, ValueKind};
use crate::json::is_ws;

mod close;
mod lex;
mod memo;
#[cfg(test)]
mod tests;
mod values;
mod walk;

/// Why a body could not be processed (the caller fails closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    Malformed,
    TooDeep,
    /// An internal consistency check failed: refuse rather than emit a wrong body.
    Inconsistent,
}

const MAX_DEPTH: usize = 256;
/// Raw bytes before a separately scanned string that give its detectors their context.
const CONTEXT_PREFIX: usize = 40;

const DAR_OBJECT: &[u8] = b"{\"extension\":[{\"url\":\"http://hl7.org/fhir/StructureDefinition/data-absent-reason\",\"valueCode\":\"masked\"}]}";
const REDACTED_DIV: &[u8] = b"\"<div xmlns=\\\"http://www.w3.org/1999/xhtml\\\">[REDACTED]</div>\"";
const SECURITY_LABEL: &[u8] = b"{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ObservationValue\",\"code\":\"REDACTED\",\"display\":\"redacted\"}";

#[derive(Debug)]
enum Repl {
    Bytes(Vec<u8>),
    Static(&'static [u8]),
    /// A date to shift once the owning resource (by uid) knows its patient.
    Shift {
        uid: u32,
        dashed: bool,
    },
}

#[derive(Debug)]
struct Edit {
    start: u32,
    end: u32,
    repl: Repl,
}

#[derive(Debug)]
struct Insert {
    at: u32,
    text: Vec<u8>,
}

/// One member of an open object, or one item of an open array.
#[derive(Debug, Clone, Copy)]
struct Rec {
    /// Start of the key's opening quote (= `vstart` for array items).
    kstart: u32,
    kend: u32,
    vend: u32,
    removed: bool,
    /// Required by the definition: replace by data-absent-reason instead of removing.
    required: bool,
    /// The value is XHTML (a removed narrative becomes a redacted `div`).
    xhtml: bool,
    /// The value is a primitive (or an array of primitives).
    primitive: bool,
    many: bool,
}

struct ResInfo {
    uid: u32,
    rt_end: Option<u32>,
    meta: Option<(u32, u32)>,
    contained: bool,
    is_patient: bool,
    id: Option<Vec<u8>>,
    patient_ref: Option<Vec<u8>>,
}

/// A narrative's XHTML (JSON-decoded) and its text view's map.
#[derive(Clone, Copy)]
struct Xhtml<'x> {
    src: &'x [u8],
    tmap: &'x [(u32, u32)],
}

/// A transforming rule's action, the rule, and whether this value is the matched element
/// itself (`direct`) rather than a leaf below it.
type Transform = (Action, u16, bool);

/// What the enclosing context says about a value.
#[derive(Clone, Copy)]
struct Ctx<'s> {
    ty: Option<FhirType>,
    kind: Option<ValueKind>,
    /// Rule states that continue into this value's members.
    states: &'s [RuleState],
    /// Matches whose `where` is decided per item of this (array) value.
    item_matches: &'s [(Action, u16)],
    /// A transform applied to the leaves below (`direct`: this value is the matched element).
    transform: Option<Transform>,
    /// Scan strings for free-text findings.
    scan: bool,
    /// This value is where a resource is expected (root, `contained`, `entry.resource`).
    resource: bool,
    contained: bool,
    /// Capture a `reference` member here as the resource's patient.
    patient_ref_holder: bool,
}

pub struct Walk<'a> {
    eng: &'a Engine,
    b: &'a [u8],
    pos: usize,
    hits: Vec<Hit>,
    hit_cur: usize,
    edits: Vec<Edit>,
    inserts: Vec<Insert>,
    recs: Vec<Rec>,
    res: Vec<ResInfo>,
    next_uid: u32,
    depth: usize,
    blocked: bool,
    report: &'a mut Report,
    // Scratch for decoded strings.
    dec: Vec<u8>,
    dec_map: Vec<(u32, u32)>,
    txt: Vec<u8>,
    txt_map: Vec<(u32, u32)>,
    hits2: Vec<Hit>,
    state_pool: Vec<Vec<RuleState>>,
    /// Scratch: one object's keys, sorted.
    keys: Vec<(&'a [u8], usize)>,
    /// The body's index when a policy lexed it already (`crate::json::LexedBody`): strings
    /// and scalars are looked up, skipped values jumped over. Complete indexes only.
    ix: Option<crate::json::Seek<'a>>,
    /// Element definitions by (type, member name), memoised per thread.
    elems: memo::MemoHandle,
}

/// Result of DLP over a JSON body.
pub enum JsonOutcome {
    Unchanged,
    Rewritten(Vec<u8>),
    Blocked,
}

/// Walk `body`, count findings into `report`, and return what to send.
pub fn process(eng: &Engine, body: &[u8], report: &mut Report) -> Result<JsonOutcome, JsonError> {
    process_indexed(eng, body, None, report)
}

/// [`process`] reading `body` through its index (`crate::json::Index`, built from exactly
/// these bytes): the same walk and the same edits (applied to these bytes by offset),
/// without lexing the body again. An index of an invalid body is not used.
pub fn process_indexed(
    eng: &Engine,
    body: &[u8],
    index: Option<&crate::json::Index>,
    report: &mut Report,
) -> Result<JsonOutcome, JsonError> {
    let mut hits = Vec::new();
    eng.scanner.scan(body, &mut hits);
    let mut w = Walk {
        eng,
        b: body,
        pos: 0,
        hits,
        hit_cur: 0,
        edits: Vec::new(),
        inserts: Vec::new(),
        recs: Vec::new(),
        res: Vec::new(),
        next_uid: 0,
        depth: 0,
        blocked: false,
        report,
        dec: Vec::new(),
        dec_map: Vec::new(),
        txt: Vec::new(),
        txt_map: Vec::new(),
        hits2: Vec::new(),
        state_pool: Vec::new(),
        keys: Vec::new(),
        ix: index.and_then(|ix| ix.seek(body)),
        elems: memo::MemoHandle::take(),
    };
    w.ws();
    let root = Ctx {
        ty: None,
        kind: None,
        states: &[],
        item_matches: &[],
        transform: None,
        scan: true,
        resource: true,
        contained: false,
        patient_ref_holder: false,
    };
    let vanished = w.value(root)?;
    if w.blocked {
        // Refused as a whole: the rest of the body is never read.
        return Ok(JsonOutcome::Blocked);
    }
    w.ws();
    if w.pos != body.len() {
        return Err(JsonError::Malformed);
    }
    if vanished {
        // Nothing of the document is left (only possible for non-FHIR JSON).
        return Ok(JsonOutcome::Rewritten(b"{}".to_vec()));
    }
    if w.edits.is_empty() && w.inserts.is_empty() {
        return Ok(JsonOutcome::Unchanged);
    }
    w.apply().map(JsonOutcome::Rewritten)
}

/// A lexing refusal of the shared lexer: too deep, or not JSON.
impl From<crate::json::Error> for JsonError {
    fn from(e: crate::json::Error) -> Self {
        match e.kind {
            crate::json::ErrorKind::TooDeep => JsonError::TooDeep,
            _ => JsonError::Malformed,
        }
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Append `s` as JSON string content (no quotes).
pub fn json_escape_into(out: &mut Vec<u8>, s: &[u8]) {
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c).as_bytes());
            }
            c => out.push(c),
        }
    }
}

/// Decode JSON string content `raw` (between the quotes, starting at body offset `base`)
/// into `out`, with `map[i]` = the body range that produced `out[i]` (the shared decoder).
fn unescape_map(
    raw: &[u8],
    base: usize,
    out: &mut Vec<u8>,
    map: &mut Vec<(u32, u32)>,
) -> Result<(), JsonError> {
    Ok(crate::json::decode_map(raw, base, out, map)?)
}

/// Decode JSON string content without the offset map (the common, clean case).
fn unescape_plain(raw: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    Ok(crate::json::decode_into(raw, out)?)
}

/// The body ranges behind decoded bytes `start..end` (contiguous source runs merged).
fn runs(map: &[(u32, u32)], start: usize, end: usize) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &(s, e) in map.get(start..end).unwrap_or(&[]) {
        match out.last_mut() {
            Some(last) if last.1 == s || (last.0 == s && last.1 == e) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl<'a> Walk<'a> {
    /// Splice the edits and inserts into a new body.
    fn apply(&mut self) -> Result<Vec<u8>, JsonError> {
        let mut edits = std::mem::take(&mut self.edits);
        edits.sort_by_key(|e| (e.start, e.end));
        let mut inserts = std::mem::take(&mut self.inserts);
        inserts.sort_by_key(|i| i.at);
        let b = self.b;
        let mut out = Vec::with_capacity(b.len());
        let mut cur = 0usize;
        let mut ii = 0usize;
        for e in &edits {
            let (s, t) = (e.start as usize, e.end as usize);
            if s < cur || t < s || t > b.len() {
                return Err(JsonError::Inconsistent);
            }
            while ii < inserts.len() && (inserts[ii].at as usize) <= s {
                let at = inserts[ii].at as usize;
                if at < cur {
                    return Err(JsonError::Inconsistent);
                }
                out.extend_from_slice(&b[cur..at]);
                out.extend_from_slice(&inserts[ii].text);
                cur = at;
                ii += 1;
            }
            out.extend_from_slice(&b[cur..s]);
            match &e.repl {
                Repl::Bytes(v) => out.extend_from_slice(v),
                Repl::Static(v) => out.extend_from_slice(v),
                Repl::Shift { .. } => return Err(JsonError::Inconsistent),
            }
            cur = t;
        }
        for ins in &inserts[ii..] {
            let at = ins.at as usize;
            if at < cur || at > b.len() {
                return Err(JsonError::Inconsistent);
            }
            out.extend_from_slice(&b[cur..at]);
            out.extend_from_slice(&ins.text);
            cur = at;
        }
        out.extend_from_slice(&b[cur..]);
        Ok(out)
    }
}

/// Of several rules matching one element, the strongest action wins.
fn strongest(cur: Option<(Action, u16)>, next: (Action, u16)) -> Option<(Action, u16)> {
    Some(match cur {
        Some(m) if Engine::stronger(m.0, next.0) => m,
        _ => next,
    })
}

/// `Patient/123` from a reference (`Patient/123`, `https://ehr/fhir/Patient/123/_history/2`).
fn patient_key(r: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(r);
    let s = s.split("/_history/").next().unwrap_or_default();
    let parts: Vec<&str> = s.rsplitn(3, '/').collect();
    match parts.as_slice() {
        [id, ty, ..] => format!("{ty}/{id}").into_bytes(),
        _ => s.as_bytes().to_vec(),
    }
}
