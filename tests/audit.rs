//! The audit trail end to end: every request on an audited route leaves one chained record
//! (allowed or refused, with who and what, never query strings or tokens); `ward audit
//! verify` accepts the file and names edits, deletions and reorderings by exit code; and
//! a gateway killed with SIGKILL under load has a record for every request it answered.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn audited_config(up: std::net::SocketAddr, audit_path: &str) -> String {
    basic_config(up, "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [audited, strict]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    policies: [audited]\n",
        )
        .replace(
            "admin:\n",
            &format!("audit:\n  path: {audit_path}\n  durability: fsync\nadmin:\n"),
        )
}

fn write_policies(env: &Env) {
    env.write("policies/audited.yaml", "audit: {}\n");
    env.write("policies/strict.yaml", "validate:\n  fhir: {}\n");
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(files: &[&std::path::Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn every_request_on_an_audited_route_is_recorded_and_the_chain_verifies() {
    let env = Env::new();
    write_policies(&env);
    let (up, _state) = upstream().await;
    let gw = env.start(&audited_config(up, "audit/audit.jsonl")).await;
    let c = client(&env.pki, false);
    let ok = send(&c, get(&url(&gw, "/fhir/Patient/p1?name=SECRET-NAME"))).await;
    assert_eq!(ok.status, 200);
    let rid = ok.headers["x-request-id"].to_str().unwrap().to_owned();
    // Refused by a policy below the audit layer: recorded with its code.
    let bad = send(
        &c,
        http::Request::post(url(&gw, "/fhir/Patient"))
            .header("content-type", "application/fhir+xml")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"<Patient/>",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, 415);
    assert_eq!(send(&c, get(&url(&gw, "/api/x"))).await.status, 200);
    // Not audited: no audit policy on this route.
    assert_eq!(send(&c, get(&url(&gw, "/stall-not/x"))).await.status, 404);

    let path = env.path("audit/audit.jsonl");
    let recs = records(&path);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    let r0 = &recs[0];
    assert_eq!(r0["seq"], 1);
    assert_eq!(r0["request_id"], rid.as_str());
    assert_eq!(r0["route"], "fhir");
    assert_eq!(r0["fhir_interaction"], "read");
    assert_eq!(r0["resource_type"], "Patient");
    assert_eq!(r0["resource_id"], "p1");
    assert_eq!(r0["decision"], "allow");
    assert_eq!(r0["upstream_status"], 200);
    assert_eq!(recs[1]["decision"], "refuse");
    assert_eq!(recs[1]["code"], "xml_not_supported");
    assert_eq!(recs[1]["status"], 415);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("SECRET-NAME"),
        "query strings never reach the audit trail"
    );
    let (code, out) = verify(&[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 records"), "{out}");

    // Tampering, by kind.
    let lines: Vec<&str> = text.lines().collect();
    let tampered = env.path("audit/tampered.jsonl");
    let write = |ls: Vec<&str>| std::fs::write(&tampered, ls.join("\n") + "\n").unwrap();
    write(vec![
        lines[0],
        &lines[1].replace("\"refuse\"", "\"allow\""),
        lines[2],
    ]);
    assert_eq!(verify(&[&tampered]).0, 1, "edited");
    write(vec![lines[0], lines[2], lines[1]]);
    assert_eq!(verify(&[&tampered]).0, 2, "reordered");
    write(vec![lines[0], lines[2]]);
    assert_eq!(verify(&[&tampered]).0, 3, "deleted");
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("ward_audit_records_total{result=\"written\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigkill_under_load_loses_no_record_of_an_answered_request() {
    let env = Env::new();
    write_policies(&env);
    let (up, _state) = upstream().await;
    let cfg = env.write("ward.yaml", &audited_config(up, "audit/audit.jsonl"));
    let WardProcess {
        mut child, port, ..
    } = spawn_ward(&cfg);
    // Load from several concurrent clients; the kill lands while requests are in flight.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = client(&env.pki, t % 2 == 0);
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                let u = format!("https://localhost:{port}/api/load/{t}/{i}");
                let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(10), c.request(get(&u))).await
                else {
                    return;
                };
                if resp.status() == 200 {
                    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                    answered.lock().unwrap().push(rid);
                }
            }
        }));
    }
    // Kill once a good number of requests have been answered (bounded wait).
    for _ in 0..2000 {
        if answered.lock().unwrap().len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = Command::new("sh")
        .args(["-c", &format!("kill -KILL {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 200, "only {} answered", answered.len());
    let path = env.path("audit/audit.jsonl");
    let (code, out) = verify(&[&path]);
    assert_eq!(code, 0, "chain intact after SIGKILL: {out}");
    let recorded: std::collections::HashSet<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|r| !recorded.contains(*r)).collect();
    assert!(
        lost.is_empty(),
        "{} answered requests have no record: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test]
async fn mllp_messages_are_audited_too() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new();
    write_policies(&env);
    let (up, _state) = upstream().await;
    let dead = dead_addr().await;
    let cfg = audited_config(up, "audit/audit.jsonl").replace(
        "audit:\n",
        &format!("mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    plaintext: true\n    audit: true\n    upstream:\n      address: {dead}\naudit:\n"),
    );
    let gw = env.start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("hl7").unwrap())
        .await
        .unwrap();
    let msg = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240315083012||ADT^A01|AUD-1|P|2.5.1\rEVN|A01|20240315083000\rPID|1||123^^^H^MR||Doe^Jo||19700101|F\rPV1|1|I\r";
    s.write_all(&[&[0x0b][..], msg, &[0x1c, 0x0d]].concat())
        .await
        .unwrap();
    let mut r = ward::hl7v2::mllp::FrameReader::new(s, 1 << 20);
    let ack = r
        .next(Duration::from_secs(30), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ward::hl7v2::parse_ack(&ack).unwrap().0.as_str(), "AE");
    let recs = records(&env.path("audit/audit.jsonl"));
    let rec = recs
        .iter()
        .find(|r| r["kind"] == "mllp")
        .expect("an MLLP record");
    assert_eq!(rec["control_id"], "AUD-1");
    assert_eq!(rec["message_type"], "ADT");
    assert_eq!(rec["decision"], "upstream_failed");
    assert_eq!(rec["ack"], "AE");
    assert!(
        !std::fs::read_to_string(env.path("audit/audit.jsonl"))
            .unwrap()
            .contains("Doe"),
        "no PHI"
    );
}

/// A syslog-over-TLS collector (RFC 5425 octet counting) on `tcp`; returns the messages.
async fn collector(
    pki: &ward::demo::Pki,
    tcp: tokio::net::TcpListener,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (acceptor, g) = (acceptor.clone(), g.clone());
            tokio::spawn(async move {
                let Ok(mut t) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = t.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Octet counting: "LEN SP MSG".
                    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        g.lock().unwrap().push(msg);
                    }
                }
            });
        }
    });
    got
}

