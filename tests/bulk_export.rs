//! Bulk data export (`fhir_authz.bulk_export`) end to end, over TLS to the gateway and real
//! sockets to a bulk-export EHR: kick-off (202 + `Content-Location`), status polling (202,
//! then the completion manifest), cancel, and NDJSON files holding several resource types
//! (one line with an SSN, one too long for DLP, one not JSON). A second, "foreign" server
//! is named by the manifest and must never be contacted.
//!
//! Routes: `/fhir` (token, guard, DLP) and `/raw` (token, guard; no DLP; its upstream path is
//! rewritten, so status and file URLs must be mapped through the route prefix).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

const SSN: &str = "123-45-6789";

#[derive(Default)]
struct Ehr {
    addr: OnceLock<SocketAddr>,
    foreign: OnceLock<SocketAddr>,
    /// `METHOD path?query accept` of every request.
    seen: Mutex<Vec<String>>,
    polls: Mutex<HashMap<String, usize>>,
    jobs: Mutex<usize>,
}

impl Ehr {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn saw(&self, prefix: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.starts_with(prefix))
    }
    fn last(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn long_line() -> String {
    json!({"resourceType": "Patient", "id": "p3", "name": [{"family": "x".repeat(5000)}]})
        .to_string()
}

/// The Patient file: PHI, another patient, a type the token cannot read, a line longer
/// than DLP scans, a line that is not JSON, and an Observation (readable).
fn patient_file() -> String {
    [
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": SSN}], "name": [{"family": "Alpha"}]}).to_string(),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Beta"}]}).to_string(),
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}).to_string(),
        long_line(),
        "this is not json".to_owned(),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": format!("ssn {SSN}")}}).to_string(),
    ]
    .join("\n")
        + "\n"
}

fn reply(status: u16, ct: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    r
}

async fn handle(ehr: Arc<Ehr>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ehr.seen
        .lock()
        .unwrap()
        .push(format!("{} {pq} {accept}", req.method()));
    let me = ehr.addr.get().copied().unwrap();
    let base = format!("http://{me}/fhir");
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    if path == "/fhir/Group/sync/$export" {
        // Not asynchronous: the data in the answer itself.
        return reply(
            200,
            "application/fhir+json",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}]}).to_string(),
        );
    }
    if path.ends_with("/$export") && method == "GET" {
        let n = {
            let mut j = ehr.jobs.lock().unwrap();
            *j += 1;
            *j
        };
        let mut r = reply(202, "application/fhir+json", String::new());
        r.headers_mut().insert(
            "content-location",
            format!("{base}/bulkstatus/job{n}").parse().unwrap(),
        );
        return r;
    }
    if let Some(job) = path.strip_prefix("/fhir/bulkstatus/") {
        if method == "DELETE" {
            return reply(202, "application/fhir+json", String::new());
        }
        let n = {
            let mut p = ehr.polls.lock().unwrap();
            let c = p.entry(job.to_owned()).or_default();
            *c += 1;
            *c
        };
        if n == 1 {
            let mut r = reply(202, "application/fhir+json", String::new());
            r.headers_mut().insert("x-progress", "50%".parse().unwrap());
            return r;
        }
        let foreign = ehr.foreign.get().copied().unwrap();
        let manifest = json!({
            "transactionTime": "2026-12-05T00:00:00Z",
            "request": format!("{base}/$export?_type=Patient,Observation"),
            "requiresAccessToken": false,
            "link": [{"relation": "next", "url": format!("{base}/bulkstatus/{job}?page=2")}],
            "output": [
                {"type": "Patient", "url": format!("{base}/files/patients.ndjson"), "count": 6},
                {"type": "Observation", "url": format!("https://ehr-files.internal/fhir/files/alias.ndjson")},
                {"type": "Condition", "url": format!("{base}/files/cond.ndjson")},
                {"type": "Patient", "url": format!("http://{foreign}/files/evil.ndjson")},
                {"type": "Patient", "url": format!("http://{me}/other/evil.ndjson")},
                {"type": "Patient", "url": format!("{base}/files/../../other/evil.ndjson")},
                {"type": "Patient", "url": "/fhir/files/relative.ndjson"},
            ],
            "error": [
                {"type": "OperationOutcome", "url": format!("{base}/files/err.ndjson")},
                {"type": "OperationOutcome", "url": format!("{base}/files/redirect.ndjson")},
            ],
        });
        return reply(200, "application/json", manifest.to_string());
    }
    match path.as_str() {
        "/fhir/files/patients.ndjson" => reply(200, "application/fhir+ndjson", patient_file()),
        "/fhir/files/alias.ndjson" => reply(
            200,
            "application/fhir+ndjson",
            json!({"resourceType": "Observation", "id": "o9", "status": "final", "code": {"text": "x"}})
                .to_string()
                + "\n",
        ),
        "/fhir/files/err.ndjson" => reply(
            200,
            "application/fhir+ndjson",
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]})
                .to_string()
                + "\n",
        ),
        "/fhir/files/redirect.ndjson" => {
            // Storage elsewhere: the client must not be sent there, nor Ward go there.
            let foreign = ehr.foreign.get().copied().unwrap();
            let mut r = reply(302, "text/plain", String::new());
            r.headers_mut().insert(
                "location",
                format!("http://{foreign}/files/err.ndjson").parse().unwrap(),
            );
            r
        }
        _ => reply(404, "application/fhir+json", "{}".into()),
    }
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    ehr: Arc<Ehr>,
    foreign: Arc<UpstreamState>,
    key: KeyPair,
}

