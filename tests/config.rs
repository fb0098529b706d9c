//! Config loading as an operator meets it: `ward check` output with file:line, every
//! example config and every policy file in the repository loads.

mod common;

use std::process::Command;

use common::*;

fn ward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ward"))
}

#[test]
fn check_lists_every_error_with_file_and_line() {
    let env = Env::new();
    env.write(
        "policies/strict.yaml",
        "limits:\n  max_body_bytes: 100\ndlp:\n  resources: []\nauth:\n  providers: []\n",
    );
    env.write("policies/typo.yaml", "limts:\n  max_body_bytes: 1\n");
    let cfg = env.write(
        "ward.yaml",
        concat!(
            "listeners:\n",                             // 1
            "  - name: public\n",                       // 2
            "    bind: 0.0.0.0:8443\n",                 // 3
            "    plaintext: true\n",                    // 4
            "    limits:\n",                            // 5
            "      max_body_byte: 10\n",                // 6
            "  - name: internal\n",                     // 7
            "    bind: 0.0.0.0:8444\n",                 // 8
            "    tls:\n",                               // 9
            "      certificates:\n",                    // 10
            "        - cert: certs/server.pem\n",       // 11
            "          key: certs/missing.key\n",       // 12
            "upstreams:\n",                             // 13
            "  - name: ehr\n",                          // 14
            "    url: https://ehr.local\n",             // 15
            "    client_secret: ${WARD_TEST_SECRET}\n", // 16
            "routes:\n",                                // 17
            "  - name: r\n",                            // 18
            "    listener: public\n",                   // 19
            "    path_prefix: /fhir\n",                 // 20
            "    upstream: nope\n",                     // 21
            "    policies: [strict, absent]\n",         // 22
        ),
    );
    let out = ward()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("WARD_TEST_SECRET", "hunter2-very-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = cfg.display().to_string();
    for want in [
        format!("{f}:6: listeners[0].limits.max_body_byte: unknown field `max_body_byte`"),
        format!("{f}:11: listeners[1].tls.certificates[0]: cannot read private key"),
        format!("{f}:16: upstreams[0].client_secret: unknown field `client_secret`"),
        format!("{f}:21: routes[0].upstream: no upstream with this name"),
        format!("{f}:22: routes[0].policies[1]: no policy file with this name"),
        format!(
            "{}:4: dlp.resources: unknown field `resources`",
            env.path("policies/strict.yaml").display()
        ),
        format!(
            "{}:1: limts: unknown policy section",
            env.path("policies/typo.yaml").display()
        ),
    ] {
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!(
            "{}:6: auth.providers: at least one provider",
            env.path("policies/strict.yaml").display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "secret echoed:\n{stderr}");
    // A typo in one item does not cascade into errors about references to it.
    assert!(!stderr.contains("routes[0].listener"), "{stderr}");
}

#[test]
fn check_accepts_a_valid_config() {
    let env = Env::new();
    let cfg = env.write(
        "ward.yaml",
        &basic_config("127.0.0.1:9".parse().unwrap(), "", ""),
    );
    let out = ward()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn yaml_syntax_errors_have_lines() {
    let env = Env::new();
    let cfg = env.write(
        "ward.yaml",
        "listeners:\n  - name: a\n    bind: [unclosed\nroutes: []\n",
    );
    let out = ward()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:", cfg.display())),
        "{stderr}"
    );
    let line: String = stderr.split(':').nth(1).unwrap_or_default().to_owned();
    assert!(line.parse::<u32>().is_ok(), "no line number: {stderr}");
}

#[test]
fn every_policy_file_in_the_repository_loads() {
    // Policies name files relative to the config's folder; lay out the demo PKI the
    // example files refer to in a scratch folder used as that base (a fresh clone has no
    // certs-example/demo/).
    let env = Env::new();
    env.pki.write(&env.path("certs-example/demo")).unwrap();
    let dir = policies_dir();
    let vars =
        |n: &str| (n == "WARD_REDIS_URL").then(|| "rediss://redis.internal:6380/0".to_owned());
    let policies = ward::config::load_policies(&dir, env.dir.path(), &vars)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    for expected in [
        "baseline",
        "uploads",
        "lab-systems",
        "smart-on-fhir",
        "patient-access",
        "rate-limits",
        "cluster-rate-limits",
        "validation",
        "hl7v2-feed",
        "deidentify",
        "phi-guard",
        "emergency-access",
        "opaque-tokens",
        "backend-services",
        "smart-discovery",
        "bulk-export",
    ] {
        assert!(
            policies.contains_key(expected),
            "policies/{expected}.yaml missing"
        );
    }
    assert!(policies["deidentify"].dlp.is_some());
    assert!(policies["emergency-access"]
        .fhir_authz
        .as_ref()
        .is_some_and(|f| f.break_glass.is_some()));
    assert!(policies["phi-guard"].dlp.is_some());
    assert!(policies["lab-systems"].mtls.is_some());
    assert!(policies["smart-on-fhir"]
        .auth
        .as_ref()
        .is_some_and(|a| a.anonymous_discovery));
    assert!(policies["smart-discovery"].discovery.is_some());
    assert!(policies["opaque-tokens"]
        .auth
        .as_ref()
        .is_some_and(|a| a.providers[0].introspection.is_some()));
    assert!(policies["backend-services"]
        .fhir_authz
        .as_ref()
        .is_some_and(|f| f.allowed_scope_levels.is_some()));
    assert!(policies["bulk-export"]
        .fhir_authz
        .as_ref()
        .is_some_and(|f| f.bulk_export.as_ref().is_some_and(|b| b.max_jobs == 1000)));
    assert!(policies["patient-access"].fhir_authz.is_some());
    assert_eq!(
        policies["rate-limits"]
            .rate_limit
            .as_ref()
            .map(|r| r.limits.len()),
        Some(3)
    );
    assert!(policies["validation"]
        .validate
        .as_ref()
        .is_some_and(|v| v.fhir.is_some()));
    assert!(policies["hl7v2-feed"]
        .validate
        .as_ref()
        .is_some_and(|v| v.hl7v2.is_some()));
    assert!(policies["cluster-rate-limits"]
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.redis.is_some()));
}

#[test]
fn example_config_loads() {
    // ward.example.yaml refers to the demo certificates and to policies/; lay both out
    // beside a copy of it.
    let env = Env::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ward.example.yaml")).unwrap();
    env.pki.write(&env.path("certs-example/demo")).unwrap();
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, env.path("policies").join(p.file_name().unwrap())).unwrap();
    }
    let p = env.write("ward.example.yaml", &text);
    let vars = |n: &str| match n {
        "WARD_UPSTREAM_CA" => Some("certs-example/demo/ca.pem".to_owned()),
        "WARD_REDIS_URL" => Some("rediss://redis.internal:6380/0".to_owned()),
        _ => None,
    };
    if let Err(errs) = ward::config::load_with(&p, &vars) {
        panic!("{errs:#?}");
    }
    // The demo's generated config and policies go through the same loader.
    let demo_dir = env.path("certs-example/demo");
    ward::demo::write_token_keys(&demo_dir).unwrap();
    ward::demo::write_demo_policies(&demo_dir.join("policies")).unwrap();
    ward::demo::ensure_demo_state(&demo_dir).unwrap();
    let demo = ward::demo::demo_config(
        &demo_dir,
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:10".parse().unwrap(),
    );
    let p = env.write("certs-example/demo/ward-demo.yaml", &demo);
    let cfg = ward::config::load_with(&p, &|_| None).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(cfg.routes.len(), 5);
    assert!(cfg.policies["demo-dlp"].dlp.is_some());
    assert!(cfg.audit.is_some() && cfg.respond.is_some());
}

