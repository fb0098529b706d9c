//! Unit tests of the FHIR validator: primitives, cardinality, required bindings, nested
//! resources, empties and nulls, narrative.

use super::*;

// ----- 4. primitives -----

#[test]
fn primitive_json_types_and_ranges() {
    rej(&pat(r#""active":"true""#), "value", "Patient.active");
    rej(&pat(r#""active":1"#), "value", "Patient.active");
    rej(
        &pat(r#""multipleBirthInteger":1.5"#),
        "value",
        "Patient.multipleBirthInteger",
    );
    rej(
        &pat(r#""multipleBirthInteger":1e3"#),
        "value",
        "Patient.multipleBirthInteger",
    );
    rej(
        &pat(r#""multipleBirthInteger":"2""#),
        "value",
        "Patient.multipleBirthInteger",
    );
    rej(
        &pat(r#""multipleBirthInteger":2147483648"#),
        "value",
        "Patient.multipleBirthInteger",
    );
    rej(
        &pat(r#""multipleBirthInteger":-2147483649"#),
        "value",
        "Patient.multipleBirthInteger",
    );
    rej(
        &pat(r#""multipleBirthInteger":99999999999999999999999"#),
        "value",
        "Patient.multipleBirthInteger",
    );
    ok(&pat(r#""multipleBirthInteger":2147483647"#));
    ok(&pat(r#""multipleBirthInteger":-0"#));
    let appt = |m: &str| {
        format!(
            r#"{{"resourceType":"Appointment","status":"booked","participant":[{{"status":"accepted"}}],{m}}}"#
        )
    };
    ok(&appt(r#""minutesDuration":1,"priority":0"#));
    rej(
        &appt(r#""minutesDuration":0"#),
        "value",
        "Appointment.minutesDuration",
    );
    rej(
        &appt(r#""minutesDuration":-0"#),
        "value",
        "Appointment.minutesDuration",
    );
    rej(&appt(r#""priority":-1"#), "value", "Appointment.priority");
    rej(&appt(r#""priority":-0"#), "value", "Appointment.priority");
    rej(
        &appt(r#""priority":4294967295"#),
        "value",
        "Appointment.priority",
    );
    let obs = |val: &str| {
        format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{val}}}}}"#
        )
    };
    ok(&obs("-1.5e-3"));
    ok(&obs("0.000000000000000000000000000001"));
    rej(&obs(r#""1.5""#), "value", "Observation.valueQuantity.value");
    rej(&obs("true"), "value", "Observation.valueQuantity.value");
    rej(&obs("1."), "structure", "Observation.valueQuantity.value");
    rej(&obs(".5"), "structure", "Observation.valueQuantity.value");
    rej(&obs("+1"), "structure", "Observation.valueQuantity.value");
    rej(
        &pat(r#""birthDate":19700101"#),
        "value",
        "Patient.birthDate",
    );
    rej(
        &pat(r#""name":[{"family":{"x":1}}]"#),
        "value",
        "Patient.name[0].family",
    );
    rej(&pat(r#""name":"x""#), "structure", "Patient.name");
    rej(
        &pat(r#""managingOrganization":"Organization/1""#),
        "value",
        "Patient.managingOrganization",
    );
}

#[test]
fn primitive_formats_in_context() {
    rej(
        &pat(r#""birthDate":"1970-13-01""#),
        "value",
        "Patient.birthDate",
    );
    rej(
        &pat(r#""birthDate":"1970-01-01T10:00:00Z""#),
        "value",
        "Patient.birthDate",
    );
    rej(
        &pat(r#""deceasedDateTime":"2020-01-01T10:00:00""#),
        "value",
        "Patient.deceasedDateTime",
    );
    rej(
        &pat(r#""meta":{"lastUpdated":"2020-01-01""#).replace("01\"", "01\"}"),
        "value",
        "Patient.meta.lastUpdated",
    );
    rej(
        r#"{"resourceType":"Patient","id":"a_b"}"#,
        "value",
        "Patient.id",
    );
    rej(
        r#"{"resourceType":"Patient","id":" ab"}"#,
        "value",
        "Patient.id",
    );
    rej(
        &format!(r#"{{"resourceType":"Patient","id":"{}"}}"#, "a".repeat(65)),
        "value",
        "Patient.id",
    );
    ok(&format!(
        r#"{{"resourceType":"Patient","id":"{}"}}"#,
        "a".repeat(64)
    ));
    // Element.id is a plain string (no id regex)
    ok(&pat(r#""name":[{"id":"any thing_goes","family":"x"}]"#));
    rej(
        &pat(r#""identifier":[{"system":"http://x y"}]"#),
        "value",
        "Patient.identifier[0].system",
    );
    rej(&pat(r#""gender":" male""#), "value", "Patient.gender");
    rej(
        &pat(r#""maritalStatus":{"coding":[{"code":"a  b"}]}"#),
        "value",
        "Patient.maritalStatus.coding[0].code",
    );
    rej(
        &pat(r#""photo":[{"data":"abc"}]"#),
        "value",
        "Patient.photo[0].data",
    );
    rej(
        &pat(r#""photo":[{"url":"http://x/ y"}]"#),
        "value",
        "Patient.photo[0].url",
    );
    rej(
        &pat(r#""name":[{"family":"a\u000bb"}]"#),
        "value",
        "Patient.name[0].family",
    );
    rej(
        &pat(r#""meta":{"profile":["http://x y"]}"#),
        "value",
        "Patient.meta.profile[0]",
    );
    let p =
        |v: &str| format!(r#"{{"resourceType":"Parameters","parameter":[{{"name":"n",{v}}}]}}"#);
    rej(
        &p(r#""valueOid":"urn:oid:3.1""#),
        "value",
        "Parameters.parameter[0].valueOid",
    );
    rej(
        &p(r#""valueUuid":"urn:uuid:C757873D-EC9A-4326-A141-556F43239520""#),
        "value",
        "Parameters.parameter[0].valueUuid",
    );
    rej(
        &p(r#""valueTime":"24:00:00""#),
        "value",
        "Parameters.parameter[0].valueTime",
    );
    rej(
        &p(r#""valueInstant":"2020-01-01T10:00:00""#),
        "value",
        "Parameters.parameter[0].valueInstant",
    );
    rej(
        &p(r#""valueMarkdown":"a\fb""#),
        "value",
        "Parameters.parameter[0].valueMarkdown",
    );
    rej(
        &p(r#""valueUrl":"http://x.org/a b""#),
        "value",
        "Parameters.parameter[0].valueUrl",
    );
    rej(
        &p(r#""valueCanonical":"http://x.org/a\tb""#),
        "value",
        "Parameters.parameter[0].valueCanonical",
    );
    rej(
        &p(r#""valueBase64Binary":"aGVsbG8""#),
        "value",
        "Parameters.parameter[0].valueBase64Binary",
    );
    rej(
        &p(r#""valueDate":"0000""#),
        "value",
        "Parameters.parameter[0].valueDate",
    );
    // strings may have surrounding whitespace; whitespace-only is a warning, not an error
    let s = ok(&pat(r#""name":[{"family":"   "}]"#));
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(s.warnings[0].severity, Severity::Warning);
    assert_eq!(s.warnings[0].expression, "Patient.name[0].family");
    let s = ok(&pat(r#""name":[{"family":"a\u0000b"}]"#));
    assert_eq!(s.warnings.len(), 1);
}

#[test]
fn string_length_limit() {
    let big = "a".repeat(MAX_STRING_CHARS + 1);
    let body = pat(&format!(r#""name":[{{"family":"{big}"}}]"#));
    rej(&body, "too-long", "Patient.name[0].family");
    // 1 MiB characters of multi-byte text is allowed although it is > 1 MiB bytes
    let big = "é".repeat(MAX_STRING_CHARS);
    ok(&pat(&format!(r#""name":[{{"family":"{big}"}}]"#)));
}

#[test]
fn matcher_date_time_family() {
    for good in [
        "2018",
        "2018-01",
        "2018-12-31",
        "0001",
        "1000",
        "9999-01-01",
    ] {
        assert!(m_date(good.as_bytes()), "{good}");
        assert!(m_datetime(good.as_bytes()), "{good}");
    }
    for bad in [
        "0000",
        "18",
        "2018-1",
        "2018-00",
        "2018-13",
        "2018-01-00",
        "2018-01-32",
        "2018-01-01T",
        "2018/01/01",
        " 2018",
        "2018-01-1",
    ] {
        assert!(!m_date(bad.as_bytes()), "{bad}");
    }
    for good in [
        "2015-02-07T13:28:17-05:00",
        "2017-01-01T00:00:00Z",
        "2017-01-01T00:00:00.000001+14:00",
        "2017-01-01T23:59:60-13:59",
    ] {
        assert!(m_datetime(good.as_bytes()), "{good}");
        assert!(m_instant(good.as_bytes()), "{good}");
    }
    for bad in [
        "2017-01-01T00:00Z",
        "2017-01-01T00:00:00",
        "2017-01-01T24:00:00Z",
        "2017-01-01T00:00:00+14:01",
        "2017-01-01T00:00:00+1400",
        "2017-01-01T00:00:00.Z",
        "2017-01T00:00:00Z",
        "2017-01-01 00:00:00Z",
        "2017-01-01T00:00:00ZZ",
    ] {
        assert!(!m_datetime(bad.as_bytes()), "{bad}");
        assert!(!m_instant(bad.as_bytes()), "{bad}");
    }
    assert!(!m_instant(b"2017-01-01"));
    for good in ["00:00:00", "23:59:60", "12:30:00.5"] {
        assert!(m_time(good.as_bytes()), "{good}");
    }
    for bad in [
        "24:00:00",
        "12:60:00",
        "12:00",
        "12:00:00Z",
        "1:00:00",
        "12:00:00.",
    ] {
        assert!(!m_time(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn matcher_identifiers_and_codes() {
    assert!(m_id(b"a-B.9") && m_id(&[b'x'; 64]));
    assert!(!m_id(b"") && !m_id(&[b'x'; 65]) && !m_id(b"a_b") && !m_id(b"a b") && !m_id(b"a/b"));
    assert!(m_code(b"a") && m_code(b"a b") && m_code(b"<=") && m_code(b"a\tb"));
    assert!(
        !m_code(b"") && !m_code(b" a") && !m_code(b"a ") && !m_code(b"a  b") && !m_code(b"a \nb")
    );
    assert!(
        m_uri(b"http://x/y?z=1#f") && m_uri(b"urn:oid:1.2") && m_uri("http://é.org".as_bytes())
    );
    assert!(!m_uri(b"a b") && !m_uri(b"a\nb") && !m_uri(b"a\x0bb"));
    assert!(m_oid(b"urn:oid:1.2.3") && m_oid(b"urn:oid:2.0.10") && m_oid(b"urn:oid:0.0"));
    for bad in [
        "urn:oid:1",
        "urn:oid:3.1",
        "urn:oid:1.02",
        "urn:oid:1.",
        "urn:oid:1..2",
        "oid:1.2",
        "urn:oid:1.2a",
    ] {
        assert!(!m_oid(bad.as_bytes()), "{bad}");
    }
    assert!(m_uuid(b"urn:uuid:c757873d-ec9a-4326-a141-556f43239520"));
    for bad in [
        "c757873d-ec9a-4326-a141-556f43239520",
        "urn:uuid:c757873d-ec9a-4326-a141-556f4323952",
        "urn:uuid:c757873d-ec9a-4326-a141_556f43239520",
        "urn:uuid:g757873d-ec9a-4326-a141-556f43239520",
    ] {
        assert!(!m_uuid(bad.as_bytes()), "{bad}");
    }
    assert!(
        m_base64(b"aGVsbG8=")
            && m_base64(b" aGVs bG8= ")
            && m_base64(b"aGVs\r\nbG8=\n")
            && m_base64(b"====")
    );
    assert!(
        !m_base64(b"aGVsbG8") && !m_base64(b"aG Vs") && !m_base64(b"   ") && !m_base64(b"aGV*")
    );
    assert!(m_string(b"a\r\n\t b") && !m_string(b"a\x0cb"));
    assert!(
        m_xhtml_div(b"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>")
            && m_xhtml_div(b"<div/>")
    );
    assert!(
        !m_xhtml_div(b"<p>x</p>")
            && !m_xhtml_div(b"<divx>x</divx>")
            && !m_xhtml_div(b"x <div>x</div>")
            && !m_xhtml_div(b"<div")
    );
    assert!(m_json_pointer(b"") && m_json_pointer(b"/a/b~0~1") && m_json_pointer(b"/"));
    assert!(!m_json_pointer(b"a/b") && !m_json_pointer(b"/a~2") && !m_json_pointer(b"/a~"));
}

// ----- 5. cardinality -----

#[test]
fn cardinality() {
    rej(
        &pat(r#""name":{"family":"x"}"#),
        "structure",
        "Patient.name",
    );
    rej(&pat(r#""gender":["male"]"#), "structure", "Patient.gender");
    rej(
        &pat(r#""name":[{"given":"Peter"}]"#),
        "structure",
        "Patient.name[0].given",
    );
    rej(
        r#"{"resourceType":"Observation","code":{"text":"x"}}"#,
        "required",
        "Observation.status",
    );
    rej(
        r#"{"resourceType":"Observation","status":"final"}"#,
        "required",
        "Observation.code",
    );
    rej(r#"{"resourceType":"Bundle"}"#, "required", "Bundle.type");
    rej(
        r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"url":"Patient"}}]}"#,
        "required",
        "Bundle.entry[0].request.method",
    );
    rej(
        r#"{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/1"}}"#,
        "required",
        "MedicationRequest.medication[x]",
    );
    rej(
        r#"{"resourceType":"Patient","link":[{"type":"seealso"}]}"#,
        "required",
        "Patient.link[0].other",
    );
    // a required element that is present only through its `_` sibling counts as present
    ok(
        r#"{"resourceType":"Observation","_status":{"extension":[{"url":"http://x/y","valueString":"z"}]},"code":{"text":"x"}}"#,
    );
}

// ----- 6. required bindings -----

#[test]
fn required_bindings() {
    ok(&pat(r#""gender":"other""#));
    let e = rej(&pat(r#""gender":"mal""#), "code-invalid", "Patient.gender");
    assert!(!e[0].message.contains("mal\""), "value must not be echoed");
    rej(&pat(r#""gender":"Male""#), "code-invalid", "Patient.gender");
    rej(
        r#"{"resourceType":"Observation","status":"done","code":{"text":"x"}}"#,
        "code-invalid",
        "Observation.status",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"stuff"}"#,
        "code-invalid",
        "Bundle.type",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"FETCH","url":"Patient"}}]}"#,
        "code-invalid",
        "Bundle.entry[0].request.method",
    );
    rej(
        &pat(r#""telecom":[{"system":"pigeon","value":"x"}]"#),
        "code-invalid",
        "Patient.telecom[0].system",
    );
    rej(
        &pat(r#""text":{"status":"made-up","div":"<div>x</div>"}"#),
        "code-invalid",
        "Patient.text.status",
    );
    rej(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1,"comparator":"=="}}"#,
        "code-invalid",
        "Observation.valueQuantity.comparator",
    );
    // CodeableConcept/Coding codes are not bound here
    ok(&pat(
        r#""maritalStatus":{"coding":[{"system":"http://x","code":"ZZZ"}]}"#,
    ));
}

// ----- 7. nested resources -----

#[test]
fn nested_resources_validated_recursively() {
    rej(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","birthDate":"x"}]}"#,
        "value",
        "Observation.contained[0].birthDate",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient","birthDate":"nope"}}]}"#,
        "value",
        "Bundle.entry[1].resource.birthDate",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Nope"}}]}"#,
        "not-supported",
        "Bundle.entry[0].resource",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"id":"x"}}]}"#,
        "required",
        "Bundle.entry[0].resource",
    );
    rej(
        r#"{"resourceType":"Parameters","parameter":[{"name":"p","resource":{"resourceType":"Patient","gender":"x"}}]}"#,
        "code-invalid",
        "Parameters.parameter[0].resource.gender",
    );
    rej(
        &pat(
            r#""contained":[{"resourceType":"Organization","contained":[{"resourceType":"Patient"}]}]"#,
        ),
        "invariant",
        "Patient.contained[0].contained",
    );
    rej(
        r#"{"resourceType":"Bundle","type":"batch-response","entry":[{"response":{"status":"200","outcome":{"resourceType":"Patient"}}}]}"#,
        "structure",
        "Bundle.entry[0].response.outcome",
    );
    rej(
        &pat(r#""contained":[{"resourceType":"Basic","code":{"text":"x"},"foo":1}]"#),
        "structure",
        "Patient.contained[0].foo",
    );
    // nested bundle inside a bundle entry
    rej(
        r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","active":"yes"}}]}}]}"#,
        "value",
        "Bundle.entry[0].resource.entry[0].resource.active",
    );
}

// ----- 8. empties and nulls -----

#[test]
fn empty_values_and_nulls() {
    rej(&pat(r#""meta":{}"#), "structure", "Patient.meta");
    rej(&pat(r#""name":[]"#), "structure", "Patient.name");
    rej(&pat(r#""name":[{}]"#), "structure", "Patient.name[0]");
    rej(
        &pat(r#""name":[{"family":""}]"#),
        "value",
        "Patient.name[0].family",
    );
    rej(
        r#"{"resourceType":"Patient","id":""}"#,
        "value",
        "Patient.id",
    );
    rej(&pat(r#""active":null"#), "structure", "Patient.active");
    rej(&pat(r#""name":[null]"#), "structure", "Patient.name[0]");
    rej(
        &pat(r#""contained":[{}]"#),
        "required",
        "Patient.contained[0]",
    );
    rej(r#"{}"#, "required", "Resource");
}

// ----- 9. narrative -----

#[test]
fn narrative_div() {
    ok(&pat(
        r#""text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>x</p></div>"}"#,
    ));
    rej(
        &pat(r#""text":{"status":"generated","div":"<p>x</p>"}"#),
        "invariant",
        "Patient.text.div",
    );
    rej(
        &pat(r#""text":{"status":"generated","div":1}"#),
        "value",
        "Patient.text.div",
    );
    rej(
        &pat(r#""text":{"status":"generated"}"#),
        "required",
        "Patient.text.div",
    );
}
