//! The patient-compartment guard end to end: a FHIR upstream with two patients' records,
//! a token for patient A, and every way of reaching patient B's data.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

#[derive(Default)]
struct Ehr {
    seen: Mutex<Vec<String>>,
    /// Ignore search parameters (a buggy or hostile upstream).
    leaky: AtomicBool,
}

fn records() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Alpha"}]}),
        json!({"resourceType": "Patient", "id": "b", "name": [{"family": "Beta"}]}),
        json!({"resourceType": "Observation", "id": "oa1", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "Patient/a"}}),
        json!({"resourceType": "Observation", "id": "ob1", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "Patient/b"}}),
        json!({"resourceType": "Condition", "id": "ca1", "subject": {"reference": "Patient/a"}}),
        json!({"resourceType": "Condition", "id": "cb1", "subject": {"reference": "Patient/b"}}),
        json!({"resourceType": "Encounter", "id": "ea1", "status": "finished", "subject": {"reference": "Patient/a"}}),
        json!({"resourceType": "MedicationRequest", "id": "mb1", "subject": {"reference": "Patient/b"}}),
    ]
}

fn owner(r: &Value) -> Option<String> {
    if r["resourceType"] == "Patient" {
        return r["id"].as_str().map(str::to_owned);
    }
    r["subject"]["reference"]
        .as_str()
        .and_then(|s| s.strip_prefix("Patient/"))
        .map(str::to_owned)
}

fn fhir(status: u16, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/fhir+json".parse().unwrap());
    r
}

fn bundle(kind: &str, rs: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "total": rs.len(), "entry": rs.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
}

async fn handle(ehr: Arc<Ehr>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    ehr.seen
        .lock()
        .unwrap()
        .push(format!("{} {pq}", req.method()));
    let method = req.method().clone();
    let path = req.uri().path().trim_start_matches("/fhir/").to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if method == "GET" && path == "/fhir" && query.contains("_getpages") {
        // A continuation page of some search: everyone's Observations.
        return fhir(
            200,
            bundle(
                "searchset",
                records()
                    .into_iter()
                    .filter(|r| r["resourceType"] == "Observation")
                    .collect(),
            ),
        );
    }
    if method == "POST" && path == "/fhir" {
        // A batch processor that answers reads by id and searches (ignoring parameters).
        let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        ehr.seen.lock().unwrap().push(format!("BATCH {b}"));
        let all = records();
        let entries: Vec<Value> = b["entry"].as_array().cloned().unwrap_or_default().iter().map(|e| {
            let url = e["request"]["url"].as_str().unwrap_or("");
            match e["request"]["method"].as_str() {
                Some("GET") => {
                    let (p, _) = url.split_once('?').unwrap_or((url, ""));
                    let segs: Vec<&str> = p.split('/').collect();
                    match segs.as_slice() {
                        [t, id] => match all.iter().find(|r| r["resourceType"] == *t && r["id"] == *id) {
                            Some(r) => json!({"resource": r, "response": {"status": "200 OK"}}),
                            None => json!({"response": {"status": "404 Not Found"}}),
                        },
                        [t] => json!({"resource": bundle("searchset", all.iter().filter(|r| r["resourceType"] == *t).cloned().collect()), "response": {"status": "200 OK"}}),
                        _ => json!({"response": {"status": "400 Bad Request"}}),
                    }
                }
                _ => json!({"resource": e["resource"], "response": {"status": "201 Created"}}),
            }
        }).collect();
        return fhir(
            200,
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}),
        );
    }
    let segs: Vec<&str> = path.split('/').collect();
    let all = records();
    let not_found = || {
        fhir(
            404,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found", "diagnostics": "upstream"}]}),
        )
    };
    match (method.as_str(), segs.as_slice()) {
        ("GET", [t, id]) => match all
            .iter()
            .find(|r| r["resourceType"] == *t && r["id"] == *id)
        {
            Some(r) => fhir(200, r.clone()),
            None => not_found(),
        },
        ("GET", [t, id, "_history"]) => match all
            .iter()
            .find(|r| r["resourceType"] == *t && r["id"] == *id)
        {
            Some(r) => fhir(200, bundle("history", vec![r.clone()])),
            None => not_found(),
        },
        ("GET", ["Patient", id, "$everything"]) => fhir(
            200,
            bundle(
                "searchset",
                all.into_iter()
                    .filter(|r| owner(r).as_deref() == Some(id))
                    .collect(),
            ),
        ),
        ("GET", ["Patient", id, t]) => fhir(
            200,
            bundle(
                "searchset",
                all.into_iter()
                    .filter(|r| r["resourceType"] == *t && owner(r).as_deref() == Some(id))
                    .collect(),
            ),
        ),
        ("GET", [t]) => {
            let want: Option<String> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| ["subject", "patient", "_id"].contains(k))
                .map(|(_, v)| {
                    v.replace("%2F", "/")
                        .trim_start_matches("Patient/")
                        .to_owned()
                });
            let leaky = ehr.leaky.load(Ordering::SeqCst);
            let rs = all
                .into_iter()
                .filter(|r| {
                    r["resourceType"] == *t && (leaky || want.is_none() || owner(r) == want)
                })
                .collect();
            {
                let mut b = bundle("searchset", rs);
                b["link"] = json!([
                    {"relation": "self", "url": format!("http://ehr.internal:8080/fhir/{t}?{query}")},
                    {"relation": "next", "url": format!("http://ehr.internal:8080/fhir?_getpages=abc&_getpagesoffset=10")},
                    {"relation": "other", "url": "https://elsewhere.example/x"},
                ]);
                fhir(200, b)
            }
        }
        ("DELETE", [t, id]) => match all
            .iter()
            .find(|r| r["resourceType"] == *t && r["id"] == *id)
        {
            Some(_) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = http::StatusCode::NO_CONTENT;
                r
            }
            None => not_found(),
        },
        ("PATCH", [t, id]) => match all
            .iter()
            .find(|r| r["resourceType"] == *t && r["id"] == *id)
        {
            Some(r) => fhir(200, r.clone()),
            None => not_found(),
        },
        ("POST", [_t]) | ("PUT", [_t, _]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            fhir(if method == "POST" { 201 } else { 200 }, v)
        }
        _ => not_found(),
    }
}

