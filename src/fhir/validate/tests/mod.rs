//! Unit tests of the FHIR validator: shared helpers, JSON well-formedness and limits, the
//! top level, member names; primitives and structure in `values.rs`, profiles and JSON Patch in
//! `profiles.rs`.

use super::*;

fn v(json: &str) -> Result<Summary, Vec<Issue>> {
    validate_resource(json.as_bytes(), &Limits::default(), None)
}

fn vp(json: &str, p: &Profile) -> Result<Summary, Vec<Issue>> {
    validate_resource(json.as_bytes(), &Limits::default(), Some(p))
}

#[track_caller]
fn ok(json: &str) -> Summary {
    match v(json) {
        Ok(s) => s,
        Err(e) => panic!("expected valid, got {e:#?}"),
    }
}

#[track_caller]
fn has(res: Result<Summary, Vec<Issue>>, code: &str, expr: &str) -> Vec<Issue> {
    match res {
        Ok(_) => panic!("expected rejection with {code} at {expr}"),
        Err(e) => {
            assert!(
                e.iter().any(|i| i.code == code
                    && i.expression == expr
                    && i.severity == Severity::Error),
                "expected {code} at {expr}, got {e:#?}"
            );
            e
        }
    }
}

/// An Observation whose `subject.reference` is `r` (JSON-escaped here).
fn obs_ref(r: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":{}}}}}"#,
        serde_json::Value::String(r.to_owned())
    )
}

const GOOD_REFS: &[&str] = &[
    "Patient/1",
    "Patient/example",
    "Patient/a.b-C",
    "Media/1.2.840.11361907579238403408700.3.1.04.19970327150033",
    "Procedure/example/_history/1",
    "Patient/p/_history/v1.2-3",
    "Patient/1#c1",
    "#",
    "#p1",
    "#med0310",
    "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
    "urn:uuid:61EBE359-BFDC-4613-8BF2-C5E300945F0A",
    "urn:oid:1.2.840.113619",
    "urn:ietf:rfc:3986",
    "http://example.org/fhir/Patient/1",
    "https://example.org/fhir/Patient/1/_history/2",
    "HTTPS://EXAMPLE.ORG/fhir/Patient/1",
    "http://localhost:8080/Patient/1",
    "http://[::1]/fhir/Patient/1",
    "http://hl7.org/fhir/ValueSet/administrative-gender",
    "http://example.org/some/thing/that/is/not/fhir?x=1#y",
    "https://example.org",
    "mailto:someone@example.org",
    "ftp://example.org/doc",
];

const BAD_REFS: &[&str] = &[
    "Patient",
    "Patient/",
    "/Patient/1",
    "Patient//1",
    "Patient/1/",
    "patient/1",
    "Foo/1",
    "Resource/1",
    "DomainResource/1",
    "Patient/has space",
    " Patient/1",
    "Patient/1 ",
    "Patient/1\t",
    "Patient/1\n",
    "Patient/a_b",
    "Patient/a/b",
    "Patient/1/_history",
    "Patient/1/_history/",
    "Patient/1/_history/a/b",
    "Patient/1/history/2",
    "Patient/1/_history/a_b",
    "Patient/1#",
    "Patient/1#a#b",
    "#a b",
    "#a/b",
    "##",
    "urn:uuid:",
    "urn:uuid:61ebe359",
    "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a0",
    "urn:uuid:zzebe359-bfdc-4613-8bf2-c5e300945f0a",
    "urn:oid:",
    "urn:oid:3.1",
    "urn:oid:1.02",
    "urn:oid:1",
    "http:",
    "http:/example.org/Patient/1",
    "http:example.org",
    "https:///Patient/1",
    "http://",
    "http:// example.org/Patient/1",
    "urn:",
    "?x=1",
    "Patient?",
    "Foo?x=1",
];

