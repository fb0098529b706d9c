//! Unit tests of the ER7 parser.

use super::super::samples::{self, msg};
use super::*;

fn parse(b: &[u8]) -> Result<Message<'_>, ParseError> {
    Message::parse(b, &ParseOptions::default())
}

fn kind(b: &[u8]) -> ParseErrorKind {
    parse(b).unwrap_err().kind
}

#[test]
fn msh_numbering_quirk() {
    let m = samples::adt_a01();
    let msg = parse(&m).unwrap();
    let msh = msg.msh();
    assert_eq!(msh.field(1).unwrap().raw(), b"|");
    assert_eq!(msh.field(2).unwrap().raw(), br"^~\&");
    // MSH-2 contains the delimiters but is never split or unescaped.
    assert_eq!(msh.field(2).unwrap().repetitions().count(), 1);
    assert_eq!(msh.field(2).unwrap().component(1).unwrap().raw(), br"^~\&");
    assert_eq!(msh.field(2).unwrap().unescape().unwrap(), br"^~\&");
    assert_eq!(msh.field(3).unwrap().raw(), b"EPICADT");
    assert_eq!(msh.field(9).unwrap().raw(), b"ADT^A01^ADT_A01");
    assert_eq!(msh.field(10).unwrap().raw(), b"MSG00001");
    assert_eq!(msh.field(18).unwrap().raw(), b"UNICODE UTF-8");
    assert!(msh.field(19).is_none());
    assert!(msh.field(0).is_none());
    assert_eq!(msh.field_count(), 18);
    let nums: Vec<usize> = msh.fields().map(|(n, _)| n).collect();
    assert_eq!(nums, (1..=18).collect::<Vec<_>>());
}

#[test]
fn nested_access_is_one_based() {
    let m = samples::adt_a01();
    let msg = parse(&m).unwrap();
    let pid = msg.segment("PID").unwrap();
    assert_eq!(pid.id(), "PID");
    assert_eq!(pid.field(1).unwrap().raw(), b"1");
    assert!(pid.field(2).unwrap().is_empty());
    let pid3 = pid.field(3).unwrap();
    assert_eq!(pid3.repetitions().count(), 3);
    let r2 = pid3.repetition(2).unwrap();
    assert_eq!(r2.component(1).unwrap().raw(), b"987-65-4321");
    assert_eq!(r2.component(5).unwrap().raw(), b"SS");
    assert!(r2.component(6).is_none());
    assert!(pid3.repetition(4).is_none());
    assert!(pid3.repetition(0).is_none());
    let name = pid.field(5).unwrap();
    assert_eq!(name.component(1).unwrap().raw(), br"O'Brien\T\Kelly");
    assert_eq!(
        name.component(1).unwrap().unescape().unwrap(),
        b"O'Brien&Kelly"
    );
    let zpd = msg.segment("ZPD").unwrap();
    let f2 = zpd.field(2).unwrap();
    assert_eq!(f2.repetitions().count(), 2);
    let c1 = f2.component(1).unwrap();
    assert_eq!(c1.subcomponent(1).unwrap(), b"x");
    assert_eq!(c1.subcomponent(2).unwrap(), b"y");
    assert!(c1.subcomponent(3).is_none());
    assert_eq!(f2.repetition(2).unwrap().raw(), b"z");
}

#[test]
fn segments_by_id_and_first_occurrence() {
    let m = samples::oru_r01();
    let msg = parse(&m).unwrap();
    assert_eq!(msg.segment_count(), 7);
    let obx: Vec<_> = msg.segments_by_id("OBX").collect();
    assert_eq!(obx.len(), 4);
    assert_eq!(obx[2].field(1).unwrap().raw(), b"3");
    assert_eq!(msg.segment("OBX").unwrap().field(1).unwrap().raw(), b"1");
    assert!(msg.segment("NTE").is_none());
    let ids: Vec<_> = msg.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "OBR", "OBX", "OBX", "OBX", "OBX"]);
}

