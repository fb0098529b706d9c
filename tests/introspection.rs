//! Opaque tokens checked by OAuth 2.0 token introspection (RFC 7662), over real TLS: a local
//! authorization server started by each test checks the gateway's client authentication
//! (`client_secret_basic`, and `private_key_jwt` whose assertion it verifies), and answers
//! active, inactive, with all kinds of claims, garbage, errors or nothing at all.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::KeyPair;
use serde_json::{json, Value};

const ISS: &str = "https://as.test";
const AUD: &str = "ward-test";
const CLIENT_ID: &str = "ward-gateway";
/// Characters that must be form-encoded before Basic encoding (RFC 6749 §2.3.1).
const SECRET: &str = "p@ss:w/rd+=é";
const SECRET_FORM_ENCODED: &str = "p%40ss%3Aw%2Frd%2B%3D%C3%A9";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An active answer for `sub` with everything a JWT would carry.
fn active(sub: &str) -> Value {
    json!({"active": true, "iss": ISS, "aud": AUD, "sub": sub, "exp": now() + 600,
           "iat": now(), "scope": "system/Observation.rs", "client_id": "app-1",
           "token_type": "Bearer"})
}

// ---------------------------------------------------------------- the authorization server

#[derive(Clone)]
enum Answer {
    Json(u16, Value),
    Raw(u16, Vec<u8>),
    /// Never answers (the gateway's timeout must end the call).
    Hang,
}

#[derive(Clone)]
enum ClientAuth {
    Basic,
    /// Algorithm, private key PEM, public key PEM, kid.
    Jwt(Algorithm, String, String, Option<String>),
}

struct AuthServer {
    endpoint: String,
    expect: ClientAuth,
    answers: Mutex<HashMap<String, Answer>>,
    /// When set, every token gets this (an outage).
    outage: Mutex<Option<Answer>>,
    /// Tokens asked about, in order.
    calls: Mutex<Vec<String>>,
    /// Client-authentication problems seen (must stay empty).
    auth_errors: Mutex<Vec<String>>,
    jtis: Mutex<HashSet<String>>,
    /// While false, every answer waits (the call is counted first).
    open: tokio::sync::watch::Sender<bool>,
    /// Notified as each call arrives.
    entered: tokio::sync::Notify,
}

impl AuthServer {
    fn set(&self, token: &str, a: Answer) {
        self.answers.lock().unwrap().insert(token.into(), a);
    }
    fn calls_for(&self, token: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == token)
            .count()
    }
    fn assert_auth_ok(&self) {
        let e = self.auth_errors.lock().unwrap();
        assert!(e.is_empty(), "client authentication problems: {e:?}");
    }
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = std::str::from_utf8(body).unwrap();
    let mut m = HashMap::new();
    for kv in text.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        assert!(
            m.insert(form_decode(k), form_decode(v)).is_none(),
            "parameter {k} sent twice"
        );
    }
    m
}

/// Checks the client authentication of one request; `Err` describes what is wrong.
fn check_client_auth(
    s: &AuthServer,
    headers: &http::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), String> {
    match &s.expect {
        ClientAuth::Basic => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{SECRET_FORM_ENCODED}"))
            );
            let got = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != want {
                return Err(format!("basic credentials {got:?}"));
            }
            if form.contains_key("client_assertion") {
                return Err("assertion sent with basic".into());
            }
        }
        ClientAuth::Jwt(alg, _, public, kid) => {
            if headers.contains_key("authorization") {
                return Err("Authorization header with private_key_jwt".into());
            }
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("client_assertion_type".into());
            }
            if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return Err("client_id".into());
            }
            let jwt = form.get("client_assertion").ok_or("no assertion")?;
            let key = match alg {
                Algorithm::ES256 => DecodingKey::from_ec_pem(public.as_bytes()),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(public.as_bytes()),
                _ => DecodingKey::from_rsa_pem(public.as_bytes()),
            }
            .unwrap();
            let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
            if header.kid != *kid {
                return Err(format!("kid {:?}", header.kid));
            }
            let mut v = Validation::new(*alg);
            v.set_audience(&[s.endpoint.as_str()]);
            v.set_issuer(&[CLIENT_ID]);
            v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            v.leeway = 0;
            let data = jsonwebtoken::decode::<Value>(jwt, &key, &v)
                .map_err(|e| format!("assertion: {e}"))?;
            let c = data.claims;
            if c["sub"] != CLIENT_ID {
                return Err("assertion sub".into());
            }
            let exp = c["exp"].as_u64().ok_or("exp")?;
            if exp > now() + 300 {
                return Err("assertion lives too long".into());
            }
            let jti = c["jti"].as_str().ok_or("no jti")?.to_owned();
            if jti.len() < 16 || !s.jtis.lock().unwrap().insert(jti) {
                return Err("jti reused or too short".into());
            }
        }
    }
    Ok(())
}

