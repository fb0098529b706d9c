//! Bearer tokens over real TLS: forged, tampered, expired and misdirected tokens are
//! refused with stable codes; JWKS rotation, refetch rate limit and outage behave; tokens
//! bound to a client certificate only work on that certificate.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

const ISS: &str = "https://idp.test";
const JWKS_ISS: &str = "https://jwks.test";
const AUD: &str = "ward-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": AUD, "sub": "clinician-7", "iat": now(), "nbf": now(), "exp": now() + 600, "scope": "patient/*.read"})
}

fn sign(key: &KeyPair, header: Header, claims: &Value) -> String {
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &k).unwrap()
}

fn es256(key: &KeyPair, claims: &Value) -> String {
    sign(key, Header::new(Algorithm::ES256), claims)
}

fn with_kid(key: &KeyPair, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    sign(key, h, claims)
}

/// Hand-made token: any header, any claims, any signature bytes.
fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(sig)
    )
}

fn jwk(key: &KeyPair, kid: &str) -> Value {
    let raw = key.public_key_raw(); // 0x04 || X || Y
    json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"})
}

/// A JWKS endpoint over TLS whose document the test can change; counts fetches. While
/// `open` is false it holds every answer (the fetch is counted, then waits).
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

async fn jwks_server(pki: &ward::demo::Pki, doc: Value) -> JwksServer {
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
    let doc = Arc::new(Mutex::new(doc.to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(tokio::sync::watch::Sender::new(true));
    let (d, h, o) = (doc.clone(), hits.clone(), open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, d, h, o) = (acceptor.clone(), d.clone(), h.clone(), o.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (d, mut open) = (d.clone(), o.subscribe());
                    async move {
                        let _ = open.wait_for(|o| *o).await;
                        let body = d.lock().unwrap().clone();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    JwksServer {
        addr,
        doc,
        hits,
        open,
    }
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    state: Arc<UpstreamState>,
    key: KeyPair,
    rsa_pub_pem: String,
}

/// Gateway with a static-key provider (ES256), an RSA provider (RS256) and a JWKS
/// provider, on the /fhir route; `jwks` is the JWKS URL, `refetch` its rate limit.
async fn setup(jwks: &str, refetch: &str, extra_auth: &str) -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/es256.pub.pem", &key.public_key_pem());
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_pub_pem = rsa.public_key_pem();
    env.write("keys/rs256.pub.pem", &rsa_pub_pem);
    env.write(
        "policies/token.yaml",
        &format!(
            "auth:
  providers:
    - name: static
      issuer: {ISS}
      audiences: [{AUD}]
      algorithms: [ES256]
      keys_file: keys/es256.pub.pem
      leeway: 0s
    - name: rsa
      issuer: https://rsa.test
      audiences: [{AUD}]
      algorithms: [RS256]
      keys_file: keys/rs256.pub.pem
    - name: jwks
      issuer: {JWKS_ISS}
      audiences: [{AUD}]
      algorithms: [ES256]
      jwks_url: {jwks}
      jwks_ca: certs/ca.pem
      jwks_min_refetch: {refetch}
  max_token_bytes: 4096
  forward_claims:
    sub: x-user-sub
{extra_auth}"
        ),
    );
    let (up, state) = upstream().await;
    let cfg = basic_config(up, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token]\n",
    );
    let gw = env.start(&cfg).await;
    Setup {
        env,
        gw,
        state,
        key,
        rsa_pub_pem,
    }
}

async fn call(s: &Setup, token: Option<&str>) -> Reply {
    let c = client(&s.env.pki, false);
    let mut b = Request::get(url(&s.gw, "/fhir/Patient/1"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(&c, b.body(Full::new(Bytes::new())).unwrap()).await
}

async fn expect_401(s: &Setup, token: &str, code: &str) {
    let r = call(s, Some(token)).await;
    assert_eq!(r.status, 401, "{code}: {:?}", r.body);
    assert_eq!(r.code(), code, "{:?}", r.body);
    let www = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        www.starts_with("Bearer") && www.contains("error=\"invalid_token\""),
        "{www}"
    );
}

#[tokio::test]
async fn valid_token_passes_and_claims_are_forwarded() {
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    let t = es256(&s.key, &claims(ISS));
    let c = client(&s.env.pki, true);
    let req = Request::get(url(&s.gw, "/fhir/Patient/1"))
        .header("authorization", format!("Bearer {t}"))
        .header("x-user-sub", "someone-else")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = s.state.last();
    assert_eq!(
        seen.headers
            .get_all("x-user-sub")
            .iter()
            .collect::<Vec<_>>(),
        vec!["clinician-7"]
    );
    assert!(
        !seen.headers.contains_key("authorization"),
        "client token forwarded by default"
    );
    // Missing token: 401 without an error code (RFC 6750 §3.1), as an OperationOutcome.
    let r = call(&s, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"ward\"");
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(r.json()["issue"][0]["code"], "login");
    assert_eq!(r.code(), "token_missing");
    let (_, m) = admin_get(&s.gw, "/metrics").await;
    assert!(
        m.contains(
            "ward_authn_total{code=\"ok\",provider=\"static\",result=\"allow\",route=\"fhir\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("ward_authn_total{code=\"token_missing\",provider=\"-\",result=\"deny\",route=\"fhir\"} 1"), "{m}");
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    let c = claims(ISS);
    // alg none, in its spellings, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = raw_token(&json!({"alg": alg, "typ": "JWT"}), &c, b"");
        expect_401(&s, &t, "token_malformed").await;
        let t = raw_token(&json!({"alg": alg}), &c, b"sig");
        expect_401(&s, &t, "token_malformed").await;
    }
    // Empty signature on a real algorithm.
    let good = es256(&s.key, &c);
    let (head, _) = good.rsplit_once('.').unwrap();
    expect_401(&s, &format!("{head}."), "token_signature").await;
    // Claims swapped under a valid signature.
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = c.clone();
    evil["sub"] = "admin".into();
    let t = format!("{}.{}.{}", parts[0], B64.encode(evil.to_string()), parts[2]);
    expect_401(&s, &t, "token_signature").await;
    // ES256 with r = s = 0 ("psychic signatures", CVE-2022-21449).
    let t = raw_token(&json!({"alg": "ES256"}), &c, &[0u8; 64]);
    expect_401(&s, &t, "token_signature").await;
    // RS256 provider, token re-signed HS256 with the RSA public key as the HMAC secret.
    let mut rc = c.clone();
    rc["iss"] = "https://rsa.test".into();
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &rc,
        &EncodingKey::from_secret(s.rsa_pub_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    expect_401(&s, &hs, "token_algorithm").await;
    // Attacker key embedded in the header (jwk), or pointed at (jku, x5u): never used.
    let attacker = KeyPair::generate().unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.jwk = Some(serde_json::from_value(jwk(&attacker, "evil")).unwrap());
    expect_401(&s, &sign(&attacker, h, &c), "token_signature").await;
    let mut h = Header::new(Algorithm::ES256);
    h.jku = Some("https://attacker.example/jwks.json".into());
    h.x5u = Some("https://attacker.example/cert.pem".into());
    expect_401(&s, &sign(&attacker, h, &c), "token_signature").await;
    // kid with path traversal: not a file name, just an unknown key.
    expect_401(
        &s,
        &with_kid(&s.key, "../../../../etc/passwd", &c),
        "token_key_unknown",
    )
    .await;
    // Unknown crit header.
    let mut h = Header::new(Algorithm::ES256);
    h.crit = Some(vec!["exp-policy".into()]);
    expect_401(&s, &sign(&s.key, h, &c), "token_malformed").await;
    // Garbage.
    expect_401(&s, "not.a.jwt", "token_malformed").await;
    expect_401(&s, "onlyonepart", "token_malformed").await;
    assert_eq!(s.state.count(), 0, "a forged token reached the upstream");
}

#[tokio::test]
async fn claim_checks() {
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    let base = claims(ISS);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    expect_401(
        &s,
        &es256(&s.key, &with("exp", json!(now() - 10))),
        "token_expired",
    )
    .await;
    expect_401(
        &s,
        &es256(&s.key, &with("nbf", json!(now() + 3600))),
        "token_not_yet_valid",
    )
    .await;
    expect_401(
        &s,
        &es256(&s.key, &with("iat", json!(now() + 3600))),
        "token_not_yet_valid",
    )
    .await;
    for k in ["exp", "aud", "iss", "sub"] {
        let t = es256(&s.key, &without(k));
        let r = call(&s, Some(&t)).await;
        assert_eq!(r.status, 401, "missing {k} accepted");
        assert!(
            ["token_claim_missing", "token_issuer"].contains(&r.code().as_str()),
            "{k}: {}",
            r.code()
        );
    }
    expect_401(
        &s,
        &es256(&s.key, &with("aud", json!("other-api"))),
        "token_audience",
    )
    .await;
    expect_401(
        &s,
        &es256(&s.key, &with("aud", json!(["other-api", "x"]))),
        "token_audience",
    )
    .await;
    // A token from an issuer no provider trusts, and a static-provider token with a
    // JWKS-provider issuer (signed by the wrong key).
    expect_401(
        &s,
        &es256(&s.key, &with("iss", json!("https://evil.test"))),
        "token_issuer",
    )
    .await;
    // Oversized token.
    let big = es256(&s.key, &with("pad", json!("x".repeat(5000))));
    expect_401(&s, &big, "token_too_large").await;
    // Token in the query string: refused even when a header token is valid.
    let good = es256(&s.key, &base);
    let c = client(&s.env.pki, false);
    let req = Request::get(url(&s.gw, &format!("/fhir/Patient?access_token={good}")))
        .header("authorization", format!("Bearer {good}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!((r.status, r.code().as_str()), (400, "token_in_query"));
    // Two Authorization headers.
    let req = Request::get(url(&s.gw, "/fhir/Patient"))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", "Bearer other")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 400);
    assert_eq!(s.state.count(), 0);
}

#[tokio::test]
async fn cache_never_serves_a_token_past_exp() {
    // No wall clock: the expiry check of the cache itself runs on a fake clock in
    // `policy::auth::tests::cache_never_serves_past_exp_and_stays_bounded`. End to end,
    // tokens minted already expired (by 1 s up to an hour; the leeway is 0) are refused,
    // and a cached valid token for the same subject does not make them pass.
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    let ok = es256(
        &s.key,
        &json!({"iss": ISS, "aud": AUD, "sub": "s", "exp": now() + 600}),
    );
    assert_eq!(call(&s, Some(&ok)).await.status, 200);
    let upstream_before = s.state.count();
    for ago in [1, 2, 60, 3600] {
        let t = es256(
            &s.key,
            &json!({"iss": ISS, "aud": AUD, "sub": "s", "exp": now() - ago}),
        );
        expect_401(&s, &t, "token_expired").await;
        // Asked twice: a refusal must not be cached as anything else either.
        expect_401(&s, &t, "token_expired").await;
    }
    assert_eq!(
        s.state.count(),
        upstream_before,
        "an expired token reached the upstream"
    );
    assert_eq!(call(&s, Some(&ok)).await.status, 200);
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_restart() {
    let pki_env = Env::new();
    let a = KeyPair::generate().unwrap();
    let b = KeyPair::generate().unwrap();
    let server = jwks_server(&pki_env.pki, json!({"keys": [jwk(&a, "key-a")]})).await;
    let url_ = format!("https://localhost:{}/jwks", server.addr.port());
    let s = setup_with_ca(&url_, "1s", &pki_env.pki.ca_cert).await;
    let tok_a = with_kid(&a, "key-a", &claims(JWKS_ISS));
    assert_eq!(call(&s, Some(&tok_a)).await.status, 200);
    // Rotate: the IdP now publishes only key B. An unknown kid refetches at most once per
    // jwks_min_refetch (1s), so keep asking (bounded) until the new key is seen.
    *server.doc.lock().unwrap() = json!({"keys": [jwk(&b, "key-b")]}).to_string();
    let tok_b = with_kid(&b, "key-b", &claims(JWKS_ISS));
    let mut status = 0;
    for _ in 0..100 {
        status = call(&s, Some(&tok_b)).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "rotated key never accepted");
    assert!(server.hits.load(Ordering::SeqCst) >= 2);
    // Key A was withdrawn: its token, though cached as valid, is verified again and refused.
    expect_401(&s, &tok_a, "token_key_unknown").await;
}

/// Like `setup`, but the JWKS CA is `ca_pem` (a JWKS server with its own PKI).
async fn setup_with_ca(jwks: &str, refetch: &str, ca_pem: &str) -> Setup {
    let s = setup(jwks, refetch, "").await;
    drop(s.gw);
    s.env.write("certs/jwks-ca.pem", ca_pem);
    let policy = std::fs::read_to_string(s.env.path("policies/token.yaml"))
        .unwrap()
        .replace("jwks_ca: certs/ca.pem", "jwks_ca: certs/jwks-ca.pem");
    s.env.write("policies/token.yaml", &policy);
    let cfg = std::fs::read_to_string(s.env.path("ward.yaml")).unwrap();
    let gw = s.env.start(&cfg).await;
    Setup { gw, ..s }
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let pki_env = Env::new();
    let a = KeyPair::generate().unwrap();
    let server = jwks_server(&pki_env.pki, json!({"keys": [jwk(&a, "key-a")]})).await;
    let url_ = format!("https://localhost:{}/jwks", server.addr.port());
    let s = setup_with_ca(&url_, "1h", &pki_env.pki.ca_cert).await;
    // A known key works (and guarantees the initial fetch happened).
    assert_eq!(
        call(&s, Some(&with_kid(&a, "key-a", &claims(JWKS_ISS))))
            .await
            .status,
        200
    );
    let before = server.hits.load(Ordering::SeqCst);
    for i in 0..5 {
        let t = with_kid(&a, &format!("unknown-{i}"), &claims(JWKS_ISS));
        expect_401(&s, &t, "token_key_unknown").await;
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        before,
        "unknown kids must not hammer the IdP"
    );
}

/// Single flight: while one JWKS fetch is under way (held open by the server), a stampede
/// of requests naming a key not yet known starts no further fetch; they share the one fetch
/// and are all served once it brings the key. Generated: every stampede size and kid mix.
#[tokio::test]
async fn a_stampede_of_unknown_kids_shares_one_fetch() {
    for (n, distinct_kids) in [(1, false), (8, false), (32, false), (32, true)] {
        let pki_env = Env::new();
        let a = KeyPair::generate().unwrap();
        let kids: Vec<String> = (0..n)
            .map(|i| {
                if distinct_kids {
                    format!("k-{i}")
                } else {
                    "k".into()
                }
            })
            .collect();
        let doc = json!({"keys": kids.iter().map(|k| jwk(&a, k)).collect::<Vec<_>>()});
        let server = jwks_server(&pki_env.pki, doc).await;
        server.open.send_replace(false);
        let url_ = format!("https://localhost:{}/jwks", server.addr.port());
        // With a 1 h refetch limit, no fetch but the first may happen at all.
        let s = Arc::new(setup_with_ca(&url_, "1h", &pki_env.pki.ca_cert).await);
        let upstream_before = s.state.count();
        let mut calls = Vec::new();
        for (i, kid) in kids.iter().enumerate() {
            let mut c = claims(JWKS_ISS);
            c["sub"] = json!(format!("user-{i}"));
            let t = with_kid(&a, kid, &c);
            let s = s.clone();
            calls.push(tokio::spawn(async move { call(&s, Some(&t)).await }));
        }
        // Whether the requests reach the gateway before or after this, they are served
        // by the first fetch: joined while it runs, or its keys once it is done.
        server.open.send_replace(true);
        for c in calls {
            let r = c.await.unwrap();
            assert_eq!(r.status, 200, "n={n}: {:?}", r.body);
        }
        assert_eq!(s.state.count(), upstream_before + n, "n={n}");
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "n={n} distinct={distinct_kids}: unknown kids started more than one fetch"
        );
    }
}

#[tokio::test]
async fn jwks_down_is_503_not_401() {
    let dead = dead_addr().await;
    let s = setup(&format!("https://localhost:{}/jwks", dead.port()), "1s", "").await;
    let r = call(&s, Some(&with_kid(&s.key, "k", &claims(JWKS_ISS)))).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.code(), "jwks_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    // Static-key providers are unaffected.
    assert_eq!(
        call(&s, Some(&es256(&s.key, &claims(ISS)))).await.status,
        200
    );
}

#[tokio::test]
async fn certificate_bound_tokens() {
    use ward::identity::ClientIdentity;
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    // Re-start the gateway with client certificates requested on the listener.
    let ca = ClientCa::new("Client CA");
    s.env.write("clients/ca.pem", &ca.pem);
    let cfg = std::fs::read_to_string(s.env.path("ward.yaml")).unwrap().replacen(
        "          server_names: [localhost]\n",
        "          server_names: [localhost]\n      client_auth:\n        mode: optional\n        ca: [clients/ca.pem]\n",
        1,
    );
    drop(s.gw);
    let gw = s.env.start(&cfg).await;
    let addr = gw.addr("public").unwrap();
    let mine = ca.issue(
        "app-1",
        ClientOpts {
            serial: 1,
            ..Default::default()
        },
    );
    let other = ca.issue(
        "app-2",
        ClientOpts {
            serial: 2,
            ..Default::default()
        },
    );
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(mine.cert.as_bytes()).unwrap();
    let x5t = ClientIdentity::from_der(&der).unwrap().x5t_s256;
    let mut c = claims(ISS);
    c["cnf"] = json!({"x5t#S256": x5t});
    let t = es256(&s.key, &c);
    // A DPoP-style binding Ward cannot check is refused, not treated as a bearer token.
    let mut dpop = claims(ISS);
    dpop["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    let dpop = es256(&s.key, &dpop);
    let req_dpop = format!("GET /fhir/Patient/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {dpop}\r\nConnection: close\r\n\r\n");
    let req = format!("GET /fhir/Patient/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n");
    let with_mine = Arc::new(client_tls_with_cert(&s.env.pki, &mine, &[b"http/1.1"]));
    assert_eq!(
        status_of(&request_with(with_mine, addr, &req).await.unwrap()),
        200
    );
    let with_other = Arc::new(client_tls_with_cert(&s.env.pki, &other, &[b"http/1.1"]));
    let resp = request_with(with_other, addr, &req).await.unwrap();
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert!(resp.contains("token_binding"));
    let no_cert = Arc::new(client_tls(&s.env.pki, &[b"http/1.1"]));
    assert_eq!(
        status_of(&request_with(no_cert.clone(), addr, &req).await.unwrap()),
        401
    );
    let resp = request_with(no_cert, addr, &req_dpop).await.unwrap();
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert!(resp.contains("token_binding"));
}

#[tokio::test]
async fn upstream_authorization_modes() {
    let s = setup(
        "https://localhost:1/jwks",
        "30s",
        "  upstream_authorization: replace\n  upstream_credential: Bearer upstream-service-credential\n",
    )
    .await;
    assert_eq!(
        call(&s, Some(&es256(&s.key, &claims(ISS)))).await.status,
        200
    );
    assert_eq!(
        s.state.last().headers["authorization"],
        "Bearer upstream-service-credential"
    );

    let s = setup(
        "https://localhost:1/jwks",
        "30s",
        "  upstream_authorization: forward\n",
    )
    .await;
    let t = es256(&s.key, &claims(ISS));
    assert_eq!(call(&s, Some(&t)).await.status, 200);
    assert_eq!(
        s.state.last().headers["authorization"].to_str().unwrap(),
        format!("Bearer {t}")
    );
}

#[tokio::test]
async fn ward_token_command_mints_accepted_tokens() {
    let s = setup("https://localhost:1/jwks", "30s", "").await;
    let key_file = s.env.write("keys/signing.key", &s.key.serialize_pem());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["token", "--key"])
        .arg(&key_file)
        .args([
            "--sub",
            "nurse-3",
            "--scope",
            "patient/Observation.rs",
            "--patient",
            "example-1",
            "--ttl",
            "5m",
            "--iss",
            ISS,
            "--aud",
            AUD,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(call(&s, Some(&token)).await.status, 200);
    assert_eq!(s.state.last().headers["x-user-sub"], "nurse-3");
    // A bad key file is a clear error, not a panic.
    let bad = s.env.write("keys/bad.key", "not a key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["token", "--key"])
        .arg(&bad)
        .args(["--sub", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PEM private key"));
}

/// Blank values: empty, and whitespace of every kind HL7 senders and IdPs produce.
const BLANKS: &[&str] = &["", " ", "   ", "\t", "\n", " \r\n ", "\u{a0}", "\u{2003}"];

/// Claims that are present but name nobody are refused like absent ones; every required
/// and identity claim, every blank variant. Nothing reaches the upstream.
#[tokio::test]
async fn blank_identity_claims_are_refused() {
    // `tenant` is forwarded to the upstream: a blank one must not become an empty header.
    let s = setup("https://localhost:1/jwks", "30s", "    tenant: x-tenant\n").await;
    let base = claims(ISS);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    for b in BLANKS {
        expect_401(
            &s,
            &es256(&s.key, &with("sub", json!(b))),
            "token_claim_missing",
        )
        .await;
        // A blank issuer matches no provider.
        expect_401(&s, &es256(&s.key, &with("iss", json!(b))), "token_issuer").await;
        let r = call(&s, Some(&es256(&s.key, &with("aud", json!(b))))).await;
        assert_eq!(r.status, 401, "aud {b:?}");
        assert!(
            ["token_audience", "token_claim_missing"].contains(&r.code().as_str()),
            "aud {b:?}: {}",
            r.code()
        );
        // A good audience next to a blank one: malformed list.
        expect_401(
            &s,
            &es256(&s.key, &with("aud", json!([AUD, b]))),
            "token_claim_invalid",
        )
        .await;
        for k in ["client_id", "azp", "patient", "tenant"] {
            expect_401(
                &s,
                &es256(&s.key, &with(k, json!(b))),
                "token_claim_invalid",
            )
            .await;
        }
    }
    let r = call(&s, Some(&es256(&s.key, &with("aud", json!([]))))).await;
    assert_eq!(r.status, 401, "aud []");
    // Identity claims of the wrong type are malformed, not silently ignored (a numeric
    // `client_id` must not fall back to `azp`).
    for k in ["client_id", "azp", "patient"] {
        for v in [json!(7), json!(["x"]), json!({}), json!(null), json!(true)] {
            expect_401(&s, &es256(&s.key, &with(k, v)), "token_claim_invalid").await;
        }
    }
    assert_eq!(s.state.count(), 0, "a refused token reached the upstream");
    // Values with inner or surrounding spaces are identities, and pass.
    for v in ["a b", " x", "clinician-7 "] {
        let mut c = with("sub", json!(v));
        c["client_id"] = json!(v);
        c["patient"] = json!(v);
        c["tenant"] = json!(v);
        let r = call(&s, Some(&es256(&s.key, &c))).await;
        assert_eq!(r.status, 200, "{v:?}: {:?}", r.body);
    }
    assert_eq!(s.state.count(), 3);
}

#[test]
fn a_blank_audience_is_a_config_error() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/es256.pub.pem", &key.public_key_pem());
    for aud in ["\"\"", "\" \"", "[ok, \"\"]"] {
        let cfg = env.write(
            "ward.yaml",
            &basic_config("127.0.0.1:9".parse().unwrap(), "", "").replace(
                "    path_prefix: /api\n    upstream: ehr\n",
                "    path_prefix: /api\n    upstream: ehr\n    policies: [token]\n",
            ),
        );
        let audiences = if aud.starts_with('[') {
            aud.to_owned()
        } else {
            format!("[{aud}]")
        };
        env.write(
            "policies/token.yaml",
            &format!("auth:\n  providers:\n    - name: p\n      issuer: {ISS}\n      audiences: {audiences}\n      algorithms: [ES256]\n      keys_file: keys/es256.pub.pem\n"),
        );
        let errs = config_errors(&cfg);
        assert!(
            errs.contains("audiences must not be blank"),
            "{aud}: {errs}"
        );
    }
}
