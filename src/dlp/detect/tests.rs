//! Unit tests of the detectors: one section per built-in, user regexes and keywords, context
//! scoring and overlap coalescing, configuration errors, and robustness (invalid UTF-8,
//! megabyte adversarial inputs, random inputs).

use super::*;

const BUILTINS: [(&str, Kind); 10] = [
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

fn builtin_specs() -> Vec<DetectorSpec> {
    BUILTINS
        .iter()
        .map(|(n, k)| DetectorSpec::new(*n, k.clone()))
        .collect()
}

fn all() -> Scanner {
    Scanner::new(&builtin_specs(), 50).unwrap()
}

/// (detector name, matched text, confidence) for every hit.
fn hits_with(sc: &Scanner, text: &[u8]) -> Vec<(String, String, u8)> {
    let mut out = Vec::new();
    sc.scan(text, &mut out);
    out.iter()
        .map(|h| {
            (
                sc.name(h.detector).unwrap().to_string(),
                String::from_utf8_lossy(&text[h.start..h.end]).into_owned(),
                h.confidence,
            )
        })
        .collect()
}

fn hits(text: &str) -> Vec<(String, String)> {
    hits_with(&all(), text.as_bytes())
        .into_iter()
        .map(|(n, m, _)| (n, m))
        .collect()
}

fn found(text: &str, name: &str, matched: &str) -> bool {
    hits(text).iter().any(|(n, m)| n == name && m == matched)
}

fn none_of(text: &str, name: &str) -> bool {
    !hits(text).iter().any(|(n, _)| n == name)
}

#[track_caller]
fn assert_found(text: &str, name: &str, matched: &str) {
    assert!(
        found(text, name, matched),
        "{name} {matched:?} not in {text:?}: {:?}",
        hits(text)
    );
}

#[track_caller]
fn assert_none(text: &str, name: &str) {
    assert!(
        none_of(text, name),
        "unexpected {name} in {text:?}: {:?}",
        hits(text)
    );
}

/// Sorted, non-overlapping, in bounds.
fn check_hits(hay: &[u8], out: &[Hit]) {
    for w in out.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap or disorder: {:?}", w);
    }
    for h in out {
        assert!(h.start < h.end && h.end <= hay.len() && h.confidence <= 100);
    }
}

// --- SSN -------------------------------------------------------------------------------

#[test]
fn ssn_forms() {
    assert_found("SSN 123-45-6789.", "ssn", "123-45-6789");
    assert_found("member 123-45-6789", "ssn", "123-45-6789");
    assert_found("ssn: 123 45 6789", "ssn", "123 45 6789");
    assert_found("(123-45-6789)", "ssn", "123-45-6789");
    // Mixed separators and extra digits are not SSNs.
    assert_none("123-45 6789", "ssn");
    assert_none("1234-45-6789", "ssn");
    assert_none("123-45-67890", "ssn");
    assert_none("x123-45-6789", "ssn");
    assert_none("123-45-6789x", "ssn");
}

#[test]
fn ssn_validity_rules() {
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "078-05-1120",
        "219-09-9999",
    ] {
        assert_none(&format!("SSN {bad}"), "ssn");
    }
    assert_found("SSN 899-99-9999", "ssn", "899-99-9999");
}

#[test]
fn undashed_ssn_needs_context() {
    assert_none("order 123456789 shipped", "ssn");
    assert_found("SSN: 123456789", "ssn", "123456789");
    assert_found("ss# 123456789", "ssn", "123456789");
    assert_found("Social Security number 123456789", "ssn", "123456789");
    assert_found("123456789 (ssn)", "ssn", "123456789");
    // A context word must be a whole word.
    assert_none("lessn 123456789", "ssn");
    // And close: 40 bytes before at most.
    let far = format!("ssn{}123456789", " ".repeat(45));
    assert_none(&far, "ssn");
}

