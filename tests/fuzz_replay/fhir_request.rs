// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! FHIR REST request classifier (`src/fhir/request.rs::parse`).
//!
//! Input format (readable seeds): `METHOD SP rel[?query]` — the bytes up to the first space are
//! the method (any token `http::Method` accepts, so extension methods are covered too), the rest
//! must be UTF-8; everything after the first `?` is the query (absent if there is no `?`).
//! Checks that parse never panics and that an accepted request only carries identifiers that
//! satisfy the grammar the module documents; and, for the patient-compartment guard's
//! parameter checks (`src/fhir/refs.rs`, `src/fhir/scope_filter.rs`): a search value
//! accepted for patient `a` names only `a` after canonicalisation (so the forwarded query
//! never names another patient), a reference accepted in a patient-`a` write never has a
//! segment reading "patient" unless it is exactly `Patient/a[/_history/v]`, and the types a
//! parameter is said to name are real resource types.

use http::Method;
use ward::fhir::refs::{
    is_own_patient, search_value_for_patient, written_reference_ok, Bases, UrnTargets,
};
use ward::fhir::request::{parse, parse_params, Interaction};
use ward::fhir::scope_filter::Grants;
use ward::fhir::tables::RESOURCE_TYPES;

fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub fn fuzz_one(data: &[u8]) {
    let Some(sp) = data.iter().position(|&b| b == b' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(&data[..sp]) else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(&data[sp + 1..]) else {
        return;
    };
    let (rel, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };

    let _ = parse_params(rest);

    let Ok(r) = parse(&method, rel, query) else {
        return;
    };
    let _ = r.interaction.label();
    if let Some(t) = r.resource_type {
        assert!(RESOURCE_TYPES.binary_search(&t).is_ok());
    }
    if let Some(id) = &r.id {
        assert!(is_fhir_id(id), "bad id accepted: {id:?}");
    }
    if let Some(v) = &r.version {
        assert!(is_fhir_id(v), "bad version accepted: {v:?}");
    }
    if let Some((ct, id)) = &r.compartment {
        assert!(RESOURCE_TYPES.binary_search(ct).is_ok());
        assert!(is_fhir_id(id));
        assert_eq!(r.interaction, Interaction::SearchCompartment);
    }
    if let Some(op) = &r.operation {
        assert!(
            !op.is_empty()
                && op.len() <= 64
                && op.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad operation accepted: {op:?}"
        );
    }
    for p in &r.params {
        assert!(!p.name.is_empty());
    }
    if query.is_none() {
        assert!(r.params.is_empty() && r.format.is_none());
    }

    // The guard's view of the same parameters, for a token bound to patient `a`.
    let bases = Bases::new(["https://gw.example/fhir".to_owned()]);
    for p in &r.params {
        if let Some(canon) = search_value_for_patient(&p.value, "a", &bases) {
            for item in canon.split(',') {
                assert!(
                    item == "a" || is_own_patient(item, "a"),
                    "accepted {:?} as patient a ({item:?})",
                    p.value
                );
            }
        }
        if written_reference_ok(&p.value, "a", &bases, &UrnTargets::new())
            && !p.value.starts_with('#')
        {
            let rel = bases.localize(&p.value).unwrap_or(&p.value);
            let plain = rel.to_ascii_lowercase();
            assert!(
                is_own_patient(rel, "a")
                    || !plain
                        .split(['/', '?', '&', '=', '#', '|', ','])
                        .any(|seg| seg.trim() == "patient"),
                "accepted reference {:?} in a write for patient a",
                p.value
            );
        }
        if let Ok(types) = Grants::named_types(p) {
            for t in &types {
                assert!(RESOURCE_TYPES.binary_search(&t.as_str()).is_ok(), "{t:?}");
            }
        }
    }
}
