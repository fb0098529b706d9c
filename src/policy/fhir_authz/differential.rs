//! Differential tests of the compartment guard's token-stream reading (`fhir::answer`)
//! against the `serde_json::Value` checks it replaced on the hot path (issues #16, #20):
//! every answer, in every GENERATED spelling, gets the same verdict and the same bytes from
//! [`BodyCheck::run`] as from [`BodyCheck::run_tree`], the same ownership decision, and the
//! same scope verdict.
//!
//! The corpus: every fixture in `tests/fixtures/fhir-valid/`, plus generated resources and
//! Bundles (references in every spelling, entry shapes, nested Bundles, includes and
//! outcomes, paging links). Each is written out in styles that readers have disagreed on:
//! escaped member names and strings, whitespace, member order, a duplicated member (plain
//! or escape-equivalent, at each object in turn), deep nesting, broken numbers and syntax.

use std::path::Path;

use serde_json::{json, Map};

use super::*;
use crate::fhir::answer;
use crate::fhir::scopes::parse_all;
use crate::json;

/// How a document is written out.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    /// Member names spelled with a `\u` escape (every name, or only these).
    escape_keys: u8,
    /// String values: `/` as `\/`, first letter as `\u` escape.
    escape_strings: bool,
    /// Whitespace between tokens (0: none).
    ws: u8,
    /// Members in reverse order.
    reverse: bool,
    /// Repeat the first member of the n-th object (1-based; 0: none), escaped if odd.
    duplicate_at: usize,
}

struct Writer {
    style: Style,
    out: String,
    objects: usize,
}

const WS: [&str; 4] = ["", " ", "\n\t", " \r\n "];

fn escaped_name(k: &str, how: u8) -> String {
    let mut c = k.chars();
    match (c.next(), how) {
        (Some(f), 1) => format!("\\u{:04x}{}", f as u32, c.as_str()),
        (Some(f), _) => format!("\\u{:04X}{}", f as u32, c.as_str()),
        (None, _) => String::new(),
    }
}

impl Writer {
    fn ws(&mut self) {
        self.out.push_str(WS[self.style.ws as usize % WS.len()]);
    }

    fn string(&mut self, s: &str, key: bool) {
        let plain = serde_json::to_string(s).unwrap_or_default();
        let inner = &plain[1..plain.len() - 1];
        let important = [
            "resourceType",
            "reference",
            "id",
            "entry",
            "resource",
            "subject",
            "patient",
            "mode",
            "link",
            "url",
            "request",
        ];
        let text = if key {
            match self.style.escape_keys {
                0 => inner.to_owned(),
                1 if important.contains(&s) => escaped_name(inner, 1),
                1 => inner.to_owned(),
                n => escaped_name(inner, n),
            }
        } else if self.style.escape_strings && !s.is_empty() && !inner.starts_with('\\') {
            escaped_name(inner, 1).replace('/', "\\/")
        } else {
            inner.to_owned()
        };
        self.out.push('"');
        self.out.push_str(&text);
        self.out.push('"');
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                self.objects += 1;
                let dup = self.objects == self.style.duplicate_at;
                let mut members: Vec<(&String, &Value)> = m.iter().collect();
                if self.style.reverse {
                    members.reverse();
                }
                self.out.push('{');
                self.ws();
                for (i, (k, x)) in members.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                        self.ws();
                    }
                    self.string(k, true);
                    self.ws();
                    self.out.push(':');
                    self.ws();
                    self.value(x);
                }
                if dup {
                    if let Some((k, _)) = members.first() {
                        self.out.push(',');
                        if self.objects % 2 == 1 {
                            self.out.push('"');
                            self.out.push_str(&escaped_name(k, 2));
                            self.out.push('"');
                        } else {
                            self.string(k, true);
                        }
                        self.out.push_str(":null");
                    }
                }
                self.ws();
                self.out.push('}');
            }
            Value::Array(a) => {
                self.out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                        self.ws();
                    }
                    self.value(x);
                }
                self.out.push(']');
            }
            Value::String(s) => self.string(s, false),
            other => self.out.push_str(&other.to_string()),
        }
    }
}

