//! `ward doctor` end to end: the real binary, configs with one seeded misconfiguration each
//! (certificates made at test time, some expired or about to expire), JSON output checked
//! for the finding's id, severity and file:line, and the exit code. The live checks run
//! against a gateway booted in-process (admin on 127.0.0.1:0).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Env;
use serde_json::Value;

/// What one doctor run printed and returned.
struct Run {
    code: i32,
    json: Value,
}

impl Run {
    fn all(&self, id: &str) -> Vec<&Value> {
        self.json["findings"]
            .as_array()
            .map(|a| a.iter().filter(|f| f["id"] == id).collect())
            .unwrap_or_default()
    }
    /// The single finding `id`, panicking with everything found otherwise.
    fn one(&self, id: &str) -> &Value {
        let v = self.all(id);
        assert_eq!(v.len(), 1, "expected one `{id}`: {:#}", self.json);
        v[0]
    }
    fn none(&self, id: &str) {
        assert!(
            self.all(id).is_empty(),
            "unexpected `{id}`: {:#}",
            self.json
        );
    }
    fn worst_at_most(&self, sev: &str) {
        let order = ["info", "low", "medium", "high", "critical"];
        let max = order.iter().position(|s| *s == sev).unwrap();
        for f in self.json["findings"].as_array().unwrap() {
            let p = order
                .iter()
                .position(|s| f["severity"] == *s)
                .expect("known severity");
            assert!(p <= max, "finding worse than {sev}: {f:#}");
        }
    }
}

