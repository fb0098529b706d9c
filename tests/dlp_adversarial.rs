//! DLP against an adversary who knows how it reads (issue "no way around the policies"):
//! PHI written so that a byte-level scanner misses it but a reader does not. Every class is
//! generated, not sampled: every Unicode decimal-digit block, every invisible (Cf /
//! default-ignorable) character, every space separator, every dash, compatibility forms,
//! narrative markup between the digits, every string-valued FHIR primitive type, base64
//! attachments (textual, mislabelled, opaque), and HEAD requests. All over real TLS in front of
//! a real upstream; each case asserts what the client got.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::Value;
use ward::dlp::unicode_tables::{DASHES, DIGIT_ZEROS, INVISIBLE, SPACES};

#[derive(Default)]
struct Canned {
    /// Last path segment → (content type, body).
    bodies: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Method and path of every request the upstream saw.
    seen: Mutex<Vec<(String, String)>>,
}

async fn canned_upstream(state: Arc<Canned>) -> std::net::SocketAddr {
    serve_http1(state, |st: Arc<Canned>, req| async move {
        let path = req.uri().path().to_owned();
        st.seen
            .lock()
            .unwrap()
            .push((req.method().to_string(), path.clone()));
        let key = path.rsplit('/').next().unwrap_or("").to_owned();
        let found = st.bodies.lock().unwrap().get(&key).cloned();
        match found {
            Some((ct, body)) => Response::builder()
                .header("content-type", ct)
                .header("etag", "\"upstream-etag\"")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
            None => Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        }
    })
    .await
}

struct Gw {
    env: Env,
    gw: ward::Gateway,
    up: Arc<Canned>,
}

async fn gateway() -> Gw {
    let env = Env::new();
    env.write("dlp.key", "0123456789abcdef0123456789abcdef-test-key");
    env.write(
        "policies/sh.yaml",
        "dlp:\n  preset: safe_harbor\n  key_file: dlp.key\n",
    );
    env.write(
        "policies/redact.yaml",
        "dlp:\n  detectors:\n    ssn: {}\n    phone: {}\n    email: {}\n    card: {}\n",
    );
    env.write(
        "policies/block.yaml",
        "dlp:\n  detectors:\n    ssn: { action: block }\n    phone: { action: block }\n    email: { action: block }\n",
    );
    env.write(
        "policies/report.yaml",
        "dlp:\n  detectors:\n    ssn: { action: report }\n",
    );
    let up = Arc::new(Canned::default());
    let addr = canned_upstream(up.clone()).await;
    let route = |name: &str, policy: &str| {
        format!(
            "  - name: {name}\n    listener: public\n    path_prefix: /{name}\n    upstream: ehr\n    fhir: true\n    policies: [{policy}]\n"
        )
    };
    let cfg = format!(
        r#"
listeners:
  - name: public
    bind: 127.0.0.1:0
    tls:
      certificates:
        - cert: certs/server.pem
          key: certs/server.key
          server_names: [localhost]
upstreams:
  - name: ehr
    url: http://{addr}
routes:
{}{}{}{}  - name: plain
    listener: public
    path_prefix: /plain
    upstream: ehr
    fhir: true
admin:
  bind: 127.0.0.1:0
"#,
        route("sh", "sh"),
        route("redact", "redact"),
        route("block", "block"),
        route("report", "report"),
    );
    let gw = env.start(&cfg).await;
    Gw { env, gw, up }
}

impl Gw {
    fn answer(&self, key: &str, ctype: &str, body: impl Into<Vec<u8>>) {
        self.up
            .bodies
            .lock()
            .unwrap()
            .insert(key.to_owned(), (ctype.to_owned(), body.into()));
    }
    async fn get(&self, c: &TestClient, path: &str) -> Reply {
        send(c, get(&url(&self.gw, path))).await
    }
}

/// `123-45-6789` with its digits from the block starting at `zero`, separators given.
fn ssn_in(zero: u32, sep1: &str, sep2: &str) -> String {
    let d = |n: u32| char::from_u32(zero + n).unwrap().to_string();
    let g = |s: &[u32]| s.iter().map(|&n| d(n)).collect::<String>();
    format!(
        "{}{sep1}{}{sep2}{}",
        g(&[1, 2, 3]),
        g(&[4, 5]),
        g(&[6, 7, 8, 9])
    )
}