fn write(v: &Value, style: Style) -> (String, usize) {
    let mut w = Writer {
        style,
        out: String::new(),
        objects: 0,
    };
    w.value(v);
    (w.out, w.objects)
}

/// Every reference spelling the compartment reader tells apart.
fn reference_spellings(pid: &str) -> Vec<Value> {
    let mut v: Vec<Value> = [
        format!("Patient/{pid}"),
        format!("Patient/{pid}/_history/2"),
        format!("Patient/{pid}/_history/"),
        format!("https://ehr.example/fhir/Patient/{pid}"),
        format!("https://ehr.example/Patient/x/Patient/{pid}"),
        format!("Patient/{pid}x"),
        format!("Patient/{pid}#c"),
        format!("Patient?identifier=x&_tag=/Patient/{pid}"),
        "Patient/other".to_owned(),
        "Group/g".to_owned(),
        format!("patient/{pid}"),
        String::new(),
    ]
    .into_iter()
    .map(Value::from)
    .collect();
    v.push(json!(7));
    v.push(json!({"reference": format!("Patient/{pid}")}));
    v.push(json!([format!("Patient/{pid}")]));
    v
}

/// Resources and Bundles built around patient `pid`.
fn generated(pid: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let refs = reference_spellings(pid);
    for r in &refs {
        // One reference, at a compartment element and at look-alikes of one.
        docs.push(json!({"resourceType": "Observation", "id": "o", "subject": {"reference": r}}));
        docs.push(json!({"resourceType": "Observation", "performer": [{"reference": "Practitioner/p"}, {"reference": r}]}));
        docs.push(json!({"resourceType": "Observation", "subject": [[{"reference": r}]]}));
        docs.push(json!({"resourceType": "Observation", "note": {"subject": {"reference": r}}}));
        docs.push(json!({"resourceType": "CarePlan", "activity": [{"detail": {"performer": [{"reference": r}]}}]}));
        docs.push(json!({"resourceType": "CarePlan", "activity": {"detail": [{"performer": {"reference": r}}]}}));
        docs.push(json!({"resourceType": "Encounter", "participant": [{"individual": {"reference": r}}], "subject": {"reference": "Patient/zz"}}));
        docs.push(json!({"resourceType": "Observation", "subject": {"reference": "Patient/zz"}, "contained": [{"resourceType": "Observation", "subject": {"reference": r}}]}));
    }
    for id in [json!(pid), json!("other"), json!(1), json!(null)] {
        docs.push(json!({"resourceType": "Patient", "id": id, "link": [{"other": {"reference": format!("Patient/{pid}")}}]}));
    }
    for t in [
        json!("Organization"),
        json!(["Observation"]),
        json!(null),
        json!("Bundle"),
    ] {
        docs.push(json!({"resourceType": t, "id": pid, "subject": {"reference": format!("Patient/{pid}")}}));
    }
    docs.push(json!({"id": pid, "subject": {"reference": format!("Patient/{pid}")}}));
    docs.push(json!([{"resourceType": "Patient", "id": pid}]));
    docs.push(json!("Patient"));
    // Bundles.
    let mine =
        json!({"resourceType": "Observation", "subject": {"reference": format!("Patient/{pid}")}});
    let theirs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/other"}});
    let entry_shapes = vec![
        json!({"resource": mine, "search": {"mode": "match"}}),
        json!({"resource": mine, "search": {"mode": "include"}}),
        json!({"resource": mine, "search": "include"}),
        json!({"resource": theirs, "search": {"mode": "match"}}),
        json!({"resource": theirs, "search": {"mode": "include"}}),
        json!({"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}),
        json!({"resource": {"resourceType": "Patient", "id": pid}, "search": {"mode": "include"}}),
        json!({"resource": {"resourceType": "Encounter", "subject": {"reference": format!("Patient/{pid}")}}}),
        json!({"resource": {"resourceType": "Encounter", "subject": {"reference": format!("Patient/{pid}")}, "contained": [{"resourceType": "Medication"}]}}),
        json!({"request": {"method": "DELETE", "url": "Observation/1"}}),
        json!({"request": null}),
        json!({"fullUrl": "x"}),
        json!({"resource": null}),
        json!({"resource": [mine]}),
        json!({"resource": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": mine}]}}),
        json!({"resource": {"resourceType": "Bundle", "entry": []}}),
        json!({"resource": {"subject": {"reference": format!("Patient/{pid}")}}}),
        json!({"resource": mine, "response": {"outcome": {"resourceType": "OperationOutcome"}}}),
        json!({"resource": mine, "response": {"outcome": {"resourceType": "Provenance"}}}),
        json!(3),
        json!([{"resource": mine}]),
    ];
    let links = [
        json!([{"relation": "next", "url": "https://gw.example/patient/fhir/Observation?page=2"}]),
        json!([{"relation": "next", "url": "https://gw.example/patient/fhirx"}]),
        json!([{"relation": "next", "url": "https://ehr.internal/fhir/Observation?page=2"}]),
        json!([{"relation": "self"}, "x"]),
        json!([]),
        json!({"url": "https://elsewhere/"}),
    ];
    for (i, e) in entry_shapes.iter().enumerate() {
        let mut entries = vec![
            json!({"resource": mine, "search": {"mode": "match"}}),
            e.clone(),
        ];
        if i % 3 == 0 {
            entries.reverse();
        }
        let mut b = Map::new();
        b.insert("resourceType".into(), json!("Bundle"));
        b.insert("type".into(), json!("searchset"));
        b.insert("total".into(), json!(2));
        b.insert("entry".into(), Value::Array(entries));
        b.insert("link".into(), links[i % links.len()].clone());
        docs.push(Value::Object(b));
        docs.push(json!({"resourceType": "Bundle", "entry": [e]}));
    }
    docs.push(json!({"resourceType": "Bundle", "entry": {"resource": mine}}));
    docs.push(json!({"resourceType": "Bundle", "entry": []}));
    docs.push(json!({"resourceType": "Bundle", "total": 1}));
    docs.push(json!({"resourceType": "Bundle", "entry": [{"resource": mine}], "issues": {"resourceType": "Provenance"}}));
    docs.push(json!({"resourceType": "Bundle", "entry": [{"resource": mine}], "signature": {"who": {"resourceType": 5}}}));
    docs.push(json!({"resourceType": "Observation", "entry": [{"resource": mine}], "subject": {"reference": format!("Patient/{pid}")}}));
    docs
}

fn fixtures() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-valid");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for p in names {
        if let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap()) {
            out.push(v);
        }
    }
    assert!(out.len() >= 40, "fixtures missing");
    out
}

/// Patient ids this document names (`Patient/{id}` anywhere), plus two that it does not.
fn pids(v: &Value) -> Vec<String> {
    let mut out = vec!["a".to_owned(), "example".to_owned()];
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if let Some(i) = s.find("Patient/") {
                    let id: String = s[i + 8..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                        .collect();
                    if !id.is_empty() && !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out.truncate(4);
    out
}

/// Every written form of `v`: styles, each object duplicated in turn, and broken forms.
fn variants(v: &Value, seed: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (plain, objects) = write(v, Style::default());
    out.push(plain.clone().into_bytes());
    for s in 1..8u8 {
        let style = Style {
            escape_keys: s % 3,
            escape_strings: s % 2 == 0,
            ws: s % 4,
            reverse: s % 3 == 1,
            duplicate_at: 0,
        };
        out.push(write(v, style).0.into_bytes());
    }
    // A duplicate member at each object (all of them for small documents).
    let step = (objects / 6).max(1);
    let mut k = 1 + seed % step;
    while k <= objects {
        let style = Style {
            duplicate_at: k,
            escape_keys: (k % 3) as u8,
            ..Style::default()
        };
        out.push(write(v, style).0.into_bytes());
        k += step;
    }
    // Deep nesting around the limit, in an extension-like member.
    for depth in [120usize, 125, 126, 127, 130] {
        if let Some(rest) = plain.strip_prefix('{') {
            let deep = format!("{{\"x\":{}0{},{rest}", "[".repeat(depth), "]".repeat(depth));
            out.push(deep.into_bytes());
        }
    }
    // Broken: truncated, trailing comma, out-of-range and edge numbers, BOM, trailing data.
    let b = plain.as_bytes();
    out.push(b[..b.len() / 2].to_vec());
    if let Some(rest) = plain.strip_suffix('}') {
        out.push(format!("{rest},}}").into_bytes());
        out.push(format!("{rest},\"n\":1e400}}").into_bytes());
        out.push(format!("{rest},\"n\":-1.5e300}}").into_bytes());
        out.push(format!("{rest},\"n\":123456789012345678901234567890}}").into_bytes());
        out.push(format!("{rest},\"n\":01}}").into_bytes());
    }
    out.push([&b"\xEF\xBB\xBF"[..], b].concat());
    out.push([b, &b" x"[..]].concat());
    out
}

fn same(x: &Result<Option<Bytes>, Rejection>, y: &Result<Option<Bytes>, Rejection>) -> bool {
    match (x, y) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.status == b.status && a.code == b.code && a.detail == b.detail,
        _ => false,
    }
}

#[test]
fn token_stream_check_gives_the_tree_checks_verdicts_on_generated_variants() {
    let link = LinkBase {
        gateway: "https://gw.example/patient/fhir".into(),
        upstream_path: "/fhir".into(),
    };
    let scope_sets = [
        parse_all(["patient/Observation.rs patient/Patient.rs patient/Encounter.rs"]),
        parse_all(["patient/*.rs"]),
        parse_all(["patient/Observation.rs?category=laboratory patient/Patient.r"]),
    ];
    let mut docs = fixtures();
    let fixture_count = docs.len();
    docs.extend(generated("a"));
    let (mut runs, mut quick_pass, mut quick_hidden) = (0usize, 0usize, 0usize);
    for (n, doc) in docs.iter().enumerate() {
        let mut all_pids = pids(doc);
        if n >= fixture_count {
            // Generated around "a": "example" is someone else.
            all_pids.truncate(2);
        }
        // Large fixtures: one patient per variant, rotating (the spellings are what varies).
        let large = write(doc, Style::default()).0.len() > 4096;
        for (vi, body) in variants(doc, n).into_iter().enumerate() {
            let text = String::from_utf8_lossy(&body);
            let pids: Vec<&String> = if large {
                all_pids.iter().skip(vi % all_pids.len()).take(1).collect()
            } else {
                all_pids.iter().collect()
            };
            for (pi, pid) in pids.into_iter().enumerate() {
                // Every interaction shape; scopes, modes and links rotate.
                for (ci, (bundle, hide)) in
                    [(false, false), (true, false), (true, true), (false, true)]
                        .into_iter()
                        .enumerate()
                {
                    // Two of the four scope choices per shape, rotating.
                    for si in [(n + pi + ci) % 4, (n + pi + ci + 2) % 4] {
                        let k = n + pi + ci + si;
                        let grants = scope_sets
                            .get(si)
                            .map(|s| Grants::new(s, Perm::Search, Some("Observation"), &[]));
                        let check = BodyCheck {
                            pid,
                            bundle,
                            hide,
                            mode: if k % 2 == 0 {
                                BundleMode::Filter
                            } else {
                                BundleMode::Fail
                            },
                            links: (k % 3 != 0).then_some(&link),
                            scope: grants.as_ref().map(|g| {
                                (
                                    g,
                                    if k % 4 < 2 {
                                        ScopeMode::Filter
                                    } else {
                                        ScopeMode::Refuse
                                    },
                                )
                            }),
                        };
                        let fast = check.run(&body);
                        let tree = check.run_tree(&body);
                        assert!(
                            same(&fast, &tree),
                            "pid {pid} bundle {bundle} hide {hide} scopes {si}: {fast:?} vs {tree:?}\n{text}"
                        );
                        runs += 1;
                        if let Ok(a) = answer::read(&body) {
                            match check.quick(&a) {
                                Some(true) => quick_pass += 1,
                                Some(false) => quick_hidden += 1,
                                None => {}
                            }
                        }
                    }
                }
                // Ownership (the pre-read of deletes and patches).
                let tree = strict_json::from_slice(&body).map(|v| owned_by(&v, pid));
                let fast = answer::read(&body).map(|a| a.owned_by(pid));
                match (&fast, &tree) {
                    (Ok(f), Ok(t)) => assert_eq!(f, t, "owned_by {pid}\n{text}"),
                    (Err(_), Ok(_)) => panic!("read here but not by strict_json\n{text}"),
                    (Ok(_), Err(_)) => panic!("strict_json refuses what was read here\n{text}"),
                    (Err(_), Err(_)) => {}
                }
            }
            // Scopes outside the compartment guard: a pass here is `Ok(false)` there.
            let tree_doc = strict_json::from_slice(&body);
            let read = answer::read(&body);
            for s in &scope_sets {
                let g = Grants::new(s, Perm::Read, Some("Observation"), &[]);
                let fast = read.as_ref().is_ok_and(|a| a.scopes_pass(&g));
                if let Ok(v) = &tree_doc {
                    let tree = g.filter(&mut v.clone(), false);
                    if fast {
                        assert_eq!(tree, Ok(false), "{text}");
                    }
                    // The other way too, but for Bundles inside entries (left to the tree).
                    if tree == Ok(false) {
                        let nested = read.as_ref().is_ok_and(|a| {
                            a.entries.iter().any(|e| {
                                matches!(&e.resource, answer::EntryResource::Object(r)
                                    if r.resource_type.as_str() == Some("Bundle"))
                            })
                        });
                        assert!(fast || nested, "{text}");
                    }
                }
            }
            // The duplicate rule alone: the tokenizer and strict_json agree.
            let dup = tree_doc == Err(StrictError::Duplicate);
            let quick = json::check(&body, strict_json::MAX_DEPTH).is_err()
                && strict_json::from_slice(&body) == Err(StrictError::Duplicate);
            assert_eq!(dup, quick);
        }
    }
    // The token stream decides most answers (else the hot path did not get faster).
    assert!(runs > 10_000, "{runs}");
    assert!(quick_pass * 5 > runs / 10, "{quick_pass} of {runs}");
    assert!(quick_hidden > 100, "{quick_hidden}");
}

#[test]
fn unchanged_answers_take_the_token_path() {
    // What the hot path sees: a compartment read and a clean searchset pass without a tree.
    for pid in ["a", "p-1.x"] {
        let read = write(
            &json!({"resourceType": "Observation", "id": "1", "subject": {"reference": format!("Patient/{pid}")}}),
            Style::default(),
        )
        .0;
        let search = write(
            &json!({"resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": {"resourceType": "Observation", "subject": {"reference": format!("Patient/{pid}")}}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Patient", "id": pid}, "search": {"mode": "include"}}
            ]}),
            Style::default(),
        )
        .0;
        for (body, bundle) in [(read, false), (search, true)] {
            let check = BodyCheck {
                pid,
                bundle,
                hide: false,
                mode: BundleMode::Filter,
                links: None,
                scope: None,
            };
            let a = answer::read(body.as_bytes()).unwrap();
            assert_eq!(check.quick(&a), Some(true), "{body}");
            assert_eq!(check.run(body.as_bytes()).unwrap(), None);
        }
    }
}
