//! Criterion benches of DLP: a 1 MB FHIR searchset Bundle (Patients with names, addresses,
//! telecoms and identifiers; Observations, each with a free-text note carrying an SSN, a phone
//! number and a card number) under the `safe_harbor` preset; the same bytes
//! with no PHI in them (the detectors' cost alone); and an ADT^A01.
//!
//! `cargo bench --bench dlp` (add `-- --quick` for a short run). The aim is 500 MB/s per core
//! for the Bundle with Safe Harbor.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use ward::dlp::{DlpConfig, Engine, Report};

#[path = "data/bundle.rs"]
mod data;

const PATIENT: &str = include_str!("data/patient.json");
const OBSERVATION: &str = include_str!("data/observation.json");

fn engine(yaml_json: serde_json::Value) -> Engine {
    let cfg: DlpConfig = serde_json::from_value(yaml_json).expect("config");
    let resolve = |p: &str| std::path::PathBuf::from(p);
    assert!(cfg.problems(&resolve).is_empty());
    Engine::compile(&cfg, &resolve).expect("engine")
}

fn with_notes(obs: &str) -> String {
    obs.trim().replacen(
        "\"status\"",
        "\"note\":[{\"text\":\"Called 555-234-5678 re card 4111 1111 1111 1111, SSN 123-45-6789 on file\"}],\"status\"",
        1,
    )
}

fn fhir(c: &mut Criterion) {
    let safe_harbor = engine(serde_json::json!({"preset": "safe_harbor"}));
    let noted = with_notes(OBSERVATION);
    let big = data::bundle(1024 * 1024, PATIENT, &noted);
    let mut r = Report::default();
    let out = ward::dlp::json::process(&safe_harbor, big.as_bytes(), &mut r);
    assert!(matches!(
        out,
        Ok(ward::dlp::json::JsonOutcome::Rewritten(_))
    ));
    assert!(r.total() > 100, "{}", r.total());
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("bundle_1mb_safe_harbor", |b| {
        b.iter(|| {
            let mut r = Report::default();
            black_box(
                ward::dlp::json::process(&safe_harbor, black_box(big.as_bytes()), &mut r).is_ok(),
            )
        })
    });
    // Detectors only, nothing to find: the cost every clean response pays.
    let detectors = engine(serde_json::json!({"detectors": {
        "ssn": {}, "card": {}, "npi": {}, "mbi": {}, "email": {}, "phone": {}, "ip": {}, "date": {}, "vin": {}, "url": {}
    }}));
    let clean = data::bundle(1024 * 1024, PATIENT, OBSERVATION);
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("bundle_1mb_detectors", |b| {
        b.iter(|| {
            let mut r = Report::default();
            black_box(
                ward::dlp::json::process(&detectors, black_box(clean.as_bytes()), &mut r).is_ok(),
            )
        })
    });
    g.finish();
}

const ADT_A01: &[u8] = b"MSH|^~\\&|EPICADT|STMARYS|WARD|HUB|20240315083012||ADT^A01^ADT_A01|MSG00001|P|2.5.1\rEVN|A01|20240315083000\rPID|1||123456^^^STMARYS^MR||Kelly^Mary^Anne||19800101|F|||12 Main St^^Springfield^IL^62701^USA||(555)555-1234|||M||ACC123|123-45-6789\rPV1|1|I|WARD1^101^A^STMARYS\rNTE|1||Patient called from 555-234-5678\r";

fn hl7(c: &mut Criterion) {
    let e = engine(serde_json::json!({"preset": "safe_harbor"}));
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(ADT_A01.len() as u64));
    g.bench_function("adt_a01_safe_harbor", |b| {
        b.iter(|| {
            let mut r = Report::default();
            black_box(ward::dlp::hl7::process(&e, black_box(ADT_A01), &mut r).is_ok())
        })
    });
    g.finish();
}

criterion_group!(benches, fhir, hl7);
criterion_main!(benches);
