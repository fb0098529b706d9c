//! The direct line against what `tracing_subscriber` prints for the same record, byte for
//! byte (but the timestamp's value), over generated awkward values; and the filter's say.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A `MakeWriter` target the test reads back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

/// What tracing printed for `rec`, with the subscriber the CLI installs (`init_logging`).
fn through_tracing(style: Style, rec: &Record<'_>) -> String {
    let cap = Capture::default();
    let w = cap.clone();
    let b = tracing_subscriber::fmt().with_writer(move || w.clone());
    match style {
        Style::Json => {
            let s = b
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish();
            tracing::subscriber::with_default(s, || emit_tracing(rec));
        }
        Style::Text { ansi } => {
            let s = b.with_ansi(ansi).finish();
            tracing::subscriber::with_default(s, || emit_tracing(rec));
        }
    }
    cap.take()
}

/// Strings that can reach the string fields: every C0 control, DEL, C1 controls, quotes,
/// backslashes, `=`, spaces, ANSI sequences, non-ASCII (combining, zero-width, BOM, line
/// separators, astral), empty — alone, embedded, and random mixes of them.
fn awkward() -> Vec<String> {
    let mut v: Vec<String> = vec![
        "".into(),
        "plain-name_1.2:3".into(),
        "-".into(),
        "\"".into(),
        "\\".into(),
        "a\"b\\c".into(),
        "\\\"".into(),
        "a=b".into(),
        "two words".into(),
        "x\" route=forged".into(),
        "\u{1b}[31mred\u{1b}[0m".into(),
        "é日本🩺".into(),
        "\u{301}combining".into(),
        "zero\u{200b}width".into(),
        "\u{feff}bom".into(),
        "line\u{2028}sep\u{2029}".into(),
        "nel\u{85}c1\u{9f}".into(),
        "tab\tnl\ncr\r".into(),
        "{\"json\":true}".into(),
        "'single'".into(),
        "bidi\u{202e}txt".into(),
    ];
    for c in (0u8..0x20).chain([0x7f]) {
        v.push(format!("a{}b", c as char));
        v.push((c as char).to_string());
    }
    let pool: Vec<char> =
        "aZ09 \"\\=:{}'\u{0}\u{1}\u{8}\u{c}\n\r\t\u{1b}\u{7f}\u{85}é日🩺\u{301}\u{200b}\u{2028}\u{202e}"
            .chars()
            .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        let mut s = String::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for _ in 0..(x % 12) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push(pool[(x % pool.len() as u64) as usize]);
        }
        v.push(s);
    }
    v
}

const FLOATS: &[f64] = &[
    0.0,
    1.0,
    0.117_350_000_000_000_01,
    1.835535,
    1e-7,
    0.000_1,
    123_456.789,
    1e15,
    1e16,
    1e21,
    f64::MAX,
    f64::MIN_POSITIVE,
    f64::NAN,
    f64::INFINITY,
];

