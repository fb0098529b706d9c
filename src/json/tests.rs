//! Generated variants of every class the grammar decides (see `mod.rs`), with serde_json as an
//! independent oracle where its reading is the same (it ignores duplicates and caps depth at
//! 128; those are checked on their own).

use super::*;

fn ours(text: &[u8]) -> Result<(), ErrorKind> {
    check(text, MAX_DEPTH).map_err(|e| e.kind)
}

fn serde_ok(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(text).is_ok()
}

/// Decode the one string token of `"…"`-wrapped `content`.
fn decoded(content: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let mut doc = b"\"".to_vec();
    doc.extend_from_slice(content);
    doc.push(b'"');
    let s = string(&doc, 0).map_err(|e| e.kind)?;
    if s.end + 1 != doc.len() {
        return Err(ErrorKind::TrailingData);
    }
    let d = decode(s.raw(&doc), s.esc).map_err(|e| e.kind)?;
    assert_eq!(s.esc, content.contains(&b'\\'));
    Ok(d.into_owned())
}

#[test]
fn every_two_byte_escape() {
    for c in 0u8..=255 {
        let want = match c {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        let got = decoded(&[b'a', b'\\', c, b'z']);
        match want {
            Some(w) => assert_eq!(got, Ok(vec![b'a', w, b'z']), "escape {c:#x}"),
            // `\u` alone is a bad \u escape; every other byte a bad escape.
            None if c == b'u' => assert_eq!(got, Err(ErrorKind::BadUnicodeEscape)),
            None => assert!(got.is_err(), "escape {c:#x} accepted"),
        }
    }
    // A backslash as the last content byte swallows the closing quote.
    assert_eq!(decoded(b"a\\"), Err(ErrorKind::UnterminatedString));
}

#[test]
fn every_control_byte_raw_refused_escaped_accepted() {
    for c in 0u8..0x20 {
        assert_eq!(
            decoded(&[b'x', c, b'y']),
            Err(ErrorKind::ControlChar),
            "{c:#x}"
        );
        for hex in [format!("\\u{c:04x}"), format!("\\u{c:04X}")] {
            assert_eq!(decoded(hex.as_bytes()), Ok(vec![c]), "{hex}");
        }
    }
    // DEL and everything above are not control characters for JSON.
    assert_eq!(decoded(&[0x7F]), Ok(vec![0x7F]));
}

#[test]
fn every_bmp_unicode_escape() {
    for cp in 0u32..=0xFFFF {
        for text in [format!("\\u{cp:04x}"), format!("\\u{cp:04X}")] {
            let got = decoded(text.as_bytes());
            match char::from_u32(cp) {
                Some(ch) => {
                    assert_eq!(got, Ok(ch.to_string().into_bytes()), "{text}");
                    assert!(serde_ok(format!("\"{text}\"").as_bytes()), "{text}");
                }
                None => {
                    assert_eq!(got, Err(ErrorKind::LoneSurrogate), "{text}");
                    // serde_json refuses a lone surrogate too.
                    assert!(!serde_ok(format!("\"{text}\"").as_bytes()), "{text}");
                }
            }
        }
    }
    for bad in [
        "\\u", "\\u1", "\\u12", "\\u123", "\\u123g", "\\uG000", "\\u+123", "\\u 123",
    ] {
        assert_eq!(
            decoded(bad.as_bytes()),
            Err(ErrorKind::BadUnicodeEscape),
            "{bad}"
        );
    }
}

#[test]
fn surrogate_pairs_and_lone_halves() {
    for hi in (0xD800u32..0xDC00).step_by(0x3F) {
        for lo in (0xDC00u32..0xE000).step_by(0x3D) {
            let text = format!("\\u{hi:04x}\\u{lo:04X}");
            let ch = char::decode_utf16([hi as u16, lo as u16])
                .next()
                .and_then(Result::ok);
            let want = ch.map(|c| c.to_string().into_bytes());
            assert_eq!(decoded(text.as_bytes()).ok(), want, "{text}");
            // Reversed, doubled, split by a character, or followed by a non-surrogate:
            // every lone half is refused.
            for variant in [
                format!("\\u{lo:04x}\\u{hi:04x}"),
                format!("\\u{hi:04x}\\u{hi:04x}"),
                format!("\\u{hi:04x}x\\u{lo:04x}"),
                format!("\\u{hi:04x}\\u0041"),
                format!("\\u{hi:04x}\\n"),
                format!("\\u{hi:04x}"),
                format!("\\u{lo:04x}"),
            ] {
                assert_eq!(
                    decoded(variant.as_bytes()),
                    Err(ErrorKind::LoneSurrogate),
                    "{variant}"
                );
                assert!(!serde_ok(format!("\"{variant}\"").as_bytes()));
            }
        }
    }
}

#[test]
fn utf8_is_required_in_strings() {
    // Every lead byte with a continuation byte, plus overlong, surrogate and truncated forms.
    for lead in 0x80u8..=0xFF {
        for cont in [0x80u8, 0xBF, 0x41] {
            let raw = [lead, cont, cont, cont];
            let valid = std::str::from_utf8(&raw).is_ok();
            assert_eq!(decoded(&raw).is_ok(), valid, "{raw:x?}");
            let mut doc = b"\"".to_vec();
            doc.extend_from_slice(&raw);
            doc.push(b'"');
            assert_eq!(ours(&doc).is_ok(), serde_ok(&doc), "{raw:x?}");
        }
    }
    for raw in [
        &[0xC0u8, 0x80][..],
        &[0xED, 0xA0, 0x80],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0xE2, 0x82],
    ] {
        assert_eq!(decoded(raw), Err(ErrorKind::BadUtf8), "{raw:x?}");
    }
    assert_eq!(decoded("é€😀".as_bytes()), Ok("é€😀".as_bytes().to_vec()));
}