#[test]
fn reference_syntax() {
    // The id pattern at its bounds.
    let id64 = "a".repeat(64);
    let id65 = "a".repeat(65);
    let long_ok = format!("Patient/{id64}");
    let long_bad = format!("Patient/{id65}");
    let long_vid = format!("Patient/1/_history/{id65}");
    for r in GOOD_REFS.iter().copied().chain([long_ok.as_str()]) {
        match v(&obs_ref(r)) {
            Ok(_) => {}
            Err(e) => panic!("{r:?} refused: {e:#?}"),
        }
    }
    for r in BAD_REFS
        .iter()
        .copied()
        .chain([long_bad.as_str(), long_vid.as_str()])
    {
        let e = rej(&obs_ref(r), "value", "Observation.subject.reference");
        assert!(
            e.iter().any(|i| i.message.starts_with("invalid reference")),
            "{r:?}: {e:#?}"
        );
        // Never echoes the value.
        assert!(
            r.len() < 10 || !e.iter().any(|i| i.message.contains(r.trim())),
            "{r:?} echoed"
        );
    }
    // Every concrete resource type is accepted as a relative reference (the type
    // list is the validator's own), in every reference position the schema has.
    for t in [
        "Patient",
        "Practitioner",
        "Organization",
        "Group",
        "Device",
        "Location",
    ] {
        ok(&obs_ref(&format!("{t}/x")));
    }
    ok(
        r##"{"resourceType":"Observation","status":"final","code":{"text":"x"},"performer":[{"reference":"Practitioner/1"},{"reference":"#p1"}],"contained":[{"resourceType":"Practitioner","id":"p1"}]}"##,
    );
    rej(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"performer":[{"reference":"Practitioner/1"},{"reference":"Practitioner/ 1"}]}"#,
        "value",
        "Observation.performer[1].reference",
    );
    // Inside an extension's valueReference, and a contained resource.
    rej(
        r#"{"resourceType":"Patient","extension":[{"url":"http://x.org/e","valueReference":{"reference":"Nope/1"}}]}"#,
        "value",
        "Patient.extension[0].valueReference.reference",
    );
    rej(
        r#"{"resourceType":"Patient","contained":[{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/"}}]}"#,
        "value",
        "Patient.contained[0].subject.reference",
    );
}

fn bundle_with(kind: &str, type_first: bool, r: &str) -> String {
    let entry = format!(
        r#"[{{"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{},"request":{{"method":"POST","url":"Observation"}}}}]"#,
        obs_ref(r)
    );
    if type_first {
        format!(r#"{{"resourceType":"Bundle","type":"{kind}","entry":{entry}}}"#)
    } else {
        format!(r#"{{"resourceType":"Bundle","entry":{entry},"type":"{kind}"}}"#)
    }
}

#[test]
fn conditional_references_only_in_transaction_or_batch_entries() {
    let conds = [
        "Patient?identifier=http://hospital.org/mrn|12345",
        "Patient?identifier=12345&birthdate=1970-01-01",
        "Organization?name=Acme",
    ];
    for c in conds {
        for type_first in [true, false] {
            for kind in ["transaction", "batch"] {
                let b = bundle_with(kind, type_first, c);
                if let Err(e) = v(&b) {
                    panic!("{kind} {c}: {e:#?}");
                }
            }
            for kind in [
                "collection",
                "document",
                "searchset",
                "transaction-response",
                "history",
                "message",
            ] {
                let b = bundle_with(kind, type_first, c);
                let e = v(&b).unwrap_err();
                assert!(
                    e.iter().any(
                        |i| i.expression == "Bundle.entry[0].resource.subject.reference"
                            && i.message.contains("conditional")
                    ),
                    "{kind} {type_first} {c}: {e:#?}"
                );
            }
        }
        // Outside any Bundle: a plain create/update may not search for its target.
        let e = rej(&obs_ref(c), "value", "Observation.subject.reference");
        assert!(e.iter().any(|i| i.message.contains("conditional")));
        // In a contained resource of a transaction entry: still in the entry.
        let contained = format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"resource":{{"resourceType":"Patient","contained":[{}]}},"request":{{"method":"POST","url":"Patient"}}}}]}}"#,
            obs_ref(c).replacen(
                r#""resourceType":"Observation","#,
                r#""resourceType":"Observation","id":"o","#,
                1
            )
        );
        if let Err(e) = v(&contained) {
            panic!("{c}: {e:#?}");
        }
        // A collection nested as an entry of a transaction: the innermost Bundle decides.
        let nested = format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"resource":{},"request":{{"method":"POST","url":"Bundle"}}}}]}}"#,
            bundle_with("collection", true, c)
        );
        assert!(v(&nested).is_err(), "{c}");
        // Wrapped in Parameters, a transaction Bundle is not being submitted.
        let wrapped = format!(
            r#"{{"resourceType":"Parameters","parameter":[{{"name":"b","resource":{}}}]}}"#,
            bundle_with("transaction", true, c)
        );
        assert!(v(&wrapped).is_err(), "{c}");
    }
}

#[track_caller]
fn rej(json: &str, code: &str, expr: &str) -> Vec<Issue> {
    has(v(json), code, expr)
}

