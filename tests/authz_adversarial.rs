//! `fhir_authz` against the classes an attack suite found (issue 15, items 6-9), over real
//! sockets and TLS: a scripted upstream answers whatever a test sets (Bundles with included
//! resources of forbidden types, contained resources, duplicate member names, ...), and
//! every test asserts what the upstream received (or that it received nothing) and what the
//! client got. Variants are generated: every include direction, every reference path,
//! every encoding, patient-, user- and system-level tokens in SMART v1 and v2 syntax.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    pq: String,
    body: Bytes,
}

#[derive(Default)]
struct Script {
    seen: Mutex<Vec<Got>>,
    /// What every GET and every POST to the base answers (200, FHIR JSON).
    reply: Mutex<Bytes>,
}

impl Script {
    fn set(&self, v: &Value) {
        *self.reply.lock().unwrap() = Bytes::from(v.to_string());
    }
    fn set_raw(&self, s: &str) {
        *self.reply.lock().unwrap() = Bytes::from(s.to_owned());
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> Got {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

async fn scripted(s: Arc<Script>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    s.seen.lock().unwrap().push(Got {
        method: method.clone(),
        pq: pq.clone(),
        body: body.clone(),
    });
    let (status, out) = match method.as_str() {
        "GET" => (200, s.reply.lock().unwrap().clone()),
        "POST" if pq == "/fhir" || pq == "/fhir/" => (200, s.reply.lock().unwrap().clone()),
        // Writes echo what they were sent.
        "POST" => (201, body),
        _ => (200, body),
    };
    let mut r = Response::new(Full::new(out));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/fhir+json".parse().unwrap());
    r
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    up: Arc<Script>,
    up_addr: std::net::SocketAddr,
    key: KeyPair,
}

async fn setup(guard: &str) -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write(
        "policies/guard.yaml",
        &format!("fhir_authz:\n  allowed_operations: [everything]\n{guard}"),
    );
    let up = Arc::new(Script::default());
    let up_addr = serve_http1(up.clone(), scripted).await;
    let cfg = basic_config(up_addr, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, guard]\n",
    );
    let gw = env.start(&cfg).await;
    Setup {
        env,
        gw,
        up,
        up_addr,
        key,
    }
}

fn token(key: &KeyPair, scope: &str, patient: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": "app-1", "exp": now + 600, "scope": scope});
    if let Some(p) = patient {
        c["patient"] = p.into();
    }
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

async fn call(
    s: &Setup,
    tok: &str,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
) -> Reply {
    let c = client(&s.env.pki, false);
    let mut b = Request::builder()
        .method(method)
        .uri(url(&s.gw, path))
        .header("authorization", format!("Bearer {tok}"));
    let body = match body {
        Some((ct, text)) => {
            b = b.header("content-type", ct);
            Bytes::from(text)
        }
        None => Bytes::new(),
    };
    send(&c, b.body(Full::new(body)).unwrap()).await
}

/// Percent-encode a query value (everything but unreserved characters).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Tokens that may search and read Observations only (and, for the patient-level ones,
/// only patient `a`'s), at every level and in both SMART syntaxes.
fn observation_only_tokens(key: &KeyPair) -> Vec<(&'static str, String)> {
    vec![
        (
            "patient v1",
            token(key, "launch/patient patient/Observation.read", Some("a")),
        ),
        (
            "patient v2",
            token(key, "launch/patient patient/Observation.rs", Some("a")),
        ),
        ("user v1", token(key, "user/Observation.read", None)),
        ("user v2", token(key, "user/Observation.rs", None)),
        ("system v1", token(key, "system/Observation.read", None)),
        ("system v2", token(key, "system/Observation.rs", None)),
    ]
}

fn obs(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "hr"}, "subject": {"reference": format!("Patient/{patient}")}})
}

