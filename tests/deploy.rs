//! deploy/ and the monitoring it promises: every metric the Grafana dashboard and the
//! alert rules query is exported by a running gateway; a real Prometheus (Debian's
//! `prometheus`, installed by .ci/test) scrapes the admin endpoint and answers a query for
//! a ward metric; and every deploy file parses and names only files that exist.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// `ward_*` metric names in a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("ward_") {
        let start = i + p;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

fn queried_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/ward-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            metric_names(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    let alerts = yaml(&root().join("deploy/prometheus/alerts.yml"));
    for g in alerts["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            metric_names(r["expr"].as_str().unwrap(), &mut names);
        }
    }
    names
}

/// A gateway using every policy and listener kind, with one request of each outcome, so
/// that every family has at least one series.
async fn busy_gateway(env: &Env) -> ward::Gateway {
    let key = rcgen::KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write(
        "policies/guard.yaml",
        "fhir_authz:\n  break_glass:\n    scope: emergency-access\n",
    );
    // Detect and respond: a signal (alert only), a webhook to nowhere (its delivery
    // failures are a series too), operators.
    env.write(
        "secrets/operators.txt",
        "ops 0000000000000000000000000000000000000000000000000000000000000000\n",
    );
    env.write(
        "secrets/webhook.key",
        "0123456789abcdef0123456789abcdef-key",
    );
    env.write("policies/audited.yaml", "audit: {}\n");
    env.write(
        "policies/strict.yaml",
        "validate:\n  fhir: {}\ndlp:\n  detectors:\n    ssn: {}\n",
    );
    env.write(
        "policies/tight.yaml",
        "rate_limit:\n  limits:\n    - name: one\n      key: route\n      rate: 1\n      per: hour\n",
    );
    // A Redis-backed limit (never reached: its route gets no request) still exports its
    // backend-error series.
    env.write(
        "policies/shared.yaml",
        "rate_limit:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:1/0\n  limits:\n    - name: shared\n      key: route\n      rate: 5\n      per: minute\n",
    );
    let (up, _state) = upstream().await;
    let dead = dead_addr().await;
    let cfg = basic_config(up, "", "    max_concurrent_requests: 8\n")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [audited, strict]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    policies: [tight]\n",
        )
        .replace(
            "    path_prefix: /gate\n    upstream: ehr\n",
            "    path_prefix: /gate\n    upstream: ehr\n    policies: [shared]\n",
        )
        .replace(
            "admin:\n",
            &format!(
                "  - name: smart\n    listener: public\n    path_prefix: /smart/fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, guard]\n  - name: broken\n    listener: public\n    path_prefix: /broken\n    upstream: gone\nmllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    plaintext: true\n    upstream:\n      address: {dead}\naudit:\n  path: audit/audit.jsonl\nrespond:\n  blocks_file: state/blocks.json\n  operators:\n    tokens_file: secrets/operators.txt\n  signals:\n    probing:\n      denials: 1\n      window_secs: 60\n  webhook:\n    url: http://{dead}/hook\n    secret_file: secrets/webhook.key\n    retries: 1\nadmin:\n"
            ),
        )
        .replace(
            "routes:\n",
            &format!("  - name: gone\n    url: http://{dead}\nroutes:\n"),
        );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    let u = |p: &str| url(&gw, p);
    assert_eq!(send(&c, get(&u("/fhir/Patient/1"))).await.status, 200);
    // The sample upstream echoes the path: DLP finds (and redacts) the SSN-shaped id.
    let r = send(&c, get(&u("/fhir/Patient/123-45-6789"))).await;
    assert_eq!(r.status, 200);
    assert!(!String::from_utf8_lossy(&r.body).contains("123-45-6789"));
    let bad = Request::post(u("/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from_static(
            br#"{"resourceType":"Patient","gender":"robot"}"#,
        )))
        .unwrap();
    assert_eq!(send(&c, bad).await.status, 400);
    assert_eq!(send(&c, get(&u("/api/x"))).await.status, 200);
    assert_eq!(send(&c, get(&u("/api/x"))).await.status, 429);
    assert_eq!(send(&c, get(&u("/smart/fhir/Patient/1"))).await.status, 401);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "ehr", "sub": "app", "exp": now + 600, "scope": "system/*.read"});
    let k = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let tok = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &k,
    )
    .unwrap();
    let authed = Request::get(u("/smart/fhir/Patient/1"))
        .header("authorization", format!("Bearer {tok}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, authed).await.status, 200);
    assert_eq!(send(&c, get(&u("/broken/x"))).await.status, 502);
    assert_eq!(send(&c, get(&u("/nowhere"))).await.status, 404);
    // A failed TLS handshake and an MLLP message (to a dead upstream: AE) plus a framing
    // error.
    let mut s = tokio::net::TcpStream::connect(gw.addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(s);
    let mut s = tokio::net::TcpStream::connect(gw.addr("hl7").unwrap())
        .await
        .unwrap();
    let msg = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240315083012||ADT^A01|M-1|P|2.5.1\rEVN|A01|20240315083000\rPID|1||1^^^H^MR||Doe^Jo||19700101|F\rPV1|1|I\r";
    s.write_all(&[&b"\x0b\x0b"[..], msg, b"\x1c\x0d"].concat())
        .await
        .unwrap();
    let mut r = ward::hl7v2::mllp::FrameReader::new(s, 1 << 20);
    let ack = r
        .next(Duration::from_secs(30), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ward::hl7v2::parse_ack(&ack).unwrap().0.as_str(), "AE");
    gw
}

fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let env = Env::new();
    let gw = busy_gateway(&env).await;
    let queried = queried_metrics();
    assert!(queried.len() >= 20, "{queried:?}");
    // Some series appear a moment after the request (TLS failure accounting, sweeps).
    let mut missing = Vec::new();
    for _ in 0..200 {
        let (_, text) = admin_get(&gw, "/metrics").await;
        let have = exported(&text);
        missing = queried
            .iter()
            .filter(|m| !have.contains(*m))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_endpoint() {
    let bin = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .expect("prometheus not found: apt-get install prometheus (.ci/test does this)");
    let env = Env::new();
    let (up, _) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let admin = gw.admin_addr();
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let cfg = env.write(
        "prometheus.yml",
        &format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ward\n    static_configs:\n      - targets: [\"{admin}\"]\n"),
    );
    let mut child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            env.path("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut answer = Value::Null;
    for _ in 0..600 {
        let q = format!("http://{web}/api/v1/query?query=ward_config_loaded");
        if let Ok(resp) = http.get(q.parse().unwrap()).await {
            use http_body_util::BodyExt;
            if let Ok(body) = resp.into_body().collect().await {
                if let Ok(v) = serde_json::from_slice::<Value>(&body.to_bytes()) {
                    if v["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                    {
                        answer = v;
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        answer["status"], "success",
        "Prometheus never returned ward_config_loaded"
    );
    assert_eq!(answer["data"]["result"][0]["value"][1], "1");
    assert_eq!(answer["data"]["result"][0]["metric"]["job"], "ward");
}

#[test]
fn deploy_files_parse_and_name_only_existing_files() {
    let d = root().join("deploy");
    // docker-compose: build contexts, Dockerfiles and mounted repository files exist.
    let compose = yaml(&d.join("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    for name in ["ward", "sample-ehr", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "compose service {name}");
    }
    for (name, svc) in services {
        if let Some(b) = svc.get("build") {
            let ctx = d.join(b["context"].as_str().unwrap());
            assert!(
                ctx.join(b["dockerfile"].as_str().unwrap()).is_file(),
                "{name}: dockerfile"
            );
        }
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            // ./ward.yaml and ./certs are the operator's; named volumes are compose's;
            // every other path is ours.
            let named = compose["volumes"].get(src).is_some();
            if !named && !["./ward.yaml", "./certs"].contains(&src) {
                assert!(d.join(src).exists(), "{name}: volume {src} does not exist");
            }
        }
    }
    // Prometheus: rule files exist and parse; the dashboard is importable JSON.
    let prom = yaml(&d.join("prometheus/prometheus.yml"));
    for f in prom["rule_files"].as_array().unwrap() {
        yaml(&d.join("prometheus").join(f.as_str().unwrap()));
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("grafana/ward-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash["uid"], "ward-gateway");
    for f in [
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/ward.yml",
    ] {
        yaml(&d.join(f));
    }
    // The dashboard is what the generator makes.
    let generated = Command::new("python3")
        .arg(root().join("tools/gen_dashboard.py"))
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&generated.stdout).unwrap(),
        dash,
        "deploy/grafana/ward-dashboard.json is stale: run tools/gen_dashboard.py"
    );
    // Kubernetes: every manifest parses; the kinds the guide promises are there.
    let mut kinds = BTreeSet::new();
    for e in std::fs::read_dir(d.join("k8s")).unwrap() {
        let m = yaml(&e.unwrap().path());
        kinds.insert(m["kind"].as_str().unwrap().to_owned());
        if m["kind"] == "StatefulSet" && m["metadata"]["name"] == "ward" {
            let c = &m["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        }
        if m["kind"] == "ConfigMap" {
            // The config it carries is a config ward accepts (files aside).
            let text = m["data"]["ward.yaml"].as_str().unwrap();
            assert!(text.contains("listeners:") && text.contains("audit:"));
        }
    }
    for k in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "k8s manifests lack a {k}");
    }
    // systemd: the hardening the guide promises.
    let unit = std::fs::read_to_string(d.join("systemd/ward.service")).unwrap();
    for k in [
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecStartPre=/usr/local/bin/ward check",
    ] {
        assert!(unit.contains(k), "ward.service lacks {k}");
    }
}

#[test]
fn every_metric_family_is_documented_in_the_readme() {
    let src = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut names = BTreeSet::new();
    for part in src.split('"').skip(1).step_by(2) {
        if part.starts_with("ward_") && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            names.insert(part.to_owned());
        }
    }
    assert!(names.len() >= 30, "{names:?}");
    let undocumented: Vec<_> = names
        .iter()
        .filter(|n| !readme.contains(n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from README: {undocumented:?}"
    );
}
