// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! Base-URL rewriting (`src/fhir/base_url.rs`) on text an upstream controls: header values,
//! JSON strings and documents.
//!
//! Properties: never panics (slicing stays on character boundaries); once `text` has
//! rewritten a string there is nothing left in it to rewrite; a rewritten URL starts with the
//! public base; a rewritten `Link` value names no upstream.

use ward::fhir::base_url::{Base, BaseSet, Fate};

const PUBLIC: &str = "https://gw.example/pub";

pub fn fuzz_one(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let set = BaseSet::new(vec![
        Base::parse("https://ehr.internal:8443/fhir").unwrap(),
        Base::parse("http://10.0.0.5/baseR4").unwrap(),
    ])
    .unwrap();
    if let Some(out) = set.text(s, PUBLIC) {
        assert_eq!(set.text(&out, PUBLIC), None, "{s:?} -> {out:?}");
    }
    if let Fate::Replace(n) = set.url(s, PUBLIC) {
        assert!(n.starts_with(PUBLIC), "{s:?} -> {n:?}");
    }
    if let Some(out) = set.link_header(s, PUBLIC) {
        assert_eq!(set.text(&out, PUBLIC), None, "{s:?} -> {out:?}");
    }
    let _ = set.may_occur(data);
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) {
        let mut w = v.clone();
        set.json(&mut v, PUBLIC);
        set.all_urls(&mut w, PUBLIC);
    }
}
