//! Audit records as FHIR AuditEvents (IHE BALP) end to end: a gateway run where read,
//! search, create, update, delete and a refusal each leave the right AuditEvent — in the
//! chained file (which still verifies), at a syslog-over-TLS collector (RFC 5424 header,
//! RFC 5425 octet counting, the AuditEvent JSON as MSG) and at a FHIR audit repository —
//! each one valid R4 by Ward's own validator and equal to its committed golden
//! (`tests/fixtures/golden/audit-event-*.json`, time and ids normalised; rewrite with
//! `WARD_WRITE_GOLDEN=1` after a deliberate change). And a repository that is down, then
//! answers 503, then recovers: every event arrives exactly once, in order.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Safety net only: every wait below is on a message that must arrive.
const PATIENCE: Duration = Duration::from_secs(60);

fn acceptor(pki: &ward::demo::Pki) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A syslog-over-TLS collector: every RFC 5425 frame's MSG part (`LEN SP MSG`) is sent on
/// the returned channel.
fn syslog_collector(
    pki: &ward::demo::Pki,
    tcp: tokio::net::TcpListener,
) -> mpsc::UnboundedReceiver<String> {
    use tokio::io::AsyncReadExt;
    let acceptor = acceptor(pki);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut t) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = t.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
                        let digits = &buf[..sp];
                        assert!(
                            !digits.is_empty()
                                && digits.len() <= 10
                                && digits.iter().all(u8::is_ascii_digit)
                                && digits[0] != b'0',
                            "bad octet count {:?}",
                            String::from_utf8_lossy(digits)
                        );
                        let len: usize = std::str::from_utf8(digits).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        let _ = tx.send(msg);
                    }
                }
            });
        }
    });
    rx
}

/// A FHIR audit repository over TLS: `POST /fhir/AuditEvent`. Attempt `n` is answered
/// `script[n]`, and 201 once the script is over; accepted (2xx) events are sent on the
/// returned channel.
struct Repository {
    accepted: mpsc::UnboundedReceiver<Value>,
    attempts: Arc<AtomicUsize>,
}

