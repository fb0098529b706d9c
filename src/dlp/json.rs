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
//! - The free-text detectors ran once over the whole body before the walk (`detect.rs`: one
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

use crate::dlp::actions::{self, Action, REDACTED};
use crate::dlp::detect::Hit;
use crate::dlp::{Engine, Report, RuleState};
use crate::fhir::validate::{element_of, resource_type_of, FhirType, ValueKind};

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
}

/// Result of DLP over a JSON body.
pub enum JsonOutcome {
    Unchanged,
    Rewritten(Vec<u8>),
    Blocked,
}

/// Walk `body`, count findings into `report`, and return what to send.
pub fn process(eng: &Engine, body: &[u8], report: &mut Report) -> Result<JsonOutcome, JsonError> {
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

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
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

fn hex4(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in s.get(..4)? {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// The character of the escape at `raw[i]` (a backslash) and the escape's length. A lone
/// surrogate decodes to U+FFFD (it cannot hide a digit).
fn escape_at(raw: &[u8], i: usize) -> Result<(char, usize), JsonError> {
    let e = *raw.get(i + 1).ok_or(JsonError::Malformed)?;
    Ok(match e {
        b'"' => ('"', 2),
        b'\\' => ('\\', 2),
        b'/' => ('/', 2),
        b'b' => ('\u{8}', 2),
        b'f' => ('\u{c}', 2),
        b'n' => ('\n', 2),
        b'r' => ('\r', 2),
        b't' => ('\t', 2),
        b'u' => {
            let hi =
                hex4(raw.get(i + 2..).ok_or(JsonError::Malformed)?).ok_or(JsonError::Malformed)?;
            if (0xD800..0xDC00).contains(&hi) {
                let lo = raw
                    .get(i + 6..i + 8)
                    .filter(|p| *p == b"\\u")
                    .and_then(|_| hex4(raw.get(i + 8..)?))
                    .filter(|lo| (0xDC00..0xE000).contains(lo));
                match lo {
                    Some(lo) => {
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(cp).unwrap_or('\u{FFFD}'), 12)
                    }
                    None => ('\u{FFFD}', 6),
                }
            } else {
                (char::from_u32(hi).unwrap_or('\u{FFFD}'), 6)
            }
        }
        _ => return Err(JsonError::Malformed),
    })
}

/// Decode JSON string content `raw` (between the quotes, starting at body offset `base`)
/// into `out`, with `map[i]` = the body range that produced `out[i]`.
fn unescape_map(
    raw: &[u8],
    base: usize,
    out: &mut Vec<u8>,
    map: &mut Vec<(u32, u32)>,
) -> Result<(), JsonError> {
    out.clear();
    map.clear();
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            map.push((u32_of(base + i), u32_of(base + i + 1)));
            i += 1;
            continue;
        }
        let (ch, len) = escape_at(raw, i)?;
        let mut buf = [0u8; 4];
        for &b in ch.encode_utf8(&mut buf).as_bytes() {
            out.push(b);
            map.push((u32_of(base + i), u32_of(base + i + len)));
        }
        i += len;
    }
    Ok(())
}