async fn setup() -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write(
        "policies/guard.yaml",
        "fhir_authz:\n  bulk_export:\n    max_jobs: 100\n    max_files: 1000\n    job_ttl: 1h\n",
    );
    env.write(
        "policies/phi.yaml",
        "dlp:\n  max_scan_bytes: 4096\n  detectors:\n    ssn: {}\n",
    );
    env.write(
        "policies/phi-report.yaml",
        "dlp:\n  mode: report\n  max_scan_bytes: 4096\n  detectors:\n    ssn: {}\n",
    );
    let ehr = Arc::new(Ehr::default());
    let up = serve_http1(ehr.clone(), handle).await;
    ehr.addr.set(up).unwrap();
    let (foreign_addr, foreign) = upstream().await;
    ehr.foreign.set(foreign_addr).unwrap();
    let cfg = format!(
        r#"
listeners:
  - name: public
    bind: 127.0.0.1:0
    tls:
      certificates:
        - cert: certs/server.pem
          key: certs/server.key
          server_names: [localhost]
upstreams:
  - name: ehr
    url: http://{up}
routes:
  - name: fhir
    listener: public
    path_prefix: /fhir
    upstream: ehr
    fhir: true
    upstream_aliases: [https://ehr-files.internal/fhir]
    policies: [token, guard, phi]
  - name: raw
    listener: public
    path_prefix: /raw
    rewrite_prefix: /fhir
    upstream: ehr
    fhir: true
    policies: [token, guard]
  - name: report
    listener: public
    path_prefix: /report
    rewrite_prefix: /fhir
    upstream: ehr
    fhir: true
    policies: [token, guard, phi-report]
admin:
  bind: 127.0.0.1:0
"#
    );
    let gw = env.start(&cfg).await;
    Setup {
        env,
        gw,
        ehr,
        foreign,
        key,
    }
}

