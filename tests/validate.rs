//! The `validate` policy over real TLS: valid FHIR R4 bodies reach the upstream byte for
//! byte; invalid ones get 400 with an OperationOutcome listing each finding (severity,
//! code, expression) and never reach it; XML, `_format` conflicts, bodies on bodiless
//! interactions and wrong resource types are refused; profile rules apply; HL7 v2 (ER7)
//! bodies are validated and refused with an HL7 ACK (AE/AR, MSA-2 = MSH-10, ERR).

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

fn with_policy(cfg: String, fhir: &str, api: &str) -> String {
    let cfg = cfg.replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        &format!(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [{fhir}]\n"
        ),
    );
    cfg.replace(
        "    path_prefix: /api\n    upstream: ehr\n",
        &format!("    path_prefix: /api\n    upstream: ehr\n    policies: [{api}]\n"),
    )
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    state: std::sync::Arc<UpstreamState>,
}

async fn setup(fhir_policy: &str) -> Setup {
    let env = Env::new();
    env.write("policies/fhir-valid.yaml", fhir_policy);
    env.write(
        "policies/hl7.yaml",
        "validate:\n  hl7v2:\n    allowed_message_types: [ADT^A01, ADT^A04]\n    allowed_versions: [2.5, 2.5.1]\n",
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policy(basic_config(up, "", ""), "fhir-valid", "hl7"))
        .await;
    Setup { env, gw, state }
}

const PLAIN: &str = "validate:\n  fhir: {}\n";

async fn call(s: &Setup, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Reply {
    let c = client(&s.env.pki, false);
    let mut b = Request::builder().method(method).uri(url(&s.gw, path));
    if let Some(t) = ctype {
        b = b.header("content-type", t);
    }
    send(&c, b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await
}

async fn post_json(s: &Setup, path: &str, v: &Value) -> Reply {
    call(
        s,
        "POST",
        path,
        Some("application/fhir+json"),
        v.to_string().as_bytes(),
    )
    .await
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "extension": [{
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                {"url": "text", "valueString": "White"}
            ]
        }],
        "identifier": [{"system": "http://hospital.example/mrn", "value": "12345"}],
        "name": [{"family": "Testperson", "given": ["Alba", "Maria"]}],
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T08:30:00+01:00"}]},
        "birthDate": "1970-01-01",
        "gender": "female",
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Clinic"}],
        "managingOrganization": {"reference": "#org1"}
    })
}