async fn ehr() -> (std::net::SocketAddr, Arc<Ehr>) {
    let state = Arc::new(Ehr::default());
    let addr = serve_http1(state.clone(), handle).await;
    (addr, state)
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    ehr: Arc<Ehr>,
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
        &format!("fhir_authz:\n  allowed_operations: [everything]\n  max_count: 50\n{guard}"),
    );
    let (up, ehr) = ehr().await;
    let cfg = basic_config(up, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, guard]\n",
    );
    let gw = env.start(&cfg).await;
    Setup { env, gw, ehr, key }
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

async fn req(s: &Setup, tok: &str, method: &str, path: &str, body: Option<(&str, Value)>) -> Reply {
    let c = client(&s.env.pki, false);
    let mut b = Request::builder()
        .method(method)
        .uri(url(&s.gw, path))
        .header("authorization", format!("Bearer {tok}"));
    let body = match body {
        Some((ct, v)) => {
            b = b.header("content-type", ct);
            match v {
                Value::String(text) => Bytes::from(text),
                v => Bytes::from(v.to_string()),
            }
        }
        None => Bytes::new(),
    };
    send(&c, b.body(Full::new(body)).unwrap()).await
}

fn ids(r: &Reply) -> Vec<String> {
    r.json()["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

const PATIENT_SCOPES: &str = "launch/patient patient/*.read patient/*.write";

#[tokio::test]
async fn reads_are_confined_to_the_patient() {
    let s = setup("").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    // A's own records come back exactly as the upstream sent them.
    for (path, id) in [
        ("/fhir/Observation/oa1", "oa1"),
        ("/fhir/Encounter/ea1", "ea1"),
        ("/fhir/Condition/ca1", "ca1"),
        ("/fhir/Patient/a", "a"),
    ] {
        let r = req(&s, &t, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
        let upstream = records().into_iter().find(|x| x["id"] == id).unwrap();
        assert_eq!(
            r.body,
            Bytes::from(upstream.to_string()),
            "{path}: response changed"
        );
    }
    assert_eq!(
        req(&s, &t, "GET", "/fhir/MedicationRequest/mb1", None)
            .await
            .status,
        404
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation/oa1", None)
            .await
            .status,
        200
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Patient/a", None).await.status,
        200
    );
    // Another patient's records look exactly like records that do not exist.
    let missing = req(&s, &t, "GET", "/fhir/Observation/nope", None).await;
    for path in [
        "/fhir/Observation/ob1",
        "/fhir/Patient/b",
        "/fhir/Observation/ob1/_history",
        "/fhir/Patient/b/$everything",
        "/fhir/Patient/b/Observation",
    ] {
        let r = req(&s, &t, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.code(), missing.code(), "{path}");
        assert_eq!(
            r.json()["issue"][0]["code"],
            missing.json()["issue"][0]["code"],
            "{path}"
        );
    }
    // $everything and compartment search on the own patient, filtered.
    let r = req(&s, &t, "GET", "/fhir/Patient/a/$everything", None).await;
    assert_eq!(r.status, 200);
    assert!(ids(&r).contains(&"oa1".to_owned()) && !ids(&r).contains(&"ob1".to_owned()));
    assert_eq!(
        ids(&req(&s, &t, "GET", "/fhir/Patient/a/Observation", None).await),
        vec!["oa1"]
    );
    // user/ scopes without a patient context are not confined.
    let u = token(&s.key, "user/*.read", None);
    assert_eq!(
        req(&s, &u, "GET", "/fhir/Observation/ob1", None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn searches_are_restricted_and_filtered() {
    let s = setup("").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    // No patient parameter: the gateway adds one.
    let r = req(&s, &t, "GET", "/fhir/Observation?code=hr&_count=1000", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(ids(&r), vec!["oa1"]);
    let last = s.ehr.seen.lock().unwrap().last().cloned().unwrap();
    assert!(last.contains("subject=Patient/a"), "{last}");
    assert!(last.contains("_count=50"), "_count not capped: {last}");
    // Naming another patient, any way: 403.
    for q in [
        "patient=b",
        "subject=Patient/b",
        "patient=a,b",
        "subject=https://ehr.example/fhir/Patient/b",
        "subject:missing=true",
        "patient:identifier=x|1",
    ] {
        let r = req(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
        assert_eq!(r.status, 403, "{q}: {:?}", r.body);
    }
    // Widening parameters: 403 unless the route allows them.
    for q in [
        "patient=a&_include=Observation:subject",
        "patient=a&_revinclude=Observation:focus",
        "_has:Observation:patient:code=1234",
        "subject:Patient.name=Alpha",
        "patient=a&_include:iterate=Observation:subject",
    ] {
        let r = req(&s, &t, "GET", &format!("/fhir/Observation?{q}"), None).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "search_param_denied"),
            "{q}"
        );
    }
    // POST _search with the patient in the form body.
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir/Observation/_search",
        Some((
            "application/x-www-form-urlencoded",
            Value::String("patient=b".into()),
        )),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir/Observation/_search",
        Some((
            "application/x-www-form-urlencoded",
            Value::String("code=hr".into()),
        )),
    )
    .await;
    assert_eq!((r.status, ids(&r)), (200, vec!["oa1".to_owned()]));
    // Types outside the compartment and system-wide searches: 403.
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Organization", None).await.status,
        403
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir?_type=Observation", None)
            .await
            .status,
        403
    );
    // An upstream that ignores the restriction still cannot leak: entries are removed.
    s.ehr.leaky.store(true, Ordering::SeqCst);
    let r = req(&s, &t, "GET", "/fhir/Condition", None).await;
    assert_eq!(ids(&r), vec!["ca1"]);
    assert_eq!(r.json()["total"], 1);
}

#[tokio::test]
async fn leaky_upstream_fails_closed_when_configured() {
    let s = setup("  bundle_mode: fail\n").await;
    s.ehr.leaky.store(true, Ordering::SeqCst);
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    let r = req(&s, &t, "GET", "/fhir/Condition", None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "patient_mismatch"));
}

#[tokio::test]
async fn writes_and_bundles() {
    let s = setup("").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    let obs = |p: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p}")}});
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir/Observation",
        Some(("application/fhir+json", obs("b"))),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "patient_mismatch"));
    assert_eq!(
        req(
            &s,
            &t,
            "POST",
            "/fhir/Observation",
            Some(("application/fhir+json", obs("a")))
        )
        .await
        .status,
        201
    );
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir/Condition",
        Some(("application/fhir+json", obs("a"))),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "fhir_type_mismatch"));
    let mut upd = obs("a");
    upd["id"] = "other".into();
    assert_eq!(
        req(
            &s,
            &t,
            "PUT",
            "/fhir/Observation/oa1",
            Some(("application/fhir+json", upd))
        )
        .await
        .code(),
        "fhir_id_mismatch"
    );
    // Transactions: each entry authorized as its own request.
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let post =
        |r: Value| json!({"resource": r, "request": {"method": "POST", "url": "Observation"}});
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir",
        Some((
            "application/fhir+json",
            tx(vec![post(obs("a")), post(obs("b"))]),
        )),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "patient_mismatch"),
        "an entry for B slipped through"
    );
    assert_eq!(
        req(
            &s,
            &t,
            "POST",
            "/fhir",
            Some(("application/fhir+json", tx(vec![post(obs("a"))])))
        )
        .await
        .status,
        200
    );
    let nested = json!({"resource": tx(vec![post(obs("b"))]), "request": {"method": "POST", "url": "Bundle"}});
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir",
        Some(("application/fhir+json", tx(vec![nested]))),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "fhir_nested_bundle"));
    // Reads and searches inside a batch: restricted, and their results checked.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/ob1"}},
        {"request": {"method": "GET", "url": "Observation/oa1"}},
        {"request": {"method": "GET", "url": "Condition?code=x"}},
    ]});
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir",
        Some(("application/fhir+json", batch)),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(
        v["entry"][0]["response"]["status"], "404 Not Found",
        "B's record leaked through a batch read"
    );
    assert!(v["entry"][0].get("resource").is_none());
    assert_eq!(v["entry"][1]["resource"]["id"], "oa1");
    let found: Vec<&str> = v["entry"][2]["resource"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(found, vec!["ca1"]);
    let sent = s
        .ehr
        .seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|l| l.starts_with("BATCH"))
        .cloned()
        .unwrap();
    assert!(
        sent.contains("Condition?code=x&patient=Patient/a"),
        "entry URL not restricted: {sent}"
    );
    let del = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "DELETE", "url": "Observation/ob1"}}]});
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir",
        Some(("application/fhir+json", del)),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "batch_change_unsupported")
    );
    let abs = json!({"resource": obs("a"), "request": {"method": "POST", "url": "https://elsewhere.example/Observation"}});
    assert_eq!(
        req(
            &s,
            &t,
            "POST",
            "/fhir",
            Some(("application/fhir+json", tx(vec![abs])))
        )
        .await
        .status,
        400
    );
    // Deletes and patches of the patient's own records (checked by reading them first).
    assert_eq!(
        req(&s, &t, "DELETE", "/fhir/Observation/oa1", None)
            .await
            .status,
        204
    );
    assert_eq!(
        req(&s, &t, "DELETE", "/fhir/Observation/ob1", None)
            .await
            .status,
        404
    );
    assert_eq!(
        req(&s, &t, "DELETE", "/fhir/Patient/a", None).await.status,
        403
    );
    let patch = |ops: Value| Some(("application/json-patch+json", ops));
    assert_eq!(
        req(
            &s,
            &t,
            "PATCH",
            "/fhir/Observation/oa1",
            patch(json!([{"op": "replace", "path": "/status", "value": "amended"}]))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        req(
            &s,
            &t,
            "PATCH",
            "/fhir/Observation/ob1",
            patch(json!([{"op": "replace", "path": "/status", "value": "amended"}]))
        )
        .await
        .status,
        404
    );
    let r = req(
        &s,
        &t,
        "PATCH",
        "/fhir/Observation/oa1",
        patch(json!([{"op": "replace", "path": "/subject/reference", "value": "Patient/b"}])),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "patient_mismatch"));
    let r = req(
        &s,
        &t,
        "PATCH",
        "/fhir/Observation/oa1",
        Some((
            "application/fhir+json",
            json!({"resourceType": "Parameters"}),
        )),
    )
    .await;
    assert_eq!(r.status, 415);
    // Operations other than $everything are refused.
    assert_eq!(
        req(&s, &t, "GET", "/fhir/$export", None).await.code(),
        "operation_denied"
    );
    let seen = s.ehr.seen.lock().unwrap().clone();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("DELETE /fhir/Observation/ob1")
                || l.starts_with("DELETE /fhir/Patient")
                || l.contains("$export")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("PATCH /fhir/Observation/ob1")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("PATCH")).count(),
        1,
        "{seen:?}"
    );
}