#[test]
fn route_policy_combinations_are_checked() {
    let env = Env::new();
    env.write("policies/a.yaml", "mtls:\n  subjects: [x]\n");
    env.write("policies/b.yaml", "mtls:\n  subjects: [y]\n");
    env.write(
        "policies/tok.yaml",
        "auth:\n  providers:\n    - name: p\n      issuer: https://i\n      audiences: [a]\n      algorithms: [ES256]\n      jwks_url: https://idp.example/jwks\n      jwks_ca: certs/ca.pem\n  require_certificate_binding: true\n",
    );
    env.write(
        "policies/bounds.yaml",
        "auth:\n  providers:\n    - name: p\n      issuer: https://i\n      audiences: [a]\n      algorithms: [ES256]\n      jwks_url: https://idp.example/jwks\n      jwks_ca: certs/ca.pem\n      jwks_refresh: 1s\n      leeway: 1h\n",
    );
    let cfg = basic_config("127.0.0.1:9".parse().unwrap(), "", "")
        .replace(
            "    upstream: ehr\n    fhir: true\n",
            "    upstream: ehr\n    fhir: true\n    policies: [a, b]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    policies: [tok]\n",
        );
    let p = env.write("ward.yaml", &cfg);
    let errs: Vec<String> = ward::config::load_with(&p, &|_| None)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    let all = errs.join("\n");
    assert!(all.contains("`b` and `a` both define `mtls`"), "{all}");
    assert!(
        all.contains(
            "has an mtls section but listener `public` does not request client certificates"
        ),
        "{all}"
    );
    assert!(
        all.contains("requires certificate-bound tokens but listener `public`"),
        "{all}"
    );
    assert!(
        all.contains("auth.providers[0].jwks_refresh: at least 10s"),
        "{all}"
    );
    assert!(
        all.contains("auth.providers[0].leeway: at most 5m"),
        "{all}"
    );
}