#[test]
fn numbers_generated_against_the_grammar_and_serde() {
    let signs = ["", "-", "+", "--"];
    let ints = ["0", "1", "9", "10", "01", "00", "123", ""];
    let fracs = ["", ".", ".0", ".5", ".50", "..1", ".x"];
    let exps = [
        "", "e", "E", "e1", "E+2", "e-3", "e+", "e-", "e01", "E+0", "ee1", "e1.5",
    ];
    let mut n = 0;
    for s in signs {
        for i in ints {
            for f in fracs {
                for e in exps {
                    let lexeme = format!("{s}{i}{f}{e}");
                    if lexeme.is_empty() {
                        continue;
                    }
                    let valid = matches!(s, "" | "-")
                        && (i == "0" || (i.starts_with(|c: char| c != '0') && !i.is_empty()))
                        && matches!(f, "" | ".0" | ".5" | ".50")
                        && !matches!(e, "e" | "E" | "e+" | "e-" | "ee1" | "e1.5");
                    for doc in [
                        lexeme.clone(),
                        format!("[{lexeme}]"),
                        format!("{{\"n\":{lexeme}}}"),
                    ] {
                        let got = ours(doc.as_bytes());
                        assert_eq!(got.is_ok(), valid, "{doc}: {got:?}");
                        assert_eq!(serde_ok(doc.as_bytes()), valid, "serde on {doc}");
                        n += 1;
                    }
                    if valid {
                        let (end, int) = number(lexeme.as_bytes(), 0).unwrap();
                        assert_eq!(end, lexeme.len());
                        assert_eq!(int, f.is_empty() && e.is_empty(), "{lexeme}");
                    }
                }
            }
        }
    }
    assert!(n > 5000);
    // Glued on: one bad number, not a separator problem.
    for glued in ["1x", "1.2.3", "1e5e5", "0x10", "1-2", "1+2", "2E"] {
        assert_eq!(
            ours(format!("[{glued}]").as_bytes()),
            Err(ErrorKind::BadNumber),
            "{glued}"
        );
    }
    for odd in ["Infinity", "-Infinity", "NaN", ".5", "+1", "0.", "- 1"] {
        assert!(ours(odd.as_bytes()).is_err(), "{odd}");
    }
}

