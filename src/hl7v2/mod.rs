//! HL7 v2.x (ER7, "pipe and hat") support for Ward's MLLP path.
//!
//! Everything here treats the input as hostile: the parser works on raw bytes (a message may
//! be ISO-8859-1 or UTF-8 per MSH-18, so UTF-8 is never assumed), never panics on any input,
//! and nothing that reports an error echoes message content (which is PHI) — error texts are
//! `&'static str`.
//!
//! * [`er7`]: zero-copy parser ([`Message`]), cheap header-only parse ([`header`]), unescaping.
//! * [`mod@validate`]: policy checks ([`Rules`]) producing [`Validated`] or a [`Rejection`] that
//!   carries HL7 table 0357 error codes and locations.
//! * [`ack`]: builds the ACK a receiving system answers with ([`build_ack`]) and reads an
//!   upstream's ACK ([`parse_ack`]).

// The input is attacker-controlled: a panic would be a remote DoS, so the lints that catch
// the usual panic sources are errors for this whole tree, not just warnings.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

pub mod ack;
pub mod er7;
pub mod mllp;
pub mod validate;

pub use ack::{build_ack, build_rejection_ack, parse_ack, AckCode};
pub use er7::{
    check_escapes, header, unescape, Charset, Component, Delimiters, EscapeError, Field,
    HeaderInfo, Message, ParseError, ParseErrorKind, ParseOptions, Repetition, Segment,
};
pub use validate::{validate, ErrorLoc, ProcessingId, Rejection, Rules, Validated};