async fn auth_server(pki: &ward::demo::Pki, expect: ClientAuth) -> Arc<AuthServer> {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let state = Arc::new(AuthServer {
        endpoint: format!("https://localhost:{}/introspect", addr.port()),
        expect,
        answers: Mutex::new(HashMap::new()),
        outage: Mutex::new(None),
        calls: Mutex::new(Vec::new()),
        auth_errors: Mutex::new(Vec::new()),
        jtis: Mutex::new(HashSet::new()),
        open: tokio::sync::watch::Sender::new(true),
        entered: tokio::sync::Notify::new(),
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let st = st.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let form = parse_form(&body);
                        let mut reply = Answer::Json(400, json!({"error": "invalid_request"}));
                        let shape_ok = parts.method == http::Method::POST
                            && parts.uri.path() == "/introspect"
                            && parts
                                .headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                == Some("application/x-www-form-urlencoded")
                            && form.get("token_type_hint").map(String::as_str)
                                == Some("access_token");
                        if !shape_ok {
                            st.auth_errors.lock().unwrap().push("request shape".into());
                        } else if let Err(e) = check_client_auth(&st, &parts.headers, &form) {
                            st.auth_errors.lock().unwrap().push(e);
                            reply = Answer::Json(401, json!({"error": "invalid_client"}));
                        } else {
                            let token = form.get("token").cloned().unwrap_or_default();
                            st.calls.lock().unwrap().push(token.clone());
                            st.entered.notify_one();
                            let _ = st.open.subscribe().wait_for(|o| *o).await;
                            reply = st
                                .outage
                                .lock()
                                .unwrap()
                                .clone()
                                .or_else(|| st.answers.lock().unwrap().get(&token).cloned())
                                .unwrap_or(Answer::Json(200, json!({"active": false})));
                        }
                        let (status, bytes) = match reply {
                            Answer::Json(s, v) => (s, v.to_string().into_bytes()),
                            Answer::Raw(s, b) => (s, b),
                            Answer::Hang => std::future::pending().await,
                        };
                        let mut r = http::Response::new(Full::new(Bytes::from(bytes)));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    state
}

// ---------------------------------------------------------------- the gateway

/// A small FHIR upstream: reads answer the resource (owned by Patient/p-1), searches a
/// Bundle of one such resource; records each path and query.
async fn fhir_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve_http1(seen.clone(), |seen, req: Request<hyper::body::Incoming>| async move {
        let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        seen.lock().unwrap().push(pq.clone());
        let path = req.uri().path().trim_start_matches("/fhir/").to_owned();
        let mut segs = path.split('/');
        let rtype = segs.next().unwrap_or("").to_owned();
        let resource = |id: &str| {
            if rtype == "Patient" {
                json!({"resourceType": "Patient", "id": "p-1"})
            } else {
                json!({"resourceType": rtype, "id": id, "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p-1"}})
            }
        };
        let body = match segs.next() {
            Some(id) => resource(id),
            None => json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
                           "entry": [{"resource": resource("r1"), "search": {"mode": "match"}}]}),
        };
        let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
        r.headers_mut()
            .insert("content-type", "application/fhir+json".parse().unwrap());
        r
    })
    .await;
    (addr, seen)
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    up: Arc<UpstreamState>,
    server: Arc<AuthServer>,
}

