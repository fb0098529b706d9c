// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! The same bytes through every JSON reader of the gateway — the shared lexer
//! (`json::check`), the FHIR validator's syntax layer and its full schema-driven pass, the DLP
//! walker and the compartment guard's `strict_json` — with serde_json as an outside reference.
//! A parser differential (one reader accepts or reads differently what another refuses) is a
//! hole: a policy decides on one reading, the upstream acts on another. Checked, beyond
//! "never panics":
//! * the validator's syntax layer and `strict_json` accept exactly what `json::check` does
//!   (bodies nested deeper than the validator's default 64 levels are left out: each consumer
//!   keeps its own depth limit; `strict_json` may also refuse a number serde_json cannot hold);
//! * the full validator never accepts what the syntax layer refuses;
//! * the DLP walker (a report-only engine: it never blocks or edits) accepts exactly what
//!   `json::check` accepts, minus bodies with an escaped member name (refused by DLP policy);
//! * whatever `strict_json` accepts, serde_json accepts with the same value (same members,
//!   same decoded strings, same numbers); what serde_json accepts and `strict_json` refuses
//!   repeats a member name.

use std::sync::LazyLock;

use ward::dlp::{json as dlp_json, DlpConfig, Engine, Report};
use ward::fhir::strict_json::{self, StrictError};
use ward::fhir::validate::{check_json_syntax, validate_resource, Limits};
use ward::json::{self, ErrorKind, Kind, Tokenizer};

/// A report-only engine: the walk reads the whole body and changes nothing.
static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("ward-fuzz-jsondiff-{}", std::process::id()));
    let cfg: DlpConfig = serde_json::from_value(serde_json::json!({
        "detectors": {"ssn": {"action": "report"}, "email": {"action": "report"}}
    }))
    .expect("fuzz config");
    let resolve = |f: &str| dir.join(f);
    let problems = cfg.problems(&resolve);
    assert!(problems.is_empty(), "fuzz config: {problems:?}");
    Engine::compile(&cfg, &resolve).expect("fuzz engine")
});

/// What the tokens say: an escaped member name, a number serde_json cannot hold.
fn features(data: &[u8]) -> (bool, bool) {
    let (mut escaped_key, mut huge) = (false, false);
    let mut t = Tokenizer::new(data, json::MAX_DEPTH);
    while let Ok(Some(tok)) = t.next() {
        match tok.kind {
            Kind::Key if tok.esc => escaped_key = true,
            Kind::Num => {
                huge |= serde_json::from_slice::<serde_json::Value>(tok.raw(data)).is_err();
            }
            _ => {}
        }
    }
    (escaped_key, huge)
}

pub fn fuzz_one(data: &[u8]) {
    let limits = Limits {
        max_issues: 1_000_000,
        ..Limits::default()
    };
    let shared = json::check(data, limits.max_depth);
    let syntax = check_json_syntax(data, &limits);
    let strict = strict_json::from_slice(data);
    let mut report = Report::default();
    let dlp = dlp_json::process(&ENGINE, data, &mut report);
    let full = validate_resource(data, &limits, None);
    let serde = serde_json::from_slice::<serde_json::Value>(data);
    if matches!(shared, Err(e) if e.kind == ErrorKind::TooDeep) {
        return;
    }
    let ok = shared.is_ok();
    let (escaped_key, huge) = features(data);
    let show = || String::from_utf8_lossy(data).into_owned();
    assert_eq!(
        syntax.is_ok(),
        ok,
        "validator syntax layer vs shared: {shared:?} {syntax:?}\n{}",
        show()
    );
    if !(ok && huge) {
        assert_eq!(
            strict.is_ok(),
            ok,
            "strict_json vs shared: {shared:?} {strict:?}\n{}",
            show()
        );
    }
    if full.is_ok() {
        assert!(
            ok,
            "the validator accepted what the syntax layer refuses: {shared:?}\n{}",
            show()
        );
    }
    assert_eq!(
        dlp.is_ok(),
        ok && !escaped_key,
        "DLP vs shared: {shared:?} {:?}\n{}",
        dlp.as_ref().err(),
        show()
    );
    match (&strict, &serde) {
        (Ok(a), Ok(b)) => assert_eq!(
            a,
            b,
            "strict_json and serde_json read different values\n{}",
            show()
        ),
        (Ok(_), Err(e)) => panic!(
            "strict_json accepts what serde_json refuses ({e})\n{}",
            show()
        ),
        // serde_json's reading minus the duplicate rule: nothing else may differ.
        (Err(StrictError::Malformed), Ok(_)) => {
            assert!(
                huge,
                "strict_json refuses JSON serde_json reads: {shared:?}\n{}",
                show()
            );
        }
        _ => {}
    }
    if let Ok(v) = &strict {
        // Same members: what strict_json built re-serialises to JSON every reader accepts.
        let again = serde_json::to_vec(v).expect("serialise");
        assert!(json::check(&again, json::MAX_DEPTH).is_ok(), "{}", show());
    }
}