fn token(key: &KeyPair, scope: &str, sub: &str, patient: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": sub, "exp": now + 600, "scope": scope});
    if let Some(p) = patient {
        c["patient"] = p.into();
    }
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

const SCOPES: &str = "system/Patient.read system/Observation.read";

async fn call(s: &Setup, tok: &str, method: &str, target: &str) -> Reply {
    let c = client(&s.env.pki, false);
    let uri = if target.starts_with("https://") {
        target.to_owned()
    } else {
        url(&s.gw, target)
    };
    let r = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {tok}"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&c, r).await
}

fn upstream_host(s: &Setup) -> String {
    s.ehr.addr.get().unwrap().to_string()
}

fn content_location(r: &Reply) -> String {
    r.headers
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn kickoff_type_variants() {
    let s = setup().await;
    let t = token(&s.key, SCOPES, "app-1", None);
    let public = url(&s.gw, "/fhir");
    let allowed = [
        "/fhir/$export?_type=Patient",
        "/fhir/$export?_type=Patient,Observation",
        "/fhir/$export?_type=Observation,Patient",
        "/fhir/$export?_type=Patient&_type=Observation",
        "/fhir/$export?_type=Patient%2CObservation",
        "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory",
        "/fhir/$export?_type=Patient&_outputFormat=application%2Ffhir%2Bndjson&_since=2026-01-01T00:00:00Z",
        "/fhir/Patient/$export?_type=Patient",
        "/fhir/Group/g1/$export?_type=Observation",
    ];
    for path in allowed {
        let before = s.ehr.count();
        let r = call(&s, &t, "GET", path).await;
        assert_eq!(r.status, 202, "{path}: {:?}", r.body);
        let loc = content_location(&r);
        assert!(
            loc.starts_with(&format!("{public}/$export-poll/")),
            "{path}: {loc}"
        );
        assert!(!loc.contains(&upstream_host(&s)), "{loc}");
        assert_eq!(s.ehr.count(), before + 1, "{path}");
        // The upstream got the query exactly as checked, asked to answer asynchronously.
        let q = path.split_once('?').unwrap().1;
        let last = s.ehr.last();
        assert!(last.contains(&format!("$export?{q} ")), "{last}");
    }
    // Refused: (path, status, code, type named in the diagnostics).
    let mut refused: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("/fhir/$export".into(), 403, "insufficient_scope", None),
        (
            "/fhir/Patient/$export".into(),
            403,
            "insufficient_scope",
            None,
        ),
        (
            "/fhir/$export?_outputFormat=ndjson".into(),
            403,
            "insufficient_scope",
            None,
        ),
        (
            "/fhir/$export?_typeFilter=Patient%3Fgender%3Dmale".into(),
            403,
            "insufficient_scope",
            None,
        ),
        (
            "/fhir/$export?_type=Observation&_typeFilter=Condition%3Fcode%3Dx".into(),
            403,
            "insufficient_scope",
            Some("Condition"),
        ),
        (
            "/fhir/Observation/$export?_type=Observation".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/$Export?_type=Patient".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/$EXPORT?_type=Patient".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/Patient/$Export?_type=Patient".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/Group/g1/$export-poll".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/Patient/$export-file".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/Patient/p1/$export?_type=Patient".into(),
            403,
            "operation_denied",
            None,
        ),
        (
            "/fhir/$export?_type=Patient&patient=Patient%2Fp1".into(),
            400,
            "export_param_unknown",
            None,
        ),
        (
            "/fhir/$export?_type=Patient&organizeOutputBy=Patient".into(),
            400,
            "export_param_unknown",
            None,
        ),
        (
            "/fhir/$export?_type=Patient&allowPartialManifests=true".into(),
            400,
            "export_param_unknown",
            None,
        ),
        (
            "/fhir/$export?_type=Patient&_count=10".into(),
            400,
            "export_param_unknown",
            None,
        ),
        (
            "/fhir/$export?_type=Patient&_outputFormat=application%2Ffhir%2Bjson".into(),
            400,
            "export_param_invalid",
            None,
        ),
    ];
    // Types outside the scopes, alone, first, last, repeated, in either parameter form.
    for bad in ["Condition", "MedicationRequest", "Binary", "Group"] {
        for q in [
            format!("_type={bad}"),
            format!("_type=Patient,{bad}"),
            format!("_type={bad},Observation"),
            format!("_type=Patient&_type={bad}"),
            format!("_type={bad}&_type=Patient"),
        ] {
            refused.push((
                format!("/fhir/$export?{q}"),
                403,
                "insufficient_scope",
                Some(bad),
            ));
        }
    }
    // Spellings a lenient server could read differently: case, spaces, empty items, unknown
    // types, case-variant parameter names, modifiers.
    for q in [
        "_type=patient",
        "_type=PATIENT",
        "_type=Patient,observation",
        "_type=Patient%20",
        "_type=%20Patient",
        "_type=Patient,%20Observation",
        "_type=Patient+Observation",
        "_type=",
        "_type=,",
        "_type=Patient,",
        "_type=,Patient",
        "_type=Patient,,Observation",
        "_type=Patient&_type=",
        "_type=Foo",
        "_type=Patient,Foo",
        "_type=*",
        "_TYPE=Patient",
        "_Type=Patient",
        "_type:not=Condition",
        "_type=Observation&_typeFilter=observation%3Fcode%3Dx",
        "_type=Observation&_typeFilter=Observation",
        "_type=Observation&_typefilter=Condition%3Fcode%3Dx",
    ] {
        refused.push((
            format!("/fhir/$export?{q}"),
            400,
            "export_param_invalid",
            None,
        ));
    }
    for (path, status, code, named) in &refused {
        let before = s.ehr.count();
        let r = call(&s, &t, "GET", path).await;
        assert_eq!(r.status, *status, "{path}: {:?}", r.body);
        assert_eq!(r.code(), *code, "{path}");
        assert_eq!(s.ehr.count(), before, "{path} reached the upstream");
        assert!(content_location(&r).is_empty(), "{path}");
        if let Some(t) = named {
            let v = r.json();
            let diag = v["issue"][1]["diagnostics"].as_str().unwrap_or("");
            assert!(diag.contains(t), "{path}: {v}");
        }
        if path == "/fhir/$export" {
            assert!(r.json().to_string().contains("_type"), "{:?}", r.body);
        }
    }
    // Every spelling of read access on both types (v1, v2, user level) may export them.
    for scope in [
        "system/Patient.rs system/Observation.rs",
        "system/Patient.r system/Observation.cruds",
        "user/Patient.read user/Observation.read",
        "system/*.read",
        "user/*.rs",
    ] {
        let tk = token(&s.key, scope, "app-1", None);
        let r = call(&s, &tk, "GET", "/fhir/$export?_type=Patient,Observation").await;
        assert_eq!(r.status, 202, "{scope}: {:?}", r.body);
    }
    // An EHR that answers synchronously: its data is not passed on.
    let r = call(&s, &t, "GET", "/fhir/Group/sync/$export?_type=Patient").await;
    assert_eq!((r.status, r.code().as_str()), (502, "export_unverifiable"));
    assert!(s
        .ehr
        .last()
        .starts_with("GET /fhir/Group/sync/$export?_type=Patient "));
    assert!(!String::from_utf8_lossy(&r.body).contains("Condition"));
    // A token that reads everything may leave `_type` out.
    let all = token(&s.key, "system/*.read", "app-1", None);
    for path in [
        "/fhir/$export",
        "/fhir/Patient/$export",
        "/fhir/Group/g1/$export",
    ] {
        assert_eq!(call(&s, &all, "GET", path).await.status, 202, "{path}");
    }
    // Patient-level access never exports; neither do scopes that grant nothing here.
    let before = s.ehr.count();
    for (scope, patient, code) in [
        (
            "launch/patient patient/*.read",
            Some("p1"),
            "export_patient_context",
        ),
        ("system/*.read", Some("p1"), "export_patient_context"),
        ("patient/*.read", None, "insufficient_scope"),
        ("system/Patient.write", None, "insufficient_scope"),
        (
            "system/Observation.rs?category=laboratory",
            None,
            "insufficient_scope",
        ),
    ] {
        let tk = token(&s.key, scope, "app-1", patient);
        let r = call(&s, &tk, "GET", "/fhir/$export?_type=Observation").await;
        assert_eq!(r.status, 403, "{scope}");
        assert_eq!(r.code(), code, "{scope}");
    }
    // HEAD would start an export as its GET does: refused, as on the status URL.
    let r = call(&s, &t, "HEAD", "/fhir/$export?_type=Patient").await;
    assert_eq!(r.status, 405);
    // The POST form is refused clearly.
    let r = call(&s, &t, "POST", "/fhir/$export").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (405, "export_post_unsupported")
    );
    assert_eq!(s.ehr.count(), before);
}