/// A searchset as a server answers `_include`/`_revinclude`: two matches (one of them
/// carrying a contained Condition) and included resources of types the token may not read.
fn searchset_with_includes() -> Value {
    let mut with_contained = obs("o2", "a");
    with_contained["contained"] =
        json!([{"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/a"}}]);
    json!({"resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
        {"resource": obs("o1", "a"), "search": {"mode": "match"}},
        {"resource": with_contained, "search": {"mode": "match"}},
        {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/a"}}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "Provenance", "id": "p1", "target": [{"reference": "Observation/o1"}]}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "Practitioner", "id": "d1"}, "search": {"mode": "include"}},
        {"resource": obs("o3", "a"), "search": {"mode": "include"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}
    ]})
}

fn types_and_ids(r: &Reply) -> Vec<String> {
    r.json()["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or("-"),
                        e["resource"]["id"].as_str().unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const INCLUDES_ALLOWED: &str = "  allowed_includes: [\"Observation:performer\", \"iterate:Observation:performer\", \"Observation:has-member\", \"iterate:Observation:has-member\", \"Observation:has-member:Observation\", \"iterate:Observation:has-member:Observation\"]\n  allow_has: true\n  allow_chained: true\n";

#[tokio::test]
async fn request_side_refuses_parameters_naming_unreadable_types() {
    let s = setup(INCLUDES_ALLOWED).await;
    // Every include direction and shape, `_has` and chains, naming a type an
    // Observation-only token may not read (or any type at all: wildcards).
    let mut forbidden: Vec<String> = Vec::new();
    for name in ["_include", "_revinclude"] {
        for modifier in ["", ":iterate", ":recurse"] {
            for value in [
                "Observation:subject:Patient",
                "Observation:performer:Practitioner",
                "Condition:subject",
                "Provenance:target",
                "Provenance:target:Observation",
                "*",
                "Observation:*",
                "*:*",
                "observation:subject",
                "Observation:subject:patient",
            ] {
                forbidden.push(format!("{name}{modifier}={}", enc(value)));
            }
        }
    }
    for q in [
        "_has:Condition:subject:code=x",
        "_has:Observation:subject:_has:Provenance:target:agent=x",
        "_has:Foo:subject:code=x",
        "subject:Patient.name=x",
        "subject:Group.name=x",
        "patient.name=x",
        "subject.name=x",
        "performer.name=x",
        "encounter.status=finished",
        "subject:Patient.general-practitioner:Practitioner.name=x",
        "patient.organization.name=x",
    ] {
        forbidden.push(q.to_owned());
    }
    for (who, t) in observation_only_tokens(&s.key) {
        for q in &forbidden {
            let before = s.up.count();
            let r = call(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "insufficient_scope"),
                "{who}: {q}"
            );
            assert_eq!(s.up.count(), before, "{who}: {q} reached the upstream");
            // The same in a `POST _search` form body.
            let r = call(
                &s,
                &t,
                "POST",
                "/fhir/Observation/_search",
                Some(("application/x-www-form-urlencoded", q.clone())),
            )
            .await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "insufficient_scope"),
                "{who}: form {q}"
            );
            assert_eq!(s.up.count(), before, "{who}: form {q} reached the upstream");
            // The same inside a batch entry.
            let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Observation?{q}")}}
            ]});
            let r = call(
                &s,
                &t,
                "POST",
                "/fhir",
                Some(("application/fhir+json", batch.to_string())),
            )
            .await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "insufficient_scope"),
                "{who}: batch {q}"
            );
            assert_eq!(
                s.up.count(),
                before,
                "{who}: batch {q} reached the upstream"
            );
        }
        // Naming only Observation is fine: the request goes through.
        s.up.set(&json!({"resourceType": "Bundle", "type": "searchset", "total": 0}));
        for q in [
            "_include=Observation%3Ahas-member%3AObservation",
            "_include:iterate=Observation%3Ahas-member%3AObservation",
        ] {
            let r = call(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
            assert_eq!(r.status, 200, "{who}: {q}: {:?}", r.body);
        }
    }
    // Differing only in case from a known parameter: refused, never forwarded.
    let t = token(&s.key, "user/*.read", None);
    for q in [
        "_INCLUDE=Observation:subject",
        "_Revinclude=Provenance:target",
        "_HAS:Condition:subject:code=x",
        "Subject=Patient/b",
        "PATIENT=b",
        "_ID=x",
        "Performer=Patient/b",
    ] {
        let before = s.up.count();
        let r = call(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "search_param_denied"),
            "{q}"
        );
        assert_eq!(s.up.count(), before, "{q} reached the upstream");
    }
}