/// Sample messages shared by the unit tests of every file in this tree.
#[cfg(test)]
pub(crate) mod samples {
    /// Joins segment lines with the HL7 segment terminator `\r` (raw string literals keep the
    /// backslashes of `^~\&` and escape sequences readable).
    pub fn msg(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\r');
        }
        out
    }

    pub fn adt_a01() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|EPICADT|STMARYS^1.2.840.114350^ISO|WARD|HUB|20240315083012.123+0100||ADT^A01^ADT_A01|MSG00001|P|2.5.1|||AL|NE||UNICODE UTF-8",
            r"EVN|A01|20240315083000|||JSMITH^Smith^John",
            r"PID|1||123456^^^STMARYS^MR~987-65-4321^^^USSSA^SS~^^^EMPTY^XX||O'Brien\T\Kelly^Mary^Anne^^Ms.^^L~Kelly^Mary^^^^^B||19800101|F|||12 Main St\S\Apt 4^^Springfield^IL^62701^USA||(555)555-1234|||M||ACC123",
            r"PV1|1|I|WARD1^101^A^STMARYS||||1234^Welby^Marcus|||MED||||1|||1234^Welby^Marcus|IN||||||||||||||||||||||||||20240315080000",
            r"ZPD|custom^value|x&y~z",
            r"ZZ1|\.br\trailer",
        ])
    }

    pub fn adt_a04() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|REG|CLINIC|WARD|HUB|202403150830||ADT^A04^ADT_A01|A04-77|P|2.5",
            r"EVN|A04|202403150830",
            r"PID|||55501^^^CLINIC^MR||Doe^Jane||19751231|F",
            r"PV1||O|OPD^^^CLINIC",
        ])
    }

    pub fn adt_a08_v23() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|LEGACY|GENHOSP|||19990101120000||ADT^A08|20001|T|2.3",
            r"EVN|A08|19990101120000",
            r#"PID|||A100^^^GEN||Smith^John^Q^Jr||""|M"#,
            r"PV1||I|3W^301^1",
        ])
    }

    pub fn oru_r01() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|LAB|CORE||WARD|20240315101500+0000||ORU^R01^ORU_R01|LAB-9001|P|2.5.1",
            r"PID|1||MRN777^^^CORE^MR||Nguyen^An||20010101|U",
            r"OBR|1|ORD1|FIL1|24331-1^Lipid panel^LN|||20240315090000",
            r"OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|<200|N|||F",
            r"OBX|2|NM|2571-8^Triglyceride^LN||150|mg/dL|<150|H|||F",
            r"OBX|3|NM|2085-9^HDL^LN||45|mg/dL|>40|N|||F",
            r"OBX|4|FT|NOTE^Comment^L||Fasting \H\12h\N\.\.br\Repeat in 1 yr \X41\||||||F",
        ])
    }

    pub fn orm_o01() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|CPOE|HOSP|RIS|RAD|20240315111111||ORM^O01|ORM1|P|2.4",
            r"PID|||X1^^^HOSP||Roe^Richard",
            r"ORC|NW|ORD448|||||^^^20240315120000",
            r"OBR|1|ORD448||71020^Chest XR^CPT",
        ])
    }

    pub fn siu_s12() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|SCHED|HOSP|WARD|HUB|20240315111111||SIU^S12^SIU_S12|SIU1|P|2.5.1",
            r"SCH|1001|2002|||||CHECKUP^Annual checkup|||30|min",
            r"PID|||Z9^^^HOSP||Poe^Edgar",
            r"RGS|1",
        ])
    }

    /// `#` as field separator, so `|` is ordinary data.
    pub fn hash_delimited() -> Vec<u8> {
        msg(&[
            r"MSH#^~\&#APP|X#FAC#WARD#HUB#20240315083000##ADT^A01#HASH1#P#2.5.1",
            r"EVN#A01#20240315083000",
            r"PID###H1^^^FAC^MR##Pipe|Name^Ann",
            r"PV1##I",
        ])
    }

    /// PID-5 family name "René" in ISO-8859-1 (0xE9), declared in MSH-18.
    pub fn latin1() -> Vec<u8> {
        let mut m = msg(&[
            r"MSH|^~\&|EU|CH|WARD|HUB|20240315083000||ADT^A01|L1|P|2.5|||||CH|8859/1",
            r"EVN|A01|20240315083000",
            r"PID|||CH1^^^CH^MR||Ren@^Ledoux",
            r"PV1||I",
        ]);
        for b in m.iter_mut() {
            if *b == b'@' {
                *b = 0xE9;
            }
        }
        m
    }

    /// v2.7 with the truncation character declared as the fifth encoding character.
    pub fn v27_truncation() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&#|APP|FAC|WARD|HUB|20240315083000-0500||ADT^A08^ADT_A01|T27|P|2.7",
            r"EVN||20240315083000",
            r"PID|||P27^^^FAC^MR||Long\P\Name#^Tess",
            r"PV1||O",
        ])
    }

    pub fn ack() -> Vec<u8> {
        msg(&[
            r"MSH|^~\&|WARD|HUB|EPICADT|STMARYS|20240315083013||ACK^A01^ACK|ACK1|P|2.5.1",
            r"MSA|AA|MSG00001",
        ])
    }

    pub fn all_valid() -> Vec<Vec<u8>> {
        vec![
            adt_a01(),
            adt_a04(),
            adt_a08_v23(),
            oru_r01(),
            orm_o01(),
            siu_s12(),
            hash_delimited(),
            latin1(),
            v27_truncation(),
            ack(),
        ]
    }
}