/// Kick off with `tok` on `route`; the gateway's status URL.
async fn kickoff(s: &Setup, tok: &str, route: &str) -> String {
    let r = call(
        s,
        tok,
        "GET",
        &format!("{route}/$export?_type=Patient,Observation"),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    content_location(&r)
}

#[tokio::test]
async fn polling_is_bound_to_the_identity_and_the_manifest_rewritten() {
    let s = setup().await;
    let a = token(&s.key, SCOPES, "app-1", None);
    // Same scopes, another subject; and the same subject of another issuer's client.
    let b = token(&s.key, SCOPES, "app-2", None);
    let status = kickoff(&s, &a, "/fhir").await;
    // The same subject through another client, and the same token with more scopes of
    // another subject: other identities.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let k = EncodingKey::from_ec_pem(s.key.serialize_pem().as_bytes()).unwrap();
    let other_client = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"iss": "https://idp.test", "aud": "ehr", "sub": "app-1", "client_id": "other", "exp": now + 600, "scope": SCOPES}),
        &k,
    )
    .unwrap();
    let wide = token(&s.key, "system/*.read", "app-3", None);
    for tok in [&other_client, &wide] {
        let before = s.ehr.count();
        let r = call(&s, tok, "GET", &status).await;
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
        assert_eq!(s.ehr.count(), before);
    }
    let public = url(&s.gw, "/fhir");
    // Other identities and unknown ids: 404, and the upstream is not asked.
    let before = s.ehr.count();
    let unknown = format!("{public}/$export-poll/00000000000000000000000000000000");
    for (tok, target, method) in [
        (&b, status.as_str(), "GET"),
        (&b, status.as_str(), "DELETE"),
        (&a, unknown.as_str(), "GET"),
        (&a, unknown.as_str(), "DELETE"),
    ] {
        let r = call(&s, tok, method, target).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "not_found"),
            "{method} {target}"
        );
    }
    assert_eq!(s.ehr.count(), before);
    // The status URL of one route means nothing on another.
    let other = status.replace("/fhir/", "/raw/");
    assert_eq!(call(&s, &a, "GET", &other).await.status, 404);
    // The owner polls: in progress, then complete.
    let r = call(&s, &a, "GET", &status).await;
    assert_eq!(r.status, 202);
    assert!(
        s.ehr.last().starts_with("GET /fhir/bulkstatus/job1 "),
        "{}",
        s.ehr.last()
    );
    assert_eq!(r.headers["x-progress"], "50%");
    let r = call(&s, &a, "GET", &status).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let up = upstream_host(&s);
    assert!(!text.contains(&up), "{text}");
    assert!(!text.contains("ehr-files.internal"), "{text}");
    assert!(
        !text.contains(&s.ehr.foreign.get().unwrap().to_string()),
        "{text}"
    );
    let m = r.json();
    assert_eq!(
        m["request"],
        format!("{public}/$export?_type=Patient,Observation")
    );
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m.get("link").is_none(), "{m}");
    let out = m["output"].as_array().unwrap();
    // Patient and the alias Observation; Condition (not readable), the foreign host, the
    // upstream host outside its base, a path escaping the base and a relative URL: gone.
    let types: Vec<&str> = out.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Patient", "Observation"], "{m}");
    assert_eq!(out[0]["count"], 6);
    for o in out.iter().chain(m["error"].as_array().unwrap()) {
        let u = o["url"].as_str().unwrap();
        assert!(u.starts_with(&format!("{public}/$export-file/")), "{u}");
    }
    assert_eq!(m["error"][0]["type"], "OperationOutcome");
    // Polling again hands out the same file URLs.
    let again = call(&s, &a, "GET", &status).await.json();
    assert_eq!(again["output"], m["output"]);
    // Cancel: another identity cannot, the owner can; then the id is gone.
    let r = call(&s, &a, "DELETE", &status).await;
    assert_eq!(r.status, 202);
    assert!(s.ehr.last().starts_with("DELETE /fhir/bulkstatus/job1 "));
    let before = s.ehr.count();
    assert_eq!(call(&s, &a, "GET", &status).await.status, 404);
    assert_eq!(s.ehr.count(), before);
    // Through a route whose upstream path differs, the status URL maps back the same way.
    let status = kickoff(&s, &a, "/raw").await;
    assert!(
        status.starts_with(&url(&s.gw, "/raw/$export-poll/")),
        "{status}"
    );
    assert_eq!(call(&s, &b, "GET", &status).await.status, 404);
    assert_eq!(call(&s, &a, "GET", &status).await.status, 202);
    assert!(
        s.ehr.last().starts_with("GET /fhir/bulkstatus/job2 "),
        "{}",
        s.ehr.last()
    );
}

