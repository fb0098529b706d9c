//! The DLP invariant "no finding survives", checked on generated inputs in every test run (the
//! `dlp` fuzz target checks the same on arbitrary bytes): with every value-level detector
//! redacting at confidence 0 (so context cannot change a verdict), the enforce-mode output of
//! a JSON or text body holds no finding of the scanner, which reads the canonical form
//! (Unicode digits, invisible characters, look-alike spaces and dashes, NFKC).
//!
//! Inputs are PHI values disguised the ways an adversary would (any script's digits, invisible
//! characters inside, exotic separators, compatibility forms, combining marks), placed where
//! FHIR keeps text (free text, typed primitives, URLs, narrative with markup between the
//! digits, member names, base64 attachments), with junk around them.

use base64::Engine as _;
use ward::dlp::json::{process, JsonOutcome};
use ward::dlp::unicode_tables::{DASHES, DIGIT_ZEROS, INVISIBLE, SPACES};
use ward::dlp::{DlpConfig, Engine, Report, TextOutcome};

fn strict() -> Engine {
    let mut detectors = serde_json::Map::new();
    for d in ["ssn", "card", "npi", "mbi", "email", "phone", "ip", "vin"] {
        detectors.insert(d.into(), serde_json::json!({"action": "redact"}));
    }
    let cfg: DlpConfig = serde_json::from_value(serde_json::json!({
        "min_confidence": 0,
        "detectors": detectors,
    }))
    .unwrap();
    let dir = std::env::temp_dir();
    let resolve = |f: &str| dir.join(f);
    assert!(cfg.problems(&resolve).is_empty());
    Engine::compile(&cfg, &resolve).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn char_in(&mut self, table: &[(u32, u32)]) -> char {
        let (lo, hi) = *self.pick(table);
        let cp = lo + (self.next() % u64::from(hi - lo + 1)) as u32;
        char::from_u32(cp).unwrap_or('\u{200B}')
    }
}

const PHI: &[&str] = &[
    "123-45-6789",
    "123 45 6789",
    "(555) 234-5678",
    "555-234-5678",
    "+1 555 234 5678",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "jane.doe@example.org",
    "10.1.2.3",
    "1234567893",
    "1EG4-TE5-MK73",
    "1M8GDM9AXKP042788",
];

/// One PHI value, disguised.
fn disguise(r: &mut Rng) -> String {
    let base = *r.pick(PHI);
    let zero = if r.below(3) == 0 {
        0x30
    } else {
        *r.pick(DIGIT_ZEROS)
    };
    let mut out = String::new();
    for c in base.chars() {
        let mut c = c;
        if c.is_ascii_digit() && r.below(4) != 0 {
            c = char::from_u32(zero + (c as u32 - 0x30)).unwrap();
        } else if c == '-' && r.below(2) == 0 {
            c = r.char_in(DASHES);
        } else if c == ' ' && r.below(2) == 0 {
            c = r.char_in(SPACES);
        } else if c.is_ascii_alphanumeric() && r.below(6) == 0 {
            // Full-width form.
            c = char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap();
        }
        out.push(c);
        match r.below(10) {
            0 => out.push(r.char_in(INVISIBLE)),
            1 if c.is_ascii_digit() => out.push('\u{0301}'),
            2 if c.is_ascii_digit() => out.push('\u{20E3}'),
            _ => {}
        }
    }
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A FHIR-ish JSON body with `phi` in one of the places text lives.
fn place(r: &mut Rng, phi: &str) -> String {
    let junk = ["", "note: ", "x ", "(", "ref "];
    let j = *r.pick(&junk);
    match r.below(8) {
        0 => format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueString":{}}}"#,
            json_str(&format!("{j}{phi}"))
        ),
        1 => format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"extension":[{{"url":"http://e.org/x","valueUri":{}}}]}}"#,
            json_str(&format!("http://example.org/{phi}"))
        ),
        2 => format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueCode":{}}}"#,
            json_str(phi)
        ),
        3 => {
            let wraps = [
                "<!-- c -->",
                "<b>",
                "</i>",
                "<?p?>",
                "<x/>",
                "<![CDATA[]]>",
                "",
            ];
            let w = *r.pick(&wraps);
            let k = r.below(phi.chars().count().max(1));
            let a: String = phi.chars().take(k).collect();
            let b: String = phi.chars().skip(k).collect();
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"text":{{"status":"generated","div":{}}}}}"#,
                json_str(&format!(
                    "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{j}{a}{w}{b}</p></div>"
                ))
            )
        }
        4 => format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"note":[{{"text":{}}},{{"text":"ok"}}]}}"#,
            json_str(&format!("{j}{phi} and {j}{phi}"))
        ),
        5 => format!(r#"{{"a":{{{}:1,"b":2}}}}"#, json_str(phi)),
        6 => format!(
            r#"{{"resourceType":"DocumentReference","status":"current","content":[{{"attachment":{{"contentType":"text/plain","data":"{}"}}}}]}}"#,
            base64::engine::general_purpose::STANDARD.encode(format!("{j}{phi}"))
        ),
        _ => format!(
            r#"{{"resourceType":"Patient","name":[{{"text":{}}}],"telecom":[{{"system":"phone","value":{}}}]}}"#,
            json_str(&format!("{j}{phi}")),
            json_str(phi)
        ),
    }
}

#[track_caller]
fn assert_clean(e: &Engine, out: &[u8], input: &str) {
    let mut hits = Vec::new();
    e.scanner.scan(out, &mut hits);
    if let Some(h) = hits.first() {
        panic!(
            "a finding survived: {:?}\ninput:  {input}\noutput: {}",
            String::from_utf8_lossy(&out[h.start..h.end]),
            String::from_utf8_lossy(out)
        );
    }
}

#[test]
fn no_finding_survives_in_json() {
    let e = strict();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..10_000 {
        let phi = disguise(&mut r);
        let body = place(&mut r, &phi);
        let mut rep = Report::default();
        match process(&e, body.as_bytes(), &mut rep) {
            Ok(JsonOutcome::Rewritten(out)) => {
                assert_clean(&e, &out, &body);
                serde_json::from_slice::<serde_json::Value>(&out)
                    .unwrap_or_else(|_| panic!("invalid JSON out of {body}"));
            }
            Ok(JsonOutcome::Unchanged) => panic!("nothing found in {body}"),
            Ok(JsonOutcome::Blocked) => panic!("blocked without a block action: {body}"),
            Err(err) => panic!("{err:?} on {body}"),
        }
    }
}

#[test]
fn no_finding_survives_in_text() {
    let e = strict();
    let mut r = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..10_000 {
        let mut body = String::new();
        for _ in 0..1 + r.below(3) {
            let seps = [" Patient ", " call ", " SSN: ", "\n", "; ", " "];
            let sep: &&str = r.pick(&seps);
            body.push_str(sep);
            body.push_str(&disguise(&mut r));
        }
        let mut rep = Report::default();
        match e.process_text(body.as_bytes(), &mut rep) {
            TextOutcome::Rewritten(out) => assert_clean(&e, &out, &body),
            other => panic!(
                "{}: {body}",
                match other {
                    TextOutcome::Unchanged => "nothing found",
                    _ => "blocked",
                }
            ),
        }
    }
}