#[tokio::test]
async fn response_side_removes_or_refuses_unreadable_types() {
    for (mode, refuse) in [("", false), ("  response_scope_mode: refuse\n", true)] {
        let s = setup(&format!("{INCLUDES_ALLOWED}{mode}")).await;
        s.up.set(&searchset_with_includes());
        for (who, t) in observation_only_tokens(&s.key) {
            for q in [
                "_include=Observation%3Aperformer",
                "_include:iterate=Observation%3Aperformer",
                "_include=Observation%3Ahas-member",
                "code=hr",
            ] {
                let before = s.up.count();
                let r = call(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
                assert_eq!(s.up.count(), before + 1, "{who}: {q}");
                let got = s.up.last();
                if who.starts_with("patient") {
                    assert!(got.pq.contains("subject=Patient/a"), "{who}: {}", got.pq);
                }
                if refuse {
                    assert_eq!(
                        (r.status, r.code().as_str()),
                        (403, "insufficient_scope"),
                        "{who} {q}"
                    );
                    continue;
                }
                assert_eq!(r.status, 200, "{who}: {q}: {:?}", r.body);
                assert_eq!(
                    types_and_ids(&r),
                    ["Observation/o1", "Observation/o3", "OperationOutcome/-"],
                    "{who}: {q}"
                );
                // Two matches, one removed (its contained Condition); includes do not count.
                assert_eq!(r.json()["total"], 1, "{who}: {q}");
            }
            // A read whose answer carries a contained resource of another type.
            let mut o = obs("o9", "a");
            o["contained"] = json!([{"resourceType": "Patient", "id": "p"}]);
            s.up.set(&o);
            let r = call(&s, &t, "GET", "/fhir/Observation/o9", None).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "insufficient_scope"),
                "{who}"
            );
            // ... and one without: exactly what the upstream sent.
            s.up.set(&obs("o9", "a"));
            let r = call(&s, &t, "GET", "/fhir/Observation/o9", None).await;
            assert_eq!((r.status, r.json()), (200, obs("o9", "a")), "{who}");
            s.up.set(&searchset_with_includes());
        }
    }
}