async fn doctor(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("doctor")
        .arg("--config")
        .arg(cfg)
        .args(["--format", "json"])
        .args(args)
        .env_remove("WARD_REPLICAS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("ward runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = out.status.code().expect("exit code");
    assert_eq!(json["exit_code"], code, "{json:#}");
    Run { code, json }
}

/// 1-based line of the first line of `text` containing `needle` (after line `after`).
fn line_of(text: &str, needle: &str, after: usize) -> u64 {
    text.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i as u64 + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
}

fn assert_at(f: &Value, sev: &str, file: &Path, line: u64) {
    assert_eq!(f["severity"], sev, "{f:#}");
    assert_eq!(f["file"], file.display().to_string(), "{f:#}");
    assert_eq!(f["line"], line, "{f:#}");
    assert!(!f["fix"].as_str().unwrap_or("").is_empty(), "{f:#}");
}

/// A well-configured deployment's pieces; each test changes one thing.
struct Fixture {
    env: Env,
    upstream: String,
    routes_policies: String,
    route_fhir: bool,
    client_auth: String,
    admin: String,
    audit: Option<String>,
    listener_tls: bool,
    extra: String,
}

impl Fixture {
    fn new() -> Fixture {
        let env = Env::new();
        ward::demo::write_token_keys(&env.path("keys")).unwrap();
        env.write(
            "policies/token.yaml",
            &format!(
                "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.example\n      audiences: [ward]\n      algorithms: [ES256]\n      keys_file: keys/{}\n",
                ward::demo::TOKEN_PUB
            ),
        );
        env.write(
            "policies/compartment.yaml",
            "fhir_authz:\n  allowed_operations: [everything]\n",
        );
        env.write("policies/audited.yaml", "audit: {}\n");
        env.write(
            "policies/client-cert.yaml",
            "mtls:\n  subjects: [demo-client]\n",
        );
        env.write("audit.key", "0123456789abcdef0123456789abcdef-audit-key\n");
        std::fs::create_dir_all(env.path("audit")).unwrap();
        Fixture {
            env,
            upstream: "http://127.0.0.1:9".into(),
            routes_policies: "[token, compartment, audited]".into(),
            route_fhir: true,
            client_auth: "optional".into(),
            admin: "127.0.0.1:0".into(),
            audit: Some("audit:\n  path: audit/audit.log\n  key_file: audit.key\n".into()),
            listener_tls: true,
            extra: String::new(),
        }
    }

    fn text(&self) -> String {
        let listener = if self.listener_tls {
            let ca = if self.client_auth == "none" {
                ""
            } else {
                "        ca: [certs/ca.pem]\n"
            };
            format!(
                "    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n      client_auth:\n        mode: {}\n{ca}",
                self.client_auth
            )
        } else {
            "    plaintext: true\n".into()
        };
        format!(
            "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n{listener}upstreams:\n  - name: ehr\n    url: {}\nroutes:\n  - name: fhir\n    listener: public\n    path_prefix: /fhir\n    upstream: ehr\n    fhir: {}\n    policies: {}\n{}admin:\n  bind: {}\n{}",
            self.upstream,
            self.route_fhir,
            self.routes_policies,
            self.audit.clone().unwrap_or_default(),
            self.admin,
            self.extra,
        )
    }

    /// Write `ward.yaml`; return its path and text.
    fn write(&self) -> (PathBuf, String) {
        let t = self.text();
        (self.env.write("ward.yaml", &t), t)
    }
}

/// Audit growth small enough that any test machine has a day of headroom.
const SMALL_GROWTH: [&str; 2] = ["--audit-bytes-per-day", "1"];

#[tokio::test]
async fn clean_config_has_no_finding_above_info() {
    let fx = Fixture::new();
    let (cfg, text) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_eq!(r.code, 0, "{:#}", r.json);
    r.worst_at_most("info");
    // The one thing a config cannot tell: whether clients reach the EHR around Ward. The
    // command to find out is printed.
    let f = r.one("upstream_bypass_untested");
    assert_at(f, "info", &cfg, line_of(&text, "url:", 0));
    assert!(f["message"].as_str().unwrap().contains(
        "curl -m 5 -sS -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:9/fhir/metadata"
    ));
    // Text output ranks and ends with the summary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["doctor", "--config"])
        .arg(&cfg)
        .args(SMALL_GROWTH)
        .output()
        .unwrap();
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert!(
        text_out.contains("INFO     upstream_bypass_untested"),
        "{text_out}"
    );
    assert!(
        text_out.trim_end().ends_with("worst: info; exit code 0"),
        "{text_out}"
    );
}

#[tokio::test]
async fn routes_without_authentication_ranked_by_exposure() {
    // (fhir route, listener client_auth, policies, expected severity or None)
    type Case<'a> = (bool, &'a str, &'a str, Option<(&'a str, i32)>);
    let cases: &[Case] = &[
        (true, "optional", "[audited]", Some(("critical", 3))),
        (true, "none", "[]", Some(("critical", 3))),
        (false, "optional", "[audited]", Some(("high", 2))),
        (false, "none", "[]", Some(("high", 2))),
        (true, "required", "[audited]", Some(("medium", 1))),
        (false, "required", "[audited]", Some(("medium", 1))),
        // Named client certificates are authentication.
        (true, "optional", "[client-cert, audited]", None),
        (false, "required", "[client-cert, audited]", None),
        (false, "optional", "[token, audited]", None),
    ];
    for (fhir, ca, pols, want) in cases {
        let mut fx = Fixture::new();
        fx.route_fhir = *fhir;
        fx.client_auth = ca.to_string();
        fx.routes_policies = pols.to_string();
        let (cfg, text) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        match want {
            Some((sev, code)) => {
                let f = r.one("route_unauthenticated");
                assert_at(f, sev, &cfg, line_of(&text, "- name: fhir", 0));
                assert_eq!(f["key"], "routes[0]");
                assert_eq!(r.code, *code, "{fhir} {ca} {pols}: {:#}", r.json);
            }
            None => r.none("route_unauthenticated"),
        }
    }
}

#[tokio::test]
async fn token_route_without_compartment_guard() {
    let mut fx = Fixture::new();
    fx.routes_policies = "[token, audited]".into();
    let (cfg, text) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(
        r.one("no_compartment_guard"),
        "high",
        &cfg,
        line_of(&text, "- name: fhir", 0),
    );
    assert_eq!(r.code, 2);
    // Not a FHIR route: scopes and compartments do not apply.
    fx.route_fhir = false;
    let (cfg, _) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    r.none("no_compartment_guard");
    assert_eq!(r.code, 0, "{:#}", r.json);
}

