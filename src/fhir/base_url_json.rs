//! The base-URL rewrite of a FHIR JSON answer (`BaseSet::json`'s members) done on the JSON
//! token stream: the URL-bearing strings are found by their byte offsets and only they are
//! replaced (re-escaped), or their member / link removed; every other byte is the
//! upstream's. No tree is built, and an answer with nothing to rewrite is not copied.
//!
//! Which members: a Bundle's `link[].url`, and per entry `fullUrl`, `link[].url`,
//! `request.url`, `response.location`, `response.outcome` and `resource` (both read as
//! resources again); an OperationOutcome's `issue[].diagnostics` and
//! `issue[].details.text` (free text); a CapabilityStatement's `implementation.url`. A
//! resource's type may come after these members, so candidates are collected with the
//! resource they belong to and kept once its type is known.
//!
//! The grammar is `strict_json`'s (same tokenizer, depth limit and number range): a body
//! not read here is handed back (`NotRead`) for `strict_json` to say why.

use std::borrow::Cow;

use crate::json::{Kind, Token, Tokenizer};

use super::answer::NotRead;
use super::base_url::{BaseSet, Fate};
use super::strict_json::MAX_DEPTH;

/// What a container is to the rewrite (`usize`: the resource it belongs to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An object read as a resource (`BaseSet::json`).
    Node(usize),
    Links(usize),
    /// A `link` item; the offset of the array that holds it.
    Link(usize, usize),
    Entries(usize),
    Entry(usize),
    Request(usize),
    Response(usize),
    Issues(usize),
    Issue(usize),
    Details(usize),
    Implementation(usize),
    Other,
}

/// The resource types whose members are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Bundle,
    Outcome,
    Capability,
}

/// How a URL that is to go disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// The member (object at the first offset; the member's opening quote).
    Member(usize, usize),
    /// The item of a `link` array (array offset, item offset).
    Item(usize, usize),
}

struct Candidate {
    node: usize,
    need: Need,
    tok: Token,
    /// `None`: free text (rewritten, never removed).
    drop: Option<Drop>,
}

/// An open container: its role, its offset, and the pending member's name and the offset
/// of its opening quote.
type Frame<'a> = (Role, usize, Option<(Cow<'a, str>, usize)>);

struct Node<'a> {
    parent: Option<usize>,
    rtype: Option<Cow<'a, str>>,
}

/// Offsets of a container's items: `(start, end)` of each member (from its name's quote) or
/// item.
fn items(b: &[u8], at: usize) -> Result<Vec<(usize, usize)>, NotRead> {
    let mut t = Tokenizer::value_at(b, at, MAX_DEPTH);
    let mut out = Vec::new();
    let mut start = None;
    let mut depth = 0usize;
    while let Some(tok) = t.next()? {
        let (s, e) = match tok.kind {
            Kind::Str | Kind::Key => (tok.start - 1, tok.end + 1),
            _ => (tok.start, tok.end),
        };
        match tok.kind {
            Kind::ObjStart | Kind::ArrStart => {
                if depth == 1 && start.is_none() {
                    start = Some(s);
                }
                depth += 1;
            }
            Kind::ObjEnd | Kind::ArrEnd => {
                depth -= 1;
                if depth == 1 {
                    out.extend(start.take().map(|s| (s, e)));
                }
            }
            Kind::Key if depth == 1 => start = Some(s),
            _ if depth == 1 => out.push((start.take().unwrap_or(s), e)),
            _ => {}
        }
    }
    Ok(out)
}