#[tokio::test]
async fn everything_and_batch_results_hold_to_the_scopes() {
    let s = setup(INCLUDES_ALLOWED).await;
    let everything = json!({"resourceType": "Bundle", "type": "searchset", "total": 5, "entry": [
        {"resource": {"resourceType": "Patient", "id": "a"}},
        {"resource": obs("o1", "a")},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/a"}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "m1", "subject": {"reference": "Patient/a"}}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "x", "resource": {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/a"}}}]}}
    ]});
    for (who, scope, patient) in [
        (
            "patient v1",
            "launch/patient patient/Patient.read patient/Observation.read",
            Some("a"),
        ),
        (
            "patient v2",
            "launch/patient patient/Patient.rs patient/Observation.rs",
            Some("a"),
        ),
        ("user v2", "user/Patient.rs user/Observation.rs", None),
        (
            "system v1",
            "system/Patient.read system/Observation.read",
            None,
        ),
    ] {
        let t = token(&s.key, scope, patient);
        s.up.set(&everything);
        let r = call(&s, &t, "GET", "/fhir/Patient/a/$everything", None).await;
        assert_eq!(s.up.last().pq, "/fhir/Patient/a/$everything", "{who}");
        assert_eq!(r.status, 200, "{who}: {:?}", r.body);
        assert_eq!(types_and_ids(&r), ["Patient/a", "Observation/o1"], "{who}");
        assert_eq!(r.json()["total"], 2, "{who}");
        // A batch: a search entry whose result includes other types, and a read entry
        // whose resource contains one.
        let mut contained = obs("o2", "a");
        contained["contained"] = json!([{"resourceType": "Condition", "id": "c"}]);
        s.up.set(
            &json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
                {"resource": searchset_with_includes(), "response": {"status": "200 OK"}},
                {"resource": contained, "response": {"status": "200 OK"}},
                {"resource": obs("o1", "a"), "response": {"status": "200 OK"}}
            ]}),
        );
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Observation?code=hr"}},
            {"request": {"method": "GET", "url": "Observation/o2"}},
            {"request": {"method": "GET", "url": "Observation/o1"}}
        ]});
        let r = call(
            &s,
            &t,
            "POST",
            "/fhir",
            Some(("application/fhir+json", batch.to_string())),
        )
        .await;
        assert_eq!(s.up.last().method, "POST", "{who}");
        assert_eq!(r.status, 200, "{who}: {:?}", r.body);
        let v = r.json();
        let inner: Vec<&str> = v["entry"][0]["resource"]["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        // Patient/a is granted to these tokens; Condition, Provenance, Practitioner and the
        // match with a contained Condition are not.
        assert_eq!(
            inner,
            ["Observation", "Patient", "Observation", "OperationOutcome"],
            "{who}"
        );
        assert_eq!(v["entry"][0]["resource"]["total"], 1, "{who}");
        assert_eq!(
            v["entry"][1],
            json!({"response": {"status": "403 Forbidden"}}),
            "{who}"
        );
        assert_eq!(v["entry"][2]["resource"], obs("o1", "a"), "{who}");
    }
}

#[tokio::test]
async fn duplicate_member_names_in_answers_are_refused() {
    let s = setup("").await;
    let dups = [
        r#"{"resourceType":"Observation","resourceType":"Patient","id":"o1","subject":{"reference":"Patient/a"}}"#,
        r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a","reference":"Patient/b"}}"#,
        r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"},"subj\u0065ct":{"reference":"Patient/b"}}"#,
        r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"},"extension":[{"url":"u","extension":[{"url":"v","valueString":"1","valueString":"2"}]}]}"#,
    ];
    let tokens = [
        token(&s.key, "launch/patient patient/Observation.rs", Some("a")),
        token(&s.key, "user/Observation.read", None),
        token(&s.key, "user/*.read", None),
        token(&s.key, "system/*.*", None),
    ];
    for (i, t) in tokens.iter().enumerate() {
        for d in dups {
            // As the read answer, and inside a searchset.
            for (path, body) in [
                ("/fhir/Observation/o1", d.to_owned()),
                (
                    "/fhir/Observation?code=hr",
                    format!(
                        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{d}}}]}}"#
                    ),
                ),
            ] {
                s.up.set_raw(&body);
                let before = s.up.count();
                let r = call(&s, t, "GET", path, None).await;
                assert_eq!(s.up.count(), before + 1, "token {i}: {path}");
                assert_eq!(
                    (r.status, r.code().as_str()),
                    (502, "dlp_unscannable"),
                    "token {i}: {path}: {d}"
                );
                assert!(
                    !r.body.windows(9).any(|w| w == b"Patient/b"),
                    "token {i}: leaked"
                );
            }
        }
        // The same answers without duplicates pass.
        s.up.set(&obs("o1", "a"));
        let r = call(&s, t, "GET", "/fhir/Observation/o1", None).await;
        assert_eq!(r.status, 200, "token {i}");
    }
    // A request body with a duplicate member name is refused before the upstream.
    let t = token(
        &s.key,
        "launch/patient patient/*.read patient/*.write",
        Some("a"),
    );
    let before = s.up.count();
    let r = call(
        &s,
        &t,
        "POST",
        "/fhir/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/a"},"subject":{"reference":"Patient/b"}}"#.to_owned())),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "fhir_invalid"));
    assert_eq!(s.up.count(), before);
}

