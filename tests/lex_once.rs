//! A body is lexed once per request, however many policies read it (issue #20): over real
//! TLS, a FHIR route with `validate` and `dlp` (both directions) in front of a recording
//! upstream. `ward_json_lex_total{direction}` must grow by exactly one per JSON body, and
//! the upstream and the client must get the right bytes — the original, or DLP's rewrite
//! (computed independently with the engine) — for generated bodies: clean and with PHI,
//! valid FHIR, invalid FHIR and invalid JSON, small and just below / at / above the
//! off-worker size (`body::OFF_WORKER_BYTES`), where the work moves to the blocking pool —
//! also as lines of an NDJSON bulk-export answer.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

const POLICY: &str = "validate:\n  fhir: {}\ndlp:\n  direction: both\n  detectors:\n    ssn: {}\n";

#[derive(Default)]
struct Up {
    /// Response body by request path.
    answers: Mutex<HashMap<String, Bytes>>,
    /// (path, body) of each request.
    seen: Mutex<Vec<(String, Bytes)>>,
}

async fn handler(st: Arc<Up>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    st.seen.lock().unwrap().push((path.clone(), body));
    let answer = st
        .answers
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_else(|| Bytes::from_static(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#));
    let ctype = if path.starts_with("/fhir/Binary/") {
        "application/fhir+ndjson"
    } else {
        "application/fhir+json"
    };
    let mut r = Response::new(Full::new(answer));
    r.headers_mut()
        .insert("content-type", ctype.parse().unwrap());
    r
}

/// A Patient of exactly `len` bytes (padded with trailing whitespace, which JSON allows),
/// with an SSN in a name's text when `phi`; `bad_fhir` adds an unknown element.
fn patient(len: usize, phi: bool, bad_fhir: bool) -> Vec<u8> {
    let mut names = Vec::new();
    let mut i = 0;
    let mut doc = String::new();
    loop {
        let text = if phi && i == 0 {
            "Ann Lee SSN 123-45-6789".to_owned()
        } else {
            format!("Ann Lee {i}")
        };
        names.push(format!(
            r#"{{"family":"Lee","given":["Ann","B{i}"],"text":"{text}"}}"#
        ));
        let extra = if bad_fhir {
            r#","favouriteColour":"blue""#
        } else {
            ""
        };
        let next = format!(
            r#"{{"resourceType":"Patient","id":"p1","active":true{extra},"name":[{}]}}"#,
            names.join(",")
        );
        if next.len() > len {
            break;
        }
        doc = next;
        i += 1;
    }
    assert!(!doc.is_empty(), "{len} is too small for a Patient");
    let mut v = doc.into_bytes();
    v.resize(len, b' ');
    v
}

fn engine() -> ward::dlp::Engine {
    let cfg: ward::dlp::DlpConfig =
        serde_json::from_value(serde_json::json!({"direction": "both", "detectors": {"ssn": {}}}))
            .unwrap();
    let resolve = |p: &str| std::path::PathBuf::from(p);
    ward::dlp::Engine::compile(&cfg, &resolve).unwrap()
}

/// What DLP must make of `body`: the same bytes, or the engine's rewrite.
fn expected(eng: &ward::dlp::Engine, body: &[u8]) -> Vec<u8> {
    let mut r = ward::dlp::Report::default();
    match ward::dlp::json::process(eng, body, &mut r) {
        Ok(ward::dlp::json::JsonOutcome::Unchanged) => body.to_vec(),
        Ok(ward::dlp::json::JsonOutcome::Rewritten(b)) => b,
        other => panic!("unexpected DLP outcome: {:?}", other.is_ok()),
    }
}

async fn lexed(gw: &ward::Gateway, dir: &str) -> u64 {
    let (_, m) = admin_get(gw, "/metrics").await;
    let key = format!("ward_json_lex_total{{direction=\"{dir}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn sizes() -> Vec<usize> {
    let t = ward::body::OFF_WORKER_BYTES;
    vec![600, t - 1, t, t + 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_dlp_share_one_lexing_per_body_and_forward_the_right_bytes() {
    let env = Env::new();
    env.write("policies/lexonce.yaml", POLICY);
    let up = Arc::new(Up::default());
    let addr = serve_http1(up.clone(), handler).await;
    let cfg = basic_config(addr, "", "").replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [lexonce]\n",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    let eng = engine();
    let mut cases = 0;
    for len in sizes() {
        for phi in [false, true] {
            // A valid Patient in: validated and DLP-scanned from one index.
            let body = patient(len, phi, false);
            assert_eq!(body.len(), len);
            let want = expected(&eng, &body);
            assert_eq!(
                want != body,
                phi,
                "the engine rewrites exactly the PHI bodies"
            );
            let before = lexed(&gw, "request").await;
            let req = Request::post(url(&gw, "/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let r = send(&c, req).await;
            assert_eq!(r.status, 200, "len {len} phi {phi}: {:?}", r.body);
            assert_eq!(
                lexed(&gw, "request").await - before,
                1,
                "len {len} phi {phi}: lexed once"
            );
            let (path, got) = up.seen.lock().unwrap().last().cloned().unwrap();
            assert_eq!(path, "/fhir/Patient");
            assert!(got == want, "len {len} phi {phi}: upstream got other bytes");
            if phi {
                assert!(!got.windows(11).any(|w| w == b"123-45-6789"));
            }

            // The same bytes out: DLP on the response lexes them once too.
            let rpath = format!("/fhir/Patient/p{len}-{phi}");
            up.answers
                .lock()
                .unwrap()
                .insert(rpath.clone(), Bytes::from(body.clone()));
            let before = lexed(&gw, "response").await;
            let r = send(&c, get(&url(&gw, &rpath))).await;
            assert_eq!(r.status, 200, "len {len} phi {phi}");
            assert!(
                r.body == want,
                "len {len} phi {phi}: client got other bytes"
            );
            assert_eq!(lexed(&gw, "response").await - before, 1);
            cases += 1;
        }

        // Invalid FHIR (an unknown element) and invalid JSON (cut short): refused by the
        // validator with its own findings, nothing forwarded, and still one lexing.
        // The same bodies as lines of a bulk-export file: each line scanned (off the
        // worker from the threshold on), the file streamed with every line's result.
        let npath = format!("/fhir/Binary/ndjson{len}");
        let lines: Vec<Vec<u8>> = [false, true, false]
            .iter()
            .map(|&phi| patient(len, phi, false))
            .collect();
        let mut file = Vec::new();
        let mut want_file = Vec::new();
        for l in &lines {
            file.extend_from_slice(l);
            file.push(b'\n');
            want_file.extend(expected(&eng, l));
            want_file.push(b'\n');
        }
        up.answers
            .lock()
            .unwrap()
            .insert(npath.clone(), Bytes::from(file));
        let r = send(&c, get(&url(&gw, &npath))).await;
        assert_eq!(r.status, 200, "len {len} ndjson");
        assert!(r.body == want_file, "len {len}: ndjson lines");

        for (what, body) in [
            ("bad fhir", patient(len, false, true)),
            ("bad json", {
                let mut b = patient(len, false, false);
                let end = b.iter().rposition(|c| *c == b'}').unwrap();
                b.truncate(end);
                b
            }),
        ] {
            let seen_before = up.seen.lock().unwrap().len();
            let before = lexed(&gw, "request").await;
            let req = Request::post(url(&gw, "/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let r = send(&c, req).await;
            assert_eq!(r.status, 400, "len {len} {what}");
            assert_eq!(r.code(), "fhir_invalid", "len {len} {what}");
            let issues = r.json()["issue"].to_string();
            if what == "bad json" {
                assert!(issues.contains("invalid JSON"), "{issues}");
            } else {
                assert!(issues.contains("Patient.favouriteColour"), "{issues}");
            }
            assert_eq!(lexed(&gw, "request").await - before, 1, "len {len} {what}");
            assert_eq!(
                up.seen.lock().unwrap().len(),
                seen_before,
                "len {len} {what}"
            );
        }
    }
    assert_eq!(cases, sizes().len() * 2);
}

/// (b) No stale index after a rewrite, in both directions, with the real policies composed
/// as the route stack composes them (validate outside, DLP inside): the reader after DLP
/// (the upstream side for a request, the next response policy for a response) finds no
/// index of the old bytes, and a reader of the rewritten bytes gets an index of exactly
/// those. A clean body's index travels through unchanged (reused, not rebuilt).
#[tokio::test]
async fn a_dlp_rewrite_drops_the_index_of_the_old_bytes() {
    use tower::{Layer, Service, ServiceExt};
    use ward::json::{Index, LexedBody};
    use ward::policy::dlp::Dlp;
    use ward::policy::validate::{Validate, ValidateConfig};
    use ward::service::PolicyLayer;

    let metrics = Arc::new(ward::metrics::Metrics::new());
    let cfg: ward::dlp::DlpConfig =
        serde_json::from_value(serde_json::json!({"direction": "both", "detectors": {"ssn": {}}}))
            .unwrap();
    let resolve = |p: &str| std::path::PathBuf::from(p);
    let dlp = Dlp::new(&cfg, "r", &resolve, metrics.clone()).unwrap();
    let vcfg: ValidateConfig = serde_json::from_value(serde_json::json!({"fhir": {}})).unwrap();
    let req_lexed = metrics.json_lex.with_label_values(&["request"]);
    let resp_lexed = metrics.json_lex.with_label_values(&["response"]);
    let validate = Validate::new(&vcfg, "r", metrics.validation_failures.clone())
        .unwrap()
        .counting_lexes(req_lexed.clone());
    let eng = engine();
    let (vl, dl) = (PolicyLayer::new(validate), PolicyLayer::new(dlp));

    for len in sizes() {
        for phi in [false, true] {
            let body = patient(len, phi, false);
            let want = expected(&eng, &body);
            // The upstream stand-in: records what it got and whether an index of exactly
            // those bytes came with it; answers with `body`, carrying a (by now stale, if
            // DLP rewrites) index of it as an inner reader would leave it.
            let seen: Arc<Mutex<Option<(Bytes, bool, bool)>>> = Arc::default();
            let (s2, answer, rl) = (seen.clone(), Bytes::from(body.clone()), resp_lexed.clone());
            let terminal = tower::service_fn(move |req: Request<ward::Body>| {
                let (s2, answer, rl) = (s2.clone(), answer.clone(), rl.clone());
                async move {
                    let (parts, b) = req.into_parts();
                    let got = b.collect().await.unwrap().to_bytes();
                    let any = parts.extensions.get::<LexedBody>().is_some();
                    let matching = LexedBody::get(&parts.extensions, &got).is_some();
                    *s2.lock().unwrap() = Some((got, any, matching));
                    let mut resp = Response::new(
                        Full::new(answer.clone())
                            .map_err(|e| match e {})
                            .boxed_unsync(),
                    );
                    resp.headers_mut()
                        .insert("content-type", "application/fhir+json".parse().unwrap());
                    LexedBody::obtain(resp.extensions_mut(), &answer, &rl);
                    Ok::<_, ward::error::Rejection>(resp)
                }
            });
            let mut svc = vl.layer(dl.layer(terminal));
            let (rq0, rs0) = (req_lexed.get(), resp_lexed.get());
            let mut req = Request::post("/fhir/Patient")
                .header("content-type", "application/fhir+json")
                .body(
                    Full::new(Bytes::from(body.clone()))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .unwrap();
            // What the server puts on a request of a `fhir: true` route.
            let f = ward::fhir::request::parse(&http::Method::POST, "Patient", None).unwrap();
            req.extensions_mut().insert(Arc::new(f));
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            let (got, any, matching) = seen.lock().unwrap().clone().unwrap();
            assert!(got == want, "len {len} phi {phi}");
            if phi {
                // Rewritten on the way in: the old index is gone, none of other bytes.
                assert!(
                    !any && !matching,
                    "len {len}: stale index reached the upstream"
                );
            } else {
                // Clean: validate's index, reused by DLP, reaches the next reader.
                assert!(any && matching, "len {len}");
            }
            assert_eq!(
                req_lexed.get() - rq0,
                1,
                "len {len} phi {phi}: one request lexing"
            );
            // The response: the inner reader's index was reused by DLP (no new lexing) …
            assert_eq!(resp_lexed.get() - rs0, 1, "len {len} phi {phi}");
            let (parts, b) = resp.into_parts();
            let out = b.collect().await.unwrap().to_bytes();
            assert!(out == want, "len {len} phi {phi}: response bytes");
            let mut ext = parts.extensions;
            if phi {
                // … and dropped with the rewrite: the next response reader finds none, and
                // lexing the rewritten bytes gives their own index.
                assert!(
                    ext.get::<LexedBody>().is_none(),
                    "len {len}: stale response index"
                );
                let ix = LexedBody::obtain(&mut ext, &out, &resp_lexed).unwrap();
                assert_eq!(*ix, Index::build(&out).unwrap());
                assert!(ix.error().is_none());
                assert_eq!(resp_lexed.get() - rs0, 2);
            } else {
                assert!(LexedBody::get(&ext, &out).is_some(), "len {len}");
            }
        }
    }

    // A route whose only body reader is the validator: no index is built for no one (the
    // validator lexes the body itself), and nothing is left on the request.
    let alone = PolicyLayer::new(
        Validate::new(&vcfg, "r", metrics.validation_failures.clone())
            .unwrap()
            .counting_lexes(req_lexed.clone())
            .sharing_index(false),
    );
    for len in sizes() {
        let body = patient(len, false, false);
        let saw: Arc<Mutex<Option<(Bytes, bool)>>> = Arc::default();
        let s2 = saw.clone();
        let terminal = tower::service_fn(move |req: Request<ward::Body>| {
            let s2 = s2.clone();
            async move {
                let (parts, b) = req.into_parts();
                let got = b.collect().await.unwrap().to_bytes();
                *s2.lock().unwrap() = Some((got, parts.extensions.get::<LexedBody>().is_some()));
                Ok::<_, ward::error::Rejection>(Response::new(ward::empty_body()))
            }
        });
        let mut svc = alone.layer(terminal);
        let mut req = Request::post("/fhir/Patient")
            .header("content-type", "application/fhir+json")
            .body(
                Full::new(Bytes::from(body.clone()))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .unwrap();
        let f = ward::fhir::request::parse(&http::Method::POST, "Patient", None).unwrap();
        req.extensions_mut().insert(Arc::new(f));
        let before = req_lexed.get();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (got, any) = saw.lock().unwrap().clone().unwrap();
        assert!(got == body && !any, "len {len}");
        assert_eq!(
            req_lexed.get(),
            before,
            "len {len}: nothing lexed for no one"
        );
    }
}

/// DLP through a body's index walks and edits exactly as DLP lexing the body itself: same
/// outcome and the same output bytes, for every FHIR fixture, each with PHI put in, and
/// generated corruptions (substituted and deleted bytes, truncations), under the Safe
/// Harbor preset (path rules, narrative, dates) and a free-text-only policy.
#[test]
fn indexed_dlp_rewrites_exactly_as_unindexed_dlp() {
    use ward::dlp::json::{process, process_indexed, JsonOutcome};
    use ward::json::Index;
    fn outcome(r: Result<JsonOutcome, ward::dlp::json::JsonError>) -> String {
        match r {
            Ok(JsonOutcome::Unchanged) => "unchanged".into(),
            Ok(JsonOutcome::Blocked) => "blocked".into(),
            Ok(JsonOutcome::Rewritten(b)) => format!("rewritten {}", String::from_utf8_lossy(&b)),
            Err(e) => format!("error {e:?}"),
        }
    }
    let resolve = |p: &str| std::path::PathBuf::from(p);
    let harbor: ward::dlp::DlpConfig =
        serde_json::from_value(serde_json::json!({"preset": "safe_harbor"})).unwrap();
    let engines = [
        ward::dlp::Engine::compile(&harbor, &resolve).unwrap(),
        engine(),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-valid");
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
        .collect();
    names.sort();
    for p in &names {
        let b = std::fs::read(p).unwrap();
        // With PHI in free text wherever a string starts.
        let s = String::from_utf8(b.clone()).unwrap();
        bodies.push(s.replacen(":\"", ":\"SSN 123-45-6789 ", 3).into_bytes());
        bodies.push(b);
    }
    let mut n = 0;
    let mut changed = 0;
    let mut check = |body: &[u8]| {
        let ix = Index::build(body).unwrap();
        for eng in &engines {
            let mut r1 = ward::dlp::Report::default();
            let mut r2 = ward::dlp::Report::default();
            let a = outcome(process(eng, body, &mut r1));
            let b = outcome(process_indexed(eng, body, Some(&ix), &mut r2));
            assert_eq!(a, b, "{}", String::from_utf8_lossy(body));
            assert_eq!(r1.counts, r2.counts);
            changed += usize::from(a.starts_with("rewritten"));
        }
        n += 1;
    };
    for b in &bodies {
        check(b);
    }
    for b in bodies.iter().take(6) {
        for cut in (0..b.len()).step_by(11) {
            check(&b[..cut]);
        }
        for pos in (0..b.len()).step_by(3) {
            for c in [b'"', b'{', b']', b',', b'\\', 0xff, b'1'] {
                let mut m = b.clone();
                m[pos] = c;
                check(&m);
            }
            let mut del = b.clone();
            del.remove(pos);
            check(&del);
        }
    }
    assert!(n > 2_000 && changed > 50, "{n} bodies, {changed} rewritten");
}
