//! Unit tests of the HL7 v2 message validator.

use super::super::samples::{self, msg};
use super::*;

/// Replaces the first occurrence of `from` (test messages are built so it is unique).
fn replace(m: &[u8], from: &str, to: &str) -> Vec<u8> {
    let from = from.as_bytes();
    let i = m
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{from:?} not in message"));
    let mut out = m[..i].to_vec();
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&m[i + from.len()..]);
    out
}

fn reject(m: &[u8]) -> Rejection {
    validate(m, &Rules::default()).unwrap_err()
}

#[track_caller]
fn assert_err(r: &Rejection, seg: &str, seq: usize, field: usize, comp: Option<usize>, code: u16) {
    assert!(
        r.errors.iter().any(|e| e.segment == seg
            && e.sequence == seq
            && e.field == field
            && e.component == comp
            && e.code == code),
        "expected {seg}^{seq}^{field} {comp:?} code {code}, got {:#?}",
        r.errors
    );
}

#[test]
fn valid_messages_pass() {
    let cases: [(Vec<u8>, &str, &str, &[u8]); 10] = [
        (samples::adt_a01(), "ADT^A01", "2.5.1", b"MSG00001"),
        (samples::adt_a04(), "ADT^A04", "2.5", b"A04-77"),
        (samples::adt_a08_v23(), "ADT^A08", "2.3", b"20001"),
        (samples::oru_r01(), "ORU^R01", "2.5.1", b"LAB-9001"),
        (samples::orm_o01(), "ORM^O01", "2.4", b"ORM1"),
        (samples::siu_s12(), "SIU^S12", "2.5.1", b"SIU1"),
        (samples::hash_delimited(), "ADT^A01", "2.5.1", b"HASH1"),
        (samples::latin1(), "ADT^A01", "2.5", b"L1"),
        (samples::v27_truncation(), "ADT^A08", "2.7", b"T27"),
        (samples::ack(), "ACK^A01", "2.5.1", b"ACK1"),
    ];
    for (m, ty, ver, ctl) in cases {
        let v = validate(&m, &Rules::default()).unwrap_or_else(|r| panic!("{ty}: {r:?}"));
        assert_eq!(v.message_type, ty);
        assert_eq!(v.version, ver);
        assert_eq!(v.control_id, ctl);
    }
    let m = samples::adt_a08_v23();
    let v = validate(&m, &Rules::default()).unwrap();
    assert_eq!(v.processing_id, ProcessingId::Training);
    assert_eq!(v.msg.segment_count(), 4);
}

#[test]
fn realistic_adt_a01_details() {
    let m = samples::adt_a01();
    let v = validate(&m, &Rules::default()).unwrap();
    let pid = v.msg.segment("PID").unwrap();
    assert_eq!(pid.field(3).unwrap().repetitions().count(), 3);
    assert_eq!(
        pid.field(5)
            .unwrap()
            .component(1)
            .unwrap()
            .unescape()
            .unwrap(),
        b"O'Brien&Kelly"
    );
    assert!(v.msg.segment("ZPD").is_some());
    assert_eq!(v.header.sending_facility_ns(), b"STMARYS");
}

#[test]
fn latin1_name_survives() {
    let m = samples::latin1();
    let v = validate(&m, &Rules::default()).unwrap();
    let fam = v
        .msg
        .segment("PID")
        .unwrap()
        .field(5)
        .unwrap()
        .component(1)
        .unwrap();
    assert_eq!(fam.raw(), b"Ren\xE9");
    assert!(
        std::str::from_utf8(&m).is_err(),
        "the sample really is not UTF-8"
    );
}

#[test]
fn crlf_needs_lenient_flag() {
    let m: Vec<u8> = samples::adt_a04()
        .split(|&b| b == b'\r')
        .filter(|s| !s.is_empty())
        .flat_map(|s| s.iter().copied().chain(*b"\r\n"))
        .collect();
    let r = reject(&m);
    assert_eq!(r.ack_code, AckCode::Error);
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].code, DATA_TYPE_ERROR);
    assert_eq!(r.errors[0].message, "line feed in message");
    // The `\n` opens what would be the second segment, so only its position is known.
    assert_eq!(
        (r.errors[0].segment.as_str(), r.errors[0].sequence),
        ("", 2)
    );
    assert!(r.header.is_some());
    let lenient = Rules {
        lenient_line_endings: true,
        ..Rules::default()
    };
    let v = validate(&m, &lenient).unwrap();
    assert_eq!(v.message_type, "ADT^A04");
}

