//! DLP over HL7 v2 ER7 messages (HTTP bodies and MLLP): field rules by position
//! (`PID-19`, `PID-11.5`) and the free-text detectors over every field.
//!
//! Like the JSON walker, the result is a list of byte edits to the original message, so an
//! unchanged message goes on byte for byte and a changed one differs only in the fields
//! that held PHI. Structure is kept: a redacted field is emptied (its delimiters stay), a
//! transformed one is rewritten leaf by leaf (each subcomponent), and every value written
//! is escaped against the message's own delimiters (MSH-1, MSH-2).
//!
//! Free text: the detectors ran once over the whole message; a field containing HL7
//! escapes (`\X3132\`, `\F\`) or a hit that crosses a delimiter is decoded and scanned on
//! its own, so escaping cannot hide a value. MSH is not scanned: it carries routing, not
//! patient data, and rewriting it would break acknowledgements.

use crate::dlp::actions::{self, Action, REDACTED};
use crate::dlp::detect::Hit;
use crate::dlp::{Engine, Report};
use crate::hl7v2::er7::Delimiters;

/// `SEG-F` or `SEG-F.C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldRef {
    pub seg: [u8; 3],
    pub field: u16,
    pub comp: Option<u16>,
}

pub fn parse_field_ref(s: &str) -> Result<FieldRef, String> {
    let err = || format!("`{s}` is not a field reference like `PID-19` or `PID-11.5`");
    let (seg, rest) = s.split_once('-').ok_or_else(err)?;
    let sb = seg.as_bytes();
    if sb.len() != 3
        || !sb[0].is_ascii_uppercase()
        || !sb
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return Err(err());
    }
    if seg == "MSH" {
        return Err("MSH carries routing, not patient data; DLP does not rewrite it".into());
    }
    let (f, c) = match rest.split_once('.') {
        Some((f, c)) => (f, Some(c)),
        None => (rest, None),
    };
    let field: u16 = f.parse().map_err(|_| err())?;
    let comp: Option<u16> = c.map(|c| c.parse().map_err(|_| err())).transpose()?;
    if field == 0 || comp == Some(0) {
        return Err(err());
    }
    Ok(FieldRef {
        seg: [sb[0], sb[1], sb[2]],
        field,
        comp,
    })
}

#[derive(Debug, Default)]
pub struct Hl7Rules {
    rules: Vec<(FieldRef, Action, u16, u16)>,
}

impl Hl7Rules {
    pub fn push(&mut self, at: FieldRef, action: Action, keep_last: u16, label: u16) {
        self.rules.push((at, action, keep_last, label));
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hl7Error {
    /// Not an ER7 message (no MSH, bad delimiters).
    Malformed,
}

pub enum Hl7Outcome {
    Unchanged,
    Rewritten(Vec<u8>),
    Blocked,
}

struct Edit {
    start: usize,
    end: usize,
    text: Vec<u8>,
}

/// Decode HL7 escapes in `raw` (at message offset `base`) with a map back to the message.
/// Formatting escapes (`\.br\`, `\H\`…) decode to nothing.
fn decode_map(
    raw: &[u8],
    base: usize,
    d: &Delimiters,
    out: &mut Vec<u8>,
    map: &mut Vec<(usize, usize)>,
) {
    out.clear();
    map.clear();
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != d.escape {
            out.push(c);
            map.push((base + i, base + i + 1));
            i += 1;
            continue;
        }
        let Some(len) = raw[i + 1..].iter().position(|&x| x == d.escape) else {
            // Unterminated: literal.
            out.push(c);
            map.push((base + i, base + i + 1));
            i += 1;
            continue;
        };
        let body = &raw[i + 1..i + 1 + len];
        let span = (base + i, base + i + len + 2);
        let mut push = |b: u8| {
            out.push(b);
            map.push(span);
        };
        match body {
            b"F" => push(d.field),
            b"S" => push(d.component),
            b"T" => push(d.subcomponent),
            b"R" => push(d.repetition),
            b"E" => push(d.escape),
            x if x.first() == Some(&b'X') && x.len() % 2 == 1 => {
                for pair in x[1..].chunks(2) {
                    let v = std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok());
                    push(v.unwrap_or(b' '));
                }
            }
            // Formatting escapes (`\H\`, `\N\`, `\.br\`) carry no text: nothing, so they
            // cannot split a value in two.
            _ => {}
        }
        i += len + 2;
    }
}