/// JSON string content for `s` (quotes and backslashes escaped; everything else raw).
fn js(s: &str) -> String {
    let q = serde_json::to_string(s).unwrap();
    q[1..q.len() - 1].to_owned()
}

/// An Observation carrying `phi` in a free-text element (`valueString`), a typed element
/// (`valueUri` inside a URL), a note, and the narrative.
fn observation(id: &str, phi_json: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final",
"text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Patient SSN {phi_json} on file</div>"}},
"code":{{"text":"note"}},
"note":[{{"text":"SSN {phi_json}"}}],
"extension":[{{"url":"http://example.org/a","valueString":"ssn {phi_json}"}},
{{"url":"http://example.org/b","valueUri":"http://example.org/ssn/{phi_json}"}}],
"valueString":"SSN: {phi_json}"}}"#
    )
}

/// Every string in a JSON document.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

/// Neither `needle` nor its last group (`tail`) is in the body, raw or JSON-decoded.
#[track_caller]
fn assert_gone(r: &Reply, needle: &str, tail: &str, what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let raw = String::from_utf8_lossy(&r.body);
    assert!(!raw.contains(needle), "{what}: `{needle}` leaked:\n{raw}");
    let v: Value = serde_json::from_slice(&r.body).expect("JSON");
    let mut all = Vec::new();
    strings(&v, &mut all);
    for s in &all {
        assert!(!s.contains(needle), "{what}: `{needle}` leaked in {s:?}");
        assert!(!s.contains(tail), "{what}: tail `{tail}` leaked in {s:?}");
    }
    // What is left is still valid FHIR.
    if let Err(issues) = ward::fhir::validate::validate_resource(&r.body, &Default::default(), None)
    {
        panic!("{what}: invalid FHIR after DLP: {issues:?}\n{raw}");
    }
}

