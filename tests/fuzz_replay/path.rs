// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! Request-path canonicaliser (`src/path.rs::normalize`).
//!
//! Properties (from the module docs): never panics; an accepted path is canonical, so
//! normalising it again yields the same string borrowed (no rewrite needed); and an accepted
//! path contains none of what the function exists to refuse (backslash, NUL/controls, encoded
//! `/` `\` `.` `%`, dot or empty segments).

use std::borrow::Cow;
use ward::path::{check_fhir, normalize, under_prefix};

pub fn fuzz_one(data: &[u8]) {
    // The router hands normalize a &str (the URI's path); non-UTF-8 bytes cannot get here.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalize(raw) else {
        return;
    };
    let out: &str = &out;

    match normalize(out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, out, "normalize is not idempotent"),
        Ok(Cow::Owned(again)) => panic!(
            "canonical output was rewritten again: {out:?} -> {again:?} (input {raw:?})"
        ),
        Err(e) => panic!("canonical output rejected on second pass with {e:?}: {out:?} (input {raw:?})"),
    }

    assert!(out.starts_with('/'));
    assert!(
        !out.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
        "backslash/control in output {out:?}"
    );
    let upper = out.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%2E", "%25", "%00"] {
        assert!(!upper.contains(bad), "{bad} survived in {out:?}");
    }
    let segs: Vec<&str> = out[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        let bare = s.split(';').next().unwrap_or("");
        assert!(bare != "." && bare != "..", "dot segment in {out:?}");
        assert!(!s.is_empty() || i + 1 == segs.len(), "empty segment in {out:?}");
    }

    let _ = check_fhir(out);
    assert!(under_prefix(out, "/"));
    assert!(under_prefix(out, out));
}