/// Decode JSON string content without the offset map (the common, clean case).
fn unescape_plain(raw: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let Some(off) = memchr::memchr(b'\\', &raw[i..]) else {
            out.extend_from_slice(&raw[i..]);
            break;
        };
        out.extend_from_slice(&raw[i..i + off]);
        i += off;
        let (ch, len) = escape_at(raw, i)?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        i += len;
    }
    Ok(())
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
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if !is_ws(c) {
                break;
            }
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(JsonError::Malformed)
        }
    }

    /// A string at `pos` (on its opening quote): `(content start, content end, has escape)`;
    /// `pos` ends after the closing quote.
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        if self.peek() != Some(b'"') {
            return Err(JsonError::Malformed);
        }
        let start = self.pos + 1;
        let mut i = start;
        let mut esc = false;
        loop {
            // Vectorised search for the two bytes that end a run of plain string content.
            // (Raw control characters are not refused: they make the JSON invalid for its
            // receiver, but cannot hide a value from the scan.)
            let rest = self.b.get(i..).ok_or(JsonError::Malformed)?;
            let off = memchr::memchr2(b'"', b'\\', rest).ok_or(JsonError::Malformed)?;
            i += off;
            match self.b[i] {
                b'"' => break,
                _ => {
                    esc = true;
                    i += 2;
                }
            }
        }
        self.pos = i + 1;
        Ok((start, i, esc))
    }

    /// Skip any value (no scanning), leaving `pos` after it.
    fn skip(&mut self) -> Result<(), JsonError> {
        self.ws();
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek().ok_or(JsonError::Malformed)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(JsonError::TooDeep);
                    }
                    self.pos += 1;
                    continue;
                }
                b'}' | b']' => {
                    if depth == 0 {
                        return Err(JsonError::Malformed);
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.pos += 1;
                    continue;
                }
                _ => self.scalar()?,
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// A number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let tok = &self.b[start..self.pos];
        let ok = matches!(tok, b"true" | b"false" | b"null")
            || (!tok.is_empty()
                && tok
                    .iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                && tok.iter().any(u8::is_ascii_digit));
        if ok {
            Ok(())
        } else {
            Err(JsonError::Malformed)
        }
    }

    /// Look ahead in the object starting at `at` (its `{`) for direct member `key` with a
    /// string value: the value's decoded bytes. `pos` is restored.
    fn peek_member(&mut self, at: usize, key: &[u8]) -> Result<Option<Vec<u8>>, JsonError> {
        let saved = self.pos;
        self.pos = at + 1;
        let mut found = None;
        let r = (|| {
            self.ws();
            if self.peek() == Some(b'}') {
                return Ok(());
            }
            loop {
                self.ws();
                let (ks, ke, kesc) = self.string()?;
                self.expect(b':')?;
                self.ws();
                let hit = if kesc {
                    let mut d = Vec::new();
                    let mut m = Vec::new();
                    unescape_map(&self.b[ks..ke], ks, &mut d, &mut m)?;
                    d == key
                } else {
                    &self.b[ks..ke] == key
                };
                if hit && self.peek() == Some(b'"') {
                    let (vs, ve, vesc) = self.string()?;
                    let v = if vesc {
                        let mut d = Vec::new();
                        let mut m = Vec::new();
                        unescape_map(&self.b[vs..ve], vs, &mut d, &mut m)?;
                        d
                    } else {
                        self.b[vs..ve].to_vec()
                    };
                    found = Some(v);
                    return Ok(());
                }
                self.skip()?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => return Ok(()),
                    _ => return Err(JsonError::Malformed),
                }
            }
        })();
        self.pos = saved;
        r.map(|()| found)
    }

    fn value(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.ws();
        match self.peek().ok_or(JsonError::Malformed)? {
            b'{' => self.object(ctx),
            b'[' => self.array(ctx),
            b'"' => self.string_value(ctx),
            _ => {
                let start = self.pos;
                self.scalar()?;
                // A number shaped like an SSN or a card (`"ssn": 123456789`): it cannot be
                // rewritten and stay a number, so the element goes.
                if ctx.scan && ctx.transform.is_none() {
                    let (remove, block) = self.hits_in(start, self.pos);
                    if block {
                        self.blocked = true;
                    }
                    if remove {
                        return Ok(true);
                    }
                }
                if let Some((act, rule, _)) = ctx.transform {
                    let tok = &self.b[start..self.pos];
                    if tok.first().is_some_and(u8::is_ascii_digit) || tok.first() == Some(&b'-') {
                        return Ok(self.transform_number(act, rule, start, self.pos));
                    }
                }
                Ok(false)
            }
        }
    }

    /// A number under a transform: `generalize` caps ages at 90; other transforms cannot
    /// keep a number's type, so the value goes.
    fn transform_number(&mut self, act: Action, _rule: u16, s: usize, e: usize) -> bool {
        match act {
            Action::Generalize => {
                let tok = &self.b[s..e];
                if tok.iter().all(u8::is_ascii_digit) && tok.len() <= 3 {
                    if let Some(g) = actions::generalize(tok, true) {
                        if g != tok {
                            self.edit(s, e, Repl::Bytes(g));
                        }
                    }
                    false
                } else {
                    true
                }
            }
            Action::Report => false,
            _ => true,
        }
    }

    /// Carry out the rule that matched an element: count it, then block (the walk stops),
    /// redact (the value is skipped: `true` = remove it), report, or hand back the
    /// transform the value's leaves get.
    fn apply_match(
        &mut self,
        (act, rule): (Action, u16),
    ) -> Result<(bool, Option<Transform>), JsonError> {
        self.report.add(self.eng.rule_label(rule), act);
        Ok(match act {
            Action::Block => {
                self.blocked = true;
                self.skip()?;
                (false, None)
            }
            Action::Redact => {
                self.skip()?;
                (true, None)
            }
            Action::Report => (false, None),
            a => (false, Some((a, rule, true))),
        })
    }

    /// Findings of the whole-body pass inside `[s, e)` of a member name or a number,
    /// where nothing can be rewritten in place: `(remove the element, block)`. Only
    /// detectors that look at any value (not the free-text-only ones) count.
    fn hits_in(&mut self, s: usize, e: usize) -> (bool, bool) {
        let (mut remove, mut block) = (false, false);
        while self.hit_cur < self.hits.len() && self.hits[self.hit_cur].end <= s {
            self.hit_cur += 1;
        }
        let mut i = self.hit_cur;
        while i < self.hits.len() && self.hits[i].start < e {
            let h = self.hits[i];
            i += 1;
            if h.start < s || h.end > e {
                continue;
            }
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(ValueKind::Structured("key")) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => block = true,
                Action::Report => {}
                _ => remove = true,
            }
        }
        (remove, block)
    }

    fn edit(&mut self, s: usize, e: usize, repl: Repl) {
        self.edits.push(Edit {
            start: u32_of(s),
            end: u32_of(e),
            repl,
        });
    }

    fn take_pool(&mut self) -> Vec<RuleState> {
        let mut v = self.state_pool.pop().unwrap_or_default();
        v.clear();
        v
    }

    fn object(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let obj_start = self.pos;
        self.pos += 1;
        let rec_base = self.recs.len();
        let edit_base = self.edits.len();
        let insert_base = self.inserts.len();

        // A resource: find its type (usually the first member) and open its record.
        let mut ty = ctx.ty;
        let mut res_type_name: Option<Vec<u8>> = None;
        if ctx.resource {
            res_type_name = self.peek_member(obj_start, b"resourceType")?;
            if let Some(rt) = &res_type_name {
                ty = resource_type_of(rt);
            }
        }
        let is_res = ctx.resource && res_type_name.is_some();
        // Rule states that apply to this object's members.
        let mut states = self.take_pool();
        if is_res {
            if let Some(rt) = &res_type_name {
                self.eng.rules.start_states(rt, &mut states);
            }
            let uid = self.next_uid;
            self.next_uid += 1;
            self.res.push(ResInfo {
                uid,
                rt_end: None,
                meta: None,
                contained: ctx.contained,
                is_patient: res_type_name.as_deref() == Some(b"Patient"),
                id: None,
                patient_ref: None,
            });
        } else {
            states.extend_from_slice(ctx.states);
            // Rules rooted at this element's data type (`HumanName.family`).
            if let Some(t) = ty {
                if self.eng.rules.has_type_roots() {
                    self.eng
                        .rules
                        .start_states(crate::fhir::validate::type_name(t).as_bytes(), &mut states);
                }
            }
        }
        let res_depth = self.res.len();

        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                let kstart = self.pos;
                let (ks, ke, kesc) = self.string()?;
                // Escaped member names are refused: FHIR never needs them, and comparing
                // them raw would let `"securit\u0079"` or a disguised duplicate through.
                if kesc {
                    return Err(JsonError::Malformed);
                }
                let key: &[u8] = &self.b[ks..ke];
                // PHI in a member name (`{"123-45-6789": …}`): the member goes.
                let (key_remove, key_block) = self.hits_in(ks, ke);
                if key_block {
                    self.blocked = true;
                }
                self.expect(b':')?;
                self.ws();
                let vstart = self.pos;
                let ext_sibling = key.first() == Some(&b'_');
                let info = match ty {
                    Some(t) if !ext_sibling => element_of(t, key),
                    Some(t) => element_of(t, &key[1..]),
                    None => None,
                };
                let name: &[u8] = match &info {
                    Some(i) => i.name.as_bytes(),
                    None if ext_sibling => &key[1..],
                    None => key,
                };
                let special_rt = is_res && key == b"resourceType";
                let special_meta = is_res && key == b"meta";
                // Rules: which complete here, which continue.
                let mut next = self.take_pool();
                let mut completes: Vec<(Action, u16)> = Vec::new();
                self.eng
                    .rules
                    .step(&states, name, key, &mut next, &mut |act, rule| {
                        completes.push((act, rule));
                    });
                let is_obj = self.peek() == Some(b'{');
                let is_arr = self.peek() == Some(b'[');
                // `where` conditions filter this element's object, or each item of its
                // array (then they travel down as item matches).
                let mut matched: Option<(Action, u16)> = None;
                let mut item_matches: Vec<(Action, u16)> = Vec::new();
                for (act, rule) in completes {
                    let conds = self.eng.rules.conds_last(rule);
                    let ok = if conds.is_empty() {
                        true
                    } else if is_obj {
                        self.conds_hold(vstart, conds)?
                    } else {
                        if is_arr {
                            item_matches.push((act, rule));
                        }
                        false
                    };
                    if ok {
                        matched = strongest(matched, (act, rule));
                    }
                }
                if is_obj {
                    self.filter_where(vstart, &mut next)?;
                }
                let kind = if ext_sibling {
                    Some(ValueKind::Complex)
                } else {
                    info.map(|i| i.kind)
                };
                let mut child = Ctx {
                    // `_x` holds an Element (id, extensions): typed, so an extension's `url`
                    // is a uri and not free text.
                    ty: if ext_sibling {
                        crate::fhir::validate::complex_type_of(b"Element")
                    } else {
                        info.map(|i| i.ty)
                    },
                    kind,
                    states: &next,
                    item_matches: &item_matches,
                    transform: ctx.transform,
                    // A known type name is not data; anything else in `resourceType` is.
                    scan: ctx.scan && !(special_rt && ty.is_some()),
                    resource: matches!(kind, Some(ValueKind::Resource)),
                    contained: name == b"contained",
                    patient_ref_holder: is_res
                        && matches!(key, b"subject" | b"patient" | b"beneficiary"),
                };
                let mut removed = false;
                if key_remove || self.blocked {
                    self.skip()?;
                    removed = true;
                    matched = None;
                }
                // On an `_x` extension sibling a transform has no value to work on, and its
                // extensions may carry the same fact (a birth time): it goes instead.
                let matched = matched.map(|(act, rule)| match act {
                    Action::Block | Action::Redact | Action::Report => (act, rule),
                    _ if ext_sibling => (Action::Redact, rule),
                    _ => (act, rule),
                });
                if let Some(m) = matched {
                    let (gone, transform) = self.apply_match(m)?;
                    removed |= gone;
                    if transform.is_some() {
                        child.transform = transform;
                        child.item_matches = &[];
                    }
                }
                // base64Binary (an Attachment's or a Binary's content, a signature…): decoded
                // and read as text.
                if !ext_sibling
                    && child.scan
                    && child.transform.is_none()
                    && self.pos == vstart
                    && self.peek() == Some(b'"')
                    && matches!(kind, Some(ValueKind::Structured("base64Binary")))
                {
                    let content = key == b"data"
                        && ty.is_some_and(|t| {
                            matches!(crate::fhir::validate::type_name(t), "Attachment" | "Binary")
                        });
                    removed |= self.base64_value(content)?;
                }
                if self.pos == vstart {
                    if child.patient_ref_holder && is_obj {
                        let r = self.peek_member(vstart, b"reference")?;
                        if let (Some(r), Some(res)) = (r, self.res.last_mut()) {
                            if res.patient_ref.is_none() {
                                res.patient_ref = Some(r);
                            }
                        }
                    }
                    removed = self.value(child)?;
                    if is_res && key == b"id" {
                        let v = &self.b[vstart..self.pos];
                        if v.len() >= 2 && v[0] == b'"' {
                            let id = v[1..v.len() - 1].to_vec();
                            if let Some(r) = self.res.last_mut() {
                                r.id = Some(id);
                            }
                        }
                    }
                }
                self.state_pool.push(next);
                let vend = self.pos;
                if special_rt {
                    if let Some(r) = self.res.last_mut() {
                        r.rt_end = Some(u32_of(vend));
                    }
                }
                if special_meta && !removed {
                    if let Some(r) = self.res.last_mut() {
                        r.meta = Some((u32_of(vstart), u32_of(vend)));
                    }
                }
                self.recs.push(Rec {
                    kstart: u32_of(kstart),
                    kend: u32_of(ke + 1),
                    vend: u32_of(vend),
                    removed,
                    required: info.is_some_and(|i| i.min >= 1) && !ext_sibling,
                    xhtml: matches!(kind, Some(ValueKind::Xhtml)),
                    primitive: matches!(
                        kind,
                        Some(ValueKind::Text | ValueKind::Xhtml | ValueKind::Structured(_))
                    ),
                    many: info.is_some_and(|i| i.many),
                });
                if self.blocked {
                    break;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Malformed),
                }
            }
        }
        self.state_pool.push(states);
        let obj_end = self.pos;
        if self.blocked {
            self.depth -= 1;
            return Ok(false);
        }
        if ty.is_some_and(|t| crate::fhir::validate::type_name(t) == "Extension") {
            self.extension_keeps_meaning(rec_base);
        }
        let vanished =
            self.close_members(rec_base, edit_base, insert_base, true, obj_start, obj_end)?;
        if is_res && self.res.len() == res_depth {
            self.close_resource(edit_base, vanished)?;
        }
        self.depth -= 1;
        Ok(vanished)
    }

    /// Apply `where` filters of the states/completions that came through this element to
    /// the object at `at`: states and matches whose conditions fail are dropped.
    fn filter_where(&mut self, at: usize, next: &mut Vec<RuleState>) -> Result<(), JsonError> {
        let eng = self.eng;
        // Continuing states whose previous step had a `where`.
        let mut i = 0;
        while i < next.len() {
            let st = next[i];
            let conds = eng.rules.conds_before(st);
            if !conds.is_empty() && !self.conds_hold(at, conds)? {
                next.swap_remove(i);
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    fn conds_hold(&mut self, at: usize, conds: &[(String, String)]) -> Result<bool, JsonError> {
        for (k, lit) in conds {
            match self.peek_member(at, k.as_bytes())? {
                Some(v) if v == lit.as_bytes() => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    fn array(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let arr_start = self.pos;
        self.pos += 1;
        let rec_base = self.recs.len();
        let edit_base = self.edits.len();
        let insert_base = self.inserts.len();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                let vstart = self.pos;
                let mut removed = false;
                if self.peek() == Some(b'{') && ctx.transform.is_none() {
                    // `where` on items: decided per item, from the item's own members.
                    let mut st = self.take_pool();
                    st.extend_from_slice(ctx.states);
                    self.filter_where(vstart, &mut st)?;
                    let mut item_ctx = Ctx {
                        states: &st,
                        item_matches: &[],
                        ..ctx
                    };
                    let mut matched: Option<(Action, u16)> = None;
                    for &(act, rule) in ctx.item_matches {
                        if self.conds_hold(vstart, self.eng.rules.conds_last(rule))? {
                            matched = strongest(matched, (act, rule));
                        }
                    }
                    if let Some(m) = matched {
                        let (gone, transform) = self.apply_match(m)?;
                        removed |= gone;
                        if transform.is_some() {
                            item_ctx.transform = transform;
                        }
                    }
                    if self.pos == vstart {
                        removed = self.value(item_ctx)?;
                    }
                    self.state_pool.push(st);
                } else {
                    removed |= self.value(ctx)?;
                }
                self.recs.push(Rec {
                    kstart: u32_of(vstart),
                    kend: u32_of(vstart),
                    vend: u32_of(self.pos),
                    removed,
                    required: false,
                    xhtml: false,
                    primitive: false,
                    many: false,
                });
                if self.blocked {
                    break;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Malformed),
                }
            }
        }
        let end = self.pos;
        self.depth -= 1;
        if self.blocked {
            return Ok(false);
        }
        self.close_members(rec_base, edit_base, insert_base, false, arr_start, end)
    }

    /// Finish an object or array: realise removals (commas, `_x` siblings, required
    /// elements) and say whether nothing is left of it.
    fn close_members(
        &mut self,
        rec_base: usize,
        edit_base: usize,
        insert_base: usize,
        is_object: bool,
        start: usize,
        end: usize,
    ) -> Result<bool, JsonError> {
        let n = self.recs.len() - rec_base;
        if n == 0 {
            return Ok(false);
        }
        if is_object && n > 1 {
            // Duplicate keys are refused: Ward would read the first and a client the last
            // (`"resourceType":"Basic","resourceType":"Patient"`), a classic parser
            // differential. Sorting the keys also serves the `_x` lookup below.
            let b = self.b;
            let mut keys = std::mem::take(&mut self.keys);
            keys.clear();
            for (i, r) in self.recs[rec_base..].iter().enumerate() {
                keys.push((&b[r.kstart as usize + 1..r.kend as usize - 1], i));
            }
            // Small objects (most of FHIR) are cheaper to compare pairwise than to sort.
            let dup = if keys.len() <= 8 {
                (1..keys.len()).any(|i| keys[..i].iter().any(|k| k.0 == keys[i].0))
            } else {
                keys.sort_unstable_by(|x, y| x.0.cmp(y.0));
                keys.windows(2).any(|w| w[0].0 == w[1].0)
            };
            if dup {
                self.keys = keys;
                return Err(JsonError::Malformed);
            }
            let sorted = keys.len() > 8;
            // `_x` goes with `x`.
            let mut with_ext: Vec<usize> = Vec::new();
            let mut probe = Vec::new();
            for r in &self.recs[rec_base..] {
                if !r.removed {
                    continue;
                }
                let key = &b[r.kstart as usize + 1..r.kend as usize - 1];
                if key.first() == Some(&b'_') {
                    continue;
                }
                probe.clear();
                probe.push(b'_');
                probe.extend_from_slice(key);
                let found = if sorted {
                    keys.binary_search_by(|k| k.0.cmp(probe.as_slice())).ok()
                } else {
                    keys.iter().position(|k| k.0 == probe.as_slice())
                };
                if let Some(j) = found {
                    with_ext.push(keys[j].1);
                }
            }
            for j in with_ext {
                let o = &mut self.recs[rec_base + j];
                o.removed = true;
                o.required = false;
            }
            self.keys = keys;
        }
        // A required element is masked rather than removed.
        let mut replaced: Vec<(usize, Vec<u8>)> = Vec::new();
        for i in rec_base..self.recs.len() {
            let r = self.recs[i];
            if r.removed && r.required {
                let key = &self.b[r.kstart as usize + 1..r.kend as usize - 1];
                let text = if r.xhtml {
                    let mut t = self.b[r.kstart as usize..r.kend as usize].to_vec();
                    t.push(b':');
                    t.extend_from_slice(REDACTED_DIV);
                    t
                } else if r.primitive {
                    let mut t = b"\"_".to_vec();
                    t.extend_from_slice(key);
                    t.extend_from_slice(b"\":");
                    if r.many {
                        t.push(b'[');
                        t.extend_from_slice(DAR_OBJECT);
                        t.push(b']');
                    } else {
                        t.extend_from_slice(DAR_OBJECT);
                    }
                    t
                } else {
                    let mut t = self.b[r.kstart as usize..r.kend as usize].to_vec();
                    t.push(b':');
                    if r.many {
                        t.push(b'[');
                        t.extend_from_slice(DAR_OBJECT);
                        t.push(b']');
                    } else {
                        t.extend_from_slice(DAR_OBJECT);
                    }
                    t
                };
                replaced.push((i, text));
            }
        }
        let mut gone: Vec<(u32, u32)> = Vec::new();
        let mut new_edits: Vec<Edit> = Vec::new();
        for (i, text) in replaced {
            let r = &mut self.recs[i];
            r.removed = false;
            gone.push((r.kstart, r.vend));
            new_edits.push(Edit {
                start: r.kstart,
                end: r.vend,
                repl: Repl::Bytes(text),
            });
        }
        let recs = &self.recs[rec_base..];
        let kept = recs.iter().filter(|r| !r.removed).count();
        if kept == 0 {
            self.recs.truncate(rec_base);
            self.drop_inside(edit_base, insert_base, &[(u32_of(start), u32_of(end))]);
            return Ok(true);
        }
        if kept < n {
            let mut dels: Vec<(u32, u32)> = Vec::new();
            let mut seen_kept = false;
            for i in 0..n {
                let r = self.recs[rec_base + i];
                if !r.removed {
                    seen_kept = true;
                    continue;
                }
                if seen_kept {
                    let prev_end = self.recs[rec_base + i - 1].vend;
                    dels.push((prev_end, r.vend));
                } else {
                    let next_start = self
                        .recs
                        .get(rec_base + i + 1)
                        .map(|x| x.kstart)
                        .ok_or(JsonError::Inconsistent)?;
                    dels.push((r.kstart, next_start));
                }
            }
            for (s, e) in dels {
                gone.push((s, e));
                new_edits.push(Edit {
                    start: s,
                    end: e,
                    repl: Repl::Static(b""),
                });
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            self.drop_inside(edit_base, insert_base, &gone);
        }
        self.edits.extend(new_edits);
        self.recs.truncate(rec_base);
        Ok(false)
    }

    /// An extension that lost its `url`, or its value (or nested extensions) with nothing
    /// left in their place, means nothing and is invalid FHIR (ext-1): it goes whole.
    fn extension_keeps_meaning(&mut self, rec_base: usize) {
        let b = self.b;
        let key = |r: &Rec| &b[r.kstart as usize + 1..r.kend as usize - 1];
        let content = |k: &[u8]| k.starts_with(b"value") || k == b"extension";
        let recs = &self.recs[rec_base..];
        let lost = recs
            .iter()
            .any(|r| r.removed && (content(key(r)) || key(r) == b"url"));
        let left = recs.iter().any(|r| !r.removed && content(key(r)));
        if lost && (!left || recs.iter().any(|r| r.removed && key(r) == b"url")) {
            for r in &mut self.recs[rec_base..] {
                r.removed = true;
                r.required = false;
            }
        }
    }

    /// Forget edits and inserts inside any of the sorted, disjoint ranges `gone` (their
    /// element is going): one pass over the tail, a binary search per edit.
    fn drop_inside(&mut self, edit_base: usize, insert_base: usize, gone: &[(u32, u32)]) {
        let inside = |a: u32, z: u32, strict: bool| {
            let i = gone.partition_point(|g| g.0 <= a);
            i > 0 && {
                let (s, e) = gone[i - 1];
                if strict {
                    a > s && z < e
                } else {
                    a >= s && z <= e
                }
            }
        };
        let mut w = edit_base;
        for r in edit_base..self.edits.len() {
            let (a, z) = (self.edits[r].start, self.edits[r].end);
            if !inside(a, z, false) {
                self.edits.swap(w, r);
                w += 1;
            }
        }
        self.edits.truncate(w);
        let mut w = insert_base;
        for r in insert_base..self.inserts.len() {
            let a = self.inserts[r].at;
            if !inside(a, a, true) {
                self.inserts.swap(w, r);
                w += 1;
            }
        }
        self.inserts.truncate(w);
    }

    /// A resource closes: resolve its date shifts and label it if anything changed.
    fn close_resource(&mut self, edit_base: usize, vanished: bool) -> Result<(), JsonError> {
        let Some(info) = self.res.pop() else {
            return Err(JsonError::Inconsistent);
        };
        let key: Option<Vec<u8>> = match (&info.patient_ref, &info.id) {
            (Some(r), _) => Some(patient_key(r)),
            (None, Some(id)) if info.is_patient => {
                let mut k = b"Patient/".to_vec();
                k.extend_from_slice(id);
                Some(k)
            }
            _ => None,
        };
        let parent_uid = self.res.last().map(|p| p.uid);
        let max = self.eng.date_shift_days;
        for i in edit_base..self.edits.len() {
            let Repl::Shift { uid, dashed } = self.edits[i].repl else {
                continue;
            };
            if uid != info.uid {
                continue;
            }
            let (s, e) = (self.edits[i].start as usize, self.edits[i].end as usize);
            let orig = &self.b[s..e];
            match (&key, info.contained, parent_uid) {
                (Some(k), _, _) => {
                    let days = self.eng.keys.as_ref().map_or(0, |ks| ks.shift_days(k, max));
                    let mut out = b"\"".to_vec();
                    let shifted = actions::date_shift(&orig[1..orig.len() - 1], days, dashed)
                        .or_else(|| actions::generalize(&orig[1..orig.len() - 1], dashed))
                        .unwrap_or_default();
                    out.extend_from_slice(&shifted);
                    out.push(b'"');
                    self.edits[i].repl = Repl::Bytes(out);
                }
                // A contained resource without its own patient shifts with its container.
                (None, true, Some(p)) => self.edits[i].repl = Repl::Shift { uid: p, dashed },
                // No patient known: the year is all that can be kept consistently.
                _ => {
                    let mut out = b"\"".to_vec();
                    out.extend_from_slice(
                        &actions::generalize(&orig[1..orig.len() - 1], dashed).unwrap_or_default(),
                    );
                    out.push(b'"');
                    self.edits[i].repl = Repl::Bytes(out);
                }
            }
        }
        if vanished || info.contained || self.edits.len() == edit_base {
            return Ok(());
        }
        // Label it.
        let label = SECURITY_LABEL;
        if let Some((ms, _)) = info.meta {
            if self.b.get(ms as usize) != Some(&b'{') {
                // `meta` that is not an object: nowhere valid to put the label.
                return Err(JsonError::Inconsistent);
            }
            let sec = self.peek_member_value_span(ms as usize, b"security")?;
            match sec {
                Some((ss, se)) if self.b[ss..se].windows(10).any(|w| w == b"\"REDACTED\"") => {}
                Some((ss, _)) if self.b.get(ss) == Some(&b'[') => {
                    let empty = self.b[ss + 1..]
                        .iter()
                        .find(|c| !is_ws(**c))
                        .is_some_and(|c| *c == b']');
                    let mut t = label.to_vec();
                    if !empty {
                        t.push(b',');
                    }
                    self.inserts.push(Insert {
                        at: u32_of(ss + 1),
                        text: t,
                    });
                }
                Some(_) => return Err(JsonError::Inconsistent),
                None => {
                    let empty = self.b[ms as usize + 1..]
                        .iter()
                        .find(|c| !is_ws(**c))
                        .is_some_and(|c| *c == b'}');
                    let mut t = b"\"security\":[".to_vec();
                    t.extend_from_slice(label);
                    t.push(b']');
                    if !empty {
                        t.push(b',');
                    }
                    self.inserts.push(Insert {
                        at: ms + 1,
                        text: t,
                    });
                }
            }
        } else {
            let at = info.rt_end.ok_or(JsonError::Inconsistent)?;
            let mut t = b",\"meta\":{\"security\":[".to_vec();
            t.extend_from_slice(label);
            t.extend_from_slice(b"]}");
            self.inserts.push(Insert { at, text: t });
        }
        Ok(())
    }

    /// The value span of direct member `key` of the object at `at`.
    fn peek_member_value_span(
        &mut self,
        at: usize,
        key: &[u8],
    ) -> Result<Option<(usize, usize)>, JsonError> {
        let saved = self.pos;
        self.pos = at + 1;
        let r = (|| {
            self.ws();
            if self.peek() == Some(b'}') {
                return Ok(None);
            }
            loop {
                self.ws();
                let (ks, ke, _) = self.string()?;
                self.expect(b':')?;
                self.ws();
                let vs = self.pos;
                self.skip()?;
                if &self.b[ks..ke] == key {
                    return Ok(Some((vs, self.pos)));
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    _ => return Ok(None),
                }
            }
        })();
        self.pos = saved;
        r
    }

    /// A base64Binary value at `self.pos`: decoded and, if it is text (valid UTF-8 without
    /// NULs, whatever `contentType` claims — a label is not a guarantee), scanned like free
    /// text, and through the XHTML text view when it holds markup. A finding with a
    /// transforming action removes the element (base64 cannot be edited in place); `block`
    /// blocks. Content that is not text (images, PDF, undecodable base64) of an
    /// `Attachment.data` / `Binary.data` (`content`) follows `Engine::opaque_attachment`;
    /// other opaque base64 (signatures) passes. Returns "remove me"; the value is consumed.
    fn base64_value(&mut self, content: bool) -> Result<bool, JsonError> {
        use base64::Engine as _;
        let (s, e, esc) = self.string()?;
        let raw = &self.b[s..e];
        let mut b64 = Vec::with_capacity(raw.len());
        if esc {
            unescape_plain(raw, &mut b64)?;
        } else {
            b64.extend_from_slice(raw);
        }
        // FHIR's base64Binary allows whitespace between quads.
        b64.retain(|c| !c.is_ascii_whitespace());
        let decoded = base64::engine::general_purpose::STANDARD.decode(&b64).ok();
        let text = decoded
            .as_deref()
            .filter(|d| std::str::from_utf8(d).is_ok() && !d.contains(&0));
        let Some(text) = text else {
            if !content {
                return Ok(false);
            }
            let label = self.eng.opaque_label;
            return Ok(match self.eng.opaque_attachment {
                Some(Action::Block) => {
                    self.report.add(label, Action::Block);
                    self.blocked = true;
                    false
                }
                Some(act) => {
                    self.report.add(label, act);
                    true
                }
                None => {
                    self.report.add(label, Action::Report);
                    false
                }
            });
        };
        let mut found = Vec::new();
        self.eng.scanner.scan(text, &mut found);
        if found.is_empty() && text.contains(&b'<') {
            // HTML or XML: also read the text a reader sees (tags and comments between
            // the digits of a number never split it; see `xhtml.rs`).
            let mut view = Vec::new();
            let mut vmap = Vec::new();
            crate::dlp::xhtml::text_view(text, &mut view, &mut vmap);
            self.eng.scanner.scan(&view, &mut found);
        }
        let mut remove = false;
        for h in &found {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ => remove = true,
            }
        }
        Ok(remove)
    }

    /// A string value: transform, or scan for free-text findings. Returns "remove me".
    fn string_value(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        let qstart = self.pos;
        let (s, e, esc) = self.string()?;
        let kind = ctx.kind.unwrap_or(ValueKind::Text);
        if let Some((act, rule, direct)) = ctx.transform {
            return self.transform_string(act, rule, direct, kind, qstart, s, e, esc);
        }
        // `dates:` — one action for every typed date (Safe Harbor: all dates but the year).
        if let (Some((act, label)), ValueKind::Structured("date" | "dateTime" | "instant")) =
            (self.eng.dates, kind)
        {
            if ctx.scan {
                self.report.add(label, act);
                return self.transform_string(act, u16::MAX, true, kind, qstart, s, e, esc);
            }
        }
        if !ctx.scan {
            return Ok(false);
        }
        // Hits from the whole-body pass that fall in this string.
        let b = self.b;
        let mut crossing = false;
        let mut first = self.hit_cur;
        while first < self.hits.len() && self.hits[first].end <= s {
            first += 1;
        }
        let mut last = first;
        while last < self.hits.len() && self.hits[last].start < e {
            let h = self.hits[last];
            if h.start < s || h.end > e {
                crossing = true;
            }
            last += 1;
        }
        self.hit_cur = last;
        let xhtml = matches!(kind, ValueKind::Xhtml);
        if !esc && !crossing && !xhtml {
            if first == last {
                return Ok(false);
            }
            // Map identity: the hits are already body offsets.
            let mut found: Vec<Hit> = self.hits[first..last].to_vec();
            return self.apply_hits(&mut found, kind);
        }
        // Decode and scan this string alone. The offset map back to the body is built only
        // once something is found: most strings scanned here are clean narratives.
        let raw_hits = first != last;
        let raw = &b[s..e];
        let unicode_escapes = memchr::memmem::find(raw, b"\\u").is_some();
        let mut dec = std::mem::take(&mut self.dec);
        let mut map = std::mem::take(&mut self.dec_map);
        unescape_plain(raw, &mut dec)?;
        let mut found = std::mem::take(&mut self.hits2);
        found.clear();
        let r = if xhtml {
            let mut txt = std::mem::take(&mut self.txt);
            let mut tmap = std::mem::take(&mut self.txt_map);
            crate::dlp::xhtml::text_view(&dec, &mut txt, &mut tmap);
            self.eng.scanner.scan(&txt, &mut found);
            // Attribute values and comments are not text: the markup itself is scanned
            // when the whole-body pass saw something in this string, or when `\u` escapes
            // could have hidden it from that pass (`href="mailto:…"`).
            let mut attr: Vec<Hit> = Vec::new();
            if raw_hits || unicode_escapes {
                self.eng.scanner.scan(&dec, &mut attr);
                if !attr.is_empty() {
                    let mut text_byte = vec![false; dec.len()];
                    for &(a, z) in tmap.iter() {
                        let markup = z.saturating_sub(a) >= 3 && dec.get(a as usize) == Some(&b'<');
                        if !markup {
                            for t in text_byte.iter_mut().take(z as usize).skip(a as usize) {
                                *t = true;
                            }
                        }
                    }
                    // In markup only detectors that look at any value count: `url` and
                    // `date` would take the mandatory `xmlns` or an `href` apart.
                    let eng = self.eng;
                    attr.retain(|h| {
                        !text_byte[h.start..h.end].iter().any(|t| *t)
                            && eng
                                .detectors
                                .get(usize::from(h.detector))
                                .is_some_and(|d| d.any_type)
                    });
                }
            }
            let mut r = Ok(false);
            if !found.is_empty() || !attr.is_empty() {
                unescape_map(raw, s, &mut dec, &mut map)?;
                let view = Xhtml {
                    src: &dec,
                    tmap: &tmap,
                };
                r = self.apply_decoded(&mut found, kind, &txt, &map, Some(view));
                if matches!(r, Ok(false)) && !self.blocked && !attr.is_empty() {
                    r = self.apply_decoded(&mut attr, kind, &dec, &map, None);
                }
            }
            self.txt = txt;
            self.txt_map = tmap;
            r
        } else {
            // Scanned with the raw bytes before the string (its member name) in front, so
            // context words still count when escapes forced a separate scan.
            let ctx_start = s.saturating_sub(CONTEXT_PREFIX);
            let prefix = &b[ctx_start..s];
            let mut buf = std::mem::take(&mut self.txt);
            buf.clear();
            buf.extend_from_slice(prefix);
            buf.extend_from_slice(&dec);
            self.eng.scanner.scan(&buf, &mut found);
            let p = prefix.len();
            found.retain(|h| h.start >= p);
            for h in found.iter_mut() {
                h.start -= p;
                h.end -= p;
            }
            self.txt = buf;
            if found.is_empty() {
                Ok(false)
            } else {
                unescape_map(raw, s, &mut dec, &mut map)?;
                self.apply_decoded(&mut found, kind, &dec, &map, None)
            }
        };
        self.hits2 = found;
        self.dec = dec;
        self.dec_map = map;
        r
    }

    /// Findings with body offsets (no escapes in the string).
    fn apply_hits(&mut self, found: &mut [Hit], kind: ValueKind) -> Result<bool, JsonError> {
        let b = self.b;
        let mut remove = false;
        for h in found.iter() {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(kind) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ if !matches!(kind, ValueKind::Text) => remove = true,
                act => {
                    let m = &b[h.start..h.end];
                    let repl = self.free_text_replacement(act, det.keep_last, m, false);
                    self.edit(h.start, h.end, Repl::Bytes(repl));
                }
            }
        }
        Ok(remove)
    }

    /// Findings in decoded text, `map` giving body ranges.
    fn apply_decoded(
        &mut self,
        found: &mut [Hit],
        kind: ValueKind,
        text: &[u8],
        map: &[(u32, u32)],
        xhtml: Option<Xhtml<'_>>,
    ) -> Result<bool, JsonError> {
        let mut remove = false;
        for h in found.iter() {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(kind) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ if !matches!(kind, ValueKind::Text | ValueKind::Xhtml) => remove = true,
                act => {
                    let (hs, he) = (h.start, h.end);
                    let m = text.get(hs..he).unwrap_or_default();
                    let repl = self.free_text_replacement(
                        act,
                        det.keep_last,
                        m,
                        matches!(kind, ValueKind::Xhtml),
                    );
                    // Body ranges to replace: in narrative only text, never a tag (a
                    // finding may span `<b>`), through the XHTML view and then the JSON
                    // unescape map; elsewhere straight through the unescape map.
                    let rs = match &xhtml {
                        Some(x) => crate::dlp::xhtml::redact_text_runs(x.src, x.tmap, hs, he)
                            .into_iter()
                            .filter_map(|(a, z)| {
                                let lo = map.get(a as usize)?.0;
                                let hi = map.get((z as usize).checked_sub(1)?)?.1;
                                Some((lo, hi))
                            })
                            .collect(),
                        None => runs(map, hs, he),
                    };
                    for (k, (s, e)) in rs.into_iter().enumerate() {
                        let r = if k == 0 { repl.clone() } else { Vec::new() };
                        self.edit(s as usize, e as usize, Repl::Bytes(r));
                    }
                }
            }
        }
        Ok(remove)
    }

    /// The JSON-escaped (and, in narrative, XHTML-escaped) text replacing a finding.
    fn free_text_replacement(&self, act: Action, keep: u16, m: &[u8], xhtml: bool) -> Vec<u8> {
        let raw = match act {
            Action::Mask => actions::mask(m, usize::from(keep)),
            Action::Hash => match &self.eng.keys {
                Some(k) => k.hash(m),
                None => REDACTED.to_vec(),
            },
            _ => REDACTED.to_vec(),
        };
        let mut x = Vec::with_capacity(raw.len());
        if xhtml {
            for &c in &raw {
                match c {
                    b'&' => x.extend_from_slice(b"&amp;"),
                    b'<' => x.extend_from_slice(b"&lt;"),
                    b'>' => x.extend_from_slice(b"&gt;"),
                    c => x.push(c),
                }
            }
        } else {
            x = raw;
        }
        let mut out = Vec::with_capacity(x.len());
        json_escape_into(&mut out, &x);
        out
    }

    /// A string under a transforming rule. `direct`: the string is the matched element (or
    /// an item of it), so an impossible transform removes it; below a matched complex
    /// element only the leaves the transform is meant for change.
    #[allow(clippy::too_many_arguments)]
    fn transform_string(
        &mut self,
        act: Action,
        _rule: u16,
        direct: bool,
        kind: ValueKind,
        qstart: usize,
        s: usize,
        e: usize,
        esc: bool,
    ) -> Result<bool, JsonError> {
        let qend = e + 1;
        let value: Vec<u8> = if esc {
            let mut d = Vec::new();
            let mut m = Vec::new();
            unescape_map(&self.b[s..e], s, &mut d, &mut m)?;
            d
        } else {
            self.b[s..e].to_vec()
        };
        let is_date = matches!(kind, ValueKind::Structured("date" | "dateTime" | "instant"));
        let text_like = matches!(kind, ValueKind::Text);
        let replace = |w: &mut Self, new: Vec<u8>| {
            let mut out = Vec::with_capacity(new.len() + 2);
            out.push(b'"');
            json_escape_into(&mut out, &new);
            out.push(b'"');
            w.edit(qstart, qend, Repl::Bytes(out));
        };
        match act {
            Action::Mask | Action::Hash => {
                if text_like
                    || (direct
                        && matches!(kind, ValueKind::Structured("id" | "code"))
                        && act == Action::Hash)
                {
                    let new = if act == Action::Mask {
                        actions::mask(&value, usize::from(self.keep_for(_rule)))
                    } else {
                        match &self.eng.keys {
                            Some(k) => k.hash(&value),
                            None => return Ok(true),
                        }
                    };
                    replace(self, new);
                    Ok(false)
                } else {
                    Ok(direct)
                }
            }
            Action::DateShift => {
                let dashed = true;
                if is_date || (direct && text_like) {
                    if actions::date_shift(&value, 1, dashed).is_none() || esc {
                        return Ok(direct || is_date);
                    }
                    let uid = match self.res.last() {
                        Some(r) => r.uid,
                        None => {
                            // Not inside a resource: nobody to key the shift by.
                            return match actions::generalize(&value, dashed) {
                                Some(g) => {
                                    replace(self, g);
                                    Ok(false)
                                }
                                None => Ok(true),
                            };
                        }
                    };
                    self.edit(qstart, qend, Repl::Shift { uid, dashed });
                    Ok(false)
                } else {
                    Ok(direct)
                }
            }
            // An instant must keep full precision: it cannot be generalised, only removed.
            Action::Generalize if matches!(kind, ValueKind::Structured("instant")) => Ok(true),
            Action::Generalize => match actions::generalize(&value, true) {
                Some(g) if is_date || text_like => {
                    if g != value {
                        replace(self, g);
                    }
                    Ok(false)
                }
                // Under a generalised complex element (an address), free text that is
                // not a ZIP, date or age is what generalising removes (street, city).
                None if text_like => Ok(true),
                _ => Ok(direct),
            },
            Action::Redact | Action::Block => Ok(true),
            Action::Report => Ok(false),
        }
    }

    fn keep_for(&self, rule: u16) -> u16 {
        self.eng.rules.keep_last(rule)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::DlpConfig;
    use crate::fhir::validate::{validate_resource, Limits};

    fn engine(cfg: serde_json::Value) -> Engine {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ward-dlp-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), [7u8; 32]).unwrap();
        let mut cfg = cfg;
        cfg["key_file"] = serde_json::Value::String("k".into());
        let c: DlpConfig = serde_json::from_value(cfg).unwrap();
        let resolve = |f: &str| dir.join(f);
        let p = c.problems(&resolve);
        assert!(p.is_empty(), "{p:?}");
        Engine::compile(&c, &resolve).unwrap()
    }

    fn run(e: &Engine, body: &str) -> (Option<String>, Report) {
        let mut r = Report::default();
        match process(e, body.as_bytes(), &mut r).unwrap() {
            JsonOutcome::Unchanged => (None, r),
            JsonOutcome::Rewritten(b) => (Some(String::from_utf8(b).unwrap()), r),
            JsonOutcome::Blocked => (Some("BLOCKED".into()), r),
        }
    }

    #[track_caller]
    fn valid(json: &str) -> serde_json::Value {
        if let Err(issues) = validate_resource(json.as_bytes(), &Limits::default(), None) {
            panic!("invalid FHIR after DLP: {issues:?}\n{json}");
        }
        serde_json::from_str(json).unwrap()
    }

    const PATIENT: &str = r#"{
  "resourceType": "Patient",
  "id": "p1",
  "identifier": [
    {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
    {"system": "urn:mrn", "value": "MRN0042"}
  ],
  "name": [{"family": "Doe", "given": ["Jane"]}],
  "telecom": [
    {"system": "phone", "value": "555-234-5678", "use": "home"},
    {"system": "email", "value": "jane@example.org"}
  ],
  "gender": "female",
  "birthDate": "1970-03-14",
  "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02139"}]
}"#;

    fn has_label(v: &serde_json::Value) -> bool {
        v["meta"]["security"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["code"] == "REDACTED"))
    }

    #[test]
    fn ssn_identifier_rule_removes_only_the_value_and_labels() {
        let e = engine(serde_json::json!({"fhir": [
            {"path": "Patient.identifier.where(system='http://hl7.org/fhir/sid/us-ssn').value", "action": "redact"}
        ]}));
        let (out, rep) = run(&e, PATIENT);
        let out = out.expect("rewritten");
        let v = valid(&out);
        assert!(!out.contains("123-45-6789"));
        assert_eq!(
            v["identifier"][0]["system"],
            "http://hl7.org/fhir/sid/us-ssn"
        );
        assert!(v["identifier"][0].get("value").is_none());
        assert_eq!(v["identifier"][1]["value"], "MRN0042");
        assert!(has_label(&v));
        assert_eq!(rep.total(), 1);
    }

    #[test]
    fn where_on_array_items_and_whole_elements() {
        let e = engine(serde_json::json!({"fhir": [
            {"path": "Patient.telecom.where(system='phone')", "action": "redact"},
            {"path": "*.address.line", "action": "redact"},
            {"path": "*.address.postalCode", "action": "generalize"},
            {"path": "Patient.name", "action": "redact"}
        ]}));
        let (out, _) = run(&e, PATIENT);
        let v = valid(&out.unwrap());
        let tel = v["telecom"].as_array().unwrap();
        assert_eq!(tel.len(), 1);
        assert_eq!(tel[0]["system"], "email");
        assert!(v.get("name").is_none());
        assert!(v["address"][0].get("line").is_none());
        assert_eq!(v["address"][0]["postalCode"], "021");
        assert_eq!(v["address"][0]["city"], "Boston");
    }

    #[test]
    fn emptied_objects_and_arrays_disappear() {
        let e = engine(serde_json::json!({"fhir": [
            {"path": "Patient.identifier.value", "action": "redact"},
            {"path": "Patient.identifier.system", "action": "redact"}
        ]}));
        let (out, _) = run(&e, PATIENT);
        let v = valid(&out.unwrap());
        assert!(v.get("identifier").is_none(), "{v}");
        assert_eq!(v["id"], "p1");
    }

    #[test]
    fn required_elements_become_data_absent_reason() {
        let e = engine(serde_json::json!({"fhir": [
            {"path": "Observation.status", "action": "redact"}
        ]}));
        let obs = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#;
        let (out, _) = run(&e, obs);
        let out = out.unwrap();
        let v = valid(&out);
        assert!(v.get("status").is_none());
        assert_eq!(v["_status"]["extension"][0]["valueCode"], "masked");
    }

    #[test]
    fn transforms_mask_hash_and_date_shift_per_patient() {
        let e = engine(serde_json::json!({"fhir": [
            {"path": "Patient.telecom.value", "action": "mask", "keep_last": 4},
            {"path": "Patient.identifier.value", "action": "hash"},
            {"path": "Patient.birthDate", "action": "date_shift"},
            {"path": "Observation.effectiveDateTime", "action": "date_shift"}
        ]}));
        let bundle = format!(
            r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{PATIENT}}},{{"resource":{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/p1"}},"effectiveDateTime":"1970-03-14"}}}}]}}"#
        );
        let (out, _) = run(&e, &bundle);
        let v = valid(&out.unwrap());
        let p = &v["entry"][0]["resource"];
        assert_eq!(p["telecom"][0]["value"], "***-***-5678");
        let h = p["identifier"][0]["value"].as_str().unwrap();
        assert_eq!(h.len(), 32);
        assert_ne!(p["birthDate"], "1970-03-14");
        // Same patient, same shift.
        assert_eq!(
            p["birthDate"],
            v["entry"][1]["resource"]["effectiveDateTime"]
        );
        assert!(has_label(p));
        assert!(has_label(&v["entry"][1]["resource"]));
        // Stable pseudonym across messages.
        let (again, _) = run(&e, &bundle);
        let v2: serde_json::Value = serde_json::from_str(&again.unwrap()).unwrap();
        assert_eq!(v2["entry"][0]["resource"]["identifier"][0]["value"], h);
    }

    #[test]
    fn free_text_findings_in_strings_escapes_and_narrative() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {}, "phone": {"action": "mask"}}}));
        let obs = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">SSN 123-<b>45</b>-6789</div>"},
            "note":[{"text":"call 555-234-5678, ssn \u0031\u0032\u0033-45-6789"}]}"#;
        let (out, rep) = run(&e, obs);
        let out = out.unwrap();
        let v = valid(&out);
        let note = v["note"][0]["text"].as_str().unwrap();
        assert!(note.contains("***-***-5678"), "{note}");
        assert!(
            note.contains("[REDACTED]") && !note.contains("45-6789"),
            "{note}"
        );
        let div = v["text"]["div"].as_str().unwrap();
        assert!(!div.contains("6789") && div.contains("[REDACTED]"), "{div}");
        assert_eq!(rep.total(), 3);
    }

    #[test]
    fn narrative_markup_is_kept_and_attributes_are_scanned() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {}, "email": {}, "url": {}}}));
        let p = r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>123-45<span>-6789</span></p><a href=\"mailto:jane@example.org\">mail</a><p>&#49;23-45-6789</p></div>"},"active":true}"#;
        let (out, rep) = run(&e, p);
        let v = valid(&out.unwrap());
        let div = v["text"]["div"].as_str().unwrap();
        assert!(!div.contains("jane@example.org"), "{div}");
        assert!(!div.contains("6789"), "{div}");
        assert!(
            div.contains("<span>") && div.contains("</span>") && div.contains("</a>"),
            "{div}"
        );
        assert!(
            div.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"),
            "{div}"
        );
        assert!(rep.total() >= 2, "{rep:?}");
    }

    #[test]
    fn findings_in_typed_values_remove_the_element() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {}}}));
        let p = r#"{"resourceType":"Patient","id":"123-45-6789","active":true}"#;
        let (out, _) = run(&e, p);
        let v = valid(&out.unwrap());
        assert!(v.get("id").is_none());
        assert!(has_label(&v));
    }

    #[test]
    fn block_and_clean_and_malformed() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {"action": "block"}}}));
        assert_eq!(run(&e, PATIENT).0.as_deref(), Some("BLOCKED"));
        let e = engine(serde_json::json!({"detectors": {"ssn": {}}}));
        let clean = r#"{"resourceType":"Patient","id":"x","active":true}"#;
        assert!(run(&e, clean).0.is_none());
        let mut r = Report::default();
        assert!(process(&e, b"{\"a\":", &mut r).is_err());
        assert!(process(&e, b"{\"a\":1}}", &mut r).is_err());
        assert!(process(&e, b"[1,2", &mut r).is_err());
    }

    #[test]
    fn parser_differentials_and_hidden_places() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {}, "card": {}}}));
        let mut r = Report::default();
        // Duplicate and escaped member names are refused (first-wins vs last-wins).
        for bad in [
            r#"{"resourceType":"Basic","resourceType":"Patient"}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"resourceType":"Patient","securit\u0079":1}"#,
        ] {
            assert!(process(&e, bad.as_bytes(), &mut r).is_err(), "{bad}");
        }
        // PHI in member names and in numbers: the member goes.
        let (out, _) = run(
            &e,
            r#"{"a":{"123-45-6789":{"x":1}},"card":4111111111111111,"ssn":123456789,"n":1}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"n": 1}));
        // An escape forces a separate scan; the member name still counts as context.
        let (out, _) = run(&e, r#"{"ssn":"12345678\u0039","n":1}"#);
        assert!(!out.unwrap().contains("12345678"));
        // meta is scanned too.
        let (out, _) = run(
            &e,
            r#"{"resourceType":"Patient","meta":{"source":"x","tag":[{"display":"ssn 123-45-6789"}]},"active":true}"#,
        );
        let v = valid(&out.unwrap());
        assert!(!v.to_string().contains("6789"));
        assert!(has_label(&v));
    }

    #[test]
    fn safe_harbor_preset_covers_names_dates_and_attachments_anywhere() {
        let e = engine(serde_json::json!({"preset": "safe_harbor"}));
        let enc = r#"{"resourceType":"Encounter","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP"},
            "subject":{"reference":"Patient/1","display":"Jane Doe"},
            "period":{"start":"2024-03-01T10:00:00Z","end":"2024-03-05"},
            "participant":[{"individual":{"reference":"Practitioner/9","display":"Dr Who"}}],
            "meta":{"lastUpdated":"2024-03-06T10:00:00Z"}}"#;
        let (out, _) = run(&e, enc);
        let v = valid(&out.unwrap());
        assert!(v["subject"].get("display").is_none(), "{v}");
        assert_eq!(v["period"]["start"], "2024");
        assert_eq!(v["period"]["end"], "2024");
        assert!(v["meta"].get("lastUpdated").is_none(), "{v}");
        let doc = r#"{"resourceType":"DocumentReference","status":"current","content":[{"attachment":{"contentType":"text/plain","data":"SmFuZSBEb2U="}}]}"#;
        let (out, _) = run(&e, doc);
        let v = valid(&out.unwrap());
        assert!(v["content"][0]["attachment"].get("data").is_none(), "{v}");
        let pr = r#"{"resourceType":"Practitioner","name":[{"family":"Who","given":["Doctor"]}],"telecom":[{"system":"phone","value":"555-234-5678"}]}"#;
        let (out, _) = run(&e, pr);
        let v = valid(&out.unwrap());
        assert!(v.get("name").is_none(), "{v}");
        assert_eq!(v["telecom"][0]["system"], "phone");
        assert!(v["telecom"][0].get("value").is_none());
    }

    #[test]
    fn extension_siblings_stay_valid() {
        // Found by the fuzzer: a transform matching `birthDate` also reached `_birthDate`
        // and removed its extension's `url`.
        let e = engine(serde_json::json!({"preset": "safe_harbor", "detectors": {"url": {}}}));
        let p = r#"{"resourceType":"Patient","birthDate":"1974-12-25","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1974-12-25T14:35:45-05:00"}]},"active":true}"#;
        let (out, _) = run(&e, p);
        let v = valid(&out.unwrap());
        assert_eq!(v["birthDate"], "1974");
        assert!(v.get("_birthDate").is_none(), "{v}");
        let q = r#"{"resourceType":"Patient","_gender":{"extension":[{"url":"http://example.org/x","valueString":"n/a"}]},"gender":"other"}"#;
        let (out, _) = run(&e, q);
        if let Some(out) = out {
            let v = valid(&out);
            assert_eq!(v["_gender"]["extension"][0]["url"], "http://example.org/x");
        }
    }

    #[test]
    fn existing_meta_gets_the_label_added() {
        let e = engine(
            serde_json::json!({"fhir": [{"path": "Patient.birthDate", "action": "redact"}]}),
        );
        for p in [
            r#"{"resourceType":"Patient","meta":{"versionId":"1"},"birthDate":"1970-01-01","active":true}"#,
            r#"{"resourceType":"Patient","meta":{},"birthDate":"1970-01-01","active":true}"#,
            r#"{"resourceType":"Patient","meta":{"security":[{"code":"N","system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality"}]},"birthDate":"1970-01-01","active":true}"#,
            r#"{"birthDate":"1970-01-01","active":true,"resourceType":"Patient"}"#,
        ] {
            let (out, _) = run(&e, p);
            let v = valid(&out.unwrap());
            assert!(has_label(&v), "{v}");
            assert!(v.get("birthDate").is_none());
        }
    }
}
