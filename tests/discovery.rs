//! SMART discovery and base-URL rewriting end to end, over TLS to the gateway and real
//! sockets to an EHR that writes its own (internal) address everywhere a FHIR server does:
//! `Location`, `Content-Location`, `Link`, Bundle links and `fullUrl`, batch locations,
//! OperationOutcome text, `CapabilityStatement.implementation.url` and its own
//! smart-configuration — in every spelling of its base we can think of. The client must
//! never see the EHR's host and port; `metadata` and `.well-known/smart-configuration`
//! must say what the route's discovery section says; and exactly those two paths may be
//! read without a token.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::json;

#[derive(Default)]
struct Ehr {
    seen: Mutex<Vec<String>>,
}

impl Ehr {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
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

/// Spellings of the EHR's base: (as raw JSON text, as a header value). `h` is the host,
/// `p` the port the gateway reaches the EHR at. Aliases name `https://ehr.internal/fhir`.
fn variants(h: &str, p: u16) -> Vec<(String, String)> {
    let plain = format!("http://{h}:{p}/r4");
    vec![
        (plain.clone(), plain.clone()),
        (format!("HTTP://{h}:{p}/r4"), format!("Http://{h}:{p}/r4")),
        (format!("http://{h}.:{p}/r4"), format!("http://{h}.:{p}/r4")),
        (
            format!("http://{h}:0{p}/r4"),
            format!("http://{h}:00{p}/r4"),
        ),
        (
            format!("http://%31%32%37.0.0.1:{p}/r4"),
            format!("http://%31%32%37.0.0.1:{p}/r4"),
        ),
        (
            "https://EHR.Internal:443/fhir".into(),
            "https://ehr.INTERNAL:443/fhir".into(),
        ),
        ("https://ehr.internal/fhir".into(), "/r4".into()),
        (
            format!("http:\\/\\/{h}:{p}\\/r4"),
            format!("http://user@{h}:{p}/r4"),
        ),
        (
            format!("http:\\/\\/\\u0031\\u0032\\u0037.0.0.1:{p}\\/r4"),
            "HTTPS://ehr.internal./fhir".into(),
        ),
        (
            "https:\\/\\/\\u0065hr.internal\\/fhir".into(),
            "https://ehr.internal/fhir".into(),
        ),
    ]
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn fhir_json(status: u16, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/fhir+json".parse().unwrap());
    r
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
    // The EHR knows itself by the Host it is addressed with (the gateway sends its own).
    let host = req.headers()["host"].to_str().unwrap().to_owned();
    let (h, p) = host.split_once(':').unwrap();
    let p: u16 = p.parse().unwrap();
    let v: usize = req
        .headers()
        .get("x-variant")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (jb, hb) = variants(h, p).swap_remove(v);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let rel = path.strip_prefix("/r4").unwrap_or(&path).to_owned();
    let _ = req.into_body().collect().await;
    let with_headers = |mut r: Response<Full<Bytes>>| {
        let hs = r.headers_mut();
        hs.insert(
            "location",
            format!("{hb}/Patient/n1/_history/1").parse().unwrap(),
        );
        hs.insert(
            "content-location",
            format!("{hb}/Patient/n1/_history/1").parse().unwrap(),
        );
        hs.append(
            "link",
            format!(r#"<{hb}/Patient?page=2>; rel="next", <https://terminology.example/x>; rel="related""#)
                .parse()
                .unwrap(),
        );
        hs.append(
            "link",
            format!(r#"<http://{h}:{p}/admin>; rel="admin""#)
                .parse()
                .unwrap(),
        );
        r
    };
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/r4/Patient") => with_headers(fhir_json(
            200,
            format!(
                r#"{{"resourceType":"Bundle","type":"searchset","total":2,
                "link":[{{"relation":"self","url":"{jb}/Patient?name=x"}},{{"relation":"next","url":"{jb}?_getpages=abc"}},{{"relation":"elsewhere","url":"http://{h}:{p}/other/page"}}],
                "entry":[{{"fullUrl":"{jb}/Patient/p1","resource":{{"resourceType":"Patient","id":"p1"}},"search":{{"mode":"match"}}}},
                         {{"fullUrl":"{jb}/Patient/p2","resource":{{"resourceType":"Patient","id":"p2"}}}},
                         {{"fullUrl":"urn:uuid:0b5b7e4e-0000-4000-8000-000000000001","resource":{{"resourceType":"OperationOutcome","issue":[{{"severity":"warning","code":"processing","diagnostics":"partial results from {jb}/Patient via {h}:{p}"}}]}},"search":{{"mode":"outcome"}}}}]}}"#
            ),
        )),
        // The same Bundle as XML (`_format=xml`): rewritten as text.
        ("GET", "/r4/Patient/xml") => {
            let mut r = fhir_json(
                200,
                format!(
                    r#"<Bundle xmlns="http://hl7.org/fhir"><type value="searchset"/><link><relation value="self"/><url value="{hb}/Patient?name=x"/></link><entry><fullUrl value="{hb}/Patient/p1"/><resource><Patient><id value="p1"/></Patient></resource></entry><entry><resource><OperationOutcome><issue><diagnostics value="partial results from {hb}/Patient via {h}:{p}"/></issue></OperationOutcome></resource></entry></Bundle>"#
                ),
            );
            r.headers_mut()
                .insert("content-type", "application/fhir+xml".parse().unwrap());
            r
        }
        // An upstream that compresses although identity was asked for.
        ("GET", "/r4/Observation") | ("GET", "/r4/Observation/clean") => {
            let text = if path.ends_with("clean") {
                r#"{"resourceType":"Observation","id":"clean","status":"final"}"#.to_owned()
            } else {
                format!(
                    r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"{jb}/Observation"}}],"entry":[{{"fullUrl":"{jb}/Observation/o1","resource":{{"resourceType":"Observation","id":"o1"}}}}]}}"#
                )
            };
            let mut r = fhir_json(200, String::new());
            *r.body_mut() = Full::new(Bytes::from(gzip(text.as_bytes())));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r.headers_mut().insert("etag", "W/\"7\"".parse().unwrap());
            r
        }
        ("POST", "/r4/Patient") => with_headers(fhir_json(
            201,
            format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"information","code":"informational","diagnostics":"Created {jb}/Patient/n1/_history/1 on ehr.internal","details":{{"text":"stored by {h}:{p}"}}}}]}}"#
            ),
        )),
        ("POST", "/r4") => fhir_json(
            200,
            format!(
                r#"{{"resourceType":"Bundle","type":"batch-response","entry":[{{"fullUrl":"{jb}/Patient/n2","response":{{"status":"201 Created","location":"{jb}/Patient/n2/_history/1","outcome":{{"resourceType":"OperationOutcome","issue":[{{"severity":"information","code":"informational","diagnostics":"see {jb}/Patient/n2"}}]}}}}}}]}}"#
            ),
        ),
        ("GET" | "HEAD", "/r4/metadata") => fhir_json(
            200,
            format!(
                r#"{{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"],
                "implementation":{{"description":"EHR","url":"{jb}"}},
                "rest":[{{"mode":"server","security":{{"cors":false,"extension":[{{"url":"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris","extension":[{{"url":"token","valueUri":"http://{h}:{p}/oauth/token"}}]}}]}}}}]}}"#
            ),
        ),
        ("GET" | "HEAD", "/r4/.well-known/smart-configuration") => {
            let mut r = fhir_json(
                200,
                format!(
                    r#"{{"issuer":"{jb}","token_endpoint":"{jb}/auth/token","authorization_endpoint":"http://{h}:{p}/oauth/authorize","jwks_uri":"https://idp.example/jwks","capabilities":["launch-standalone"],"code_challenge_methods_supported":["S256"],"grant_types_supported":["authorization_code"]}}"#
                ),
            );
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        _ => with_headers(fhir_json(
            404,
            format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"not-found","diagnostics":"{jb}{rel} is not known (upstream {h}:{p})","details":{{"text":"HAPI at {jb}"}}}}]}}"#
            ),
        )),
    }
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    ehr: Arc<Ehr>,
    key: KeyPair,
    up_port: u16,
}