#[test]
fn rejected_candidate_does_not_hide_the_next() {
    assert_found("000-12-3456 123-45-6789", "ssn", "123-45-6789");
    assert_found("666-66-6666 078-05-1120 123-45-6789", "ssn", "123-45-6789");
    // Invalid 16-digit card run followed by a valid one in the same separator chain.
    assert_found(
        "4111 1111 1111 1112 4111 1111 1111 1111",
        "card",
        "4111 1111 1111 1111",
    );
    let h = hits("4111 1111 1111 1111 123-45-6789");
    assert!(
        h.contains(&("card".into(), "4111 1111 1111 1111".into())),
        "{h:?}"
    );
    assert!(h.contains(&("ssn".into(), "123-45-6789".into())), "{h:?}");
}

// --- cards -----------------------------------------------------------------------------

#[test]
fn card_test_numbers() {
    for n in [
        "4111111111111111",
        "4012888888881881",
        "4222222222222",
        "5555555555554444",
        "5105105105105100",
        "2223003122003222",
        "378282246310005",
        "371449635398431",
        "6011111111111117",
        "6011000990139424",
        "3530111333300000",
        "3566002020360505",
        "30569309025904",
        "38520000023237",
        "6200000000000005",
        "6759649826438453",
    ] {
        assert!(card_ok(n.as_bytes()), "{n}");
        assert_found(&format!("card {n} on file"), "card", n);
    }
    assert_found("pay 4111 1111 1111 1111 now", "card", "4111 1111 1111 1111");
    assert_found("pay 4111-1111-1111-1111", "card", "4111-1111-1111-1111");
    assert_found("amex 3782 822463 10005", "card", "3782 822463 10005");
}

#[test]
fn card_rejections() {
    assert!(!card_ok(b"4111111111111112"), "Luhn");
    assert!(
        !card_ok(b"6666666666666"),
        "all one digit (Luhn-valid Maestro shape)"
    );
    assert!(luhn(b"6666666666666"));
    assert!(!card_ok(b"411111111111116"), "Visa has no 15-digit numbers");
    assert!(!card_ok(b"1234567812345670"), "no issuer starts with 1");
    assert!(!card_ok(b"7000000000000000"), "unknown issuer range");
    assert_none("pay 4111 1111 1111 1112", "card");
    assert_none("pay 4111-1111 1111-1111", "card");
    assert_none("41111111111111111111111", "card");
}

// --- NPI -------------------------------------------------------------------------------

#[test]
fn npi_check_digit_and_context() {
    assert!(npi_ok(b"1234567893"));
    assert!(!npi_ok(b"1234567890"));
    assert!(!npi_ok(b"3234567893"));
    assert_none("ref 1234567893", "npi");
    assert_found("NPI: 1234567893", "npi", "1234567893");
    assert_found("rendering provider 1234567893", "npi", "1234567893");
    assert_none("NPI: 1234567890", "npi");
    let fhir = br#"{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"}"#;
    let h = hits_with(&all(), fhir);
    assert!(
        h.iter().any(|(n, m, _)| n == "npi" && m == "1234567893"),
        "{h:?}"
    );
}

/// The trap of multi-pattern search: ten digits rejected as an NPI must still be found as
/// a phone number, and when both readings are valid, context picks the winner.
#[test]
fn npi_and_phone_share_ten_digits() {
    let bad_npi = (2_000_000_000u64..)
        .map(|v| v.to_string())
        .find(|d| !npi_ok(d.as_bytes()) && nanp_ok(d.as_bytes()))
        .unwrap();
    assert_found(&format!("phone {bad_npi}"), "phone", &bad_npi);
    let both = (2_000_000_000u64..)
        .map(|v| v.to_string())
        .find(|d| npi_ok(d.as_bytes()) && nanp_ok(d.as_bytes()))
        .unwrap();
    assert_found(&format!("NPI {both}"), "npi", &both);
    assert_found(&format!("phone {both}"), "phone", &both);
    assert!(hits(&format!("value {both}")).is_empty());
}

// --- MBI -------------------------------------------------------------------------------