/// Escape `v` for a field of a message with delimiters `d`.
fn escape_into(out: &mut Vec<u8>, v: &[u8], d: &Delimiters) {
    for &c in v {
        let e: Option<&[u8]> = if c == d.escape {
            Some(b"E")
        } else if c == d.field {
            Some(b"F")
        } else if c == d.component {
            Some(b"S")
        } else if c == d.subcomponent {
            Some(b"T")
        } else if c == d.repetition {
            Some(b"R")
        } else if c == b'\r' || c == b'\n' {
            out.push(b' ');
            continue;
        } else {
            None
        };
        match e {
            Some(code) => {
                out.push(d.escape);
                out.extend_from_slice(code);
                out.push(d.escape);
            }
            None => out.push(c),
        }
    }
}

/// Split `s[from..to]` on `sep`: spans.
fn split(s: &[u8], from: usize, to: usize, sep: u8) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    split_into(s, from, to, sep, &mut out);
    out
}

/// [`split`] into a reused buffer (cleared first). `memchr` finds the delimiters: a message
/// is split per segment, field, repetition and component, and a byte loop with its
/// per-byte branch was the largest cost of a small message.
fn split_into(s: &[u8], from: usize, to: usize, sep: u8, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let to = to.min(s.len());
    let from = from.min(to);
    let mut start = from;
    for i in memchr::memchr_iter(sep, &s[from..to]) {
        out.push((start, from + i));
        start = from + i + 1;
    }
    out.push((start, to));
}

/// The byte loop `split` replaced: the oracle of its differential test.
#[cfg(test)]
fn split_oracle(s: &[u8], from: usize, to: usize, sep: u8) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = from;
    for (i, &c) in s.iter().enumerate().take(to).skip(from) {
        if c == sep {
            out.push((start, i));
            start = i + 1;
        }
    }
    out.push((start, to));
    out
}

