//! Unit tests of the FHIR validator: gateway profiles, JSON Patch, compiled profiles.

use super::*;

// ----- profiles -----

fn prof() -> Profile {
    Profile::default()
}

#[test]
fn profile_allowed_types() {
    let p = Profile {
        allowed_types: Some(vec!["Patient".into(), "Observation".into()]),
        ..prof()
    };
    assert!(vp(r#"{"resourceType":"Patient"}"#, &p).is_ok());
    has(
        vp(r#"{"resourceType":"Practitioner"}"#, &p),
        "business-rule",
        "Practitioner",
    );
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},{"resource":{"resourceType":"Practitioner"},"request":{"method":"POST","url":"Practitioner"}}]}"#;
    // Bundle itself must be allowed explicitly
    has(vp(bundle, &p), "business-rule", "Bundle");
    let p2 = Profile {
        allowed_types: Some(vec!["Patient".into(), "Bundle".into()]),
        ..prof()
    };
    let e = has(vp(bundle, &p2), "business-rule", "Bundle.entry[1].resource");
    assert_eq!(e.len(), 1);
    // contained resources are subject to the allow-list too
    has(
        vp(
            r#"{"resourceType":"Patient","contained":[{"resourceType":"Practitioner"}]}"#,
            &p,
        ),
        "business-rule",
        "Patient.contained[0]",
    );
}