#[test]
fn mbi_forms() {
    assert_found("MBI 1EG4-TE5-MK73", "mbi", "1EG4-TE5-MK73");
    assert_found("1EG4TE5MK73", "mbi", "1EG4TE5MK73");
    assert_found("mbi 1eg4te5mk73", "mbi", "1eg4te5mk73");
    assert_found("9AA9AA9AA99", "mbi", "9AA9AA9AA99");
    for bad in [
        "0EG4TE5MK73",
        "1SG4TE5MK73",
        "1EG4TE5MK7",
        "1EG4TE5MK733",
        "1EG4-TE5MK73",
        "1EL4TE5MK73",
    ] {
        assert_none(bad, "mbi");
    }
}

// --- email -----------------------------------------------------------------------------

#[test]
fn email_forms() {
    assert_found(
        "mail john.smith+tag@example.co.uk.",
        "email",
        "john.smith+tag@example.co.uk",
    );
    assert_found("<a@b.io>", "email", "a@b.io");
    assert_found("jsmith1990@example.org", "email", "jsmith1990@example.org");
    // Digits of the local part do not become a separate finding.
    assert_eq!(
        hits("5552345678@txt.example.com"),
        vec![("email".into(), "5552345678@txt.example.com".into())]
    );
    for bad in [
        "a@b",
        "x@localhost",
        "@example.com",
        "a..b@example.com",
        "a.@example.com",
        "a@example.c0m",
        "a@-x.com",
    ] {
        assert_none(bad, "email");
    }
}

// --- phone -----------------------------------------------------------------------------

#[test]
fn phone_forms() {
    for (text, m) in [
        ("call (555) 234-5678", "(555) 234-5678"),
        ("call (555)234-5678", "(555)234-5678"),
        ("555-234-5678", "555-234-5678"),
        ("555.234.5678", "555.234.5678"),
        ("555 234 5678", "555 234 5678"),
        ("555 234-5678", "555 234-5678"),
        ("+1 555 234 5678", "+1 555 234 5678"),
        ("1-555-234-5678", "1-555-234-5678"),
        ("+1 (555) 234-5678", "+1 (555) 234-5678"),
        ("+15552345678", "+15552345678"),
        ("phone: 5552345678", "5552345678"),
        ("tel 15552345678", "15552345678"),
    ] {
        assert_found(text, "phone", m);
    }
}

#[test]
fn phone_rejections() {
    assert_none("ref 5552345678", "phone");
    for bad in [
        "(155) 234-5678",
        "(055) 234-5678",
        "(911) 234-5678",
        "555-134-5678",
        "555-034-5678",
        "555-234-567",
        "555-234-56789",
        "555/234/5678",
        "555-234.5678",
        "phone 2222222222",
    ] {
        assert_none(bad, "phone");
    }
}

// --- IP --------------------------------------------------------------------------------

#[test]
fn ipv4() {
    assert_found("host 10.0.0.1.", "ip", "10.0.0.1");
    assert_found("from 192.168.1.254:8080", "ip", "192.168.1.254");
    assert_found("1.1.1.1", "ip", "1.1.1.1");
    for bad in [
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3.4.5",
        "v 1.2.3.4.5",
        "1.2.3",
        "urn:oid:2.16.840.1.113883.4.1",
    ] {
        assert_none(bad, "ip");
    }
}