/// Run DLP over one ER7 message.
pub fn process(eng: &Engine, msg: &[u8], report: &mut Report) -> Result<Hl7Outcome, Hl7Error> {
    if !msg.starts_with(b"MSH") {
        return Err(Hl7Error::Malformed);
    }
    // Segment terminator: `\r` (HL7), `\r\n` tolerated; `\n` alone only if the message has
    // no `\r` at all. A message mixing bare `\n` with `\r` is refused: a receiver splitting
    // only on `\r` would read fields the rules never saw as one segment.
    let has_cr = memchr::memchr(b'\r', msg).is_some();
    if has_cr && memchr::memchr_iter(b'\n', msg).any(|i| i == 0 || msg[i - 1] != b'\r') {
        return Err(Hl7Error::Malformed);
    }
    let term = if has_cr { b'\r' } else { b'\n' };
    let seg_end = |from: usize| memchr::memchr(term, &msg[from..]).map_or(msg.len(), |p| from + p);
    let msh_end = seg_end(0);
    let d = Delimiters::from_msh(&msg[..msh_end]).map_err(|_| Hl7Error::Malformed)?;
    // Segments.
    let mut segs: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < msg.len() {
        if msg[at] == b'\n' {
            at += 1;
            continue;
        }
        let e = seg_end(at);
        if e > at {
            segs.push((at, e));
        }
        at = e + 1;
    }
    // One message per body: a second MSH would bring delimiters the rules never used.
    if segs
        .iter()
        .skip(1)
        .any(|&(s, _)| msg[s..].starts_with(b"MSH"))
    {
        return Err(Hl7Error::Malformed);
    }
    // The patient for date shifts: PID-3, first identifier.
    let patient: Option<Vec<u8>> = segs
        .iter()
        .find(|(s, _)| msg[*s..].starts_with(b"PID"))
        .and_then(|&(s, e)| {
            let fields = split(msg, s, e, d.field);
            let f3 = *fields.get(3)?;
            let rep = *split(msg, f3.0, f3.1, d.repetition).first()?;
            let c1 = *split(msg, rep.0, rep.1, d.component).first()?;
            let v = &msg[c1.0..c1.1];
            (!v.is_empty()).then(|| {
                let mut k = b"PID-3/".to_vec();
                k.extend_from_slice(v);
                k
            })
        });
    let mut hits: Vec<Hit> = Vec::new();
    eng.scanner.scan(msg, &mut hits);
    let mut hit_cur = 0usize;
    let mut edits: Vec<Edit> = Vec::new();
    let mut dec = Vec::new();
    let mut map = Vec::new();
    let mut hits2 = Vec::new();
    // Scratch reused for every segment and field.
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut reps: Vec<(usize, usize)> = Vec::new();
    let mut cs: Vec<(usize, usize)> = Vec::new();
    let mut seg_rules: Vec<(FieldRef, Action, u16, u16)> = Vec::new();
    let mut comps: Vec<(u16, Action, u16, u16)> = Vec::new();
    let mut ruled: Vec<(usize, usize)> = Vec::new();
    let mut field_hits: Vec<(usize, usize, u16)> = Vec::new();
    for (si, &(ss, se)) in segs.iter().enumerate() {
        if si == 0 {
            continue;
        }
        let id = &msg[ss..(ss + 3).min(se)];
        // The rules of this segment, in configuration order.
        seg_rules.clear();
        seg_rules.extend(
            eng.hl7
                .rules
                .iter()
                .filter(|(r, ..)| r.seg.as_slice() == id),
        );
        split_into(msg, ss, se, d.field, &mut fields);
        for (fi, &(fs, fe)) in fields.iter().enumerate().skip(1) {
            let fno = u16::try_from(fi).unwrap_or(u16::MAX);
            // Rules on this field or its components.
            let mut whole: Option<(Action, u16, u16)> = None;
            comps.clear();
            for &(r, act, keep, label) in &seg_rules {
                if r.field != fno {
                    continue;
                }
                match r.comp {
                    None => {
                        whole = Some(match whole {
                            Some(w) if Engine::stronger(w.0, act) => w,
                            _ => (act, keep, label),
                        })
                    }
                    Some(c) => comps.push((c, act, keep, label)),
                }
            }
            ruled.clear();
            if fs < fe {
                if let Some((act, keep, label)) = whole {
                    report.add(label, act);
                    match act {
                        Action::Block => {
                            report.blocked = true;
                            return Ok(Hl7Outcome::Blocked);
                        }
                        Action::Report => {}
                        Action::Redact => {
                            edits.push(Edit {
                                start: fs,
                                end: fe,
                                text: Vec::new(),
                            });
                            ruled.push((fs, fe));
                        }
                        a => {
                            transform_leaves(
                                msg,
                                fs,
                                fe,
                                &d,
                                a,
                                keep,
                                eng,
                                patient.as_deref(),
                                &mut edits,
                            );
                            ruled.push((fs, fe));
                        }
                    }
                }
                if ruled.is_empty() && !comps.is_empty() {
                    split_into(msg, fs, fe, d.repetition, &mut reps);
                    for &rep in &reps {
                        split_into(msg, rep.0, rep.1, d.component, &mut cs);
                        for &(c, act, keep, label) in &comps {
                            let Some(&(a0, a1)) = cs.get(usize::from(c) - 1) else {
                                continue;
                            };
                            if a0 == a1 {
                                continue;
                            }
                            report.add(label, act);
                            match act {
                                Action::Block => {
                                    report.blocked = true;
                                    return Ok(Hl7Outcome::Blocked);
                                }
                                Action::Report => {}
                                Action::Redact => {
                                    edits.push(Edit {
                                        start: a0,
                                        end: a1,
                                        text: Vec::new(),
                                    });
                                    ruled.push((a0, a1));
                                }
                                a => {
                                    transform_leaves(
                                        msg,
                                        a0,
                                        a1,
                                        &d,
                                        a,
                                        keep,
                                        eng,
                                        patient.as_deref(),
                                        &mut edits,
                                    );
                                    ruled.push((a0, a1));
                                }
                            }
                        }
                    }
                }
            }
            // Free text in the parts no rule rewrote.
            let mut first = hit_cur;
            while first < hits.len() && hits[first].end <= fs {
                first += 1;
            }
            let mut last = first;
            let mut rescan = memchr::memchr(d.escape, &msg[fs..fe]).is_some();
            while last < hits.len() && hits[last].start < fe {
                if hits[last].start < fs || hits[last].end > fe {
                    rescan = true;
                }
                last += 1;
            }
            hit_cur = last;
            let in_ruled = |s: usize, e: usize| ruled.iter().any(|&(a, b)| s < b && e > a);
            field_hits.clear();
            if rescan {
                decode_map(&msg[fs..fe], fs, &d, &mut dec, &mut map);
                hits2.clear();
                eng.scanner.scan(&dec, &mut hits2);
                for h in &hits2 {
                    let (Some(a), Some(b)) = (map.get(h.start), map.get(h.end.saturating_sub(1)))
                    else {
                        continue;
                    };
                    field_hits.push((a.0, b.1, h.detector));
                }
            } else {
                for h in &hits[first..last] {
                    field_hits.push((h.start, h.end, h.detector));
                }
            }
            for &(s, e, det) in &field_hits {
                if in_ruled(s, e) {
                    continue;
                }
                let Some(det) = eng.detectors.get(usize::from(det)) else {
                    continue;
                };
                report.add(det.label, det.action);
                let value = {
                    let mut v = Vec::new();
                    let mut m = Vec::new();
                    decode_map(&msg[s..e], s, &d, &mut v, &mut m);
                    v
                };
                let text = match det.action {
                    Action::Block => {
                        report.blocked = true;
                        return Ok(Hl7Outcome::Blocked);
                    }
                    Action::Report => continue,
                    Action::Mask => actions::mask(&value, usize::from(det.keep_last)),
                    Action::Hash => match &eng.keys {
                        Some(k) => k.hash(&value),
                        None => REDACTED.to_vec(),
                    },
                    _ => REDACTED.to_vec(),
                };
                let mut esc = Vec::new();
                escape_into(&mut esc, &text, &d);
                edits.push(Edit {
                    start: s,
                    end: e,
                    text: esc,
                });
            }
        }
    }
    if edits.is_empty() {
        return Ok(Hl7Outcome::Unchanged);
    }
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = Vec::with_capacity(msg.len());
    let mut cur = 0;
    for e in &edits {
        if e.start < cur {
            // Overlap: the earlier edit's text stands for both; the rest of this one's
            // span goes too, so no tail of a finding survives.
            cur = cur.max(e.end);
            continue;
        }
        out.extend_from_slice(&msg[cur..e.start]);
        out.extend_from_slice(&e.text);
        cur = e.end;
    }
    out.extend_from_slice(&msg[cur..]);
    Ok(Hl7Outcome::Rewritten(out))
}