const DISCOVERY: &str = r#"
discovery:
  issuer: https://idp.test
  jwks_uri: https://idp.test/jwks
  authorization_endpoint: https://idp.test/authorize
  token_endpoint: https://idp.test/token
  introspection_endpoint: https://idp.test/introspect
  capabilities: [launch-standalone, client-public, client-confidential-symmetric, context-standalone-patient, permission-patient, permission-v2, sso-openid-connect]
  scopes_supported: [openid, fhirUser, launch/patient, patient/*.rs, offline_access]
  response_types_supported: [code]
  grant_types_supported: [authorization_code, client_credentials]
  code_challenge_methods_supported: [S256]
  token_endpoint_auth_methods_supported: [client_secret_basic, private_key_jwt]
  cors: true
"#;

async fn setup() -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    let auth = "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n";
    env.write(
        "policies/smart.yaml",
        &format!("{auth}  anonymous_discovery: true\n"),
    );
    env.write("policies/locked.yaml", auth);
    env.write("policies/discovery.yaml", DISCOVERY);
    env.write(
        "policies/discovery-upstream.yaml",
        "discovery:\n  smart_configuration: upstream\n  authorization_endpoint: https://idp.test/authorize\n  token_endpoint: https://idp.test/token\n  cors: false\n",
    );
    let ehr = Arc::new(Ehr::default());
    let up = serve_http1(ehr.clone(), handle).await;
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
  - name: patient
    listener: public
    path_prefix: /patient/fhir
    rewrite_prefix: /r4
    upstream: ehr
    fhir: true
    upstream_aliases: [https://ehr.internal/fhir]
    policies: [smart, discovery]
  - name: partner
    listener: public
    path_prefix: /up/fhir
    rewrite_prefix: /r4
    upstream: ehr
    fhir: true
    public_url: https://fhir.example.test/up/fhir
    upstream_aliases: [https://ehr.internal/fhir]
    policies: [smart, discovery-upstream]
  - name: locked
    listener: public
    path_prefix: /locked/fhir
    rewrite_prefix: /r4
    upstream: ehr
    fhir: true
    policies: [locked, discovery]
admin:
  bind: 127.0.0.1:0
"#
    );
    let gw = env.start(&cfg).await;
    Setup {
        env,
        gw,
        ehr,
        key,
        up_port: up.port(),
    }
}

fn token(key: &KeyPair) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": "app-1", "exp": now + 600, "scope": "user/*.*"});
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

async fn call(
    s: &Setup,
    h2: bool,
    method: &str,
    path: &str,
    variant: Option<usize>,
    tok: bool,
) -> Reply {
    let c = client(&s.env.pki, h2);
    let mut b = Request::builder().method(method).uri(url(&s.gw, path));
    if let Some(v) = variant {
        b = b.header("x-variant", v.to_string());
    }
    if tok {
        b = b.header("authorization", format!("Bearer {}", token(&s.key)));
    }
    let body = if method == "POST" {
        b = b.header("content-type", "application/fhir+json");
        Bytes::from_static(br#"{"resourceType":"Patient"}"#)
    } else {
        Bytes::new()
    };
    send(&c, b.body(Full::new(body)).unwrap()).await
}

/// Everything the client received, as text: every header value and the body.
fn seen_by_client(r: &Reply) -> String {
    let mut t = String::new();
    for (k, v) in &r.headers {
        t.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    t.push_str(&String::from_utf8_lossy(&r.body));
    t
}

/// Does `text` name the upstream: its port after a colon (any number of leading zeros,
/// not followed by another digit), its alias host, or its percent-encoded address?
fn leaks(text: &str, port: u16) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    for bad in ["ehr.internal", "%31%32%37", "\\u00", "/r4"] {
        if lower.contains(bad) {
            return Some(bad.into());
        }
    }
    let p = port.to_string();
    let b = lower.as_bytes();
    for (i, _) in lower.match_indices(&p) {
        let mut k = i;
        while k > 0 && b[k - 1] == b'0' {
            k -= 1;
        }
        let after = b.get(i + p.len());
        if k > 0 && b[k - 1] == b':' && !after.is_some_and(u8::is_ascii_digit) {
            return Some(format!(":{p}"));
        }
    }
    None
}

fn assert_content_length(r: &Reply) {
    if let Some(cl) = r.headers.get("content-length") {
        assert_eq!(
            cl.to_str().unwrap().parse::<usize>().unwrap(),
            r.body.len(),
            "Content-Length matches the body"
        );
    }
}

#[tokio::test]
async fn the_upstream_base_never_reaches_the_client() {
    let s = setup().await;
    let gw_port = s.gw.addr("public").unwrap().port();
    let public = format!("https://localhost:{gw_port}/patient/fhir");
    let n = variants("127.0.0.1", s.up_port).len();
    for v in 0..n {
        for h2 in [false, true] {
            for (method, path, want_status, upstream_saw) in [
                ("GET", "/patient/fhir/Patient", 200, "GET /r4/Patient"),
                ("POST", "/patient/fhir/Patient", 201, "POST /r4/Patient"),
                (
                    "GET",
                    "/patient/fhir/Patient/nope",
                    404,
                    "GET /r4/Patient/nope",
                ),
                ("POST", "/patient/fhir", 200, "POST /r4"),
                ("GET", "/patient/fhir/metadata", 200, "GET /r4/metadata"),
            ] {
                let before = s.ehr.count();
                let r = call(&s, h2, method, path, Some(v), true).await;
                let ctx = format!("variant {v} h2={h2} {method} {path}");
                assert_eq!(r.status, want_status, "{ctx}: {:?}", r.body);
                assert_eq!(s.ehr.count(), before + 1, "{ctx}");
                assert_eq!(s.ehr.last(), upstream_saw, "{ctx}");
                let text = seen_by_client(&r);
                assert_eq!(leaks(&text, s.up_port), None, "{ctx}: client saw\n{text}");
                assert_content_length(&r);
                let body = r.json();
                match (method, path) {
                    ("GET", "/patient/fhir/Patient") => {
                        assert_eq!(
                            body["link"],
                            json!([
                                {"relation": "self", "url": format!("{public}/Patient?name=x")},
                                {"relation": "next", "url": format!("{public}?_getpages=abc")},
                            ]),
                            "{ctx}: links on the base rewritten, the one elsewhere on the upstream removed"
                        );
                        assert_eq!(body["entry"][0]["fullUrl"], format!("{public}/Patient/p1"));
                        assert_eq!(body["entry"][1]["fullUrl"], format!("{public}/Patient/p2"));
                        assert_eq!(
                            body["entry"][2]["fullUrl"],
                            "urn:uuid:0b5b7e4e-0000-4000-8000-000000000001"
                        );
                        assert_eq!(
                            body["entry"][2]["resource"]["issue"][0]["diagnostics"],
                            format!("partial results from {public}/Patient via [upstream]")
                        );
                        assert_eq!(
                            body["entry"][0]["resource"],
                            json!({"resourceType": "Patient", "id": "p1"})
                        );
                        // Only the rewritten strings (and the removed link) changed: member
                        // order and whitespace are the upstream's (issue #20).
                        let want = format!(
                            r#"{{"resourceType":"Bundle","type":"searchset","total":2,
                "link":[{{"relation":"self","url":"{public}/Patient?name=x"}},{{"relation":"next","url":"{public}?_getpages=abc"}}],
                "entry":[{{"fullUrl":"{public}/Patient/p1","resource":{{"resourceType":"Patient","id":"p1"}},"search":{{"mode":"match"}}}},
                         {{"fullUrl":"{public}/Patient/p2","resource":{{"resourceType":"Patient","id":"p2"}}}},
                         {{"fullUrl":"urn:uuid:0b5b7e4e-0000-4000-8000-000000000001","resource":{{"resourceType":"OperationOutcome","issue":[{{"severity":"warning","code":"processing","diagnostics":"partial results from {public}/Patient via [upstream]"}}]}},"search":{{"mode":"outcome"}}}}]}}"#
                        );
                        assert_eq!(String::from_utf8_lossy(&r.body), want, "{ctx}");
                    }
                    ("POST", "/patient/fhir/Patient") => {
                        let loc = format!("{public}/Patient/n1/_history/1");
                        assert_eq!(r.headers["location"], loc.as_str(), "{ctx}");
                        assert_eq!(r.headers["content-location"], loc.as_str(), "{ctx}");
                        let links: Vec<&str> = r
                            .headers
                            .get_all("link")
                            .iter()
                            .map(|l| l.to_str().unwrap())
                            .collect();
                        assert_eq!(
                            links,
                            [format!(
                                r#"<{public}/Patient?page=2>; rel="next", <https://terminology.example/x>; rel="related""#
                            )],
                            "{ctx}"
                        );
                        assert_eq!(
                            body["issue"][0]["diagnostics"],
                            format!("Created {public}/Patient/n1/_history/1 on [upstream]")
                        );
                        assert_eq!(body["issue"][0]["details"]["text"], "stored by [upstream]");
                    }
                    ("GET", "/patient/fhir/Patient/nope") => {
                        assert_eq!(
                            body["issue"][0]["diagnostics"],
                            format!("{public}/Patient/nope is not known (upstream [upstream])")
                        );
                        assert_eq!(
                            body["issue"][0]["details"]["text"],
                            format!("HAPI at {public}")
                        );
                    }
                    ("POST", "/patient/fhir") => {
                        let e = &body["entry"][0];
                        assert_eq!(e["fullUrl"], format!("{public}/Patient/n2"));
                        assert_eq!(
                            e["response"]["location"],
                            format!("{public}/Patient/n2/_history/1")
                        );
                        assert_eq!(
                            e["response"]["outcome"]["issue"][0]["diagnostics"],
                            format!("see {public}/Patient/n2")
                        );
                    }
                    _ => {
                        assert_eq!(body["implementation"]["url"], public.as_str(), "{ctx}");
                    }
                }
            }
        }
    }
    // Compressed answers are read decoded: rewritten ones go out as identity without the
    // ETag; one with nothing to change goes out exactly as it came.
    for v in 0..n {
        let r = call(
            &s,
            v % 2 == 1,
            "GET",
            "/patient/fhir/Observation",
            Some(v),
            true,
        )
        .await;
        assert_eq!(r.status, 200, "variant {v}");
        assert!(r.headers.get("content-encoding").is_none(), "variant {v}");
        assert!(r.headers.get("etag").is_none(), "variant {v}");
        assert_content_length(&r);
        assert_eq!(leaks(&seen_by_client(&r), s.up_port), None, "variant {v}");
        assert_eq!(
            r.json()["entry"][0]["fullUrl"],
            format!("{public}/Observation/o1")
        );
        assert_eq!(r.json()["link"][0]["url"], format!("{public}/Observation"));
    }
    let r = call(
        &s,
        false,
        "GET",
        "/patient/fhir/Observation/clean",
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["etag"], "W/\"7\"");
    assert_content_length(&r);
    assert_eq!(
        r.body.as_ref(),
        gzip(br#"{"resourceType":"Observation","id":"clean","status":"final"}"#).as_slice()
    );
    // HEAD passes through on a route without body-reading policies: its headers are
    // rewritten, and it states no length it cannot know.
    for v in 0..n {
        let before = s.ehr.count();
        let head = call(&s, false, "HEAD", "/patient/fhir/Patient", Some(v), true).await;
        assert_eq!(head.status, 200);
        assert_eq!(s.ehr.count(), before + 1);
        assert_eq!(s.ehr.last(), "HEAD /r4/Patient");
        assert!(head.body.is_empty());
        assert!(head.headers.get("content-length").is_none(), "variant {v}");
        assert_eq!(
            head.headers["location"],
            format!("{public}/Patient/n1/_history/1").as_str()
        );
        assert_eq!(
            leaks(&seen_by_client(&head), s.up_port),
            None,
            "variant {v}"
        );
    }
}

#[tokio::test]
async fn metadata_and_smart_configuration_are_as_configured() {
    let s = setup().await;
    let gw_port = s.gw.addr("public").unwrap().port();
    for h2 in [false, true] {
        // Without a token (anonymous_discovery), and with one: the same answer.
        for tok in [false, true] {
            let before = s.ehr.count();
            let r = call(&s, h2, "GET", "/patient/fhir/metadata", None, tok).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(s.ehr.last(), "GET /r4/metadata");
            assert_eq!(s.ehr.count(), before + 1);
            let v = r.json();
            assert_eq!(v["resourceType"], "CapabilityStatement");
            let sec = &v["rest"][0]["security"];
            assert_eq!(sec["cors"], true);
            assert_eq!(
                sec["service"][0]["coding"][0],
                json!({"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"})
            );
            assert_eq!(
                sec["extension"],
                json!([{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": "https://idp.test/authorize"},
                        {"url": "token", "valueUri": "https://idp.test/token"},
                        {"url": "introspect", "valueUri": "https://idp.test/introspect"},
                    ],
                }]),
                "the upstream's own security section is replaced"
            );
            assert_eq!(leaks(&seen_by_client(&r), s.up_port), None);
            assert_content_length(&r);

            // smart-configuration from config: answered by the gateway, the EHR never asked.
            let before = s.ehr.count();
            let r = call(
                &s,
                h2,
                "GET",
                "/patient/fhir/.well-known/smart-configuration",
                None,
                tok,
            )
            .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(s.ehr.count(), before, "answered by the gateway");
            assert_eq!(r.headers["content-type"], "application/json");
            assert_content_length(&r);
            assert_eq!(
                r.json(),
                json!({
                    "issuer": "https://idp.test",
                    "jwks_uri": "https://idp.test/jwks",
                    "authorization_endpoint": "https://idp.test/authorize",
                    "token_endpoint": "https://idp.test/token",
                    "introspection_endpoint": "https://idp.test/introspect",
                    "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric", "context-standalone-patient", "permission-patient", "permission-v2", "sso-openid-connect"],
                    "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.rs", "offline_access"],
                    "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code", "client_credentials"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
                })
            );
            let head = call(
                &s,
                h2,
                "HEAD",
                "/patient/fhir/.well-known/smart-configuration",
                None,
                tok,
            )
            .await;
            assert_eq!(head.status, 200);
            assert!(head.body.is_empty());
            assert_eq!(
                head.headers["content-length"],
                r.body.len().to_string().as_str()
            );
        }
    }

    // From the upstream, on a route with a configured public URL: the client's Host does
    // not decide where the endpoints point.
    for v in 0..variants("127.0.0.1", s.up_port).len() {
        let r = call(
            &s,
            false,
            "GET",
            "/up/fhir/.well-known/smart-configuration",
            Some(v),
            false,
        )
        .await;
        assert_eq!(r.status, 200, "variant {v}: {:?}", r.body);
        assert_eq!(s.ehr.last(), "GET /r4/.well-known/smart-configuration");
        assert_eq!(leaks(&seen_by_client(&r), s.up_port), None, "variant {v}");
        assert_eq!(
            r.json(),
            json!({
                "issuer": "https://fhir.example.test/up/fhir",
                "token_endpoint": "https://fhir.example.test/up/fhir/auth/token",
                "jwks_uri": "https://idp.example/jwks",
                "capabilities": ["launch-standalone"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code"],
            }),
            "variant {v}: URLs under the upstream's base rewritten, others on its host removed"
        );
        let m = call(&s, false, "GET", "/up/fhir/metadata", Some(v), false).await;
        assert_eq!(m.status, 200);
        let m = m.json();
        assert_eq!(
            m["implementation"]["url"],
            "https://fhir.example.test/up/fhir"
        );
        assert_eq!(m["rest"][0]["security"]["cors"], false);
        assert_eq!(
            m["rest"][0]["security"]["extension"][0]["extension"],
            json!([
                {"url": "authorize", "valueUri": "https://idp.test/authorize"},
                {"url": "token", "valueUri": "https://idp.test/token"},
            ])
        );
    }
    // The public base is configured: the same holds for a search's links.
    let r = call(&s, false, "GET", "/up/fhir/Patient", Some(1), true).await;
    assert_eq!(
        r.json()["entry"][0]["fullUrl"],
        "https://fhir.example.test/up/fhir/Patient/p1"
    );
    assert!(!seen_by_client(&r).contains(&format!("localhost:{gw_port}")));
}

#[tokio::test]
async fn only_the_exact_discovery_paths_are_anonymous() {
    let s = setup().await;
    let addr = s.gw.addr("public").unwrap();
    let raw_req = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n")
    };
    // Exactly the two paths (and their canonical spellings: `%6D` is `m`), GET and HEAD.
    for (target, upstream) in [
        ("/patient/fhir/metadata", Some("/r4/metadata")),
        ("/patient/fhir/%6Detadata", Some("/r4/metadata")),
        // A fragment is never part of the resource (and never forwarded).
        ("/patient/fhir/metadata#x", Some("/r4/metadata")),
        ("/patient/fhir/.well-known/smart-configuration", None),
        ("/patient/fhir/.well-known/smart-configur%61tion", None),
    ] {
        for method in ["GET", "HEAD"] {
            let before = s.ehr.count();
            let out = raw(&s.env.pki, addr, raw_req(method, target, "").as_bytes()).await;
            assert_eq!(status_of(&out), 200, "{method} {target}: {out}");
            match upstream {
                Some(u) => {
                    assert_eq!(s.ehr.count(), before + 1);
                    assert_eq!(s.ehr.last(), format!("{method} {u}"));
                }
                None => assert_eq!(s.ehr.count(), before),
            }
        }
    }
    // Everything else without a token: refused, and the EHR never asked.
    let mut targets: Vec<String> = Vec::new();
    for base in ["metadata", ".well-known/smart-configuration"] {
        for t in [
            format!("/patient/fhir/{base}/"),
            format!("/patient/fhir/{base};x"),
            format!("/patient/fhir/{base};"),
            format!("/patient/fhir/{base}?"),
            format!("/patient/fhir/{base}?_format=json"),
            format!("/patient/fhir/{base}?access_token=x"),
            format!("/patient/fhir/{base}/x"),
            format!("/patient/fhir/{base}/_history"),
            format!("/patient/fhir/{base}%00"),
            format!("/patient/fhir/{base}%20"),
            format!("/patient/fhir/{base}.json"),
            format!("/patient/fhir/{}", base.to_uppercase()),
            format!(
                "/patient/fhir/{}",
                base.replacen('m', "M", 1).replacen('s', "S", 1)
            ),
            format!("/patient/fhir/./{base}"),
            format!("/patient/fhir/%2e/{base}"),
            format!("/patient/fhir/%2E%2E/fhir/{base}"),
            format!("/patient/fhir/Patient/../{base}"),
            format!("/patient/fhir/Patient/..;/{base}"),
            format!("/patient/fhir//{base}"),
            format!("/patient/fhir/Patient/{base}"),
            format!("/patient//fhir/{base}"),
            format!("/patient/fhir/x/../{base}"),
            format!("/patient/fhir%2f{base}"),
            format!("/patient/fhir\\{base}"),
            format!("/{base}"),
            format!("/patient/{base}"),
            format!("/locked/fhir/{base}"),
            format!("http://localhost/locked/fhir/{base}"),
        ] {
            targets.push(t);
        }
    }
    targets.extend(
        [
            "/patient/fhir/.well-known%2fsmart-configuration",
            "/patient/fhir/.well-known/./smart-configuration",
            "/patient/fhir/%2ewell-known/smart-configuration",
            "/patient/fhir/.well-known/openid-configuration",
            "/patient/fhir/.well-known",
            "/patient/fhir/.well-known/",
            "/patient/fhir/Patient",
            "/patient/fhir/Patient/p1",
            "/patient/fhir/",
            "/patient/fhir",
            "/patient/fhir/_history",
            "/patient/fhir/$export",
            "/patient/fhir/metadata/../Patient",
        ]
        .map(String::from),
    );
    for t in &targets {
        for method in ["GET", "HEAD"] {
            let before = s.ehr.count();
            let out = raw(&s.env.pki, addr, raw_req(method, t, "").as_bytes()).await;
            let st = status_of(&out);
            assert!(
                (400..500).contains(&st),
                "{method} {t} without a token must be refused, got {out}"
            );
            assert_eq!(s.ehr.count(), before, "{method} {t} reached the EHR");
        }
    }
    // Other methods on the exact paths, and a token that does not verify.
    for target in [
        "/patient/fhir/metadata",
        "/patient/fhir/.well-known/smart-configuration",
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let before = s.ehr.count();
            let out = raw(&s.env.pki, addr, raw_req(method, target, "").as_bytes()).await;
            let st = status_of(&out);
            assert!((400..500).contains(&st), "{method} {target}: {out}");
            assert_eq!(s.ehr.count(), before, "{method} {target} reached the EHR");
        }
        for auth in [
            "Authorization: Bearer a.b.c\r\n",
            "Authorization: Basic eDp5\r\n",
            "Authorization: \r\n",
        ] {
            let before = s.ehr.count();
            let out = raw(&s.env.pki, addr, raw_req("GET", target, auth).as_bytes()).await;
            assert_eq!(status_of(&out), 401, "{auth:?} {target}: {out}");
            assert_eq!(s.ehr.count(), before);
        }
    }
}

/// Every mistake in the new keys is reported at its file and line, all in one go.
#[test]
fn discovery_config_errors_are_located() {
    let env = Env::new();
    let disc = env.write(
        "policies/disc.yaml",
        "discovery:\n  token_endpoint: http://idp.test/token\n  capabilities: [launch-ehr, sso-openid-connect]\n  grant_types_supported: [authorization_code]\n  code_challenge_methods_supported: [plain]\n",
    );
    let typo = env.write(
        "policies/typo.yaml",
        "discovery:\n  token_endpont: https://idp.test/token\n",
    );
    env.write(
        "policies/anon.yaml",
        "auth:\n  providers:\n    - name: p\n      issuer: https://i\n      audiences: [a]\n      algorithms: [ES256]\n      keys_file: k.pem\n  anonymous_discovery: true\n",
    );
    env.write(
        "policies/okdisc.yaml",
        "discovery:\n  smart_configuration: upstream\n  capability_security: false\n",
    );
    env.write("k.pem", &KeyPair::generate().unwrap().public_key_pem());
    let cfg = basic_config("127.0.0.1:9".parse().unwrap(), "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    public_url: ftp://gw.example/fhir\n    upstream_aliases: [https://ehr.internal/fhir, \"https://u:p@ehr/x\"]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    public_url: https://gw.example/api\n    policies: [anon, okdisc]\n",
        );
    let main = env.write("ward.yaml", &cfg);
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let errs: Vec<String> = ward::config::load_with(&main, &|_| None)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    let all = errs.join("\n");
    let d = disc.display();
    for want in [
        format!("{d}:2: discovery.token_endpoint: expected an https:// URL"),
        format!("{d}:1: discovery.authorization_endpoint: required with launch-ehr"),
        format!("{d}:1: discovery.issuer: required with sso-openid-connect"),
        format!("{d}:1: discovery.jwks_uri: required with sso-openid-connect"),
        format!("{d}:5: discovery.code_challenge_methods_supported: must include S256"),
        format!("{d}:5: discovery.code_challenge_methods_supported: must not include plain"),
        format!("{}:2: discovery.token_endpont", typo.display()),
        format!("{}:{}: routes[0].public_url: expected an http:// or https:// URL", main.display(), line_of(&cfg, "ftp://")),
        format!("{}:{}: routes[0].upstream_aliases[1]: credentials in the URL are not allowed", main.display(), line_of(&cfg, "upstream_aliases")),
        format!("{}:{}: routes[1].public_url: public_url and upstream_aliases apply to `fhir: true` routes only", main.display(), line_of(&cfg, "https://gw.example/api")),
        "`anon` has auth.anonymous_discovery, which applies to `fhir: true` routes only".into(),
        "`okdisc` has a discovery section but the route is not `fhir: true`".into(),
    ] {
        assert!(all.contains(&want), "missing {want:?} in\n{all}");
    }
}

/// XML answers (and other text) carry the same URLs: rewritten onto the public base, other
/// mentions of the upstream's host masked, whatever spelling of the base the EHR used.
#[tokio::test]
async fn xml_answers_are_rewritten_as_text() {
    let s = setup().await;
    let gw_port = s.gw.addr("public").unwrap().port();
    let public = format!("https://localhost:{gw_port}/patient/fhir");
    let all = variants("127.0.0.1", s.up_port);
    // Every spelling of an absolute URL (a bare upstream path such as `/r4/...` names no
    // host, and as text it is not told apart from any other path: not rewritten in XML).
    for v in (0..all.len()).filter(|v| all[*v].1.contains("://")) {
        for h2 in [false, true] {
            let r = call(&s, h2, "GET", "/patient/fhir/Patient/xml", Some(v), true).await;
            let ctx = format!("variant {v} h2={h2}");
            assert_eq!(r.status, 200, "{ctx}: {:?}", r.body);
            assert_eq!(s.ehr.last(), "GET /r4/Patient/xml", "{ctx}");
            let text = seen_by_client(&r);
            assert_eq!(leaks(&text, s.up_port), None, "{ctx}: client saw\n{text}");
            assert_content_length(&r);
            let body = String::from_utf8(r.body.to_vec()).unwrap();
            assert!(
                body.contains(&format!(r#"<fullUrl value="{public}/Patient/p1"/>"#)),
                "{ctx}: {body}"
            );
            assert!(
                body.contains(&format!(r#"<url value="{public}/Patient?name=x"/>"#)),
                "{ctx}: {body}"
            );
            assert!(body.contains("via [upstream]"), "{ctx}: {body}");
        }
    }
}
