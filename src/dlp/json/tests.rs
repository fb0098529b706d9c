//! Unit tests of the DLP JSON walker: path rules and `where`, removals and `data-absent-reason`,
//! transforms per patient, free text and narrative, block/clean/malformed outcomes, parser
//! differentials, the Safe Harbor preset, extensions and security labels.

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
    let e =
        engine(serde_json::json!({"fhir": [{"path": "Patient.birthDate", "action": "redact"}]}));
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

/// Regressions for the differentials closed by moving onto the shared lexer (`crate::json`):
/// before it, the walker let through what the validator and `strict_json` refuse — raw
/// control bytes, lone surrogate escapes (read as U+FFFD), invalid UTF-8, numbers such as
/// `01`, `1-2`, `+1`, `.5` — and checked a value it skipped (a redacted or blocked element)
/// only loosely (`[1:2]`, `{"a" "b"}`, duplicates inside). Each is generated in every
/// position the walker reads: a scanned string, a member value it walks, and a value it
/// skips because a rule redacts it.
#[test]
fn shared_lexer_refuses_what_every_reader_refuses() {
    let e = engine(serde_json::json!({
        "detectors": {"ssn": {}},
        "fhir": [{"path": "Patient.name", "action": "redact"}]
    }));
    let mut bad_values: Vec<String> = Vec::new();
    for c in 0u8..0x20 {
        bad_values.push(format!("\"a{}b\"", char::from(c)));
    }
    for s in [
        "\\ud800",
        "\\udfff",
        "\\ud83d\\u0041",
        "\\ude00\\ud83d",
        "\\x",
        "\\u12",
    ] {
        bad_values.push(format!("\"a{s}b\""));
    }
    for n in [
        "01", "1-2", "+1", ".5", "1.", "1e", "--1", "0x1", "1.2.3", "tru", "nul", "Infinity",
    ] {
        bad_values.push(n.to_owned());
    }
    for v in [
        "[1:2]",
        "{\"a\" \"b\"}",
        "{\"a\":1,\"a\":2}",
        "{\"\\u0061\":1,\"a\":2}",
        "[1,]",
        "{,}",
    ] {
        bad_values.push(v.to_owned());
    }
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for v in &bad_values {
        // Walked (free text), walked (unknown member), skipped (redacted by the rule).
        for (member, wrap) in [("text", false), ("x", false), ("name", true)] {
            let value = if wrap { format!("[{v}]") } else { v.clone() };
            bodies.push(
                format!(r#"{{"resourceType":"Patient","{member}":{value},"active":true}}"#)
                    .into_bytes(),
            );
        }
    }
    // Invalid UTF-8 in a string, every lead byte that cannot start a sequence here.
    for lead in [0x80u8, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF] {
        let mut b = br#"{"resourceType":"Patient","name":[{"text":"a"#.to_vec();
        b.push(lead);
        b.extend_from_slice(br#""}],"x":"a"#);
        b.push(lead);
        b.extend_from_slice(br#""}"#);
        bodies.push(b);
    }
    for body in &bodies {
        let mut r = Report::default();
        assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_err()
                || crate::json::check(body, 256).is_err(),
            "test input is valid JSON: {}",
            String::from_utf8_lossy(body)
        );
        assert!(
            process(&e, body, &mut r).is_err(),
            "accepted: {}",
            String::from_utf8_lossy(body)
        );
    }
    // The same shapes, well-formed, still pass.
    for good in [
        r#""a\u0001b""#,
        r#""\ud83d\ude00""#,
        "0",
        "-1.5e3",
        "[1,2]",
        r#"{"a":1,"b":2}"#,
    ] {
        let body = format!(r#"{{"resourceType":"Patient","x":{good},"active":true}}"#);
        let mut r = Report::default();
        assert!(process(&e, body.as_bytes(), &mut r).is_ok(), "{body}");
    }
}