fn ips() -> Vec<IpAddr> {
    [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:10.1.2.3",
        "2001:db8::1",
        "fe80::1:2:3:4",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

const VERSIONS: &[http::Version] = &[
    http::Version::HTTP_09,
    http::Version::HTTP_10,
    http::Version::HTTP_11,
    http::Version::HTTP_2,
    http::Version::HTTP_3,
];

/// Records covering every field with every kind of value (strings rotated through the
/// string fields, so each awkward value meets each field).
fn records(strings: &[String]) -> Vec<Record<'_>> {
    let ips = Box::leak(ips().into_boxed_slice());
    let n = strings.len();
    (0..n)
        .map(|i| Record {
            request_id: &strings[i],
            listener: &strings[(i + 1) % n],
            route: &strings[(i + 2) % n],
            method: ["GET", "POST", "OTHER"][i % 3],
            protocol: VERSIONS[i % VERSIONS.len()],
            status: [200, 499, 100, 599, 0, u16::MAX][i % 6],
            code: &strings[(i + 3) % n],
            head_ms: FLOATS[i % FLOATS.len()],
            duration_ms: FLOATS[(i + 5) % FLOATS.len()],
            bytes_out: [0, 941, u64::MAX, 1 << 40][i % 4],
            completed: i % 2 == 0,
            client_ip: ips[i % ips.len()],
            client_cert: &strings[(i + 4) % n],
            tls: i % 3 != 0,
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` at the start of `s` (after `prefix`): the rest of `s` with
/// the timestamp replaced by `<ts>`, and the timestamp.
fn cut_timestamp<'a>(s: &'a str, prefix: &str) -> (String, &'a str) {
    assert!(s.starts_with(prefix), "{s:?}");
    let ts = &s[prefix.len()..prefix.len() + 27];
    let shape: String = ts
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999999Z", "{s:?}");
    (format!("{prefix}<ts>{}", &s[prefix.len() + 27..]), ts)
}

#[test]
fn json_line_is_byte_for_byte_the_tracing_line_for_generated_values() {
    let strings = awkward();
    for rec in records(&strings) {
        let theirs = through_tracing(Style::Json, &rec);
        let mut ours = Vec::new();
        format_json(&rec, SystemTime::now(), &mut ours);
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours.matches('\n').count(), 1, "one line: {ours:?}");
        assert!(ours.ends_with('\n'));
        let (t, tts) = cut_timestamp(&theirs, "{\"timestamp\":\"");
        let (o, ots) = cut_timestamp(&ours, "{\"timestamp\":\"");
        assert_eq!(o, t, "record {rec:?}");
        // Formatted after tracing's: same clock, same form, so not earlier.
        assert!(ots >= tts, "{ots} < {tts}");
        // And it parses back to the record's values.
        let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(v["request_id"], rec.request_id);
        assert_eq!(v["listener"], rec.listener);
        assert_eq!(v["route"], rec.route);
        assert_eq!(v["client_cert"], rec.client_cert);
        assert_eq!(v["code"], rec.code);
        assert_eq!(v["status"], rec.status);
        assert_eq!(v["bytes_out"], rec.bytes_out);
        assert_eq!(v["client_ip"], rec.client_ip.to_string());
        assert_eq!(v["target"], "ward::access");
        assert_eq!(v["level"], "INFO");
        // (serde_json's default parser is not exact in the last bit; the bytes above are.)
        if rec.head_ms.is_finite() {
            let got = v["head_ms"].as_f64().unwrap();
            assert!(
                (got - rec.head_ms).abs() <= rec.head_ms.abs() * 1e-15,
                "{got}"
            );
        } else {
            assert!(v["head_ms"].is_null());
        }
    }
}

/// tracing prints `listener`/`route` with `Display`, raw; the direct line quotes the names
/// that would break or forge the line. Everything else is byte for byte the same.
fn expected_text(theirs: &str, rec: &Record<'_>, ansi: bool) -> String {
    let key = |k: &str| {
        if ansi {
            format!("\u{1b}[3m{k}\u{1b}[0m\u{1b}[2m=\u{1b}[0m")
        } else {
            format!("{k}=")
        }
    };
    let shown = |s: &str| {
        let mut b = Vec::new();
        text_name(s, &mut b);
        String::from_utf8(b).unwrap()
    };
    let raw = format!(
        "{}{} {}{} {}",
        key("listener"),
        rec.listener,
        key("route"),
        rec.route,
        key("method")
    );
    let quoted = format!(
        "{}{} {}{} {}",
        key("listener"),
        shown(rec.listener),
        key("route"),
        shown(rec.route),
        key("method")
    );
    assert_eq!(theirs.matches(&raw).count(), 1, "{theirs:?}");
    theirs.replace(&raw, &quoted)
}

#[test]
fn text_line_is_the_tracing_line_with_and_without_colours_for_generated_values() {
    let strings = awkward();
    for ansi in [false, true] {
        let style = Style::Text { ansi };
        let prefix = if ansi { "\u{1b}[2m" } else { "" };
        for rec in records(&strings) {
            let theirs = through_tracing(style, &rec);
            let mut ours = Vec::new();
            format(style, &rec, SystemTime::now(), &mut ours);
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(ours.matches('\n').count(), 1, "one line: {ours:?}");
            let (t, _) = cut_timestamp(&theirs, prefix);
            let (o, _) = cut_timestamp(&ours, prefix);
            assert_eq!(o, expected_text(&t, &rec, ansi), "record {rec:?}");
            if !ansi {
                assert_eq!(parse_text(&ours), text_values(&rec), "{ours:?}");
            }
        }
    }
}

/// The record's fields as strings, as a text-log parser should read them back.
fn text_values(rec: &Record<'_>) -> Vec<(String, String)> {
    [
        ("request_id", rec.request_id.to_owned()),
        ("listener", rec.listener.to_owned()),
        ("route", rec.route.to_owned()),
        ("method", rec.method.to_owned()),
        ("protocol", format!("{:?}", rec.protocol)),
        ("status", rec.status.to_string()),
        ("code", rec.code.to_owned()),
        ("head_ms", format!("{:?}", rec.head_ms)),
        ("duration_ms", format!("{:?}", rec.duration_ms)),
        ("bytes_out", rec.bytes_out.to_string()),
        ("completed", rec.completed.to_string()),
        ("client_ip", rec.client_ip.to_string()),
        ("client_cert", rec.client_cert.to_owned()),
        ("tls", rec.tls.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The text line's fields (no colours), through the module's own reader.
fn parse_text(line: &str) -> Vec<(String, String)> {
    assert!(line.ends_with('\n'), "{line:?}");
    super::text_fields(line)
        .unwrap_or_else(|| panic!("{line:?}"))
        .1
}

#[test]
fn timestamp_is_tracings_rfc3339_form_across_seconds_days_and_years() {
    let mut out = Vec::new();
    for (secs, micros, want) in [
        (0u64, 0u32, "1970-01-01T00:00:00.000000Z"),
        (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
        (1_796_456_662, 950_545, "2026-12-05T07:44:22.950545Z"),
        (253_402_300_799, 999_999, "9999-12-31T23:59:59.999999Z"),
        (253_402_300_800, 1, "+10000-01-01T00:00:00.000001Z"),
    ] {
        let t = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999);
        // Twice: the second time from the per-second cache.
        for _ in 0..2 {
            out.clear();
            timestamp(t, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
    }
}

/// `WARD_LOG`-style filters decide through the tracing subscriber in force: the direct
/// path writes a line exactly when `tracing::info!` would have (checked against the
/// tracing event under the same filter), and never both.
#[test]
fn the_tracing_filter_decides_for_the_direct_path() {
    let strings = awkward();
    let rec = records(&strings)[3];
    // (filter, lines per record; `None` where only agreement with tracing is asserted)
    for (filter, want) in [
        ("info", Some(1)),
        ("ward::access=info", Some(1)),
        ("warn", Some(0)),
        ("info,ward::access=off", Some(0)),
        ("ward=warn", Some(0)),
        ("error,ward::access=trace", Some(1)),
        ("off", Some(0)),
        ("warn,[{client_cert}]=info", Some(1)),
        ("warn,ward::access[{status}]=info", Some(1)),
        ("warn,[{no_such_field}]=info", Some(0)),
        ("warn,[span{x=1}]=info", None),
        ("warn,ward::access[{status=500}]=info", None),
    ] {
        for style in [Style::Json, Style::Text { ansi: false }] {
            let subscriber = |cap: &Capture| {
                let c = cap.clone();
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .with_writer(move || c.clone())
                    .finish()
            };
            // The old path's verdict.
            let old = Capture::default();
            tracing::subscriber::with_default(subscriber(&old), || {
                emit_tracing(&rec);
                emit_tracing(&rec);
            });
            let old = old.take().lines().count();
            // The direct path's.
            let sink = Capture::default();
            let (w, guard) = crate::logwriter::start_with(sink.clone()).unwrap();
            let direct = Direct { style, writer: w };
            let other = Capture::default();
            tracing::subscriber::with_default(subscriber(&other), || {
                log_via(Some(&direct), &rec);
                log_via(Some(&direct), &rec);
            });
            drop(guard);
            let got = sink.take().lines().count();
            assert_eq!(got, old, "{filter}: direct {got} lines, tracing {old}");
            if let Some(want) = want {
                assert_eq!(got, 2 * want, "{filter}");
            }
            // Nothing went through tracing as well (no duplicate lines).
            assert_eq!(other.take(), "", "{filter}");
        }
    }
}

/// Without a direct writer, the line still goes out, through tracing.
#[test]
fn without_a_direct_writer_the_record_goes_through_tracing() {
    let strings = awkward();
    let rec = records(&strings)[1];
    let cap = Capture::default();
    let w = cap.clone();
    let sub = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(sub, || log_via(None, &rec));
    let got = cap.take();
    let v: serde_json::Value = serde_json::from_str(got.trim_end()).unwrap();
    assert_eq!(v["target"], "ward::access");
    assert_eq!(v["listener"], rec.listener);
}

#[test]
fn text_names_are_raw_only_when_they_cannot_break_forge_or_disguise_the_line() {
    for (name, want) in [
        ("public", "public"),
        ("api-v2.1:x_y", "api-v2.1:x_y"),
        ("-", "-"),
        ("é日🩺", "é日🩺"),
        ("o'brien", "o'brien"),
        ("", "\"\""),
        ("a b", "\"a b\""),
        ("a=b", "\"a=b\""),
        ("a\"b", "\"a\\\"b\""),
        ("a\\b", "\"a\\\\b\""),
        ("a\nb", "\"a\\nb\""),
        ("\u{1b}[31m", "\"\\u{1b}[31m\""),
        ("x\u{202e}y", "\"x\\u{202e}y\""),
        ("x\u{200b}y", "\"x\\u{200b}y\""),
        ("x\u{2028}y", "\"x\\u{2028}y\""),
        ("x\u{85}y", "\"x\\u{85}y\""),
    ] {
        let mut out = Vec::new();
        text_name(name, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), want, "{name:?}");
    }
}

#[test]
fn text_lines_that_are_cut_or_malformed_are_not_read_back() {
    let head = "2026-12-05T10:00:00.000000Z  INFO ward::access: ";
    let good = format!("{head}request_id=\"a\\\"b\" status=200\n");
    assert_eq!(
        text_fields(&good).map(|(_, f)| f),
        Some(vec![
            ("request_id".to_owned(), "a\"b".to_owned()),
            ("status".to_owned(), "200".to_owned())
        ])
    );
    // Every cut of a quoted value, a bad escape, something glued after a quote, and lines
    // that are not access lines.
    let quoted = format!("{head}route=\"x\\u{{e9}}y\"");
    for cut in head.len() + 7..quoted.len() - 1 {
        assert_eq!(text_fields(&quoted[..cut]), None, "{:?}", &quoted[..cut]);
    }
    for bad in [
        format!("{head}route=\"\\u{{zz}}\""),
        format!("{head}route=\"\\u{{d800}}\""),
        format!("{head}route=\"\\ux\""),
        format!("{head}route=\"a\"b"),
        "2026-12-05T10:00:00.000000Z  WARN ward::access: a=b".to_owned(),
        String::new(),
    ] {
        assert_eq!(text_fields(&bad), None, "{bad:?}");
    }
}
