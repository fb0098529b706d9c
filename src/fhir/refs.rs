//! Which patient a FHIR reference (in a written resource, or in a search parameter) can
//! resolve to, judged the strict way a patient-context token needs.
//!
//! A reference is only trusted to name the token's patient in its canonical relative form
//! (`Patient/{id}`, optionally `/_history/{vid}`). Absolute references to this server (the
//! route's public base as the client addressed it, or the upstream's base) are read as
//! relative; an absolute reference to any other server that could name a patient is
//! refused, as is every spelling a server might resolve differently from us: other case
//! (`patient/b`), percent-encoding (`Patient/%41`), dot segments (`../Patient/b`),
//! conditional references (`Patient?identifier=…`), logical references (`type` +
//! `identifier`), contained Patients, and `urn:uuid:` references that do not resolve to an
//! entry of the same Bundle.

use std::collections::HashMap;

use serde_json::Value;

/// The absolute bases under which a reference means "this server".
#[derive(Debug, Clone, Default)]
pub struct Bases(Vec<String>);

impl Bases {
    /// Bases as `scheme://authority[/path]`; trailing slashes are ignored.
    pub fn new(bases: impl IntoIterator<Item = String>) -> Bases {
        let mut v: Vec<String> = bases
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_owned())
            .filter(|b| b.contains("://"))
            .collect();
        // Longest first: `https://h/fhir` must win over `https://h` for `https://h/fhir/…`.
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v.dedup();
        Bases(v)
    }

    /// The reference relative to this server: itself if already relative, the rest after a
    /// local base, `None` for an absolute reference elsewhere. Scheme and authority compare
    /// without case (RFC 3986 6.2.2.1), the path exactly.
    pub fn localize<'a>(&self, r: &'a str) -> Option<&'a str> {
        let Some(sep) = r.find("://") else {
            return Some(r);
        };
        // `Patient/a?x=http://...`: the scheme must come before any path or query.
        if r[..sep].contains(['/', '?', '#']) {
            return Some(r);
        }
        for b in &self.0 {
            let Some(bsep) = b.find("://") else { continue };
            let authority_end = b[bsep + 3..].find('/').map_or(b.len(), |i| bsep + 3 + i);
            let (b_origin, b_path) = b.split_at(authority_end);
            let Some(head) = r.get(..b_origin.len()) else {
                continue;
            };
            if !head.eq_ignore_ascii_case(b_origin) {
                continue;
            }
            let rest = &r[b_origin.len()..];
            if let Some(rel) = rest.strip_prefix(b_path).and_then(|x| x.strip_prefix('/')) {
                return Some(rel);
            }
        }
        None
    }
}

