//! `ward demo` end to end, exactly as printed: the demo's generated config and policies
//! (its fixed ports replaced by 127.0.0.1:0), started in-process in front of the sample
//! upstream, and the tutorial script (`docs/tutorial.sh`, whose sections `ward demo`
//! prints and README.md shows) run against it with bash, curl and the real `ward` binary:
//! - the exfiltration loop is blocked after the third distinct patient, on every route and
//!   for every patient, while other identities are still served; the EHR never sees the
//!   blocked reads;
//! - `ward blocks` / `ward unblock` with the generated operator token lift the block;
//! - the break-glass read with its reason is served and audited with the reason; reads
//!   without a usable reason are refused;
//! - `ward audit verify` accepts the trail (exit 0) and rejects every single-record edit;
//! - README.md shows every section of the script verbatim.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use common::{client, get, send, TestClient};
use http::Request;
use http_body_util::Full;
use serde_json::Value;

const REASON: &str = "Unresponsive patient in ED, allergy history needed";
const CLINICIAN: &str = "https://ward.demo/issuer|demo-clinician";

struct Demo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    gw: ward::Gateway,
    log: ward::demo::SampleLog,
    pki: ward::demo::Pki,
}

/// What `ward demo` does before it starts the gateway, in a temporary directory, with
/// every listener on 127.0.0.1:0.
async fn start_demo() -> Demo {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    assert!(ward::demo::ensure_certs(&dir).unwrap());
    ward::demo::write_demo_policies(&dir.join("policies")).unwrap();
    assert!(ward::demo::ensure_demo_state(&dir).unwrap());
    // A second call keeps the operator token: a restarted demo keeps working with it.
    let token = std::fs::read_to_string(dir.join(ward::demo::OPERATOR_TOKEN)).unwrap();
    assert!(!ward::demo::ensure_demo_state(&dir).unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join(ward::demo::OPERATOR_TOKEN)).unwrap(),
        token
    );
    let ops = std::fs::read_to_string(dir.join(ward::demo::OPERATORS_FILE)).unwrap();
    assert!(
        !ops.contains(token.trim()),
        "the operators file holds the token itself"
    );
    let lo: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (up, log) = ward::demo::sample_upstream_logged(lo).await.unwrap();
    let mllp = ward::demo::sample_mllp_upstream(lo).await.unwrap();
    let text = ward::demo::demo_config_on(
        &dir,
        up,
        mllp,
        ward::demo::DemoBinds {
            public: lo,
            mllp: lo,
            admin: lo,
        },
    );
    // The fixed-port config is the same text but for the three binds.
    let fixed = ward::demo::demo_config(&dir, up, mllp);
    assert_eq!(
        fixed
            .replace("127.0.0.1:8443", "127.0.0.1:0")
            .replace("127.0.0.1:2575", "127.0.0.1:0")
            .replace("127.0.0.1:9901", "127.0.0.1:0"),
        text
    );
    let p = dir.join("ward-demo.yaml");
    std::fs::write(&p, &text).unwrap();
    let cfg = ward::config::load_with(&p, &|_| None).unwrap_or_else(|e| panic!("{e:#?}"));
    let gw = ward::Gateway::start(cfg).await.expect("demo starts");
    let pki = ward::demo::Pki {
        ca_cert: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        ca_key: String::new(),
        server_cert: String::new(),
        server_key: String::new(),
        client_cert: String::new(),
        client_key: String::new(),
    };
    Demo {
        _tmp: tmp,
        dir,
        gw,
        log,
        pki,
    }
}

impl Demo {
    fn gw_url(&self) -> String {
        format!(
            "https://localhost:{}",
            self.gw.addr("public").unwrap().port()
        )
    }

    /// Run `script` with bash, the demo's paths and ports in the environment the tutorial
    /// reads, and the real `ward` binary. Bounded: a hang fails the test.
    async fn bash(&self, script: &str, cwd: &Path) -> Output {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(cwd)
            .env("D", &self.dir)
            .env("GW", self.gw_url())
            .env("ADMIN", self.gw.admin_addr().to_string())
            .env("WARD", env!("CARGO_BIN_EXE_ward"))
            // The `init` section's own gateway and sample EHR bind port 0 and write their
            // addresses to files the script reads; its files go to the demo's temp folder.
            .env("MY", self.dir.join("my-gateway"))
            .env("MYBIND", "127.0.0.1:0")
            .env("MYADMIN", "127.0.0.1:0")
            .env("EHRBIND", "127.0.0.1:0")
            // Prometheus cannot report a port it chose: the `deploy` section gets a free
            // one, found by binding port 0 and releasing it.
            .env("PROM", format!("127.0.0.1:{}", common::free_port().await))
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("the script finished")
            .expect("bash runs")
    }

