//! Criterion benches of the per-request hot paths that run for every request before the
//! upstream is contacted: path canonicalisation, header hygiene, rendering a refusal, and a
//! rate-limit check (plus the memory one million tracked keys take); the audit trail's
//! per-request cost (a record queued, written and synced with `durability: fsync`, on tmpfs
//! so the figure is the gateway's CPU, not the disk); and per FHIR answer on a patient route,
//! the compartment guard's check and the base-URL rewrite. And the access log line of one
//! request: through `tracing::info!` and `tracing_subscriber::fmt` (the old path) against
//! the direct writer (`ward::accesslog`), both into the batching log writer.

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

/// The fields an HTTP request's record carried when the `audit` policy gathered them into
/// a `serde_json::Map` (before typed records).
fn audit_fields(i: u64) -> serde_json::Map<String, serde_json::Value> {
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    let mut m = serde_json::Map::new();
    m.insert("time".into(), s("2026-12-05T06:20:00.123Z"));
    m.insert("kind".into(), s("http"));
    m.insert(
        "request_id".into(),
        s(&format!("5b0d7c1e-1f5a-4c55-9a57-{i:012}")),
    );
    m.insert("listener".into(), s("public"));
    m.insert("client_ip".into(), s("10.1.2.3"));
    m.insert("route".into(), s("fhir"));
    m.insert("method".into(), s("GET"));
    m.insert("cert_subject".into(), s("CN=ehr-client,O=Example Hospital"));
    m.insert(
        "cert_sha256".into(),
        s("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    );
    m.insert("fhir_interaction".into(), s("read"));
    m.insert("resource_type".into(), s("Patient"));
    m.insert("resource_id".into(), s("p1"));
    m.insert("iss".into(), s("https://idp.example.org"));
    m.insert("sub".into(), s("practitioner-42"));
    m.insert("client_id".into(), s("ehr-app"));
    m.insert("decision".into(), s("allow"));
    m.insert("status".into(), serde_json::Value::from(200));
    m.insert("upstream_status".into(), serde_json::Value::from(200));
    m
}

/// The audit trail's line for one record as it was made before typed records: the fields
/// gathered into a `serde_json::Map` (a BTreeMap) on the request path, then each member
/// printed to its own `String`, the line `format!`ed and hashed. Kept here as the
/// reference the typed writer is compared with.
fn seal_as_before(fields: serde_json::Map<String, serde_json::Value>, prev: &str) -> String {
    let mut body = format!("{{\"seq\":1,\"prev\":\"{prev}\"");
    for (k, v) in fields {
        body.push(',');
        body.push_str(&serde_json::Value::String(k).to_string());
        body.push(':');
        body.push_str(&v.to_string());
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(body.as_bytes());
    let hash = hex::encode(ctx.finish());
    format!("{body},\"hash\":\"{hash}\"}}\n")
}

/// The same record, typed, as the `audit` policy now builds it from the request's
/// extensions (shared handles; the strings are made once, outside the loop).
struct Facts {
    identity: std::sync::Arc<ward::identity::ClientIdentity>,
    claims: std::sync::Arc<ward::context::Claims>,
    fhir: std::sync::Arc<ward::fhir::request::FhirRequest>,
    listener: std::sync::Arc<str>,
    route: std::sync::Arc<str>,
}

fn facts() -> Facts {
    Facts {
        identity: std::sync::Arc::new(ward::identity::ClientIdentity {
            subject_cn: Some("ehr-client".into()),
            subject: "CN=ehr-client,O=Example Hospital".into(),
            issuer: "CN=Example CA".into(),
            issuer_cn: None,
            dns_sans: Vec::new(),
            uri_sans: Vec::new(),
            email_sans: Vec::new(),
            spki_sha256: String::new(),
            x5t_s256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            cert_sha256: String::new(),
            client_auth_eku: true,
            serial: "01".into(),
            not_after: 0,
        }),
        claims: std::sync::Arc::new(ward::context::Claims {
            provider: "idp".into(),
            iss: "https://idp.example.org".into(),
            sub: "practitioner-42".into(),
            client_id: Some("ehr-app".into()),
            scopes: Vec::new(),
            patient: None,
            exp: 0,
            cnf_x5t: None,
            cnf_present: false,
            raw: serde_json::Map::new(),
        }),
        fhir: std::sync::Arc::new(ward::fhir::request::FhirRequest {
            interaction: ward::fhir::request::Interaction::Read,
            resource_type: Some("Patient"),
            id: Some("p1".into()),
            version: None,
            compartment: None,
            operation: None,
            conditional: false,
            params: Vec::new(),
            format: None,
        }),
        listener: "public".into(),
        route: "fhir".into(),
    }
}

fn http_record(f: &Facts, rid: &http::HeaderValue) -> ward::audit::HttpRecord {
    let mut r = ward::audit::HttpRecord::new("2026-12-05T06:20:00.123Z".into(), http::Method::GET);
    r.request_id = Some(rid.clone());
    r.listener = Some(f.listener.clone());
    r.client_ip = Some(std::net::IpAddr::from([10, 1, 2, 3]));
    r.route = Some(f.route.clone());
    r.identity = Some(f.identity.clone());
    r.fhir = Some(f.fhir.clone());
    r.claims = Some(f.claims.clone());
    r.decision = "allow";
    r.status = 200;
    r.upstream_status = Some(200);
    r
}

fn audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // tmpfs where there is one: fdatasync is then nearly free and what is left is CPU.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let metrics = ward::metrics::Metrics::new();
    let cfg: ward::audit::AuditConfig = serde_json::from_value(serde_json::json!({
        "path": "audit.jsonl",
        "durability": "fsync",
        "max_bytes": 1u64 << 40,
    }))
    .unwrap();
    let log = rt
        .block_on(async { ward::audit::AuditLog::start(&cfg, &|f| dir.path().join(f), &metrics) })
        .unwrap();
    // Serialisation of one record (request-path gathering + the writer's line and hash).
    let prev = "0".repeat(64);
    c.bench_function("audit/line_as_before_map", |b| {
        b.iter(|| black_box(seal_as_before(audit_fields(7), &prev)))
    });
    let f = facts();
    let rid = http::HeaderValue::from_static("5b0d7c1e-1f5a-4c55-9a57-000000000007");
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("audit/line_typed_record", |b| {
        b.iter(|| {
            buf.clear();
            ward::audit::seal_for_bench(&http_record(&f, &rid), &mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("audit/record_fsync_tmpfs_one_at_a_time", |b| {
        b.to_async(&rt).iter(|| {
            let r = http_record(&f, &rid);
            let log = &log;
            async move { log.record(r).await.unwrap() }
        })
    });
    // 64 requests finishing together: one batch, one write, one fdatasync (per iteration).
    c.bench_function("audit/record_fsync_tmpfs_64_concurrent", |b| {
        b.to_async(&rt).iter(|| {
            let log = log.clone();
            let records: Vec<_> = (0..64).map(|_| http_record(&f, &rid)).collect();
            async move {
                let mut set = tokio::task::JoinSet::new();
                for r in records {
                    let l = log.clone();
                    set.spawn(async move { l.record(r).await.is_ok() });
                }
                while let Some(r) = set.join_next().await {
                    assert!(matches!(r, Ok(true)));
                }
            }
        })
    });
}

/// A Patient of about 2 KB; `host`: where its URLs point.
fn patient(id: &str, host: &str) -> String {
    let mut names = String::new();
    for i in 0..6 {
        names.push_str(&format!(
            r#"{{"use":"official","family":"Family{i}","given":["Given{i}","Middle{i}"],"period":{{"start":"2001-01-0{}"}}}},"#,
            i + 1
        ));
    }
    names.pop();
    format!(
        r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"3","lastUpdated":"2024-05-01T10:00:00Z","source":"https://{host}/fhir"}},"text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Patient {id}, born 1970-01-01 &amp; living at 1 Main St</div>"}},"identifier":[{{"system":"https://{host}/fhir/sid/mrn","value":"MRN-{id}"}},{{"system":"http://hl7.org/fhir/sid/us-ssn","value":"000-00-0000"}}],"active":true,"name":[{names}],"telecom":[{{"system":"phone","value":"+1 555 0100","use":"home"}},{{"system":"email","value":"p{id}@example.org"}}],"gender":"female","birthDate":"1970-01-01","address":[{{"use":"home","line":["1 Main St","Apt 2"],"city":"Springfield","state":"IL","postalCode":"62701","country":"US"}}],"maritalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"M","display":"Married"}}]}},"contact":[{{"relationship":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0131","code":"N"}}]}}],"name":{{"family":"Contact","given":["Next"]}},"telecom":[{{"system":"phone","value":"+1 555 0199"}}]}}],"communication":[{{"language":{{"coding":[{{"system":"urn:ietf:bcp:47","code":"en-US"}}]}},"preferred":true}}],"generalPractitioner":[{{"reference":"Practitioner/gp-1","display":"Dr. GP"}}],"managingOrganization":{{"reference":"Organization/org-1"}}}}"#
    )
}

