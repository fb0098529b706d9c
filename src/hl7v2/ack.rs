//! HL7 v2.x acknowledgements: the ACK Ward returns to a sender, and reading an upstream's.
//!
//! [`build_ack`] answers the way a receiving system does: sending and receiving
//! application/facility swapped, MSA-2 echoing the original MSH-10, and the ORIGINAL
//! message's encoding characters (so a sender that declared `#` as field separator gets
//! `#` back). Everything written is escaped for those delimiters:
//!
//! * values copied from the original header (MSH-3..6, MSH-10, MSH-11, MSH-12, MSH-18) are
//!   raw ER7 already, so component/subcomponent separators and well-formed escape
//!   sequences are kept, while field and repetition separators, control bytes (CR, LF,
//!   NUL, …) and dangling escape characters are escaped. `HeaderInfo` is a public struct,
//!   so this holds even for values that never came out of the parser: a hostile control id
//!   cannot end the MSA segment and append its own.
//! * caller strings (`now`, the ACK control id, trigger) and our error texts are escaped
//!   completely.
//!
//! ERR segments: one per error. Always the v2.5+ layout — ERR-2 location
//! `SEG^seq^field^^component` (`SEG^seq` for a segment-level error, `SEG^seq^field` without a
//! component), ERR-3 `code^text^HL70357`, ERR-4 severity `E`. For messages declaring a
//! version below 2.5, ERR-1 (the pre-2.5 ELD `SEG^seq^field^code&text&HL70357`) is filled
//! as well, because those receivers only read ERR-1; newer ones ignore it.
//!
//! The ACK carries MSH-18 when the original did, so bytes copied from a UTF-8 or ISO-8859-1
//! header are read in the same charset. Do not acknowledge an ACK: that is the caller's
//! rule (an MLLP listener must not answer ACK messages), not enforced here.

use super::er7::{decode_escape, Delimiters, HeaderInfo, Message, ParseOptions};
use super::validate::{ErrorLoc, Rejection};

pub use super::er7::AckCode;

/// MSH-12 when the original gave none (or could not be read).
pub const DEFAULT_VERSION: &str = "2.5.1";

/// Appends escaped output for one set of delimiters.
struct Writer {
    out: Vec<u8>,
    d: Delimiters,
}

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn sep(&mut self) {
        self.out.push(self.d.field);
    }

    fn comp(&mut self) {
        self.out.push(self.d.component);
    }

    fn num(&mut self, n: usize) {
        self.out.extend_from_slice(n.to_string().as_bytes());
    }

    fn escape_seq(&mut self, inner: &[u8]) {
        self.out.push(self.d.escape);
        self.out.extend_from_slice(inner);
        self.out.push(self.d.escape);
    }

    /// One byte of text: delimiters become their escape sequence, control bytes `\Xhh\`.
    fn text_byte(&mut self, b: u8) {
        let d = self.d;
        if b == d.field {
            self.escape_seq(b"F");
        } else if b == d.component {
            self.escape_seq(b"S");
        } else if b == d.subcomponent {
            self.escape_seq(b"T");
        } else if b == d.repetition {
            self.escape_seq(b"R");
        } else if b == d.escape {
            self.escape_seq(b"E");
        } else if Some(b) == d.truncation {
            self.escape_seq(b"P");
        } else if b < 0x20 || b == 0x7F {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            let hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            let lo = HEX.get(usize::from(b & 0x0F)).copied().unwrap_or(b'0');
            self.escape_seq(&[b'X', hi, lo]);
        } else {
            self.out.push(b);
        }
    }

    /// Arbitrary bytes as one text value.
    fn text(&mut self, v: &[u8]) {
        for &b in v {
            self.text_byte(b);
        }
    }

    /// A raw ER7 value from the original header (same delimiters): keeps its internal
    /// structure and valid escapes, neutralises anything that could end the field or
    /// segment.
    fn copied(&mut self, v: &[u8]) {
        let d = self.d;
        let mut rest = v;
        while let Some((&b, tail)) = rest.split_first() {
            if b == d.escape {
                let seq = tail
                    .iter()
                    .position(|&x| x == d.escape)
                    .and_then(|end| tail.get(..end).map(|seq| (seq, end)));
                if let Some((seq, end)) = seq {
                    // A valid sequence never contains the field separator unless a caller
                    // built the header by hand with `.` as separator (`\.br\`): escape then.
                    let inert = !seq.contains(&d.field);
                    if inert && decode_escape(seq, &d, None).is_ok() {
                        self.escape_seq(seq);
                        rest = tail.get(end.saturating_add(1)..).unwrap_or_default();
                        continue;
                    }
                }
                self.escape_seq(b"E");
            } else if b == d.component || b == d.subcomponent || Some(b) == d.truncation {
                self.out.push(b);
            } else {
                self.text_byte(b);
            }
            rest = tail;
        }
    }
}