#[test]
fn profile_required_and_forbidden() {
    let p = Profile {
        required: vec!["Patient.identifier".into(), "Patient.name.family".into()],
        forbidden: vec![
            "Patient.photo".into(),
            "Patient.address.line".into(),
            "Observation.value".into(),
        ],
        ..prof()
    };
    assert!(vp(
        &pat(r#""identifier":[{"value":"1"}],"name":[{"given":["a"]},{"family":"b"}]"#),
        &p
    )
    .is_ok());
    let e = has(
        vp(&pat(r#""name":[{"given":["a"]}]"#), &p),
        "required",
        "Patient.identifier",
    );
    has(Err(e), "required", "Patient.name.family");
    has(
        vp(
            &pat(
                r#""identifier":[{"value":"1"}],"name":[{"family":"b"}],"photo":[{"url":"http://x"}]"#,
            ),
            &p,
        ),
        "business-rule",
        "Patient.photo",
    );
    has(
        vp(
            &pat(
                r#""identifier":[{"value":"1"}],"name":[{"family":"b"}],"address":[{"city":"x"},{"line":["l"]}]"#,
            ),
            &p,
        ),
        "business-rule",
        "Patient.address[1].line",
    );
    // `_x`-only presence counts
    has(
        vp(
            &pat(
                r#""identifier":[{"value":"1"}],"name":[{"family":"b"}],"address":[{"_line":[{"id":"x"}]}]"#,
            ),
            &p,
        ),
        "business-rule",
        "Patient.address[0].line",
    );
    assert!(vp(
        &pat(r#""identifier":[{"value":"1"}],"name":[{"_family":{"id":"x"}}]"#),
        &p
    )
    .is_ok());
    // choice element by base name matches any variant
    has(
        vp(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"s"}"#,
            &p,
        ),
        "business-rule",
        "Observation.valueString",
    );
    // forbidden applies inside contained resources; required applies to bundle entries
    has(
        vp(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","photo":[{"url":"http://x"}]}]}"#,
            &p,
        ),
        "business-rule",
        "Observation.contained[0].photo",
    );
    assert!(vp(r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient"}]}"#, &p).is_ok());
    has(
        vp(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","identifier":[{"value":"1"}]}}]}"#,
            &p,
        ),
        "required",
        "Bundle.entry[0].resource.name.family",
    );
}

#[test]
fn profile_max_bundle_entries() {
    let p = Profile {
        max_bundle_entries: Some(1),
        ..prof()
    };
    let b = r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient"}}]}"#;
    has(vp(b, &p), "too-costly", "Bundle.entry");
    let p = Profile {
        max_bundle_entries: Some(2),
        ..prof()
    };
    assert_eq!(vp(b, &p).map(|s| s.bundle_entries).ok(), Some(2));
}

#[test]
fn profile_path_checks() {
    let good = Profile {
        allowed_types: Some(vec!["Patient".into(), "Bundle".into()]),
        required: vec![
            "Patient.identifier".into(),
            "Patient.name.family".into(),
            "Patient.contact.name.given".into(),
        ],
        forbidden: vec![
            "Observation.value".into(),
            "Observation.valueQuantity.unit".into(),
            "Patient.extension.url".into(),
        ],
        max_bundle_entries: None,
    };
    assert_eq!(check_profile_paths(&good), Ok(()));
    for bad in [
        "Patient.nmae",
        "Pateint.name",
        "Patient",
        "Patient.name.family.foo",
        "Patient.name..family",
        "Observation.value.unit",
        "Bundle.entry.resource.id",
        "HumanName.family",
    ] {
        let p = Profile {
            required: vec![bad.into()],
            ..prof()
        };
        assert!(check_profile_paths(&p).is_err(), "{bad}");
        let p = Profile {
            forbidden: vec![bad.into()],
            ..prof()
        };
        assert!(check_profile_paths(&p).is_err(), "{bad}");
        // an invalid profile fails closed at validation time
        has(
            vp(r#"{"resourceType":"Patient"}"#, &p),
            "business-rule",
            "Resource",
        );
    }
    let p = Profile {
        allowed_types: Some(vec!["Pateint".into()]),
        ..prof()
    };
    assert!(check_profile_paths(&p).is_err());
}

// ----- JSON Patch -----

fn patch(s: &str) -> Result<(), Vec<Issue>> {
    validate_json_patch(s.as_bytes(), &Limits::default())
}

#[track_caller]
fn patch_rej(s: &str, code: &str, expr: &str) {
    match patch(s) {
        Ok(()) => panic!("expected rejection"),
        Err(e) => assert!(
            e.iter().any(|i| i.code == code && i.expression == expr),
            "expected {code} at {expr}: {e:#?}"
        ),
    }
}

#[test]
fn json_patch() {
    assert!(patch(r#"[]"#).is_ok());
    assert!(patch(
            r#"[{"op":"add","path":"/name/0/given/-","value":"x"},{"op":"remove","path":"/a~1b"},{"op":"replace","path":"/active","value":false},
               {"op":"move","from":"/a","path":"/b"},{"op":"copy","from":"/a","path":"/c"},{"op":"test","path":"/x","value":{"a":[1,null,{"b":"c"}]}},
               {"op":"add","path":"","value":null}]"#
        )
        .is_ok());
    patch_rej(r#"{"op":"add"}"#, "structure", "JsonPatch");
    patch_rej(r#"[1]"#, "structure", "JsonPatch[0]");
    patch_rej(
        r#"[{"path":"/a","value":1}]"#,
        "required",
        "JsonPatch[0].op",
    );
    patch_rej(
        r#"[{"op":"merge","path":"/a"}]"#,
        "value",
        "JsonPatch[0].op",
    );
    patch_rej(r#"[{"op":"remove"}]"#, "required", "JsonPatch[0].path");
    patch_rej(
        r#"[{"op":"remove","path":"a/b"}]"#,
        "value",
        "JsonPatch[0].path",
    );
    patch_rej(
        r#"[{"op":"remove","path":"/a~2"}]"#,
        "value",
        "JsonPatch[0].path",
    );
    patch_rej(
        r#"[{"op":"remove","path":1}]"#,
        "value",
        "JsonPatch[0].path",
    );
    patch_rej(
        r#"[{"op":"remove","path":"/a"},{"op":"add","path":"/a"}]"#,
        "required",
        "JsonPatch[1].value",
    );
    patch_rej(
        r#"[{"op":"move","path":"/a"}]"#,
        "required",
        "JsonPatch[0].from",
    );
    patch_rej(
        r#"[{"op":"move","path":"/a","from":"x"}]"#,
        "value",
        "JsonPatch[0].from",
    );
    patch_rej(
        r#"[{"op":"remove","path":"/a","extra":1}]"#,
        "structure",
        "JsonPatch[0].extra",
    );
    patch_rej(
        r#"[{"op":"remove","path":"/a","value":1}]"#,
        "structure",
        "JsonPatch[0].value",
    );
    patch_rej(
        r#"[{"op":"add","path":"/a","value":1,"from":"/b"}]"#,
        "structure",
        "JsonPatch[0].from",
    );
    patch_rej(
        r#"[{"op":"remove","path":"/a","op":"remove"}]"#,
        "structure",
        "JsonPatch[0].op",
    );
    patch_rej(
        r#"[{"op":"add","path":"/a","value":{"k":1,"k":2}}]"#,
        "structure",
        "JsonPatch[0].value",
    );
    patch_rej(
        r#"[{"op":"add","path":"/a","value":1},]"#,
        "structure",
        "JsonPatch",
    );
    patch_rej(r#"[{}]"#, "required", "JsonPatch[0]");
    let lim = Limits {
        max_bytes: 4,
        ..Limits::default()
    };
    assert!(validate_json_patch(br#"[{"op":"remove","path":"/a"}]"#, &lim).is_err());
}

#[test]
fn compiled_profile_matches_per_call_profile() {
    let profile = Profile {
        allowed_types: Some(vec!["Patient".into(), "Bundle".into()]),
        required: vec!["Patient.name.family".into()],
        forbidden: vec!["Patient.photo".into()],
        max_bundle_entries: Some(1),
    };
    let compiled = compile_profile(&profile).expect("valid profile");
    let lim = Limits::default();
    let bodies: [&[u8]; 4] = [
        br#"{"resourceType":"Patient","name":[{"family":"X"}]}"#,
        br#"{"resourceType":"Patient","name":[{"given":["X"]}]}"#,
        br#"{"resourceType":"Patient","name":[{"family":"X"}],"photo":[{"url":"http://x"}]}"#,
        br#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
    ];
    for b in bodies {
        let a = validate_resource(b, &lim, Some(&profile));
        let c = validate_resource_with(b, &lim, Some(&compiled));
        assert_eq!(a.is_ok(), c.is_ok());
        let show = |r: Result<Summary, Vec<Issue>>| match r {
            Ok(s) => vec![s.resource_type],
            Err(is) => is
                .into_iter()
                .map(|i| format!("{} {} {}", i.code, i.expression, i.message))
                .collect(),
        };
        assert_eq!(show(a), show(c));
    }
    assert!(validate_resource_with(bodies[0], &lim, Some(&compiled)).is_ok());
    assert!(validate_resource_with(bodies[1], &lim, Some(&compiled)).is_err());
    assert!(validate_resource_with(bodies[2], &lim, Some(&compiled)).is_err());
    assert!(validate_resource_with(bodies[3], &lim, Some(&compiled)).is_err());
    let bad = Profile {
        required: vec!["Patient.nonsense".into()],
        ..Profile::default()
    };
    assert!(compile_profile(&bad).is_err());
}
