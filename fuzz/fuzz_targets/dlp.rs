//! The DLP engine (`src/dlp/`) on arbitrary bytes: the JSON walker with FHIR path rules and
//! every action, the HL7 v2 field rules, plain text, and the FHIRPath-subset rule parser.
//!
//! The first input byte picks the target. Beyond "never panics, never hangs", it checks:
//! * a rewritten JSON body is valid JSON whenever the input was;
//! * a rewritten body that was valid FHIR R4 is still valid FHIR R4 (redaction keeps
//!   validity: data-absent-reason for required elements, no empty objects or arrays);
//! * a rewritten HL7 v2 message keeps its segment count and its MSH segment byte for byte;
//! * text and HL7 rewrites only ever replace what was found (report counts are non-zero).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ward_fuzz::dlp::{hl7, json, path, DlpConfig, Engine, Report, TextOutcome};
use ward_fuzz::fhir::validate::{validate_resource, Limits};

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

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let e = &*ENGINE;
    let mut r = Report::default();
    match sel % 4 {
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
        _ => {
            if let Ok(s) = std::str::from_utf8(body) {
                let _ = path::parse(s);
            }
        }
    }
});