/// The findings of a 400 (issue[0] is Ward's own code).
fn findings(r: &Reply) -> Vec<(String, String)> {
    let v = r.json();
    v["issue"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|i| {
            (
                i["code"].as_str().unwrap_or_default().to_owned(),
                i["expression"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_valid_resource_reaches_the_upstream_byte_for_byte() {
    let s = setup(PLAIN).await;
    let body = serde_json::to_vec_pretty(&patient()).unwrap();
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+json; charset=utf-8"),
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = s.state.last();
    assert_eq!(seen.body, Bytes::from(body.clone()));
    assert_eq!(seen.headers["content-length"], body.len().to_string());
    // Update with plain application/json, and a transaction Bundle.
    let r = call(
        &s,
        "PUT",
        "/fhir/Patient/p1",
        Some("application/json"),
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "heart rate"},
            "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    assert_eq!(post_json(&s, "/fhir", &tx).await.status, 200);
    assert_eq!(s.state.count(), 3);
}

#[tokio::test]
async fn invalid_resources_get_an_operation_outcome_listing_every_finding() {
    let s = setup(PLAIN).await;
    let mut p = patient();
    p["gender"] = json!("robot");
    p["birthDate"] = json!("1970-13-01");
    p["favouriteColour"] = json!("blue");
    p["name"] = json!({"family": "x"});
    let r = post_json(&s, "/fhir/Patient", &p).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "fhir_invalid");
    let f = findings(&r);
    for (code, expr) in [
        ("code-invalid", "Patient.gender"),
        ("value", "Patient.birthDate"),
        ("structure", "Patient.favouriteColour"),
        ("structure", "Patient.name"),
    ] {
        assert!(
            f.iter().any(|(c, e)| c == code && e == expr),
            "missing {code} at {expr} in {f:?}"
        );
    }
    // No value from the body is echoed back (PHI).
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains("robot") && !text.contains("1970-13-01") && !text.contains("blue"));
    // Duplicate keys, an empty string, a missing required element, an unknown type.
    let dup = br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#;
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+json"),
        dup,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(findings(&r).iter().any(|(c, _)| c == "structure"));
    let obs = json!({"resourceType": "Observation", "code": {"text": ""}});
    let r = post_json(&s, "/fhir/Observation", &obs).await;
    let f = findings(&r);
    assert!(
        f.iter()
            .any(|(c, e)| c == "required" && e == "Observation.status"),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|(c, e)| c == "value" && e == "Observation.code.text"),
        "{f:?}"
    );
    // A bad entry deep in a batch is located.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "yesterday"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    let r = post_json(&s, "/fhir", &batch).await;
    assert_eq!(r.status, 400);
    let f = findings(&r);
    assert!(
        f.iter()
            .any(|(_, e)| e == "Bundle.entry[1].resource.birthDate"),
        "{f:?}"
    );
    // Not JSON at all; too deep.
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+json"),
        b"{\"resourceType\":\"Patient\",",
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "fhir_invalid"));
    let deep = format!(
        "{{\"resourceType\":\"Parameters\",\"x\":{}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let r = call(
        &s,
        "POST",
        "/fhir/$op",
        Some("application/fhir+json"),
        deep.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(s.state.count(), 0, "nothing invalid reached the upstream");
    let (_, metrics) = admin_get(&s.gw, "/metrics").await;
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ward_validation_failures_total{") && l.contains("route=\"fhir\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 6.0, "{metrics}");
}

#[tokio::test]
async fn media_types_format_and_request_shape_are_enforced() {
    let s = setup(PLAIN).await;
    let xml = br#"<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>"#;
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+xml"),
        xml,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (415, "xml_not_supported"));
    let r = call(&s, "POST", "/fhir/Patient", None, b"{}").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = call(&s, "POST", "/fhir/Patient", Some("text/plain"), b"hello").await;
    assert_eq!(r.status, 415);
    let body = patient().to_string();
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+json; charset=iso-8859-1"),
        body.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (415, "unsupported_charset"));
    // `_format` saying XML while the body is JSON: the EHR could read it as XML.
    let r = call(
        &s,
        "POST",
        "/fhir/Patient?_format=xml",
        Some("application/fhir+json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "format_conflict"));
    let r = call(
        &s,
        "POST",
        "/fhir/Patient?_format=json",
        Some("application/fhir+json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Ways the EHR could read the body differently than the gateway did.
    let r = call(
        &s,
        "POST",
        "/fhir/Patient",
        Some("application/fhir+json; fhirVersion=3.0"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "fhir_version_unsupported")
    );
    assert_eq!(
        call(
            &s,
            "POST",
            "/fhir/Patient",
            Some("application/fhir+json; fhirVersion=4.0"),
            body.as_bytes()
        )
        .await
        .status,
        200
    );
    let r = call(
        &s,
        "POST",
        "/fhir/Patient?_format=json&_format=xml",
        Some("application/fhir+json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "format_conflict"));
    let c = client(&s.env.pki, false);
    let two_types = Request::post(url(&s.gw, "/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .header("content-type", "application/fhir+xml")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    assert_eq!(send(&c, two_types).await.status, 415);
    let gz = Request::post(url(&s.gw, "/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = send(&c, gz).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_content_encoding")
    );
    // Answers are FHIR JSON only: `_format` or `Accept` that admit nothing else get 406.
    let c = client(&s.env.pki, false);
    for (path, accept) in [
        ("/fhir/Patient/p1?_format=xml", None),
        ("/fhir/Patient/p1", Some("application/fhir+xml")),
        (
            "/fhir/Patient/p1",
            Some("application/fhir+json;q=0, application/fhir+xml"),
        ),
    ] {
        let mut b = Request::get(url(&s.gw, path));
        if let Some(a) = accept {
            b = b.header("accept", a);
        }
        let r = send(&c, b.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (406, "format_not_acceptable"),
            "{path} {accept:?}"
        );
    }
    for accept in [
        "application/fhir+json",
        "application/json",
        "*/*",
        "text/html, */*;q=0.8",
    ] {
        let r = send(
            &c,
            Request::get(url(&s.gw, "/fhir/Patient/p1"))
                .header("accept", accept)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{accept}");
    }
    // The body must be what the URL addresses.
    let r = post_json(&s, "/fhir/Observation", &patient()).await;
    assert_eq!(r.status, 400);
    assert!(findings(&r).iter().any(|(c, _)| c == "invalid"));
    // A body on a read is refused, not passed along unvalidated.
    let r = call(
        &s,
        "GET",
        "/fhir/Patient/p1",
        Some("application/fhir+json"),
        body.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "unexpected_body"));
    // Reads without a body are untouched.
    assert_eq!(
        call(&s, "GET", "/fhir/Patient/p1", None, b"").await.status,
        200
    );
    assert_eq!(s.state.count(), 7);
}

#[tokio::test]
async fn patches_are_checked_for_their_shape() {
    let s = setup(PLAIN).await;
    let ok = br#"[{"op":"replace","path":"/gender","value":"male"},{"op":"remove","path":"/telecom/0"}]"#;
    let r = call(
        &s,
        "PATCH",
        "/fhir/Patient/p1",
        Some("application/json-patch+json"),
        ok,
    )
    .await;
    assert_eq!(r.status, 200);
    for bad in [
        &br#"[{"op":"replace","path":"/gender"}]"#[..],
        br#"[{"op":"frobnicate","path":"/gender","value":1}]"#,
        br#"{"op":"remove","path":"/gender"}"#,
        br#"[{"op":"move","path":"/a"}]"#,
    ] {
        let r = call(
            &s,
            "PATCH",
            "/fhir/Patient/p1",
            Some("application/json-patch+json"),
            bad,
        )
        .await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    // FHIRPath Patch is a Parameters resource.
    let fp = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"}, {"name": "value", "valueCode": "male"}]}]});
    let r = call(
        &s,
        "PATCH",
        "/fhir/Patient/p1",
        Some("application/fhir+json"),
        fp.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &s,
        "PATCH",
        "/fhir/Patient/p1",
        Some("application/fhir+json"),
        patient().to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "a FHIR patch must be Parameters");
    assert_eq!(s.state.count(), 2);
}

#[tokio::test]
async fn profile_rules_and_size_limits_apply() {
    let s = setup(
        "validate:\n  fhir:\n    max_body_bytes: 4096\n    allowed_types: [Patient, Bundle, Organization]\n    required: [Patient.identifier, Patient.name, Patient.gender]\n    forbidden: [Patient.photo]\n    max_bundle_entries: 2\n",
    )
    .await;
    assert_eq!(post_json(&s, "/fhir/Patient", &patient()).await.status, 200);
    let mut p = patient();
    p.as_object_mut().unwrap().remove("identifier");
    let r = post_json(&s, "/fhir/Patient", &p).await;
    assert_eq!(r.status, 400);
    assert!(findings(&r)
        .iter()
        .any(|(c, e)| c == "required" && e == "Patient.identifier"));
    let mut p = patient();
    p["photo"] = json!([{"contentType": "image/png", "data": "aGk="}]);
    assert_eq!(post_json(&s, "/fhir/Patient", &p).await.status, 400);
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    assert_eq!(post_json(&s, "/fhir/Observation", &obs).await.status, 400);
    let entry = json!({"resource": patient(), "request": {"method": "POST", "url": "Patient"}});
    let big = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry.clone(), entry.clone(), entry]});
    let r = post_json(&s, "/fhir", &big).await;
    assert!(r.status == 400 || r.status == 413, "{}", r.status);
    let huge = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(5000)}]});
    let r = post_json(&s, "/fhir/Patient", &huge).await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));
    assert_eq!(s.state.count(), 1);
}