#[test]
fn msh3_to_msh6_are_optional_in_every_version() {
    // Every shape of "no sending application", in every sample (v2.3 to v2.5.1), alone
    // and with MSH-4..6 empty too.
    let samples = [
        samples::adt_a01(),
        samples::adt_a04(),
        samples::adt_a08_v23(),
    ];
    for base in &samples {
        let msh_end = base.iter().position(|&b| b == b'\r').unwrap();
        let msh = std::str::from_utf8(&base[..msh_end]).unwrap();
        let fields: Vec<&str> = msh.split('|').collect();
        for empty3 in ["", "\"\"", "^^", "^", "&"] {
            for empty_rest in [false, true] {
                let mut f = fields.clone();
                f[2] = empty3;
                if empty_rest {
                    f[3] = "";
                    f[4] = "";
                    f[5] = "";
                }
                let new_msh = f.join("|");
                let mut m = new_msh.into_bytes();
                m.extend_from_slice(&base[msh_end..]);
                let v = validate(&m, &Rules::default())
                    .unwrap_or_else(|r| panic!("{empty3:?} {empty_rest}: {r:?}"));
                assert_eq!(v.header.sending_application, empty3.as_bytes());
            }
        }
    }
    // Still bounded: MSH-3 may not repeat.
    let r = reject(&replace(&samples::adt_a04(), "|REG|", "|A~B|"));
    assert!(r.errors.iter().any(|e| e.segment == "MSH" && e.field == 3));
}

#[test]
fn msh7_required_and_typed() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|202403150830||", "|||"));
    assert_eq!(r.ack_code, AckCode::Error);
    assert_err(&r, "MSH", 1, 7, None, REQUIRED_FIELD_MISSING);
    for bad in [
        "2024131508",
        "20240230",
        "20230229",
        "20240431",
        "2024031524",
        "202403152360",
        "20240315235960",
        "2024031",
        "20240315.5",
        "20240315120000.12345",
        "20240315120000+1",
        "20240315+1500",
        "2024-03-15",
        "20240315120000+0160",
        "x",
    ] {
        let r = reject(&replace(&base, "|202403150830|", &format!("|{bad}|")));
        assert_err(&r, "MSH", 1, 7, Some(1), DATA_TYPE_ERROR);
    }
    for good in [
        "2024",
        "202403",
        "20240229",
        "20240315235959.9999-1200",
        "20240315+1400",
        "202403150830^M",
    ] {
        assert!(
            validate(
                &replace(&base, "|202403150830|", &format!("|{good}|")),
                &Rules::default()
            )
            .is_ok(),
            "{good}"
        );
    }
}

#[test]
fn msh9_required_well_formed_and_allowed() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|ADT^A04^ADT_A01|", "||"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 9, None, REQUIRED_FIELD_MISSING);
    let r = reject(&replace(&base, "ADT^A04^ADT_A01", "adt^A04"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 9, Some(1), UNSUPPORTED_MESSAGE_TYPE);
    let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A4"));
    assert_err(&r, "MSH", 1, 9, Some(2), UNSUPPORTED_EVENT_CODE);
    let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A04^adt a01"));
    assert_err(&r, "MSH", 1, 9, Some(3), UNSUPPORTED_MESSAGE_TYPE);
    let r = reject(&replace(&base, "ADT^A04^ADT_A01", "ADT^A04~ORU^R01"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 9, None, DATA_TYPE_ERROR);

    let rules = Rules {
        allowed_message_types: vec![
            "ADT^A01".into(),
            "ADT^A08".into(),
            "ORU^*".into(),
            "ACK".into(),
        ],
        ..Rules::default()
    };
    let r = validate(&base, &rules).unwrap_err();
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 9, Some(2), UNSUPPORTED_EVENT_CODE);
    let r = validate(&samples::siu_s12(), &rules).unwrap_err();
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 9, Some(1), UNSUPPORTED_MESSAGE_TYPE);
    for ok in [
        samples::adt_a01(),
        samples::adt_a08_v23(),
        samples::oru_r01(),
        samples::ack(),
    ] {
        validate(&ok, &rules).unwrap();
    }
}

#[test]
fn msh10_required() {
    let r = reject(&replace(&samples::adt_a04(), "|A04-77|", "||"));
    assert_eq!(r.ack_code, AckCode::Error);
    assert_err(&r, "MSH", 1, 10, None, REQUIRED_FIELD_MISSING);
    let long = "C".repeat(200);
    let r = reject(&replace(
        &samples::adt_a04(),
        "|A04-77|",
        &format!("|{long}|"),
    ));
    assert_err(&r, "MSH", 1, 10, None, DATA_TYPE_ERROR);
}