/// Deterministic mutation fuzzing across the whole pipeline (validate → ACK → re-parse).
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod fuzz_tests {
    use super::samples;
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    const INTERESTING: &[u8] = b"|^~\\&#\r\n\0\x0b\x1c\"MSH PID0129XZ.+-\xe9\xff";

    fn mutate(rng: &mut XorShift, m: &mut Vec<u8>) {
        let rounds = 1 + rng.below(4);
        for _ in 0..rounds {
            let len = m.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    m[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    m[i] = INTERESTING[rng.below(INTERESTING.len())];
                }
                2 => {
                    let i = rng.below(len + 1);
                    m.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
                }
                3 => m.truncate(rng.below(len + 1)),
                4 if len > 0 => {
                    let i = rng.below(len);
                    m.remove(i);
                }
                5 if len > 1 => {
                    // Duplicate a chunk: repeats segments/fields, creates second MSH etc.
                    let a = rng.below(len);
                    let b = (a + rng.below(64)).min(len);
                    let chunk = m[a..b].to_vec();
                    let at = rng.below(len + 1);
                    m.splice(at..at, chunk);
                }
                _ => {
                    // Rewrite an encoding character so delimiters collide or change.
                    if len > 6 {
                        let i = 3 + rng.below(4);
                        m[i] = INTERESTING[rng.below(INTERESTING.len())];
                    }
                }
            }
        }
    }

    /// The ACK we emit must be structurally clean no matter what came in: exactly one MSH,
    /// one MSA, only ERR after that, and it must carry the ack code we asked for.
    fn assert_clean_ack(ack: &[u8], code: AckCode, header: Option<&HeaderInfo>) {
        let opts = ParseOptions {
            max_field_len: usize::MAX,
            ..ParseOptions::default()
        };
        let parsed = Message::parse(ack, &opts).expect("our ACK must parse strictly");
        let ids: Vec<&str> = parsed.segments().map(|s| s.id()).collect();
        assert_eq!(ids.first(), Some(&"MSH"));
        assert_eq!(ids.get(1), Some(&"MSA"));
        assert!(ids.iter().skip(2).all(|id| *id == "ERR"), "{ids:?}");
        let (got, ctl) = parse_ack(ack).expect("parse_ack on our own ACK");
        assert_eq!(got, code);
        if let Some(h) = header {
            if let Ok(orig) = unescape(&h.control_id, &h.delimiters) {
                assert_eq!(ctl, orig, "MSA-2 must round-trip MSH-10");
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic_and_acks_stay_clean() {
        let corpus = samples::all_valid();
        let strict = Rules::default();
        let lenient = Rules {
            lenient_line_endings: true,
            max_segments: 8,
            max_field_len: 40,
            ..Rules::default()
        };
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0usize;
        for iter in 0..20_000 {
            let mut m = corpus[iter % corpus.len()].clone();
            mutate(&mut rng, &mut m);
            for rules in [&strict, &lenient] {
                match validate(&m, rules) {
                    Ok(v) => {
                        accepted += 1;
                        let ack =
                            build_ack(&v.header, AckCode::Accept, &[], "20240101000000", "A1");
                        assert_clean_ack(&ack, AckCode::Accept, Some(&v.header));
                    }
                    Err(rej) => {
                        assert!(!rej.errors.is_empty() && rej.errors.len() <= validate::MAX_ERRORS);
                        let ack = build_rejection_ack(&rej, "20240101000000", "A2");
                        assert_clean_ack(&ack, rej.ack_code, rej.header.as_ref());
                    }
                }
            }
            let _ = header(&m);
            let _ = parse_ack(&m);
        }
        // Sanity: the mutator leaves some messages valid, so the accept path is exercised too.
        assert!(accepted > 1000, "accepted only {accepted}");
    }

    /// Arbitrary bytes (not derived from valid messages) through every public entry point.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(42);
        for _ in 0..5_000 {
            let len = rng.below(200);
            let mut m: Vec<u8> = (0..len)
                .map(|_| INTERESTING[rng.below(INTERESTING.len())])
                .collect();
            if rng.below(2) == 0 {
                let mut p = b"MSH|^~\\&|".to_vec();
                p.append(&mut m);
                m = p;
            }
            let _ = validate(&m, &Rules::default());
            if let Some(h) = header(&m) {
                let ack = build_ack(&h, AckCode::Error, &[], "x", "y");
                assert_clean_ack(&ack, AckCode::Error, Some(&h));
            }
            let _ = parse_ack(&m);
        }
    }
}
