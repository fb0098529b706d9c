//! `ward init` end to end: the real binary, run against the sample EHR (behind a recording
//! forwarder, so the tests see what reached the EHR) and an identity provider serving its
//! discovery document and JWKS over TLS; the generated config is loaded, started in-process
//! and driven per client kind over real TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rcgen::KeyPair;
use serde_json::{json, Value};
use ward::demo::Pki;

const AUD: &str = "ward-init-test";

/// What reached the EHR.
#[derive(Default)]
struct Ehr {
    target: Mutex<Option<SocketAddr>>,
    seen: Mutex<Vec<(String, String, http::HeaderMap)>>,
}

impl Ehr {
    /// Requests other than the gateway's health checks (GET /fhir/metadata, at any time).
    fn traffic(&self) -> Vec<(String, String, http::HeaderMap)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p != "/fhir/metadata")
            .cloned()
            .collect()
    }
    fn count(&self) -> usize {
        self.traffic().len()
    }
    fn last(&self) -> (String, String, http::HeaderMap) {
        self.traffic().pop().expect("the EHR saw a request")
    }
}

async fn forward(st: Arc<Ehr>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    st.seen
        .lock()
        .unwrap()
        .push((parts.method.to_string(), pq.clone(), parts.headers.clone()));
    let body = body.collect().await.unwrap().to_bytes();
    let target = st.target.lock().unwrap().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut r = Request::builder()
        .method(parts.method)
        .uri(format!("http://{target}{pq}"));
    if let Some(ct) = parts.headers.get("content-type") {
        r = r.header("content-type", ct);
    }
    let resp = client
        .request(r.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (p, b) = resp.into_parts();
    Response::from_parts(p, Full::new(b.collect().await.unwrap().to_bytes()))
}

/// The sample EHR behind a recording forwarder.
async fn ehr() -> (SocketAddr, Arc<Ehr>) {
    let sample = ward::demo::sample_upstream(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let st = Arc::new(Ehr::default());
    *st.target.lock().unwrap() = Some(sample);
    (serve_http1(st.clone(), forward).await, st)
}

/// An interface engine's MLLP port: records each message and acknowledges it (AA).
async fn engine() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    use ward::hl7v2::mllp::{write_frame, FrameReader};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = tcp.accept().await else {
                continue;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut r = FrameReader::new(sock, 1 << 20);
                let t = Duration::from_secs(60);
                while let Ok(Some(msg)) = r.next(t, t).await {
                    g.lock().unwrap().push(msg.clone());
                    let h = ward::hl7v2::header(&msg).unwrap_or_default();
                    let ack = ward::hl7v2::build_ack(
                        &h,
                        ward::hl7v2::AckCode::Accept,
                        &[],
                        "20260101000000",
                        "ENGINE",
                    );
                    if write_frame(r.get_mut(), &ack).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

fn adt(control_id: &str, facility: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|REG|{facility}|EHR|HOSP|20260315083012||ADT^A01^ADT_A01|{control_id}|P|2.5.1\rEVN|A01|20260315083000\rPID|1||123456^^^HOSP^MR||Testperson^Alba||19700101|F\rPV1|1|I|WARD1^101^A\r"
    )
    .into_bytes()
}

fn jwk(key: &KeyPair) -> Value {
    let raw = key.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"})
}

struct Idp {
    issuer: String,
    pki: Pki,
    key: KeyPair,
}

/// An identity provider over TLS: `/.well-known/openid-configuration` (or, with `smart`,
/// only `/.well-known/smart-configuration`), and `/jwks`. It also answers `/fhir/metadata`
/// with the sample CapabilityStatement: an EHR reached over TLS.
async fn idp(algs: Value, smart: bool) -> Idp {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::pem::PemObject;
    let pki = Pki::generate(&["localhost"]).unwrap();
    let key = KeyPair::generate().unwrap();
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let pk = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, pk)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("https://localhost:{}", tcp.local_addr().unwrap().port());
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "id_token_signing_alg_values_supported": algs,
    })
    .to_string();
    let jwks = json!({"keys": [jwk(&key)]}).to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, discovery, jwks) = (acceptor.clone(), discovery.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (status, body) = match req.uri().path() {
                        "/.well-known/openid-configuration" if !smart => (200, discovery.clone()),
                        "/.well-known/smart-configuration" if smart => (200, discovery.clone()),
                        "/fhir/metadata" => (200, ward::demo::CAPABILITY_STATEMENT.to_owned()),
                        "/jwks" => (200, jwks.clone()),
                        _ => (404, "{}".to_owned()),
                    };
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Idp { issuer, pki, key }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ward_init(args: &[String], stdin: &str) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("init")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ward init finished")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The flags every gateway test run uses (loopback, any port).
fn bind_flags(dir: &Path) -> Vec<String> {
    s(&[
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--mllp-bind",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().unwrap(),
    ])
}

struct Setup {
    _tmp: tempfile::TempDir,
    /// The interface engine (MLLP) and the messages it received.
    engine: SocketAddr,
    engine_got: Arc<Mutex<Vec<Vec<u8>>>>,
    dir: PathBuf,
    ehr: Arc<Ehr>,
    idp: Idp,
    ehr_addr: SocketAddr,
    idp_ca: PathBuf,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let (ehr_addr, ehr) = ehr().await;
    let idp = idp(json!(["none", "HS256", "RS256", "ES256"]), false).await;
    let idp_ca = tmp.path().join("idp-ca.pem");
    std::fs::write(&idp_ca, &idp.pki.ca_cert).unwrap();
    let dir = tmp.path().join("out");
    let (engine, engine_got) = engine().await;
    Setup {
        engine,
        engine_got,
        dir,
        ehr,
        idp,
        ehr_addr,
        idp_ca,
        _tmp: tmp,
    }
}

fn full_flags(st: &Setup, dir: &Path) -> Vec<String> {
    let mut a = s(&[
        "--non-interactive",
        "--upstream",
        &format!("http://{}/fhir", st.ehr_addr),
        "--idp",
        &st.idp.issuer,
        "--idp-ca",
        st.idp_ca.to_str().unwrap(),
        "--audience",
        AUD,
        "--clients",
        "clinician,patient,backend,research,hl7v2",
        "--dev-certs",
        "--hl7-upstream",
        &st.engine.to_string(),
        "--hl7-facility",
        "TEST-HOSP",
    ]);
    a.extend(bind_flags(dir));
    a
}

fn token(st: &Setup, sub: &str, scope: &str, patient: Option<&str>) -> String {
    ward::demo::mint_token(
        st.idp.key.serialize_pem().as_bytes(),
        None,
        &ward::demo::TokenSpec {
            iss: &st.idp.issuer,
            aud: AUD,
            sub,
            scope,
            patient,
            ttl: Duration::from_secs(600),
            kid: Some("k1"),
            cnf_x5t: None,
        },
    )
    .unwrap()
}

fn with_token(url: &str, tok: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("authorization", format!("Bearer {tok}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The generated deployment's PKI, as the test clients need it.
fn dev_pki(dir: &Path) -> Pki {
    let r = |f: &str| std::fs::read_to_string(dir.join("certs").join(f)).unwrap();
    Pki {
        ca_cert: r("ca.pem"),
        ca_key: r("ca.key"),
        server_cert: r("server.pem"),
        server_key: r("server.key"),
        client_cert: r("client.pem"),
        client_key: r("client.key"),
    }
}

fn files_of(dir: &Path) -> Vec<(String, String)> {
    let mut v = vec![(
        "ward.yaml".to_owned(),
        std::fs::read_to_string(dir.join("ward.yaml")).unwrap(),
    )];
    let mut names: Vec<_> = std::fs::read_dir(dir.join("policies"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names {
        let t = std::fs::read_to_string(dir.join("policies").join(&n)).unwrap();
        v.push((n, t));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_config_enforces_each_client_kind() {
    let st = setup().await;
    let run = ward_init(&full_flags(&st, &st.dir), "").await;
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.contains("ward check: ok"), "{}", run.stdout);
    // Only ES256 and RS256 of what the IdP advertised; never none or HS256.
    let idp_yaml = std::fs::read_to_string(st.dir.join("policies/idp.yaml")).unwrap();
    assert!(
        idp_yaml.contains("algorithms: [RS256, ES256]"),
        "{idp_yaml}"
    );
    let algs = idp_yaml
        .lines()
        .find(|l| l.trim_start().starts_with("algorithms:"))
        .unwrap();
    assert!(!algs.contains("none") && !algs.contains("HS"), "{algs}");
    // Every generated file explains itself.
    for (name, text) in files_of(&st.dir) {
        assert!(
            text.lines().filter(|l| l.contains("# ")).count() >= 2,
            "{name}"
        );
    }

    // (a) it loads, as `ward check` loads it.
    let cfg = ward::config::load(&st.dir.join("ward.yaml")).expect("generated config loads");
    let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["clinician", "patient", "backend", "research"]);
    assert_eq!(cfg.admin.bind, "127.0.0.1:0");
    assert!(cfg.audit.is_some(), "audit is on");
    // HL7 v2: TLS, required client certificates, and a sender binding.
    assert_eq!(cfg.mllp.len(), 1);
    let m = &cfg.mllp[0];
    let tls = m.tls.as_ref().expect("MLLP over TLS");
    assert_eq!(tls.client_auth.mode, ward::config::ClientAuthMode::Required);
    assert_eq!(m.senders.len(), 1);
    assert_eq!(m.senders[0].subjects, ["demo-client"]);
    assert_eq!(m.senders[0].sending_facilities, ["TEST-HOSP"]);
    assert!(m.audit);

    // (b) it starts.
    let gw = ward::Gateway::start(cfg).await.expect("gateway starts");
    let pki = dev_pki(&st.dir);
    let c = client(&pki, false);
    let u = |p: &str| url(&gw, p);

    // (c) every kind: no token or a bad one is 401 and never reaches the EHR.
    let forged = {
        let other = KeyPair::generate().unwrap();
        ward::demo::mint_token(
            other.serialize_pem().as_bytes(),
            None,
            &ward::demo::TokenSpec {
                iss: &st.idp.issuer,
                aud: AUD,
                sub: "mallory",
                scope: "user/*.read",
                patient: None,
                ttl: Duration::from_secs(600),
                kid: Some("k1"),
                cnf_x5t: None,
            },
        )
        .unwrap()
    };
    let wrong_aud = ward::demo::mint_token(
        st.idp.key.serialize_pem().as_bytes(),
        None,
        &ward::demo::TokenSpec {
            iss: &st.idp.issuer,
            aud: "some-other-api",
            sub: "dr-who",
            scope: "user/*.read",
            patient: None,
            ttl: Duration::from_secs(600),
            kid: Some("k1"),
            cnf_x5t: None,
        },
    )
    .unwrap();
    for prefix in ["/clinician", "/patient", "/research"] {
        let before = st.ehr.count();
        let r = send(&c, get(&u(&format!("{prefix}/fhir/Patient/example-1")))).await;
        assert_eq!(r.status, 401, "{prefix} without a token");
        for bad in [&forged, &wrong_aud] {
            let r = send(
                &c,
                with_token(&u(&format!("{prefix}/fhir/Patient/example-1")), bad),
            )
            .await;
            assert_eq!(r.status, 401, "{prefix} with a bad token");
        }
        assert_eq!(
            st.ehr.count(),
            before,
            "{prefix}: refused requests never reach the EHR"
        );
    }

    // Clinician: a valid token reaches the EHR, without the token, with who asked.
    let doc = token(&st, "dr-house", "user/*.read user/*.write", None);
    let r = send(
        &c,
        with_token(&u("/clinician/fhir/Patient/example-1"), &doc),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "example-1");
    let (method, path, headers) = st.ehr.last();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("GET", "/fhir/Patient/example-1")
    );
    assert!(
        headers.get("authorization").is_none(),
        "the token is not forwarded"
    );
    assert_eq!(headers.get("x-user-sub").unwrap(), "dr-house");
    // The search firewall: every parameter the EHR advertises passes…
    for p in ["_id", "name", "birthdate"] {
        let r = send(
            &c,
            with_token(&u(&format!("/clinician/fhir/Patient?{p}=x")), &doc),
        )
        .await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(st.ehr.last().1, format!("/fhir/Patient?{p}=x"));
    }
    // …and none it does not advertise, nor a modifier of one it does.
    for p in [
        "family",
        "gender",
        "address",
        "telecom",
        "name:contains",
        "_has:Observation:patient:code",
        "_filter",
        "identifier",
    ] {
        let before = st.ehr.count();
        let r = send(
            &c,
            with_token(&u(&format!("/clinician/fhir/Patient?{p}=x")), &doc),
        )
        .await;
        assert_eq!(r.status, 403, "{p}");
        assert_eq!(st.ehr.count(), before, "{p} never reaches the EHR");
    }
    // Interactions the EHR does not offer (update, patch, delete) are not routed.
    for m in ["PUT", "PATCH", "DELETE"] {
        let before = st.ehr.count();
        let req = Request::builder()
            .method(m)
            .uri(u("/clinician/fhir/Patient/example-1"))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .body(Full::new(Bytes::from_static(
                br#"{"resourceType":"Patient","id":"example-1"}"#,
            )))
            .unwrap();
        assert_eq!(send(&c, req).await.status, 405, "{m}");
        assert_eq!(st.ehr.count(), before);
    }
    // Writes: only of types the EHR accepts writes for, and valid.
    let post = |t: &str, body: &'static str| {
        Request::post(u(&format!("/clinician/fhir/{t}")))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let r = send(
        &c,
        post(
            "Patient",
            r#"{"resourceType":"Patient","name":[{"family":"New"}]}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(st.ehr.last().1, "/fhir/Patient");
    let before = st.ehr.count();
    let r = send(
        &c,
        post(
            "Organization",
            r#"{"resourceType":"Organization","name":"X"}"#,
        ),
    )
    .await;
    assert!(r.status == 400 || r.status == 403, "{}", r.status);
    let r = send(
        &c,
        post(
            "Patient",
            r#"{"resourceType":"Patient","birthDate":"not a date"}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(st.ehr.count(), before, "refused writes never reach the EHR");

    // Patient app: its own record yes; any other patient's no.
    let app = token(
        &st,
        "app-1",
        "launch/patient patient/*.read",
        Some("example-1"),
    );
    let r = send(&c, with_token(&u("/patient/fhir/Patient/example-1"), &app)).await;
    assert_eq!(r.status, 200);
    assert_eq!(st.ehr.last().1, "/fhir/Patient/example-1");
    for other in ["example-2", "example-3", "does-not-exist"] {
        let before = st.ehr.count();
        let r = send(
            &c,
            with_token(&u(&format!("/patient/fhir/Patient/{other}")), &app),
        )
        .await;
        // The compartment guard answers as for a missing record (existence of other
        // patients is never revealed), without asking the EHR.
        assert_eq!(r.status, 404, "{other}: {:?}", r.body);
        assert_eq!(r.code(), "not_found");
        assert_eq!(st.ehr.count(), before, "{other}");
        let r = send(
            &c,
            with_token(
                &u(&format!("/patient/fhir/Observation?patient={other}")),
                &app,
            ),
        )
        .await;
        assert_eq!(r.status, 403, "search for {other}");
    }
    // Patient apps only read.
    let req = Request::post(u("/patient/fhir/Patient"))
        .header("authorization", format!("Bearer {app}"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Patient"}"#,
        )))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 405);

    // Research: the SSN in example-3 never leaves the gateway.
    let analyst = token(&st, "analyst-1", "user/*.read", None);
    let r = send(
        &c,
        with_token(&u("/research/fhir/Patient/example-3"), &analyst),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(st.ehr.last().1, "/fhir/Patient/example-3");
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains("123-45-6789"), "{body}");
    assert!(!body.contains("555-234-0123"), "{body}");
    assert!(!body.contains("4111"), "{body}");
    assert!(r.json().get("name").is_none(), "names removed: {body}");
    assert!(
        r.json().get("identifier").is_none(),
        "identifiers removed: {body}"
    );
    let r = send(
        &c,
        with_token(&u("/clinician/fhir/Patient/example-3"), &doc),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&r.body).contains("123-45-6789"),
        "the clinician route is not de-identified"
    );

    // Backend: a token alone is not enough; the client certificate too.
    let sys = token(&st, "lab-system", "system/*.read", None);
    let before = st.ehr.count();
    let r = send(&c, with_token(&u("/backend/fhir/Observation/obs-1"), &sys)).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.code(), "client_cert_required");
    assert_eq!(st.ehr.count(), before);
    let cert = ClientCert {
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
    };
    let cc = client_with_cert(&pki, &cert, false);
    let r = send(&cc, get(&u("/backend/fhir/Observation/obs-1"))).await;
    assert_eq!(r.status, 401, "the certificate alone is not enough either");
    let r = send(&cc, with_token(&u("/backend/fhir/Observation/obs-1"), &sys)).await;
    assert_eq!(r.status, 200);
    let (_, path, headers) = st.ehr.last();
    assert_eq!(path, "/fhir/Observation/obs-1");
    assert_eq!(headers.get("x-client-identity").unwrap(), "demo-client");

    // HL7 v2: the sender's certificate may send for its own facility only…
    let mllp = gw.addr("hl7v2").expect("MLLP listener bound");
    let tls = client_tls_with_cert(&pki, &cert, &[]);
    let tcp = tokio::net::TcpStream::connect(mllp).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut r = ward::hl7v2::mllp::FrameReader::new(stream, 1 << 20);
    let t = Duration::from_secs(30);
    ward::hl7v2::mllp::write_frame(r.get_mut(), &adt("OK-1", "TEST-HOSP"))
        .await
        .unwrap();
    let ack = r.next(t, t).await.unwrap().expect("an ACK");
    let (code, id) = ward::hl7v2::parse_ack(&ack).unwrap();
    assert_eq!((code.as_str(), id.as_slice()), ("AA", &b"OK-1"[..]));
    assert_eq!(st.engine_got.lock().unwrap().len(), 1);
    // …and is refused (AR, never forwarded) for any other.
    for (i, spoof) in [
        "OTHER-HOSP",
        "TEST-HOSP2",
        "test-hosp",
        "",
        "TEST-HOSP^X",
        " TEST-HOSP",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("SPOOF-{i}");
        ward::hl7v2::mllp::write_frame(r.get_mut(), &adt(&id, spoof))
            .await
            .unwrap();
        let ack = r.next(t, t).await.unwrap().expect("an ACK");
        let (code, got_id) = ward::hl7v2::parse_ack(&ack).unwrap();
        assert_eq!(code.as_str(), "AR", "{spoof:?}");
        assert_eq!(got_id, id.as_bytes());
    }
    assert_eq!(
        st.engine_got.lock().unwrap().len(),
        1,
        "spoofed messages never forwarded"
    );
    // A TLS client without a certificate gets no session.
    let no_cert = Arc::new(client_tls(&pki, &[]));
    let res = request_with(no_cert, mllp, "\u{b}MSH|^~\\&|A|TEST-HOSP\r\u{1c}\r").await;
    assert!(res.is_err(), "{res:?}");
    assert_eq!(st.engine_got.lock().unwrap().len(), 1);

    gw.begin_shutdown();
    gw.drained().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_overwrite_without_force() {
    let st = setup().await;
    let flags = full_flags(&st, &st.dir);
    assert_eq!(ward_init(&flags, "").await.code, 0);
    let before = files_of(&st.dir);
    let key_before = std::fs::read(st.dir.join("certs/server.key")).unwrap();
    let run = ward_init(&flags, "").await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("refusing to overwrite"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"));
    assert_eq!(files_of(&st.dir), before, "nothing was changed");
    assert_eq!(
        std::fs::read(st.dir.join("certs/server.key")).unwrap(),
        key_before
    );
    // Any one file it would write is enough to refuse: it is named, kept, and nothing
    // else is written.
    for (i, victim) in [
        "ward.yaml",
        "policies/idp.yaml",
        "policies/baseline.yaml",
        "certs/server.key",
        "certs/ca.pem",
        "secrets/audit.key",
    ]
    .iter()
    .enumerate()
    {
        let dir = st._tmp.path().join(format!("v{i}"));
        let p = dir.join(victim);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "# mine\n").unwrap();
        let run = ward_init(&full_flags(&st, &dir), "").await;
        assert_eq!(run.code, 1, "{victim}");
        assert!(run.stderr.contains(victim), "{victim}: {}", run.stderr);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "# mine\n");
        if *victim != "ward.yaml" {
            assert!(!dir.join("ward.yaml").exists(), "{victim}: nothing written");
        }
    }
    // --force replaces.
    let mut forced = flags.clone();
    forced.push("--force".into());
    let run = ward_init(&forced, "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(
        std::fs::read(st.dir.join("certs/server.key")).unwrap(),
        key_before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn works_offline_from_files() {
    let st = setup().await;
    let cap = st._tmp.path().join("capability.json");
    std::fs::write(&cap, ward::demo::CAPABILITY_STATEMENT).unwrap();
    let disc = st._tmp.path().join("discovery.json");
    std::fs::write(
        &disc,
        json!({"issuer": st.idp.issuer, "jwks_uri": format!("{}/jwks", st.idp.issuer),
               "token_endpoint_auth_signing_alg_values_supported": ["ES256", "HS512"]})
        .to_string(),
    )
    .unwrap();
    // Nothing listens at this EHR address: the files are all there is.
    let dead = dead_addr().await;
    let mut a = s(&[
        "--non-interactive",
        "--upstream",
        &format!("http://{dead}/fhir"),
        "--capability-statement",
        cap.to_str().unwrap(),
        "--discovery",
        disc.to_str().unwrap(),
        "--idp-ca",
        st.idp_ca.to_str().unwrap(),
        "--audience",
        AUD,
        "--clients",
        "patient",
        "--dev-certs",
    ]);
    a.extend(bind_flags(&st.dir));
    let run = ward_init(&a, "").await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let idp_yaml = std::fs::read_to_string(st.dir.join("policies/idp.yaml")).unwrap();
    assert!(idp_yaml.contains("algorithms: [ES256]"), "{idp_yaml}");
    assert!(idp_yaml.contains(&format!("jwks_url: \"{}/jwks\"", st.idp.issuer)));
    let cfg = ward::config::load(&st.dir.join("ward.yaml")).unwrap();
    assert_eq!(cfg.upstreams[0].url, format!("http://{dead}"));
    // The offline config works: start it against the real EHR address.
    let text = std::fs::read_to_string(st.dir.join("ward.yaml"))
        .unwrap()
        .replace(&dead.to_string(), &st.ehr_addr.to_string());
    std::fs::write(st.dir.join("ward.yaml"), text).unwrap();
    let gw = ward::Gateway::start(ward::config::load(&st.dir.join("ward.yaml")).unwrap())
        .await
        .unwrap();
    let c = client(&dev_pki(&st.dir), false);
    let app = token(&st, "app-1", "patient/*.read", Some("example-2"));
    let r = send(
        &c,
        with_token(&url(&gw, "/patient/fhir/Patient/example-2"), &app),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(st.ehr.last().1, "/fhir/Patient/example-2");
    gw.begin_shutdown();
    gw.drained().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_answers_make_the_same_config_as_flags() {
    let st = setup().await;
    let run = ward_init(&full_flags(&st, &st.dir), "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let asked = st._tmp.path().join("asked");
    let answers = format!(
        "http://{}/fhir\nclinician, patient, backend, research, hl7v2\ny\n{}\n{}\n{AUD}\n{}\n\nTEST-HOSP\n",
        st.ehr_addr,
        st.idp.issuer,
        st.idp_ca.display(),
        st.engine
    );
    let run = ward_init(&bind_flags(&asked), &answers).await;
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("The EHR's FHIR base URL"),
        "{}",
        run.stdout
    );
    assert_eq!(files_of(&asked), files_of(&st.dir));
    // Too few answers: a clear error, never a hang or a silent default.
    let short = st._tmp.path().join("short");
    let run = ward_init(
        &bind_flags(&short),
        &format!("http://{}/fhir\n", st.ehr_addr),
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("end of input"), "{}", run.stderr);
    assert!(!short.join("ward.yaml").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_or_unusable_discovery_is_refused() {
    let st = setup().await;
    let iss = st.idp.issuer.clone();
    let cases = [
        json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks"), "id_token_signing_alg_values_supported": ["none"]}),
        json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks"), "id_token_signing_alg_values_supported": ["HS256", "HS384", "HS512"]}),
        json!({"issuer": iss, "jwks_uri": "http://localhost/jwks"}),
        json!({"issuer": iss, "jwks_uri": format!("{iss}/${{WARD_SECRET}}")}),
        json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks\"\n  shared_secret: x")}),
        json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks # comment")}),
        json!({"issuer": "https://impostor.example", "jwks_uri": format!("{iss}/jwks")}),
        json!({"issuer": iss}),
        json!("not an object"),
    ];
    let cap = st._tmp.path().join("capability.json");
    std::fs::write(&cap, ward::demo::CAPABILITY_STATEMENT).unwrap();
    for (i, doc) in cases.iter().enumerate() {
        let disc = st._tmp.path().join(format!("d{i}.json"));
        std::fs::write(&disc, doc.to_string()).unwrap();
        let dir = st._tmp.path().join(format!("o{i}"));
        let mut a = s(&[
            "--non-interactive",
            "--upstream",
            "http://127.0.0.1:1/fhir",
            "--capability-statement",
            cap.to_str().unwrap(),
            "--idp",
            &iss,
            "--discovery",
            disc.to_str().unwrap(),
            "--idp-ca",
            st.idp_ca.to_str().unwrap(),
            "--clients",
            "clinician",
        ]);
        a.extend(bind_flags(&dir));
        let run = ward_init(&a, "").await;
        assert_eq!(run.code, 1, "case {i}: {}", run.stdout);
        assert!(!run.stderr.is_empty(), "case {i}");
        assert!(!dir.join("ward.yaml").exists(), "case {i}: nothing written");
    }
    // No identity provider and no development issuer: refused, with what to do.
    let dir = st._tmp.path().join("no-idp");
    let mut a = s(&[
        "--non-interactive",
        "--upstream",
        "http://127.0.0.1:1/fhir",
        "--capability-statement",
        cap.to_str().unwrap(),
    ]);
    a.extend(bind_flags(&dir));
    let run = ward_init(&a, "").await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--idp"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_dev_certs_it_says_which_certificates_to_supply() {
    let st = setup().await;
    let disc = st._tmp.path().join("discovery.json");
    std::fs::write(
        &disc,
        json!({"issuer": st.idp.issuer, "jwks_uri": format!("{}/jwks", st.idp.issuer)}).to_string(),
    )
    .unwrap();
    let mut a = s(&[
        "--non-interactive",
        "--upstream",
        &format!("http://{}/fhir", st.ehr_addr),
        "--discovery",
        disc.to_str().unwrap(),
        "--idp-ca",
        st.idp_ca.to_str().unwrap(),
        "--clients",
        "backend,hl7v2",
    ]);
    a.extend(bind_flags(&st.dir));
    let run = ward_init(&a, "").await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    for f in ["certs/server.pem", "certs/client-ca.pem"] {
        assert!(run.stdout.contains(f), "{f}: {}", run.stdout);
    }
    // No algorithm list advertised: the OpenID default, noted in the file.
    let idp_yaml = std::fs::read_to_string(st.dir.join("policies/idp.yaml")).unwrap();
    assert!(idp_yaml.contains("algorithms: [RS256]"), "{idp_yaml}");
    assert!(idp_yaml.contains("RS256 assumed"), "{idp_yaml}");
}

/// CapabilityStatements with hostile or unusable names: what cannot be written safely is
/// dropped, and the config written from the rest still loads, without the hostile text.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_capability_statements_never_reach_the_config() {
    let st = setup().await;
    let hostile = [
        "x\"\n  shared_secret: aaaa",
        "${HOME}",
        "a # b",
        "name]\nroutes: []",
        "'q'",
        "{x: 1}",
        "&anchor",
        "*alias",
        "!!binary",
        "\u{202e}name",
        "a\\u0000b",
    ];
    for (i, bad) in hostile.iter().enumerate() {
        let cap = json!({"resourceType": "CapabilityStatement", "status": "active", "date": "2026-01-01",
            "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
            "rest": [{"mode": "server",
                "resource": [
                    {"type": "Patient", "interaction": [{"code": "read"}, {"code": bad}],
                     "searchParam": [{"name": "name", "type": "string"}, {"name": bad, "type": "string"}],
                     "operation": [{"name": bad, "definition": "x"}]},
                    {"type": bad, "interaction": [{"code": "read"}]}],
                "searchParam": [{"name": bad, "type": "token"}],
                "operation": [{"name": format!("${bad}"), "definition": "x"}]}]});
        let f = st._tmp.path().join(format!("cap{i}.json"));
        std::fs::write(&f, cap.to_string()).unwrap();
        let dir = st._tmp.path().join(format!("h{i}"));
        let mut a = s(&[
            "--non-interactive",
            "--upstream",
            "http://127.0.0.1:1/fhir",
            "--capability-statement",
            f.to_str().unwrap(),
            "--clients",
            "clinician,patient",
            "--dev-certs",
        ]);
        a.extend(bind_flags(&dir));
        let run = ward_init(&a, "").await;
        assert_eq!(run.code, 0, "case {i}: {}\n{}", run.stdout, run.stderr);
        let cfg = ward::config::load(&dir.join("ward.yaml")).expect("loads");
        assert_eq!(cfg.routes.len(), 2, "case {i}");
        for (name, text) in files_of(&dir) {
            assert!(!text.contains(bad), "case {i}: {name} carries {bad:?}");
        }
        let scopes = std::fs::read_to_string(dir.join("policies/scopes.yaml")).unwrap();
        assert!(
            scopes.contains("allowed_params: [\"name\"]"),
            "case {i}: {scopes}"
        );
        assert!(scopes.contains("allowed_operations: []"), "case {i}");
    }
}

/// An https EHR is read with the given CA only, and a SMART-only IdP is enough.
#[tokio::test(flavor = "multi_thread")]
async fn https_ehr_needs_its_ca_and_a_smart_only_idp_works() {
    let st = setup().await;
    let tls = idp(json!(["ES384", "PS256"]), true).await;
    let ca = st._tmp.path().join("tls-ca.pem");
    std::fs::write(&ca, &tls.pki.ca_cert).unwrap();
    let base = format!("{}/fhir", tls.issuer);
    let flags = |dir: &Path, upstream_ca: Option<&Path>| {
        let mut a = s(&[
            "--non-interactive",
            "--upstream",
            &base,
            "--idp",
            &tls.issuer,
        ]);
        a.extend(s(&[
            "--idp-ca",
            ca.to_str().unwrap(),
            "--clients",
            "clinician",
        ]));
        if let Some(c) = upstream_ca {
            a.extend(s(&["--upstream-ca", c.to_str().unwrap()]));
        }
        a.push("--dev-certs".into());
        a.extend(bind_flags(dir));
        a
    };
    // No CA: refused before anything is fetched or written.
    let dir = st._tmp.path().join("no-ca");
    let run = ward_init(&flags(&dir, None), "").await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--upstream-ca"), "{}", run.stderr);
    assert!(!dir.join("ward.yaml").exists());
    // The wrong CA (another PKI's): the EHR's certificate is not trusted.
    let dir = st._tmp.path().join("wrong-ca");
    let run = ward_init(&flags(&dir, Some(&st.idp_ca)), "").await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("/fhir/metadata"), "{}", run.stderr);
    assert!(!dir.join("ward.yaml").exists());
    // The right CA.
    let dir = st._tmp.path().join("ok");
    let run = ward_init(&flags(&dir, Some(&ca)), "").await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let cfg = ward::config::load(&dir.join("ward.yaml")).unwrap();
    assert_eq!(cfg.upstreams[0].url, tls.issuer);
    let written = cfg.upstreams[0].ca.as_deref().unwrap();
    assert_eq!(Path::new(written), std::path::absolute(&ca).unwrap());
    let idp_yaml = std::fs::read_to_string(dir.join("policies/idp.yaml")).unwrap();
    assert!(
        idp_yaml.contains("algorithms: [PS256, ES384]"),
        "{idp_yaml}"
    );
}