fn ids(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|_| panic!("not one JSON object: {l}"));
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn manifest(s: &Setup, tok: &str, route: &str) -> Value {
    let status = kickoff(s, tok, route).await;
    assert_eq!(call(s, tok, "GET", &status).await.status, 202);
    let r = call(s, tok, "GET", &status).await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn files_stream_through_dlp_and_scopes() {
    let s = setup().await;
    let a = token(&s.key, SCOPES, "app-1", None);
    let b = token(&s.key, SCOPES, "app-2", None);
    let m = manifest(&s, &a, "/fhir").await;
    let patients = m["output"][0]["url"].as_str().unwrap().to_owned();
    let alias = m["output"][1]["url"].as_str().unwrap().to_owned();
    let errors = m["error"][0]["url"].as_str().unwrap().to_owned();
    // Another identity: 404, nothing fetched.
    let before = s.ehr.count();
    for f in [&patients, &alias, &errors] {
        let r = call(&s, &b, "GET", f).await;
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
        // Nor can a file id be polled as a status, or a file be deleted.
        assert_eq!(
            call(&s, &a, "GET", &f.replace("$export-file", "$export-poll"))
                .await
                .status,
            404
        );
        assert_eq!(call(&s, &a, "DELETE", f).await.status, 405);
    }
    assert_eq!(s.ehr.count(), before);
    // The owner, with DLP: the SSN redacted in every line it was in, the Condition line
    // (not readable), the line longer than DLP scans and the line that is not JSON removed.
    let r = call(&s, &a, "GET", &patients).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/fhir+ndjson");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!text.contains(SSN), "{text}");
    assert_eq!(ids(&r.body), ["p1", "p2", "o1"]);
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(!text.contains("Condition"), "{text}");
    let last = s.ehr.last();
    assert!(
        last.starts_with("GET /fhir/files/patients.ndjson application/fhir+ndjson"),
        "{last}"
    );
    // What the upstream sent had all of it.
    assert!(patient_file().contains(SSN) && patient_file().contains("Condition"));
    // A file on an alias of the upstream is read from the route's upstream.
    let r = call(&s, &a, "GET", &alias).await;
    assert_eq!((r.status, ids(&r.body)), (200, vec!["o9".to_owned()]));
    assert!(s.ehr.last().starts_with("GET /fhir/files/alias.ndjson "));
    // Error files carry OperationOutcomes, which pass.
    let r = call(&s, &a, "GET", &errors).await;
    assert!(String::from_utf8_lossy(&r.body).contains("OperationOutcome"));
    // A file answered with a redirect to another host fails closed: no Location passed on.
    let redirect = m["error"][1]["url"].as_str().unwrap().to_owned();
    let r = call(&s, &a, "GET", &redirect).await;
    assert_eq!((r.status, r.code().as_str()), (502, "export_unverifiable"));
    assert!(r.headers.get("location").is_none());
    assert!(s.ehr.last().starts_with("GET /fhir/files/redirect.ndjson "));
    // Without DLP, and with DLP in report mode: lines pass byte for byte (the long one
    // too); scopes still apply.
    for route in ["/raw", "/report"] {
        files_pass_unchanged(&s, &a, route).await;
    }
    // The foreign host and the upstream's paths outside its base were never fetched.
    assert_eq!(s.foreign.count(), 0);
    assert!(!s.ehr.saw("GET /other"));
    assert!(!s.ehr.saw("GET /fhir/other"));
    assert!(!s.ehr.saw("GET /fhir/files/cond.ndjson"));
    assert!(!s.ehr.saw("GET /fhir/files/relative.ndjson"));
}

async fn files_pass_unchanged(s: &Setup, a: &str, route: &str) {
    let m = manifest(s, a, route).await;
    let raw = m["output"][0]["url"].as_str().unwrap().to_owned();
    assert!(
        raw.starts_with(&url(&s.gw, &format!("{route}/$export-file/"))),
        "{raw}"
    );
    let r = call(s, a, "GET", &raw).await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.body), ["p1", "p2", "p3", "o1"]);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    for l in patient_file()
        .lines()
        .filter(|l| !l.contains("Condition") && !l.contains("not json"))
    {
        assert!(text.contains(l), "line changed: {l}");
    }
    assert!(text.contains(&long_line()));
}

