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
    // The direct read: the same tokens; for a valid body, a consumer's depth limit fails
    // exactly when the recorded nesting is above it.
    assert_eq!(ix.tokens().collect::<Vec<_>>(), full.0);
    if ix.error().is_none() {
        for depth in [1, 2, 7, 64, 127, 128, MAX_DEPTH] {
            assert_eq!(
                index_run(&ix, depth).1.is_err(),
                ix.nesting() > depth,
                "depth {depth}"
            );
        }
    }
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

// ---------------------------------------------------------------------------------------------
// The word-at-a-time scans (strings eight bytes per step, whitespace runs, name fingerprints)
// against byte-at-a-time references, around every boundary they introduce.
// ---------------------------------------------------------------------------------------------

/// The string grammar one byte at a time, errors where the grammar puts them: the reference
/// the word-at-a-time [`string`] must match, result for result.
fn string_ref(b: &[u8], at: usize) -> Result<Str, Error> {
    if b.get(at) != Some(&b'"') {
        return Err(Error::new(ErrorKind::UnexpectedChar, at));
    }
    let start = at + 1;
    let mut i = start;
    let mut esc = false;
    loop {
        match b.get(i) {
            None => return Err(Error::new(ErrorKind::UnterminatedString, b.len())),
            Some(b'"') => break,
            Some(b'\\') => {
                esc = true;
                let (_, len) = escape_at(b, i).map_err(|k| Error::new(k, i))?;
                i += len;
            }
            Some(&c) if c < 0x20 => return Err(Error::new(ErrorKind::ControlChar, i)),
            Some(_) => i += 1,
        }
    }
    if std::str::from_utf8(&b[start..i]).is_err() {
        return Err(Error::new(ErrorKind::BadUtf8, start));
    }
    Ok(Str { start, end: i, esc })
}

/// What can stop or complicate a run of string content: the closing quote, each escape
/// (valid, invalid, cut short), control bytes, DEL and space (not stops), UTF-8 of each
/// length, and invalid UTF-8 (stray continuation, cut sequences, overlong, surrogate, above
/// U+10FFFF, 0xFF, a lead byte followed by the quote).
const PIECES: &[&[u8]] = &[
    b"\"",
    b"\\\"",
    b"\\\\",
    b"\\/",
    b"\\n",
    b"\\u00e9",
    b"\\uD83D\\uDE00",
    b"\\x",
    b"\\u12",
    b"\\uD800",
    b"\\",
    b"\x00",
    b"\x1f",
    b"\n",
    b"\x7f",
    b" ",
    "é".as_bytes(),
    "€".as_bytes(),
    "😀".as_bytes(),
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
    b"\xc3\"",
];

/// How the body goes on after the content: closed (and more JSON, or non-ASCII or invalid
/// bytes right after the quote, which a word read past the quote sees), or cut off.
const ENDS: &[&[u8]] = &[
    b"\"",
    b"\":1}",
    b"",
    b"\"\xc3\xa9\"",
    b"\"\xff",
    b"\"        ",
];

/// Suffix lengths: every one up to two words, and around the 16, 32 and 64-byte marks.
fn run_lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=17).collect();
    v.extend([23, 24, 25, 31, 32, 33, 40, 47, 48, 63, 64, 65]);
    v
}

#[test]
fn string_scan_matches_the_bytewise_reference_at_every_offset() {
    let mut cases = 0usize;
    let mut errors = 0usize;
    for lead in [&b""[..], "é".as_bytes(), b"\\t"] {
        for p in 0..=72 {
            for piece in PIECES {
                for q in run_lengths() {
                    for end in ENDS {
                        // `[` first, so the string starts at offset 1 (not 0).
                        let mut doc = b"[\"".to_vec();
                        doc.extend_from_slice(lead);
                        doc.extend(std::iter::repeat_n(b'a', p));
                        doc.extend_from_slice(piece);
                        doc.extend(std::iter::repeat_n(b'b', q));
                        doc.extend_from_slice(end);
                        let want = string_ref(&doc, 1);
                        assert_eq!(string(&doc, 1), want, "{:?}", String::from_utf8_lossy(&doc));
                        cases += 1;
                        errors += usize::from(want.is_err());
                    }
                }
            }
        }
    }
    assert!(
        cases > 100_000 && errors > cases / 4,
        "{cases} cases, {errors} errors"
    );
}

#[test]
fn index_and_tokenizer_agree_on_strings_at_every_offset() {
    // The same pieces as a member name and as a value, so the index's name bookkeeping
    // (fingerprints read as words of the body) meets every boundary too; each document is
    // compared token for token and error for error.
    for p in [0usize, 1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 30, 31, 32, 33, 40] {
        for piece in PIECES {
            for q in [0usize, 1, 2, 7, 8, 9, 16, 33] {
                let mut s = "a".repeat(p).into_bytes();
                s.extend_from_slice(piece);
                s.extend(std::iter::repeat_n(b'b', q));
                let mut docs: Vec<Vec<u8>> = Vec::new();
                for pre in [&b""[..], b"\"x\":0,"] {
                    let mut d = b"{".to_vec();
                    d.extend_from_slice(pre);
                    d.push(b'"');
                    d.extend_from_slice(&s);
                    d.extend_from_slice(b"\":\"");
                    d.extend_from_slice(&s);
                    d.extend_from_slice(b"\"}");
                    docs.push(d.clone());
                    // The same name twice: a duplicate, when the name is one.
                    let mut dd = b"{\"".to_vec();
                    dd.extend_from_slice(&s);
                    dd.extend_from_slice(b"\":0,");
                    dd.extend_from_slice(pre);
                    dd.push(b'"');
                    dd.extend_from_slice(&s);
                    dd.extend_from_slice(b"\":1}");
                    docs.push(dd);
                    // Cut at every byte of the tail (a name close to the body's end).
                    for cut in d.len().saturating_sub(12)..d.len() {
                        docs.push(d[..cut].to_vec());
                    }
                }
                for d in docs {
                    let ix = Index::build(&d).expect("small body");
                    assert_eq!(
                        index_run(&ix, MAX_DEPTH),
                        tokenizer_run(&d, MAX_DEPTH),
                        "{:?}",
                        String::from_utf8_lossy(&d)
                    );
                }
            }
        }
    }
}