/// Run each case through the redacting route (all four places must lose it) and, rotating
/// the place, through the blocking route (403 `dlp_blocked`).
async fn redact_and_block(g: &Gw, cases: &[(String, String, String)]) {
    let c = client(&g.env.pki, false);
    for (i, (what, phi, tail)) in cases.iter().enumerate() {
        let id = format!("v{i}");
        g.answer(&id, "application/fhir+json", observation(&id, &js(phi)));
        let r = g.get(&c, &format!("/redact/Observation/{id}")).await;
        assert_gone(&r, phi, tail, what);
        // The blocking route: one place per request, rotating.
        let place = match i % 4 {
            0 => format!(r#""valueString":"ssn {}""#, js(phi)),
            1 => format!(r#""valueUri":"http://example.org/ssn/{}""#, js(phi)),
            2 => format!(r#""note":[{{"text":"SSN {}"}}]"#, js(phi)),
            _ => format!(
                r#""text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">SSN <b>{}</b></div>"}}"#,
                js(phi)
            ),
        };
        let bid = format!("b{i}");
        g.answer(
            &bid,
            "application/fhir+json",
            format!(
                r#"{{"resourceType":"Observation","id":"{bid}","status":"final","code":{{"text":"x"}},{place}}}"#
            ),
        );
        let r = g.get(&c, &format!("/block/Observation/{bid}")).await;
        assert_eq!(r.status, 403, "{what} (place {}): not blocked", i % 4);
        assert_eq!(r.code(), "dlp_blocked");
        assert!(!String::from_utf8_lossy(&r.body).contains(phi.as_str()));
    }
}

fn tail_of(zero: u32) -> String {
    (6..=9).map(|n| char::from_u32(zero + n).unwrap()).collect()
}

#[tokio::test]
async fn every_unicode_digit_block_reads_as_digits() {
    let g = gateway().await;
    let mut cases = Vec::new();
    for &z in DIGIT_ZEROS.iter().chain(std::iter::once(&0x30)) {
        cases.push((format!("digits U+{z:04X}"), ssn_in(z, "-", "-"), tail_of(z)));
    }
    // Mixed scripts in one number.
    cases.push(("mixed".into(), "1٢3-४5-6７8٩".into(), "6７8٩".into()));
    redact_and_block(&g, &cases).await;
}

#[tokio::test]
async fn invisible_characters_inside_a_value_change_nothing() {
    let g = gateway().await;
    let mut cases = Vec::new();
    for &(lo, hi) in INVISIBLE {
        for cp in [lo, (lo + hi) / 2, hi] {
            let Some(ch) = char::from_u32(cp) else {
                continue;
            };
            // Between every group and inside the last one.
            let phi = format!("1{ch}23-45{ch}-67{ch}89");
            cases.push((format!("invisible U+{cp:04X}"), phi, format!("67{ch}89")));
        }
    }
    cases.dedup_by(|a, b| a.1 == b.1);
    redact_and_block(&g, &cases).await;
}

#[tokio::test]
async fn look_alike_spaces_and_dashes_are_separators() {
    let g = gateway().await;
    let mut cases = Vec::new();
    for &(lo, hi) in SPACES {
        for cp in lo..=hi {
            let ch = char::from_u32(cp).unwrap();
            cases.push((
                format!("space U+{cp:04X}"),
                format!("123{ch}45{ch}6789"),
                "6789".to_owned(),
            ));
        }
    }
    for &(lo, hi) in DASHES {
        for cp in lo..=hi {
            let ch = char::from_u32(cp).unwrap();
            cases.push((
                format!("dash U+{cp:04X}"),
                format!("123{ch}45{ch}6789"),
                "6789".to_owned(),
            ));
        }
    }
    redact_and_block(&g, &cases).await;
}

#[tokio::test]
async fn compatibility_forms_and_marks_fold() {
    let g = gateway().await;
    let cases: Vec<(String, String, String)> = [
        ("full-width", "１２３－４５－６７８９", "６７８９"),
        ("circled", "①②③-④⑤-⑥⑦⑧⑨", "⑥⑦⑧⑨"),
        ("superscript", "¹²³-⁴⁵-⁶⁷⁸⁹", "⁶⁷⁸⁹"),
        ("subscript", "₁₂₃-₄₅-₆₇₈₉", "₆₇₈₉"),
        ("math bold", "𝟏𝟐𝟑-𝟒𝟓-𝟔𝟕𝟖𝟗", "𝟔𝟕𝟖𝟗"),
        ("math monospace", "𝟷𝟸𝟹-𝟺𝟻-𝟼𝟽𝟾𝟿", "𝟼𝟽𝟾𝟿"),
        ("small hyphen", "123﹣45﹣6789", "6789"),
        (
            "combining marks",
            "1\u{0301}23-45-67\u{0308}89",
            "67\u{0308}89",
        ),
        (
            "keycaps",
            "1\u{FE0F}\u{20E3}2\u{20E3}3\u{20E3}-4\u{20E3}5\u{20E3}-6\u{20E3}7\u{20E3}8\u{20E3}9\u{20E3}",
            "8\u{20E3}9\u{20E3}",
        ),
        ("enclosing circles", "1\u{20DD}23-45-6789\u{20DD}", "6789\u{20DD}"),
        ("parenthesized", "⑴⑵⑶-⑷⑸-⑹⑺⑻⑼", "⑹⑺⑻⑼"),
        ("digit full stop", "⒈⒉⒊-⒋⒌-⒍⒎⒏⒐", "⒍⒎⒏⒐"),
        ("phone full-width", "（５５５）２３４－５６７８", "５６７８"),
        (
            "email full-width",
            "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｏｒｇ",
            "ｅｘａｍｐｌｅ",
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    redact_and_block(&g, &cases).await;
}

#[tokio::test]
async fn json_escapes_of_every_class_are_read_too() {
    // The same characters written as \uXXXX escapes (surrogate pairs beyond the BMP).
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let esc = |ch: char| {
        let mut b = [0u16; 2];
        ch.encode_utf16(&mut b)
            .iter()
            .map(|u| format!("\\u{u:04x}"))
            .collect::<String>()
    };
    let mut n = 0;
    let mut chars: Vec<char> = Vec::new();
    for &(lo, _) in INVISIBLE.iter().chain(SPACES).chain(DASHES) {
        chars.extend(char::from_u32(lo));
    }
    for ch in chars {
        let zero = DIGIT_ZEROS[n % DIGIT_ZEROS.len()];
        let d = |k: u32| esc(char::from_u32(zero + k).unwrap());
        let invisible = INVISIBLE
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&u32::from(ch)));
        // Invisible characters go inside the groups; spaces and dashes between them.
        let (inner, sep) = if invisible {
            (esc(ch), "-".to_owned())
        } else {
            (String::new(), esc(ch))
        };
        let phi = format!(
            "{}{inner}{}{}{sep}{}{}{sep}{}{}{inner}{}{}",
            d(1),
            d(2),
            d(3),
            d(4),
            d(5),
            d(6),
            d(7),
            d(8),
            d(9)
        );
        let id = format!("e{n}");
        n += 1;
        g.answer(
            &id,
            "application/fhir+json",
            format!(
                r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"valueString":"SSN {phi}"}}"#
            ),
        );
        let r = g.get(&c, &format!("/block/Observation/{id}")).await;
        assert_eq!(
            r.status,
            403,
            "escaped U+{:04X}: not blocked",
            u32::from(ch)
        );
    }
}

#[tokio::test]
async fn markup_between_the_digits_never_splits_a_value() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let wraps = [
        "<!-- x -->",
        "<!---->",
        "<?x y?>",
        "<![CDATA[]]>",
        "<span></span>",
        "<b/>",
        "<i>",
        "</i>",
        "<x/>",
        "<img src=\"a.png\"/>",
        "<a href=\"#x\">",
        "<sup>",
        "&#x200B;",
        "&#8203;",
        "&#xAD;",
    ];
    for (i, w) in wraps.iter().enumerate() {
        // Around every position of the number.
        for at in [1, 3, 4, 6, 9] {
            let ssn = "123-45-6789";
            let (a, b) = ssn.split_at(at);
            let div = format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">SSN {a}{w}{b}</div>");
            let id = format!("m{i}-{at}");
            let body = format!(
                r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"text":{{"status":"generated","div":{}}}}}"#,
                serde_json::to_string(&div).unwrap()
            );
            g.answer(&id, "application/fhir+json", body);
            let r = g.get(&c, &format!("/block/Observation/{id}")).await;
            assert_eq!(r.status, 403, "`{a}{w}{b}` not blocked");
            let r = g.get(&c, &format!("/redact/Observation/{id}")).await;
            assert_eq!(r.status, 200);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let div = v["text"]["div"].as_str().unwrap_or("");
            assert!(!div.contains(b), "`{a}{w}{b}`: {div}");
        }
    }
}