#[test]
fn literals_exact() {
    for (lit, kind) in [
        ("true", Kind::True),
        ("false", Kind::False),
        ("null", Kind::Null),
    ] {
        let mut t = Tokenizer::new(lit.as_bytes(), 4);
        assert_eq!(t.next().unwrap().map(|t| t.kind), Some(kind));
        assert_eq!(t.next(), Ok(None));
        // Every truncation, every one-letter change, every glued letter or digit: refused.
        for cut in 1..lit.len() {
            assert!(ours(&lit.as_bytes()[..cut]).is_err(), "{}", &lit[..cut]);
        }
        for i in 0..lit.len() {
            for c in b'A'..=b'z' {
                let mut v = lit.as_bytes().to_vec();
                if v[i] == c {
                    continue;
                }
                v[i] = c;
                assert!(ours(&v).is_err());
                assert!(!serde_ok(&v));
            }
        }
        for glue in [b'x', b'1', b'_', b'E'] {
            let mut v = lit.as_bytes().to_vec();
            v.push(glue);
            assert!(ours(&v).is_err());
        }
    }
}

#[test]
fn whitespace_is_four_bytes_only() {
    for c in 0u8..=255 {
        let doc = [c, b'[', c, b'1', c, b']', c];
        let ws = matches!(c, b' ' | b'\t' | b'\n' | b'\r');
        assert_eq!(ours(&doc).is_ok(), ws, "{c:#x}");
        assert_eq!(serde_ok(&doc), ws, "{c:#x}");
    }
}

#[test]
fn bom_refused_but_not_inside_strings() {
    let bom = [0xEF, 0xBB, 0xBF];
    for doc in [&b"{}"[..], b"[]", b"1", b"\"x\""] {
        let mut v = bom.to_vec();
        v.extend_from_slice(doc);
        assert_eq!(ours(&v), Err(ErrorKind::Bom));
        assert!(!serde_ok(&v));
    }
    assert!(ours("\"\u{FEFF}\"".as_bytes()).is_ok());
    assert!(ours(b" \xEF\xBB\xBF{}").is_err());
}