#[tokio::test]
async fn bulk_export_is_refused_where_it_is_not_configured() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write("policies/guard.yaml", "fhir_authz: {}\n");
    let (up, state) = upstream().await;
    let cfg = basic_config(up, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, guard]\n",
    );
    let gw = env.start(&cfg).await;
    let t = token(&key, "system/*.read", "app-1", None);
    let c = client(&env.pki, false);
    for path in [
        "/fhir/$export",
        "/fhir/$export-poll/0123456789abcdef0123456789abcdef",
        "/fhir/$export-file/0123456789abcdef0123456789abcdef",
    ] {
        let r = Request::get(url(&gw, path))
            .header("authorization", format!("Bearer {t}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&c, r).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "operation_denied"),
            "{path}"
        );
    }
    assert_eq!(state.count(), 0);
    // Config errors name the file, the line and the key.
    let guard = env.path("policies/guard.yaml").display().to_string();
    for (yaml, want) in [
        (
            "fhir_authz:\n  bulk_export:\n    max_jobs: 0\n",
            ": fhir_authz.bulk_export.max_jobs: between 1 and 1000000",
        ),
        (
            "fhir_authz:\n  bulk_export:\n    job_ttl: 0s\n",
            ": fhir_authz.bulk_export.job_ttl: at least 1s",
        ),
        (
            "fhir_authz:\n  bulk_export:\n    max_job: 3\n",
            ":3: fhir_authz.bulk_export.max_job: unknown field `max_job`",
        ),
        (
            "fhir_authz:\n  allowed_operations: [export]\n",
            ": fhir_authz.allowed_operations: bulk export is configured with `bulk_export`",
        ),
    ] {
        env.write("policies/guard.yaml", yaml);
        let p = env.write("ward.yaml", &cfg);
        let errs = config_errors(&p);
        let line = errs.lines().find(|l| l.starts_with(&format!("{guard}:")));
        assert!(
            line.is_some_and(|l| l.contains(want)
                && l[guard.len() + 1..].starts_with(|c: char| c.is_ascii_digit())),
            "{yaml}: {errs}"
        );
    }
}