#[test]
fn id_only_segment_and_trailing_separator() {
    let m = msg(&[r"MSH|^~\&|A", "ZZZ", "ZZY|"]);
    let msg = parse(&m).unwrap();
    let z = msg.segment("ZZZ").unwrap();
    assert_eq!(z.field_count(), 0);
    assert!(z.field(1).is_none());
    let y = msg.segment("ZZY").unwrap();
    assert_eq!(y.field_count(), 1);
    assert!(y.field(1).unwrap().is_empty());
}

#[test]
fn unescape_sequences() {
    let d = Delimiters::default();
    assert_eq!(
        unescape(br"a\F\b\S\c\T\d\R\e\E\f", &d).unwrap(),
        br"a|b^c&d~e\f"
    );
    assert_eq!(unescape(br"\X41C3A9\", &d).unwrap(), b"A\xC3\xA9");
    assert_eq!(unescape(br"\xff\", &d).unwrap_err(), EscapeError::Unknown);
    assert_eq!(unescape(br"\Xff\", &d).unwrap(), b"\xff");
    assert_eq!(unescape(br"l1\.br\l2", &d).unwrap(), b"l1\nl2");
    assert_eq!(unescape(br"\H\bold\N\", &d).unwrap(), b"bold");
    assert_eq!(unescape(b"plain", &d).unwrap(), b"plain");
    assert_eq!(
        unescape(br"a\Fb", &d).unwrap_err(),
        EscapeError::Unterminated
    );
    assert_eq!(
        unescape(br"tail\", &d).unwrap_err(),
        EscapeError::Unterminated
    );
    assert_eq!(unescape(br"\Z12\", &d).unwrap_err(), EscapeError::Unknown);
    assert_eq!(unescape(br"\\", &d).unwrap_err(), EscapeError::Unknown);
    assert_eq!(unescape(br"\.sp\", &d).unwrap_err(), EscapeError::Unknown);
    assert_eq!(unescape(br"\X\", &d).unwrap_err(), EscapeError::BadHex);
    assert_eq!(unescape(br"\X123\", &d).unwrap_err(), EscapeError::BadHex);
    assert_eq!(unescape(br"\XG1\", &d).unwrap_err(), EscapeError::BadHex);
    // \P\ exists only when a truncation character was declared.
    assert_eq!(unescape(br"\P\", &d).unwrap_err(), EscapeError::Unknown);
    let d27 = Delimiters {
        truncation: Some(b'#'),
        ..d
    };
    assert_eq!(unescape(br"\P\", &d27).unwrap(), b"#");
    assert!(check_escapes(br"ok\E\ok", &d).is_ok());
    assert!(check_escapes(br"bad\Q\", &d).is_err());
}

#[test]
fn custom_delimiters() {
    let m = samples::hash_delimited();
    let msg = parse(&m).unwrap();
    let d = msg.delimiters();
    assert_eq!(d.field, b'#');
    let msh = msg.msh();
    assert_eq!(msh.field(1).unwrap().raw(), b"#");
    assert_eq!(msh.field(3).unwrap().raw(), b"APP|X");
    assert_eq!(msh.field(10).unwrap().raw(), b"HASH1");
    let pid = msg.segment("PID").unwrap();
    assert_eq!(
        pid.field(5).unwrap().component(1).unwrap().raw(),
        b"Pipe|Name"
    );
    // Escape sequences map to the declared characters, not to the defaults.
    assert_eq!(unescape(br"\F\", &d).unwrap(), b"#");
}

#[test]
fn latin1_bytes_pass_through() {
    let m = samples::latin1();
    let msg = parse(&m).unwrap();
    let family = msg
        .segment("PID")
        .unwrap()
        .field(5)
        .unwrap()
        .component(1)
        .unwrap();
    assert_eq!(family.raw(), b"Ren\xE9");
    assert_eq!(header(&m).unwrap().charset(), Charset::Latin1);
}

#[test]
fn truncation_character_is_fifth_encoding_char() {
    let m = samples::v27_truncation();
    let msg = parse(&m).unwrap();
    assert_eq!(msg.delimiters().truncation, Some(b'#'));
    assert_eq!(msg.msh().field(2).unwrap().raw(), br"^~\&#");
    assert_eq!(msg.msh().field(3).unwrap().raw(), b"APP");
}

#[test]
fn rejects_bad_starts() {
    assert_eq!(kind(b""), ParseErrorKind::Empty);
    assert_eq!(kind(b"PID|1\r"), ParseErrorKind::NotMsh);
    assert_eq!(kind(b"msh|^~\\&|A\r"), ParseErrorKind::NotMsh);
    assert_eq!(kind(b"\rMSH|^~\\&|A\r"), ParseErrorKind::NotMsh);
    assert_eq!(kind(b"MSH"), ParseErrorKind::MshTooShort);
    assert_eq!(kind(b"MSH\rPID|1"), ParseErrorKind::MshTooShort);
    let e = parse(b"MSH").unwrap_err();
    assert_eq!((e.segment_id, e.field), (Some(*b"MSH"), 1));
}

#[test]
fn rejects_bad_encoding_characters() {
    for bad in [
        &b"MSH|^~\\^|A"[..], // duplicate
        b"MSH|^~|&|A",       // cut short by the field separator
        b"MSH|^~\\A|A",      // alphanumeric
        b"MSH1^~\\&1A",      // alphanumeric field separator
        b"MSH|^~\\|A",       // too short
        b"MSH|^~\\&#!|A",    // too long
        b"MSH| ~\\&|A",      // space
        b"MSH|^~\\\xe9|A",   // 8-bit
        b"MSH|",
        b"MSH|^~\\&^|A", // truncation duplicates component
    ] {
        let e = parse(bad).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadEncodingChars, "{bad:?}");
        assert_eq!(e.field, 2);
    }
    assert!(parse(b"MSH|^~\\&").is_ok());
}

#[test]
fn rejects_bad_segment_ids() {
    for (bad, index) in [
        (msg(&[r"MSH|^~\&|A", "pid|1"]), 1),
        (msg(&[r"MSH|^~\&|A", "PI|1"]), 1),
        (msg(&[r"MSH|^~\&|A", "PIDX|1"]), 1),
        (msg(&[r"MSH|^~\&|A", "EVN|1", "P D|1"]), 2),
        (msg(&[r"MSH|^~\&|A", "PI"]), 1),
    ] {
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadSegmentId);
        assert_eq!(e.segment_index, index);
        assert_eq!(e.segment_id, None, "malformed ids are never echoed");
    }
}

#[test]
fn empty_segments() {
    assert!(parse(b"MSH|^~\\&|A\r").is_ok());
    assert!(parse(b"MSH|^~\\&|A").is_ok());
    let e = parse(b"MSH|^~\\&|A\r\rPID|1\r").unwrap_err();
    assert_eq!((e.kind, e.segment_index), (ParseErrorKind::EmptySegment, 1));
    assert_eq!(kind(b"MSH|^~\\&|A\r\r"), ParseErrorKind::EmptySegment);
}

#[test]
fn duplicate_msh_rejected() {
    let m = msg(&[r"MSH|^~\&|A", "PID|1", r"MSH|^~\&|B"]);
    let e = parse(&m).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::DuplicateMsh);
    assert_eq!(
        (e.segment_id, e.occurrence, e.segment_index),
        (Some(*b"MSH"), 2, 2)
    );
}

#[test]
fn forbidden_bytes_are_located() {
    let m = b"MSH|^~\\&|A\rPID|1||X\0Y\r";
    let e = parse(m).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::ForbiddenByte);
    assert_eq!((e.segment_id, e.occurrence, e.field), (Some(*b"PID"), 1, 3));
    assert_eq!(kind(b"MSH|^~\\&|A\x0b\r"), ParseErrorKind::ForbiddenByte);
    let e = parse(b"MSH|^~\\&|A|B|C\x1c\r").unwrap_err();
    assert_eq!((e.kind, e.field), (ParseErrorKind::ForbiddenByte, 5));
}

#[test]
fn line_endings() {
    let crlf = b"MSH|^~\\&|A\r\nPID|1\r\nPV1|1\r\n";
    let lf = b"MSH|^~\\&|A\nPID|1\nPV1|1\n";
    let strict = ParseOptions::default();
    let lenient = ParseOptions {
        lenient_line_endings: true,
        ..ParseOptions::default()
    };
    for m in [&crlf[..], &lf[..]] {
        let e = Message::parse(m, &strict).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BareLineFeed);
        let ok = Message::parse(m, &lenient).unwrap();
        let ids: Vec<_> = ok.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "PID", "PV1"]);
        assert_eq!(ok.segment("PID").unwrap().field(1).unwrap().raw(), b"1");
    }
    // Lenient still refuses blank lines in the middle.
    let e = Message::parse(b"MSH|^~\\&|A\n\nPID|1", &lenient).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::EmptySegment);
}

#[test]
fn limits() {
    let m = msg(&[r"MSH|^~\&|A", "PID|1", "PV1|1"]);
    let opts = ParseOptions {
        max_segments: 2,
        ..ParseOptions::default()
    };
    let e = Message::parse(&m, &opts).unwrap_err();
    assert_eq!(
        (e.kind, e.segment_index),
        (ParseErrorKind::TooManySegments, 2)
    );
    let opts = ParseOptions {
        max_segments: 3,
        ..ParseOptions::default()
    };
    assert!(Message::parse(&m, &opts).is_ok());

    let m = msg(&[r"MSH|^~\&|A", "PID|1|123456|x"]);
    let opts = ParseOptions {
        max_field_len: 5,
        ..ParseOptions::default()
    };
    let e = Message::parse(&m, &opts).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::FieldTooLong);
    assert_eq!((e.segment_id, e.field), (Some(*b"PID"), 2));
    // Last field of the last segment without a terminator is checked too.
    let e = Message::parse(b"MSH|^~\\&|A|123456", &opts).unwrap_err();
    assert_eq!((e.kind, e.field), (ParseErrorKind::FieldTooLong, 4));
}

#[test]
fn header_only_parse() {
    let h = header(&samples::adt_a01()).unwrap();
    assert_eq!(h.sending_application, b"EPICADT");
    assert_eq!(h.sending_facility, b"STMARYS^1.2.840.114350^ISO");
    assert_eq!(h.sending_facility_ns(), b"STMARYS");
    assert_eq!(h.sending_application_ns(), b"EPICADT");
    assert_eq!(h.receiving_application, b"WARD");
    assert_eq!(h.receiving_facility, b"HUB");
    assert_eq!(
        (h.message_code.as_slice(), h.trigger_event.as_slice()),
        (&b"ADT"[..], &b"A01"[..])
    );
    assert_eq!(h.control_id, b"MSG00001");
    assert_eq!(h.processing_id, b"P");
    assert_eq!(h.version, b"2.5.1");
    assert_eq!(h.charset(), Charset::Utf8);
    assert_eq!(
        header(&samples::adt_a04()).unwrap().charset(),
        Charset::Ascii
    );
    // Body problems do not matter to the header parse.
    let mut broken = samples::adt_a01();
    broken.extend_from_slice(b"\r\0garbage");
    assert!(header(&broken).is_some());
    assert!(header(b"PID|1").is_none());
    assert!(header(b"MSH|^^\\&|A").is_none());
    assert!(header(b"").is_none());
}

#[test]
fn debug_does_not_leak_content() {
    let m = samples::adt_a01();
    let msg = parse(&m).unwrap();
    let dbg = format!(
        "{msg:?} {:?}",
        msg.segment("PID").unwrap().field(5).unwrap()
    );
    assert!(!dbg.contains("Brien"), "{dbg}");
    assert!(dbg.contains("PID"));
}