/// Apply a transform to every leaf (subcomponent) of `msg[s..e]`. A leaf the transform
/// cannot handle is emptied.
#[allow(clippy::too_many_arguments)]
fn transform_leaves(
    msg: &[u8],
    s: usize,
    e: usize,
    d: &Delimiters,
    act: Action,
    keep: u16,
    eng: &Engine,
    patient: Option<&[u8]>,
    edits: &mut Vec<Edit>,
) {
    let mut dec = Vec::new();
    let mut map = Vec::new();
    for rep in split(msg, s, e, d.repetition) {
        for comp in split(msg, rep.0, rep.1, d.component) {
            for (a, b) in split(msg, comp.0, comp.1, d.subcomponent) {
                if a == b {
                    continue;
                }
                decode_map(&msg[a..b], a, d, &mut dec, &mut map);
                let new: Option<Vec<u8>> = match act {
                    Action::Mask => Some(actions::mask(&dec, usize::from(keep))),
                    Action::Hash => eng.keys.as_ref().map(|k| k.hash(&dec)),
                    Action::DateShift => match (patient, &eng.keys) {
                        (Some(p), Some(k)) => {
                            actions::date_shift(&dec, k.shift_days(p, eng.date_shift_days), false)
                        }
                        _ => actions::generalize(&dec, false).filter(|g| g.len() == 4),
                    },
                    Action::Generalize => actions::generalize(&dec, false),
                    _ => None,
                };
                let mut text = Vec::new();
                if let Some(n) = new {
                    if n == dec {
                        continue;
                    }
                    escape_into(&mut text, &n, d);
                }
                edits.push(Edit {
                    start: a,
                    end: b,
                    text,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::DlpConfig;

    fn engine(cfg: serde_json::Value) -> Engine {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ward-dlp-hl7-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), [0x5au8; 32]).unwrap();
        let mut cfg = cfg;
        cfg["key_file"] = serde_json::Value::String("k".into());
        let c: DlpConfig = serde_json::from_value(cfg).unwrap();
        let resolve = |f: &str| dir.join(f);
        assert!(c.problems(&resolve).is_empty());
        Engine::compile(&c, &resolve).unwrap()
    }

    const ADT: &str = "MSH|^~\\&|ADT|HOSP|EHR|HOSP|20240101120000||ADT^A01|MSG0001|P|2.5\r\
EVN|A01|20240101120000\r\
PID|1||MRN12345^^^HOSP^MR||DOE^JANE^Q||19700314|F|||1 MAIN ST^^BOSTON^MA^02139^USA||(555)234-5678|||||ACCT9|123-45-6789\r\
PV1|1|I|W^101^1\r\
NTE|1||patient SSN 123-45-6789 called from 555-234-5678\r";

    fn run(e: &Engine, m: &str) -> (Option<String>, Report) {
        let mut r = Report::default();
        match process(e, m.as_bytes(), &mut r).unwrap() {
            Hl7Outcome::Unchanged => (None, r),
            Hl7Outcome::Rewritten(b) => (Some(String::from_utf8(b).unwrap()), r),
            Hl7Outcome::Blocked => (Some("BLOCKED".into()), r),
        }
    }

    fn field<'a>(m: &'a str, seg: &str, n: usize) -> &'a str {
        let line = m.split('\r').find(|l| l.starts_with(seg)).unwrap();
        line.split('|').nth(n).unwrap_or("")
    }

    #[test]
    fn field_rules_by_position() {
        let e = engine(serde_json::json!({"hl7v2": [
            {"field": "PID-19", "action": "redact"},
            {"field": "PID-5", "action": "hash"},
            {"field": "PID-7", "action": "generalize"},
            {"field": "PID-11.5", "action": "generalize"},
            {"field": "PID-13", "action": "mask", "keep_last": 4}
        ]}));
        let (out, rep) = run(&e, ADT);
        let out = out.unwrap();
        assert_eq!(field(&out, "PID", 19), "");
        assert_eq!(field(&out, "PID", 7), "1970");
        assert_eq!(field(&out, "PID", 11), "1 MAIN ST^^BOSTON^MA^021^USA");
        assert_eq!(field(&out, "PID", 13), "(***)***-5678");
        let name = field(&out, "PID", 5);
        let parts: Vec<&str> = name.split('^').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() == 32), "{name}");
        // Segment count and other fields unchanged.
        assert_eq!(out.matches('\r').count(), ADT.matches('\r').count());
        assert_eq!(field(&out, "PID", 3), "MRN12345^^^HOSP^MR");
        assert_eq!(field(&out, "MSH", 8), "ADT^A01");
        assert_eq!(rep.counts.len(), 5);
    }

    #[test]
    fn free_text_in_fields_and_escapes() {
        let e = engine(serde_json::json!({"detectors": {"ssn": {}, "phone": {}}}));
        let (out, _) = run(&e, ADT);
        let out = out.unwrap();
        assert!(!out.contains("123-45-6789"), "{out}");
        assert!(!out.contains("234-5678"), "{out}");
        assert_eq!(
            field(&out, "NTE", 3),
            "patient SSN [REDACTED] called from [REDACTED]"
        );
        // Hex-escaped digits are decoded before scanning.
        let hidden = ADT.replace(
            "NTE|1||patient SSN 123-45-6789",
            "NTE|1||patient SSN \\X3132\\3-45-6789",
        );
        let (out, _) = run(&e, &hidden);
        assert!(!out.unwrap().contains("45-6789"));
    }

    #[test]
    fn date_shift_uses_the_patient_and_block_refuses() {
        let e = engine(serde_json::json!({"hl7v2": [{"field": "PID-7", "action": "date_shift"}]}));
        let (a, _) = run(&e, ADT);
        let (b, _) = run(&e, ADT);
        let a = a.unwrap();
        assert_eq!(a, b.unwrap());
        let d = field(&a, "PID", 7);
        assert_eq!(d.len(), 8);
        assert_ne!(d, "19700314");
        // Other patients move by other amounts.
        let mut dates = std::collections::HashSet::new();
        for i in 0..20 {
            let other = ADT.replace("MRN12345", &format!("MRN{i}"));
            let (c, _) = run(&e, &other);
            dates.insert(field(&c.unwrap(), "PID", 7).to_owned());
        }
        assert!(dates.len() > 10, "{dates:?}");
        let e = engine(serde_json::json!({"hl7v2": [{"field": "PID-19", "action": "block"}]}));
        assert_eq!(run(&e, ADT).0.as_deref(), Some("BLOCKED"));
        assert!(parse_field_ref("MSH-3").is_err());
        assert!(parse_field_ref("PID").is_err());
        assert!(parse_field_ref("PID-0").is_err());
        assert!(parse_field_ref("pid-3").is_err());
        assert_eq!(parse_field_ref("PID-11.5").unwrap().comp, Some(5));
        let mut r = Report::default();
        assert!(process(&e, b"EVN|A01\r", &mut r).is_err());
        // A bare LF among CRs, and a second message, are refused (receivers would read
        // segments the rules never saw).
        let mixed = ADT.replace("PID|1||MRN12345^^^HOSP^MR||", "PID|1||MRN12345\n||");
        assert!(process(&e, mixed.as_bytes(), &mut r).is_err());
        let two = format!("{ADT}{ADT}");
        assert!(process(&e, two.as_bytes(), &mut r).is_err());
        // LF-only messages are read with LF as the terminator.
        let lf = ADT.replace('\r', "\n");
        assert_eq!(
            run(&e, &lf).0.as_deref(),
            Some("BLOCKED"),
            "PID-19 found in an LF-terminated message"
        );
    }

    /// `split` (memchr into a reused buffer) gives exactly the spans of the byte loop it
    /// replaced, for generated messages and every `from..to` window, including empty ones,
    /// windows at the ends and delimiters first or last.
    #[test]
    fn split_equals_the_old_byte_loop() {
        let alphabet = b"|^~\\&\rAB12 ";
        let mut seed = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buf = Vec::new();
        for _ in 0..100 {
            let n = (next() % 60) as usize;
            let msg: Vec<u8> = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for from in 0..=msg.len() {
                for to in from..=msg.len() {
                    for &sep in b"|^~&\r" {
                        split_into(&msg, from, to, sep, &mut buf);
                        assert_eq!(buf, split_oracle(&msg, from, to, sep));
                        assert_eq!(split(&msg, from, to, sep), buf);
                    }
                }
            }
        }
    }
}