#[test]
fn ipv6() {
    for (text, m) in [
        ("addr 2001:db8::1 up", "2001:db8::1"),
        ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        (
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ),
        ("::ffff:192.168.1.1", "::ffff:192.168.1.1"),
        ("lo ::1.", "::1"),
        ("fe80::1", "fe80::1"),
        ("IP:2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
    ] {
        assert_found(text, "ip", m);
    }
    for bad in [
        "12:34:56",
        "std::vec",
        "ab::cd",
        "00:1A:2B:3C:4D:5E",
        "1:2:3",
        "zfe80::1",
        "fe80::1g",
    ] {
        assert_none(bad, "ip");
    }
}

// --- dates -----------------------------------------------------------------------------

#[test]
fn date_forms() {
    for (text, m) in [
        ("born 1990-01-31", "1990-01-31"),
        ("01/31/1990", "01/31/1990"),
        ("1/31/90", "1/31/90"),
        ("31.01.1990", "31.01.1990"),
        ("13/01/1990", "13/01/1990"),
        ("Jan 31, 1990", "Jan 31, 1990"),
        ("jan 31, 1990", "jan 31, 1990"),
        ("Jan. 31, 1990", "Jan. 31, 1990"),
        ("31 January 1990", "31 January 1990"),
        ("January 31 1990", "January 31 1990"),
        ("DOB 31-Jan-1990", "31-Jan-1990"),
        ("Sept 5, 2001", "Sept 5, 2001"),
        ("2000-02-29", "2000-02-29"),
        ("02/29/90", "02/29/90"),
        ("\"lastUpdated\":\"2023-10-01T12:34:56Z\"", "2023-10-01"),
    ] {
        assert_found(text, "date", m);
    }
}

#[test]
fn date_rejections() {
    for bad in [
        "1990-02-30",
        "2001-02-29",
        "1900-02-29",
        "1990-13-01",
        "1990-00-10",
        "1990-01-32",
        "13/13/1990",
        "1.2.3",
        "1.2.34",
        "2020-01-02-3",
        "Feb 30, 1990",
        "Jun 31 1990",
        "Janu 31, 1990",
        "May 5 patients",
        "9999-12-31",
        "31 Foo 1990",
    ] {
        assert_none(bad, "date");
    }
}

// --- VIN -------------------------------------------------------------------------------

#[test]
fn vin_check_digit() {
    assert!(vin_ok(b"1M8GDM9AXKP042788"));
    assert!(vin_ok(b"1HGCM82633A004352"));
    assert_found("VIN 1M8GDM9AXKP042788", "vin", "1M8GDM9AXKP042788");
    assert_found("JH4KA7561PC008269", "vin", "JH4KA7561PC008269");
    assert_none("1M8GDM9AXKP042789", "vin");
    assert_none("1M8GDM9AXKP04278", "vin");
    assert_none("1m8gdm9axkp042788", "vin");
    assert_none("1M8GDM9AXKP04278O", "vin");
}

// --- URL -------------------------------------------------------------------------------

#[test]
fn url_forms() {
    assert_found(
        "see https://example.org/a/b?x=1.",
        "url",
        "https://example.org/a/b?x=1",
    );
    assert_found("(http://x.com/a)", "url", "http://x.com/a");
    assert_found(
        "wiki HTTP://en.wikipedia.org/wiki/A_(b)",
        "url",
        "HTTP://en.wikipedia.org/wiki/A_(b)",
    );
    assert_found(
        "\"url\":\"http://hl7.org/fhir\"",
        "url",
        "http://hl7.org/fhir",
    );
    for bad in ["xhttp://a.com", "http://", "ftp://a.com", "http:/a.com"] {
        assert_none(bad, "url");
    }
    // Digits inside a URL are findings of their own: the coalesced span is the URL's,
    // attributed to the stronger detector (a typed `uri` element still loses the SSN).
    assert_eq!(
        hits("https://h.example/Patient/123-45-6789"),
        vec![("ssn".into(), "https://h.example/Patient/123-45-6789".into())]
    );
    assert_eq!(
        hits("see https://h.example/a?b=1 now"),
        vec![("url".into(), "https://h.example/a?b=1".into())]
    );
}

// --- user regexes, MRN, keywords -------------------------------------------------------

#[test]
fn user_regex_and_mrn() {
    let mut specs = builtin_specs();
    specs.push(DetectorSpec::new(
        "mrn",
        Kind::Regex(r"\bMRN[:# ]?\d{6,10}\b".into()),
    ));
    specs.push(DetectorSpec::new(
        "acct",
        Kind::Regex(r"(?i)\bacct-[a-z]{3}\d{4}\b".into()),
    ));
    let sc = Scanner::new(&specs, 50).unwrap();
    let h = hits_with(
        &sc,
        b"MRN:0012345 and ACCT-abc1234; mrn 1234567 is lowercase",
    );
    let names: Vec<_> = h.iter().map(|(n, m, _)| (n.as_str(), m.as_str())).collect();
    assert_eq!(names, [("mrn", "MRN:0012345"), ("acct", "ACCT-abc1234")]);
}

#[test]
fn regex_errors_name_the_detector() {
    let bad = DetectorSpec::new("mrn", Kind::Regex("MRN(\\d+".into()));
    let err = Scanner::new(&[bad], 50).unwrap_err();
    assert!(
        err.contains("'mrn'") && err.contains("invalid regex"),
        "{err}"
    );
    let empty = DetectorSpec::new("opt", Kind::Regex(r"\d*".into()));
    let err = Scanner::new(&[empty], 50).unwrap_err();
    assert!(err.contains("'opt'") && err.contains("empty"), "{err}");
    let huge = DetectorSpec::new("huge", Kind::Regex(r"\w{1000}{1000}".into()));
    let err = Scanner::new(&[huge], 50).unwrap_err();
    assert!(err.contains("'huge'"), "{err}");
}

#[test]
fn user_regex_on_invalid_utf8() {
    let specs = [DetectorSpec::new(
        "mrn",
        Kind::Regex(r"\bMRN\d{4}\b".into()),
    )];
    let sc = Scanner::new(&specs, 50).unwrap();
    let h = hits_with(&sc, b"\xff\xfeMRN1234\x00\xc3");
    assert_eq!(h, vec![("mrn".into(), "MRN1234".into(), USER_CONFIDENCE)]);
}

#[test]
fn keywords() {
    let specs = [DetectorSpec::new(
        "dx",
        Kind::Keywords(vec!["HIV".into(), "hepatitis C".into(), "hiv-1".into()]),
    )];
    let sc = Scanner::new(&specs, 50).unwrap();
    let m = |t: &str| -> Vec<String> {
        hits_with(&sc, t.as_bytes())
            .into_iter()
            .map(|(_, m, _)| m)
            .collect()
    };
    assert_eq!(m("Pt is HIV+ and has Hepatitis c."), ["HIV", "Hepatitis c"]);
    assert_eq!(m("hivemind, chiv, hepatitis cx"), Vec::<String>::new());
    assert_eq!(m("hiv-1 positive"), ["hiv-1"]);
    // Longest keyword fails its boundary; the shorter one at the same start still counts.
    assert_eq!(m("hiv-1x"), ["hiv"]);
}

// --- context, thresholds, overlap ------------------------------------------------------

#[test]
fn context_boost_and_suppress() {
    let sc = all();
    let conf = |t: &str| hits_with(&sc, t.as_bytes()).first().map(|h| h.2);
    assert_eq!(conf("123-45-6789"), Some(conf::SSN_DASHED));
    assert_eq!(conf("SSN 123-45-6789"), Some(100));
    let mut spec = DetectorSpec::new("ssn", Kind::Ssn);
    spec.suppress = vec!["example".into()];
    spec.min_confidence = Some(60);
    let sc = Scanner::new(&[spec], 50).unwrap();
    assert_eq!(hits_with(&sc, b"Example: 123-45-6789").len(), 0);
    assert_eq!(hits_with(&sc, b"example ssn 123-45-6789")[0].2, 70);
    assert_eq!(hits_with(&sc, b"123-45-6789").len(), 1);
    // Operator boost words work like the defaults.
    let mut spec = DetectorSpec::new("npi", Kind::Npi);
    spec.boost = vec!["rendering #".into()];
    let sc = Scanner::new(&[spec], 50).unwrap();
    assert_eq!(hits_with(&sc, b"Rendering # 1234567893").len(), 1);
}

#[test]
fn min_confidence_per_detector() {
    let mut spec = DetectorSpec::new("date", Kind::Date);
    spec.min_confidence = Some(80);
    let sc = Scanner::new(&[spec], 50).unwrap();
    assert!(hits_with(&sc, b"seen 1990-01-31").is_empty());
    assert_eq!(hits_with(&sc, b"DOB 1990-01-31").len(), 1);
    let sc = Scanner::new(&[DetectorSpec::new("date", Kind::Date)], 0).unwrap();
    assert_eq!(hits_with(&sc, b"1/31/90").len(), 1);
}

#[test]
fn overlapping_findings_are_coalesced() {
    let mut specs = builtin_specs();
    specs.push(DetectorSpec::new(
        "mrn",
        Kind::Regex(r"\b\d{3}-\d{2}\b".into()),
    ));
    specs.push(DetectorSpec::new("tail", Kind::Regex(r"6789 ok".into())));
    let sc = Scanner::new(&specs, 50).unwrap();
    let text = b"id 123-45-6789 ok";
    let mut out = Vec::new();
    sc.scan(text, &mut out);
    check_hits(text, &out);
    assert_eq!(out.len(), 1);
    // Union of SSN, the MRN prefix and the overlapping tail; attributed to the SSN
    // (equal confidence, longest span).
    assert_eq!(&text[out[0].start..out[0].end], b"123-45-6789 ok");
    assert_eq!(sc.name(out[0].detector), Some("ssn"));
}

#[test]
fn scan_appends() {
    let sc = all();
    let mut out = vec![Hit {
        start: 0,
        end: 1,
        detector: 0,
        confidence: 1,
    }];
    sc.scan(b"SSN 123-45-6789", &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].confidence, 1);
}