fn adt(control_id: &str, msg_type: &str, birth: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LAB|HOSP|WARD|HUB|20240315083012||{msg_type}|{control_id}|P|2.5.1\rEVN|A01|20240315083000\rPID|1||123456^^^HOSP^MR||Testperson^Alba||{birth}|F\rPV1|1|I|WARD1^101^A\r"
    )
    .into_bytes()
}

#[tokio::test]
async fn hl7v2_bodies_are_validated_and_refused_with_an_ack() {
    let s = setup(PLAIN).await;
    let er7 = "x-application/hl7-v2+er7";
    let good = adt("MSG001", "ADT^A01^ADT_A01", "19700101");
    let r = call(&s, "POST", "/api/hl7", Some(er7), &good).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.state.last().body, Bytes::from(good));
    // Not an allowed message type: AR, MSA-2 = the message's MSH-10, ERR says why.
    let r = call(
        &s,
        "POST",
        "/api/hl7",
        Some(er7),
        &adt("MSG002", "ORU^R01", "19700101"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["content-type"], er7);
    let ack = String::from_utf8(r.body.to_vec()).unwrap();
    let segs: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
    assert!(
        segs[0].starts_with("MSH|^~\\&|WARD|HUB|LAB|HOSP|"),
        "{ack:?}"
    );
    assert!(segs[0].contains("|ACK^"), "{ack:?}");
    assert_eq!(segs[1], "MSA|AR|MSG002");
    assert!(
        segs[2].starts_with("ERR|") && segs[2].contains("^200^") || segs[2].contains("|200^"),
        "{ack:?}"
    );
    // Content error (PID-7 not a date): AE, located at PID-7.
    let r = call(
        &s,
        "POST",
        "/api/hl7",
        Some(er7),
        &adt("MSG003", "ADT^A01", "1970-01-01"),
    )
    .await;
    assert_eq!(r.status, 400);
    let ack = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(ack.contains("MSA|AE|MSG003"), "{ack:?}");
    assert!(ack.contains("PID^1^7"), "{ack:?}");
    // Garbage: AR with an empty MSA-2.
    let r = call(&s, "POST", "/api/hl7", Some(er7), b"not hl7 at all").await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("MSA|AR|"));
    // Other media types on an ER7-only route.
    let r = call(&s, "POST", "/api/hl7", Some("application/json"), b"{}").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
    assert_eq!(s.state.count(), 1);
}