/// The `introspection:` block for `expect`, pointing at `endpoint`; key files written to env.
fn introspection_yaml(env: &Env, expect: &ClientAuth, endpoint: &str, extra: &str) -> String {
    let auth = match expect {
        ClientAuth::Basic => {
            env.write("secrets/introspection", &format!("{SECRET}\n"));
            "        client_auth: client_secret_basic\n        client_secret_file: secrets/introspection\n".to_owned()
        }
        ClientAuth::Jwt(alg, private, _, kid) => {
            env.write("secrets/client.key", private);
            let kid = kid
                .as_ref()
                .map(|k| format!("        kid: {k}\n"))
                .unwrap_or_default();
            format!("        client_auth: private_key_jwt\n        private_key_file: secrets/client.key\n        algorithm: {alg:?}\n{kid}")
        }
    };
    format!(
        "auth:
  providers:
    - name: corp
      issuer: {ISS}
      audiences: [{AUD}, other-aud]
      leeway: 0s
      introspection:
        endpoint: {endpoint}
        ca: certs/ca.pem
        client_id: {CLIENT_ID}
{auth}{extra}
  max_token_bytes: 512
  forward_claims:
    sub: x-user-sub
"
    )
}

/// Gateway whose /fhir route runs `policies` (the `introspect` policy first); `extra` goes
/// into the introspection block; `endpoint` overrides the server's URL (a dead port).
async fn setup_with(
    expect: ClientAuth,
    extra: &str,
    policies: &str,
    endpoint: Option<String>,
) -> Setup {
    let env = Env::new();
    let server = auth_server(&env.pki, expect.clone()).await;
    let endpoint = endpoint.unwrap_or_else(|| server.endpoint.clone());
    env.write(
        "policies/introspect.yaml",
        &introspection_yaml(&env, &expect, &endpoint, extra),
    );
    env.write("policies/smart.yaml", "fhir_authz: {}\n");
    let (up, state) = upstream().await;
    let cfg = basic_config(up, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        &format!(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: {policies}\n"
        ),
    );
    let gw = env.start(&cfg).await;
    Setup {
        env,
        gw,
        up: state,
        server,
    }
}

async fn setup(expect: ClientAuth, extra: &str) -> Setup {
    setup_with(expect, extra, "[introspect]", None).await
}

async fn call_path(s: &Setup, path: &str, token: &str) -> Reply {
    let c = client(&s.env.pki, false);
    let req = Request::get(url(&s.gw, path))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&c, req).await
}

async fn call(s: &Setup, token: &str) -> Reply {
    call_path(s, "/fhir/Patient/1", token).await
}

/// Every way the gateway may authenticate itself: a secret, and assertions signed with
/// each key type (with and without `kid`).
fn client_auth_variants() -> Vec<(&'static str, ClientAuth)> {
    let ec = KeyPair::generate().unwrap();
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    vec![
        ("basic", ClientAuth::Basic),
        (
            "es256",
            ClientAuth::Jwt(
                Algorithm::ES256,
                ec.serialize_pem(),
                ec.public_key_pem(),
                Some("gw-key-1".into()),
            ),
        ),
        (
            "rs256",
            ClientAuth::Jwt(
                Algorithm::RS256,
                rsa.serialize_pem(),
                rsa.public_key_pem(),
                None,
            ),
        ),
        (
            "ps256",
            ClientAuth::Jwt(
                Algorithm::PS256,
                rsa.serialize_pem(),
                rsa.public_key_pem(),
                Some("rsa".into()),
            ),
        ),
        (
            "eddsa",
            ClientAuth::Jwt(
                Algorithm::EdDSA,
                ed.serialize_pem(),
                ed.public_key_pem(),
                None,
            ),
        ),
    ]
}

// ---------------------------------------------------------------- tests