/// Every spelling of a reference to another patient (or one that cannot be resolved here).
fn foreign_references(gw_base: &str, up_base: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "Patient/b",
        "Patient/b/_history/1",
        "patient/b",
        "PATIENT/a",
        "Patient/%61",
        "Patient/%2561",
        "Pati%65nt/b",
        "Patient%2Fb",
        "../Patient/b",
        "./Patient/a",
        "/fhir/Patient/b",
        "Patient/a/../b",
        "Patient/a/Patient/b",
        "Patient?identifier=mrn|b",
        "Patient?_id=a",
        "?identifier=mrn|b",
        "https://evil.example/fhir/Patient/a",
        "urn:uuid:0b7a-not-in-the-bundle",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for base in [gw_base, up_base] {
        v.push(format!("{base}/Patient/b"));
        v.push(format!("{base}/Patient/b/_history/2"));
        v.push(format!("{}/Patient/b", base.to_uppercase()));
    }
    v
}

/// Places a reference can sit in a written Observation (or Patient, for `link.other`).
fn with_reference(path: &str, r: &str) -> Value {
    let rf = json!({"reference": r});
    let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "Patient/a"}});
    match path {
        "focus" => o["focus"] = json!([rf]),
        "performer" => o["performer"] = json!([rf]),
        "extension" => {
            o["extension"] = json!([{"url": "https://x.example/e", "valueReference": rf}])
        }
        "nested-extension" => {
            o["component"] = json!([{"code": {"text": "c"}, "extension": [{"url": "a", "extension": [{"url": "b", "valueReference": rf}]}]}])
        }
        "contained" => {
            o["contained"] = json!([{"resourceType": "Provenance", "id": "p1", "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Practitioner/x"}}], "target": [rf]}])
        }
        "derivedFrom" => o["derivedFrom"] = json!([rf]),
        "link.other" => {
            return json!({"resourceType": "Patient", "id": "a", "link": [{"other": rf, "type": "seealso"}]})
        }
        _ => unreachable!(),
    }
    o
}

const PATHS: &[&str] = &[
    "focus",
    "performer",
    "extension",
    "nested-extension",
    "contained",
    "derivedFrom",
    "link.other",
];