#[tokio::test]
async fn audit_gaps() {
    // No audit section at all.
    let mut fx = Fixture::new();
    fx.audit = None;
    fx.routes_policies = "[token, compartment]".into();
    let (cfg, _) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    let f = r.one("audit_disabled");
    assert_eq!(f["severity"], "high");
    assert_eq!(f["line"], Value::Null, "a missing section has no line");
    r.none("route_not_audited");
    assert_eq!(r.code, 2);

    // An audited config with a route that opts out.
    let mut fx = Fixture::new();
    fx.routes_policies = "[token, compartment]".into();
    let (cfg, text) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(
        r.one("route_not_audited"),
        "medium",
        &cfg,
        line_of(&text, "- name: fhir", 0),
    );
    assert_eq!(r.code, 1);

    // Unkeyed chain.
    let mut fx = Fixture::new();
    fx.audit = Some("audit:\n  path: audit/audit.log\n".into());
    let (cfg, text) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(
        r.one("audit_unkeyed"),
        "low",
        &cfg,
        line_of(&text, "audit:", 0),
    );
    assert_eq!(r.code, 1);

    // Less than a day of headroom, for every growth that exceeds the free space; none
    // for growth the volume holds for days.
    let fx = Fixture::new();
    let (cfg, text) = fx.write();
    for huge in [u64::MAX, u64::MAX / 2, 1 << 60] {
        let r = doctor(&cfg, &["--audit-bytes-per-day", &huge.to_string()], &[]).await;
        assert_at(
            r.one("audit_volume_low"),
            "high",
            &cfg,
            line_of(&text, "path: audit/audit.log", 0),
        );
        assert_eq!(r.code, 2);
    }
    for small in ["1", "1000"] {
        let r = doctor(&cfg, &["--audit-bytes-per-day", small], &[]).await;
        r.none("audit_volume_low");
    }
    // (The measured growth rate is unit-tested in src/doctor.rs: it depends on this
    // machine's free space here.)
}

#[tokio::test]
async fn dlp_report_mode_by_age_of_the_policy_file() {
    let day = 86_400;
    // (file age in days, --report-mode-days, expected severity)
    let cases = [
        (30, None, "high"),
        (15, None, "high"),
        (13, None, "info"),
        (0, None, "info"),
        (30, Some(60), "info"),
        (30, Some(7), "high"),
    ];
    for (age, limit, sev) in cases {
        let mut fx = Fixture::new();
        let pol = "description: rolling out\ndlp:\n  preset: safe_harbor\n  mode: report\n";
        let p = fx.env.write("policies/deid.yaml", pol);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age * day))
            .unwrap();
        drop(f);
        fx.routes_policies = "[token, compartment, audited, deid]".into();
        let (cfg, _) = fx.write();
        let lim = limit.map(|l: u64| l.to_string());
        let mut args: Vec<&str> = SMALL_GROWTH.to_vec();
        if let Some(l) = &lim {
            args.extend(["--report-mode-days", l]);
        }
        let r = doctor(&cfg, &args, &[]).await;
        let f = r.one("dlp_report_mode");
        assert_at(f, sev, &p, line_of(pol, "mode: report", 0));
        assert_eq!(r.code, if sev == "high" { 2 } else { 0 }, "{age} {limit:?}");
    }
    // The same policy used only by an MLLP listener; and unused (then it changes nothing).
    for used in [true, false] {
        let mut fx = Fixture::new();
        let pol = "dlp:\n  mode: report\n  detectors:\n    ssn: {}\n";
        let p = fx.env.write("policies/hl7-deid.yaml", pol);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(40 * day))
            .unwrap();
        drop(f);
        let dlp = if used { "    dlp: hl7-deid\n" } else { "" };
        fx.extra = format!("mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n      client_auth:\n        mode: required\n        ca: [certs/ca.pem]\n    senders:\n      - subjects: [demo-client]\n    audit: true\n{dlp}    upstream:\n      address: 127.0.0.1:9\n");
        let (cfg, _) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        r.none("config_invalid");
        if used {
            assert_at(r.one("dlp_report_mode"), "high", &p, 2);
        } else {
            r.none("dlp_report_mode");
        }
    }
    // Passing unscannable bodies while enforcing.
    let mut fx = Fixture::new();
    let pol = "dlp:\n  preset: safe_harbor\n  unscannable: pass\n";
    let p = fx.env.write("policies/deid.yaml", pol);
    fx.routes_policies = "[token, compartment, audited, deid]".into();
    let (cfg, _) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(r.one("dlp_unscannable_pass"), "medium", &p, 3);
    r.none("dlp_report_mode");
}