#[tokio::test]
async fn every_string_primitive_type_is_scanned() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let ssn = "123-45-6789";
    let values = [
        ("valueString", format!("ssn {ssn}")),
        ("valueMarkdown", format!("**SSN** {ssn}")),
        ("valueCode", ssn.to_owned()),
        ("valueId", ssn.to_owned()),
        ("valueUri", format!("http://example.org/{ssn}")),
        ("valueUri", format!("urn:ssn:{ssn}")),
        ("valueUri", ssn.to_owned()),
        ("valueUrl", format!("https://example.org/p?ssn={ssn}")),
        ("valueUrl", format!("https://example.org/{ssn}/x")),
        ("valueCanonical", format!("http://example.org/ssn/{ssn}")),
        ("valueCanonical", format!("http://example.org/x|{ssn}")),
        ("valueOid", format!("urn:oid:{ssn}")),
        ("valueUuid", format!("urn:uuid:{ssn}")),
        ("valueUri", "mailto:jane.doe@example.org".to_owned()),
        (
            "valueUrl",
            "http://example.org/call/555-234-5678".to_owned(),
        ),
        (
            "valueBase64Binary",
            base64::engine::general_purpose::STANDARD.encode(format!("SSN {ssn}")),
        ),
    ];
    for (i, (key, val)) in values.iter().enumerate() {
        let id = format!("t{i}");
        let body = format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"extension":[{{"url":"http://example.org/e","{key}":{}}}]}}"#,
            serde_json::to_string(val).unwrap()
        );
        g.answer(&id, "application/fhir+json", body);
        for route in ["redact", "sh"] {
            let r = g.get(&c, &format!("/{route}/Observation/{id}")).await;
            assert_eq!(r.status, 200, "{route} {key}");
            let raw = String::from_utf8_lossy(&r.body);
            assert!(
                !raw.contains(val.as_str()),
                "{route}: {key}={val} leaked:\n{raw}"
            );
            assert!(
                !raw.contains("6789") && !raw.contains("5678"),
                "{route}: {key}={val}:\n{raw}"
            );
        }
        let r = g.get(&c, &format!("/block/Observation/{id}")).await;
        assert_eq!(r.status, 403, "block: {key}={val}");
    }
    // A plain system URI is not PHI and stays.
    g.answer(
        "sys",
        "application/fhir+json",
        r#"{"resourceType":"Observation","id":"sys","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},"extension":[{"url":"http://example.org/e","valueUri":"http://example.org/fhir/ValueSet/x"}]}"#,
    );
    let r = g.get(&c, "/redact/Observation/sys").await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("http://example.org/fhir/ValueSet/x"));
}