/// An active token reaches the upstream with its claims forwarded and without the token;
/// the authorization server saw the right client authentication (a fresh, verified client
/// assertion per call) and the token. Generated over every client authentication variant.
#[tokio::test]
async fn active_tokens_pass_with_every_client_authentication() {
    for (name, expect) in client_auth_variants() {
        let s = setup(expect, "").await;
        for i in 0..3 {
            let token = format!("opaque-{name}-{i}_A.b~c+d/e==");
            s.server
                .set(&token, Answer::Json(200, active(&format!("user-{i}"))));
            let before = s.up.count();
            let r = call(&s, &token).await;
            assert_eq!(r.status, 200, "{name}: {:?}", r.body);
            assert_eq!(r.json()["path"], "/fhir/Patient/1");
            assert_eq!(s.up.count(), before + 1);
            let seen = s.up.last();
            assert_eq!(
                seen.headers["x-user-sub"],
                format!("user-{i}").as_str(),
                "{name}"
            );
            assert!(
                !seen.headers.contains_key("authorization"),
                "{name}: token reached the upstream"
            );
            assert_eq!(s.server.calls_for(&token), 1, "{name}");
        }
        s.server.assert_auth_ok();
        // Three distinct tokens, three calls, three distinct assertions (checked above).
        assert_eq!(s.server.calls.lock().unwrap().len(), 3, "{name}");
    }
}

/// Inactive tokens and answers whose claims fail the checks a JWT's would: 401 with the
/// same codes as for JWTs, nothing reaches the upstream. Generated variants.
#[tokio::test]
async fn inactive_tokens_and_bad_claims_are_refused_like_jwts() {
    let s = setup(ClientAuth::Basic, "").await;
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = active("clinician-7");
        f(v.as_object_mut().unwrap());
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({"active": false}), "token_inactive"),
        (
            json!({"active": false, "iss": ISS, "aud": AUD, "sub": "x", "exp": now() + 600}),
            "token_inactive",
        ),
        (
            with(&|m| {
                m.insert("iss".into(), json!("https://evil.test"));
            }),
            "token_issuer",
        ),
        (
            with(&|m| {
                m.insert("iss".into(), json!(ISS.to_uppercase()));
            }),
            "token_issuer",
        ),
        (
            with(&|m| {
                m.remove("iss");
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.insert("aud".into(), json!("someone-else"));
            }),
            "token_audience",
        ),
        (
            with(&|m| {
                m.insert("aud".into(), json!(["a", "b"]));
            }),
            "token_audience",
        ),
        (
            with(&|m| {
                m.insert("aud".into(), json!([]));
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.insert("aud".into(), json!(7));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.remove("aud");
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.remove("exp");
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.insert("exp".into(), json!(now() - 3600));
            }),
            "token_expired",
        ),
        (
            with(&|m| {
                m.insert("exp".into(), json!(now() - 1));
            }),
            "token_expired",
        ),
        (
            with(&|m| {
                m.insert("exp".into(), json!("soon"));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.insert("nbf".into(), json!(now() + 3600));
            }),
            "token_not_yet_valid",
        ),
        (
            with(&|m| {
                m.insert("iat".into(), json!(now() + 3600));
            }),
            "token_not_yet_valid",
        ),
        (
            with(&|m| {
                m.insert("nbf".into(), json!(-5));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.remove("sub");
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.insert("sub".into(), json!(" "));
            }),
            "token_claim_missing",
        ),
        (
            with(&|m| {
                m.insert("sub".into(), json!(42));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.insert("client_id".into(), json!(""));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.insert("patient".into(), json!(5));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.insert("token_type".into(), json!("refresh_token"));
            }),
            "token_claim_invalid",
        ),
        (
            with(&|m| {
                m.insert("token_type".into(), json!("DPoP"));
            }),
            "token_claim_invalid",
        ),
        // Certificate-bound (RFC 8705) but the connection has no client certificate.
        (
            with(&|m| {
                m.insert("cnf".into(), json!({"x5t#S256": "abc"}));
            }),
            "token_binding",
        ),
    ];
    let before = s.up.count();
    for (i, (answer, code)) in cases.iter().enumerate() {
        let token = format!("bad-claims-{i}");
        s.server.set(&token, Answer::Json(200, answer.clone()));
        let r = call(&s, &token).await;
        assert_eq!(r.status, 401, "case {i} ({code}): {:?}", r.body);
        assert_eq!(r.code(), *code, "case {i}: {answer}");
        let www = r.headers["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{www}");
        assert_eq!(s.server.calls_for(&token), 1, "case {i}");
    }
    assert_eq!(s.up.count(), before, "a refused token reached the upstream");
    // The positive twins: one audience of ours in a list, `token_type` absent or `bearer`.
    for (i, answer) in [
        with(&|m| {
            m.insert("aud".into(), json!(["x", "other-aud"]));
        }),
        with(&|m| {
            m.remove("token_type");
        }),
        with(&|m| {
            m.insert("token_type".into(), json!("bearer"));
        }),
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("good-claims-{i}");
        s.server.set(&token, Answer::Json(200, answer));
        assert_eq!(call(&s, &token).await.status, 200, "good case {i}");
    }
    s.server.assert_auth_ok();
}