fn pat(members: &str) -> String {
    format!(r#"{{"resourceType":"Patient","id":"p1",{members}}}"#)
}

#[test]
fn schema_loads_and_knows_types() {
    let s = schema().expect("schema");
    assert_eq!(
        s.types.iter().filter(|t| t.kind == Kind::Resource).count(),
        146
    );
    assert!(is_known_resource_type("Patient"));
    assert!(is_known_resource_type("Bundle"));
    assert!(is_known_resource_type("MedicinalProductPackaged"));
    assert!(!is_known_resource_type("DomainResource"));
    assert!(!is_known_resource_type("Resource"));
    assert!(!is_known_resource_type("SubscriptionStatus")); // R4B, not R4
    assert!(!is_known_resource_type("HumanName"));
    assert!(!is_known_resource_type("Bundle.entry"));
    assert!(!is_known_resource_type("Project")); // non-HL7 type
}

#[test]
fn minimal_and_summary() {
    let s = ok(r#"{"resourceType":"Patient"}"#);
    assert_eq!(s.resource_type, "Patient");
    assert_eq!(s.bundle_entries, 0);
    let s = ok(
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"fullUrl":"urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}]}"#,
    );
    assert_eq!((s.resource_type.as_str(), s.bundle_entries), ("Bundle", 2));
    // resourceType need not be first
    ok(r#"{"id":"x","active":true,"name":[{"family":"a"}],"resourceType":"Patient"}"#);
    // escaped member names are decoded
    ok(r#"{"resourceType":"Pati\u0065nt","\u0061ctive":true}"#);
}

// ----- 1. JSON well-formedness, duplicates, limits -----

#[test]
fn json_syntax_errors() {
    rej(
        r#"{"resourceType":"Patient","active":true,}"#,
        "structure",
        "Patient",
    );
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"x"},]}"#,
        "structure",
        "Patient.name",
    );
    rej(
        r#"{"resourceType":"Patient", /* c */ "active":true}"#,
        "structure",
        "Patient",
    );
    rej(
        "{\"resourceType\":\"Patient\", // c\n \"active\":true}",
        "structure",
        "Patient",
    );
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"a\x"}]}"#,
        "structure",
        "Patient.name[0].family",
    );
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"a\ud800"}]}"#,
        "structure",
        "Patient.name[0].family",
    );
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"a\udc00\ud800"}]}"#,
        "structure",
        "Patient.name[0].family",
    );
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"a\u12"}]}"#,
        "structure",
        "Patient.name[0].family",
    );
    rej(
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"a\tb\"}]}",
        "structure",
        "Patient.name[0].family",
    );
    rej(
        r#"{"resourceType":"Patient","multipleBirthInteger":01}"#,
        "structure",
        "Patient.multipleBirthInteger",
    );
    rej(
        r#"{"resourceType":"Patient","active":tru}"#,
        "structure",
        "Patient.active",
    );
    rej(
        r#"{"resourceType":"Patient","active":true} x"#,
        "structure",
        "Patient",
    );
    rej(
        r#"{"resourceType":"Patient","active":true"#,
        "structure",
        "Patient",
    );
    rej(
        r#"{"resourceType":"Patient" "active":true}"#,
        "structure",
        "Patient",
    );
    rej(
        r#"{"resourceType":"Patient",'active':true}"#,
        "structure",
        "Patient",
    );
    rej(
        "\u{feff}{\"resourceType\":\"Patient\"}",
        "structure",
        "Resource",
    );
    rej("", "structure", "Resource");
    // invalid UTF-8 inside a string
    let mut b = br#"{"resourceType":"Patient","name":[{"family":"#.to_vec();
    b.extend_from_slice(b"\"a\xff\xfeb\"}]}");
    has(
        validate_resource(&b, &Limits::default(), None),
        "structure",
        "Patient.name[0].family",
    );
    // overlong encoding / lone continuation byte
    let mut b = br#"{"resourceType":"Patient","name":[{"family":"#.to_vec();
    b.extend_from_slice(b"\"\xc0\xafx\"}]}");
    has(
        validate_resource(&b, &Limits::default(), None),
        "structure",
        "Patient.name[0].family",
    );
    // valid escapes incl. surrogate pairs are fine
    let s = ok(
        r#"{"resourceType":"Patient","name":[{"family":"\ud83d\ude00 \u00e9 \" \\ \/ \b\n\r\t x"}]}"#,
    );
    assert_eq!(
        s.warnings.len(),
        1,
        "\\b is a SHOULD-level control character warning"
    );
    // form feed is excluded by the R4 string regex
    rej(
        r#"{"resourceType":"Patient","name":[{"family":"a\fb"}]}"#,
        "value",
        "Patient.name[0].family",
    );
}