/// The byte ranges that remove `gone` items of a container whose items are `all`.
fn removals(all: &[(usize, usize)], gone: &[usize], out: &mut Vec<(usize, usize, Vec<u8>)>) {
    let mut i = 0;
    while i < all.len() {
        if !gone.contains(&all[i].0) {
            i += 1;
            continue;
        }
        // A run of removed items [i, j).
        let mut j = i;
        while j < all.len() && gone.contains(&all[j].0) {
            j += 1;
        }
        let range = if j < all.len() {
            // Up to the next kept item: the run and the separators after it.
            (all[i].0, all[j].0)
        } else if i > 0 {
            // The run ends the container: from the end of the kept item before it.
            (all[i - 1].1, all[j - 1].1)
        } else {
            (all[i].0, all[j - 1].1)
        };
        out.push((range.0, range.1, Vec::new()));
        i = j;
    }
}

/// A string's content as JSON writes it (serde_json's escaping, as the tree path wrote it).
fn escaped(s: &str) -> Vec<u8> {
    let q = serde_json::to_string(s).unwrap_or_default();
    q.as_bytes()
        .get(1..q.len().saturating_sub(1))
        .unwrap_or_default()
        .to_vec()
}

/// `BaseSet::json` on the bytes of a document: `Ok(None)` when nothing changes.
pub fn rewrite(bases: &BaseSet, b: &[u8], public: &str) -> Result<Option<Vec<u8>>, NotRead> {
    let mut t = Tokenizer::new(b, MAX_DEPTH);
    let mut nodes: Vec<Node<'_>> = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    while let Some(tok) = t.next()? {
        match tok.kind {
            Kind::Key => {
                let name = crate::json::decode_str(tok.raw(b), tok.esc)?;
                if let Some(f) = stack.last_mut() {
                    f.2 = Some((name, tok.start - 1));
                }
                continue;
            }
            Kind::ObjEnd | Kind::ArrEnd => {
                stack.pop();
                continue;
            }
            Kind::Num if !super::answer::number_ok(tok.raw(b)) => return Err(NotRead),
            _ => {}
        }
        let obj = tok.kind == Kind::ObjStart;
        let arr = tok.kind == Kind::ArrStart;
        let s = tok.kind == Kind::Str;
        let Some((prole, pat, pkey)) = stack.last() else {
            if obj {
                nodes.push(Node {
                    parent: None,
                    rtype: None,
                });
            }
            stack.push((
                if obj { Role::Node(0) } else { Role::Other },
                tok.start,
                None,
            ));
            continue;
        };
        let (prole, pat) = (*prole, *pat);
        let key = pkey.as_ref().map(|(k, _)| k.as_ref());
        let member = |o| Drop::Member(pat, pkey.as_ref().map_or(o, |(_, q)| *q));
        let mut url = |node, need, drop: Option<Drop>| {
            if s {
                cands.push(Candidate {
                    node,
                    need,
                    tok,
                    drop,
                });
            }
        };
        let mut role = Role::Other;
        match (prole, key) {
            (Role::Node(n), Some("resourceType")) if s => {
                let ty = crate::json::decode_str(tok.raw(b), tok.esc)?;
                if let Some(x) = nodes.get_mut(n) {
                    x.rtype = Some(ty);
                }
            }
            (Role::Node(n), Some("link")) if arr => role = Role::Links(n),
            (Role::Node(n), Some("entry")) if arr => role = Role::Entries(n),
            (Role::Node(n), Some("issue")) if arr => role = Role::Issues(n),
            (Role::Node(n), Some("implementation")) if obj => role = Role::Implementation(n),
            (Role::Links(n), None) if obj => role = Role::Link(n, pat),
            (Role::Link(n, arr_at), Some("url")) => {
                url(n, Need::Bundle, Some(Drop::Item(arr_at, pat)))
            }
            (Role::Entries(n), None) if obj => role = Role::Entry(n),
            (Role::Entry(n), Some("fullUrl")) => url(n, Need::Bundle, Some(member(tok.start))),
            (Role::Entry(n), Some("link")) if arr => role = Role::Links(n),
            (Role::Entry(n), Some("request")) if obj => role = Role::Request(n),
            (Role::Entry(n), Some("response")) if obj => role = Role::Response(n),
            (Role::Entry(n), Some("resource")) | (Role::Response(n), Some("outcome")) if obj => {
                nodes.push(Node {
                    parent: Some(n),
                    rtype: None,
                });
                role = Role::Node(nodes.len() - 1);
            }
            (Role::Request(n), Some("url")) => url(n, Need::Bundle, Some(member(tok.start))),
            (Role::Response(n), Some("location")) => url(n, Need::Bundle, Some(member(tok.start))),
            (Role::Issues(n), None) if obj => role = Role::Issue(n),
            (Role::Issue(n), Some("diagnostics")) => url(n, Need::Outcome, None),
            (Role::Issue(n), Some("details")) if obj => role = Role::Details(n),
            (Role::Details(n), Some("text")) => url(n, Need::Outcome, None),
            (Role::Implementation(n), Some("url")) => {
                url(n, Need::Capability, Some(member(tok.start)))
            }
            _ => {}
        }
        if obj || arr {
            stack.push((role, tok.start, None));
        }
    }
    if cands.is_empty() {
        return Ok(None);
    }
    // A resource's members are rewritten when it has the type, and it is read at all
    // (the document, or inside a Bundle that is).
    let is = |n: usize, want: &str| {
        nodes
            .get(n)
            .and_then(|x| x.rtype.as_deref())
            .is_some_and(|t| t == want)
    };
    let mut live: Vec<bool> = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let l = match node.parent {
            None => true,
            // Parents come first (a node is pushed when its object starts).
            Some(p) => live.get(p).copied().unwrap_or(false) && is(p, "Bundle"),
        };
        live.push(l);
    }
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    // Removals, grouped by container: (container offset, item offsets).
    let mut gone: Vec<(usize, Vec<usize>)> = Vec::new();
    for c in &cands {
        let want = match c.need {
            Need::Bundle => "Bundle",
            Need::Outcome => "OperationOutcome",
            Need::Capability => "CapabilityStatement",
        };
        if !live.get(c.node).copied().unwrap_or(false) || !is(c.node, want) {
            continue;
        }
        let text = crate::json::decode_str(c.tok.raw(b), c.tok.esc)?;
        let fate = match c.drop {
            None => match bases.text(&text, public) {
                Some(n) => Fate::Replace(n),
                None => Fate::Keep,
            },
            Some(_) => bases.url(&text, public),
        };
        match (fate, c.drop) {
            (Fate::Keep, _) => {}
            (Fate::Replace(n), _) => edits.push((c.tok.start, c.tok.end, escaped(&n))),
            (Fate::Drop, Some(Drop::Member(at, item) | Drop::Item(at, item))) => {
                match gone.iter_mut().find(|(a, _)| *a == at) {
                    Some((_, v)) => v.push(item),
                    None => gone.push((at, vec![item])),
                }
            }
            (Fate::Drop, None) => {}
        }
    }
    for (at, items_gone) in &gone {
        removals(&items(b, *at)?, items_gone, &mut edits);
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|e| e.0);
    // Edits never overlap (a removed item holds no other edit); if they did, the tree
    // decides.
    if edits.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(NotRead);
    }
    let grow: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = Vec::with_capacity(b.len() + grow);
    let mut copied = 0;
    for (s, e, r) in edits {
        out.extend_from_slice(b.get(copied..s).ok_or(NotRead)?);
        out.extend_from_slice(&r);
        copied = e;
    }
    out.extend_from_slice(b.get(copied..).ok_or(NotRead)?);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::base_url::Base;
    use crate::fhir::strict_json;
    use serde_json::{json, Value};

    const PUB: &str = "https://gw.example/patient/fhir";

    fn set() -> BaseSet {
        BaseSet::new(vec![
            Base::parse("https://ehr.internal:8443/fhir").unwrap(),
            Base::parse("https://ehr.internal/baseR4").unwrap(),
        ])
        .unwrap()
    }

    /// URLs that are rewritten, removed, or kept.
    const URLS: &[&str] = &[
        "https://ehr.internal:8443/fhir/Patient/1",
        "HTTPS://EHR.INTERNAL:8443/fhir/Observation?page=2&x=\"q\"",
        "/baseR4/Patient/1",
        "https://ehr.internal:9443/fhir/Patient/1",
        "http://ehr.internal/fhir",
        "https://other.example/fhir/Patient/1",
        "urn:uuid:1234",
        "Patient/1",
    ];
    const TEXTS: &[&str] = &[
        "see https://ehr.internal:8443/fhir/Patient/1 and ehr.internal:5432 down",
        "nothing here",
        "tab\there \u{e9} \u{1F600}",
    ];

    fn docs() -> Vec<Value> {
        let mut out = Vec::new();
        for (i, u1) in URLS.iter().enumerate() {
            let u2 = URLS[(i + 3) % URLS.len()];
            let u3 = URLS[(i + 5) % URLS.len()];
            let t = TEXTS[i % TEXTS.len()];
            let outcome = json!({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "diagnostics": t, "details": {"text": t}},
                "x",
                {"details": [{"text": t}], "diagnostics": 5}
            ]});
            out.push(json!({"resourceType": "Bundle", "type": "searchset",
                "link": [{"relation": "self", "url": u1}, {"relation": "next", "url": u2}, {"relation": "prev", "url": u3}],
                "entry": [
                    {"fullUrl": u1, "link": [{"url": u2}, {"url": u3}],
                     "request": {"method": "GET", "url": u2},
                     "response": {"status": "200", "location": u3, "outcome": outcome},
                     "resource": {"resourceType": "Patient", "id": "1", "link": [{"url": u1}], "photo": [{"url": u1}]}},
                    {"fullUrl": u2, "resource": {"resourceType": "Bundle", "link": [{"url": u1}],
                        "entry": [{"fullUrl": u3, "resource": outcome}]}},
                    5,
                    {"resource": outcome, "request": [u1], "response": {"location": 7}},
                    {"fullUrl": u3, "resource": {"resourceType": "Observation", "entry": [{"fullUrl": u1}], "issue": [{"diagnostics": t}]}}
                ]}));
            out.push(
                json!({"resourceType": "Bundle", "link": [{"url": u1}, {"url": u1}, {"url": u2}]}),
            );
            out.push(
                json!({"resourceType": "Bundle", "link": [{"url": u2}], "entry": {"fullUrl": u1}}),
            );
            out.push(outcome.clone());
            out.push(json!({"resourceType": "CapabilityStatement", "implementation": {"description": t, "url": u1}, "url": u2}));
            out.push(
                json!({"resourceType": "CapabilityStatement", "implementation": [{"url": u1}]}),
            );
            out.push(json!({"resourceType": "Patient", "link": [{"url": u1}], "entry": [{"fullUrl": u1}], "implementation": {"url": u1}}));
            out.push(json!({"resourceType": ["Bundle"], "link": [{"url": u1}]}));
            out.push(json!([{"resourceType": "Bundle", "link": [{"url": u1}]}]));
        }
        out
    }

    /// Spellings of one document: whitespace, escaped names and strings, member order,
    /// duplicates, broken forms.
    fn variants(v: &Value) -> Vec<String> {
        let compact = v.to_string();
        let mut out = vec![compact.clone()];
        out.push(serde_json::to_string_pretty(v).unwrap());
        out.push(compact.replace(",", " ,\r\n\t").replace(":", " : "));
        let mut esc = compact.clone();
        for k in [
            "resourceType",
            "link",
            "url",
            "entry",
            "fullUrl",
            "issue",
            "diagnostics",
            "implementation",
            "resource",
        ] {
            esc = esc.replace(
                &format!("\"{k}\":"),
                &format!("\"\\u{:04x}{}\":", k.as_bytes()[0], &k[1..]),
            );
        }
        out.push(esc);
        out.push(compact.replace('/', "\\/").replace("ehr.", "\\u0065hr."));
        // serde_json writes members sorted (`resourceType` after `entry` and `link`); the
        // reverse puts the type first.
        if let Value::Object(m) = v {
            let mut s = String::from("{");
            for (i, (k, x)) in m.iter().rev().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{}:{}", Value::from(k.as_str()), x));
            }
            s.push('}');
            out.push(s);
        }
        out.push(compact.replacen("{\"relation\"", "{\"relation\":\"a\",\"rel\\u0061tion\"", 1));
        out.push(compact.replacen('{', "{\"resourceType\":\"x\",", 1));
        out.push(compact[..compact.len() / 2].to_owned());
        out.push(compact.replacen('{', "{\"n\":1e400,", 1));
        out.push(compact.replacen('{', "{\"n\":-1.5e300,", 1));
        out
    }

    #[test]
    fn token_rewrite_equals_the_tree_rewrite_on_generated_variants() {
        let s = set();
        let (mut changed, mut n) = (0, 0);
        for d in docs() {
            for text in variants(&d) {
                let b = text.as_bytes();
                let fast = rewrite(&s, b, PUB);
                let tree = strict_json::from_slice(b).map(|mut v| {
                    let c = s.json(&mut v, PUB);
                    (c, v)
                });
                n += 1;
                match (fast, tree) {
                    (Err(_), Err(_)) => {}
                    (Ok(None), Ok((false, _))) => {}
                    (Ok(Some(out)), Ok((true, v))) => {
                        changed += 1;
                        let got = strict_json::from_slice(&out)
                            .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&out)));
                        assert_eq!(got, v, "{text}\n{}", String::from_utf8_lossy(&out));
                    }
                    (f, t) => panic!("{text}: {f:?} vs {:?}", t.map(|x| x.0)),
                }
            }
        }
        assert!(n > 500 && changed > 100, "{n} {changed}");
    }

    #[test]
    fn bytes_outside_the_rewritten_strings_stay_the_upstreams() {
        let s = set();
        let body = "{ \"resourceType\" : \"Bundle\",\n  \"total\": 1.50E+1, \"x\": \"\\u00e9\\/\",\n  \"link\": [ {\"url\": \"https://ehr.internal:8443/fhir/Observation?page=2\"} ,\n {\"url\":\"http://ehr.internal/x\"} ] }";
        let out = rewrite(&s, body.as_bytes(), PUB).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{{ \"resourceType\" : \"Bundle\",\n  \"total\": 1.50E+1, \"x\": \"\\u00e9\\/\",\n  \"link\": [ {{\"url\": \"{PUB}/Observation?page=2\"}} ] }}")
        );
        // Nothing to rewrite: no copy.
        assert_eq!(
            rewrite(&s, br#"{"resourceType":"Patient","id":"1"}"#, PUB),
            Ok(None)
        );
        // Every link removed, first and middle ones too.
        for (links, want) in [
            (
                r#"[{"url":"http://ehr.internal/a"},{"url":"u"}]"#,
                r#"[{"url":"u"}]"#,
            ),
            (
                r#"[{"url":"u"}, {"url":"http://ehr.internal/a"}, {"url":"v"}]"#,
                r#"[{"url":"u"}, {"url":"v"}]"#,
            ),
            (
                r#"[ {"url":"http://ehr.internal/a"} , {"url":"http://ehr.internal/b"} ]"#,
                r#"[  ]"#,
            ),
        ] {
            let body = format!(r#"{{"resourceType":"Bundle","link":{links}}}"#);
            let out = rewrite(&s, body.as_bytes(), PUB).unwrap().unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!(r#"{{"resourceType":"Bundle","link":{want}}}"#)
            );
        }
    }
}
