//! Criterion benches of body validation: the R4 Patient example (US Core style, ~3 KB), a
//! 1 MB searchset Bundle of Patients and Observations, and an HL7 v2 ADT^A01.
//!
//! `cargo bench --bench validate` (add `-- --quick` for a short run).
//!
//! Group `lex_once`: the token index (`json::Index`) that lets a route's policies share one
//! lexing of a body — building it and iterating it against the tokenizer alone, and
//! validation (+ DLP) on a fresh body against the same through one index.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use ward::fhir::validate::{
    validate_resource, validate_resource_indexed, validate_resource_with, Limits,
};

const PATIENT: &str = include_str!("data/patient.json");
const OBSERVATION: &str = include_str!("data/observation.json");

#[path = "data/bundle.rs"]
mod data;

fn bundle(target: usize) -> String {
    data::bundle(target, PATIENT, OBSERVATION)
}

const ADT_A01: &[u8] = b"MSH|^~\\&|EPICADT|STMARYS^1.2.840.114350^ISO|WARD|HUB|20240315083012.123+0100||ADT^A01^ADT_A01|MSG00001|P|2.5.1|||AL|NE||UNICODE UTF-8\rEVN|A01|20240315083000|||JSMITH^Smith^John\rPID|1||123456^^^STMARYS^MR~987-65-4321^^^USSSA^SS||O'Brien\\T\\Kelly^Mary^Anne^^Ms.^^L~Kelly^Mary^^^^^B||19800101|F|||12 Main St\\S\\Apt 4^^Springfield^IL^62701^USA||(555)555-1234|||M||ACC123\rPV1|1|I|WARD1^101^A^STMARYS||||1234^Welby^Marcus|||MED||||1|||1234^Welby^Marcus|IN||||||||||||||||||||||||||20240315080000\r";

fn fhir(c: &mut Criterion) {
    let limits = Limits {
        max_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    assert!(validate_resource(PATIENT.as_bytes(), &limits, None).is_ok());
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(PATIENT.len() as u64));
    g.bench_function("fhir_patient_example", |b| {
        b.iter(|| {
            black_box(validate_resource(black_box(PATIENT.as_bytes()), &limits, None).is_ok())
        })
    });
    let big = bundle(1024 * 1024);
    assert!(validate_resource(big.as_bytes(), &limits, None).is_ok());
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("fhir_searchset_bundle_1MB", |b| {
        b.iter(|| black_box(validate_resource(black_box(big.as_bytes()), &limits, None).is_ok()))
    });
    let rules = ward::hl7v2::Rules::default();
    assert!(ward::hl7v2::validate(ADT_A01, &rules).is_ok());
    g.throughput(Throughput::Bytes(ADT_A01.len() as u64));
    g.bench_function("hl7v2_adt_a01", |b| {
        b.iter(|| black_box(ward::hl7v2::validate(black_box(ADT_A01), &rules).is_ok()))
    });
    g.finish();
}

fn lex_once(c: &mut Criterion) {
    use ward::json::{Index, Tokenizer, MAX_DEPTH};
    let limits = Limits {
        max_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let cfg: ward::dlp::DlpConfig =
        serde_json::from_value(serde_json::json!({"preset": "safe_harbor"})).expect("config");
    let resolve = |p: &str| std::path::PathBuf::from(p);
    let eng = ward::dlp::Engine::compile(&cfg, &resolve).expect("engine");
    let big = bundle(1024 * 1024);
    let mut g = c.benchmark_group("lex_once");
    for (name, body) in [
        ("patient", PATIENT.as_bytes()),
        ("bundle_1MB", big.as_bytes()),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{name}/tokenizer"), |b| {
            b.iter(|| {
                let mut t = Tokenizer::new(black_box(body), MAX_DEPTH);
                let mut n = 0usize;
                while let Ok(Some(tok)) = t.next() {
                    n += tok.end;
                }
                black_box(n)
            })
        });
        g.bench_function(format!("{name}/index_build_and_iterate"), |b| {
            b.iter(|| {
                let ix = Index::build(black_box(body)).expect("indexed");
                let mut c = ix.cursor(MAX_DEPTH);
                let mut n = 0usize;
                while let Ok(Some(tok)) = c.next() {
                    n += tok.end;
                }
                black_box(n)
            })
        });
        g.bench_function(format!("{name}/validate"), |b| {
            b.iter(|| black_box(validate_resource_with(black_box(body), &limits, None).is_ok()))
        });
        g.bench_function(format!("{name}/index_then_validate"), |b| {
            b.iter(|| {
                let ix = Index::build(black_box(body)).expect("indexed");
                black_box(validate_resource_indexed(body, Some(&ix), &limits, None).is_ok())
            })
        });
        g.bench_function(format!("{name}/validate_and_dlp"), |b| {
            b.iter(|| {
                let ok = validate_resource_with(black_box(body), &limits, None).is_ok();
                let mut r = ward::dlp::Report::default();
                black_box((ok, ward::dlp::json::process(&eng, body, &mut r).is_ok()))
            })
        });
        g.bench_function(format!("{name}/index_then_validate_and_dlp"), |b| {
            b.iter(|| {
                let ix = Index::build(black_box(body)).expect("indexed");
                let ok = validate_resource_indexed(body, Some(&ix), &limits, None).is_ok();
                let mut r = ward::dlp::Report::default();
                let d = ward::dlp::json::process_indexed(&eng, body, Some(&ix), &mut r);
                black_box((ok, d.is_ok()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fhir, lex_once);
criterion_main!(benches);