#[test]
fn duplicate_keys_rejected_at_any_depth() {
    rej(
        r#"{"resourceType":"Patient","active":true,"active":false}"#,
        "structure",
        "Patient.active",
    );
    rej(
        r#"{"resourceType":"Patient","resourceType":"Patient"}"#,
        "structure",
        "Patient.resourceType",
    );
    rej(
        &pat(r#""name":[{"family":"a","family":"b"}]"#),
        "structure",
        "Patient.name[0].family",
    );
    rej(
        &pat(r#""active":true,"\u0061ctive":true"#),
        "structure",
        "Patient.active",
    );
    rej(
        &pat(r#""contained":[{"resourceType":"Basic","code":{"text":"a","text":"b"}}]"#),
        "structure",
        "Patient.contained[0].code.text",
    );
    // inside an unknown member (generic JSON) too
    let e = rej(&pat(r#""foo":{"a":1,"a":2}"#), "structure", "Patient.foo");
    assert!(e.iter().any(|i| i.message.contains("duplicate")));
    // `_x` duplicates
    rej(
        &pat(r#""_birthDate":{"id":"a"},"_birthDate":{"id":"b"},"birthDate":"2000""#),
        "structure",
        "Patient.birthDate",
    );
}

#[test]
fn size_and_depth_limits() {
    let body = pat(r#""active":true"#);
    let lim = Limits {
        max_bytes: 10,
        ..Limits::default()
    };
    let e = validate_resource(body.as_bytes(), &lim, None).expect_err("too big");
    assert_eq!(
        (e[0].code, e[0].expression.as_str()),
        ("too-long", "Resource")
    );

    // deep arrays: no stack overflow, even with an absurd configured depth (hard cap applies)
    let deep = "[".repeat(200_000);
    for max_depth in [64, usize::MAX] {
        let lim = Limits {
            max_depth,
            ..Limits::default()
        };
        let e = validate_resource(deep.as_bytes(), &lim, None).expect_err("deep");
        assert!(e.iter().any(|i| i.code == "too-costly"), "{e:?}");
        let e = validate_json_patch(deep.as_bytes(), &lim).expect_err("deep");
        assert!(e.iter().any(|i| i.code == "too-costly"), "{e:?}");
    }
    // deep objects inside a resource
    let mut s = String::from(r#"{"resourceType":"Patient","foo":"#);
    s.push_str(&r#"{"a":"#.repeat(100_000));
    let e = v(&s).expect_err("deep");
    assert!(e.iter().any(|i| i.code == "too-costly"));
    // deep Questionnaire items: depth counted, limit honoured
    let mut q = String::from(r#"{"resourceType":"Questionnaire","status":"draft","item":"#);
    for _ in 0..40 {
        q.push_str(r#"[{"linkId":"1","type":"group","item":"#);
    }
    q.push_str(r#"[{"linkId":"x","type":"display"}]"#);
    for _ in 0..40 {
        q.push_str("}]");
    }
    q.push('}');
    let e = v(&q).expect_err("too deep for 64");
    assert!(e.iter().any(|i| i.code == "too-costly"));
    let lim = Limits {
        max_depth: 100,
        ..Limits::default()
    };
    assert!(validate_resource(q.as_bytes(), &lim, None).is_ok());
}

#[test]
fn max_issues_caps_the_list() {
    let members: Vec<String> = (0..500).map(|i| format!(r#""x{i}":1"#)).collect();
    let e = v(&pat(&members.join(","))).expect_err("bad");
    assert_eq!(e.len(), 100);
    let lim = Limits {
        max_issues: 7,
        ..Limits::default()
    };
    let e = validate_resource(pat(&members.join(",")).as_bytes(), &lim, None).expect_err("bad");
    assert_eq!(e.len(), 7);
    // all issues are reported, not just the first
    let e = v(&pat(r#""gender":"x","birthDate":"x","active":"x""#)).expect_err("bad");
    assert_eq!(e.len(), 3, "{e:#?}");
}

// ----- 2. top level -----

#[test]
fn top_level_shape_and_type() {
    rej(r#"[{"resourceType":"Patient"}]"#, "structure", "Resource");
    rej(r#""Patient""#, "structure", "Resource");
    rej(r#"{"id":"x"}"#, "required", "Resource");
    rej(r#"{"resourceType":1}"#, "required", "Resource");
    rej(r#"{"resourceType":"Foo"}"#, "not-supported", "Resource");
    rej(
        r#"{"resourceType":"DomainResource"}"#,
        "not-supported",
        "Resource",
    );
    rej(
        r#"{"resourceType":"SubscriptionStatus"}"#,
        "not-supported",
        "Resource",
    );
    rej(
        r#"{"resourceType":"HumanName","family":"x"}"#,
        "not-supported",
        "Resource",
    );
    // no PHI echo of weird type names
    let e = rej(
        r#"{"resourceType":"John Smith 1970-01-01"}"#,
        "not-supported",
        "Resource",
    );
    assert!(!e[0].message.contains("John"));
}

// ----- 3. member names -----

#[test]
fn unknown_members() {
    let e = rej(&pat(r#""foo":1"#), "structure", "Patient.foo");
    assert!(e[0].message.contains("Patient"));
    rej(
        &pat(r#""name":[{"familyName":"x"}]"#),
        "structure",
        "Patient.name[0].familyName",
    );
    rej(
        &pat(r#""contact":[{"nmae":{"family":"x"}}]"#),
        "structure",
        "Patient.contact[0].nmae",
    );
    rej(
        &pat(r#""name":[{"resourceType":"Patient"}]"#),
        "structure",
        "Patient.name[0].resourceType",
    );
    rej(
        &pat(r#""fhir_comments":["x"]"#),
        "structure",
        "Patient.fhir_comments",
    );
    // unknown member names are not echoed when they do not look like identifiers
    let e = rej(&pat(r#""John Smith":1"#), "structure", "Patient.?");
    assert!(!e[0].message.contains("John"));
}

#[test]
fn choice_types() {
    ok(&pat(r#""deceasedDateTime":"2015-02-14T13:42:00+10:00""#));
    rej(
        &pat(r#""deceasedString":"yes""#),
        "structure",
        "Patient.deceasedString",
    );
    rej(&pat(r#""deceased":true"#), "structure", "Patient.deceased");
    rej(
        &pat(r#""deceasedBoolean":true,"deceasedDateTime":"2015""#),
        "structure",
        "Patient.deceasedDateTime",
    );
    rej(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1},"valueString":"x"}"#,
        "structure",
        "Observation.valueString",
    );
    rej(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueMoney":{"value":1}}"#,
        "structure",
        "Observation.valueMoney",
    );
    // `_x` of a different variant than the value
    rej(
        &pat(r#""deceasedBoolean":true,"_deceasedDateTime":{"id":"a"}"#),
        "structure",
        "Patient.deceasedDateTime",
    );
    // value and `_value` of the same variant are fine
    ok(&pat(
        r#""deceasedBoolean":true,"_deceasedBoolean":{"id":"a"}"#,
    ));
    // SimpleQuantity in a choice keeps the Quantity suffix; comparator is not allowed there
    let mr = |dose: &str| {
        format!(
            r#"{{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationCodeableConcept":{{"text":"x"}},"subject":{{"reference":"Patient/1"}},"dosageInstruction":[{{"doseAndRate":[{{"doseQuantity":{dose}}}]}}]}}"#
        )
    };
    ok(&mr(r#"{"value":1,"unit":"mg"}"#));
    rej(
        &mr(r#"{"value":1,"comparator":"<"}"#),
        "structure",
        "MedicationRequest.dosageInstruction[0].doseAndRate[0].doseQuantity.comparator",
    );
}

#[test]
fn extensions() {
    ok(&pat(
        r#""extension":[{"url":"http://x.org/a","valueCodeableConcept":{"text":"x"}},{"url":"http://x.org/b","extension":[{"url":"c","valueString":"d"}]}]"#,
    ));
    rej(
        &pat(r#""extension":[{"valueString":"x"}]"#),
        "required",
        "Patient.extension[0].url",
    );
    rej(
        &pat(r#""extension":[{"url":"http://x.org/a","valueFoo":"x"}]"#),
        "structure",
        "Patient.extension[0].valueFoo",
    );
    rej(
        &pat(r#""extension":[{"url":"http://x.org/a","valueString":1}]"#),
        "value",
        "Patient.extension[0].valueString",
    );
    rej(
        &pat(
            r#""extension":[{"url":"http://x.org/a","valueString":"x","extension":[{"url":"b","valueString":"c"}]}]"#,
        ),
        "invariant",
        "Patient.extension[0]",
    );
    rej(
        &pat(r#""extension":[{"url":"http://x.org/a"}]"#),
        "invariant",
        "Patient.extension[0]",
    );
    rej(
        &pat(r#""extension":{"url":"http://x.org/a","valueString":"x"}"#),
        "structure",
        "Patient.extension",
    );
    rej(
        &pat(r#""modifierExtension":[{"url":"http://x.org/a"}]"#),
        "invariant",
        "Patient.modifierExtension[0]",
    );
    rej(
        &pat(r#""extension":[{"url":"http://x.org/a","extension":[{"url":"b","valueFoo":1}]}]"#),
        "structure",
        "Patient.extension[0].extension[0].valueFoo",
    );
    rej(
        &pat(r#""extension":[{"url":"has space","valueString":"x"}]"#),
        "value",
        "Patient.extension[0].url",
    );
}

#[test]
fn primitive_underscore_siblings() {
    ok(&pat(
        r#""birthDate":"1970","_birthDate":{"extension":[{"url":"http://x.org/t","valueDateTime":"1970-01-01T10:00:00Z"}]}"#,
    ));
    ok(&pat(
        r#""_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]}"#,
    ));
    ok(&pat(
        r#""name":[{"given":["a",null,"c"],"_given":[null,{"id":"x"},{"id":"y"}]}]"#,
    ));
    ok(&pat(r#""name":[{"_given":[{"id":"x"}]}]"#));
    rej(
        &pat(r#""_birthDate":{"foo":1}"#),
        "structure",
        "Patient.birthDate.foo",
    );
    rej(
        &pat(r#""_birthDate":"x""#),
        "structure",
        "Patient.birthDate",
    );
    rej(&pat(r#""_birthDate":{}"#), "structure", "Patient.birthDate");
    rej(
        &pat(r#""_birthDate":{"extension":[{"url":"u"}]}"#),
        "invariant",
        "Patient.birthDate.extension[0]",
    );
    rej(
        &pat(r#""name":[{"given":["a","b"],"_given":[null]}]"#),
        "invariant",
        "Patient.name[0].given",
    );
    rej(
        &pat(r#""name":[{"given":["a",null]}]"#),
        "invariant",
        "Patient.name[0].given",
    );
    rej(
        &pat(r#""name":[{"given":["a",null],"_given":[null,null]}]"#),
        "invariant",
        "Patient.name[0].given",
    );
    rej(
        &pat(r#""name":[{"_given":[null]}]"#),
        "invariant",
        "Patient.name[0].given",
    );
    rej(
        &pat(r#""name":[{"given":["a"],"_given":{"id":"x"}}]"#),
        "structure",
        "Patient.name[0].given",
    );
    rej(&pat(r#""_name":[{"id":"x"}]"#), "structure", "Patient.name");
    rej(&pat(r#""_foo":{"id":"x"}"#), "structure", "Patient._foo");
    // xhtml has no extensions
    rej(
        &pat(r#""text":{"status":"generated","div":"<div>x</div>","_div":{"id":"a"}}"#),
        "structure",
        "Patient.text.div",
    );
}

#[test]
fn content_references_resolve() {
    let q = |inner: &str| {
        format!(
            r#"{{"resourceType":"Questionnaire","status":"draft","item":[{{"linkId":"1","type":"group","item":[{inner}]}}]}}"#
        )
    };
    ok(&q(
        r#"{"linkId":"1.1","type":"string","item":[{"linkId":"1.1.1","type":"display"}]}"#,
    ));
    rej(
        &q(r#"{"linkId":"1.1","type":"string","foo":1}"#),
        "structure",
        "Questionnaire.item[0].item[0].foo",
    );
    rej(
        &q(r#"{"type":"string"}"#),
        "required",
        "Questionnaire.item[0].item[0].linkId",
    );
    ok(
        r#"{"resourceType":"Bundle","type":"searchset","entry":[{"link":[{"relation":"self","url":"http://x/1"}]}]}"#,
    );
    rej(
        r#"{"resourceType":"Bundle","type":"searchset","entry":[{"link":[{"url":"http://x/1"}]}]}"#,
        "required",
        "Bundle.entry[0].link[0].relation",
    );
    rej(
        r#"{"resourceType":"Parameters","parameter":[{"name":"a","part":[{"name":"b","part":[{"valueString":"x"}]}]}]}"#,
        "required",
        "Parameters.parameter[0].part[0].part[0].name",
    );
}

mod profiles;
mod values;