#[tokio::test]
async fn records_are_forwarded_to_a_syslog_collector_over_tls_with_retry() {
    let env = Env::new();
    write_policies(&env);
    let (up, _state) = upstream().await;
    // The collector is down when the gateway starts: records wait and are retried.
    // Reserved (bound, not listening) until the collector starts on the same socket.
    let siem = ReservedPort::bind();
    let cfg = audited_config(up, "audit/audit.jsonl").replace(
        "  durability: fsync\n",
        &format!(
            "  durability: fsync\n  syslog:\n    address: 127.0.0.1:{}\n    ca: certs/ca.pem\n",
            siem.addr.port()
        ),
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    for i in 0..3 {
        assert_eq!(
            send(&c, get(&url(&gw, &format!("/api/x{i}")))).await.status,
            200
        );
    }
    let got = collector(&env.pki, siem.listen()).await;
    let mut msgs = Vec::new();
    for _ in 0..600 {
        msgs = got.lock().unwrap().clone();
        if msgs.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    for (i, m) in msgs.iter().enumerate() {
        // RFC 5424: <PRI>VERSION TIMESTAMP HOST APP PROCID MSGID SD MSG
        assert!(m.starts_with("<85>1 "), "{m}");
        let json = m.split_once(" ward - audit - ").unwrap().1;
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["seq"], (i + 1) as u64);
        assert!(v["hash"].as_str().is_some_and(|h| h.len() == 64));
    }
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("ward_audit_forward_total{result=\"sent\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ward_audit_forward_backlog 0"),
        "{metrics}"
    );
}

/// Concurrent requests over TLS with `durability: fsync`: every one is answered only once
/// its own record is in the file, the upstream saw each once, the chain verifies, and each
/// batch the writer made was synced exactly once (group commit: one write, one fdatasync).
/// How many batches form depends on timing, so only their bound is asserted; that records
/// queued together share one batch is held by the audit module's unit test, which holds
/// the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_each_wait_for_their_own_durable_record() {
    const N: usize = 200;
    let env = Env::new();
    write_policies(&env);
    let (up, state) = upstream().await;
    let gw = env.start(&audited_config(up, "audit/audit.jsonl")).await;
    let path = env.path("audit/audit.jsonl");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let c = client(&env.pki, i % 2 == 0);
        let (u, path) = (url(&gw, &format!("/api/c/{i}")), path.clone());
        tasks.spawn(async move {
            let r = send(&c, get(&u)).await;
            assert_eq!(r.status, 200);
            let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
            // The answer came after the record was written and synced.
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(&format!("\"request_id\":\"{rid}\"")),
                "request {i} answered before its record was written"
            );
            rid
        });
    }
    let mut rids = std::collections::HashSet::new();
    while let Some(r) = tasks.join_next().await {
        assert!(rids.insert(r.unwrap()));
    }
    assert_eq!(rids.len(), N);
    let seen: Vec<String> = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path_and_query.clone())
        .collect();
    for i in 0..N {
        let p = format!("/c/{i}");
        assert_eq!(
            seen.iter().filter(|s| s.ends_with(&p)).count(),
            1,
            "{p}: {seen:?}"
        );
    }
    let recs = records(&path);
    assert_eq!(recs.len(), N);
    let recorded: std::collections::HashSet<String> = recs
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded, rids);
    assert!(recs
        .iter()
        .all(|r| r["decision"] == "allow" && r["status"] == 200));
    let (code, out) = verify(&[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{N} records")), "{out}");
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert_eq!(
        value("ward_audit_records_total{result=\"written\"}"),
        N as u64
    );
    let (batches, syncs) = (
        value("ward_audit_batches_total"),
        value("ward_audit_syncs_total"),
    );
    assert!((1..=N as u64).contains(&batches), "{batches} batches");
    assert_eq!(syncs, batches, "one fdatasync per batch");
}