fn attachment_doc(id: &str, ctype: &str, data: &str) -> String {
    format!(
        r#"{{"resourceType":"DocumentReference","id":"{id}","status":"current","content":[{{"attachment":{{"contentType":"{ctype}","data":"{data}","title":"note"}}}}]}}"#
    )
}

#[tokio::test]
async fn attachments_are_decoded_and_scanned() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let texts: Vec<Vec<u8>> = vec![
        b"Patient SSN 123-45-6789".to_vec(),
        br#"{"note":"ssn 123-45-6789"}"#.to_vec(),
        b"MSH|^~\\&|A|B|C|D|202001011200||ADT^A01|1|P|2.5\rPID|1||X||Doe^Jane||||||||555-234-5678\r"
            .to_vec(),
        "SSN １２３-４５-６７８９".as_bytes().to_vec(),
        "<p>SSN 1<!-- -->23-45-6789</p>".as_bytes().to_vec(),
    ];
    let ctypes = [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/json",
        "application/fhir+json",
        "application/xml",
        "x-application/hl7-v2+er7",
        "text/html",
        // Mislabelled: text is read as text whatever the label says.
        "image/png",
        "application/octet-stream",
    ];
    let mut n = 0;
    for t in &texts {
        for ct in ctypes {
            for data in [b64(t), {
                // Line-wrapped base64 (allowed by FHIR's base64Binary).
                let s = b64(t);
                s.as_bytes()
                    .chunks(8)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\\n")
            }] {
                let id = format!("d{n}");
                n += 1;
                g.answer(&id, "application/fhir+json", attachment_doc(&id, ct, &data));
                let r = g.get(&c, &format!("/block/DocumentReference/{id}")).await;
                assert_eq!(
                    r.status,
                    403,
                    "{ct}: {:?} not blocked",
                    String::from_utf8_lossy(t)
                );
                let r = g.get(&c, &format!("/redact/DocumentReference/{id}")).await;
                assert_eq!(r.status, 200);
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert!(
                    v["content"][0]["attachment"].get("data").is_none(),
                    "{ct}: data kept: {v}"
                );
                assert_eq!(v["content"][0]["attachment"]["title"], "note");
            }
        }
    }
    // A clean text attachment passes untouched, even on the blocking route.
    let clean = b64(b"Follow-up in two weeks.");
    g.answer(
        "clean",
        "application/fhir+json",
        attachment_doc("clean", "text/plain", &clean),
    );
    let r = g.get(&c, "/block/DocumentReference/clean").await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains(&clean));
    // Binary content cannot be read: blocked where a detector blocks, removed where
    // detectors redact, passed (and counted) on a report-only route.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend((0..200u32).map(|i| (i * 37 % 256) as u8));
    for (id, data) in [("png", b64(&png)), ("bad", "%%%not-base64%%%".to_owned())] {
        g.answer(
            id,
            "application/fhir+json",
            attachment_doc(id, "image/png", &data),
        );
        let r = g.get(&c, &format!("/block/DocumentReference/{id}")).await;
        assert_eq!(r.status, 403, "{id}");
        assert_eq!(r.code(), "dlp_blocked");
        let r = g.get(&c, &format!("/redact/DocumentReference/{id}")).await;
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            v["content"][0]["attachment"].get("data").is_none(),
            "{id}: {v}"
        );
        let r = g.get(&c, &format!("/report/DocumentReference/{id}")).await;
        assert_eq!(r.status, 200);
        assert!(String::from_utf8_lossy(&r.body).contains(&data));
    }
    // Binary resources too.
    g.answer(
        "bin",
        "application/fhir+json",
        format!(
            r#"{{"resourceType":"Binary","id":"bin","contentType":"text/plain","data":"{}"}}"#,
            b64(b"call 555-234-5678")
        ),
    );
    let r = g.get(&c, "/block/Binary/bin").await;
    assert_eq!(r.status, 403);
    let (_, metrics) = admin_get(&g.gw, "/metrics").await;
    assert!(metrics.contains("unscannable_attachment"), "{metrics}");
}