#[tokio::test]
async fn written_references_may_not_lead_to_another_patient() {
    let s = setup("").await;
    let t = token(
        &s.key,
        "launch/patient patient/*.read patient/*.write",
        Some("a"),
    );
    let gw_base = format!(
        "https://localhost:{}/fhir",
        s.gw.addr("public").unwrap().port()
    );
    let up_base = format!("http://{}/fhir", s.up_addr);
    let write = |v: &Value| -> (&'static str, String) {
        if v["resourceType"] == "Patient" {
            ("PUT", "/fhir/Patient/a".to_owned())
        } else {
            ("POST", "/fhir/Observation".to_owned())
        }
    };
    for r in foreign_references(&gw_base, &up_base) {
        for path in PATHS {
            let v = with_reference(path, &r);
            let (m, p) = write(&v);
            let before = s.up.count();
            let reply = call(
                &s,
                &t,
                m,
                &p,
                Some(("application/fhir+json", v.to_string())),
            )
            .await;
            assert_eq!(
                (reply.status, reply.code().as_str()),
                (403, "patient_mismatch"),
                "{path}: {r}"
            );
            assert_eq!(s.up.count(), before, "{path}: {r} reached the upstream");
            // The same resource inside a transaction.
            let url = if m == "PUT" {
                "Patient/a"
            } else {
                "Observation"
            };
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:1", "resource": v, "request": {"method": m, "url": url}}
            ]});
            let reply = call(
                &s,
                &t,
                "POST",
                "/fhir",
                Some(("application/fhir+json", tx.to_string())),
            )
            .await;
            assert_eq!(
                (reply.status, reply.code().as_str()),
                (403, "patient_mismatch"),
                "tx {path}: {r}"
            );
            assert_eq!(s.up.count(), before, "tx {path}: {r} reached the upstream");
        }
    }
    // Logical references that may resolve to any patient.
    for rf in [
        json!({"type": "Patient", "identifier": {"system": "mrn", "value": "b"}}),
        json!({"identifier": {"system": "mrn", "value": "b"}}),
        json!({"type": "Patient", "reference": "Group/g"}),
    ] {
        let mut v = with_reference("focus", "Practitioner/x");
        v["focus"] = json!([rf]);
        let before = s.up.count();
        let reply = call(
            &s,
            &t,
            "POST",
            "/fhir/Observation",
            Some(("application/fhir+json", v.to_string())),
        )
        .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, "patient_mismatch"),
            "{rf}"
        );
        assert_eq!(s.up.count(), before);
    }
    // The own patient, spelled relative or on this server's bases, is accepted; the
    // upstream receives the relative form.
    for own in [
        "Patient/a",
        "Patient/a/_history/3",
        &format!("{gw_base}/Patient/a"),
        &format!("{up_base}/Patient/a"),
    ] {
        for path in PATHS {
            let v = with_reference(path, own);
            let (m, p) = write(&v);
            let reply = call(
                &s,
                &t,
                m,
                &p,
                Some(("application/fhir+json", v.to_string())),
            )
            .await;
            assert!(
                reply.status == 200 || reply.status == 201,
                "{path}: {own}: {} {:?}",
                reply.status,
                reply.body
            );
            let got: Value = serde_json::from_slice(&s.up.last().body).unwrap();
            let text = got.to_string();
            assert!(
                !text.contains("\"reference\":\"http"),
                "{path}: {own}: forwarded {text}"
            );
            assert!(
                text.contains("\"Patient/a"),
                "{path}: {own}: forwarded {text}"
            );
        }
    }
    // A body with nothing to rewrite reaches the upstream byte for byte (a decimal's
    // trailing zero is precision in FHIR).
    let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"hr"},"subject":{"reference":"Patient/a"},"valueQuantity":{"value":1.50}}"#;
    let reply = call(
        &s,
        &t,
        "POST",
        "/fhir/Observation",
        Some(("application/fhir+json", raw.to_owned())),
    )
    .await;
    assert_eq!(reply.status, 201);
    assert_eq!(s.up.last().body, Bytes::from(raw));
    // An absolute reference elsewhere in a compartment element is refused even when it
    // does not look like a Patient.
    let mut v = with_reference("focus", "Practitioner/x");
    v["performer"] = json!([{"reference": "https://other.example/fhir/Practitioner/1"}]);
    let reply = call(
        &s,
        &t,
        "POST",
        "/fhir/Observation",
        Some(("application/fhir+json", v.to_string())),
    )
    .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (403, "patient_mismatch")
    );
    // `urn:uuid:` references resolve inside the transaction: to the own Patient fine, to
    // an unknown entry not.
    s.up.set(&json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "200 OK"}}, {"response": {"status": "201 Created"}}]}));
    for (target, ok) in [("urn:uuid:p", true), ("urn:uuid:q", false)] {
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/a"}},
            {"fullUrl": "urn:uuid:o", "resource": with_reference("focus", target), "request": {"method": "POST", "url": "Observation"}}
        ]});
        let before = s.up.count();
        let reply = call(
            &s,
            &t,
            "POST",
            "/fhir",
            Some(("application/fhir+json", tx.to_string())),
        )
        .await;
        if ok {
            assert_eq!(reply.status, 200, "{target}: {:?}", reply.body);
            assert_eq!(s.up.count(), before + 1);
        } else {
            assert_eq!(
                (reply.status, reply.code().as_str()),
                (403, "patient_mismatch"),
                "{target}"
            );
            assert_eq!(s.up.count(), before);
        }
    }
}