/// A self-signed certificate (and key) valid from `start` to `end` days from today.
fn cert_pem(start: i64, end: i64) -> (String, String) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86_400;
    let ymd = |d: i64| {
        let (y, m, d) = ward::calendar::civil_from_days(today + d);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = ymd(start);
    p.not_after = ymd(end);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "doctor-test");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn certificates_expired_expiring_or_not_yet_valid_wherever_they_are() {
    // (validity window in days from today, expected finding)
    type State<'a> = ((i64, i64), Option<(&'a str, &'a str)>);
    let states: &[State] = &[
        ((-400, -5), Some(("cert_expired", "critical"))),
        ((-400, -1), Some(("cert_expired", "critical"))),
        ((-30, 10), Some(("cert_expiring", "high"))),
        ((-30, 2), Some(("cert_expiring", "high"))),
        ((-30, 29), Some(("cert_expiring", "high"))),
        ((5, 400), Some(("cert_not_yet_valid", "high"))),
        ((-30, 31), None),
        ((-30, 365), None),
    ];
    // Where a certificate can sit: (slot, the line the finding points at).
    let slots = ["listener_cert", "client_ca", "upstream_ca", "mllp_cert"];
    for slot in slots {
        for ((start, end), want) in states {
            let mut fx = Fixture::new();
            let (cert, key) = cert_pem(*start, *end);
            fx.env.write("certs/test.pem", &cert);
            fx.env.write("certs/test.key", &key);
            match slot {
                "listener_cert" => fx.env.write("certs/server.pem", &cert),
                "client_ca" => fx.env.write("certs/ca.pem", &cert),
                _ => PathBuf::new(),
            };
            if slot == "listener_cert" {
                fx.env.write("certs/server.key", &key);
            }
            if slot == "upstream_ca" {
                fx.upstream = "https://127.0.0.1:9\n    ca: certs/test.pem".into();
            }
            if slot == "mllp_cert" {
                fx.extra = "mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: certs/test.pem\n          key: certs/test.key\n      client_auth:\n        mode: required\n        ca: [certs/ca.pem]\n    senders:\n      - subjects: [demo-client]\n    audit: true\n    upstream:\n      address: 127.0.0.1:9\n".into();
            }
            let (cfg, text) = fx.write();
            let needle = match slot {
                "listener_cert" => "- cert: certs/server.pem",
                "client_ca" => "ca: [certs/ca.pem]",
                "upstream_ca" => "ca: certs/test.pem",
                _ => "- cert: certs/test.pem",
            };
            let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
            for id in ["cert_expired", "cert_expiring", "cert_not_yet_valid"] {
                if want.map(|w| w.0) != Some(id) {
                    r.none(id);
                }
            }
            if let Some((id, sev)) = want {
                let f = r.one(id);
                assert_at(f, sev, &cfg, line_of(&text, needle, 0));
                assert!(f["message"].as_str().unwrap().contains("doctor-test"));
                let code = if *sev == "critical" { 3 } else { 2 };
                assert_eq!(r.code, code, "{slot} {start} {end}: {:#}", r.json);
            }
        }
    }
}

#[tokio::test]
async fn stale_entries_of_a_ca_bundle_that_still_works_are_low() {
    let (valid, _) = cert_pem(-30, 365);
    for ((start, end), id) in [
        ((-400, -5), "cert_expired"),
        ((-30, 10), "cert_expiring"),
        ((5, 400), "cert_not_yet_valid"),
    ] {
        let (stale, _) = cert_pem(start, end);
        for bundle in [format!("{valid}{stale}"), format!("{stale}{valid}")] {
            let fx = Fixture::new();
            fx.env.write("certs/ca.pem", &bundle);
            let (cfg, text) = fx.write();
            let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
            assert_at(
                r.one(id),
                "low",
                &cfg,
                line_of(&text, "ca: [certs/ca.pem]", 0),
            );
            assert_eq!(r.code, 1, "{:#}", r.json);
        }
        // Alone in the bundle, the same certificate is what handshakes depend on.
        let fx = Fixture::new();
        fx.env.write("certs/ca.pem", &stale);
        let (cfg, _) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        assert_ne!(r.one(id)["severity"], "low");
    }
}