#[test]
fn trailing_bytes_after_the_document() {
    for c in 0u8..=255 {
        for doc in [&b"{\"a\":1}"[..], b"[1]", b"7", b"\"s\"", b"null"] {
            let mut v = doc.to_vec();
            v.push(c);
            let ws = matches!(c, b' ' | b'\t' | b'\n' | b'\r');
            // A digit after a number continues it; everything else that is not
            // whitespace is refused.
            let number_continues = doc == b"7" && c.is_ascii_digit();
            assert_eq!(
                ours(&v).is_ok(),
                ws || number_continues,
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }
    assert_eq!(ours(b"{} {}"), Err(ErrorKind::TrailingData));
    assert_eq!(ours(b""), Err(ErrorKind::Empty));
    assert_eq!(ours(b" \n"), Err(ErrorKind::Empty));
}

#[test]
fn nesting_at_the_limit_plus_minus_one() {
    for limit in [1usize, 2, 7, 64, 127, 128, MAX_DEPTH] {
        for depth in [limit - 1, limit, limit + 1] {
            for (open, close, inner) in [
                ("[", "]", "1"),
                ("{\"k\":", "}", "1"),
                ("[{\"k\":", "}]", "1"),
            ] {
                let per = if open.len() > 5 { 2 } else { 1 };
                if depth % per != 0 {
                    continue;
                }
                let n = depth / per;
                let doc = format!("{}{inner}{}", open.repeat(n), close.repeat(n));
                let got = check(doc.as_bytes(), limit).map_err(|e| e.kind);
                if depth <= limit {
                    assert_eq!(got, Ok(()), "limit {limit} depth {depth} {open}");
                } else {
                    assert_eq!(got, Err(ErrorKind::TooDeep), "limit {limit} depth {depth}");
                }
            }
        }
    }
    // The hard cap holds whatever a consumer asks for.
    let doc = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(
        check(doc.as_bytes(), usize::MAX).map_err(|e| e.kind),
        Err(ErrorKind::TooDeep)
    );
    // Deep input that is not closed fails without recursion either way.
    let open = "[".repeat(100_000);
    assert!(check(open.as_bytes(), usize::MAX).is_err());
}

/// Every spelling of `name` with each character raw or escaped (`\u00XX` in either case,
/// or a two-byte escape where one exists).
fn spellings(name: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for ch in name.chars() {
        let mut forms = vec![ch.to_string()];
        let cp = ch as u32;
        forms.push(format!("\\u{cp:04x}"));
        forms.push(format!("\\u{cp:04X}"));
        if ch == '/' {
            forms.push("\\/".into());
        }
        out = out
            .iter()
            .flat_map(|p| forms.iter().map(move |f| format!("{p}{f}")))
            .collect();
    }
    out
}

#[test]
fn duplicates_compared_after_unescaping() {
    for name in ["a", "id", "a/b", "é"] {
        let all = spellings(name);
        for x in &all {
            for y in &all {
                for filler in [0usize, 3, 12] {
                    let mut members: Vec<String> =
                        (0..filler).map(|i| format!("\"f{i}\":{i}")).collect();
                    members.insert(0, format!("\"{x}\":1"));
                    members.push(format!("\"{y}\":2"));
                    let doc = format!("{{{}}}", members.join(","));
                    assert_eq!(ours(doc.as_bytes()), Err(ErrorKind::Duplicate), "{doc}");
                    // Nested in an array and an object: still found.
                    let nested = format!("[{{\"o\":{doc}}}]");
                    assert_eq!(ours(nested.as_bytes()), Err(ErrorKind::Duplicate));
                }
            }
        }
    }
    // Same names in sibling objects, or a name and its prefix: not duplicates.
    for ok in [
        r#"[{"a":1},{"a":1}]"#,
        r#"{"a":{"a":{"a":1}}}"#,
        r#"{"a":1,"ab":2,"\u0061b\u0063":3}"#,
        r#"{"a":1,"A":2,"_a":3}"#,
    ] {
        assert_eq!(ours(ok.as_bytes()), Ok(()), "{ok}");
    }
}

#[test]
fn token_offsets_and_borrowed_decoding() {
    let doc = br#" {"a\u0062" : [1, -2.5e3, "x\"y", true, null, {}], "c":"plain"} "#;
    let mut t = Tokenizer::new(doc, 8);
    let mut seen = Vec::new();
    while let Some(tok) = t.next().unwrap() {
        seen.push(tok);
    }
    let kinds: Vec<Kind> = seen.iter().map(|t| t.kind).collect();
    use Kind::*;
    assert_eq!(
        kinds,
        [
            ObjStart, Key, ArrStart, Num, Num, Str, True, Null, ObjStart, ObjEnd, ArrEnd, Key, Str,
            ObjEnd
        ]
    );
    let key = seen[1];
    assert!(key.esc);
    assert_eq!(&*decode_str(key.raw(doc), key.esc).unwrap(), "ab");
    assert_eq!(seen[4].raw(doc), b"-2.5e3");
    assert_eq!(&*decode_str(seen[5].raw(doc), seen[5].esc).unwrap(), "x\"y");
    let plain = seen[12];
    assert!(!plain.esc);
    assert!(matches!(
        decode_str(plain.raw(doc), plain.esc).unwrap(),
        std::borrow::Cow::Borrowed("plain")
    ));
    // The offset map points each decoded byte at the bytes that produced it.
    let (mut out, mut map) = (Vec::new(), Vec::new());
    decode_map(key.raw(doc), key.start, &mut out, &mut map).unwrap();
    assert_eq!(out, b"ab");
    assert_eq!(map, [(3, 4), (4, 10)]);
    // skip_value stops right after one value, whatever follows.
    assert_eq!(skip_value(doc, 1, 8), Ok(doc.len() - 1));
    assert_eq!(skip_value(b" [1,{\"a\":2}] x", 0, 8), Ok(12));
    assert_eq!(
        skip_value(b"{\"a\":1,\"a\":2} x", 0, 8).map_err(|e| e.kind),
        Err(ErrorKind::Duplicate)
    );
}

const SAMPLE: &str = r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"},
 "name":[{"family":"O\u2019Brien","given":["Ann","Lee"],"_given":[null,{"id":"g"}]}],
 "birthDate":"1970-01-02","multipleBirthInteger":-2,"active":true,"deceasedBoolean":false,
 "extension":[{"url":"http://x/y","valueDecimal":1.50e-3}],"note":null,
 "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">\ud83d\ude00 \/ é</div>"}}"#;

#[test]
fn truncated_at_every_offset_and_mutated_at_every_byte() {
    let doc = SAMPLE.as_bytes();
    assert_eq!(ours(doc), Ok(()));
    for cut in 0..doc.len() {
        let got = ours(&doc[..cut]);
        assert!(got.is_err(), "prefix {cut} accepted");
        assert!(skip_value(&doc[..cut], 0, 8).is_err());
    }
    // Every byte replaced by each of a set of structural and tricky bytes: never a panic,
    // and the same verdict as serde_json (the sample has no duplicates, no deep nesting, no
    // huge numbers, so only a duplicate made by the mutation may differ).
    let subs = [
        b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b' ', b'0', b'-', b'e', b'u', b'/', 0x00,
        0x1F, 0x7F, 0x80, 0xFF, b'a',
    ];
    for i in 0..doc.len() {
        for &c in &subs {
            let mut v = doc.to_vec();
            v[i] = c;
            let got = ours(&v);
            if got != Err(ErrorKind::Duplicate) {
                assert_eq!(
                    got.is_ok(),
                    serde_ok(&v),
                    "byte {i} -> {c:#x}: {got:?} {}",
                    String::from_utf8_lossy(&v)
                );
            }
            let _ = skip_value(&v, i, 8);
        }
        // Deleted, and doubled.
        let mut del = doc.to_vec();
        del.remove(i);
        let got = ours(&del);
        if got != Err(ErrorKind::Duplicate) {
            assert_eq!(got.is_ok(), serde_ok(&del), "byte {i} deleted");
        }
        let mut dup = doc.to_vec();
        dup.insert(i, doc[i]);
        let got = ours(&dup);
        if got != Err(ErrorKind::Duplicate) {
            assert_eq!(got.is_ok(), serde_ok(&dup), "byte {i} doubled");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The index (lexed once) against the tokenizer: same tokens, same errors, same positions.
// ---------------------------------------------------------------------------------------------

/// Everything the tokenizer yields for `doc` at `depth`: tokens, then `Ok(None)` or the
/// error, then what a further call returns.
fn tokenizer_run(doc: &[u8], depth: usize) -> (Vec<Token>, Result<(), Error>, Result<(), Error>) {
    let mut t = Tokenizer::new(doc, depth);
    let mut toks = Vec::new();
    let end = loop {
        match t.next() {
            Ok(Some(tok)) => toks.push(tok),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let again = t.next().map(|n| assert!(n.is_none()));
    (toks, end, again)
}

fn index_run(ix: &Index, depth: usize) -> (Vec<Token>, Result<(), Error>, Result<(), Error>) {
    // Through `Source`, the way a consumer takes either.
    let mut c = Source::Index(ix.cursor(depth));
    let mut toks = Vec::new();
    let end = loop {
        match c.next() {
            Ok(Some(tok)) => toks.push(tok),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let again = c.next().map(|n| assert!(n.is_none()));
    (toks, end, again)
}

/// The index of `doc` replays exactly the tokenizer, at every consumer depth limit; for a
/// valid document the positional look-ups answer what the `lex` primitives answer.
fn index_agrees(doc: &[u8]) -> bool {
    let ix = Index::build(doc).expect("small body");
    for depth in [1, 2, 7, 64, MAX_DEPTH] {
        let want = tokenizer_run(doc, depth);
        let got = index_run(&ix, depth);
        assert_eq!(
            got,
            want,
            "depth {depth}: {:?}",
            String::from_utf8_lossy(doc)
        );
    }
    let full = tokenizer_run(doc, MAX_DEPTH);
    assert_eq!(ix.error(), full.1.err());
    assert_eq!(ix.len(), full.0.len());
    let Some(mut seek) = ix.seek(doc) else {
        assert!(ix.error().is_some());
        return false;
    };
    // Each token start, forwards and then backwards (a look-ahead jumps back).
    let toks = full.0;
    let mut order: Vec<&Token> = toks.iter().collect();
    order.extend(toks.iter().rev());
    for t in order {
        match t.kind {
            Kind::Key | Kind::Str => {
                let q = t.start - 1;
                assert_eq!(seek.string(q), string(doc, q).ok());
                assert_eq!(seek.value_end(q), skip_value(doc, q, MAX_DEPTH).ok());
            }
            Kind::Num => {
                assert_eq!(seek.number(t.start), number(doc, t.start).ok());
                assert_eq!(
                    seek.value_end(t.start),
                    skip_value(doc, t.start, MAX_DEPTH).ok()
                );
            }
            Kind::True | Kind::False | Kind::Null => {
                let lit: &[u8] = t.raw(doc);
                assert_eq!(seek.literal(t.start, lit), literal(doc, t.start, lit).ok());
                assert_eq!(seek.literal(t.start, b"nope"), None);
                assert_eq!(seek.number(t.start), None);
            }
            Kind::ObjStart | Kind::ArrStart => {
                assert_eq!(
                    seek.value_end(t.start),
                    skip_value(doc, t.start, MAX_DEPTH).ok()
                );
                assert_eq!(seek.string(t.start), None);
            }
            Kind::ObjEnd | Kind::ArrEnd => assert_eq!(seek.value_end(t.start), None),
        }
    }
    // Offsets where no token starts: no answer (the walker falls back to the primitive).
    for at in 0..=doc.len() + 1 {
        if !toks.iter().any(|t| t.start == at || t.start == at + 1) {
            assert_eq!(seek.string(at), None);
            assert_eq!(seek.number(at), None);
        }
    }
    // Another body's bytes (of another length) get no look-ups from this index.
    let mut longer = doc.to_vec();
    longer.push(b' ');
    assert!(ix.seek(&longer).is_none());
    true
}

/// The documents of the tests above, valid and invalid.
fn corpus() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        SAMPLE.as_bytes().to_vec(),
        br#" {"a\u0062" : [1, -2.5e3, "x\"y", true, null, {}], "c":"plain"} "#.to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        b"\"\"".to_vec(),
        br#"{"":""}"#.to_vec(),
        br#"[{"a":1},{"a":1}]"#.to_vec(),
        br#"{"a":1,"ab":2,"\u0061b\u0063":3}"#.to_vec(),
        b"".to_vec(),
        b" \n".to_vec(),
        b"\xEF\xBB\xBF{}".to_vec(),
        b"{} {}".to_vec(),
        b"[1,]".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"[1 2]".to_vec(),
        b"{\"a\" 1}".to_vec(),
        b"{1:2}".to_vec(),
        b"[\"\\ud800\"]".to_vec(),
        b"[\"\x80\"]".to_vec(),
        b"[01]".to_vec(),
        b"[tru]".to_vec(),
        b"[nulls]".to_vec(),
    ];
    for lit in ["true", "false", "null", "0", "-1.5e-3", "\"s\""] {
        out.push(lit.as_bytes().to_vec());
        out.push(format!("[{lit}]").into_bytes());
        out.push(format!("{{\"k\":{lit}}}").into_bytes());
    }
    // Nesting around each depth limit, both container kinds.
    for n in [1usize, 2, 3, 7, 8, 63, 64, 65, 255, 256, 257] {
        out.push(format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes());
        out.push(format!("{}1{}", "{\"k\":".repeat(n), "}".repeat(n)).into_bytes());
        out.push("[".repeat(n).into_bytes());
    }
    // Duplicated keys in every escape spelling, with fillers, nested.
    for name in ["a", "é", "a/b"] {
        let all = spellings(name);
        for x in all.iter().take(4) {
            for y in all.iter().rev().take(4) {
                for filler in [0usize, 3, 12] {
                    let mut members: Vec<String> =
                        (0..filler).map(|i| format!("\"f{i}\":{i}")).collect();
                    members.insert(0, format!("\"{x}\":1"));
                    members.push(format!("\"{y}\":[2]"));
                    let doc = format!("{{{}}}", members.join(","));
                    out.push(format!("[{{\"o\":{doc}}}]").into_bytes());
                    out.push(doc.into_bytes());
                }
            }
        }
    }
    // Every escape, in a key and in a value.
    for esc in [
        "\\\"",
        "\\\\",
        "\\/",
        "\\b",
        "\\f",
        "\\n",
        "\\r",
        "\\t",
        "\\u0041",
        "\\uD83D\\uDE00",
        "\\u",
        "\\x",
        "\\uD800",
        "\\uDC00x",
    ] {
        out.push(format!("{{\"k{esc}\":\"v{esc}\"}}").into_bytes());
    }
    out
}

#[test]
fn index_replays_the_tokenizer_on_every_variant() {
    let mut valid = 0;
    let mut invalid = 0;
    let mut count = |ok: bool| if ok { valid += 1 } else { invalid += 1 };
    for doc in corpus() {
        count(index_agrees(&doc));
        // Truncated at every byte.
        for cut in 0..doc.len() {
            count(index_agrees(&doc[..cut]));
        }
    }
    // Every byte of the sample replaced by a structural or tricky byte, deleted, doubled.
    let doc = SAMPLE.as_bytes();
    let subs = [
        b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b' ', b'0', b'-', b'e', b'u', 0x00, 0x80,
    ];
    for i in 0..doc.len() {
        for &c in &subs {
            let mut v = doc.to_vec();
            v[i] = c;
            count(index_agrees(&v));
        }
        let mut del = doc.to_vec();
        del.remove(i);
        count(index_agrees(&del));
        let mut dup = doc.to_vec();
        dup.insert(i, doc[i]);
        count(index_agrees(&dup));
    }
    // Both classes were exercised in bulk.
    assert!(
        valid > 500 && invalid > 5000,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn a_tokenizer_source_and_an_index_source_are_interchangeable() {
    let doc = SAMPLE.as_bytes();
    let ix = Index::build(doc).unwrap();
    let mut a = Source::new(doc, None, 8);
    let mut b = Source::new(doc, Some(&ix), 8);
    assert!(matches!(a, Source::Lex(_)) && matches!(b, Source::Index(_)));
    loop {
        let (x, y) = (a.next(), b.next());
        assert_eq!(x, y);
        assert_eq!(a.depth(), b.depth());
        if !matches!(x, Ok(Some(_))) {
            break;
        }
    }
    // An index of other bytes (another length) is not used for these.
    let other = Index::build(b"[1]").unwrap();
    assert!(matches!(Source::new(doc, Some(&other), 8), Source::Lex(_)));
}