    /// The tutorial's setup and token sections, then the named ones, under `set -euo
    /// pipefail` like the whole script.
    async fn sections(&self, names: &[&str]) -> String {
        let mut script = String::from("set -euo pipefail\n");
        for n in ["setup", "tokens"].iter().chain(names) {
            script += &section(n);
            script += "\n";
        }
        let out = self.bash(&script, &self.dir).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sections {names:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// How often the sample EHR was asked for `path`.
    fn upstream_saw(&self, path: &str) -> usize {
        let want = format!("GET {path}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == want)
            .count()
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.join(ward::demo::AUDIT_FILE)
    }

    fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect()
    }

    fn mint(&self, sub: &str, scope: &str, patient: Option<&str>) -> String {
        let key = std::fs::read(self.dir.join(ward::demo::TOKEN_KEY)).unwrap();
        ward::demo::mint_token(
            &key,
            None,
            &ward::demo::TokenSpec {
                iss: ward::demo::DEMO_ISSUER,
                aud: ward::demo::DEMO_AUDIENCE,
                sub,
                scope,
                patient,
                ttl: Duration::from_secs(600),
                kid: None,
                cnf_x5t: None,
            },
        )
        .unwrap()
    }

    async fn call(
        &self,
        c: &TestClient,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> common::Reply {
        let mut b = Request::get(format!("{}{path}", self.gw_url()))
            .header("authorization", format!("Bearer {token}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        send(c, b.body(Full::new(Bytes::new())).unwrap()).await
    }
}

/// One `# --- name` section of the tutorial; panics if it is missing or empty.
fn section(name: &str) -> String {
    match ward::demo::tutorial_section(name) {
        Some(s) if !s.is_empty() => s,
        _ => panic!("docs/tutorial.sh has no section {name}"),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn verify(files: &[&Path]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("audit")
        .arg("verify")
        .args(files)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tutorial_script_runs_against_the_demo_as_printed() {
    let demo = start_demo().await;
    // `ward check` accepts the generated config as written.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["check", "--config"])
        .arg(demo.dir.join("ward-demo.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The script file itself, as a reader runs it: from the repository root.
    let out = demo
        .bash(
            &format!("bash {}", repo().join("docs/tutorial.sh").display()),
            repo(),
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tutorial failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<&str> = stdout.lines().collect();
    // init: a generated config in front of the sample EHR refuses no token (401), serves
    // a clinician (200), confines a patient app (404) and de-identifies research (0 SSNs);
    // `ward doctor` finds nothing above info in it.
    let start = all
        .iter()
        .position(|l| l.trim() == "200 200 200 403 403")
        .unwrap_or_else(|| panic!("exfiltration output missing: {stdout}"));
    let init_out = all[..start].join("\n");
    assert!(init_out.contains("ward check: ok"), "{init_out}");
    assert!(init_out.contains("worst: info; exit code 0"), "{init_out}");
    let codes: Vec<&str> = all[..start]
        .iter()
        .map(|l| l.trim())
        .filter(|l| matches!(*l, "401" | "200" | "404" | "0" | "1"))
        .collect();
    assert_eq!(codes, ["401", "200", "404", "0"], "{init_out}");
    let lines = &all[start..];
    // exfiltration: three reads served, then blocked.
    assert_eq!(lines[0].trim(), "200 200 200 403 403", "{stdout}");
    let blocked: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        blocked["issue"][0]["details"]["coding"][0]["code"], "blocked",
        "{stdout}"
    );
    // operators: the block as listed, then lifted, then served again.
    assert!(
        lines[2].contains(CLINICIAN) && lines[2].contains("exfiltration"),
        "{stdout}"
    );
    let rest = lines[3..].join("\n");
    let served_again = lines
        .iter()
        .position(|l| l.trim() == "200")
        .unwrap_or_else(|| panic!("not served after the unblock: {stdout}"));
    // break-glass: refused without a reason, served with one, audited with it.
    assert!(
        lines[served_again + 1].trim() == "404",
        "outside the compartment without a reason: {stdout}"
    );
    let record: Value = serde_json::from_str(lines[served_again + 2]).unwrap();
    assert_eq!(record["resourceType"], "Patient", "{stdout}");
    assert_eq!(record["id"], "example-2", "{stdout}");
    let audited: Value = serde_json::from_str(lines[served_again + 3]).unwrap();
    assert_eq!(audited["break_glass"], true, "{stdout}");
    assert_eq!(audited["break_glass_reason"], REASON, "{stdout}");
    assert_eq!(audited["resource_id"], "example-2", "{stdout}");
    assert_eq!(audited["sub"], "demo-er-doctor", "{stdout}");
    assert_eq!(audited["status"], 200, "{stdout}");
    assert_eq!(
        lines[served_again + 4].trim(),
        "ward_break_glass_total{route=\"fhir-patient\"} 1",
        "{stdout}"
    );
    // audit: the chain verifies.
    assert!(
        lines[served_again + 5].starts_with("ok: ") && rest.contains("chain intact"),
        "{stdout}"
    );
    // audit: the break-glass record carries its BALP AuditEvent, purpose of use BTG.
    assert_eq!(
        lines[served_again + 6].trim(),
        "\"code\":\"BTG\"",
        "{stdout}"
    );
    assert_eq!(
        lines[served_again + 7].trim(),
        "IHE.BasicAudit.PatientRead",
        "{stdout}"
    );
    // discovery: the patient route's SMART configuration, without a token.
    assert_eq!(
        lines[served_again + 8].trim(),
        "\"token_endpoint\":\"https://ward.demo/issuer/token\"",
        "{stdout}"
    );
    // deploy: a real Prometheus scraped the admin listener with the shipped rules, and
    // doctor's live checks ran against the running demo.
    assert_eq!(
        lines[served_again + 9].trim(),
        "\"status\":\"success\"",
        "{stdout}"
    );
    assert_eq!(
        lines[served_again + 10].trim(),
        "ward doctor: exit 3",
        "{stdout}"
    );
    assert_eq!(
        lines[served_again + 11].trim(),
        "\"worst\":\"critical\"",
        "{stdout}"
    );

    // What the EHR saw: the three reads before the block, the one after the unblock and
    // the break-glass read; never example-4 or -5, never the blocked re-read.
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-1"), 2);
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-2"), 2);
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-3"), 1);
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-4"), 0);
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-5"), 0);

    // The trail, read independently: the blocked requests and the break-glass read.
    let recs = demo.audit_records();
    let blocked: Vec<&Value> = recs.iter().filter(|r| r["code"] == "blocked").collect();
    assert_eq!(blocked.len(), 3, "{recs:#?}");
    for r in &blocked {
        assert_eq!(r["status"], 403, "{r}");
        assert_eq!(r["sub"], "demo-clinician", "{r}");
        assert!(r.get("upstream_status").is_none(), "forwarded: {r}");
    }
    let glass: Vec<&Value> = recs.iter().filter(|r| r["break_glass"] == true).collect();
    assert_eq!(glass.len(), 1, "{recs:#?}");
    assert_eq!(glass[0]["break_glass_reason"], REASON);
    assert_eq!(glass[0]["upstream_status"], 200, "{}", glass[0]);

    // `ward audit verify` exits 0 on the trail, and 1 (modified) on every copy of it with
    // one record's kind changed (every record, signals included, has one).
    let out = verify(&[&demo.audit_path()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = std::fs::read_to_string(demo.audit_path()).unwrap();
    let n = text.lines().count();
    assert!(n >= 10, "{n} records");
    for i in 0..n {
        let edited: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(j, l)| {
                if i == j {
                    let e = l.replacen("\"kind\":\"", "\"kind\":\"x", 1);
                    assert_ne!(e, l, "record {i} has no kind");
                    e
                } else {
                    l.to_owned()
                }
            })
            .collect();
        let p = demo.dir.join(format!("edited-{i}.jsonl"));
        std::fs::write(&p, edited.join("\n") + "\n").unwrap();
        let out = verify(&[&p]);
        assert_eq!(out.status.code(), Some(1), "record {i} edited: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_flows_block_unblock_and_break_glass_step_by_step() {
    let demo = start_demo().await;
    let c = client(&demo.pki, false);
    let out = demo.sections(&["exfiltration"]).await;
    assert!(out.starts_with("200 200 200 403 403"), "{out}");

    // The clinician is blocked on every route that knows it, for every patient (read
    // before or not), and for searches; the EHR sees none of it.
    let clinician = demo.mint("demo-clinician", "patient/*.read", None);
    let before = demo.log.lock().unwrap().len();
    for route in ["/secure/fhir", "/patient/fhir"] {
        for p in 1..=5 {
            let r = demo
                .call(&c, &format!("{route}/Patient/example-{p}"), &clinician, &[])
                .await;
            assert_eq!((r.status, r.code()), (403, "blocked".into()), "{route} {p}");
        }
        let r = demo
            .call(&c, &format!("{route}/Observation"), &clinician, &[])
            .await;
        assert_eq!((r.status, r.code()), (403, "blocked".into()), "{route}");
    }
    assert_eq!(demo.log.lock().unwrap().len(), before, "the EHR was asked");
    // Another clinician is served.
    let other = demo.mint("demo-other", "patient/*.read", None);
    let r = demo
        .call(&c, "/secure/fhir/Patient/example-4", &other, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["id"], "example-4");
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-4"), 1);

    // The operator API without the operator token: refused (the CLI exits non-zero).
    let wrong = demo.dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-operator-token\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["blocks", "--admin"])
        .arg(demo.gw.admin_addr().to_string())
        .arg("--token-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );

    // The printed operator commands: listed, lifted, served again.
    let out = demo.sections(&["operators"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let listed: Value = serde_json::from_str(lines[0]).unwrap();
    assert!(listed.to_string().contains(CLINICIAN), "{out}");
    assert_eq!(lines.last().map(|l| l.trim()), Some("200"), "{out}");
    let (status, body) = common::admin_get(&demo.gw, "/blocks").await;
    assert_eq!(
        status, 401,
        "the admin API answered without a token: {body}"
    );
    let r = demo
        .call(&c, "/secure/fhir/Patient/example-3", &clinician, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Break-glass: every unusable reason is refused before the EHR, then the printed
    // read with its reason is served.
    let er = demo.mint(
        "demo-er-doctor",
        "launch/patient patient/*.read emergency-access",
        Some("example-1"),
    );
    let plain = demo.mint(
        "demo-patient-app",
        "launch/patient patient/*.read",
        Some("example-1"),
    );
    let seen = demo.upstream_saw("/fhir/Patient/example-2");
    for reason in ["", " ", "\t", "   \t "] {
        let r = demo
            .call(
                &c,
                "/patient/fhir/Patient/example-2",
                &er,
                &[("break-glass-reason", reason)],
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "break_glass_reason_invalid".into()),
            "{reason:?}"
        );
    }
    let r = demo
        .call(
            &c,
            "/patient/fhir/Patient/example-2",
            &plain,
            &[("break-glass-reason", REASON)],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "break_glass_not_permitted".into())
    );
    let r = send(
        &c,
        get(&format!("{}/patient/fhir/Patient/example-2", demo.gw_url())),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-2"), seen);

    let out = demo.sections(&["break-glass", "audit"]).await;
    assert!(out.contains("\"id\":\"example-2\""), "{out}");
    assert!(out.contains(REASON), "{out}");
    assert_eq!(demo.upstream_saw("/fhir/Patient/example-2"), seen + 1);
    let glass: Vec<Value> = demo
        .audit_records()
        .into_iter()
        .filter(|r| r["break_glass"] == true)
        .collect();
    assert_eq!(glass.len(), 1, "{glass:#?}");
    assert_eq!(glass[0]["break_glass_reason"], REASON);
    assert_eq!(glass[0]["route"], "fhir-patient");
    // Refusals are audited too, without a break-glass mark.
    assert!(demo
        .audit_records()
        .iter()
        .any(|r| r["code"] == "break_glass_reason_invalid" && r["break_glass"].is_null()));
    assert_eq!(verify(&[&demo.audit_path()]).status.code(), Some(0));
}

/// The patient route serves SMART discovery: the configuration document and the
/// CapabilityStatement's security section name the demo issuer, both readable without a
/// token; nothing else on the route is.
#[tokio::test]
async fn the_patient_route_serves_smart_discovery() {
    let demo = start_demo().await;
    let c = client(&demo.pki, false);
    let issuer = ward::demo::DEMO_ISSUER;
    let at = |p: &str| format!("{}/patient/fhir{p}", demo.gw_url());
    let r = send(&c, get(&at("/.well-known/smart-configuration"))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["issuer"], issuer);
    assert_eq!(v["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(v["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(v["code_challenge_methods_supported"][0], "S256");
    let seen = demo.upstream_saw("/fhir/metadata");
    let r = send(&c, get(&at("/metadata"))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(demo.upstream_saw("/fhir/metadata"), seen + 1);
    let sec = &r.json()["rest"][0]["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        sec["extension"][0]["extension"][1],
        serde_json::json!({"url": "token", "valueUri": format!("{issuer}/token")})
    );
    for p in [
        "/Patient/example-1",
        "/metadata/",
        "/.well-known/smart-configuration/",
    ] {
        assert_eq!(send(&c, get(&at(p))).await.status, 401, "{p}");
    }
}

#[test]
fn readme_shows_every_tutorial_section_verbatim() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let names: Vec<&str> = ward::demo::TUTORIAL
        .lines()
        .filter_map(|l| l.strip_prefix("# --- "))
        .collect();
    for must in [
        "setup",
        "init",
        "tokens",
        "exfiltration",
        "operators",
        "break-glass",
        "audit",
        "discovery",
        "deploy",
    ] {
        assert!(names.contains(&must), "no section {must} in {names:?}");
    }
    for n in names {
        let s = section(n);
        assert!(
            readme.contains(&s),
            "README.md lacks section {n} verbatim:\n{s}"
        );
    }
    // The script is valid bash.
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(repo().join("docs/tutorial.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