/// `ward check` with `admin.bind` set to `bind` (with `env` in its environment): exit code,
/// stderr, and the line `admin.bind` sits on in the file.
fn check_admin_bind(bind: &str, env_var: Option<&str>) -> (Option<i32>, String, String, usize) {
    let env = Env::new();
    let text = basic_config("127.0.0.1:9".parse().unwrap(), "", "").replace(
        "  bind: 127.0.0.1:0\nshutdown_grace",
        &format!("  bind: \"{bind}\"\nshutdown_grace"),
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("  bind: \""))
        .expect("admin.bind written")
        + 1;
    let cfg = env.write("ward.yaml", &text);
    let mut cmd = ward();
    cmd.args(["check", "--config"]).arg(&cfg);
    if let Some(v) = env_var {
        cmd.env("WARD_TEST_ADMIN_BIND", v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        cfg.display().to_string(),
        line,
    )
}

#[test]
fn check_warns_when_the_admin_listener_is_not_on_loopback() {
    let wide = [
        "0.0.0.0:9901",
        "[::]:9901",
        "192.168.1.10:9901",
        "10.0.0.5:0",
        "172.16.0.1:9901",
        "100.64.0.1:9901",
        "[2001:db8::1]:9901",
        "[fe80::1]:9901",
        "[::ffff:10.0.0.1]:9901",
        "[::ffff:0.0.0.0]:9901",
    ];
    for bind in wide {
        let (code, stderr, file, line) = check_admin_bind(bind, None);
        assert_eq!(
            code,
            Some(0),
            "{bind}: a warning must not fail the check: {stderr}"
        );
        let want = format!("warning: {file}:{line}: admin.bind: ");
        assert!(
            stderr.contains(&want),
            "{bind}: no located warning:\n{stderr}"
        );
        assert!(
            stderr.contains("not a loopback address"),
            "{bind}: {stderr}"
        );
    }
    // The same through an environment variable: the decision is on the expanded value,
    // the line is the key's.
    let (code, stderr, file, line) =
        check_admin_bind("${WARD_TEST_ADMIN_BIND}", Some("0.0.0.0:9901"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {file}:{line}: admin.bind: 0.0.0.0 is not"
        )),
        "{stderr}"
    );

    for bind in [
        "127.0.0.1:9901",
        "127.1.2.3:0",
        "[::1]:9901",
        "[::ffff:127.0.0.1]:9901",
    ] {
        let (code, stderr, _, _) = check_admin_bind(bind, None);
        assert_eq!(code, Some(0), "{bind}: {stderr}");
        assert!(
            !stderr.contains("warning"),
            "{bind}: loopback warned about:\n{stderr}"
        );
    }
    // A host name is not a bind address at all (it could resolve to anything): an error
    // at the key's line, exit 1.
    for bind in [
        "localhost:9901",
        "admin.internal:9901",
        "example.com:80",
        ":9901",
    ] {
        let (code, stderr, file, line) = check_admin_bind(bind, None);
        assert_eq!(code, Some(1), "{bind}: {stderr}");
        assert!(
            stderr.contains(&format!("{file}:{line}: admin.bind: ")),
            "{bind}: {stderr}"
        );
    }
}