#[test]
fn msh11_required_and_in_table() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|P|2.5", "||2.5"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 11, None, REQUIRED_FIELD_MISSING);
    let r = reject(&replace(&base, "|P|2.5", "|X|2.5"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 11, Some(1), UNSUPPORTED_PROCESSING_ID);
    let r = reject(&replace(&base, "|P|2.5", "|P^Q|2.5"));
    assert_err(&r, "MSH", 1, 11, Some(2), UNSUPPORTED_PROCESSING_ID);
    let m = replace(&base, "|P|2.5", "|D^T|2.5");
    let v = validate(&m, &Rules::default()).unwrap();
    assert_eq!(v.processing_id, ProcessingId::Debugging);
}

#[test]
fn msh12_required_well_formed_and_allowed() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|P|2.5\r", "|P|\r"));
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 12, None, REQUIRED_FIELD_MISSING);
    // Absent entirely (MSH ends after MSH-11).
    let r = reject(&replace(&base, "|P|2.5\r", "|P\r"));
    assert_err(&r, "MSH", 1, 12, None, REQUIRED_FIELD_MISSING);
    for bad in ["2.x", "v2.5", "2..5", "2.5.", "12345678901"] {
        let r = reject(&replace(&base, "|P|2.5\r", &format!("|P|{bad}\r")));
        assert_eq!(r.ack_code, AckCode::Reject);
        assert_err(&r, "MSH", 1, 12, Some(1), UNSUPPORTED_VERSION_ID);
    }
    let rules = Rules {
        allowed_versions: vec!["2.5.1".into(), "2.5".into()],
        ..Rules::default()
    };
    validate(&base, &rules).unwrap();
    validate(&samples::adt_a01(), &rules).unwrap();
    let r = validate(&samples::adt_a08_v23(), &rules).unwrap_err();
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 12, Some(1), UNSUPPORTED_VERSION_ID);
    // VID with components: only component 1 is the version.
    validate(&replace(&base, "|P|2.5\r", "|P|2.5^CHE\r"), &rules).unwrap();
}

#[test]
fn required_segments_per_type() {
    let cases = [
        (
            replace(
                &samples::adt_a01(),
                "EVN|A01|20240315083000|||JSMITH^Smith^John\r",
                "",
            ),
            "EVN",
        ),
        (
            replace(&samples::adt_a04(), "PV1||O|OPD^^^CLINIC\r", ""),
            "PV1",
        ),
        (
            replace(
                &samples::adt_a08_v23(),
                "PID|||A100^^^GEN||Smith^John^Q^Jr||\"\"|M\r",
                "",
            ),
            "PID",
        ),
        (
            replace(
                &samples::oru_r01(),
                "OBR|1|ORD1|FIL1|24331-1^Lipid panel^LN|||20240315090000\r",
                "",
            ),
            "OBR",
        ),
        (
            msg(&[
                r"MSH|^~\&|LAB|C||W|20240315||ORU^R01|1|P|2.5",
                "PID|||1||A^B",
                "OBR|1",
            ]),
            "OBX",
        ),
        (
            replace(
                &samples::orm_o01(),
                "ORC|NW|ORD448|||||^^^20240315120000\r",
                "",
            ),
            "ORC",
        ),
        (
            replace(
                &samples::siu_s12(),
                "SCH|1001|2002|||||CHECKUP^Annual checkup|||30|min\r",
                "",
            ),
            "SCH",
        ),
        (replace(&samples::ack(), "MSA|AA|MSG00001\r", ""), "MSA"),
    ];
    for (m, missing) in cases {
        let r = reject(&m);
        assert_eq!(r.ack_code, AckCode::Error);
        assert_err(&r, missing, 1, 0, None, SEGMENT_SEQUENCE_ERROR);
    }
    // Unknown types only need MSH.
    validate(
        &msg(&[r"MSH|^~\&|A|B|C|D|20240315||MDM^T02|9|P|2.5"]),
        &Rules::default(),
    )
    .unwrap();
}