#[tokio::test]
async fn compartment_and_search_parameters_agree_with_the_patient() {
    let s = setup("").await;
    let t = token(&s.key, "launch/patient patient/*.read", Some("a"));
    let gw_base = format!(
        "https://localhost:{}/fhir",
        s.gw.addr("public").unwrap().port()
    );
    let up_base = format!("http://{}/fhir", s.up_addr);
    s.up.set(&json!({"resourceType": "Bundle", "type": "searchset", "total": 0}));
    let mut mismatches: Vec<String> = vec![
        "patient=b".into(),
        "patient=Patient/b".into(),
        "subject=Patient/b".into(),
        "subject:Patient=b".into(),
        "patient=a&patient=b".into(),
        "subject=Patient/a&subject=Patient/b".into(),
        "patient=a,b".into(),
        "subject=patient/a".into(),
        format!("subject={}", enc("Patient/%61")),
        format!("subject={}", enc("https://evil.example/fhir/Patient/a")),
        format!("patient={}", enc(&format!("{gw_base}/Patient/b"))),
        format!("patient={}", enc(&format!("{up_base}/Patient/b"))),
        "performer=Patient/b".into(),
    ];
    mismatches.push(format!("subject={}", enc("Patient?identifier=a")));
    for q in &mismatches {
        for path in [
            "/fhir/Patient/a/Observation",
            "/fhir/Patient/a/*",
            "/fhir/Observation",
        ] {
            let before = s.up.count();
            let r = call(&s, &t, "GET", &format!("{path}?{q}"), None).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "patient_mismatch"),
                "{path}?{q}"
            );
            assert_eq!(s.up.count(), before, "{path}?{q} reached the upstream");
        }
    }
    for q in [
        "Patient=b",
        "SUBJECT=Patient/b",
        "Patient=a",
        "subJect=a",
        "PERFORMER=Patient/a",
    ] {
        for path in ["/fhir/Patient/a/Observation", "/fhir/Observation"] {
            let before = s.up.count();
            let r = call(&s, &t, "GET", &format!("{path}?{q}"), None).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "search_param_denied"),
                "{path}?{q}"
            );
            assert_eq!(s.up.count(), before, "{path}?{q} reached the upstream");
        }
    }
    // This server's absolute bases are canonicalised before the upstream sees them.
    for base in [&gw_base, &up_base] {
        let r = call(
            &s,
            &t,
            "GET",
            &format!(
                "/fhir/Observation?subject={}",
                enc(&format!("{base}/Patient/a"))
            ),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{base}: {:?}", r.body);
        assert_eq!(
            s.up.last().pq,
            "/fhir/Observation?subject=Patient/a",
            "{base}"
        );
    }
}

