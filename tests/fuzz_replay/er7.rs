// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! HL7 v2 ER7 (`src/hl7v2/`): policy validation, header-only parse, lenient full parse, and
//! the NAK round trip: every rejection's ACK must parse with `parse_ack`, carry the rejection's
//! ack code, and echo MSH-10 in MSA-2 (unescaped values equal).

use ward::hl7v2::{
    self, build_ack, build_rejection_ack, parse_ack, unescape, AckCode, HeaderInfo, Message,
    ParseOptions, Rules,
};

/// The ACK Ward emits must always be readable by `parse_ack` (which reads line endings
/// leniently) and say what we meant. `header` is what the ACK was built from.
fn check_ack(ack: &[u8], code: AckCode, header: Option<&HeaderInfo>) {
    let Some((got, msa2)) = parse_ack(ack) else {
        panic!(
            "parse_ack failed on our own ACK: {:?}",
            String::from_utf8_lossy(ack)
        );
    };
    assert_eq!(got, code, "ACK code changed in the round trip");
    match header {
        Some(h) => {
            // MSH-10 that is not even valid ER7 escaping cannot be compared.
            if let Ok(orig) = unescape(&h.control_id, &h.delimiters) {
                assert_eq!(
                    msa2,
                    orig,
                    "MSA-2 does not round-trip MSH-10; ack = {:?}",
                    String::from_utf8_lossy(ack)
                );
            }
        }
        None => assert!(msa2.is_empty(), "header-less NAK has a non-empty MSA-2"),
    }
}

pub fn fuzz_one(data: &[u8]) {
    let strict = Rules::default();
    let lenient = Rules {
        lenient_line_endings: true,
        max_segments: 16,
        max_field_len: 64,
        ..Rules::default()
    };

    for rules in [&strict, &lenient] {
        match hl7v2::validate(data, rules) {
            Ok(v) => {
                let ack = build_ack(&v.header, AckCode::Accept, &[], "20240101000000", "A1");
                check_ack(&ack, AckCode::Accept, Some(&v.header));
                // Validated::control_id is MSH-10 unescaped; the ACK must echo exactly that.
                let (_, msa2) = parse_ack(&ack).unwrap_or((AckCode::Accept, Vec::new()));
                assert_eq!(msa2, v.control_id, "Validated::control_id differs from MSA-2");
            }
            Err(rej) => {
                assert!(
                    !rej.errors.is_empty() && rej.errors.len() <= hl7v2::validate::MAX_ERRORS,
                    "rejection with {} errors",
                    rej.errors.len()
                );
                let _ = rej.to_string();
                let ack = build_rejection_ack(&rej, "20240101000000", "NAK1");
                let code = if rej.header.is_some() {
                    rej.ack_code
                } else {
                    AckCode::Reject
                };
                check_ack(&ack, code, rej.header.as_ref());
            }
        }
    }

    if let Some(h) = hl7v2::header(data) {
        let _ = h.charset();
        let _ = h.sending_application_ns();
        let _ = h.sending_facility_ns();
    }

    let opts = ParseOptions {
        lenient_line_endings: true,
        ..ParseOptions::default()
    };
    if let Ok(msg) = Message::parse(data, &opts) {
        let d = msg.delimiters();
        // Walk the whole tree, unescaping every leaf.
        for seg in msg.segments() {
            let _ = seg.id();
            for (_, f) in seg.fields() {
                for rep in f.repetitions() {
                    for comp in rep.components() {
                        let _ = comp.unescape();
                        for sub in comp.subcomponents() {
                            let _ = unescape(sub, &d);
                        }
                    }
                }
            }
        }
    }

    let _ = parse_ack(data);
}