/// A searchset of `n` Observations of patient `pid`, with upstream `fullUrl`s and links.
fn searchset(pid: &str, n: usize, host: &str) -> String {
    let mut entries = Vec::new();
    for i in 0..n {
        entries.push(format!(
            r#"{{"fullUrl":"https://{host}/fhir/Observation/o{i}","resource":{{"resourceType":"Observation","id":"o{i}","meta":{{"versionId":"1"}},"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}}]}},"subject":{{"reference":"Patient/{pid}"}},"effectiveDateTime":"2024-01-0{}T10:00:00Z","performer":[{{"reference":"Practitioner/gp-1"}}],"valueQuantity":{{"value":{},"unit":"beats/min","system":"http://unitsofmeasure.org","code":"/min"}}}},"search":{{"mode":"match"}}}}"#,
            i % 9 + 1,
            60 + i
        ));
    }
    format!(
        r#"{{"resourceType":"Bundle","id":"s1","type":"searchset","total":{n},"link":[{{"relation":"self","url":"https://{host}/fhir/Observation?patient={pid}"}},{{"relation":"next","url":"https://{host}/fhir/Observation?patient={pid}&page=2"}}],"entry":[{}]}}"#,
        entries.join(",")
    )
}

fn fhir_answers(c: &mut Criterion) {
    use ward::policy::fhir_authz::bench_check_answer;
    let read = patient("p1", "ehr.internal");
    let search = searchset("p1", 50, "ehr.internal");
    assert!(bench_check_answer(read.as_bytes(), "p1", false));
    assert!(bench_check_answer(search.as_bytes(), "p1", true));
    println!(
        "fhir answers: Patient {} bytes, searchset {} bytes",
        read.len(),
        search.len()
    );
    // Each next to the tree check it replaced (same binary, same minutes: the ratio is what
    // to read on a busy machine).
    use ward::policy::fhir_authz::bench_check_answer_tree as tree;
    for (name, body, bundle) in [
        ("check_patient_read_2k", &read, false),
        ("check_searchset_50", &search, true),
    ] {
        assert!(tree(body.as_bytes(), "p1", bundle));
        c.bench_function(&format!("fhir_authz/{name}"), |b| {
            b.iter(|| bench_check_answer(black_box(body.as_bytes()), "p1", bundle))
        });
        c.bench_function(&format!("fhir_authz/{name}/tree"), |b| {
            b.iter(|| tree(black_box(body.as_bytes()), "p1", bundle))
        });
    }
    let rw = ward::proxy::fhir_rewrite::FhirRewrite::new(
        &["https://ehr.internal/fhir".to_owned()],
        None,
        1 << 20,
    )
    .unwrap();
    let public = "https://gw.example/patient/fhir";
    let read_iact = Some(ward::fhir::request::Interaction::Read);
    let search_iact = Some(ward::fhir::request::Interaction::SearchType);
    for (name, body, iact) in [
        ("patient_2k", &read, read_iact),
        ("searchset_50", &search, search_iact),
    ] {
        c.bench_function(&format!("fhir_rewrite/{name}"), |b| {
            b.iter(|| rw.json_body(black_box(body.as_bytes()), public, iact))
        });
        c.bench_function(&format!("fhir_rewrite/{name}/tree"), |b| {
            b.iter(|| rw.json_tree(black_box(body.as_bytes()), public, iact, false))
        });
    }
}