fn repository(pki: &ward::demo::Pki, tcp: tokio::net::TcpListener, script: Vec<u16>) -> Repository {
    let script = Arc::new(script);
    let acceptor = acceptor(pki);
    let (tx, rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, tx, seen, script) =
                (acceptor.clone(), tx.clone(), seen.clone(), script.clone());
            tokio::spawn(async move {
                let Ok(t) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (tx, seen, script) = (tx.clone(), seen.clone(), script.clone());
                    async move {
                        let ok_target = req.method() == http::Method::POST
                            && req.uri().path() == "/fhir/AuditEvent"
                            && req.headers()[http::header::CONTENT_TYPE] == "application/fhir+json";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let status = if !ok_target {
                            400
                        } else {
                            script.get(n).copied().unwrap_or(201)
                        };
                        if (200..300).contains(&status) {
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            let _ = tx.send(v);
                        }
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(t), svc)
                    .await;
            });
        }
    });
    Repository {
        accepted: rx,
        attempts,
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing arrived"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

fn token(key: &KeyPair, patient: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": "dr-jones", "client_id": "chart-app", "exp": now + 600});
    if let Some(p) = patient {
        c["patient"] = p.into();
    }
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

/// The gateway's config: a FHIR route with token auth and audit, AuditEvents on, the
/// given sinks.
fn config(env: &Env, key: &KeyPair, up: std::net::SocketAddr, sinks: &str) -> String {
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write("policies/audited.yaml", "audit: {}\n");
    basic_config(up, "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [audited, token]\n",
        )
        .replace(
            "admin:\n",
            &format!(
                "audit:\n  path: audit/audit.jsonl\n  durability: fsync\n  audit_event:\n    source_id: ward.test\n    site: Test Hospital\n    in_file: true\n{sinks}admin:\n"
            ),
        )
}

fn file_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(files: &[PathBuf]) -> i32 {
    std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

fn valid_r4(ev: &Value) {
    let bytes = ev.to_string().into_bytes();
    if let Err(issues) = ward::fhir::validate::validate_resource(
        &bytes,
        &ward::fhir::validate::Limits::default(),
        None,
    ) {
        panic!("not a valid R4 AuditEvent: {ev:#}\n{issues:#?}");
    }
}

/// Time and request ids vary from run to run.
fn normalised(ev: &Value) -> Value {
    let mut e = ev.clone();
    e["recorded"] = json!("2000-01-01T00:00:00Z");
    if let Some(entities) = e["entity"].as_array_mut() {
        for ent in entities {
            if ent["type"]["code"] == "XrequestId" {
                ent["what"]["identifier"]["value"] = json!("REQUEST-ID");
            }
        }
    }
    e
}

fn check_golden(name: &str, ev: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(format!("audit-event-{name}.json"));
    let got = serde_json::to_string_pretty(&normalised(ev)).unwrap() + "\n";
    if std::env::var_os("WARD_WRITE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with WARD_WRITE_GOLDEN=1)",
            path.display()
        )
    });
    let want: Value = serde_json::from_str(&want).unwrap();
    assert_eq!(
        normalised(ev),
        want,
        "{name}: differs from {}",
        path.display()
    );
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    patient: Option<&'static str>,
    /// Send a token at all.
    authed: bool,
    status: u16,
    profile: Option<&'static str>,
    action: &'static str,
    outcome: &'static str,
}

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";

fn cases() -> Vec<Case> {
    let c = |name, method, path, patient, profile, action| Case {
        name,
        method,
        path,
        patient,
        authed: true,
        status: 200,
        profile,
        action,
        outcome: "0",
    };
    vec![
        c(
            "read",
            "GET",
            "/fhir/Observation/o1",
            None,
            Some("Read"),
            "R",
        ),
        c(
            "patient-read",
            "GET",
            "/fhir/Patient/p1",
            None,
            Some("PatientRead"),
            "R",
        ),
        c(
            "search",
            "GET",
            "/fhir/Observation?code=SECRET-CODE",
            None,
            Some("Query"),
            "E",
        ),
        c(
            "patient-search",
            "GET",
            "/fhir/Observation?code=SECRET-CODE&subject=Patient/p1",
            Some("p1"),
            Some("PatientQuery"),
            "E",
        ),
        c(
            "create",
            "POST",
            "/fhir/Observation",
            None,
            Some("Create"),
            "C",
        ),
        c(
            "patient-create",
            "POST",
            "/fhir/Observation",
            Some("p1"),
            Some("PatientCreate"),
            "C",
        ),
        c(
            "update",
            "PUT",
            "/fhir/Observation/o1",
            None,
            Some("Update"),
            "U",
        ),
        c(
            "patient-update",
            "PUT",
            "/fhir/Patient/p1",
            None,
            Some("PatientUpdate"),
            "U",
        ),
        c(
            "delete",
            "DELETE",
            "/fhir/Observation/o1",
            None,
            Some("Delete"),
            "D",
        ),
        c(
            "patient-delete",
            "DELETE",
            "/fhir/Observation/o1",
            Some("p1"),
            Some("PatientDelete"),
            "D",
        ),
        Case {
            name: "refusal",
            method: "GET",
            path: "/fhir/Patient/p2",
            patient: None,
            authed: false,
            status: 401,
            profile: None,
            action: "R",
            outcome: "4",
        },
    ]
}

async fn run_case(c: &TestClient, gw: &ward::Gateway, key: &KeyPair, case: &Case) -> Reply {
    let mut b = Request::builder()
        .method(case.method)
        .uri(url(gw, case.path));
    if case.authed {
        b = b.header(
            "authorization",
            format!("Bearer {}", token(key, case.patient)),
        );
    }
    let body = if matches!(case.method, "POST" | "PUT") {
        b = b.header("content-type", "application/fhir+json");
        Bytes::from(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
        )
    } else {
        Bytes::new()
    };
    send(c, b.body(Full::new(body)).unwrap()).await
}

#[tokio::test]
async fn every_interaction_becomes_its_balp_audit_event_in_the_file_at_syslog_and_at_the_repository(
) {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    let (up, upstream_state) = upstream().await;
    let siem = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let repo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sinks = format!(
        "  syslog:\n    address: 127.0.0.1:{}\n    ca: certs/ca.pem\n    message: audit_event\n  repository:\n    url: https://127.0.0.1:{}/fhir\n    ca: certs/ca.pem\n    spool: audit/spool\n",
        siem.local_addr().unwrap().port(),
        repo.local_addr().unwrap().port()
    );
    let mut syslog = syslog_collector(&env.pki, siem);
    let mut repo = repository(&env.pki, repo, vec![]);
    let gw = env.start(&config(&env, &key, up, &sinks)).await;
    let c = client(&env.pki, false);

    let cases = cases();
    for case in &cases {
        let before = upstream_state.count();
        let r = run_case(&c, &gw, &key, case).await;
        assert_eq!(r.status, case.status, "{}", case.name);
        // What the upstream received: the request, or nothing for a refusal.
        if case.status == 200 {
            let seen = upstream_state.last();
            assert_eq!(seen.method, case.method, "{}", case.name);
            assert_eq!(seen.path_and_query, case.path, "{}", case.name);
        } else {
            assert_eq!(upstream_state.count(), before, "{}", case.name);
        }
    }

    // The file: one line per request, each carrying its AuditEvent, chain intact.
    let audit = env.path("audit/audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines = file_records(&audit);
    assert_eq!(lines.len(), cases.len());
    assert!(!text.contains("SECRET-CODE"), "the query is never in clear");
    assert!(
        !text.contains("\\u0000query"),
        "the private query member is never written"
    );
    assert_eq!(verify(std::slice::from_ref(&audit)), 0);

    for (case, line) in cases.iter().zip(&lines) {
        let ev = &line["audit_event"];
        let ctx = case.name;
        valid_r4(ev);
        check_golden(case.name, ev);
        assert_eq!(ev["action"], case.action, "{ctx}");
        assert_eq!(ev["outcome"], case.outcome, "{ctx}");
        assert_eq!(
            ev["meta"]["profile"][0].as_str(),
            case.profile.map(|p| format!("{BALP}{p}")).as_deref(),
            "{ctx}"
        );
        // The record and its event are of the same request.
        let rid = ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"]["code"] == "XrequestId")
            .unwrap()["what"]["identifier"]["value"]
            .clone();
        assert_eq!(rid, line["request_id"], "{ctx}");
        // Agents: the network address of the client, the user from the token.
        let agents = ev["agent"].as_array().unwrap();
        assert!(
            agents
                .iter()
                .any(|a| a["network"] == json!({"address": "127.0.0.1", "type": "2"})),
            "{ctx}"
        );
        if case.authed {
            assert!(agents.iter().any(|a| a["who"]["identifier"]
                == json!({"system": "https://idp.test", "value": "dr-jones"})
                && a["requestor"] == true));
            assert!(agents
                .iter()
                .any(|a| a["who"]["identifier"]["value"] == "chart-app"));
        } else {
            assert_eq!(ev["outcomeDesc"], line["code"], "{ctx}");
            assert!(
                line["code"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("token")),
                "{line}"
            );
        }
        if case.path.contains('?') {
            use base64::Engine as _;
            let q = ev["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["role"]["code"] == "24")
                .unwrap()["query"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                base64::engine::general_purpose::STANDARD.decode(q).unwrap(),
                case.path.as_bytes(),
                "{ctx}"
            );
        }
    }

    // Tampering with an event inside a line breaks the chain.
    let mut tampered: Vec<String> = text.lines().map(str::to_owned).collect();
    tampered[0] = tampered[0].replacen("\"action\":\"R\"", "\"action\":\"C\"", 1);
    assert_ne!(tampered[0], text.lines().next().unwrap());
    let copy = env.path("tampered.jsonl");
    std::fs::write(&copy, tampered.join("\n") + "\n").unwrap();
    assert_eq!(verify(&[copy]), 1);

    // Syslog: one RFC 5424 message per record, in order, the AuditEvent as MSG.
    for (i, line) in lines.iter().enumerate() {
        let m = next(&mut syslog, "syslog").await;
        let mut parts = m.splitn(8, ' ');
        let (pri_ver, ts, host, app, procid, msgid, sd, msg) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(pri_ver, "<85>1", "{m}");
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "{m}"
        );
        assert!(!host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(
            (app, procid, msgid, sd),
            ("ward", "-", "IHE+FHIR", "-"),
            "{m}"
        );
        let ev: Value = serde_json::from_str(msg).unwrap();
        assert_eq!(ev, line["audit_event"], "syslog message {i}");
    }

    // Repository: every event, in order, as written.
    for (i, line) in lines.iter().enumerate() {
        let ev = next(&mut repo.accepted, "repository").await;
        assert_eq!(ev, line["audit_event"], "repository event {i}");
    }
    assert_eq!(repo.attempts.load(Ordering::SeqCst), cases.len());
}

#[tokio::test]
async fn a_repository_that_is_down_then_failing_gets_every_event_exactly_once_in_order() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    let (up, _state) = upstream().await;
    // Down at start (bound, not listening): events wait in the spool.
    let reserved = ReservedPort::bind();
    let sinks = format!(
        "  repository:\n    url: https://127.0.0.1:{}/fhir\n    ca: certs/ca.pem\n    spool: audit/spool\n",
        reserved.addr.port()
    );
    // The file need not carry the events: the spool does.
    let cfg = config(&env, &key, up, &sinks).replace("    in_file: true\n", "");
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    let mut ids = Vec::new();
    let ask = |i: usize| {
        let (c, gw, key) = (&c, &gw, &key);
        async move {
            let r = send(
                c,
                Request::get(url(gw, &format!("/fhir/Observation/o{i}")))
                    .header(
                        "authorization",
                        format!("Bearer {}", token(key, Some("p1"))),
                    )
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            // The request path does not wait for the repository.
            assert_eq!(r.status, 200);
            r.headers["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    for i in 0..5 {
        ids.push(ask(i).await);
    }
    // With fsync durability the answers came after the spool was written.
    let spool = env.path("audit/spool");
    let spooled = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(spooled, 5);
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(metrics.contains("ward_audit_spool_records 5"), "{metrics}");
    // The line never carries the event nor the query when `in_file` is off.
    let text = std::fs::read_to_string(env.path("audit/audit.jsonl")).unwrap();
    assert!(!text.contains("audit_event") && !text.contains("query"));

    // Up, but answering 503 to the first three attempts; more requests meanwhile.
    let mut repo = repository(&env.pki, reserved.listen(), vec![503; 3]);
    for i in 5..10 {
        ids.push(ask(i).await);
    }
    let event_id = |ev: &Value| {
        ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"]["code"] == "XrequestId")
            .unwrap()["what"]["identifier"]["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut got = Vec::new();
    for _ in 0..10 {
        let ev = next(&mut repo.accepted, "repository").await;
        valid_r4(&ev);
        got.push(event_id(&ev));
    }
    // One more: delivery is one at a time in spool order, so any duplicate of the first
    // ten would have arrived before it.
    ids.push(ask(10).await);
    got.push(event_id(&next(&mut repo.accepted, "repository").await));
    assert_eq!(got, ids, "every event once, in order");
    assert!(repo.attempts.load(Ordering::SeqCst) >= 3 + 11);
    assert!(repo.accepted.try_recv().is_err());
    // The 11th is counted once its 201 is read (after the repository saw it): 10 or 11.
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ward_audit_repository_total{result=\"sent\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((10..=11).contains(&sent), "{metrics}");
}

/// Every kind of mistake in the new keys is a config error naming the file, the line of
/// the key and its path (`ward check` prints these).
#[test]
fn audit_event_and_sink_keys_are_checked_with_file_and_line() {
    let env = Env::new();
    let base = basic_config("127.0.0.1:9".parse().unwrap(), "", "");
    let ev = "  audit_event:\n    source_id: ward.test\n";
    let repo = |extra: &str| {
        format!("  repository:\n    url: https://audit.test/fhir\n    ca: certs/ca.pem\n    spool: audit/spool\n{extra}")
    };
    // (audit keys, the offending line as written, what the message names)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "  audit_event:\n    source_id: \" \"\n".into(),
            "    source_id: \" \"",
            "audit.audit_event.source_id",
        ),
        (
            format!("{ev}    sourceid: x\n"),
            "    sourceid: x",
            "sourceid",
        ),
        (
            "  syslog:\n    address: 127.0.0.1:6514\n    ca: certs/ca.pem\n    message: audit_event\n".into(),
            "    message: audit_event",
            "audit.syslog.message",
        ),
        (
            format!("{ev}  syslog:\n    address: 127.0.0.1:6514\n    ca: certs/ca.pem\n    message: json\n"),
            // A wrong type or variant is reported at the section (the decoder's limit).
            "audit:",
            "expected `record` or `audit_event`",
        ),
        (repo(""), "  repository:", "audit.repository"),
        (
            format!("{ev}  repository:\n    url: http://audit.test/fhir\n    spool: s\n"),
            "    url: http://audit.test/fhir",
            "audit.repository.url",
        ),
        (
            format!("{ev}  repository:\n    url: ftp://audit.test/fhir\n    spool: s\n"),
            "    url: ftp://audit.test/fhir",
            "audit.repository.url",
        ),
        (
            format!("{ev}  repository:\n    url: https://audit.test/fhir?x=1\n    ca: c\n    spool: s\n"),
            "    url: https://audit.test/fhir?x=1",
            "audit.repository.url",
        ),
        (
            format!("{ev}  repository:\n    url: https://audit.test/fhir\n    spool: s\n"),
            "  repository:",
            "audit.repository.ca",
        ),
        (
            format!("{ev}{}", repo("    spool_max: 0\n")),
            "    spool_max: 0",
            "audit.repository.spool_max",
        ),
        (
            "  audit_event:\n    source_id: \"a\\tb\"\n".into(),
            "    source_id: \"a\\tb\"",
            "audit.audit_event.source_id",
        ),
        (
            format!("{ev}    site: \" padded\"\n"),
            "    site: \" padded\"",
            "audit.audit_event.site",
        ),
        (
            format!("{ev}{}", repo("    timeout: 0s\n")),
            "    timeout: 0s",
            "audit.repository.timeout",
        ),
        (
            format!("{ev}{}", repo("    client_cert: certs/client.pem\n")),
            "    client_cert: certs/client.pem",
            "audit.repository.client_cert",
        ),
        (
            format!("{ev}{}", repo("    batch: true\n")),
            "    batch: true",
            "batch",
        ),
        (
            format!("{ev}  repository:\n    url: https://audit.test/fhir\n    ca: c\n"),
            "audit:",
            "missing field `spool`",
        ),
    ];
    for (keys, line_text, path) in cases {
        let yaml = base.replace(
            "admin:\n",
            &format!("audit:\n  path: audit/audit.jsonl\n{keys}admin:\n"),
        );
        let line = yaml
            .lines()
            .position(|l| l == line_text)
            .unwrap_or_else(|| panic!("{line_text:?} not in the test config"))
            + 1;
        let p = env.write("ward.yaml", &yaml);
        let errs = config_errors(&p);
        let want = format!("ward.yaml:{line}: ");
        assert!(
            errs.lines().any(|e| e.contains(&want) && e.contains(path)),
            "{keys}\nwant {want}…{path}, got:\n{errs}"
        );
        // Values are never echoed (a URL may carry credentials).
        if line_text.contains("url:") {
            assert!(!errs.contains("audit.test"), "{errs}");
        }
    }
    // And the same keys, right, load.
    let yaml = base.replace(
        "admin:\n",
        &format!(
            "audit:\n  path: audit/audit.jsonl\n{ev}    site: S\n    in_file: true\n  syslog:\n    address: 127.0.0.1:6514\n    ca: certs/ca.pem\n    message: audit_event\n{}admin:\n",
            repo("    spool_max: 10\n    timeout: 5s\n")
        ),
    );
    env.config(&yaml);
    // Plain http to a loopback repository is allowed (a local relay).
    env.config(&base.replace(
        "admin:\n",
        &format!("audit:\n  path: audit/audit.jsonl\n{ev}  repository:\n    url: http://127.0.0.1:8080/fhir\n    spool: s\nadmin:\n"),
    ));
}

/// The spool is durable and bounded: a gateway whose repository is down spools up to
/// `spool_max` events (and says so in its log when it must drop the rest), is killed
/// with SIGKILL, and the next run delivers what the first one spooled — in order, once —
/// before its own events.
// Multi-threaded: the child's log is read with blocking calls while the repository task
// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_survive_a_crash_and_a_full_spool_is_logged() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    let (up, _state) = upstream().await;
    let reserved = ReservedPort::bind();
    let sinks = format!(
        "  repository:\n    url: https://127.0.0.1:{}/fhir\n    ca: certs/ca.pem\n    spool: audit/spool\n    spool_max: 6\n",
        reserved.addr.port()
    );
    let cfg = env.write("ward.yaml", &config(&env, &key, up, &sinks));
    let c = client(&env.pki, false);
    let ask = |port: u16, i: usize| {
        let (c, key) = (&c, &key);
        async move {
            let r = send(
                c,
                Request::get(format!("https://localhost:{port}/fhir/Observation/o{i}"))
                    .header("authorization", format!("Bearer {}", token(key, None)))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200);
            r.headers["x-request-id"].to_str().unwrap().to_owned()
        }
    };

    let first = spawn_ward(&cfg);
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(ask(first.port, i).await);
    }
    // Two too many: dropped from the repository stream, loudly; the file has all eight.
    let dropped_logged = loop {
        let Ok(line) = first.lines.recv_timeout(PATIENCE) else {
            break false;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("AuditEvents dropped"))
        {
            break true;
        }
    };
    assert!(dropped_logged, "a full spool is logged");
    assert_eq!(file_records(&env.path("audit/audit.jsonl")).len(), 8);
    drop(first); // SIGKILL

    let mut repo = repository(&env.pki, reserved.listen(), vec![503]);
    let second = spawn_ward(&cfg);
    let event_id = |ev: &Value| {
        valid_r4(ev);
        ev["entity"][0]["what"]["identifier"]["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The first run's six come first (the spool is full until they are delivered)...
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(event_id(&next(&mut repo.accepted, "repository").await));
    }
    // ...then the second run's own; a duplicate of any of the six would come before it.
    let new_id = ask(second.port, 8).await;
    got.push(event_id(&next(&mut repo.accepted, "repository").await));
    let mut want: Vec<String> = ids[..6].to_vec();
    want.push(new_id);
    assert_eq!(
        got, want,
        "the first run's six, then the new one, each once"
    );
    let left = std::fs::read_dir(env.path("audit/spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    // The last file is removed after its 201 is read: at most that one is left.
    assert!(left <= 1, "{left} left in the spool");
}

/// Which answers hold the queue and which set one event aside: 401 and 429 are retried
/// (the next event waits); 422 means the repository will never take that event, which
/// goes to `spool/rejected/` so the rest still flow, in order.
#[tokio::test]
async fn a_refused_event_is_set_aside_and_access_errors_hold_the_queue() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    let (up, _state) = upstream().await;
    let reserved = ReservedPort::bind();
    let sinks = format!(
        "  repository:\n    url: https://127.0.0.1:{}/fhir\n    ca: certs/ca.pem\n    spool: audit/spool\n",
        reserved.addr.port()
    );
    let gw = env.start(&config(&env, &key, up, &sinks)).await;
    let c = client(&env.pki, false);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = send(
            &c,
            Request::get(url(&gw, &format!("/fhir/Observation/o{i}")))
                .header("authorization", format!("Bearer {}", token(&key, None)))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        ids.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
    }
    // A: 401 then 201. B: 422 (set aside). C: 429 then 201.
    let mut repo = repository(&env.pki, reserved.listen(), vec![401, 201, 422, 429, 201]);
    let id_of = |ev: &Value| ev["entity"][0]["what"]["identifier"]["value"].clone();
    assert_eq!(id_of(&next(&mut repo.accepted, "A").await), ids[0]);
    assert_eq!(id_of(&next(&mut repo.accepted, "C").await), ids[2]);
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 5);
    let rejected: Vec<_> = std::fs::read_dir(env.path("audit/spool/rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let b: Value = serde_json::from_slice(&std::fs::read(&rejected[0]).unwrap()).unwrap();
    assert_eq!(id_of(&b), ids[1]);
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("ward_audit_repository_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
}