/// Tokens that are not RFC 6750 b64tokens, or too large, never reach the authorization
/// server.
#[tokio::test]
async fn malformed_tokens_are_not_sent_to_the_server() {
    let s = setup(ClientAuth::Basic, "").await;
    let long = "a".repeat(513);
    for (token, code) in [
        ("abc,def", "token_malformed"),
        ("abc\"def", "token_malformed"),
        ("abc;def", "token_malformed"),
        ("abc%20def", "token_malformed"),
        ("===", "token_malformed"),
        ("ab=c", "token_malformed"),
        ("tok\u{e9}n", "token_malformed"),
        (long.as_str(), "token_too_large"),
    ] {
        let c = client(&s.env.pki, false);
        let Ok(req) = Request::get(url(&s.gw, "/fhir/Patient/1"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
        else {
            continue;
        };
        let r = send(&c, req).await;
        assert_eq!(r.status, 401, "{token:?}: {:?}", r.body);
        assert_eq!(r.code(), code, "{token:?}");
    }
    assert!(s.server.calls.lock().unwrap().is_empty());
    assert_eq!(s.up.count(), 0);
}

/// N requests with one token make one call: one after another (the cache), and all at
/// once while the first call is held (single flight). Generated over several burst sizes.
#[tokio::test]
async fn one_call_serves_many_requests() {
    let s = Arc::new(setup(ClientAuth::Basic, "").await);
    let token = "cached-token";
    s.server.set(token, Answer::Json(200, active("u")));
    for _ in 0..5 {
        assert_eq!(call(&s, token).await.status, 200);
    }
    assert_eq!(
        s.server.calls_for(token),
        1,
        "sequential requests were not cached"
    );
    for n in [2usize, 16, 48] {
        let token = format!("burst-{n}");
        s.server.set(&token, Answer::Json(200, active("u")));
        s.server.open.send_replace(false);
        let before = s.up.count();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (s, t) = (s.clone(), token.clone());
                tokio::spawn(async move { call(&s, &t).await })
            })
            .collect();
        // The first call is held at the server now. Whether each other request arrives
        // before or after it is released, the one call serves it: it joins the call in
        // flight, or finds its answer cached.
        while s.server.calls_for(&token) == 0 {
            s.server.entered.notified().await;
        }
        s.server.open.send_replace(true);
        for t in tasks {
            assert_eq!(t.await.unwrap().status, 200);
        }
        assert_eq!(s.up.count(), before + n);
        assert_eq!(
            s.server.calls_for(&token),
            1,
            "burst of {n}: more than one call"
        );
    }
    // Inactive answers are cached too (negative cache): a bad token repeated costs one call.
    for _ in 0..4 {
        assert_eq!(call(&s, "never-issued").await.code(), "token_inactive");
    }
    assert_eq!(s.server.calls_for("never-issued"), 1);
    let (_, metrics) = admin_get(&s.gw, "/metrics").await;
    for line in [
        "ward_introspection_calls_total{outcome=\"active\",provider=\"corp\"} 4",
        "ward_introspection_calls_total{outcome=\"inactive\",provider=\"corp\"} 1",
        "ward_introspection_cache_hits_total{outcome=\"inactive\",provider=\"corp\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in metrics");
    }
    assert!(metrics
        .contains("ward_introspection_cache_hits_total{outcome=\"active\",provider=\"corp\"}"));
    assert!(!metrics.contains("cached-token") && !metrics.contains("burst-"));
    s.server.assert_auth_ok();
}