/// One request's access line: the old path (`tracing::info!` through the JSON or text
/// `fmt` subscriber the CLI installs) against `ward::accesslog` (format into a reused buffer
/// and append), both into `logwriter`'s batch (drained to a null sink by its thread).
fn access(c: &mut Criterion) {
    use tracing_subscriber::EnvFilter;
    use ward::accesslog::{self, Record, Style};
    let Ok((w, _guard)) = ward::logwriter::start_with(std::io::sink()) else {
        return;
    };
    let rec = Record {
        request_id: "c59e2b091a104e1c0000000000000042",
        listener: "public",
        route: "fhir",
        method: "GET",
        protocol: http::Version::HTTP_11,
        status: 200,
        code: "",
        head_ms: 1.835535,
        duration_ms: 1.962116,
        bytes_out: 941,
        completed: true,
        client_ip: "10.0.0.5".parse().unwrap(),
        client_cert: "lab-system",
        tls: true,
    };
    // As `ward run` sets it up: a global JSON subscriber with an EnvFilter at info, and the
    // direct writer installed beside it.
    let json = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(w.clone())
        .finish();
    if tracing::subscriber::set_global_default(json).is_err() {
        return;
    }
    accesslog::install(Style::Json, w.clone());
    c.bench_function("access/json/tracing", |b| {
        b.iter(|| accesslog::emit_tracing(black_box(&rec)))
    });
    c.bench_function("access/json/direct", |b| {
        b.iter(|| accesslog::log(black_box(&rec)))
    });
    // Text: the direct formatter (the filter check is the same as above), and tracing's
    // text subscriber as a scoped default (a little dearer than a global one).
    let mut line = Vec::new();
    c.bench_function("access/text/direct", |b| {
        b.iter(|| {
            line.clear();
            accesslog::format(
                Style::Text { ansi: true },
                black_box(&rec),
                std::time::SystemTime::now(),
                &mut line,
            );
            w.append(&line);
        })
    });
    {
        let text = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(true)
            .with_writer(w.clone())
            .finish();
        let _scope = tracing::subscriber::set_default(text);
        c.bench_function("access/text/tracing", |b| {
            b.iter(|| accesslog::emit_tracing(black_box(&rec)))
        });
    }
    // Filtered out (`WARD_LOG=warn`): what a request pays with the access log off.
    {
        let off = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(w.clone())
            .finish();
        let _scope = tracing::subscriber::set_default(off);
        c.bench_function("access/off/direct", |b| {
            b.iter(|| accesslog::log(black_box(&rec)))
        });
    }
}

criterion_group!(
    benches,
    access,
    paths,
    headers,
    errors,
    rate_limits,
    audit,
    fhir_answers
);
criterion_main!(benches);