/// A response body fed from a channel: the upstream sends a file's lines one at a time.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An EHR whose export file is sent line by line: the second line only after the test has
/// received the first through the gateway (so a gateway that buffered the file would never
/// deliver the first line).
#[tokio::test]
async fn files_stream_line_by_line() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write("policies/guard.yaml", "fhir_authz:\n  bulk_export: {}\n");
    env.write(
        "policies/phi.yaml",
        "dlp:\n  max_scan_bytes: 4096\n  detectors:\n    ssn: {}\n",
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = tcp.local_addr().unwrap();
    // The file's remaining lines, handed to the upstream by the test.
    let (feed_tx, feed_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let feed_rx = Arc::new(tokio::sync::Mutex::new(Some(feed_rx)));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = tcp.accept().await else {
                continue;
            };
            let feed_rx = feed_rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let feed_rx = feed_rx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let base = format!("http://{up}/fhir");
                        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                        let mut r = Response::new(ChanBody(rx));
                        let h = r.headers_mut();
                        if path.ends_with("/$export") {
                            *r.status_mut() = http::StatusCode::ACCEPTED;
                            r.headers_mut().insert(
                                "content-location",
                                format!("{base}/status/1").parse().unwrap(),
                            );
                        } else if path == "/fhir/status/1" {
                            h.insert("content-type", "application/json".parse().unwrap());
                            let m = json!({"transactionTime": "2026-12-05T00:00:00Z", "request": format!("{base}/$export"), "requiresAccessToken": true,
                                "output": [{"type": "Patient", "url": format!("{base}/f/p.ndjson")}], "error": []});
                            tx.send(Bytes::from(m.to_string())).await.unwrap();
                        } else if path == "/fhir/f/p.ndjson" {
                            h.insert("content-type", "application/fhir+ndjson".parse().unwrap());
                            let first = json!({"resourceType": "Patient", "id": "p1", "name": [{"text": format!("ssn {SSN}")}]});
                            tx.send(Bytes::from(format!("{first}\n"))).await.unwrap();
                            let mut feed = feed_rx.lock().await.take().unwrap();
                            tokio::spawn(async move {
                                while let Some(b) = feed.recv().await {
                                    if tx.send(b).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        drop(tx);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let cfg = basic_config(up, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, guard, phi]\n",
    );
    let gw = env.start(&cfg).await;
    let t = token(&key, "system/Patient.read", "app-1", None);
    let c = client(&env.pki, false);
    let get = |u: String| {
        Request::get(u)
            .header("authorization", format!("Bearer {t}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(&c, get(url(&gw, "/fhir/$export?_type=Patient"))).await;
    assert_eq!(r.status, 202);
    let status = content_location(&r);
    let r = send(&c, get(status)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let file = r.json()["output"][0]["url"].as_str().unwrap().to_owned();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), c.request(get(file)))
        .await
        .expect("answer head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first line arrives (redacted) while the upstream still holds the rest.
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let f = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame())
            .await
            .expect("the first line streamed before the file ended")
            .unwrap()
            .unwrap();
        if let Ok(d) = f.into_data() {
            got.extend_from_slice(&d);
        }
    }
    let first = String::from_utf8(got.clone()).unwrap();
    assert!(first.contains("\"p1\"") && !first.contains(SSN), "{first}");
    // Now the rest: a line of another type (removed), one with PHI, then the end.
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}});
    let second =
        json!({"resourceType": "Patient", "id": "p2", "name": [{"text": format!("ssn {SSN}")}]});
    feed_tx
        .send(Bytes::from(format!("{obs}\n{second}")))
        .await
        .unwrap();
    drop(feed_tx);
    let rest = body.collect().await.unwrap().to_bytes();
    let all = [got, rest.to_vec()].concat();
    assert_eq!(ids(&all), ["p1", "p2"]);
    assert!(!String::from_utf8_lossy(&all).contains(SSN));
}