#[tokio::test]
async fn admin_listener_off_loopback() {
    for (bind, exposed) in [
        ("0.0.0.0:9901", true),
        ("\"[::]:9901\"", true),
        ("10.1.2.3:9901", true),
        ("192.0.2.7:0", true),
        ("127.0.0.1:9901", false),
        ("127.0.0.2:0", false),
        ("\"[::1]:9901\"", false),
    ] {
        let mut fx = Fixture::new();
        fx.admin = bind.into();
        let (cfg, text) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        if exposed {
            assert_at(
                r.one("admin_off_loopback"),
                "high",
                &cfg,
                line_of(&text, "bind:", line_of(&text, "admin:", 0) as usize),
            );
            assert_eq!(r.code, 2);
        } else {
            r.none("admin_off_loopback");
            assert_eq!(r.code, 0, "{bind}: {:#}", r.json);
        }
    }
}

#[tokio::test]
async fn cleartext_hops() {
    // Plaintext HTTP listener.
    let mut fx = Fixture::new();
    fx.listener_tls = false;
    fx.routes_policies = "[audited]".into();
    let (cfg, text) = fx.write();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(
        r.one("listener_plaintext"),
        "high",
        &cfg,
        line_of(&text, "plaintext: true", 0),
    );
    // Plain http:// to an EHR on another host; loopback is not a network hop.
    for (url, flagged) in [
        ("http://10.0.0.5:8080", true),
        ("http://ehr.internal", true),
        ("http://[2001:db8::5]:8080", true),
        ("http://127.0.0.1:8080", false),
        ("http://localhost:8080", false),
        ("http://[::1]:8080", false),
    ] {
        let mut fx = Fixture::new();
        fx.upstream = url.into();
        let (cfg, text) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        if flagged {
            assert_at(
                r.one("upstream_plaintext"),
                "medium",
                &cfg,
                line_of(&text, "url:", 0),
            );
        } else {
            r.none("upstream_plaintext");
        }
    }
}

#[tokio::test]
async fn mllp_listeners() {
    let tls = "    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n      client_auth:\n        mode: MODE\n        ca: [certs/ca.pem]\n";
    // (transport, senders, upstream address, audit, expected findings)
    type Want<'a> = Vec<(&'a str, &'a str, &'a str)>;
    let cases: Vec<(String, &str, &str, &str, Want)> = vec![
        (
            "    plaintext: true\n".into(),
            "",
            "127.0.0.1:9",
            "true",
            vec![
                ("mllp_plaintext", "high", "plaintext: true"),
                ("mllp_any_sender", "medium", "- name: hl7"),
            ],
        ),
        (
            tls.replace("MODE", "optional"),
            "    senders:\n      - subjects: [demo-client]\n",
            "127.0.0.1:9",
            "true",
            vec![("mllp_unauthenticated", "high", "client_auth:")],
        ),
        (
            tls.replace("MODE", "none")
                .replace("        ca: [certs/ca.pem]\n", ""),
            "",
            "127.0.0.1:9",
            "true",
            vec![
                ("mllp_unauthenticated", "high", "client_auth:"),
                ("mllp_any_sender", "medium", "- name: hl7"),
            ],
        ),
        (
            tls.replace("MODE", "required"),
            "",
            "10.9.9.9:2575",
            "false",
            vec![
                ("mllp_any_sender", "medium", "- name: hl7"),
                ("upstream_plaintext", "medium", "address: 10.9.9.9"),
                ("route_not_audited", "medium", "- name: hl7"),
            ],
        ),
        (
            tls.replace("MODE", "required"),
            "    senders:\n      - subjects: [demo-client]\n",
            "127.0.0.1:9",
            "true",
            vec![],
        ),
    ];
    for (transport, senders, addr, audit, want) in cases {
        let mut fx = Fixture::new();
        fx.extra = format!(
            "mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n{transport}{senders}    audit: {audit}\n    upstream:\n      address: {addr}\n"
        );
        let (cfg, text) = fx.write();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        let mllp_start = line_of(&text, "mllp:", 0) as usize;
        for id in [
            "mllp_plaintext",
            "mllp_unauthenticated",
            "mllp_any_sender",
            "upstream_plaintext",
            "route_not_audited",
        ] {
            match want.iter().find(|w| w.0 == id) {
                Some((_, sev, needle)) => {
                    assert_at(r.one(id), sev, &cfg, line_of(&text, needle, mllp_start - 1))
                }
                None => r.none(id),
            }
        }
        if want.is_empty() {
            assert_eq!(r.code, 0, "{:#}", r.json);
        }
    }
}