#[tokio::test]
async fn scopes_are_enforced_per_type() {
    let s = setup("").await;
    let t = token(&s.key, "patient/Observation.rs", Some("a"));
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation/oa1", None)
            .await
            .status,
        200
    );
    let r = req(&s, &t, "GET", "/fhir/Condition/ca1", None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let r = req(
        &s,
        &t,
        "POST",
        "/fhir/Observation",
        Some((
            "application/fhir+json",
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}}),
        )),
    )
    .await;
    assert_eq!(r.status, 403, "read scope allowed a create");
    // A patient scope without a patient context cannot be confined: refused.
    let t = token(&s.key, "patient/*.read", None);
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation/oa1", None)
            .await
            .code(),
        "patient_context_missing"
    );
    let (_, m) = admin_get(&s.gw, "/metrics").await;
    assert!(m.contains("ward_fhir_authz_total{code=\"insufficient_scope\",decision=\"deny\",interaction=\"read\",resource_type=\"Condition\",route=\"fhir\"} 1"), "{m}");
}

#[tokio::test]
async fn route_allow_lists() {
    let s = setup("  allowed_includes: [\"Observation:subject\", \"iterate:Observation:subject\"]\n  allowed_params: [code, \"date:*\", patient, subject]\n  count_mode: reject\n").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    assert_eq!(
        req(
            &s,
            &t,
            "GET",
            "/fhir/Observation?patient=a&_include=Observation:subject",
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        req(
            &s,
            &t,
            "GET",
            "/fhir/Observation?patient=a&_include=Observation:performer",
            None
        )
        .await
        .code(),
        "search_param_denied"
    );
    assert_eq!(
        req(
            &s,
            &t,
            "GET",
            "/fhir/Observation?code=x&date:missing=true",
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation?code:not=x", None)
            .await
            .code(),
        "search_param_denied"
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation?status=final", None)
            .await
            .code(),
        "search_param_denied"
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation?_count=51", None)
            .await
            .code(),
        "search_count_exceeded"
    );
    assert_eq!(
        req(
            &s,
            &t,
            "GET",
            "/fhir/Observation?patient=a&_include:iterate=Observation:subject",
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        req(
            &s,
            &t,
            "GET",
            "/fhir/Observation?patient=a&_include:iterate=Observation:performer",
            None
        )
        .await
        .code(),
        "search_param_denied"
    );
}

/// Regressions from a review of the guard: each of these once reached patient B's data.
#[tokio::test]
async fn guard_bypass_regressions() {
    let s = setup("").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    let obs = |subject: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": subject}});
    let fhir_json = |v: Value| Some(("application/fhir+json", v));
    // A batch POST entry whose URL looks like a search is still a create.
    let sneaky = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST", "url": "Observation/_search"}, "resource": obs("Patient/b")}]});
    assert_eq!(
        req(&s, &t, "POST", "/fhir", fhir_json(sneaky)).await.code(),
        "fhir_batch_entry_invalid"
    );
    // `entry` given as an object.
    let object = json!({"resourceType": "Bundle", "type": "batch", "entry": {"request": {"method": "GET", "url": "Observation?subject=Patient/b"}}});
    assert_eq!(
        req(&s, &t, "POST", "/fhir", fhir_json(object)).await.status,
        400
    );
    // Conditional create searches across patients.
    let c = client(&s.env.pki, false);
    let r = send(
        &c,
        Request::post(url(&s.gw, "/fhir/Observation"))
            .header("authorization", format!("Bearer {t}"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "subject=Patient/b")
            .body(Full::new(Bytes::from(obs("Patient/a").to_string())))
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "conditional_denied"));
    // Overwriting B's record by id: the target is read first and hidden.
    let mut upd = obs("Patient/a");
    upd["id"] = "ob1".into();
    assert_eq!(
        req(&s, &t, "PUT", "/fhir/Observation/ob1", fhir_json(upd))
            .await
            .status,
        404
    );
    let mut own = obs("Patient/a");
    own["id"] = "oa1".into();
    assert_eq!(
        req(&s, &t, "PUT", "/fhir/Observation/oa1", fhir_json(own))
            .await
            .status,
        200
    );
    // Types outside the compartment table that may hold patient data.
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Binary/1", None).await.code(),
        "type_outside_compartment"
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Bundle/1", None).await.code(),
        "type_outside_compartment"
    );
    // Writes must be the patient's by their primary link, and name no other patient.
    let mut perf = obs("Patient/b");
    perf["performer"] = json!([{"reference": "Patient/a"}]);
    assert_eq!(
        req(&s, &t, "POST", "/fhir/Observation", fhir_json(perf))
            .await
            .code(),
        "patient_mismatch"
    );
    for subject in [
        "Patient/b/Patient/a",
        "https://evil.example/Patient/a",
        "Patient?identifier=mrn|b&x=/Patient/a",
    ] {
        assert_eq!(
            req(&s, &t, "POST", "/fhir/Observation", fhir_json(obs(subject)))
                .await
                .code(),
            "patient_mismatch",
            "{subject}"
        );
    }
    // Parameters on deletes reach beyond the resource.
    assert_eq!(
        req(
            &s,
            &t,
            "DELETE",
            "/fhir/Observation/oa1?_cascade=delete",
            None
        )
        .await
        .code(),
        "conditional_denied"
    );
    // Existence oracles: HEAD (answered exactly as the guarded GET: the other patient's
    // record is hidden the same way) and non-JSON formats.
    let got = req(&s, &t, "GET", "/fhir/Observation/ob1", None).await;
    assert_eq!(got.status, 404);
    let head = Request::head(url(&s.gw, "/fhir/Observation/ob1"))
        .header("authorization", format!("Bearer {t}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let head = send(&c, head).await;
    assert_eq!(head.status, got.status);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers.get("content-length"),
        got.headers.get("content-length")
    );
    assert_eq!(
        req(&s, &t, "GET", "/fhir/Observation/ob1?_format=xml", None)
            .await
            .code(),
        "format_denied"
    );
    let seen = s.ehr.seen.lock().unwrap().clone();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("PUT /fhir/Observation/ob1")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("Binary") || l.contains("_cascade")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn paging_links_lead_back_through_the_gateway() {
    let s = setup("").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    let r = req(&s, &t, "GET", "/fhir/Observation?code=hr", None).await;
    assert_eq!(r.status, 200);
    let links = r.json()["link"].as_array().cloned().unwrap();
    let base = format!(
        "https://localhost:{}/fhir",
        s.gw.addr("public").unwrap().port()
    );
    assert_eq!(
        links.len(),
        2,
        "the link leading elsewhere must go: {links:?}"
    );
    for l in &links {
        assert!(l["url"].as_str().unwrap().starts_with(&base), "{l}");
    }
    // Following `next` goes through the guard: the page is filtered like any search.
    let next = links.iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = next
        .strip_prefix(&format!(
            "https://localhost:{}",
            s.gw.addr("public").unwrap().port()
        ))
        .unwrap()
        .to_owned();
    let page = req(&s, &t, "GET", &path, None).await;
    assert_eq!((page.status, ids(&page)), (200, vec!["oa1".to_owned()]));
    // Page requests carry nothing but paging parameters.
    assert_eq!(
        req(&s, &t, "GET", "/fhir?_getpages=abc&_type=Patient", None)
            .await
            .code(),
        "search_param_denied"
    );
}

/// A launch-context patient claim that names nobody — blank, or not a string — is refused
/// (401) under the configured claim name, whatever the scopes: broad scopes must not read
/// it as "no patient context", patient scopes must not confine to an empty id.
#[tokio::test]
async fn a_blank_or_malformed_patient_claim_is_refused() {
    let s = setup("  patient_claim: launch_patient\n").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let k = EncodingKey::from_ec_pem(s.key.serialize_pem().as_bytes()).unwrap();
    let tok = |scope: &str, p: Value| {
        let c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": "app-1", "exp": now + 600, "scope": scope, "launch_patient": p});
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
    };
    let bad = [
        json!(""),
        json!(" "),
        json!("\t"),
        json!("\r\n"),
        json!("\u{a0}"),
        json!(7),
        json!(["a"]),
        json!({}),
        json!(null),
        json!(false),
    ];
    for scope in [PATIENT_SCOPES, "user/*.read", "system/*.read"] {
        for p in &bad {
            for path in [
                "/fhir/Patient/a",
                "/fhir/Observation?code=hr",
                "/fhir/Patient",
            ] {
                let r = req(&s, &tok(scope, p.clone()), "GET", path, None).await;
                assert_eq!(
                    (r.status, r.code().as_str()),
                    (401, "token_claim_invalid"),
                    "{scope} {p} {path}: {:?}",
                    r.body
                );
            }
        }
    }
    assert!(
        s.ehr.seen.lock().unwrap().is_empty(),
        "a refused token reached the EHR"
    );
    // The same claim with a real id confines as usual.
    let r = req(
        &s,
        &tok(PATIENT_SCOPES, json!("a")),
        "GET",
        "/fhir/Patient/a",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = req(
        &s,
        &tok(PATIENT_SCOPES, json!("a")),
        "GET",
        "/fhir/Patient/b",
        None,
    )
    .await;
    assert_eq!(r.status, 404);
}

async fn lexed_responses(gw: &ward::Gateway) -> u64 {
    let (_, m) = admin_get(gw, "/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix("ward_json_lex_total{direction=\"response\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The guard and DLP on one route read each answer from one lexing (issue #20): DLP (closest
/// to the upstream) lexes the answer and the guard reuses that index, so
/// `ward_json_lex_total{direction="response"}` grows by exactly one per JSON answer — for
/// reads that pass, reads of someone else's record (hidden), and searches. An answer DLP
/// rewrites is new bytes, so the guard's read of it is a second lexing (never a stale index).
/// What the client gets is still each policy's verdict.
#[tokio::test]
async fn the_guard_judges_the_upstreams_answer_before_dlp_redacts_it() {
    // DLP redacts the very references the compartment guard decides on. The guard must
    // judge what the EHR sent (the patient's own records pass, another patient's stay
    // hidden), and the client must still get the redacted answer.
    let s = setup(
        "dlp:\n  direction: response\n  fhir:\n    - path: Observation.subject\n      action: redact\n    - path: Encounter.subject\n      action: redact\n",
    )
    .await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    let cases: [(&str, u16); 6] = [
        ("/fhir/Observation/oa1", 200),
        ("/fhir/Encounter/ea1", 200),
        ("/fhir/Observation/ob1", 404),
        ("/fhir/Observation?patient=a", 200),
        ("/fhir/Encounter?patient=Patient/a", 200),
        ("/fhir/Observation?patient=b", 403),
    ];
    for (path, want) in cases {
        let r = req(&s, &t, "GET", path, None).await;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, want, "{path}: {text}");
        if want == 200 {
            let v = r.json();
            let resources: Vec<serde_json::Value> = match v["resourceType"].as_str() {
                Some("Bundle") => v["entry"]
                    .as_array()
                    .map(|e| e.iter().map(|x| x["resource"].clone()).collect())
                    .unwrap_or_default(),
                Some(_) => vec![v.clone()],
                None => vec![],
            };
            assert!(
                !resources.is_empty(),
                "{path}: the patient's own records were hidden: {text}"
            );
            for res in resources {
                assert!(res["id"].is_string(), "{path}: {text}");
                // The reference the guard decided on never reaches the client.
                assert!(
                    !res.to_string().contains("Patient/"),
                    "{path}: not redacted: {text}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_guard_and_dlp_share_one_lexing_of_each_answer() {
    let s = setup("dlp:\n  direction: response\n  preset: safe_harbor\n").await;
    let t = token(&s.key, PATIENT_SCOPES, Some("a"));
    // (path, status, lexings): the guard reads the upstream's answer first and DLP reuses
    // its index, also for the Patient whose name Safe Harbor then redacts. A search answer
    // is changed by the guard (its paging links pointed at the gateway): those new bytes
    // are lexed again by DLP — an index is only ever used for the bytes it was built from.
    let cases: [(&str, u16, u64); 6] = [
        ("/fhir/Observation/oa1", 200, 1),
        ("/fhir/Encounter/ea1", 200, 1),
        ("/fhir/Patient/a", 200, 1),
        ("/fhir/Observation/ob1", 404, 1),
        ("/fhir/Observation?patient=a", 200, 2),
        ("/fhir/Encounter?patient=Patient/a", 200, 2),
    ];
    for (path, want, lexings) in cases {
        let before = lexed_responses(&s.gw).await;
        let r = req(&s, &t, "GET", path, None).await;
        assert_eq!(
            r.status,
            want,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let after = lexed_responses(&s.gw).await;
        assert_eq!(
            after - before,
            lexings,
            "{path}: answer lexed {} times",
            after - before
        );
        if want == 200 {
            // DLP ran on the shared index: the answer still parses, and the patient's name
            // (Safe Harbor) is gone.
            let v = r.json();
            assert!(v["resourceType"].is_string(), "{path}");
            if path == "/fhir/Patient/a" {
                let text = String::from_utf8_lossy(&r.body);
                assert!(!text.contains("Alpha"), "{path}: {text}");
            }
        }
    }
}