#[test]
fn required_segments_config_overrides_defaults() {
    let no_evn_pv1 = msg(&[
        r"MSH|^~\&|A|B|C|D|20240315||ADT^A01|9|P|2.5",
        "PID|||1||Doe^J",
    ]);
    assert!(validate(&no_evn_pv1, &Rules::default()).is_err());
    let rules = Rules {
        required_segments: vec![("ADT^A01".into(), vec!["MSH".into(), "PID".into()])],
        ..Rules::default()
    };
    validate(&no_evn_pv1, &rules).unwrap();
    let rules = Rules {
        required_segments: vec![("ADT^*".into(), vec!["ZPD".into()])],
        ..Rules::default()
    };
    validate(&samples::adt_a01(), &rules).unwrap();
    let r = validate(&samples::adt_a04(), &rules).unwrap_err();
    assert_err(&r, "ZPD", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
}

#[test]
fn pid3_patient_identifier() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|55501^^^CLINIC^MR|", "||"));
    assert_eq!(r.ack_code, AckCode::Error);
    assert_err(&r, "PID", 1, 3, None, REQUIRED_FIELD_MISSING);
    let r = reject(&replace(
        &base,
        "|55501^^^CLINIC^MR|",
        "|^^^CLINIC^MR~\"\"^^^X|",
    ));
    assert_err(&r, "PID", 1, 3, Some(1), REQUIRED_FIELD_MISSING);
    validate(
        &replace(&base, "|55501^^^CLINIC^MR|", "|^^^CLINIC^MR~77^^^X|"),
        &Rules::default(),
    )
    .unwrap();
    let long = "9".repeat(251);
    let r = reject(&replace(&base, "|55501^^^CLINIC^MR|", &format!("|{long}|")));
    assert_err(&r, "PID", 1, 3, None, DATA_TYPE_ERROR);
}

#[test]
fn pid5_patient_name() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|Doe^Jane|", "||"));
    assert_err(&r, "PID", 1, 5, None, REQUIRED_FIELD_MISSING);
    let r = reject(&replace(&base, "|Doe^Jane|", "|^^^^Dr~&van|"));
    assert_err(&r, "PID", 1, 5, Some(1), REQUIRED_FIELD_MISSING);
    validate(&replace(&base, "|Doe^Jane|", "|^Jane|"), &Rules::default()).unwrap();
    validate(
        &replace(&base, "|Doe^Jane|", "|~Doe&van|"),
        &Rules::default(),
    )
    .unwrap();
}

#[test]
fn pid7_birth_date() {
    let base = samples::adt_a04();
    let r = reject(&replace(&base, "|19751231|", "|19751301|"));
    assert_eq!(r.ack_code, AckCode::Error);
    assert_err(&r, "PID", 1, 7, Some(1), DATA_TYPE_ERROR);
    validate(&replace(&base, "|19751231|", "||"), &Rules::default()).unwrap();
    validate(&replace(&base, "|19751231|", "|\"\"|"), &Rules::default()).unwrap();
}

#[test]
fn second_pid_is_located_by_occurrence() {
    let m = msg(&[
        r"MSH|^~\&|A|B|C|D|20240315||ADT^A17|9|P|2.5",
        "EVN|A17",
        "PID|||1||Doe^J",
        "PV1||I",
        "PID|||2||Roe^K||1999",
        "PV1||I",
        "PID|||3||^^^^Dr",
    ]);
    let r = reject(&m);
    assert_eq!(r.errors.len(), 1);
    assert_err(&r, "PID", 3, 5, Some(1), REQUIRED_FIELD_MISSING);
}

