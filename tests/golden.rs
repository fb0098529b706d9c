//! Golden vectors: formats that must not change by accident, because what they produce is
//! kept outside Ward and compared later.
//!
//! * The audit chain: a fixed sequence of records (fixed times, fixed fields) chained with
//!   plain SHA-256 and with HMAC-SHA256 under a fixed key must give exactly the committed
//!   lines (`tests/fixtures/golden/audit-*.jsonl`). Old trails are verified by
//!   `ward audit verify` against this format.
//! * The DLP keyed hash: the `hash` action under a fixed key must give exactly the committed
//!   pseudonyms (`tests/fixtures/golden/dlp-*.tsv`). Pseudonyms are joined across exports
//!   and days; a silent change would split one patient into two.
//!
//! The committed files were cross-checked against an independent implementation of the
//! documented constructions (module docs of `audit.rs` and `dlp/actions.rs`). After a
//! *deliberate* format change, rewrite them with `WARD_WRITE_GOLDEN=1 cargo test --test
//! golden` and say so in the commit (and in the release notes: old trails and old
//! pseudonyms no longer match).
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

const AUDIT_KEY: &str = "golden-audit-key-0123456789abcdef-0123456789";
const DLP_KEY: &str = "golden-dlp-key-0123456789abcdef-0123456789";

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

/// Compares `got` with the committed file (or writes it, with `WARD_WRITE_GOLDEN=1`).
fn check_golden(name: &str, got: &str) {
    let path = golden(name);
    if std::env::var_os("WARD_WRITE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with WARD_WRITE_GOLDEN=1)",
            path.display()
        )
    });
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name} changed (first difference at line {}):\nwant: {:?}\ngot:  {:?}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first)
        );
    }
}

/// The fixed record sequence: every field type a record carries (strings, numbers, null,
/// nested objects), fixed times, and a value needing JSON escapes.
fn audit_records() -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for i in 0..6u32 {
        let v = json!({
            "time": format!("2024-03-0{}T0{}:15:30.{:03}Z", 1 + i % 3, i, i * 7),
            "kind": if i % 2 == 0 { "request" } else { "mllp" },
            "route": format!("route-{i}"),
            "decision": if i % 3 == 0 { "deny" } else { "allow" },
            "code": if i % 3 == 0 { Value::from("scope_denied") } else { Value::Null },
            "status": 200 + i * 100,
            "who": {"sub": format!("user \"{i}\"\n"), "cert_sha256": "ab".repeat(32)},
        });
        let Value::Object(m) = v else { unreachable!() };
        out.push(m);
    }
    out
}

async fn audit_chain(keyed: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit.key"), AUDIT_KEY).unwrap();
    let mut cfg = json!({"path": "audit.jsonl", "durability": "fsync"});
    if keyed {
        cfg["key_file"] = json!("audit.key");
    }
    let cfg: ward::audit::AuditConfig = serde_json::from_value(cfg).unwrap();
    let metrics = ward::metrics::Metrics::new();
    let base = dir.path().to_path_buf();
    let log = ward::audit::AuditLog::start(&cfg, &|p: &str| base.join(p), &metrics).unwrap();
    for r in audit_records() {
        log.record(r).await.unwrap();
    }
    log.flush().await;
    let path = dir.path().join("audit.jsonl");
    // The trail also verifies (with the key when keyed).
    let key = keyed.then(|| dir.path().join("audit.key"));
    let verdict = ward::audit::verify(std::slice::from_ref(&path), key.as_deref());
    assert_eq!(verdict.exit_code(), 0, "{verdict:?}");
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn audit_chain_sha256_golden() {
    check_golden("audit-sha256.jsonl", &audit_chain(false).await);
}

#[tokio::test]
async fn audit_chain_hmac_golden() {
    check_golden("audit-hmac.jsonl", &audit_chain(true).await);
}

/// Values a pseudonym is taken of: ASCII, digits only, empty, long, non-ASCII, bytes that
/// look like escapes. Generated, so every length class is covered.
fn dlp_values() -> Vec<String> {
    let mut v: Vec<String> = vec![
        String::new(),
        "0".into(),
        "MRN0001".into(),
        "123-45-6789".into(),
        "Zoë Ångström".into(),
        "患者".into(),
        "a\\tb\"c".into(),
    ];
    for len in [15, 16, 17, 31, 32, 33, 64, 65, 1000] {
        v.push("x".repeat(len));
    }
    v
}

#[test]
fn dlp_keyed_hash_golden() {
    let keys = ward::dlp::actions::Keys::new(DLP_KEY.as_bytes());
    let mut out = String::new();
    for value in dlp_values() {
        let p = String::from_utf8(keys.hash(value.as_bytes())).unwrap();
        assert_eq!(p.len(), 32);
        // Only the escaped value goes in the file: newlines and tabs stay on one line.
        out.push_str(&format!("{:?}\t{p}\n", value));
    }
    check_golden("dlp-hash.tsv", &out);
}

/// Through the configured engine, as a deployment runs it: the key comes from a key file
/// (trailing newline trimmed), the detector's `hash` action replaces each match in a text
/// body and in a FHIR JSON body.
#[test]
fn dlp_hash_action_golden() {
    use ward::dlp::{json as dlp_json, DlpConfig, Engine, Report, TextOutcome};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), format!("{DLP_KEY}\n")).unwrap();
    let cfg: DlpConfig = serde_json::from_value(json!({
        "key_file": "k",
        "detectors": {"mrn": {"pattern": "MRN[0-9]{4,}", "action": "hash"}},
        "fhir": [{"path": "*.note.text", "action": "hash"}],
    }))
    .unwrap();
    let base = dir.path().to_path_buf();
    let resolve = |f: &str| base.join(f);
    assert!(
        cfg.problems(&resolve).is_empty(),
        "{:?}",
        cfg.problems(&resolve)
    );
    let eng = Engine::compile(&cfg, &resolve).unwrap();
    let mut out = String::new();
    for n in [1u64, 42, 1234, 99999, 123456789] {
        let body = format!("seen MRN{n:04} today");
        let mut r = Report::default();
        let TextOutcome::Rewritten(got) = eng.process_text(body.as_bytes(), &mut r) else {
            panic!("{body}: not rewritten");
        };
        out.push_str(&format!(
            "text\t{body}\t{}\n",
            String::from_utf8(got).unwrap()
        ));
    }
    for note in ["stable", "Zoë", ""] {
        let body = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "note": [{"text": note}]})
        .to_string();
        let mut r = Report::default();
        let got = match dlp_json::process(&eng, body.as_bytes(), &mut r) {
            Ok(dlp_json::JsonOutcome::Rewritten(b)) => String::from_utf8(b).unwrap(),
            Ok(dlp_json::JsonOutcome::Unchanged) => body.clone(),
            Ok(_) => panic!("{body}: blocked"),
            Err(e) => panic!("{body}: {e:?}"),
        };
        out.push_str(&format!("json\t{note:?}\t{got}\n"));
    }
    check_golden("dlp-hash-action.tsv", &out);
}