#[tokio::test]
async fn head_answers_what_get_would() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    g.answer(
        "h1",
        "application/fhir+json",
        observation("h1", "123-45-6789"),
    );
    g.answer(
        "h2",
        "application/fhir+json",
        observation("h2", "no phi here"),
    );
    for route in ["sh", "redact", "block", "report"] {
        for id in ["h1", "h2"] {
            let path = format!("/{route}/Observation/{id}");
            let got = g.get(&c, &path).await;
            let req = Request::head(url(&g.gw, &path))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let before = g.up.seen.lock().unwrap().len();
            let head = send(&c, req).await;
            assert_eq!(head.status, got.status, "{path}");
            assert!(head.body.is_empty());
            for h in ["content-length", "content-type", "etag"] {
                assert_eq!(
                    head.headers.get(h),
                    got.headers.get(h),
                    "{path}: header {h} differs between HEAD and GET"
                );
            }
            // The upstream was asked with a GET, so the policies could read the answer.
            let seen = g.up.seen.lock().unwrap();
            assert_eq!(seen.len(), before + 1);
            assert_eq!(seen[before].0, "GET", "{path}");
        }
    }
    // A route without body-reading policies passes HEAD through.
    let req = Request::head(url(&g.gw, "/plain/Observation/h1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let before = g.up.seen.lock().unwrap().len();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(g.up.seen.lock().unwrap()[before].0, "HEAD");
}

#[tokio::test]
async fn hl7_v2_and_text_bodies_are_read_the_same_way() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let mut variants: Vec<String> = DIGIT_ZEROS
        .iter()
        .step_by(7)
        .map(|&z| ssn_in(z, "-", "-"))
        .collect();
    variants.push("1\u{200B}23\u{2011}45\u{2011}6789".into());
    variants.push("１２３－４５－６７８９".into());
    variants.push("123\u{00A0}45\u{2009}6789".into());
    for (i, v) in variants.iter().enumerate() {
        let msg = format!(
            "MSH|^~\\&|A|B|C|D|202001011200||ORU^R01|{i}|P|2.5\rPID|1||X1||Doe^Jane\rNTE|1||SSN {v}\r"
        );
        let id = format!("hl7-{i}");
        g.answer(&id, "x-application/hl7-v2+er7", msg.clone());
        let r = g.get(&c, &format!("/block/Binary/{id}")).await;
        assert_eq!(
            r.status,
            403,
            "HL7 {v:?} not blocked: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let r = g.get(&c, &format!("/redact/Binary/{id}")).await;
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(v.as_str()), "HL7 {v:?} leaked: {text:?}");
        assert!(text.starts_with("MSH|"), "{text:?}");
        let tid = format!("txt-{i}");
        g.answer(
            &tid,
            "text/plain; charset=utf-8",
            format!("Patient SSN {v} on file"),
        );
        let r = g.get(&c, &format!("/block/Binary/{tid}")).await;
        assert_eq!(r.status, 403, "text {v:?} not blocked");
        let r = g.get(&c, &format!("/redact/Binary/{tid}")).await;
        assert!(!String::from_utf8_lossy(&r.body).contains(v.as_str()));
    }
}

#[tokio::test]
async fn safe_harbor_replaces_every_narrative() {
    // Names in narrative cannot be told from words; the preset cannot vouch for them.
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    for (i, div) in [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">Cleo Fictive, born in Springfield</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Seen with her son <b>Dario</b></p></div>",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("n{i}");
        g.answer(
            &id,
            "application/fhir+json",
            format!(
                r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"text":{{"status":"generated","div":{}}},"contained":[{{"resourceType":"Patient","id":"p","text":{{"status":"generated","div":{}}}}}]}}"#,
                serde_json::to_string(div).unwrap(),
                serde_json::to_string(div).unwrap()
            ),
        );
        let r = g.get(&c, &format!("/sh/Observation/{id}")).await;
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        for d in [&v["text"]["div"], &v["contained"][0]["text"]["div"]] {
            let d = d.as_str().unwrap_or_default();
            assert!(
                d.contains("[REDACTED]") && !d.contains("Cleo") && !d.contains("Dario"),
                "{d}"
            );
        }
        if let Err(issues) =
            ward::fhir::validate::validate_resource(&r.body, &Default::default(), None)
        {
            panic!("invalid R4 after Safe Harbor: {issues:?}");
        }
    }
}

