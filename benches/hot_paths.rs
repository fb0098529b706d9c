//! Criterion benches of the per-request hot paths that run for every request before the
//! upstream is contacted: path canonicalisation, header hygiene, and rendering a refusal.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn paths(c: &mut Criterion) {
    c.bench_function("path/normalize_canonical", |b| {
        b.iter(|| ward::path::normalize(black_box("/fhir/Patient/example-1/_history/2")))
    });
    c.bench_function("path/normalize_escaped", |b| {
        b.iter(|| ward::path::normalize(black_box("/fhir/Patient/%65xample-1%3Ax")))
    });
    c.bench_function("path/reject_bypass", |b| {
        b.iter(|| ward::path::normalize(black_box("/fhir/%2e%2e/admin")))
    });
}

fn headers(c: &mut Criterion) {
    use http::{HeaderMap, HeaderValue};
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("accept", "application/fhir+json"),
        ("authorization", "Bearer abc.def.ghi"),
        ("user-agent", "bench/1.0"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "6.6.6.6"),
        ("content-type", "application/fhir+json"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let ctx = ward::context::RequestContext {
        request_id: HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        peer: "10.0.0.5:40000".parse().unwrap(),
        listener: std::sync::Arc::from("public"),
        tls: true,
        trusted_peer: false,
        host: "ehr.example".into(),
    };
    c.bench_function("headers/sanitize_and_forward", |b| {
        b.iter(|| {
            let mut h = base.clone();
            let kept = ward::proxy::headers::sanitize_request(&mut h, false);
            ward::proxy::headers::set_forwarding(&mut h, &ctx, kept);
            black_box(h)
        })
    });
}

fn errors(c: &mut Criterion) {
    let rej = ward::error::Rejection::not_found();
    c.bench_function("error/operation_outcome", |b| {
        b.iter(|| ward::error::into_response(black_box(&rej), true, "0123456789abcdef"))
    });
}

criterion_group!(benches, paths, headers, errors);
criterion_main!(benches);
