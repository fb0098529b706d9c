//! Criterion benches of the per-request hot paths that run for every request before the
//! upstream is contacted: path canonicalisation, header hygiene, rendering a refusal, and a
//! rate-limit check (plus the memory one million tracked keys take).

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
        client_ip: "10.0.0.5".parse().unwrap(),
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

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn rate_limits(c: &mut Criterion) {
    use std::num::NonZeroU32;
    use ward::ratelimit::local::LocalLimiter;
    let quota = governor::Quota::per_second(NonZeroU32::new(1000).unwrap());
    let one = NonZeroU32::MIN;

    // Memory for one million distinct keys (the limiter's own table, measured as the
    // growth of this process's resident set).
    let before = rss_bytes();
    let big = LocalLimiter::new(quota, 2_000_000);
    for i in 0..1_000_000u64 {
        let _ = big.check(&i.to_le_bytes(), one);
    }
    if let (Some(b), Some(a)) = (before, rss_bytes()) {
        println!(
            "rate limit: {} keys held in {:.1} MB ({:.0} bytes/key)",
            big.keys(),
            (a.saturating_sub(b)) as f64 / 1e6,
            (a.saturating_sub(b)) as f64 / big.keys().max(1) as f64
        );
    }

    c.bench_function("ratelimit/check_tracked_key_in_1M", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 1_000_000;
            black_box(big.check(&i.to_le_bytes(), one))
        })
    });
    drop(big);
    let small = LocalLimiter::new(quota, 100_000);
    c.bench_function("ratelimit/check_one_hot_key", |b| {
        b.iter(|| black_box(small.check(b"10.0.0.1", one)))
    });
}

criterion_group!(benches, paths, headers, errors, rate_limits);
criterion_main!(benches);