/// Findings of the session's own adversarial review, kept as regressions (each a class).
#[tokio::test]
async fn review_regressions() {
    let g = gateway().await;
    let c = client(&g.env.pki, false);
    let obs = |id: &str, field: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},{field}}}"#
        )
    };
    // A weaker overlapping finding (an e-mail, a URL) never decides for the SSN inside it.
    for (i, v) in [
        "reach 123-45-6789@example.org",
        "see http://x.org/?u=jane@example.org&id=123-45-6789",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("r{i}");
        g.answer(
            &id,
            "application/fhir+json",
            obs(
                &id,
                &format!(r#""valueString":{}"#, serde_json::to_string(v).unwrap()),
            ),
        );
        let r = g.get(&c, &format!("/block/Observation/{id}")).await;
        assert_eq!(r.status, 403, "{v}");
    }
    // Narrative entities a browser renders as dashes and spaces.
    for (i, e) in ["&ndash;", "&minus;", "&mdash;", "&thinsp;", "&ensp;"]
        .iter()
        .enumerate()
    {
        let id = format!("e{i}");
        let div = format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">SSN 123{e}45{e}6789</div>");
        g.answer(
            &id,
            "application/fhir+json",
            obs(
                &id,
                &format!(
                    r#""text":{{"status":"generated","div":{}}}"#,
                    serde_json::to_string(&div).unwrap()
                ),
            ),
        );
        let r = g.get(&c, &format!("/block/Observation/{id}")).await;
        assert_eq!(r.status, 403, "{e}");
    }
    // base64 that is not UTF-8 text, not padded, or URL-safe is still read.
    let latin1 = b"Patient SSN 123-45-6789 caf\xE9".to_vec();
    let utf16: Vec<u8> = "Patient SSN 123-45-6789"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let std = base64::engine::general_purpose::STANDARD;
    let nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
    let urlsafe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (i, data) in [
        std.encode(&latin1),
        std.encode(&utf16),
        nopad.encode(b"SSN 123-45-6789!"),
        urlsafe.encode(b"SSN 123-45-6789 ??>>"),
    ]
    .iter()
    .enumerate()
    {
        let id = format!("b{i}");
        g.answer(
            &id,
            "application/fhir+json",
            obs(
                &id,
                &format!(
                    r#""extension":[{{"url":"http://x.org/e","valueBase64Binary":"{data}"}}]"#
                ),
            ),
        );
        let r = g.get(&c, &format!("/block/Observation/{id}")).await;
        assert_eq!(r.status, 403, "base64 case {i}");
    }
    // Trailing parentheses after a URL are linear, not quadratic (a hang would time out).
    let body = format!("http://a{}", ")".repeat(200_000));
    g.answer("paren", "text/plain", body);
    let r = g.get(&c, "/redact/Binary/paren").await;
    assert!(r.status == 200 || r.status == 502, "{}", r.status);
}

#[tokio::test]
async fn number_symbols_and_look_alike_separators() {
    let g = gateway().await;
    let cases: Vec<(String, String, String)> = [
        ("dingbat digits", "❶❷❸-❹❺-❻❼❽❾", "❻❼❽❾"),
        ("sans-serif circled", "➀➁➂-➃➄-➅➆➇➈", "➅➆➇➈"),
        ("double circled", "⓵⓶⓷-⓸⓹-⓺⓻⓼⓽", "⓺⓻⓼⓽"),
        ("braille blank", "123\u{2800}45\u{2800}6789", "6789"),
        ("hyphen bullet", "123\u{2043}45\u{2043}6789", "6789"),
        ("modifier minus", "123\u{02D7}45\u{02D7}6789", "6789"),
        ("box drawing", "123\u{2500}45\u{2500}6789", "6789"),
        ("C1 control", "123\u{0085}-45-67\u{0080}89", "67\u{0080}89"),
        (
            "ideographic full stop",
            "jane.doe@example\u{3002}org",
            "example\u{3002}org",
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    redact_and_block(&g, &cases).await;
}
