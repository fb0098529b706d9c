//! Differential test of the scanner's speed work: generated FHIR-ish JSON bodies (PHI shapes
//! at random positions, at string edges, split by escapes, with look-alike Unicode) must give
//! exactly the findings of the scanner as it was before (`Scanner::scan_oracle`: the old
//! candidate loop with per-scan literal searches and the old byte-at-a-time canonical-form
//! checks), and every string's content scanned alone must too.

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// PHI shapes (valid and near-miss) of every built-in detector.
const PHI: &[&str] = &[
    "123-45-6789",
    "123 45 6789",
    "123456789",
    "000-12-3456",
    "078-05-1120",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "5500 0000 0000 0004",
    "378282246310005",
    "1234567893",
    "1EG4-TE5-MK73",
    "1EG4TE5MK73",
    "jane.doe@example.org",
    "5552345678@txt.example",
    "a@b",
    "(555) 234-5678",
    "555-234-5678",
    "555.234.5678",
    "+1 555 234 5678",
    "+1 (555) 234-5678",
    "555 234 5678",
    "10.0.0.1",
    "192.168.001.1",
    "1.2.3.4.5",
    "2001:db8::1",
    "fe80::1",
    "::1",
    "IP:2001:db8:0:0:0:0:2:1",
    "1990-01-31",
    "1990-01-31T12:00:00Z",
    "01/31/1990",
    "31/01/1990",
    "1/1/90",
    "Jan 31, 1990",
    "31 January 1990",
    "31-Jan-1990",
    "Feb. 3 2001",
    "1HGCM82633A004352",
    "http://example.org/a?b=c",
    "https://h.example/p/123-45-6789",
    "http://x/?u=http://y/z",
    "SSN: ",
    "ssn ",
    "phone ",
    "NPI ",
    "card ",
    "example ",
    "test ",
    "Medicare ",
    "DOB ",
];

/// Filler: JSON-ish words, numbers, separators, escapes and Unicode look-alikes.
const FILL: &[&str] = &[
    " ",
    "  ",
    "the ",
    "patient ",
    "called ",
    "re ",
    ", ",
    ". ",
    "-",
    "/",
    "(",
    ")",
    ":",
    "::",
    "@",
    "://",
    "1",
    "42",
    "2024",
    "3.14",
    "r4",
    "x1",
    "_",
    "\\n",
    "\\t",
    "\\r",
    "\\\"",
    "\\\\",
    "\\u0031",
    "\\u00e9",
    "\\/",
    "é",
    "Müller ",
    "１２３-４５-６７８９",
    "١٢٣-٤٥-٦٧٨٩",
    "123\u{200b}-45-6789",
    "555\u{2011}234\u{2011}5678",
    "\u{00a0}",
    "ﬁ",
    "①",
    "\u{0301}",
    "日本",
];

const KEYS: &[&str] = &[
    "resourceType",
    "id",
    "text",
    "div",
    "note",
    "value",
    "valueString",
    "system",
    "phone",
    "ssn",
    "birthDate",
    "line",
    "display",
    "comment",
    "url",
    "telecom",
    "identifier",
];

fn string_content(r: &mut Rng, out: &mut String) {
    let n = r.below(8);
    for _ in 0..n {
        if r.below(3) == 0 {
            out.push_str(r.pick(PHI));
        } else {
            out.push_str(r.pick(FILL));
        }
    }
}

fn value(r: &mut Rng, depth: usize, out: &mut String) {
    match r.below(if depth > 3 { 3 } else { 5 }) {
        0 => {
            out.push('"');
            string_content(r, out);
            out.push('"');
        }
        1 => {
            // Numbers, some of them PHI-shaped.
            let nums = [
                "123456789",
                "1234567893",
                "4111111111111111",
                "7",
                "-1.5e3",
                "19900131",
            ];
            out.push_str(nums[r.below(nums.len())]);
        }
        2 => out.push_str(["true", "false", "null"][r.below(3)]),
        3 => {
            out.push('{');
            let n = r.below(5);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                if r.below(8) == 0 {
                    string_content(r, out);
                } else {
                    out.push_str(r.pick(KEYS));
                }
                out.push_str("\":");
                value(r, depth + 1, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            let n = r.below(4);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                value(r, depth + 1, out);
            }
            out.push(']');
        }
    }
}

fn scanners() -> Vec<Scanner> {
    let builtins = [
        ("ssn", Kind::Ssn),
        ("card", Kind::Card),
        ("npi", Kind::Npi),
        ("mbi", Kind::Mbi),
        ("email", Kind::Email),
        ("phone", Kind::Phone),
        ("ip", Kind::Ip),
        ("date", Kind::Date),
        ("vin", Kind::Vin),
        ("url", Kind::Url),
    ];
    let all: Vec<DetectorSpec> = builtins
        .iter()
        .map(|(n, k)| DetectorSpec::new(*n, k.clone()))
        .collect();
    let mut with_user = all.clone();
    with_user.push(DetectorSpec::new(
        "mrn",
        Kind::Regex(r"\bMRN\d{6}\b".into()),
    ));
    with_user.push(DetectorSpec::new(
        "names",
        Kind::Keywords(vec!["Müller".into(), "jane".into()]),
    ));
    let mut ctx = all.clone();
    for d in &mut ctx {
        d.boost.push("on file".into());
        d.suppress.push("example".into());
    }
    // Each trigger alone, so every stream is exercised without the others.
    let mut out: Vec<Scanner> = [all, with_user, ctx]
        .iter()
        .map(|s| Scanner::new(s, 50).unwrap())
        .collect();
    for (n, k) in builtins {
        out.push(Scanner::new(&[DetectorSpec::new(n, k)], 0).unwrap());
    }
    out
}

fn check(sc: &Scanner, text: &[u8]) {
    let (mut new, mut old) = (Vec::new(), Vec::new());
    sc.scan(text, &mut new);
    sc.scan_oracle(text, &mut old);
    assert_eq!(new, old, "{:?}", String::from_utf8_lossy(text));
}

#[test]
fn generated_bodies_find_what_the_old_scanner_found() {
    let scs = scanners();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0usize;
    for round in 0..3000 {
        let mut body = String::new();
        value(&mut r, 0, &mut body);
        let bytes = body.as_bytes();
        for sc in &scs {
            check(sc, bytes);
        }
        total += bytes.len();
        // Every prefix length around PHI edges: the 64-byte blocks of the main loop start
        // at different offsets.
        if round % 50 == 0 {
            for cut in 0..bytes.len().min(200) {
                check(&scs[0], &bytes[cut..]);
            }
        }
    }
    assert!(total > 100_000, "{total}");
}

/// Long bodies: many 64-byte blocks, PHI across block edges, megabyte-style density.
#[test]
fn generated_long_texts_find_what_the_old_scanner_found() {
    let scs = scanners();
    let mut r = Rng(0x1234_5678_9abc_def1);
    for _ in 0..60 {
        let mut t = String::new();
        while t.len() < 4000 {
            if r.below(3) == 0 {
                t.push_str(r.pick(PHI));
            } else {
                t.push_str(r.pick(FILL));
            }
            if r.below(10) == 0 {
                t.push_str("\",\"");
                t.push_str(r.pick(KEYS));
                t.push_str("\":\"");
            }
        }
        for sc in &scs {
            check(sc, t.as_bytes());
        }
    }
}