/// The cache never serves past `exp`: an answer for a token that has already expired is
/// not kept (each request asks again, and is refused); with `cache_ttl: 0s` and
/// `negative_cache_ttl: 0s` nothing is kept at all.
#[tokio::test]
async fn answers_are_not_cached_past_exp_or_when_caching_is_off() {
    let s = setup(ClientAuth::Basic, "").await;
    for (i, exp) in [now() - 1, now() - 600, 0].into_iter().enumerate() {
        let token = format!("expired-{i}");
        let mut a = active("u");
        a["exp"] = json!(exp);
        s.server.set(&token, Answer::Json(200, a));
        for n in 1..=3 {
            let r = call(&s, &token).await;
            assert_eq!(r.status, 401);
            assert_eq!(r.code(), "token_expired");
            assert_eq!(
                s.server.calls_for(&token),
                n,
                "expired answer {i} was cached"
            );
        }
    }
    let off = setup(
        ClientAuth::Basic,
        "        cache_ttl: 0s\n        negative_cache_ttl: 0s\n",
    )
    .await;
    off.server.set("live", Answer::Json(200, active("u")));
    for n in 1..=3 {
        assert_eq!(call(&off, "live").await.status, 200);
        assert_eq!(off.server.calls_for("live"), n);
        assert_eq!(call(&off, "dead").await.code(), "token_inactive");
        assert_eq!(off.server.calls_for("dead"), n);
    }
    // A revocation shows at the next call once nothing is cached.
    off.server
        .set("live", Answer::Json(200, json!({"active": false})));
    assert_eq!(call(&off, "live").await.code(), "token_inactive");
    assert_eq!(off.up.count(), 3);
}