// --- API and configuration -------------------------------------------------------------

#[test]
fn api_surface() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Scanner>();
    let sc = all();
    assert_eq!(sc.len(), 10);
    assert!(!sc.is_empty());
    assert_eq!(
        sc.detector_names().collect::<Vec<_>>()[..3],
        ["ssn", "card", "npi"]
    );
    assert_eq!(sc.name(9), Some("url"));
    assert_eq!(sc.name(10), None);
    let empty = Scanner::new(&[], 50).unwrap();
    assert!(empty.is_empty());
    let mut out = Vec::new();
    empty.scan(b"SSN 123-45-6789", &mut out);
    assert!(out.is_empty());
    all().scan(b"", &mut out);
    assert!(out.is_empty());
}

#[test]
fn config_errors() {
    let s = |n: &str, k: Kind| DetectorSpec::new(n, k);
    assert!(Scanner::new(&[s("a", Kind::Ssn)], 101).is_err());
    assert!(Scanner::new(&[s("", Kind::Ssn)], 50).is_err());
    let err = Scanner::new(&[s("a", Kind::Ssn), s("a", Kind::Card)], 50).unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
    let mut hi = s("a", Kind::Ssn);
    hi.min_confidence = Some(120);
    assert!(Scanner::new(&[hi], 50).unwrap_err().contains("'a'"));
    assert!(Scanner::new(&[s("k", Kind::Keywords(vec![]))], 50).is_err());
    assert!(Scanner::new(&[s("k", Kind::Keywords(vec![" ".into()]))], 50).is_err());
    let mut b = s("b", Kind::Ssn);
    b.boost = vec![String::new()];
    assert!(Scanner::new(&[b], 50).unwrap_err().contains("'b'"));
    assert!(Scanner::new(&[s("r", Kind::Regex(String::new()))], 50).is_err());
}

