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

/// The answer check runs exactly once: below (by `AnswerGuard`, which takes it out of the
/// request) or, when no guard below took it, on the way up — and its refusal fails the
/// request either way.
#[tokio::test]
async fn an_answer_check_runs_exactly_once_below_or_above() {
    use crate::service::PolicyLayer;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    let runs = Arc::new(AtomicUsize::new(0));
    let check = |refuse: bool| {
        let runs = runs.clone();
        AnswerCheck::new(Box::new(move |mut resp: Response<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if refuse {
                    return Err(hidden());
                }
                resp.headers_mut()
                    .insert("x-checked", HeaderValue::from_static("1"));
                Ok(resp)
            })
        }))
    };
    // The upstream side: it must never see the check in the request it gets.
    let upstream = tower::service_fn(|req: Request<Body>| async move {
        assert!(req.extensions().get::<AnswerCheck>().is_none());
        Ok::<_, Rejection>(Response::new(crate::empty_body()))
    });
    for refuse in [false, true] {
        // Below: the guard applies it; the later call on the way up does nothing.
        let before = runs.load(Ordering::SeqCst);
        let c = check(refuse);
        let mut req = Request::new(crate::empty_body());
        req.extensions_mut().insert(c.clone());
        let below = PolicyLayer::new(AnswerGuard)
            .layer(upstream)
            .oneshot(req)
            .await;
        match below {
            Ok(resp) => {
                assert!(!refuse);
                assert_eq!(resp.headers()["x-checked"], "1");
                let again = c.apply(Response::new(crate::empty_body())).await.unwrap();
                assert!(again.headers().get("x-checked").is_none(), "applied twice");
            }
            Err(e) => {
                assert!(refuse);
                assert_eq!(e.code, hidden().code);
            }
        }
        assert_eq!(runs.load(Ordering::SeqCst), before + 1);
        // No guard below: applied on the way up, once.
        let c = check(refuse);
        let resp = upstream
            .oneshot(Request::new(crate::empty_body()))
            .await
            .unwrap();
        let up = c.apply(resp).await;
        assert_eq!(up.is_err(), refuse);
        let _ = c.apply(Response::new(crate::empty_body())).await;
        assert_eq!(runs.load(Ordering::SeqCst), before + 2);
        // A request without a check passes the guard untouched.
        let plain = PolicyLayer::new(AnswerGuard)
            .layer(upstream)
            .oneshot(Request::new(crate::empty_body()))
            .await
            .unwrap();
        assert!(plain.headers().get("x-checked").is_none());
        assert_eq!(runs.load(Ordering::SeqCst), before + 2);
    }
}