/// The endpoint down, refusing, slow or talking nonsense, with nothing cached: 503
/// `introspection_unavailable` (fail closed), never 200 and never 401. Failures are not
/// cached: once the server answers again, the same token works. Generated variants.
#[tokio::test]
async fn endpoint_failures_fail_closed_with_503() {
    let s = setup(ClientAuth::Basic, "        timeout: 1s\n").await;
    let big = format!("{{\"active\":true,\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let failures: Vec<(&str, Answer)> = vec![
        ("500", Answer::Json(500, active("u"))),
        ("503", Answer::Json(503, json!({"active": true}))),
        ("401", Answer::Json(401, json!({"error": "invalid_client"}))),
        ("302", Answer::Raw(302, Vec::new())),
        ("204", Answer::Raw(204, Vec::new())),
        ("html", Answer::Raw(200, b"<html>oops</html>".to_vec())),
        ("empty", Answer::Raw(200, Vec::new())),
        ("truncated", Answer::Raw(200, b"{\"active\":true".to_vec())),
        (
            "string-active",
            Answer::Json(200, json!({"active": "true"})),
        ),
        ("number-active", Answer::Json(200, json!({"active": 1}))),
        (
            "no-active",
            Answer::Json(200, json!({"sub": "u", "iss": ISS})),
        ),
        ("array", Answer::Json(200, json!([{"active": true}]))),
        ("too-large", Answer::Raw(200, big.into_bytes())),
        ("hang", Answer::Hang),
    ];
    let before = s.up.count();
    for (name, answer) in &failures {
        let token = format!("fail-{name}");
        s.server.set(&token, answer.clone());
        let r = call(&s, &token).await;
        assert_eq!(r.status, 503, "{name}: {:?}", r.body);
        assert_eq!(r.code(), "introspection_unavailable", "{name}");
        assert!(r.headers.contains_key("retry-after"), "{name}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&token));
    }
    assert_eq!(s.up.count(), before, "a request passed without an answer");
    for (name, _) in &failures {
        let token = format!("fail-{name}");
        s.server.set(&token, Answer::Json(200, active("u")));
        assert_eq!(
            call(&s, &token).await.status,
            200,
            "{name}: failure was cached"
        );
    }
    let (_, metrics) = admin_get(&s.gw, "/metrics").await;
    for reason in ["status", "parse", "body", "timeout"] {
        assert!(
            metrics.contains(&format!(
                "ward_introspection_failures_total{{provider=\"corp\",reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    s.server.assert_auth_ok();
}

/// An answer already cached keeps serving through an outage (until its own lifetime
/// ends); a token never seen gets 503.
#[tokio::test]
async fn a_cached_answer_survives_an_outage() {
    let s = setup(ClientAuth::Basic, "").await;
    s.server.set("known", Answer::Json(200, active("u")));
    assert_eq!(call(&s, "known").await.status, 200);
    *s.server.outage.lock().unwrap() = Some(Answer::Json(500, json!({})));
    assert_eq!(call(&s, "known").await.status, 200);
    let r = call(&s, "unknown").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "introspection_unavailable");
}

/// Nothing listening at the endpoint: 503, and the upstream is never called.
#[tokio::test]
async fn endpoint_down_is_503() {
    let dead = dead_addr().await;
    let s = setup_with(
        ClientAuth::Basic,
        "",
        "[introspect]",
        Some(format!("https://localhost:{}/introspect", dead.port())),
    )
    .await;
    for i in 0..3 {
        let r = call(&s, &format!("t{i}")).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.code(), "introspection_unavailable");
    }
    assert_eq!(s.up.count(), 0);
    let (_, metrics) = admin_get(&s.gw, "/metrics").await;
    assert!(metrics
        .contains("ward_introspection_failures_total{provider=\"corp\",reason=\"connect\"} 3"));
}

/// An endpoint whose certificate is not from the configured CA is a failure (503), and the
/// token is never sent to it.
#[tokio::test]
async fn endpoint_with_an_untrusted_certificate_is_not_called() {
    let s = setup(ClientAuth::Basic, "").await;
    // Another test PKI: its CA did not sign the authorization server's certificate.
    let env2 = Env::new();
    let text = std::fs::read_to_string(s.env.path("policies/introspect.yaml")).unwrap();
    env2.write("policies/introspect.yaml", &text);
    env2.write("secrets/introspection", SECRET);
    let (up, state) = upstream().await;
    let gw = env2
        .start(&basic_config(up, "", "").replace(
            "    fhir: true\n",
            "    fhir: true\n    policies: [introspect]\n",
        ))
        .await;
    let c = client(&env2.pki, false);
    let req = Request::get(url(&gw, "/fhir/Patient/1"))
        .header("authorization", "Bearer sent-nowhere")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(s.server.calls_for("sent-nowhere"), 0);
    assert_eq!(state.count(), 0);
}

/// Introspected claims feed `fhir_authz` exactly like a JWT's: scopes decide, and a
/// patient launch context confines the search.
#[tokio::test]
async fn introspected_scopes_drive_fhir_authorization() {
    let env = Env::new();
    let server = auth_server(&env.pki, ClientAuth::Basic).await;
    env.write(
        "policies/introspect.yaml",
        &introspection_yaml(&env, &ClientAuth::Basic, &server.endpoint, ""),
    );
    env.write("policies/smart.yaml", "fhir_authz: {}\n");
    let (up, seen) = fhir_upstream().await;
    let gw = env
        .start(&basic_config(up, "", "").replace(
            "    fhir: true\n",
            "    fhir: true\n    policies: [introspect, smart]\n",
        ))
        .await;
    let call = |token: &'static str, path: &'static str| {
        let c = client(&env.pki, false);
        let req = Request::get(url(&gw, path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move { send(&c, req).await }
    };
    let mut grants = active("backend-client");
    grants["scope"] = json!("system/Observation.rs");
    server.set("sys", Answer::Json(200, grants));
    let r = call("sys", "/fhir/Observation?code=1234-5").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["resourceType"], "Bundle");
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        "/fhir/Observation?code=1234-5"
    );
    let r = call("sys", "/fhir/Condition?code=x").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "insufficient_scope");
    let mut patient = active("app-user");
    patient["scope"] = json!("patient/Observation.rs");
    patient["patient"] = json!("p-1");
    server.set("pat", Answer::Json(200, patient));
    let r = call("pat", "/fhir/Observation?code=x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let q = seen.lock().unwrap().last().unwrap().clone();
    assert!(q.contains("p-1"), "search not confined to the patient: {q}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a refused request reached the upstream"
    );
}

/// `ward check`: mistakes in an introspection provider are reported with file and line,
/// and the client secret is never echoed. Generated variants.
#[test]
fn introspection_config_errors_have_file_and_line() {
    let base = |extra: &str| {
        format!(
            "auth:
  providers:
    - name: corp
      issuer: {ISS}
      audiences: [{AUD}]
      introspection:
        endpoint: https://as.test/introspect
        ca: certs/ca.pem
        client_id: {CLIENT_ID}
{extra}"
        )
    };
    let basic = "        client_auth: client_secret_basic\n        client_secret_file: secrets/s\n";
    let cases: Vec<(String, &str)> = vec![
        (base("        client_auth: client_secret_basic\n"), "client_secret_file"),
        (base(&format!("{basic}        surprise: 1\n")), "`surprise`"),
        (base("        client_auth: mtls\n"), "`client_secret_basic`"),
        (base("        client_auth: private_key_jwt\n        algorithm: ES256\n"), "private_key_file"),
        (base("        client_auth: private_key_jwt\n        private_key_file: secrets/k.pem\n        algorithm: HS256\n"), "algorithm"),
        (base("        client_auth: private_key_jwt\n        private_key_file: secrets/s\n        algorithm: ES256\n"), "private_key_file"),
        (base(&format!("{basic}        private_key_file: secrets/k.pem\n")), "private_key_file"),
        (base(&format!("{basic}        timeout: 0s\n")), "timeout"),
        (base(&format!("{basic}        cache_ttl: 2h\n")), "cache_ttl"),
        (base(&format!("{basic}        max_cache_entries: 2000000\n")), "max_cache_entries"),
        (base(basic).replace("https://as.test/introspect", "http://as.test/introspect"), "endpoint"),
        (base(basic).replace("client_id: ward-gateway", "client_id: \" \""), "client_id"),
        (base(basic).replace("ca: certs/ca.pem", "ca: certs/missing.pem"), "ca"),
        (base(basic).replace("      introspection:", "      algorithms: [ES256]\n      introspection:"), "algorithms"),
        (base(basic).replace("      introspection:", "      jwks_url: https://as.test/jwks\n      jwks_ca: certs/ca.pem\n      introspection:"), "keys_file"),
        (format!("{}    - name: other\n      issuer: https://b.test\n      audiences: [x]\n      algorithms: [ES256]\n      keys_file: certs/k.pem\n", base(basic)), "introspection"),
    ];
    for (i, (policy, key)) in cases.iter().enumerate() {
        let env = Env::new();
        env.write("secrets/s", &format!("{SECRET}\n"));
        let k = KeyPair::generate().unwrap();
        env.write("secrets/k.pem", &k.serialize_pem());
        env.write("certs/k.pem", &k.public_key_pem());
        env.write("policies/introspect.yaml", policy);
        let up = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let cfg = env.write(
            "ward.yaml",
            &basic_config(up, "", "").replace(
                "    fhir: true\n",
                "    fhir: true\n    policies: [introspect]\n",
            ),
        );
        let errs = config_errors(&cfg);
        let line = errs
            .lines()
            .find(|l| l.contains(&format!("{key}: ")) || l.contains(key) && key.contains('`'))
            .unwrap_or_else(|| panic!("case {i}: no error about {key}: {errs}"));
        let after = line
            .split_once("introspect.yaml:")
            .map(|(_, r)| r)
            .unwrap_or_default();
        assert!(
            after.starts_with(|c: char| c.is_ascii_digit()),
            "case {i}: no file:line in {line}"
        );
        assert!(!errs.contains("p@ss"), "case {i}: secret echoed: {errs}");
    }
}