#[tokio::test]
async fn shared_state_without_redis_when_replicas_run() {
    let pol = "rate_limit:\n  limits:\n    - name: per-user\n      key: token_sub\n      rate: 10\n      per: minute\n";
    // (--replicas, WARD_REPLICAS, expected severity)
    let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
        (Some("3"), None, Some("high")),
        (Some("2"), None, Some("high")),
        (None, Some("4"), Some("high")),
        (Some("2"), Some("1"), Some("high")),
        (None, None, Some("info")),
        (Some("1"), None, None),
        (None, Some("1"), None),
    ];
    for (flag, env, want) in cases {
        let mut fx = Fixture::new();
        let p = fx.env.write("policies/limits.yaml", pol);
        fx.routes_policies = "[token, compartment, audited, limits]".into();
        let (cfg, _) = fx.write();
        let mut args: Vec<&str> = SMALL_GROWTH.to_vec();
        if let Some(n) = flag {
            args.extend(["--replicas", n]);
        }
        let envs: Vec<(&str, &str)> = env.iter().map(|v| ("WARD_REPLICAS", *v)).collect();
        let r = doctor(&cfg, &args, &envs).await;
        match want {
            Some(sev) => {
                assert_at(r.one("redis_missing"), sev, &p, 1);
                assert_eq!(r.code, if *sev == "high" { 2 } else { 0 });
            }
            None => r.none("redis_missing"),
        }
    }
    // Detect and respond: blocks and signal counters are per replica without Redis.
    for (redis, replicas, want) in [
        ("", "3", Some("high")),
        ("", "1", None),
        ("  redis:\n    url: redis://127.0.0.1:9/0\n", "3", None),
    ] {
        let mut fx = Fixture::new();
        fx.env
            .write("operators.txt", &format!("alice {}\n", "ab".repeat(32)));
        fx.extra = format!("respond:\n  blocks_file: blocks.json\n  operators:\n    tokens_file: operators.txt\n{redis}");
        let (cfg, text) = fx.write();
        let r = doctor(
            &cfg,
            &["--replicas", replicas, "--audit-bytes-per-day", "1"],
            &[],
        )
        .await;
        r.none("config_invalid");
        match want {
            Some(sev) => assert_at(
                r.one("redis_missing"),
                sev,
                &cfg,
                line_of(&text, "respond:", 0),
            ),
            None => r.none("redis_missing"),
        }
    }
    // Redis configured: no gap, but fail_open is named.
    let mut fx = Fixture::new();
    let pol = "rate_limit:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:9/0\n  limits:\n    - name: per-user\n      key: token_sub\n      rate: 10\n      per: minute\n";
    let p = fx.env.write("policies/limits.yaml", pol);
    fx.routes_policies = "[token, compartment, audited, limits]".into();
    let (cfg, _) = fx.write();
    let r = doctor(
        &cfg,
        &["--replicas", "3", "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    r.none("redis_missing");
    assert_at(r.one("rate_limit_fail_open"), "low", &p, 3);
    assert_eq!(r.code, 1);
}

#[tokio::test]
async fn config_that_does_not_load_is_critical_with_its_line() {
    let fx = Fixture::new();
    let (cfg, text) = fx.write();
    for (bad, needle) in [
        (
            text.replace("path_prefix: /fhir", "path_prefix: /fhir/../x"),
            "path_prefix",
        ),
        (
            text.replace("upstream: ehr", "upstream: nowhere"),
            "upstream: nowhere",
        ),
        (
            text.replace("fhir: true", "fhir: true\n    bogus: 1"),
            "bogus",
        ),
    ] {
        std::fs::write(&cfg, &bad).unwrap();
        let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
        assert_eq!(r.code, 3);
        let f = r.one("config_invalid");
        assert_at(f, "critical", &cfg, line_of(&bad, needle, 0));
    }
    // A policy file's error points into that file.
    let p = fx
        .env
        .write("policies/audited.yaml", "audit: {}\nnonsense: 1\n");
    std::fs::write(&cfg, &text).unwrap();
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    assert_at(r.one("config_invalid"), "critical", &p, 2);
}

#[tokio::test]
async fn upstream_reachability_from_the_gateway_and_from_a_client_network() {
    // An EHR that answers, and an address where nothing listens.
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let dead_addr = common::dead_addr().await;
    for (addr, args, want) in [
        // Loopback: only this host reaches it, no bypass from the network.
        (
            live_addr,
            vec!["--probe-upstream"],
            ("upstream_reachable", "info", 0),
        ),
        (
            live_addr,
            vec!["--from-client-network"],
            ("upstream_bypass", "critical", 3),
        ),
        (
            live_addr,
            vec!["--probe-upstream", "--from-client-network"],
            ("upstream_bypass", "critical", 3),
        ),
        (
            dead_addr,
            vec!["--probe-upstream"],
            ("upstream_unreachable", "high", 2),
        ),
        (
            dead_addr,
            vec!["--from-client-network"],
            ("upstream_not_reachable", "info", 0),
        ),
    ] {
        let mut fx = Fixture::new();
        fx.upstream = format!("http://{addr}");
        let (cfg, text) = fx.write();
        let mut a: Vec<&str> = SMALL_GROWTH.to_vec();
        a.extend(args.iter().copied());
        let r = doctor(&cfg, &a, &[]).await;
        let f = r.one(want.0);
        assert_at(f, want.1, &cfg, line_of(&text, "url:", 0));
        assert!(f["message"].as_str().unwrap().contains(&addr.to_string()));
        assert_eq!(r.code, want.2, "{args:?}: {:#}", r.json);
        r.none("upstream_bypass_untested");
    }
    // MLLP upstreams are probed too.
    let mut fx = Fixture::new();
    fx.extra = format!("mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n      client_auth:\n        mode: required\n        ca: [certs/ca.pem]\n    senders:\n      - subjects: [demo-client]\n    audit: true\n    upstream:\n      address: {live_addr}\n");
    fx.upstream = format!("http://{dead_addr}");
    let (cfg, text) = fx.write();
    let r = doctor(
        &cfg,
        &["--from-client-network", "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    let f = r.one("upstream_bypass");
    assert_at(f, "critical", &cfg, line_of(&text, "address:", 0));
    drop(live);
}

#[tokio::test]
async fn live_checks_through_the_admin_listener() {
    let (up, _state) = common::upstream().await;
    let mut fx = Fixture::new();
    fx.upstream = format!("http://{up}\n    health:\n      path: /health");
    let (cfg_path, text) = fx.write();
    let cfg = ward::config::load_with(&cfg_path, &|_| None).expect("config loads");
    let gw = ward::Gateway::start(cfg).await.expect("gateway starts");
    let admin = gw.admin_addr().to_string();
    // Doctor reads the gateway as monitoring would: wait for its first health probe.
    let mut ready = false;
    for _ in 0..500 {
        if common::admin_get(&gw, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "gateway never became ready");
    // A copy of the config for doctor, so the one the gateway watches can be broken.
    let doctor_cfg = fx.env.write("doctor.yaml", &text);

    let r = doctor(
        &doctor_cfg,
        &["--admin", &admin, "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    for id in [
        "reload_failures",
        "not_ready",
        "admin_unreachable",
        "tls_reload_failures",
    ] {
        r.none(id);
    }
    assert_eq!(r.code, 0, "{:#}", r.json);

    // A reload the gateway refuses: it keeps serving the old config, and doctor says so.
    // (The file watcher may refuse the same change once more on its own: at least one.)
    std::fs::write(
        &cfg_path,
        text.replace("upstream: ehr", "upstream: nowhere"),
    )
    .unwrap();
    assert!(gw.reload_config().await.is_err());
    let url = format!("http://{admin}/");
    let r = doctor(
        &doctor_cfg,
        &["--admin", &url, "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    let f = r.one("reload_failures");
    assert_eq!(f["severity"], "high");
    let msg = f["message"].as_str().unwrap();
    let n: f64 = msg
        .strip_prefix("ward_config_reloads_total: ")
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(n >= 1.0, "{msg}");
    assert_eq!(r.code, 2);
    r.none("tls_reload_failures");

    // A certificate file the listener cannot reload: it keeps its previous certificate.
    let pem = std::fs::read_to_string(fx.env.path("certs/server.pem")).unwrap();
    std::fs::write(fx.env.path("certs/server.pem"), "not a certificate\n").unwrap();
    assert!(!gw.reload_tls().await.is_empty());
    let r = doctor(
        &doctor_cfg,
        &["--admin", &admin, "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    assert_eq!(r.one("tls_reload_failures")["severity"], "high");
    r.one("reload_failures");
    std::fs::write(fx.env.path("certs/server.pem"), pem).unwrap();
    gw.begin_shutdown();
    gw.drained().await;

    // Nothing listening there any more.
    let r = doctor(
        &doctor_cfg,
        &["--admin", &admin, "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    assert_eq!(r.one("admin_unreachable")["severity"], "high");
    assert_eq!(r.code, 2);
}

#[tokio::test]
async fn live_not_ready_names_the_down_upstream() {
    let dead = common::dead_addr().await;
    let mut fx = Fixture::new();
    fx.upstream = format!("http://{dead}");
    let (cfg_path, _) = fx.write();
    let cfg = ward::config::load_with(&cfg_path, &|_| None).expect("config loads");
    let gw = ward::Gateway::start(cfg).await.expect("gateway starts");
    let admin = gw.admin_addr().to_string();
    let r = doctor(
        &cfg_path,
        &["--admin", &admin, "--audit-bytes-per-day", "1"],
        &[],
    )
    .await;
    let f = r.one("not_ready");
    assert_eq!(f["severity"], "high");
    assert!(f["message"].as_str().unwrap().contains("ehr: "), "{f:#}");
    assert_eq!(r.code, 2);
    gw.begin_shutdown();
    gw.drained().await;
}

#[tokio::test]
async fn demo_config_open_routes_are_found() {
    // The demo deliberately has open routes (to show the gateway without tokens); doctor
    // must say so, and nothing in it is broken.
    let env = Env::new();
    let dir = env.dir.path();
    ward::demo::write_demo_policies(&dir.join("policies")).unwrap();
    ward::demo::write_token_keys(dir).unwrap();
    // The audit folder and the operators file the demo config names.
    ward::demo::ensure_demo_state(dir).unwrap();
    for (f, t) in [
        ("server.pem", &env.pki.server_cert),
        ("server.key", &env.pki.server_key),
        ("ca.pem", &env.pki.ca_cert),
    ] {
        std::fs::write(dir.join(f), t).unwrap();
    }
    let text = ward::demo::demo_config(
        dir,
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    let cfg = env.write("ward-demo.yaml", &text);
    let r = doctor(&cfg, &SMALL_GROWTH, &[]).await;
    r.none("config_invalid");
    r.none("cert_expired");
    // What to expect, derived from the loaded config (not from doctor's code), so the test
    // follows the demo as it grows: every route without an auth or mtls policy is open,
    // every FHIR route with auth and no fhir_authz lacks the compartment guard.
    let loaded = ward::config::load_with(&cfg, &|_| None).expect("demo config loads");
    let line_of_route = |name: &str| {
        text.lines()
            .position(|l| l.trim() == format!("- name: {name}"))
            .map(|i| i as u64 + 1)
            .unwrap()
    };
    let has = |r: &ward::config::RouteConfig, f: &dyn Fn(&ward::config::PolicyConfig) -> bool| {
        r.policies
            .iter()
            .filter_map(|n| loaded.policies.get(n))
            .any(f)
    };
    let lines = |id: &str| {
        let mut v: Vec<u64> = r
            .all(id)
            .iter()
            .map(|f| f["line"].as_u64().unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    let mut open: Vec<u64> = loaded
        .routes
        .iter()
        .filter(|rt| !has(rt, &|p| p.auth.is_some() || p.mtls.is_some()))
        .map(|rt| line_of_route(&rt.name))
        .collect();
    open.sort_unstable();
    let mut unguarded: Vec<u64> = loaded
        .routes
        .iter()
        .filter(|rt| {
            rt.fhir && has(rt, &|p| p.auth.is_some()) && !has(rt, &|p| p.fhir_authz.is_some())
        })
        .map(|rt| line_of_route(&rt.name))
        .collect();
    unguarded.sort_unstable();
    // The demo has open routes on purpose (to try the gateway without tokens).
    assert!(!open.is_empty());
    assert_eq!(lines("route_unauthenticated"), open, "{:#}", r.json);
    assert_eq!(lines("no_compartment_guard"), unguarded, "{:#}", r.json);
    assert_eq!(r.code, 3);
    assert_eq!(
        r.all("audit_disabled").len(),
        usize::from(loaded.audit.is_none())
    );
}