/// HL7 v2 over HTTP: an empty body is refused as an empty MLLP frame is (same AR, same
/// ERR; 400 `hl7v2_invalid`, whose body is the NAK), whatever says it is ER7 — or nothing does, on an HL7-only
/// route; a message without MSH-3 is valid and forwarded; unusable encoding characters
/// still get MSA-2 = MSH-10.
#[tokio::test]
async fn hl7v2_empty_bodies_missing_msh3_and_bad_encoding_characters() {
    let s = setup(PLAIN).await;
    let er7 = "x-application/hl7-v2+er7";
    for method in ["POST", "PUT", "PATCH"] {
        for ctype in [Some(er7), Some("X-Application/HL7-V2+ER7"), None] {
            let r = call(&s, method, "/api/hl7", ctype, b"").await;
            assert_eq!(r.status, 400, "{method} {ctype:?}");
            assert_eq!(r.headers["content-type"], er7, "{method} {ctype:?}");
            let ack = String::from_utf8(r.body.to_vec()).unwrap();
            assert!(ack.contains("\rMSA|AR|\r"), "{method} {ctype:?}: {ack:?}");
            assert!(
                ack.contains("|100^empty message^HL70357|"),
                "{method} {ctype:?}: {ack:?}"
            );
        }
    }
    assert_eq!(s.state.count(), 0, "an empty HL7 message was forwarded");
    // A bodiless GET is not a message (nothing to validate).
    assert_eq!(call(&s, "GET", "/api/hl7", None, b"").await.status, 200);
    assert_eq!(s.state.count(), 1);

    for (i, empty) in ["", "\"\"", "^", "^^"].iter().enumerate() {
        let id = format!("NO-MSH3-{i}");
        let m = String::from_utf8(adt(&id, "ADT^A01^ADT_A01", "19700101"))
            .unwrap()
            .replacen("|LAB|", &format!("|{empty}|"), 1);
        let r = call(&s, "POST", "/api/hl7", Some(er7), m.as_bytes()).await;
        assert_eq!(
            r.status,
            200,
            "{empty:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(s.state.last().body, Bytes::from(m));
    }
    assert_eq!(s.state.count(), 5);

    for (i, enc) in ["", "^~", "^^\\&", "a~\\&", "^~\\&#!"].iter().enumerate() {
        let id = format!("ENC-{i}");
        let m = String::from_utf8(adt(&id, "ADT^A01^ADT_A01", "19700101"))
            .unwrap()
            .replacen("^~\\&", enc, 1);
        let r = call(&s, "POST", "/api/hl7", Some(er7), m.as_bytes()).await;
        assert_eq!(r.status, 400, "{enc:?}");
        assert_eq!(r.headers["content-type"], er7, "{enc:?}");
        let ack = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(
            ack.contains(&format!("\rMSA|AR|{id}\r")),
            "{enc:?}: {ack:?}"
        );
    }
    assert_eq!(s.state.count(), 5);
}

#[tokio::test]
async fn validate_config_mistakes_are_reported() {
    let env = Env::new();
    env.write(
        "policies/bad.yaml",
        "validate:\n  fhir:\n    allowed_types: [Patient, Pateint]\n    required: [Patient.nmae]\n  hl7v2:\n    allowed_message_types: [adt-a01]\n",
    );
    let (up, _) = upstream().await;
    let p = env.write(
        "ward.yaml",
        &with_policy(basic_config(up, "", ""), "bad", "bad"),
    );
    let all = config_errors(&p);
    for want in [
        "validate.fhir.allowed_types: `Pateint` is not an R4 resource type",
        "validate.fhir: ",
        "validate.hl7v2.allowed_message_types: `adt-a01`",
    ] {
        assert!(all.contains(want), "missing `{want}` in:\n{all}");
    }
    assert!(all.contains("nmae"), "{all}");
    // FHIR validation on a non-FHIR route.
    env.write("policies/bad.yaml", "validate:\n  fhir: {}\n");
    let all = config_errors(&p);
    assert!(
        all.contains("validates FHIR bodies but the route is not `fhir: true`"),
        "{all}"
    );
}

/// `Reference.reference` syntax over the wire: every malformed variant is a 400
/// `fhir_invalid` naming the element, and never reaches the upstream; every legal form
/// (relative, versioned, contained, urn:uuid/oid, absolute URLs and URIs) passes byte for
/// byte; conditional references only inside transaction/batch entries.
#[tokio::test]
async fn references_are_checked_for_syntax() {
    let s = setup(PLAIN).await;
    let obs = |r: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": r}})
    };
    let bad = [
        "Patient",
        "Patient/",
        "/Patient/1",
        "Patient//1",
        "patient/1",
        "Foo/1",
        "Resource/1",
        "Patient/has space",
        "Patient/1 ",
        "Patient/a_b",
        "Patient/1/_history/",
        "Patient/1/history/2",
        "#a b",
        "urn:uuid:61ebe359",
        "urn:oid:3.1",
        "http:/example.org/Patient/1",
        "https:///Patient/1",
        "Patient?",
        "Foo?x=1",
        "Patient?identifier=123",
    ];
    let long = format!("Patient/{}", "a".repeat(65));
    for r in bad.iter().copied().chain([long.as_str()]) {
        let resp = post_json(&s, "/fhir/Observation", &obs(r)).await;
        assert_eq!(
            (resp.status, resp.code().as_str()),
            (400, "fhir_invalid"),
            "{r:?}"
        );
        let f = findings(&resp);
        assert!(
            f.iter()
                .any(|(c, e)| c == "value" && e == "Observation.subject.reference"),
            "{r:?}: {f:?}"
        );
    }
    assert_eq!(
        s.state.count(),
        0,
        "an invalid reference reached the upstream"
    );

    let good = [
        "Patient/1",
        "Patient/example/_history/2",
        "#",
        "#p1",
        "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
        "urn:oid:1.2.840.113619",
        "https://ehr.example.org/fhir/Patient/1",
        "http://hl7.org/fhir/ValueSet/administrative-gender",
        "urn:ietf:rfc:3986",
    ];
    for (i, r) in good.iter().enumerate() {
        let body = serde_json::to_vec(&obs(r)).unwrap();
        let resp = call(
            &s,
            "POST",
            "/fhir/Observation",
            Some("application/fhir+json"),
            &body,
        )
        .await;
        assert_eq!(resp.status, 200, "{r:?}: {:?}", resp.body);
        assert_eq!(s.state.count(), i + 1);
        assert_eq!(s.state.last().body, Bytes::from(body));
    }

    // Conditional references: legal in transaction and batch entries, whatever the order
    // of `type` and `entry`; refused in any other Bundle, at the entry's element path.
    let cond = "Patient?identifier=http://hospital.example.org/mrn|12345";
    let entry =
        json!([{"resource": obs(cond), "request": {"method": "POST", "url": "Observation"}}]);
    let mut sent = s.state.count();
    for kind in [
        "transaction",
        "batch",
        "collection",
        "searchset",
        "document",
    ] {
        for type_first in [true, false] {
            let text = if type_first {
                format!(r#"{{"resourceType":"Bundle","type":"{kind}","entry":{entry}}}"#)
            } else {
                format!(r#"{{"resourceType":"Bundle","entry":{entry},"type":"{kind}"}}"#)
            };
            let resp = call(
                &s,
                "POST",
                "/fhir",
                Some("application/fhir+json"),
                text.as_bytes(),
            )
            .await;
            if matches!(kind, "transaction" | "batch") {
                assert_eq!(resp.status, 200, "{kind}: {:?}", resp.body);
                sent += 1;
                assert_eq!(s.state.last().body, Bytes::from(text));
            } else {
                assert_eq!(resp.status, 400, "{kind}");
                let f = findings(&resp);
                assert!(
                    f.iter()
                        .any(|(c, e)| c == "value"
                            && e == "Bundle.entry[0].resource.subject.reference"),
                    "{kind}: {f:?}"
                );
            }
            assert_eq!(s.state.count(), sent, "{kind}");
        }
    }
}