/// `skip_ws` one byte at a time.
fn skip_ws_ref(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|&c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

#[test]
fn whitespace_runs_of_every_length_and_mix() {
    const WS: [u8; 4] = [b' ', b'\t', b'\n', b'\r'];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut runs: Vec<Vec<u8>> = Vec::new();
    for n in 0..=40usize {
        runs.push(vec![b' '; n]);
        let mut nl = vec![b'\n'];
        nl.extend(std::iter::repeat_n(b' ', n));
        runs.push(nl);
        // One other whitespace byte at each position of a run of spaces.
        for k in 0..n {
            for w in [b'\t', b'\n', b'\r'] {
                let mut r = vec![b' '; n];
                r[k] = w;
                runs.push(r);
            }
        }
        for _ in 0..8 {
            runs.push((0..n).map(|_| WS[(next() % 4) as usize]).collect());
        }
    }
    // What follows: a value, the end, and bytes that look like whitespace but are not.
    let ends: [&[u8]; 8] = [
        b"1",
        b"",
        b"\x0b",
        b"\x0c",
        b"\xc2\xa0",
        b"\x00",
        b"\x85",
        b"\"s\"",
    ];
    for r in &runs {
        for end in ends {
            let mut d = r.clone();
            d.extend_from_slice(end);
            for at in 0..=d.len() + 1 {
                assert_eq!(skip_ws(&d, at), skip_ws_ref(&d, at), "{d:?} at {at}");
            }
            // Between every token of a document: the index, the tokenizer and serde_json.
            let mut doc = r.clone();
            for part in [
                &b"{"[..],
                b"\"k\"",
                b":",
                b"[",
                b"1",
                b",",
                b"2",
                b"]",
                b"}",
            ] {
                doc.extend_from_slice(part);
                doc.extend_from_slice(r);
            }
            doc.extend_from_slice(end);
            let ix = Index::build(&doc).expect("small body");
            let want = tokenizer_run(&doc, MAX_DEPTH);
            assert_eq!(index_run(&ix, MAX_DEPTH), want, "{doc:?}");
            assert_eq!(want.1.is_ok(), serde_ok(&doc), "{doc:?}");
        }
    }
}

#[test]
fn objects_with_many_members_and_duplicates_anywhere() {
    // Names that share their first and last eight bytes and their length differ only in the
    // middle, so their fingerprints are equal: distinct names must not be called duplicates.
    let collide = |i: usize| format!("abcdefgh{:04}stuvwxyz", i);
    let kinds: [&dyn Fn(usize) -> String; 4] = [
        &|i| format!("k{i}"),
        &|i| "a".repeat(i + 1),
        &collide,
        &|i| format!("name{i:02}"),
    ];
    let escape_first = |s: &str| {
        let mut c = s.chars();
        let f = c.next().unwrap_or('a');
        format!("\\u{:04x}{}", f as u32, c.as_str())
    };
    let mut checked = 0usize;
    for n in [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 18, 31, 32, 33, 64, 100] {
        for kind in kinds {
            let names: Vec<String> = (0..n).map(kind).collect();
            // No duplicate; then a repeat of member i at position j, raw or escaped.
            let mut variants: Vec<(Vec<String>, bool)> = vec![(names.clone(), false)];
            let mut pairs = vec![(0, n), (n - 1, n), (n / 2, 0), (0, 1)];
            pairs.retain(|&(i, j)| i < n && j <= n);
            for (i, j) in pairs {
                for esc in [false, true] {
                    let mut v = names.clone();
                    let dup = if esc {
                        escape_first(&names[i])
                    } else {
                        names[i].clone()
                    };
                    v.insert(j, dup);
                    variants.push((v, true));
                }
            }
            // An escaped spelling of a name that is not a duplicate.
            let mut v = names.clone();
            v[n - 1] = escape_first(&format!("z{}", names[n - 1]));
            variants.push((v, false));
            for (members, dup) in variants {
                for (sep, colon) in [(",", ":"), (",\n  ", ": ")] {
                    let body: Vec<String> = members
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("\"{k}\"{colon}{i}"))
                        .collect();
                    let obj = format!("{{{}}}", body.join(sep));
                    for doc in [obj.clone(), format!("[{obj},{{\"o\":{obj}}}]")] {
                        let d = doc.as_bytes();
                        let ix = Index::build(d).expect("small body");
                        let want = tokenizer_run(d, MAX_DEPTH);
                        assert_eq!(index_run(&ix, MAX_DEPTH), want, "{doc}");
                        let kind = ix.error().map(|e| e.kind);
                        assert_eq!(kind, dup.then_some(ErrorKind::Duplicate), "{doc}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}