/// Findings of the session's own adversarial review, kept as regressions (each a class).
#[tokio::test]
async fn review_regressions_patch_pieces_conditional_create_and_break_glass() {
    let s = setup("  break_glass:\n    scope: emergency-access\n    max_per_day: 100\n").await;
    let seen = |s: &Setup| s.up.seen.lock().unwrap().len();
    // A patient-context PATCH may not build a reference to another patient piece by piece,
    // carry one over, or turn a contained resource into a Patient.
    let t = token(
        &s.key,
        "patient/Observation.* patient/Observation.rs",
        Some("a"),
    );
    s.up.reply.lock().unwrap().clone_from(&bytes::Bytes::from(
        r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"}}"#,
    ));
    for ops in [
        r#"[{"op":"add","path":"/focus","value":[{"display":"x"}]},{"op":"add","path":"/focus/0/reference","value":"Patient/b"}]"#,
        r#"[{"op":"add","path":"/extension/0/valueReference/reference","value":"Patient/b"}]"#,
        r#"[{"op":"add","path":"/focus/0/type","value":"Patient"}]"#,
        r#"[{"op":"add","path":"/focus/0/identifier","value":{"value":"b"}}]"#,
        r#"[{"op":"replace","path":"/contained/0/resourceType","value":"Patient"}]"#,
        r#"[{"op":"copy","from":"/subject","path":"/focus/0"}]"#,
        r#"[{"op":"move","from":"/performer/0","path":"/focus/0"}]"#,
    ] {
        let before = seen(&s);
        let r = call(
            &s,
            &t,
            "PATCH",
            "/fhir/Observation/o1",
            Some(("application/json-patch+json", ops.to_owned())),
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "patient_mismatch"),
            "{ops}"
        );
        assert!(
            !s.up.seen.lock().unwrap()[before..]
                .iter()
                .any(|g| g.method == "PATCH"),
            "{ops} reached the upstream"
        );
    }
    // A harmless patch still goes through.
    let r = call(
        &s,
        &t,
        "PATCH",
        "/fhir/Observation/o1",
        Some((
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/status","value":"amended"}]"#.to_owned(),
        )),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Conditional create: a search/read oracle unless the token may search and read.
    let writer = token(&s.key, "system/Observation.c", None);
    let c = client(&s.env.pki, false);
    for cond in ["_id=123", "subject:Patient.name=Smith"] {
        let before = seen(&s);
        let req = Request::post(url(&s.gw, "/fhir/Observation"))
            .header("authorization", format!("Bearer {writer}"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", cond)
            .body(Full::new(Bytes::from(
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
            )))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "conditional_denied"),
            "{cond}"
        );
        assert_eq!(seen(&s), before, "{cond} reached the upstream");
    }

    // Break-glass reads one patient's record: no modifier, include or second patient.
    let er = token(
        &s.key,
        "patient/Observation.rs patient/Patient.rs emergency-access",
        Some("a"),
    );
    for q in [
        "patient:missing=false",
        "_id:not=zzz",
        "subject:missing=false",
        "patient=b&_include=Observation:subject",
        "patient=b&_revinclude=Provenance:target",
        "patient=b,c",
        "patient=b&subject=c",
        "patient.name=x",
    ] {
        let before = seen(&s);
        let req = Request::get(url(&s.gw, &format!("/fhir/Observation?{q}")))
            .header("authorization", format!("Bearer {er}"))
            .header("break-glass-reason", "unconscious patient in ED")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&c, req).await;
        // Refused, or answered inside the token's own compartment (the guard confined it
        // to patient `a`, as without break-glass): never another patient's data unconfined.
        if r.status == 200 {
            let got = s.up.seen.lock().unwrap()[before..].to_vec();
            assert!(
                got.iter().all(|g| g.pq.contains("patient=a")
                    || g.pq.contains("patient=Patient%2Fa")
                    || g.pq.contains("patient=Patient/a")),
                "{q}: forwarded unconfined: {:?}",
                got.iter().map(|g| g.pq.clone()).collect::<Vec<_>>()
            );
        } else {
            assert!(r.status == 403 || r.status == 400, "{q}: {}", r.status);
            assert_eq!(seen(&s), before, "{q} reached the upstream");
        }
    }
    // One named patient is still an emergency read.
    let req = Request::get(url(&s.gw, "/fhir/Observation?patient=b"))
        .header("authorization", format!("Bearer {er}"))
        .header("break-glass-reason", "unconscious patient in ED")
        .body(Full::new(Bytes::new()))
        .unwrap();
    s.up.reply.lock().unwrap().clone_from(&bytes::Bytes::from(
        r#"{"resourceType":"Bundle","type":"searchset","entry":[]}"#,
    ));
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn system_form_search_bodies_are_checked_like_queries() {
    let s = setup("  allowed_params: [code]\n  max_count: 10\n").await;
    let t = token(&s.key, "user/*.rs", None);
    let before = s.up.seen.lock().unwrap().len();
    let r = call(
        &s,
        &t,
        "POST",
        "/fhir/_search",
        Some((
            "application/x-www-form-urlencoded",
            "_type=Patient&name:contains=a&_count=100000".to_owned(),
        )),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(
        s.up.seen.lock().unwrap().len(),
        before,
        "forwarded unchecked"
    );
}
