//! Instruction counts per byte for each body-aware consumer, for `valgrind --tool=callgrind`
//! (deterministic where wall-clock benches move 2-5x with machine load).
//!
//! `insns WORKLOAD REPS` runs one workload REPS times and exits; `benches/insns.sh` runs each
//! workload under callgrind with REPS = 1 and REPS = 11 and divides the difference (set-up,
//! input generation and process start cancel out) by 10 x the input's length.

use std::hint::black_box;

use ward::dlp::{DlpConfig, Engine, Report};
use ward::fhir::validate::{validate_resource, Limits};

#[path = "data/bundle.rs"]
mod data;

const PATIENT: &str = include_str!("data/patient.json");
const OBSERVATION: &str = include_str!("data/observation.json");
const ADT_A01: &[u8] = b"MSH|^~\\&|EPICADT|STMARYS|WARD|HUB|20240315083012||ADT^A01^ADT_A01|MSG00001|P|2.5.1\rEVN|A01|20240315083000\rPID|1||123456^^^STMARYS^MR||Kelly^Mary^Anne||19800101|F|||12 Main St^^Springfield^IL^62701^USA||(555)555-1234|||M||ACC123|123-45-6789\rPV1|1|I|WARD1^101^A^STMARYS\rNTE|1||Patient called from 555-234-5678\r";

fn engine(v: serde_json::Value) -> Engine {
    let cfg: DlpConfig = serde_json::from_value(v).expect("config");
    let resolve = |p: &str| std::path::PathBuf::from(p);
    Engine::compile(&cfg, &resolve).expect("engine")
}

fn with_notes(obs: &str) -> String {
    obs.trim().replacen(
        "\"status\"",
        "\"note\":[{\"text\":\"Called 555-234-5678 re card 4111 1111 1111 1111, SSN 123-45-6789 on file\"}],\"status\"",
        1,
    )
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let (Some(work), Some(reps)) = (args.next(), args.next()) else {
        // `cargo bench` runs every bench target with `--bench`: nothing to do here.
        return;
    };
    let reps: usize = reps.parse().expect("REPS");
    let limits = Limits {
        max_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let input: Vec<u8> = match work.as_str() {
        "validate_patient" | "dlp_patient" => PATIENT.as_bytes().to_vec(),
        "validate_bundle" | "dlp_bundle_detectors" => {
            data::bundle(1024 * 1024, PATIENT, OBSERVATION).into_bytes()
        }
        "dlp_bundle_safe_harbor" => {
            data::bundle(1024 * 1024, PATIENT, &with_notes(OBSERVATION)).into_bytes()
        }
        "dlp_adt" => ADT_A01.to_vec(),
        "guard_patient" | "guard_patient_tree" | "index_patient" => PATIENT.as_bytes().to_vec(),
        "index_bundle" => data::bundle(1024 * 1024, PATIENT, OBSERVATION).into_bytes(),
        other => panic!("unknown workload {other}"),
    };
    let safe_harbor = engine(serde_json::json!({"preset": "safe_harbor"}));
    // The same ten detectors as benches/dlp.rs.
    let detectors = engine(serde_json::json!({"detectors": {
        "ssn": {}, "card": {}, "npi": {}, "mbi": {}, "email": {}, "phone": {}, "ip": {}, "date": {}, "vin": {}, "url": {}
    }}));
    eprintln!("bytes {}", input.len());
    for _ in 0..reps {
        let ok = match work.as_str() {
            "validate_patient" | "validate_bundle" => {
                validate_resource(black_box(&input), &limits, None).is_ok()
            }
            "dlp_patient" | "dlp_bundle_safe_harbor" => {
                let mut r = Report::default();
                ward::dlp::json::process(&safe_harbor, black_box(&input), &mut r).is_ok()
            }
            "dlp_bundle_detectors" => {
                let mut r = Report::default();
                ward::dlp::json::process(&detectors, black_box(&input), &mut r).is_ok()
            }
            "dlp_adt" => {
                let mut r = Report::default();
                ward::dlp::hl7::process(&safe_harbor, black_box(&input), &mut r).is_ok()
            }
            // The compartment guard's check of a read answer: on the token stream, and on a
            // serde_json tree as before issue #20 (same binary).
            "guard_patient" => {
                ward::policy::fhir_authz::bench_check_answer(black_box(&input), "example", false)
            }
            "guard_patient_tree" => ward::policy::fhir_authz::bench_check_answer_tree(
                black_box(&input),
                "example",
                false,
            ),
            // The shared lexing alone (`json::LexedBody`'s one pass, issue #20).
            "index_patient" | "index_bundle" => {
                ward::json::Index::build(black_box(&input)).is_some_and(|ix| ix.error().is_none())
            }
            _ => unreachable!(),
        };
        black_box(ok);
    }
}