// --- robustness ------------------------------------------------------------------------

#[test]
fn raw_json_escapes_are_boundaries() {
    assert_found(r"Phone:\n555-234-5678", "phone", "555-234-5678");
    assert_found(r"SSN\t123-45-6789\r", "ssn", "123-45-6789");
    assert_found(r"\njohn@example.com", "email", "john@example.com");
}

#[test]
fn invalid_utf8_and_nuls() {
    let text = b"\xff\xfe\x00SSN 123-45-6789\x00\xc3\x28 555-234-5678\xe2\x82";
    let h = hits_with(&all(), text);
    let names: Vec<_> = h.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["ssn", "phone"]);
}

/// Runs longer than one parse window (64 groups) must find a candidate anywhere, once.
#[test]
fn long_runs_are_windowed_without_gaps() {
    for k in [0usize, 1, 50, 55, 57, 58, 59, 60, 62, 63, 64, 65, 120, 200] {
        let mut s = "7 ".repeat(k);
        s.push_str("123-45-6789");
        s.push_str(&" 7".repeat(70));
        let h: Vec<_> = hits(&s).into_iter().filter(|(n, _)| n == "ssn").collect();
        assert_eq!(h, vec![("ssn".into(), "123-45-6789".into())], "k={k}");
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A megabyte of digits and separators (and other adversarial shapes) must simply finish:
/// the scan is linear, so this takes milliseconds in release and well under a second in
/// debug builds.
#[test]
fn megabyte_adversarial_inputs_finish() {
    let sc = all();
    let mut out = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"0123456789 -./()+:";
    let soup: Vec<u8> = (0..1 << 20)
        .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize])
        .collect();
    sc.scan(&soup, &mut out);
    check_hits(&soup, &out);
    let units: [&[u8]; 12] = [
        b"1", b"1 ", b"12-", b"1.", b"1:", b"::", b"@", b"a@", b"a.", b"http://", b"Jan 1, ", b"1a",
    ];
    for unit in units {
        let hay: Vec<u8> = unit.iter().copied().cycle().take(1 << 20).collect();
        out.clear();
        sc.scan(&hay, &mut out);
        check_hits(&hay, &out);
    }
}

