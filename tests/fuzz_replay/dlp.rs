// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! The DLP engine (`src/dlp/`) on arbitrary bytes: the JSON walker with FHIR path rules and
//! every action, the HL7 v2 field rules, plain text, and the FHIRPath-subset rule parser.
//!
//! The first input byte picks the target. Beyond "never panics, never hangs", it checks:
//! * a rewritten JSON body is valid JSON whenever the input was;
//! * a rewritten body that was valid FHIR R4 is still valid FHIR R4 (redaction keeps
//!   validity: data-absent-reason for required elements, no empty objects or arrays);
//! * a rewritten HL7 v2 message keeps its segment count and its MSH segment byte for byte;
//! * text and HL7 rewrites only ever replace what was found (report counts are non-zero);
//! * no finding survives: with every value-level detector redacting at confidence 0 (so
//!   context cannot change a verdict), the enforce-mode output of a text or JSON body holds no
//!   detector finding in its canonical form (`dlp/canon.rs`: Unicode digits, invisible
//!   characters, look-alike spaces and dashes, NFKC).

use std::sync::LazyLock;

use ward::dlp::{hl7, json, path, DlpConfig, Engine, Report, TextOutcome};
use ward::fhir::validate::{validate_resource, Limits};

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("ward-fuzz-dlp-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("k"), b"fuzzing-key-fuzzing-key-fuzzing-key!");
    let cfg: DlpConfig = serde_json::from_value(serde_json::json!({
        "preset": "safe_harbor",
        "key_file": "k",
        "detectors": {
            "mrn": {"pattern": "MRN[0-9]{4,}", "action": "hash"},
            "card": {"action": "mask", "keep_last": 4},
            "vip": {"keywords": ["Elvis Presley", "secret"], "action": "report"}
        },
        "fhir": [
            {"path": "Patient.identifier.where(system='http://hl7.org/fhir/sid/us-ssn').value", "action": "redact"},
            {"path": "Observation.status", "action": "redact"},
            {"path": "*.effective", "action": "date_shift"},
            {"path": "Patient.telecom.where(system='phone').value", "action": "mask"},
            {"path": "*.note.text", "action": "hash"},
            {"path": "Encounter.period", "action": "date_shift"}
        ],
        "hl7v2": [
            {"field": "PV1-44", "action": "date_shift"},
            {"field": "OBX-5", "action": "mask"}
        ]
    }))
    .expect("fuzz config");
    let resolve = |f: &str| dir.join(f);
    let problems = cfg.problems(&resolve);
    assert!(problems.is_empty(), "fuzz config: {problems:?}");
    Engine::compile(&cfg, &resolve).expect("fuzz engine")
});

/// Every detector that applies to any value, redacting, at confidence 0, no rules.
static STRICT: LazyLock<Engine> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("ward-fuzz-dlp-strict-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut detectors = serde_json::Map::new();
    for d in ["ssn", "card", "npi", "mbi", "email", "phone", "ip", "vin"] {
        detectors.insert(d.into(), serde_json::json!({"action": "redact"}));
    }
    let cfg: DlpConfig = serde_json::from_value(serde_json::json!({
        "min_confidence": 0,
        "detectors": detectors,
    }))
    .expect("strict fuzz config");
    let resolve = |f: &str| dir.join(f);
    let problems = cfg.problems(&resolve);
    assert!(problems.is_empty(), "strict fuzz config: {problems:?}");
    Engine::compile(&cfg, &resolve).expect("strict fuzz engine")
});

/// Panics if the strict engine still finds something in `out`.
fn assert_no_finding(out: &[u8], what: &str) {
    let mut hits = Vec::new();
    STRICT.scanner.scan(out, &mut hits);
    if let Some(h) = hits.first() {
        panic!(
            "{what}: a finding survived at {}..{}: {:?}\n{}",
            h.start,
            h.end,
            String::from_utf8_lossy(&out[h.start..h.end]),
            String::from_utf8_lossy(out)
        );
    }
}

pub fn fuzz_one(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let e = &*ENGINE;
    let mut r = Report::default();
    match sel % 6 {
        0 => {
            if let Ok(json::JsonOutcome::Rewritten(out)) = json::process(e, body, &mut r) {
                assert!(!r.is_empty(), "rewritten without a finding");
                if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                    assert!(
                        serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
                        "valid JSON in, invalid JSON out:\n{}",
                        String::from_utf8_lossy(&out)
                    );
                }
                let limits = Limits::default();
                if validate_resource(body, &limits, None).is_ok() {
                    if let Err(issues) = validate_resource(&out, &limits, None) {
                        panic!(
                            "valid FHIR in, invalid FHIR out: {issues:?}\n{}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                }
            }
        }
        1 => {
            if let Ok(hl7::Hl7Outcome::Rewritten(out)) = hl7::process(e, body, &mut r) {
                assert!(!r.is_empty(), "rewritten without a finding");
                let segs = |m: &[u8]| m.iter().filter(|&&c| c == b'\r' || c == b'\n').count();
                assert_eq!(segs(body), segs(&out), "segment count changed");
                let msh = |m: &[u8]| {
                    let end = m.iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(m.len());
                    m[..end].to_vec()
                };
                assert_eq!(msh(body), msh(&out), "MSH changed");
            }
        }
        2 => {
            if let TextOutcome::Rewritten(_) = e.process_text(body, &mut r) {
                assert!(!r.is_empty(), "rewritten without a finding");
            }
        }
        3 => {
            if let Ok(s) = std::str::from_utf8(body) {
                let _ = path::parse(s);
            }
        }
        4 => match STRICT.process_text(body, &mut r) {
            TextOutcome::Rewritten(out) => assert_no_finding(&out, "text"),
            TextOutcome::Unchanged => assert_no_finding(body, "unchanged text"),
            _ => {}
        },
        _ => {
            // JSON without escapes (an escaped digit is invisible to a raw re-scan of the
            // output, which would make the check vacuous, not wrong).
            if body.contains(&b'\\') || serde_json::from_slice::<serde_json::Value>(body).is_err() {
                return;
            }
            match json::process(&STRICT, body, &mut r) {
                Ok(json::JsonOutcome::Rewritten(out)) => assert_no_finding(&out, "json"),
                Ok(json::JsonOutcome::Unchanged) => assert_no_finding(body, "unchanged json"),
                _ => {}
            }
        }
    }
}