/// `major.minor` of MSH-12.1 below 2.5 (unreadable versions count as current).
fn is_pre_v25(version: &[u8], d: &Delimiters) -> bool {
    let v = version
        .split(|&b| b == d.component)
        .next()
        .unwrap_or_default();
    let mut parts = v.split(|&b| b == b'.');
    let num = |p: Option<&[u8]>| -> Option<u32> {
        let p = p?;
        if p.is_empty() || p.len() > 4 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(p.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')))
    };
    match (num(parts.next()), num(parts.next())) {
        (Some(major), Some(minor)) => (major, minor) < (2, 5),
        (Some(major), None) => major < 2,
        _ => false,
    }
}

/// Builds the ACK for a message whose header is `header`.
///
/// `now` (MSH-7, a DTM the caller formats) and `ack_control_id` (MSH-10) are supplied by
/// the caller so this stays deterministic. `errors` become ERR segments (see the module
/// docs); pass `&[]` for an AA.
pub fn build_ack(
    header: &HeaderInfo,
    code: AckCode,
    errors: &[ErrorLoc],
    now: &str,
    ack_control_id: &str,
) -> Vec<u8> {
    // A caller-built HeaderInfo may carry unusable delimiters; the values are then treated
    // as opaque text under the defaults rather than trusted as ER7.
    let trusted = header.delimiters.is_valid();
    let d = if trusted {
        header.delimiters
    } else {
        Delimiters::default()
    };
    let mut w = Writer {
        out: Vec::with_capacity(errors.len().saturating_mul(64).saturating_add(160)),
        d,
    };
    let copy = |w: &mut Writer, v: &[u8]| {
        if trusted {
            w.copied(v)
        } else {
            w.text(v)
        }
    };

    w.raw(b"MSH");
    w.sep();
    d.push_encoding_characters(&mut w.out);
    w.sep();
    copy(&mut w, &header.receiving_application);
    w.sep();
    copy(&mut w, &header.receiving_facility);
    w.sep();
    copy(&mut w, &header.sending_application);
    w.sep();
    copy(&mut w, &header.sending_facility);
    w.sep();
    w.text(now.as_bytes());
    w.sep();
    w.sep();
    w.raw(b"ACK");
    if !header.trigger_event.is_empty() {
        w.comp();
        w.text(&header.trigger_event);
        w.comp();
        w.raw(b"ACK");
    }
    w.sep();
    w.text(ack_control_id.as_bytes());
    w.sep();
    if header.processing_id.is_empty() {
        w.raw(b"P");
    } else {
        copy(&mut w, &header.processing_id);
    }
    w.sep();
    if header.version.is_empty() {
        w.text(DEFAULT_VERSION.as_bytes());
    } else {
        copy(&mut w, &header.version);
    }
    if !header.charset.is_empty() {
        // MSH-13..MSH-17 empty, then MSH-18.
        for _ in 0..6 {
            w.sep();
        }
        copy(&mut w, &header.charset);
    }
    w.raw(b"\r");

    w.raw(b"MSA");
    w.sep();
    w.raw(code.as_str().as_bytes());
    w.sep();
    copy(&mut w, &header.control_id);
    w.raw(b"\r");

    let legacy = is_pre_v25(&header.version, &d);
    for e in errors {
        w.raw(b"ERR");
        w.sep();
        if legacy {
            // ERR-1 (ELD): segment^sequence^field^code&text&HL70357
            w.text(e.segment.as_bytes());
            w.comp();
            w.num(e.sequence);
            w.comp();
            if e.field > 0 {
                w.num(e.field);
            }
            w.comp();
            w.num(usize::from(e.code));
            w.out.push(d.subcomponent);
            w.text(e.message.as_bytes());
            w.out.push(d.subcomponent);
            w.raw(b"HL70357");
        }
        w.sep();
        // ERR-2 (ERL): segment^sequence^field^repetition^component
        w.text(e.segment.as_bytes());
        w.comp();
        w.num(e.sequence);
        if e.field > 0 {
            w.comp();
            w.num(e.field);
            if let Some(c) = e.component {
                w.comp();
                w.comp();
                w.num(c);
            }
        }
        w.sep();
        // ERR-3 (CWE): code^text^HL70357
        w.num(usize::from(e.code));
        w.comp();
        w.text(e.message.as_bytes());
        w.comp();
        w.raw(b"HL70357");
        w.sep();
        // ERR-4: severity (HL7 table 0516).
        w.raw(b"E");
        w.raw(b"\r");
    }
    w.out
}

/// The NAK for a [`Rejection`]: its header when there is one, otherwise defaults (`|^~\&`,
/// empty applications, empty MSA-2) with AR, since nothing about the sender is known.
pub fn build_rejection_ack(rejection: &Rejection, now: &str, ack_control_id: &str) -> Vec<u8> {
    match &rejection.header {
        Some(h) => build_ack(
            h,
            rejection.ack_code,
            &rejection.errors,
            now,
            ack_control_id,
        ),
        None => build_ack(
            &HeaderInfo::default(),
            AckCode::Reject,
            &rejection.errors,
            now,
            ack_control_id,
        ),
    }
}

/// Reads an upstream's ACK: MSA-1 and MSA-2 (unescaped, so it compares with
/// `Validated::control_id` whatever delimiters either side used). Line endings are read
/// leniently; `None` when there is no MSA or MSA-1 is not a table 0008 code.
pub fn parse_ack(bytes: &[u8]) -> Option<(AckCode, Vec<u8>)> {
    let opts = ParseOptions {
        lenient_line_endings: true,
        ..ParseOptions::default()
    };
    let msg = Message::parse(bytes, &opts).ok()?;
    let msa = msg.segment("MSA")?;
    let code = AckCode::from_bytes(msa.field(1)?.raw())?;
    let control_id = match msa.field(2) {
        Some(f) => f.unescape().ok()?,
        None => Vec::new(),
    };
    Some((code, control_id))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::super::er7::header;
    use super::super::samples::{self, msg};
    use super::super::validate::{validate, Rules};
    use super::*;

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).replace('\r', "\n")
    }

    fn segment_ids(ack: &[u8]) -> Vec<String> {
        let m = Message::parse(ack, &ParseOptions::default()).unwrap();
        m.segments().map(|s| s.id().to_owned()).collect()
    }

    #[test]
    fn aa_for_adt_a01() {
        let m = samples::adt_a01();
        let v = validate(&m, &Rules::default()).unwrap();
        let ack = build_ack(&v.header, AckCode::Accept, &[], "20240315083013", "ACK0001");
        assert_eq!(
            text(&ack),
            text(
                b"MSH|^~\\&|WARD|HUB|EPICADT|STMARYS^1.2.840.114350^ISO|20240315083013||ACK^A01^ACK|ACK0001|P|2.5.1||||||UNICODE UTF-8\r\
                  MSA|AA|MSG00001\r"
            )
        );
        assert_eq!(
            parse_ack(&ack),
            Some((AckCode::Accept, b"MSG00001".to_vec()))
        );
    }

    #[test]
    fn ae_with_v25_err() {
        let m = msg(&[
            r"MSH|^~\&|APP|FAC|WARD|HUB|20240315||ADT^A04|C1|P|2.5.1",
            "EVN|A04",
            "PID|||||Doe^J||19990230",
            "PV1||I",
        ]);
        let r = validate(&m, &Rules::default()).unwrap_err();
        let ack = build_rejection_ack(&r, "20240315000000", "N1");
        assert_eq!(
            text(&ack),
            text(
                b"MSH|^~\\&|WARD|HUB|APP|FAC|20240315000000||ACK^A04^ACK|N1|P|2.5.1\r\
                  MSA|AE|C1\r\
                  ERR||PID^1^3|101^required field missing^HL70357|E\r\
                  ERR||PID^1^7^^1|102^invalid date/time^HL70357|E\r"
            )
        );
    }

    #[test]
    fn pre_v25_fills_err1() {
        let m = msg(&[
            r"MSH|^~\&|OLD|FAC|||19990101||ADT^A08|X9|P|2.3",
            "EVN|A08",
            "PID|||1||A^B||19991301",
        ]);
        let r = validate(&m, &Rules::default()).unwrap_err();
        let ack = build_rejection_ack(&r, "19990101", "N2");
        assert_eq!(
            text(&ack),
            text(
                b"MSH|^~\\&|||OLD|FAC|19990101||ACK^A08^ACK|N2|P|2.3\r\
                  MSA|AE|X9\r\
                  ERR|PV1^1^^100&required segment missing&HL70357|PV1^1|100^required segment missing^HL70357|E\r\
                  ERR|PID^1^7^102&invalid date/time&HL70357|PID^1^7^^1|102^invalid date/time^HL70357|E\r"
            )
        );
        assert!(is_pre_v25(b"2.4", &Delimiters::default()));
        assert!(is_pre_v25(b"2.3.1^X", &Delimiters::default()));
        assert!(!is_pre_v25(b"2.5", &Delimiters::default()));
        assert!(!is_pre_v25(b"2.10", &Delimiters::default()));
        assert!(!is_pre_v25(b"junk", &Delimiters::default()));
    }

    #[test]
    fn ack_uses_original_delimiters() {
        let m = samples::hash_delimited();
        let v = validate(&m, &Rules::default()).unwrap();
        let ack = build_ack(&v.header, AckCode::Accept, &[], "20240315", "A#1");
        assert_eq!(
            text(&ack),
            text(b"MSH#^~\\&#WARD#HUB#APP|X#FAC#20240315##ACK^A01^ACK#A\\F\\1#P#2.5.1\rMSA#AA#HASH1\r")
        );
        let h = header(&ack).unwrap();
        assert_eq!(h.delimiters, v.header.delimiters);
        assert_eq!(h.receiving_application, b"APP|X");
    }

    #[test]
    fn texts_are_escaped_for_unusual_delimiters() {
        // `+` as component and `/` as subcomponent separator: both occur in our own output
        // (a timestamp offset, "date/time").
        let m = msg(&[
            r"MSH|+~\/|APP|FAC|W|H|20240315||ADT+A04|C2|P|2.3",
            "EVN|A04",
            "PID|||1||A+B||19990230",
            "PV1||I",
        ]);
        let r = validate(&m, &Rules::default()).unwrap_err();
        let ack = build_rejection_ack(&r, "20240315120000+0100", "N3");
        let s = text(&ack);
        assert!(
            s.starts_with("MSH|+~\\/|W|H|APP|FAC|20240315120000\\S\\0100||ACK+A04+ACK|N3|P|2.3\n"),
            "{s}"
        );
        assert!(s.contains("ERR|PID+1+7+102/invalid date\\T\\time/HL70357|PID+1+7++1|102+invalid date\\T\\time+HL70357|E\n"), "{s}");
        assert_eq!(segment_ids(&ack), ["MSH", "MSA", "ERR"]);
    }

    #[test]
    fn hostile_header_values_cannot_inject_segments() {
        let h = HeaderInfo {
            sending_application: b"EVIL|\r\nMSH|^~\\&|X".to_vec(),
            receiving_facility: b"\x00\x0b\x1c".to_vec(),
            trigger_event: b"A01\rEVN|".to_vec(),
            control_id: b"1\rMSA|AA|X\rZZZ|~".to_vec(),
            processing_id: b"P|Q".to_vec(),
            version: b"2.5.1\r".to_vec(),
            charset: b"UTF-8|\n".to_vec(),
            ..HeaderInfo::default()
        };
        let ack = build_ack(&h, AckCode::Error, &[], "2024\r|", "ID~\\X\\\r");
        assert_eq!(
            ack.iter().filter(|&&b| b == b'\r').count(),
            2,
            "{}",
            text(&ack)
        );
        assert!(!ack.contains(&b'\n') && !ack.contains(&0));
        assert_eq!(segment_ids(&ack), ["MSH", "MSA"]);
        let (code, ctl) = parse_ack(&ack).unwrap();
        assert_eq!(code, AckCode::Error);
        assert_eq!(ctl, b"1\rMSA|AA|X\rZZZ|~");
        let parsed = Message::parse(&ack, &ParseOptions::default()).unwrap();
        let msh = parsed.msh();
        assert_eq!(
            msh.field(5).unwrap().unescape().unwrap(),
            b"EVIL|\r\nMSH|^~\\&|X"
        );
        assert_eq!(msh.field(10).unwrap().unescape().unwrap(), b"ID~\\X\\\r");
        assert_eq!(
            msh.field(9)
                .unwrap()
                .component(2)
                .unwrap()
                .unescape()
                .unwrap(),
            b"A01\rEVN|"
        );
    }

    #[test]
    fn hostile_control_id_from_a_real_message() {
        // Raw `|`/CR cannot reach MSH-10 through the parser, but repetition separators,
        // escapes and a dangling escape can.
        let m = msg(&[
            r"MSH|^~\&|A|B|C|D|20240315||ADT^A04|X~MSA^AA\F\Y|P|2.5",
            "EVN|A04",
            "PID|||1||A^B",
            "PV1||I",
        ]);
        let r = validate(&m, &Rules::default()).unwrap_err();
        let h = r.header.clone().unwrap();
        let ack = build_rejection_ack(&r, "20240315", "N4");
        assert_eq!(segment_ids(&ack), ["MSH", "MSA", "ERR"]);
        assert!(
            text(&ack).contains("\nMSA|AE|X\\R\\MSA^AA\\F\\Y\n"),
            "{}",
            text(&ack)
        );
        let (_, ctl) = parse_ack(&ack).unwrap();
        assert_eq!(ctl, unescape_ok(&h.control_id, &h.delimiters));

        let h = HeaderInfo {
            control_id: b"AB\\".to_vec(),
            ..HeaderInfo::default()
        };
        let ack = build_ack(&h, AckCode::Accept, &[], "1", "2");
        assert!(text(&ack).contains("\nMSA|AA|AB\\E\\\n"));
        assert_eq!(parse_ack(&ack).unwrap().1, b"AB\\");
    }

    fn unescape_ok(v: &[u8], d: &Delimiters) -> Vec<u8> {
        super::super::er7::unescape(v, d).unwrap()
    }

    #[test]
    fn unusable_encoding_characters_still_echo_a_readable_control_id() {
        let rest = "|LAB|HOSP|EHR|HUB|20240315083000||ORU^R01|CTRL-42.a_b|P|2.5\rPID|||1||Doe^J\r";
        // Every way MSH-2 can be unusable: missing, short, long, repeated, alphanumeric,
        // not a delimiter, with each field separator Ward accepts.
        let bad_msh2 = [
            "", "^", "^~", "^~\\", "^~\\&#!", "^^\\&", "^~\\\\", "a~\\&", "^~1&", "^~ &",
        ];
        for sep in ["|", "#", "!"] {
            // (A separator inside MSH-2 would cut it short into a different header.)
            for enc in bad_msh2.iter().filter(|e| !e.contains(sep)) {
                let m = format!("MSH{sep}{enc}{}", rest.replace('|', sep));
                let r = validate(m.as_bytes(), &Rules::default()).unwrap_err();
                assert_eq!(r.ack_code, AckCode::Reject, "{m:?}");
                let ack = build_rejection_ack(&r, "20240315", "N7");
                assert!(
                    text(&ack).contains("\nMSA|AR|CTRL-42.a_b\n"),
                    "{m:?}: {}",
                    text(&ack)
                );
                assert_eq!(parse_ack(&ack).unwrap().1, b"CTRL-42.a_b", "{m:?}");
                // Nothing else from the untrusted header is echoed.
                assert!(!text(&ack).contains("LAB") && !text(&ack).contains("HOSP"));
            }
        }
        // An MSH-10 that cannot be read without the encoding characters, or is absent:
        // empty MSA-2 (never a guess).
        let long = "X".repeat(200);
        for ctl in [
            "",
            "a^b",
            "a&b",
            "a\\b",
            "a~b",
            "a b",
            long.as_str(),
            "caf\u{e9}",
        ] {
            let m = format!("MSH|^~|A|B|C|D|20240315||ADT^A01|{ctl}|P|2.5\rPID|||1\r");
            let r = validate(m.as_bytes(), &Rules::default()).unwrap_err();
            let ack = build_rejection_ack(&r, "1", "2");
            assert!(
                text(&ack).contains("\nMSA|AR|\n"),
                "{ctl:?}: {}",
                text(&ack)
            );
        }
        for m in ["MSH|^~|A|B", "MSHa^~\\&a1a2a3a4a5a6a7a8aCTL", "MSH"] {
            let r = validate(m.as_bytes(), &Rules::default()).unwrap_err();
            let ack = build_rejection_ack(&r, "1", "2");
            assert!(text(&ack).contains("\nMSA|AR|\n"), "{m:?}: {}", text(&ack));
        }
    }

    #[test]
    fn unusable_header_gets_defaults_and_ar() {
        let r = validate(b"\x0bGET / HTTP/1.1\r\n", &Rules::default()).unwrap_err();
        assert!(r.header.is_none());
        let ack = build_rejection_ack(&r, "20240315", "N5");
        assert_eq!(
            text(&ack),
            text(b"MSH|^~\\&|||||20240315||ACK|N5|P|2.5.1\rMSA|AR|\rERR||MSH^1|100^message does not start with MSH^HL70357|E\r")
        );
        // A caller-built header with broken delimiters falls back to the defaults too.
        let h = HeaderInfo {
            delimiters: Delimiters {
                component: b'|',
                ..Delimiters::default()
            },
            control_id: b"a^b".to_vec(),
            ..HeaderInfo::default()
        };
        let ack = build_ack(&h, AckCode::Reject, &[], "1", "2");
        assert!(text(&ack).starts_with("MSH|^~\\&|"));
        assert!(text(&ack).contains("\nMSA|AR|a\\S\\b\n"));
    }

    #[test]
    fn parse_upstream_acks() {
        assert_eq!(
            parse_ack(&samples::ack()),
            Some((AckCode::Accept, b"MSG00001".to_vec()))
        );
        let ca = b"MSH|^~\\&|U|F|W|H|20240315||ACK|9|P|2.5\nMSA|CA|ab\\S\\c\n";
        assert_eq!(
            parse_ack(ca),
            Some((AckCode::CommitAccept, b"ab^c".to_vec()))
        );
        let ae = b"MSH#^~\\&#U\rMSA#AE#id\\F\\1#\rERR###207^x^HL70357#E\r";
        assert_eq!(parse_ack(ae), Some((AckCode::Error, b"id#1".to_vec())));
        assert_eq!(
            parse_ack(b"MSH|^~\\&|U\rMSA|AR\r"),
            Some((AckCode::Reject, Vec::new()))
        );
        assert_eq!(parse_ack(b"MSH|^~\\&|U\rMSA|XX|1\r"), None);
        assert_eq!(parse_ack(b"MSH|^~\\&|U\rMSA|aa|1\r"), None);
        assert_eq!(parse_ack(b"MSH|^~\\&|U\rPID|1\r"), None);
        assert_eq!(parse_ack(b"MSH|^~\\&|U\rMSA|AA|bad\\Q\r"), None);
        assert_eq!(parse_ack(b"garbage"), None);
        assert!(AckCode::CommitAccept.is_positive() && !AckCode::Error.is_positive());
        for c in [
            AckCode::Accept,
            AckCode::Error,
            AckCode::Reject,
            AckCode::CommitAccept,
            AckCode::CommitError,
            AckCode::CommitReject,
        ] {
            assert_eq!(AckCode::from_bytes(c.as_str().as_bytes()), Some(c));
        }
    }
}