/// `[A-Za-z0-9\-\.]{1,64}`.
fn is_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Patient/{pid}` or `Patient/{pid}/_history/{vid}`, exactly.
pub fn is_own_patient(r: &str, pid: &str) -> bool {
    match r.strip_prefix("Patient/").and_then(|x| x.strip_prefix(pid)) {
        Some("") => true,
        Some(rest) => rest.strip_prefix("/_history/").is_some_and(is_id),
        None => false,
    }
}

/// Percent-decode (repeatedly, a few rounds) so that `Pati%65nt` and `%2550` are seen for
/// what a lenient server might make of them. Invalid escapes stay as they are.
fn decoded(s: &str) -> String {
    let mut cur = s.to_owned();
    for _ in 0..4 {
        if !cur.contains('%') {
            break;
        }
        let b = cur.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
                (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

/// Could a server read this (already localized) relative reference as some Patient?
/// Looks through encodings and case: any path segment spelling "patient".
fn mentions_patient(rel: &str) -> bool {
    let d = decoded(rel);
    d.split(['/', '?', '&', '=', '#', '|', ','])
        .any(|seg| seg.trim().eq_ignore_ascii_case("patient"))
        || d.to_ascii_lowercase().contains("patient?")
}

/// Entries of a transaction/batch Bundle that `urn:` references may point at: fullUrl →
/// `Some(id)` for a Patient entry (its id, if any), `None` for any other type.
pub type UrnTargets = HashMap<String, Option<String>>;

/// Collect the `urn:uuid:` / `urn:oid:` full URLs of a Bundle's entries.
pub fn urn_targets(bundle: &Value) -> UrnTargets {
    let mut out = UrnTargets::new();
    for e in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(full) = e.get("fullUrl").and_then(Value::as_str) else {
            continue;
        };
        if !full.to_ascii_lowercase().starts_with("urn:") {
            continue;
        }
        let r = e.get("resource");
        let is_patient = r
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
            == Some("Patient");
        let id = r
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.insert(
            full.to_owned(),
            if is_patient {
                Some(id.unwrap_or_default())
            } else {
                None
            },
        );
    }
    out
}

/// Is a reference string in a patient-context write acceptable: it cannot resolve to a
/// Patient other than `pid`.
pub fn written_reference_ok(r: &str, pid: &str, bases: &Bases, urns: &UrnTargets) -> bool {
    if r.starts_with('#') {
        // Contained: a contained Patient is refused where it sits.
        return true;
    }
    if r.len() >= 4 && r[..4].eq_ignore_ascii_case("urn:") {
        return match urns.get(r) {
            Some(Some(id)) => id == pid,
            Some(None) => true,
            // Unresolvable here: the server might resolve it to anything.
            None => false,
        };
    }
    let Some(rel) = bases.localize(r) else {
        // Another server: only if it cannot be read as a Patient.
        return !mentions_patient(r);
    };
    if is_own_patient(rel, pid) {
        return true;
    }
    if rel.is_empty() || rel.starts_with('/') {
        return false;
    }
    if rel
        .split(['/', '?'])
        .any(|seg| matches!(decoded(seg).as_str(), "." | ".."))
    {
        return false;
    }
    // A conditional reference is resolved by search: only when its type is spelled out
    // (and is not Patient) is it known not to land on a patient.
    if let Some((t, _)) = rel.split_once('?') {
        if !super::is_resource_type(t) {
            return false;
        }
    }
    !mentions_patient(rel)
}

/// The members a `Reference` may have; an object made only of these with an `identifier`
/// is a logical reference.
const REFERENCE_KEYS: &[&str] = &[
    "id",
    "extension",
    "reference",
    "type",
    "identifier",
    "display",
];

/// Walk everything below a written resource and refuse any reference that may resolve to
/// another patient: `reference` strings at any path (extensions, contained resources,
/// `link.other`, `focus`, ...), logical references that could be Patients, and contained
/// Patient resources. `top` is the resource being written (its own `resourceType` is not a
/// contained one).
pub fn written_resource_ok(v: &Value, pid: &str, bases: &Bases, urns: &UrnTargets) -> bool {
    fn walk(v: &Value, top: bool, pid: &str, bases: &Bases, urns: &UrnTargets) -> bool {
        match v {
            Value::Object(m) => {
                if !top
                    && m.get("resourceType")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case("Patient"))
                {
                    return false;
                }
                if let Some(r) = m.get("reference") {
                    let Some(r) = r.as_str() else { return false };
                    if !written_reference_ok(r, pid, bases, urns) {
                        return false;
                    }
                }
                let type_patient = m.get("type").and_then(Value::as_str).map(|t| {
                    let t = decoded(t);
                    t.eq_ignore_ascii_case("Patient")
                        || t.to_ascii_lowercase().ends_with("/patient")
                });
                let is_reference = m.contains_key("identifier")
                    && m.keys().all(|k| REFERENCE_KEYS.contains(&k.as_str()));
                if is_reference && !m.contains_key("reference") && type_patient != Some(false) {
                    // A logical reference to a Patient (or of unknown type): the server
                    // would resolve it by identifier, across all patients.
                    return false;
                }
                if type_patient == Some(true) {
                    // `type: Patient` with a reference must be exactly the own patient.
                    let own = m
                        .get("reference")
                        .and_then(Value::as_str)
                        .and_then(|r| bases.localize(r))
                        .is_some_and(|r| is_own_patient(r, pid));
                    let resolved = m
                        .get("reference")
                        .and_then(Value::as_str)
                        .is_some_and(|r| matches!(urns.get(r), Some(Some(id)) if id == pid));
                    if !(own || resolved || m.contains_key("resourceType")) {
                        return false;
                    }
                }
                m.values().all(|x| walk(x, false, pid, bases, urns))
            }
            Value::Array(a) => a.iter().all(|x| walk(x, false, pid, bases, urns)),
            _ => true,
        }
    }
    walk(v, true, pid, bases, urns)
}

/// A search-parameter value that names patients (`a`, `Patient/a`, an OR-list, absolute
/// URLs): `Some(canonical)` when every item names `pid` (absolute ones on a local base are
/// rewritten relative), `None` when any item could name someone else.
pub fn search_value_for_patient(value: &str, pid: &str, bases: &Bases) -> Option<String> {
    let mut out = Vec::new();
    for item in value.split(',') {
        if item == pid {
            out.push(item.to_owned());
            continue;
        }
        let rel = bases.localize(item)?;
        if !is_own_patient(rel, pid) {
            return None;
        }
        out.push(rel.to_owned());
    }
    Some(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bases() -> Bases {
        Bases::new([
            "https://gw.example:8443/fhir".to_owned(),
            "http://ehr.internal:8080/r4/".to_owned(),
            "http://ehr.internal:8080".to_owned(),
        ])
    }

    #[test]
    fn localize() {
        let b = bases();
        assert_eq!(b.localize("Patient/a"), Some("Patient/a"));
        assert_eq!(
            b.localize("https://gw.example:8443/fhir/Patient/a"),
            Some("Patient/a")
        );
        assert_eq!(
            b.localize("HTTPS://GW.example:8443/fhir/Patient/a"),
            Some("Patient/a")
        );
        assert_eq!(
            b.localize("http://ehr.internal:8080/r4/Patient/a"),
            Some("Patient/a")
        );
        assert_eq!(b.localize("https://gw.example:8443/fhirx/Patient/a"), None);
        assert_eq!(b.localize("https://gw.example/fhir/Patient/a"), None);
        assert_eq!(b.localize("https://evil.example/fhir/Patient/a"), None);
        assert_eq!(
            b.localize("https://gw.example:8443.evil/fhir/Patient/a"),
            None
        );
    }

    /// Every spelling of another patient, in every place a reference can sit, is refused;
    /// the own patient in the canonical forms is accepted.
    #[test]
    fn written_references_generated() {
        let b = bases();
        let urns: UrnTargets = [
            ("urn:uuid:p-b".to_owned(), Some("b".to_owned())),
            ("urn:uuid:p-a".to_owned(), Some("a".to_owned())),
            ("urn:uuid:obs".to_owned(), None),
        ]
        .into_iter()
        .collect();
        let bad_refs = [
            "Patient/b",
            "Patient/b/_history/1",
            "patient/b",
            "PATIENT/a",
            "Patient/%61",
            "Patient/%2561",
            "Pati%65nt/b",
            "Patient%2Fb",
            "../Patient/b",
            "./Patient/a",
            "/fhir/Patient/b",
            "Patient/a/../b",
            "Patient?identifier=mrn|b",
            "Patient?_id=a",
            "?identifier=mrn|b",
            "Foo?identifier=x",
            "Group?member=Patient/b",
            "https://gw.example:8443/fhir/Patient/b",
            "https://evil.example/fhir/Patient/a",
            "http://ehr.internal:8080/r4/Patient/b/_history/2",
            "urn:uuid:p-b",
            "urn:uuid:unknown",
            "Patient/a/Patient/b",
            "Patient/a?x=1",
            " Patient/b",
        ];
        let good_refs = [
            "Patient/a",
            "Patient/a/_history/7",
            "https://gw.example:8443/fhir/Patient/a",
            "http://ehr.internal:8080/r4/Patient/a",
            "urn:uuid:p-a",
            "urn:uuid:obs",
            "Practitioner/p1",
            "#c1",
            "Practitioner?identifier=x",
            "https://other.example/fhir/Practitioner/9",
        ];
        let place = |r: &str| -> Vec<Value> {
            let rf = json!({"reference": r});
            vec![
                json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}, "focus": [rf]}),
                json!({"resourceType": "Patient", "id": "a", "link": [{"other": rf, "type": "seealso"}]}),
                json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}, "extension": [{"url": "x", "valueReference": rf}]}),
                json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}, "contained": [{"resourceType": "Provenance", "id": "c1", "target": [rf]}]}),
                json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}, "component": [{"extension": [{"url": "y", "extension": [{"url": "z", "valueReference": rf}]}]}]}),
            ]
        };
        for r in bad_refs {
            for res in place(r) {
                assert!(
                    !written_resource_ok(&res, "a", &b, &urns),
                    "{r} accepted in {res}"
                );
            }
        }
        for r in good_refs {
            for res in place(r) {
                assert!(
                    written_resource_ok(&res, "a", &b, &urns),
                    "{r} refused in {res}"
                );
            }
        }
        // Logical references and contained Patients.
        for bad in [
            json!({"resourceType": "Observation", "subject": {"type": "Patient", "identifier": {"system": "mrn", "value": "b"}}}),
            json!({"resourceType": "Observation", "focus": [{"identifier": {"system": "mrn", "value": "b"}}]}),
            json!({"resourceType": "Observation", "focus": [{"type": "http://hl7.org/fhir/StructureDefinition/Patient", "identifier": {"value": "b"}}]}),
            json!({"resourceType": "Observation", "focus": [{"type": "Patient", "reference": "Group/g"}]}),
            json!({"resourceType": "Observation", "contained": [{"resourceType": "Patient", "id": "p"}], "subject": {"reference": "#p"}}),
            json!({"resourceType": "Observation", "focus": [{"reference": 5}]}),
        ] {
            assert!(!written_resource_ok(&bad, "a", &b, &urns), "{bad}");
        }
        let ok = json!({"resourceType": "Observation", "performer": [{"type": "Practitioner", "identifier": {"value": "x"}}]});
        assert!(written_resource_ok(&ok, "a", &b, &urns));
    }

    #[test]
    fn search_values() {
        let b = bases();
        assert_eq!(search_value_for_patient("a", "a", &b).as_deref(), Some("a"));
        assert_eq!(
            search_value_for_patient("https://gw.example:8443/fhir/Patient/a,Patient/a", "a", &b)
                .as_deref(),
            Some("Patient/a,Patient/a")
        );
        for bad in [
            "b",
            "a,b",
            "Patient/b",
            "patient/a",
            "Patient/%61",
            "https://evil.example/fhir/Patient/a",
            "https://gw.example:8443/fhir/Patient/b",
            "",
            "Patient?identifier=a",
        ] {
            assert_eq!(search_value_for_patient(bad, "a", &b), None, "{bad}");
        }
    }
}