#[test]
fn malformed_escapes_are_located() {
    let base = samples::adt_a01();
    let r = reject(&replace(
        &base,
        r"12 Main St\S\Apt 4^^Springfield",
        r"12 Main St^^Spr\Qingfield",
    ));
    assert_eq!(r.ack_code, AckCode::Error);
    assert_eq!(r.errors.len(), 1);
    assert_err(&r, "PID", 1, 11, Some(3), DATA_TYPE_ERROR);
    let r = reject(&replace(&base, "ZZ1|", r"ZZ1|x^y&unterminated\"));
    assert_err(&r, "ZZ1", 1, 1, Some(2), DATA_TYPE_ERROR);
    // An escape in MSH-10 is checked too (MSH-1/2 are exempt).
    let r = reject(&replace(&base, "|MSG00001|", r"|MSG\X1\|"));
    assert_err(&r, "MSH", 1, 10, Some(1), DATA_TYPE_ERROR);
}

#[test]
fn collects_several_errors_in_order() {
    let m = msg(&[
        r"MSH|^~\&||B|C|D|20241301||ADT^A04||P|2.5",
        "EVN|A04",
        "PID|||||Doe^J||19990230",
        r"PV1||I|\bad\",
    ]);
    let r = reject(&m);
    assert_eq!(r.ack_code, AckCode::Error);
    let got: Vec<_> = r
        .errors
        .iter()
        .map(|e| (e.segment.as_str(), e.field, e.code))
        .collect();
    assert_eq!(
        got,
        [
            ("MSH", 7, 102),
            ("MSH", 10, 101),
            ("PID", 3, 101),
            ("PID", 7, 102),
            ("PV1", 3, 102)
        ]
    );
}

#[test]
fn error_list_is_bounded() {
    let mut lines = vec![
        r"MSH|^~\&||B|C|D|x||ADT^A04||P|2.5",
        "EVN|A04",
        "PID|||1||A^B",
        "PV1||I",
    ];
    let bad = r"ZBD|\Q\|\Q\|\Q\|\Q\";
    lines.extend(std::iter::repeat_n(bad, 5));
    let m = msg(&lines);
    let r = reject(&m);
    assert_eq!(r.errors.len(), MAX_ERRORS);
    assert_eq!(r.errors[0].field, 7);
    assert_eq!(r.errors[9].segment, "ZBD");
    assert_eq!(r.errors[9].sequence, 2);
}

#[test]
fn framing_errors_become_rejections() {
    // Body error: header still usable → AE, header kept for the NAK.
    let m = replace(&samples::adt_a01(), "Springfield", "Spring\0field");
    let r = reject(&m);
    assert_eq!(r.ack_code, AckCode::Error);
    assert_eq!(
        r.errors,
        [ErrorLoc {
            segment: "PID".into(),
            sequence: 1,
            field: 11,
            component: None,
            code: DATA_TYPE_ERROR,
            message: "forbidden control byte",
        }]
    );
    assert_eq!(r.header.unwrap().control_id, b"MSG00001");

    let r = reject(&replace(&samples::adt_a01(), "ZPD|", "zpd|"));
    assert_eq!(r.errors[0].segment, "");
    assert_eq!(r.errors[0].sequence, 5);
    assert_eq!(r.errors[0].code, SEGMENT_SEQUENCE_ERROR);

    let r = reject(&replace(&samples::adt_a01(), "EVN|A01|", "MSH|^~\\&|"));
    assert_err(&r, "MSH", 2, 0, None, SEGMENT_SEQUENCE_ERROR);

    // Header unusable → AR, no header.
    let r = reject(b"HELLO\r");
    assert_eq!(r.ack_code, AckCode::Reject);
    assert!(r.header.is_none());
    assert_err(&r, "MSH", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
    let r = reject(b"MSH|^^\\&|A\r");
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 2, None, DATA_TYPE_ERROR);
    let r = reject(b"");
    assert_eq!(r.ack_code, AckCode::Reject);
    let r = reject(b"MSH\rPID|1\r");
    assert_eq!(r.ack_code, AckCode::Reject);
    assert_err(&r, "MSH", 1, 1, None, REQUIRED_FIELD_MISSING);

    let rules = Rules {
        max_segments: 3,
        ..Rules::default()
    };
    let r = validate(&samples::adt_a01(), &rules).unwrap_err();
    assert_eq!(r.ack_code, AckCode::Error);
    assert_err(&r, "PV1", 1, 0, None, SEGMENT_SEQUENCE_ERROR);
    let rules = Rules {
        max_field_len: 40,
        ..Rules::default()
    };
    let r = validate(&samples::adt_a01(), &rules).unwrap_err();
    assert_err(&r, "PID", 1, 3, None, DATA_TYPE_ERROR);
}

#[test]
fn rejection_display_has_no_content() {
    let r = reject(&replace(&samples::adt_a04(), "|Doe^Jane|", "|^^^^Dr|"));
    let s = r.to_string();
    assert_eq!(
        s,
        "HL7 message rejected (AE), 1 error(s); first: 101 patient name missing at PID[1]-5.1"
    );
}

#[test]
fn dtm_grammar() {
    for ok in [
        "2024",
        "202402",
        "20240229",
        "2000022923",
        "200002292359",
        "20000229235959",
        "20000229235959.1",
        "19991231235959.1234+0000",
        "2024-0530",
    ] {
        assert!(is_valid_dtm(ok.as_bytes()), "{ok}");
    }
    for bad in [
        "",
        "202",
        "20241",
        "19000229",
        "20240001",
        "20240100",
        "2024010100.5",
        "2024+",
        "2024+01000",
        "+0100",
        "2024 01",
        "٢٠٢٤",
    ] {
        assert!(!is_valid_dtm(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn type_patterns() {
    assert!(type_matches("ADT^A01", "ADT", "A01"));
    assert!(!type_matches("ADT^A01", "ADT", "A02"));
    assert!(type_matches("ADT^*", "ADT", "A02"));
    assert!(type_matches("ADT", "ADT", "A02"));
    assert!(type_matches("ADT^A01^ADT_A01", "ADT", "A01"));
    assert!(!type_matches("ADT^*", "ORU", "R01"));
}
