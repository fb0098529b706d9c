//! Unit tests of `fhir_authz`.

use super::*;
use serde_json::json;

#[test]
fn bundle_filtering() {
    let mut b = json!({"resourceType": "Bundle", "type": "searchset", "total": 3, "entry": [
        {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/a"}}},
        {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/b"}}},
        {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
    ]});
    assert!(filter_bundle(&mut b.clone(), "a", BundleMode::Fail).is_err());
    assert!(filter_bundle(&mut b, "a", BundleMode::Filter).unwrap());
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert_eq!(b["total"], 2);
}

#[test]
fn break_glass_entitlement_by_scope_or_claim() {
    let claims = |scopes: &[&str], raw: serde_json::Value| Claims {
        provider: Arc::from("p"),
        iss: "i".into(),
        sub: "s".into(),
        client_id: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        patient: None,
        exp: 0,
        cnf_x5t: None,
        cnf_present: false,
        raw: raw.as_object().cloned().unwrap_or_default(),
    };
    let by_scope: BreakGlassConfig =
        serde_json::from_value(json!({"scope": "emergency-access"})).unwrap();
    let by_claim: BreakGlassConfig =
        serde_json::from_value(json!({"claim": {"name": "role", "value": "emergency-access"}}))
            .unwrap();
    assert!(by_scope.entitled(&claims(&["patient/*.read", "emergency-access"], json!({}))));
    assert!(!by_scope.entitled(&claims(&["patient/*.read"], json!({}))));
    assert!(by_claim.entitled(&claims(&[], json!({"role": "emergency-access"}))));
    assert!(by_claim.entitled(&claims(
        &[],
        json!({"role": ["clinician", "emergency-access"]})
    )));
    assert!(!by_claim.entitled(&claims(&[], json!({"role": ["clinician"]}))));
    assert!(!by_claim.entitled(&claims(&["emergency-access"], json!({"role": "x"}))));
}

#[test]
fn query_encoding_round_trips() {
    let ps =
        parse_params("subject=Patient%2Fa&code=http%3A%2F%2Floinc.org%7C1234-5&name:exact=A%20B")
            .unwrap();
    assert_eq!(parse_params(&encode_params(&ps)).unwrap(), ps);
}