#[test]
fn fuzz_never_panics_and_hits_are_well_formed() {
    let mut specs = builtin_specs();
    specs.push(DetectorSpec::new("mrn", Kind::Regex(r"\bMRN\d+".into())));
    specs.push(DetectorSpec::new(
        "kw",
        Kind::Keywords(vec!["ssn".into(), "a b".into()]),
    ));
    let sc = Scanner::new(&specs, 0).unwrap();
    let alphabet = b"0123456789 -./()+:@#,abcdefxTJanMRNssnhttp\\\n\xff\x00\xc2";
    let mut x = 42u64;
    let mut out = Vec::new();
    for _ in 0..3000 {
        let len = (xorshift(&mut x) % 96) as usize;
        let hay: Vec<u8> = (0..len)
            .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize])
            .collect();
        out.clear();
        sc.scan(&hay, &mut out);
        check_hits(&hay, &out);
    }
}

#[test]
fn fhir_json_sample() {
    let json = br#"{"resourceType":"Patient","id":"pat-00017","meta":{"versionId":"3","lastUpdated":"2024-02-13T01:11:42.385Z"},
"identifier":[{"system":"http://hl7.org/fhir/sid/us-ssn","value":"123-45-6789"},{"system":"http://hl7.org/fhir/sid/us-mbi","value":"1EG4TE5MK73"}],
"telecom":[{"system":"phone","value":"(555) 234-5678"},{"system":"email","value":"mary.jones@example.com"}],
"birthDate":"1948-01-07","address":[{"postalCode":"05401","line":["534 Erewhon St"]}],
"extension":[{"url":"urn:oid:2.16.840.1.113883.6.238","valueCode":"2106-3"}]}"#;
    let h = hits_with(&all(), json);
    let got: Vec<(&str, &str)> = h.iter().map(|(n, m, _)| (n.as_str(), m.as_str())).collect();
    for want in [
        ("date", "2024-02-13"),
        ("ssn", "123-45-6789"),
        ("mbi", "1EG4TE5MK73"),
        ("phone", "(555) 234-5678"),
        ("email", "mary.jones@example.com"),
        ("date", "1948-01-07"),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    assert!(
        !got.iter()
            .any(|(_, m)| m.contains("05401") || m.contains("2106")),
        "{got:?}"
    );
    let birth = h.iter().find(|(_, m, _)| m == "1948-01-07").unwrap();
    assert_eq!(
        birth.2,
        conf::DATE_ISO + BOOST,
        "birthDate key boosts the date"
    );
}
