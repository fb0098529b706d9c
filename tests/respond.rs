//! Detect and respond (issue #10) end to end over real TLS, with a signed-webhook receiver
//! and a FHIR upstream on loopback ports:
//! - one token reading 150 distinct patients fires `exfiltration` exactly once: the identity
//!   is blocked from its next request on (nothing more of it reaches the upstream), other
//!   users are served, the block is listed, and the webhook event and the audit record
//!   carry a valid HMAC signature / the numbers and never a patient id;
//! - 20 invalid tokens from one address fire `probing` and block the address before
//!   authentication: afterwards a valid token, or none, gets 403 `blocked`;
//! - the operator API on the admin listener answers nothing without an operator token
//!   (401 `operator_auth_required`, 403 `operator_denied`), adds, lists (with the operator's
//!   name) and removes blocks that take effect on the next request, refuses malformed ones
//!   with 400 `invalid_block`; a `sub` block without an issuer matches every issuer, one
//!   with an issuer only that one;
//! - blocks survive a restart (same blocks file, new gateway);
//! - `ward block` / `ward blocks` / `ward unblock` drive the same API and fail loudly;
//! - two gateways sharing one real `redis-server` refuse a block added on the other on
//!   the very next request;
//! - break-glass: refused without the entitlement or without a reason, never a way around
//!   authentication, and when used: served, counted, audited with its reason, and announced
//!   by a signed webhook event that carries neither the reason nor a patient id.
//! - across replicas sharing one `redis-server` (requests round-robin, so no replica alone
//!   crosses a threshold but the sum does): exfiltration, probing, a DLP signal with its
//!   throttle, a volume burst and the break-glass daily limit each fire once in the cluster
//!   and their block / throttle / limit holds on every replica; the shared keys are hashed
//!   and expiring; with the `redis-server` killed, each replica counts alone and keeps
//!   serving (the documented fail-open fallback), and counts in Redis again once it is back.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

const ISS: &str = "https://idp.test";
const OTHER_ISS: &str = "https://other.test";
const OPERATOR: &str = "oncall-ana";
const OPERATOR_TOKEN: &str = "op-token-5b0e7c1d9a4f4e2b8c3d6a1f0e9b7c2d";
/// The HMAC secret of the webhook (>= 32 bytes; written without a trailing newline).
const WEBHOOK_SECRET: &str = "whsec-0f1e2d3c4b5a69788796a5b4c3d2e1f0-ward-test";

const EXFIL_150: &str =
    "    exfiltration:\n      distinct_patients: 150\n      window_secs: 3600\n";
const EXFIL_BLOCK: &str = "    exfiltration:\n      action: block\n      duration_secs: 3600\n";
const PROBING_20: &str = "    probing:\n      denials: 20\n      window_secs: 300\n";
const PROBING_BLOCK: &str = "    probing:\n      action: block\n      duration_secs: 900\n";

// ------------------------------------------------------------------ shared set-up

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .unwrap_or_else(|| panic!("not hex: {s}"))
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

/// An ES256 access token from `iss` (audience `ehr`, valid for ten minutes).
fn mint(key: &KeyPair, iss: &str, sub: &str, scope: &str, patient: Option<&str>) -> String {
    let now = now_secs();
    let mut c =
        json!({"iss": iss, "aud": "ehr", "sub": sub, "iat": now, "exp": now + 600, "scope": scope});
    if let Some(p) = patient {
        c["patient"] = p.into();
    }
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

/// A FHIR upstream that records every request and answers `Patient/<id>` with that
/// Patient (anything else with an empty searchset).
async fn ehr_handler(state: Arc<UpstreamState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: pq,
        headers: parts.headers,
        body: bytes,
        complete: true,
    });
    let v = match parts.uri.path().strip_prefix("/fhir/Patient/") {
        Some(id) if !id.is_empty() && !id.contains('/') => {
            json!({"resourceType": "Patient", "id": id, "active": true})
        }
        _ => json!({"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}),
    };
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut()
        .insert("content-type", "application/fhir+json".parse().unwrap());
    r
}

/// The webhook receiver: records (headers, body) of each POST to `/hook`, answers 200.
#[derive(Default)]
struct Hook {
    got: Mutex<Vec<(http::HeaderMap, Bytes)>>,
}

async fn hook_handler(state: Arc<Hook>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.method == http::Method::POST && parts.uri.path() == "/hook" {
        state.got.lock().unwrap().push((parts.headers, bytes));
    }
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// Checks `X-Ward-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Ward-Timestamp>." + body)>`
/// over the bytes as received; panics if it does not verify.
fn verify_signature(headers: &http::HeaderMap, body: &[u8]) {
    use aws_lc_rs::hmac;
    let ts = headers
        .get("x-ward-timestamp")
        .expect("X-Ward-Timestamp header")
        .to_str()
        .unwrap();
    assert!(
        ts.parse::<u64>().is_ok(),
        "X-Ward-Timestamp is not unix seconds: {ts}"
    );
    let sig = headers
        .get("x-ward-signature")
        .expect("X-Ward-Signature header")
        .to_str()
        .unwrap();
    let sig_hex = sig
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature without `sha256=`: {sig}"));
    let key = hmac::Key::new(hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    assert_eq!(
        sig_hex,
        hex(hmac::sign(&key, &signed).as_ref()),
        "signature over `<timestamp>.<body>` does not match"
    );
    let tag = unhex(sig_hex);
    assert!(hmac::verify(&key, &signed, &tag).is_ok());
    // The check above is meaningful: one byte more and it fails.
    signed.push(b' ');
    assert!(hmac::verify(&key, &signed, &tag).is_err());
}

/// Every delivery so far, signature verified, as (body text, JSON).
fn deliveries(hook: &Hook) -> Vec<(String, Value)> {
    let got = hook.got.lock().unwrap().clone();
    got.into_iter()
        .map(|(h, b)| {
            verify_signature(&h, &b);
            let v: Value = serde_json::from_slice(&b)
                .unwrap_or_else(|_| panic!("webhook body is not JSON: {b:?}"));
            (String::from_utf8(b.to_vec()).unwrap(), v)
        })
        .collect()
}

/// The deliveries whose `event` is `event`, waiting (bounded) for the first one: webhook
/// delivery is asynchronous.
async fn wait_events(hook: &Hook, event: &str) -> Vec<(String, Value)> {
    for _ in 0..1000 {
        let found: Vec<_> = deliveries(hook)
            .into_iter()
            .filter(|(_, v)| v["event"] == event)
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no `{event}` webhook event arrived; got {:?}",
        deliveries(hook)
    );
}

/// The sum of the samples of `name` carrying all of `labels` (in any order).
fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, set) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let pairs: Vec<&str> = set.split(',').collect();
            let all = labels.iter().all(|(k, v)| {
                let want = format!("{k}=\"{v}\"");
                pairs.iter().any(|p| *p == want)
            });
            if n != name || !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

async fn metric(gw: &ward::Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = admin_get(gw, "/metrics").await;
    metric_in(&text, name, labels)
}

/// Wait (bounded) until a metric satisfies `ok` (gauges and delivery counters are updated
/// by other tasks); returns the last value read.
async fn wait_metric(
    gw: &ward::Gateway,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let mut v = metric(gw, name, labels).await;
    for _ in 0..500 {
        if ok(v) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        v = metric(gw, name, labels).await;
    }
    v
}

fn audit_records(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.path("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait (bounded) for an audit record matching `pred` (signal records are written when
/// the signal fires, on the gateway's audit writer).
async fn wait_audit(env: &Env, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        if let Some(r) = audit_records(env).into_iter().find(&pred) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no matching audit record in {:#?}", audit_records(env));
}

struct Setup {
    env: Env,
    /// Signs for `https://idp.test`.
    key: KeyPair,
    /// Signs for `https://other.test`.
    other: KeyPair,
    hook: Arc<Hook>,
    hook_addr: SocketAddr,
    up: SocketAddr,
    ehr: Arc<UpstreamState>,
}

/// Keys, the auth policy (two issuers), the operators file, the webhook secret, the
/// webhook receiver and the FHIR upstream.
async fn setup() -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write("keys/other.pub.pem", &other.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n    - name: other\n      issuer: https://other.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/other.pub.pem\n",
    );
    env.write("policies/audited.yaml", "audit: {}\n");
    env.write(
        "policies/guard.yaml",
        "fhir_authz:\n  break_glass:\n    scope: emergency-access\n",
    );
    env.write(
        "secrets/operators.txt",
        &format!(
            "# incident responders: <name> <sha256 hex of the token>\n{OPERATOR} {}\n",
            sha256_hex(OPERATOR_TOKEN.as_bytes())
        ),
    );
    env.write("secrets/operator.token", OPERATOR_TOKEN);
    env.write("secrets/wrong.token", "not-an-operator-token");
    env.write("secrets/webhook.key", WEBHOOK_SECRET);
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::create_dir_all(env.path("audit")).unwrap();
    let hook = Arc::new(Hook::default());
    let hook_addr = serve_http1(hook.clone(), hook_handler).await;
    let ehr = Arc::new(UpstreamState::default());
    let up = serve_http1(ehr.clone(), ehr_handler).await;
    Setup {
        env,
        key,
        other,
        hook,
        hook_addr,
        up,
        ehr,
    }
}

/// What varies between the tests' configs.
#[derive(Default, Clone, Copy)]
struct Opts<'a> {
    /// Policies of the `fhir` route (default `token`).
    policies: &'a str,
    /// Lines under `respond.signals` (4-space indented).
    signals: &'a str,
    /// Lines under `respond.actions` (4-space indented).
    actions: &'a str,
    /// Default `state/blocks.json`.
    blocks_file: &'a str,
    redis: Option<u16>,
    /// A top-level `audit:` writing `audit/audit.jsonl`.
    audit: bool,
}

impl Setup {
    fn yaml(&self, o: &Opts) -> String {
        let policies = if o.policies.is_empty() {
            "token"
        } else {
            o.policies
        };
        let blocks_file = if o.blocks_file.is_empty() {
            "state/blocks.json"
        } else {
            o.blocks_file
        };
        let actions = if o.actions.is_empty() {
            "  actions: {}\n".to_owned()
        } else {
            format!("  actions:\n{}", o.actions)
        };
        let redis = o
            .redis
            .map(|p| format!("  redis:\n    url: redis://127.0.0.1:{p}/0\n"))
            .unwrap_or_default();
        let audit = if o.audit {
            "audit:\n  path: audit/audit.jsonl\n  durability: fsync\n"
        } else {
            ""
        };
        let respond = format!(
            "respond:\n  blocks_file: {blocks_file}\n  operators:\n    tokens_file: secrets/operators.txt\n  signals:\n    max_keys: 100000\n{signals}{actions}  throttle_per_minute: 30\n  webhook:\n    url: http://{hook}/hook\n    secret_file: secrets/webhook.key\n    timeout_ms: 5000\n    retries: 5\n{redis}",
            signals = o.signals,
            hook = self.hook_addr,
        );
        basic_config(self.up, "", "")
            .replace(
                "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
                &format!(
                    "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [{policies}]\n"
                ),
            )
            .replace("admin:\n  bind:", &format!("{respond}{audit}admin:\n  bind:"))
    }

    async fn start(&self, o: &Opts<'_>) -> ward::Gateway {
        self.env.start(&self.yaml(o)).await
    }

    /// Requests the upstream saw for paths starting with `prefix`.
    fn upstream_saw(&self, prefix: &str) -> usize {
        self.ehr
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path_and_query.starts_with(prefix))
            .count()
    }
}

/// Load a config written to `file` (several gateways, several files: rewriting one file
/// would have the running gateway reload it).
fn load(env: &Env, file: &str, yaml: &str) -> ward::config::Config {
    let p = env.write(file, yaml);
    ward::config::load_with(&p, &|_| None).unwrap_or_else(|errs| panic!("config errors: {errs:#?}"))
}

/// GET `path` with a bearer token.
async fn call(c: &TestClient, gw: &ward::Gateway, path: &str, token: &str) -> Reply {
    call_with(c, gw, path, Some(token), &[]).await
}

/// GET `path` with an optional bearer token and extra headers.
async fn call_with(
    c: &TestClient,
    gw: &ward::Gateway,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::get(url(gw, path));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

#[track_caller]
fn assert_blocked(r: &Reply, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "blocked"),
        "{what}: {:?}",
        r.body
    );
}

// ------------------------------------------------------------------ operator API

/// One request to the admin listener; the body as JSON (or `{"raw": text}`).
async fn admin(
    gw: &ward::Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> (u16, Value) {
    let c: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin_addr()));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b.body(Full::new(body.unwrap_or_default())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("admin request did not hang")
        .expect("admin request succeeded at the transport level");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, v)
}

fn json_body(v: &Value) -> Option<Bytes> {
    Some(Bytes::from(v.to_string()))
}

async fn list_blocks(gw: &ward::Gateway) -> Vec<Value> {
    let (status, v) = admin(gw, "GET", "/blocks", Some(OPERATOR_TOKEN), None).await;
    assert_eq!(status, 200, "{v}");
    v["blocks"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no `blocks` array: {v}"))
}

/// POST a block as the operator; returns the `block` of the 201 answer.
async fn add_block(gw: &ward::Gateway, kind: &str, value: &str, reason: &str) -> Value {
    let body =
        json!({"target": {"kind": kind, "value": value}, "reason": reason, "ttl_secs": 3600});
    let (status, v) = admin(
        gw,
        "POST",
        "/blocks",
        Some(OPERATOR_TOKEN),
        json_body(&body),
    )
    .await;
    assert_eq!(status, 201, "{kind} {value}: {v}");
    v["block"].clone()
}

async fn remove_block(gw: &ward::Gateway, kind: &str, value: &str) -> bool {
    let body = json!({"target": {"kind": kind, "value": value}});
    let (status, v) = admin(
        gw,
        "DELETE",
        "/blocks",
        Some(OPERATOR_TOKEN),
        json_body(&body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["removed"]
        .as_bool()
        .unwrap_or_else(|| panic!("no boolean `removed`: {v}"))
}

fn find_block<'a>(blocks: &'a [Value], kind: &str, value: &str) -> Option<&'a Value> {
    blocks
        .iter()
        .find(|b| b["target"]["kind"] == kind && b["target"]["value"] == value)
}

/// `expires_at - created_at` of a block, in ms.
fn block_ttl_ms(b: &Value) -> u64 {
    let exp = b["expires_at"].as_u64().expect("expires_at (unix ms)");
    let created = b["created_at"].as_u64().expect("created_at (unix ms)");
    assert!(exp > created, "{b}");
    exp - created
}

/// `ward <subcommand> --admin <admin addr> --token-file <file> <rest…>`:
/// (success, stdout, stderr).
async fn ward_cli(
    gw: &ward::Gateway,
    token_file: &Path,
    subcommand: &str,
    rest: &[&str],
) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ward"))
            .arg(subcommand)
            .arg("--admin")
            .arg(gw.admin_addr().to_string())
            .arg("--token-file")
            .arg(token_file)
            .args(rest)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI finished")
    .expect("the CLI ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The blocks printed by `ward blocks` (`{"blocks": [...]}` or a bare array).
fn printed_blocks(stdout: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("`ward blocks` did not print JSON: {stdout}"));
    let list = if v.is_array() { &v } else { &v["blocks"] };
    list.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no block list in {v}"))
}

// ------------------------------------------------------------------ signals

#[tokio::test]
async fn reading_many_patients_fires_exfiltration_once_and_blocks_the_identity() {
    let s = setup().await;
    let gw = s
        .start(&Opts {
            signals: EXFIL_150,
            actions: EXFIL_BLOCK,
            audit: true,
            ..Opts::default()
        })
        .await;
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    let ids: Vec<String> = (0..200).map(|i| format!("pat{i:03}")).collect();
    let mut statuses = Vec::new();
    for id in &ids {
        let r = call(&c, &gw, &format!("/fhir/Patient/{id}"), &alice).await;
        if r.status != 200 {
            assert_blocked(&r, id);
        }
        statuses.push(r.status);
    }
    // The 150th distinct patient fires the signal; the block applies from the next read.
    let served = statuses.iter().take_while(|s| **s == 200).count();
    assert_eq!(served, 150, "{statuses:?}");
    assert!(
        statuses[served..].iter().all(|s| *s == 403),
        "served again after the block: {statuses:?}"
    );
    // Still blocked, even for a patient already read; the upstream saw nothing more.
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/pat000", &alice).await,
        "re-read",
    );
    assert_eq!(s.upstream_saw("/fhir/Patient/pat"), 150);
    // Another user is served.
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    let r = call(&c, &gw, "/fhir/Patient/bob-own", &bob).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.upstream_saw("/fhir/Patient/bob-own"), 1);

    let (_, m) = admin_get(&gw, "/metrics").await;
    assert_eq!(
        metric_in(
            &m,
            "ward_signals_total",
            &[("signal", "exfiltration"), ("action", "block")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_in(&m, "ward_signals_total", &[]),
        1.0,
        "one signal in all: {m}"
    );
    let refused = (statuses.len() - served + 1) as f64;
    assert_eq!(
        metric_in(&m, "ward_blocked_total", &[("kind", "sub")]),
        refused,
        "{m}"
    );
    // The automatic block, as operators see it: the identity, for duration_secs.
    let blocks = list_blocks(&gw).await;
    let b = find_block(&blocks, "sub", "https://idp.test|alice")
        .unwrap_or_else(|| panic!("no block for alice: {blocks:#?}"));
    assert!((3_599_000..=3_601_000).contains(&block_ttl_ms(b)), "{b}");
    assert_eq!(blocks.len(), 1, "only alice is blocked: {blocks:#?}");

    // One signed `signal` event naming the identity, never a patient.
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (text, ev) = &events[0];
    assert_eq!(ev["signal"], "exfiltration", "{text}");
    assert_eq!(ev["identity"], "sub:https://idp.test|alice", "{text}");
    assert_eq!(ev["value"], 150, "{text}");
    assert_eq!(ev["threshold"], 150, "{text}");
    assert_eq!(ev["action"], "block", "{text}");
    assert!(ev["until"].as_u64().is_some_and(|u| u > 0), "{text}");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "patient id {id} in {text}");
    }
    assert!(
        wait_metric(
            &gw,
            "ward_notifications_total",
            &[("sink", "webhook"), ("result", "sent")],
            |v| v >= 1.0
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &gw,
            "ward_notifications_total",
            &[("sink", "webhook"), ("result", "failed")]
        )
        .await,
        0.0
    );

    // And one audit record of kind `signal`, with the numbers and no patient id.
    let rec = wait_audit(&s.env, |r| r["kind"] == "signal").await;
    assert_eq!(rec["signal"], "exfiltration", "{rec}");
    assert_eq!(rec["identity"], "sub:https://idp.test|alice", "{rec}");
    assert_eq!(rec["value"], 150, "{rec}");
    assert_eq!(rec["threshold"], 150, "{rec}");
    assert_eq!(rec["action"], "block", "{rec}");
    let rec_text = rec.to_string();
    for id in &ids {
        assert!(!rec_text.contains(id.as_str()), "patient id {id} in {rec}");
    }
    assert_eq!(
        audit_records(&s.env)
            .iter()
            .filter(|r| r["kind"] == "signal")
            .count(),
        1
    );
}

#[tokio::test]
async fn probing_with_invalid_tokens_blocks_the_address_before_authentication() {
    let s = setup().await;
    let gw = s
        .start(&Opts {
            signals: PROBING_20,
            actions: PROBING_BLOCK,
            ..Opts::default()
        })
        .await;
    let c = client(&s.env.pki, false);
    // Tokens signed by a key the gateway does not trust.
    let attacker = KeyPair::generate().unwrap();
    for i in 0..20 {
        let forged = mint(&attacker, ISS, &format!("guess-{i}"), "user/*.read", None);
        let r = call(&c, &gw, &format!("/fhir/Patient/x{i}"), &forged).await;
        assert_eq!(r.status, 401, "attempt {i}: {:?}", r.body);
    }
    // The 20th denial fired `probing`: the address is blocked, whatever it presents.
    let valid = mint(&s.key, ISS, "alice", "user/*.read", None);
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &valid).await,
        "valid token from the blocked address",
    );
    // No token at all: still 403 `blocked`, not 401 — the address is checked first.
    assert_blocked(
        &call_with(&c, &gw, "/fhir/Patient/1", None, &[]).await,
        "no token from the blocked address",
    );
    assert_eq!(s.ehr.count(), 0, "nothing reached the upstream");

    let (_, m) = admin_get(&gw, "/metrics").await;
    assert_eq!(
        metric_in(
            &m,
            "ward_signals_total",
            &[("signal", "probing"), ("action", "block")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_in(&m, "ward_blocked_total", &[("kind", "ip")]),
        2.0,
        "{m}"
    );
    let blocks = list_blocks(&gw).await;
    let b = find_block(&blocks, "ip", "127.0.0.1")
        .unwrap_or_else(|| panic!("no block for 127.0.0.1: {blocks:#?}"));
    assert!((899_000..=901_000).contains(&block_ttl_ms(b)), "{b}");

    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (text, ev) = &events[0];
    assert_eq!(ev["signal"], "probing", "{text}");
    assert_eq!(ev["identity"], "ip:127.0.0.1", "{text}");
    assert_eq!(ev["value"], 20, "{text}");
    assert_eq!(ev["threshold"], 20, "{text}");
    assert_eq!(ev["action"], "block", "{text}");
}

// ------------------------------------------------------------------ operator blocks

#[tokio::test]
async fn the_operator_api_needs_an_operator_token_and_blocks_apply_at_once() {
    let s = setup().await;
    let gw = s.start(&Opts::default()).await;
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    let add = json!({"target": {"kind": "sub", "value": "alice"}, "reason": "stolen laptop", "ttl_secs": 3600});
    let del = json!({"target": {"kind": "sub", "value": "alice"}});

    // No token, a wrong one, or the stored hash instead of the token: never served.
    let hash = sha256_hex(OPERATOR_TOKEN.as_bytes());
    for (method, body) in [("GET", None), ("POST", Some(&add)), ("DELETE", Some(&del))] {
        let (st, v) = admin(&gw, method, "/blocks", None, body.and_then(json_body)).await;
        assert_eq!(st, 401, "{method}: {v}");
        assert_eq!(
            v["error"]["code"], "operator_auth_required",
            "{method}: {v}"
        );
        for wrong in ["not-an-operator", hash.as_str()] {
            let (st, v) = admin(
                &gw,
                method,
                "/blocks",
                Some(wrong),
                body.and_then(json_body),
            )
            .await;
            assert_eq!(st, 403, "{method} {wrong}: {v}");
            assert_eq!(v["error"]["code"], "operator_denied", "{method}: {v}");
        }
    }
    assert!(
        list_blocks(&gw).await.is_empty(),
        "a refused POST added a block"
    );
    assert_eq!(call(&c, &gw, "/fhir/Patient/a1", &alice).await.status, 200);

    // The operator blocks alice: her very next request is refused, bob is served.
    let (st, v) = admin(
        &gw,
        "POST",
        "/blocks",
        Some(OPERATOR_TOKEN),
        json_body(&add),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let b = &v["block"];
    assert_eq!(b["target"], json!({"kind": "sub", "value": "alice"}), "{v}");
    assert_eq!(b["reason"], "stolen laptop", "{v}");
    assert_eq!(b["created_by"], OPERATOR, "{v}");
    assert!(b["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert!((3_599_000..=3_601_000).contains(&block_ttl_ms(b)), "{v}");
    let seen = s.ehr.count();
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/a2", &alice).await,
        "alice after the block",
    );
    assert_eq!(
        s.ehr.count(),
        seen,
        "the blocked request reached the upstream"
    );
    assert_eq!(call(&c, &gw, "/fhir/Patient/b1", &bob).await.status, 200);
    let blocks = list_blocks(&gw).await;
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    let listed = find_block(&blocks, "sub", "alice").expect("alice listed");
    assert_eq!(listed["created_by"], OPERATOR);
    assert_eq!(listed["reason"], "stolen laptop");
    assert_eq!(listed["id"], b["id"]);
    assert_eq!(
        wait_metric(&gw, "ward_blocks_active", &[], |v| v == 1.0).await,
        1.0
    );
    assert_eq!(
        metric(&gw, "ward_blocked_total", &[("kind", "sub")]).await,
        1.0
    );

    // Malformed blocks: 400 `invalid_block`, nothing added.
    let bad = [
        json!({"target": {"kind": "planet", "value": "x"}, "reason": "r", "ttl_secs": 60}),
        json!({"target": {"kind": "cidr", "value": "10.0.0.0/33"}, "reason": "r", "ttl_secs": 60}),
        json!({"target": {"kind": "ip", "value": "999.1.1.1"}, "reason": "r", "ttl_secs": 60}),
        json!({"target": {"kind": "cert_sha256", "value": "abc"}, "reason": "r", "ttl_secs": 60}),
        json!({"reason": "no target", "ttl_secs": 60}),
    ];
    for body in &bad {
        let (st, v) = admin(
            &gw,
            "POST",
            "/blocks",
            Some(OPERATOR_TOKEN),
            json_body(body),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_block", "{body}: {v}");
    }
    let (st, v) = admin(
        &gw,
        "POST",
        "/blocks",
        Some(OPERATOR_TOKEN),
        Some(Bytes::from_static(b"{\"target\": ")),
    )
    .await;
    assert_eq!(st, 400, "truncated JSON: {v}");
    assert_eq!(v["error"]["code"], "invalid_block", "{v}");
    assert_eq!(list_blocks(&gw).await.len(), 1);

    // Removed: served again; removing it twice says so.
    assert!(remove_block(&gw, "sub", "alice").await);
    assert_eq!(call(&c, &gw, "/fhir/Patient/a3", &alice).await.status, 200);
    assert!(!remove_block(&gw, "sub", "alice").await);
    assert!(list_blocks(&gw).await.is_empty());
    assert_eq!(
        wait_metric(&gw, "ward_blocks_active", &[], |v| v == 0.0).await,
        0.0
    );
}

#[tokio::test]
async fn a_sub_block_without_an_issuer_matches_every_issuer_and_with_one_only_that_one() {
    let s = setup().await;
    let gw = s.start(&Opts::default()).await;
    let c = client(&s.env.pki, false);
    let idp_alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    let other_alice = mint(&s.other, OTHER_ISS, "alice", "user/*.read", None);
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    for t in [&idp_alice, &other_alice, &bob] {
        assert_eq!(call(&c, &gw, "/fhir/Patient/1", t).await.status, 200);
    }
    add_block(&gw, "sub", "alice", "shared account").await;
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &idp_alice).await,
        "alice at idp.test",
    );
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &other_alice).await,
        "alice at other.test",
    );
    assert_eq!(call(&c, &gw, "/fhir/Patient/1", &bob).await.status, 200);
    assert!(remove_block(&gw, "sub", "alice").await);
    add_block(&gw, "sub", "https://idp.test|alice", "idp.test account").await;
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &idp_alice).await,
        "alice at idp.test",
    );
    let r = call(&c, &gw, "/fhir/Patient/1", &other_alice).await;
    assert_eq!(r.status, 200, "another issuer's alice: {:?}", r.body);
}

/// "The API answers after it is on disk", under concurrency: operator blocks and unblocks
/// sent at once (generated: every mix of adds and removes) are each in the blocks file by
/// the time their answer arrives, and no later write brings back an older list (each
/// task re-reads the file after its answer; the final file holds exactly the live set).
#[tokio::test]
async fn concurrent_operator_blocks_are_on_disk_when_answered() {
    let s = setup().await;
    let cfg = s.env.config(&s.yaml(&Opts::default()));
    let gw = Arc::new(ward::Gateway::start(cfg).await.expect("gateway starts"));
    let file = s.env.path("state/blocks.json");
    let on_disk = |file: &std::path::Path| -> Vec<String> {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut subs: Vec<String> = v["blocks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["target"]["value"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        subs.sort();
        subs
    };
    // Removed later: blocked first, concurrently with the others.
    for i in 0..4 {
        add_block(&gw, "sub", &format!("gone-{i}"), "to be lifted").await;
    }
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (gw, file) = (gw.clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            if i % 6 == 5 {
                let sub = format!("gone-{}", i / 6);
                assert!(remove_block(&gw, "sub", &sub).await);
                assert!(!on_disk(&file).contains(&sub), "{sub} still on disk");
            } else {
                let sub = format!("user-{i}");
                add_block(&gw, "sub", &sub, "concurrent").await;
                assert!(
                    on_disk(&file).contains(&sub),
                    "{sub} not on disk when answered"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut want: Vec<String> = (0..24)
        .filter(|i| i % 6 != 5)
        .map(|i| format!("user-{i}"))
        .collect();
    want.sort();
    assert_eq!(on_disk(&file), want);
}

#[tokio::test]
async fn blocks_survive_a_restart() {
    let s = setup().await;
    let cfg = s.env.config(&s.yaml(&Opts::default()));
    let gw = ward::Gateway::start(cfg.clone())
        .await
        .expect("gateway starts");
    add_block(&gw, "sub", "alice", "stolen laptop").await;
    add_block(&gw, "cidr", "10.20.0.0/16", "scanner").await;
    gw.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(30), gw.drained())
        .await
        .expect("drain completes");
    // Persisted as JSON in the blocks file.
    let text = std::fs::read_to_string(s.env.path("state/blocks.json")).expect("blocks file");
    assert!(
        serde_json::from_str::<Value>(&text).is_ok(),
        "blocks file is not JSON: {text}"
    );
    assert!(text.contains("stolen laptop"), "{text}");

    let gw = ward::Gateway::start(cfg).await.expect("gateway restarts");
    let blocks = list_blocks(&gw).await;
    let alice_block = find_block(&blocks, "sub", "alice")
        .unwrap_or_else(|| panic!("alice's block was lost: {blocks:#?}"));
    assert_eq!(alice_block["created_by"], OPERATOR);
    assert_eq!(alice_block["reason"], "stolen laptop");
    assert!(
        find_block(&blocks, "cidr", "10.20.0.0/16").is_some(),
        "{blocks:#?}"
    );
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &alice).await,
        "alice after the restart",
    );
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    assert_eq!(call(&c, &gw, "/fhir/Patient/1", &bob).await.status, 200);
    assert_eq!(s.upstream_saw("/fhir/Patient/1"), 1, "only bob's request");
}

#[tokio::test]
async fn the_cli_blocks_lists_and_unblocks_through_the_admin_api() {
    let s = setup().await;
    let gw = s.start(&Opts::default()).await;
    let c = client(&s.env.pki, false);
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    let token = s.env.path("secrets/operator.token");
    let wrong = s.env.path("secrets/wrong.token");
    assert_eq!(call(&c, &gw, "/fhir/Patient/1", &bob).await.status, 200);

    let (ok, out, err) = ward_cli(
        &gw,
        &token,
        "block",
        &["--ip", "127.0.0.1", "--reason", "cli drill", "--ttl", "1h"],
    )
    .await;
    assert!(ok, "ward block failed: {out}{err}");
    assert_blocked(
        &call(&c, &gw, "/fhir/Patient/1", &bob).await,
        "after ward block --ip",
    );
    let (ok, out, err) = ward_cli(&gw, &token, "blocks", &[]).await;
    assert!(ok, "ward blocks failed: {out}{err}");
    let printed = printed_blocks(&out);
    let b = find_block(&printed, "ip", "127.0.0.1")
        .unwrap_or_else(|| panic!("ward blocks does not list the block: {out}"));
    assert_eq!(b["reason"], "cli drill", "{out}");
    assert_eq!(b["created_by"], OPERATOR, "{out}");
    assert!((3_599_000..=3_601_000).contains(&block_ttl_ms(b)), "{out}");

    // A wrong operator token: non-zero, a message, and nothing changed.
    let (ok, _, err) = ward_cli(&gw, &wrong, "unblock", &["--ip", "127.0.0.1"]).await;
    assert!(!ok, "unblock with a wrong token succeeded");
    assert!(!err.trim().is_empty(), "no message on stderr");
    let (ok, _, err) = ward_cli(&gw, &wrong, "blocks", &[]).await;
    assert!(
        !ok && !err.trim().is_empty(),
        "blocks with a wrong token: {err}"
    );
    // An invalid target: non-zero with a message.
    let (ok, _, err) = ward_cli(
        &gw,
        &token,
        "block",
        &["--cidr", "10.0.0.0/33", "--reason", "typo", "--ttl", "1h"],
    )
    .await;
    assert!(
        !ok && !err.trim().is_empty(),
        "invalid CIDR accepted: {err}"
    );
    assert_eq!(list_blocks(&gw).await.len(), 1);

    let (ok, out, err) = ward_cli(&gw, &token, "unblock", &["--ip", "127.0.0.1"]).await;
    assert!(ok, "ward unblock failed: {out}{err}");
    let (ok, out, err) = ward_cli(&gw, &token, "blocks", &[]).await;
    assert!(ok, "ward blocks failed: {out}{err}");
    assert!(
        find_block(&printed_blocks(&out), "ip", "127.0.0.1").is_none(),
        "{out}"
    );
    assert_eq!(call(&c, &gw, "/fhir/Patient/1", &bob).await.status, 200);
}

// ------------------------------------------------------------------ replicas (Redis)

/// A `redis-server` on a loopback port, stopped on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn redis_binary() -> String {
    for p in [
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ] {
        if Command::new(p).arg("--version").output().is_ok() {
            return p.to_owned();
        }
    }
    panic!("redis-server not found: install it (apt-get install redis-server); .ci/test does this");
}

impl Redis {
    async fn start() -> Redis {
        Redis::start_on(free_port().await).await
    }

    /// A fresh (empty) `redis-server` on `port`: a restart after an outage.
    async fn start_on(port: u16) -> Redis {
        let port_arg = port.to_string();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(redis_binary())
            .args(["--bind", "127.0.0.1", "--port", port_arg.as_str()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let mut r = Redis {
            port,
            child: Some(child),
            _dir: dir,
        };
        // Ready when it answers PING (bounded).
        for _ in 0..500 {
            if r.ping().await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.stop();
        panic!("redis-server did not answer PING on port {port}");
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_block_added_on_one_replica_is_refused_by_the_other_on_the_next_request() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    let port = redis.port;
    let replica = |file: &str, blocks: &str| {
        load(
            &s.env,
            file,
            &s.yaml(&Opts {
                blocks_file: blocks,
                redis: Some(port),
                ..Opts::default()
            }),
        )
    };
    let a = ward::Gateway::start(replica("a.yaml", "state/a-blocks.json"))
        .await
        .expect("replica A starts");
    let b = ward::Gateway::start(replica("b.yaml", "state/b-blocks.json"))
        .await
        .expect("replica B starts");
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    for gw in [&a, &b] {
        assert_eq!(call(&c, gw, "/fhir/Patient/1", &alice).await.status, 200);
    }
    let seen = s.ehr.count();

    // Added on A, refused by B on the very next request (no waiting), and by A.
    add_block(&a, "sub", "alice", "session hijack").await;
    assert_blocked(
        &call(&c, &b, "/fhir/Patient/1", &alice).await,
        "alice on replica B",
    );
    assert_blocked(
        &call(&c, &a, "/fhir/Patient/1", &alice).await,
        "alice on replica A",
    );
    assert_eq!(
        s.ehr.count(),
        seen,
        "a blocked request reached the upstream"
    );
    assert_eq!(call(&c, &b, "/fhir/Patient/1", &bob).await.status, 200);

    // The other way round, for an address: added on B, refused by A before auth.
    add_block(&b, "ip", "127.0.0.1", "compromised host").await;
    assert_blocked(
        &call(&c, &a, "/fhir/Patient/1", &bob).await,
        "bob from a blocked address on replica A",
    );
    assert_eq!(s.ehr.count(), seen + 1);
    redis.stop();
}

// ------------------------------------------------------------------ break-glass

#[tokio::test]
async fn break_glass_is_entitled_reasoned_audited_counted_and_announced() {
    const REASON: &str = "Unresponsive patient in ED, allergy history needed";
    let s = setup().await;
    let gw = s
        .start(&Opts {
            policies: "audited, token, guard",
            audit: true,
            ..Opts::default()
        })
        .await;
    let c = client(&s.env.pki, false);
    let plain = mint(
        &s.key,
        ISS,
        "dr-house",
        "launch/patient patient/*.read",
        Some("px-alpha"),
    );
    let entitled = mint(
        &s.key,
        ISS,
        "dr-grey",
        "launch/patient patient/*.read emergency-access",
        Some("px-alpha"),
    );
    // The guard works in front of this upstream: the own patient is served.
    let r = call(&c, &gw, "/fhir/Patient/px-alpha", &entitled).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The header without the entitlement.
    let r = call_with(
        &c,
        &gw,
        "/fhir/Patient/px-bravo",
        Some(plain.as_str()),
        &[("break-glass-reason", REASON)],
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "break_glass_not_permitted"),
        "{:?}",
        r.body
    );
    // The entitlement with no real reason.
    for empty in ["", "   "] {
        let r = call_with(
            &c,
            &gw,
            "/fhir/Patient/px-bravo",
            Some(entitled.as_str()),
            &[("break-glass-reason", empty)],
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "break_glass_reason_invalid"),
            "reason {empty:?}: {:?}",
            r.body
        );
    }
    // The entitlement without the header: the normal compartment refusal.
    let r = call(&c, &gw, "/fhir/Patient/px-bravo", &entitled).await;
    assert!(
        matches!(r.status, 403 | 404) && !r.code().starts_with("break_glass"),
        "{} {:?}",
        r.status,
        r.body
    );
    // Never a way around authentication.
    let r = call_with(
        &c,
        &gw,
        "/fhir/Patient/px-bravo",
        None,
        &[("break-glass-reason", REASON)],
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(s.upstream_saw("/fhir/Patient/px-bravo"), 0);
    assert_eq!(
        metric(&gw, "ward_break_glass_total", &[("route", "fhir")]).await,
        0.0
    );

    // Entitlement and reason: served.
    let r = call_with(
        &c,
        &gw,
        "/fhir/Patient/px-bravo",
        Some(entitled.as_str()),
        &[("break-glass-reason", REASON)],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["id"], "px-bravo");
    assert_eq!(s.upstream_saw("/fhir/Patient/px-bravo"), 1);
    assert_eq!(
        metric(&gw, "ward_break_glass_total", &[("route", "fhir")]).await,
        1.0
    );

    // Audited with the reason; no other record claims break-glass.
    let recs = audit_records(&s.env);
    let glass: Vec<&Value> = recs
        .iter()
        .filter(|r| r["break_glass"].as_bool() == Some(true))
        .collect();
    assert_eq!(glass.len(), 1, "{recs:#?}");
    assert_eq!(glass[0]["break_glass_reason"], REASON, "{}", glass[0]);
    assert_eq!(glass[0]["resource_type"], "Patient", "{}", glass[0]);
    assert_eq!(glass[0]["decision"], "allow", "{}", glass[0]);

    // Announced: signed, naming who and where, without the reason or the patient.
    let events = wait_events(&s.hook, "break_glass").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (text, ev) = &events[0];
    assert_eq!(ev["identity"], "sub:https://idp.test|dr-grey", "{text}");
    assert_eq!(ev["route"], "fhir", "{text}");
    assert_eq!(ev["resource_type"], "Patient", "{text}");
    assert!(!text.contains(REASON), "the reason leaked: {text}");
    assert!(
        !text.contains("px-bravo") && !text.contains("px-alpha"),
        "a patient id leaked: {text}"
    );
}

#[tokio::test]
async fn repeated_dlp_blocks_fire_the_dlp_signal_and_throttle_the_identity() {
    let s = setup().await;
    s.env.write(
        "policies/phi.yaml",
        "dlp:\n  detectors:\n    ssn: { action: block }\n",
    );
    let yaml = s
        .yaml(&Opts {
            policies: "token, phi",
            signals: "    dlp:\n      blocked: 2\n      window_secs: 3600\n",
            actions: "    dlp:\n      action: throttle\n      duration_secs: 600\n",
            ..Opts::default()
        })
        .replace("  throttle_per_minute: 30\n", "  throttle_per_minute: 1\n");
    let gw = s.env.start(&yaml).await;
    let c = client(&s.env.pki, false);
    let mallory = mint(&s.key, ISS, "mallory", "user/*.read", None);
    // The upstream answers with the id it was asked for: an SSN-shaped id comes back in
    // the body and DLP refuses the response whole.
    for _ in 0..2 {
        let r = call(&c, &gw, "/fhir/Patient/123-45-6789", &mallory).await;
        assert_eq!(r.status, 403, "{:?}", r.body);
        assert_eq!(r.code(), "dlp_blocked");
    }
    // Throttled: one request a minute, then 429 `throttled`.
    let first = call(&c, &gw, "/fhir/Patient/ok-1", &mallory).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let second = call(&c, &gw, "/fhir/Patient/ok-2", &mallory).await;
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(second.code(), "throttled");
    assert!(second.headers.contains_key("retry-after"));
    // Others are not throttled.
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    for i in 0..3 {
        let r = call(&c, &gw, &format!("/fhir/Patient/a{i}"), &alice).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let (_, m) = admin_get(&gw, "/metrics").await;
    assert_eq!(
        metric_in(
            &m,
            "ward_signals_total",
            &[("signal", "dlp"), ("action", "throttle")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_in(&m, "ward_blocked_total", &[("kind", "throttle")]),
        1.0,
        "{m}"
    );
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["signal"], "dlp");
    assert_eq!(events[0].1["identity"], "sub:https://idp.test|mallory");
    assert!(!events[0].0.contains("123-45-6789"));
}

#[tokio::test]
async fn a_blocked_address_is_not_served_on_mllp_listeners_either() {
    use tokio::io::AsyncWriteExt;
    let s = setup().await;
    let dead = dead_addr().await;
    let yaml = s.yaml(&Opts::default()).replacen(
        "respond:\n",
        &format!("mllp:\n  - name: hl7\n    bind: 127.0.0.1:0\n    plaintext: true\n    upstream:\n      address: {dead}\n      ack_timeout: 2s\nrespond:\n"),
        1,
    );
    let gw = s.env.start(&yaml).await;
    let msg = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240315083012||ADT^A01|BLK-1|P|2.5.1\rEVN|A01|20240315083000\rPID|1||1^^^H^MR||Doe^Jo||19700101|F\rPV1|1|I\r";
    let framed = [&b"\x0b"[..], msg, b"\x1c\x0d"].concat();
    // Before the block: an answer (AE: the receiver is down).
    let mut c = tokio::net::TcpStream::connect(gw.addr("hl7").unwrap())
        .await
        .unwrap();
    c.write_all(&framed).await.unwrap();
    let mut r = ward::hl7v2::mllp::FrameReader::new(c, 1 << 20);
    let ack = r
        .next(Duration::from_secs(30), Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an ACK before the block");
    assert_eq!(ward::hl7v2::parse_ack(&ack).unwrap().0.as_str(), "AE");
    add_block(&gw, "ip", "127.0.0.1", "compromised interface engine").await;
    // After it: the connection is closed without an answer.
    let mut c = tokio::net::TcpStream::connect(gw.addr("hl7").unwrap())
        .await
        .unwrap();
    let _ = c.write_all(&framed).await;
    let mut r = ward::hl7v2::mllp::FrameReader::new(c, 1 << 20);
    let next = r
        .next(Duration::from_secs(30), Duration::from_secs(30))
        .await;
    assert!(matches!(next, Ok(None) | Err(_)), "{next:?}");
    let (_, m) = admin_get(&gw, "/metrics").await;
    assert!(
        metric_in(&m, "ward_blocked_total", &[("kind", "ip")]) >= 1.0,
        "{m}"
    );
}

// ------------------------------------------------------------------ signals across replicas

/// `n` replicas sharing the one `redis-server`: each its own config file and blocks file,
/// the same upstream, webhook receiver and policies. `tweak` edits the YAML.
async fn replicas(
    s: &Setup,
    redis: &Redis,
    n: usize,
    o: Opts<'_>,
    tweak: impl Fn(String) -> String,
) -> Vec<ward::Gateway> {
    let mut out = Vec::new();
    for i in 0..n {
        let blocks = format!("state/r{i}-blocks.json");
        let yaml = tweak(s.yaml(&Opts {
            blocks_file: &blocks,
            redis: Some(redis.port),
            ..o
        }));
        let cfg = load(&s.env, &format!("r{i}.yaml"), &yaml);
        out.push(
            ward::Gateway::start(cfg)
                .await
                .unwrap_or_else(|e| panic!("replica {i} starts: {e:#}")),
        );
    }
    out
}

/// The sum of a metric over every replica.
async fn metric_sum(gws: &[ward::Gateway], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for gw in gws {
        sum += metric(gw, name, labels).await;
    }
    sum
}

/// Every key in Redis with its PTTL (-1: no expiry).
async fn redis_keys(redis: &Redis) -> Vec<(String, i64)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((k, ttl));
    }
    out
}

/// The counters the replicas share in Redis: hashed, and expiring (only the blocks hash,
/// pruned by the replicas' merge, lives without a TTL). `secrets` must appear in no key.
async fn assert_counters_hashed_and_expiring(redis: &Redis, secrets: &[&str]) {
    let keys = redis_keys(redis).await;
    let counters: Vec<&(String, i64)> = keys
        .iter()
        .filter(|(k, _)| k.starts_with("ward:respond:"))
        .collect();
    assert!(
        !counters.is_empty(),
        "no shared counters in redis: {keys:?}"
    );
    for (k, ttl) in &counters {
        assert!(*ttl > 0, "{k} does not expire ({ttl})");
        for s in secrets {
            assert!(!k.contains(s), "{s:?} in the redis key {k}");
        }
    }
    for (k, _) in &keys {
        assert!(
            k.starts_with("ward:respond:") || k == "ward:blocks",
            "unexpected redis key {k}"
        );
    }
}

#[tokio::test]
async fn exfiltration_spread_over_three_replicas_fires_once_and_blocks_on_every_replica() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            signals: "    exfiltration:\n      distinct_patients: 30\n      window_secs: 3600\n",
            actions: EXFIL_BLOCK,
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    // The same 10 patients read on every replica: 30 reads, 10 distinct patients in the
    // cluster (the sketches' union), far from 30.
    for gw in &gws {
        for p in 0..10 {
            let r = call(&c, gw, &format!("/fhir/Patient/same{p:02}"), &alice).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    }
    // Round-robin: replica i % 3 reads patient i. No replica alone reaches 30 patients
    // (10 + at most 8), the cluster does at about 20 more.
    let mut served = [0usize; 3];
    let mut first_refused = None;
    for i in 0..60usize {
        let gw = &gws[i % 3];
        let r = call(&c, gw, &format!("/fhir/Patient/spread{i:03}"), &alice).await;
        if r.status == 200 {
            assert!(first_refused.is_none(), "served after the block: {i}");
            served[i % 3] += 1;
        } else {
            assert_blocked(&r, &format!("patient {i}"));
            first_refused.get_or_insert(i);
        }
    }
    let total: usize = served.iter().sum();
    // Redis's HyperLogLog estimate is within a patient or two of 30 at this size.
    assert!((18..=22).contains(&total), "served {total} ({served:?})");
    assert!(
        served.iter().all(|n| *n <= 8),
        "a replica alone would have crossed: {served:?}"
    );
    // The block holds on every replica, for a patient already read too.
    for (i, gw) in gws.iter().enumerate() {
        assert_blocked(
            &call(&c, gw, "/fhir/Patient/spread000", &alice).await,
            &format!("alice on replica {i}"),
        );
    }
    assert_eq!(s.upstream_saw("/fhir/Patient/spread"), total);
    // Another identity is served everywhere.
    let bob = mint(&s.key, ISS, "bob", "user/*.read", None);
    for gw in &gws {
        assert_eq!(
            call(&c, gw, "/fhir/Patient/bob-own", &bob).await.status,
            200
        );
    }
    // Fired exactly once in the whole cluster: one metric increment, one event.
    assert_eq!(
        metric_sum(
            &gws,
            "ward_signals_total",
            &[("signal", "exfiltration"), ("action", "block")]
        )
        .await,
        1.0
    );
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (text, ev) = &events[0];
    assert_eq!(ev["signal"], "exfiltration", "{text}");
    assert_eq!(ev["identity"], "sub:https://idp.test|alice", "{text}");
    assert_eq!(ev["threshold"], 30, "{text}");
    assert!(ev["value"].as_u64().is_some_and(|v| v >= 30), "{text}");
    assert!(!text.contains("spread0"), "a patient id leaked: {text}");
    assert_eq!(
        metric_sum(&gws, "ward_respond_redis_fallback_total", &[]).await,
        0.0
    );
    assert_counters_hashed_and_expiring(&redis, &["alice", "spread", "same", "idp.test"]).await;
    redis.stop();
}

#[tokio::test]
async fn probing_spread_over_three_replicas_blocks_the_address_on_every_replica() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            signals: PROBING_20,
            actions: PROBING_BLOCK,
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    let attacker = KeyPair::generate().unwrap();
    // 20 forged tokens, round-robin: under 7 denials per replica.
    for i in 0..20 {
        let forged = mint(&attacker, ISS, &format!("guess-{i}"), "user/*.read", None);
        let r = call(&c, &gws[i % 3], &format!("/fhir/Patient/x{i}"), &forged).await;
        assert_eq!(r.status, 401, "attempt {i}: {:?}", r.body);
    }
    // The 20th denial in the cluster fired: every replica refuses the address, before
    // authentication, whatever it presents.
    let valid = mint(&s.key, ISS, "alice", "user/*.read", None);
    for (i, gw) in gws.iter().enumerate() {
        assert_blocked(
            &call(&c, gw, "/fhir/Patient/1", &valid).await,
            &format!("valid token on replica {i}"),
        );
        assert_blocked(
            &call_with(&c, gw, "/fhir/Patient/1", None, &[]).await,
            &format!("no token on replica {i}"),
        );
    }
    assert_eq!(s.ehr.count(), 0, "nothing reached the upstream");
    assert_eq!(
        metric_sum(
            &gws,
            "ward_signals_total",
            &[("signal", "probing"), ("action", "block")]
        )
        .await,
        1.0
    );
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["identity"], "ip:127.0.0.1");
    assert_eq!(events[0].1["value"], 20);
    assert_counters_hashed_and_expiring(&redis, &["127.0.0.1"]).await;
    redis.stop();
}

#[tokio::test]
async fn dlp_blocks_spread_over_three_replicas_throttle_the_identity_on_every_replica() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    s.env.write(
        "policies/phi.yaml",
        "dlp:\n  detectors:\n    ssn: { action: block }\n",
    );
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            policies: "token, phi",
            signals: "    dlp:\n      blocked: 3\n      window_secs: 3600\n",
            actions: "    dlp:\n      action: throttle\n      duration_secs: 600\n",
            ..Opts::default()
        },
        |y| y.replace("  throttle_per_minute: 30\n", "  throttle_per_minute: 2\n"),
    )
    .await;
    let c = client(&s.env.pki, false);
    let mallory = mint(&s.key, ISS, "mallory", "user/*.read", None);
    // One DLP block on each replica: 3 in the cluster, 1 per replica.
    for (i, gw) in gws.iter().enumerate() {
        let r = call(&c, gw, "/fhir/Patient/123-45-6789", &mallory).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "dlp_blocked"),
            "replica {i}: {:?}",
            r.body
        );
    }
    // Throttled to 2 a minute in the whole cluster: two served, then 429 everywhere.
    let mut statuses = Vec::new();
    for i in 0..9usize {
        let r = call(&c, &gws[i % 3], &format!("/fhir/Patient/ok-{i}"), &mallory).await;
        if r.status != 200 {
            assert_eq!(
                (r.status, r.code().as_str()),
                (429, "throttled"),
                "{:?}",
                r.body
            );
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429, 429, 429, 429, 429, 429, 429],
        "cluster-wide allowance of 2"
    );
    assert_eq!(s.upstream_saw("/fhir/Patient/ok-"), 2);
    // Others are not throttled, on any replica.
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    for (i, gw) in gws.iter().enumerate() {
        for j in 0..3 {
            let r = call(&c, gw, &format!("/fhir/Patient/a{i}-{j}"), &alice).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    }
    assert_eq!(
        metric_sum(
            &gws,
            "ward_signals_total",
            &[("signal", "dlp"), ("action", "throttle")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_sum(&gws, "ward_blocked_total", &[("kind", "throttle")]).await,
        7.0
    );
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["signal"], "dlp");
    assert_eq!(events[0].1["identity"], "sub:https://idp.test|mallory");
    assert_eq!(events[0].1["value"], 3);
    assert!(!events[0].0.contains("123-45-6789"));
    assert_counters_hashed_and_expiring(&redis, &["mallory", "123-45-6789"]).await;
    redis.stop();
}

#[tokio::test]
async fn the_break_glass_daily_limit_holds_across_replicas() {
    const REASON: &str = "Unresponsive patient in ED, allergy history needed";
    let mut redis = Redis::start().await;
    let s = setup().await;
    s.env.write(
        "policies/guard.yaml",
        "fhir_authz:\n  break_glass:\n    scope: emergency-access\n    max_per_day: 2\n",
    );
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            policies: "token, guard",
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    let grey = mint(
        &s.key,
        ISS,
        "dr-grey",
        "launch/patient patient/*.read emergency-access",
        Some("px-alpha"),
    );
    let yang = mint(
        &s.key,
        ISS,
        "dr-yang",
        "launch/patient patient/*.read emergency-access",
        Some("px-alpha"),
    );
    let glass = |gw, token, id: &str| {
        let path = format!("/fhir/Patient/{id}");
        let c = &c;
        async move { call_with(c, gw, &path, Some(token), &[("break-glass-reason", REASON)]).await }
    };
    // Two uses a day in the cluster: one on replica 0, one on replica 1, then refused on
    // every replica (each replica alone has used at most one).
    let mut statuses = Vec::new();
    for (i, gw) in gws.iter().chain(gws.iter()).enumerate() {
        let r = glass(gw, grey.as_str(), &format!("px-b{i}")).await;
        if r.status != 200 {
            assert_eq!(
                (r.status, r.code().as_str()),
                (429, "break_glass_limit"),
                "{:?}",
                r.body
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429, 429]);
    assert_eq!(s.upstream_saw("/fhir/Patient/px-b"), 2);
    // The allowance is per identity: another doctor still has hers, on any replica.
    assert_eq!(glass(&gws[2], yang.as_str(), "px-c0").await.status, 200);
    assert_eq!(
        metric_sum(&gws, "ward_break_glass_total", &[("route", "fhir")]).await,
        3.0
    );
    assert_counters_hashed_and_expiring(&redis, &["dr-grey", "dr-yang", "px-"]).await;
    redis.stop();
}

#[tokio::test]
async fn with_redis_down_each_replica_counts_alone_and_keeps_serving() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    let gws = replicas(
        &s,
        &redis,
        2,
        Opts {
            signals: "    probing:\n      denials: 6\n      window_secs: 300\n",
            actions: PROBING_BLOCK,
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    let alice = mint(&s.key, ISS, "alice", "user/*.read", None);
    for gw in &gws {
        assert_eq!(call(&c, gw, "/fhir/Patient/1", &alice).await.status, 200);
    }
    redis.stop();
    // 10 denials in all, 5 per replica: over the threshold of 6 in the cluster, but no
    // replica alone reaches it, and the replicas cannot add up their counts now.
    let attacker = KeyPair::generate().unwrap();
    for i in 0..10 {
        let forged = mint(&attacker, ISS, &format!("guess-{i}"), "user/*.read", None);
        let r = call(&c, &gws[i % 2], &format!("/fhir/Patient/x{i}"), &forged).await;
        assert_eq!(r.status, 401, "attempt {i}: {:?}", r.body);
    }
    // Fail open: clinical traffic is served on both.
    for (i, gw) in gws.iter().enumerate() {
        let r = call(&c, gw, "/fhir/Patient/2", &alice).await;
        assert_eq!(r.status, 200, "replica {i}: {:?}", r.body);
    }
    assert_eq!(
        metric_sum(&gws, "ward_signals_total", &[("signal", "probing")]).await,
        0.0
    );
    // The local fallback still counts: the 6th denial on replica 0 fires there.
    let forged = mint(&attacker, ISS, "guess-last", "user/*.read", None);
    assert_eq!(
        call(&c, &gws[0], "/fhir/Patient/x", &forged).await.status,
        401
    );
    assert_blocked(
        &call(&c, &gws[0], "/fhir/Patient/3", &alice).await,
        "the address on replica 0",
    );
    assert_eq!(
        metric(
            &gws[0],
            "ward_signals_total",
            &[("signal", "probing"), ("action", "block")]
        )
        .await,
        1.0
    );
    // Replica 1 cannot learn the block while Redis is down: it serves.
    let r = call(&c, &gws[1], "/fhir/Patient/3", &alice).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for (i, gw) in gws.iter().enumerate() {
        assert!(
            metric(gw, "ward_respond_redis_fallback_total", &[]).await >= 1.0,
            "replica {i} counted no fallback"
        );
    }
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["value"], 6);

    // Redis back (empty, same address): the replicas reconnect by themselves and count in
    // it again once the backoff is over (polled, bounded).
    let redis = Redis::start_on(redis.port).await;
    let mut back = false;
    for _ in 0..500 {
        let before = metric(&gws[1], "ward_respond_redis_fallback_total", &[]).await;
        let r = call(&c, &gws[1], "/fhir/Patient/4", &alice).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if metric(&gws[1], "ward_respond_redis_fallback_total", &[]).await == before {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "replica 1 never counted in the restarted redis");
    let before = metric(&gws[1], "ward_respond_redis_fallback_total", &[]).await;
    for i in 0..3 {
        let forged = mint(&attacker, ISS, &format!("again-{i}"), "user/*.read", None);
        assert_eq!(
            call(&c, &gws[1], "/fhir/Patient/x", &forged).await.status,
            401
        );
    }
    assert_eq!(
        metric(&gws[1], "ward_respond_redis_fallback_total", &[]).await,
        before,
        "decided locally although redis answers"
    );
    assert!(redis_keys(&redis)
        .await
        .iter()
        .any(|(k, _)| k.starts_with("ward:respond:p:")));
}

/// Redis's clock, in whole seconds (`TIME`): the clock the shared windows use.
async fn redis_second(redis: &Redis) -> u64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, _micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    secs
}

/// Wait (bounded) until Redis's clock enters a new second; returns it.
async fn next_redis_second(redis: &Redis) -> u64 {
    let start = redis_second(redis).await;
    for _ in 0..1000 {
        let now = redis_second(redis).await;
        if now != start {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("redis's clock did not move");
}

#[tokio::test]
async fn a_volume_burst_spread_over_three_replicas_fires_once_and_blocks_on_every_replica() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            signals: "    volume:\n      factor: 1.0\n      min_requests: 5\n      interval_secs: 1\n      baseline_intervals: 1\n",
            actions: "    volume:\n      action: block\n      duration_secs: 600\n",
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    // One-second intervals: a burst must fall inside one of them. If a slow machine lets
    // it straddle two, try again with a fresh identity (bounded).
    for attempt in 0..5 {
        let who = format!("burst-{attempt}");
        let token = mint(&s.key, ISS, &who, "user/*.read", None);
        // The baseline: one request in one interval...
        next_redis_second(&redis).await;
        assert_eq!(
            call(&c, &gws[0], "/fhir/Patient/base", &token).await.status,
            200
        );
        // ...then 8 in the next, round-robin: at most 3 per replica, under the floor of
        // 5, but the 6th in the cluster is over both the floor and the baseline.
        let burst_second = next_redis_second(&redis).await;
        let mut statuses = Vec::new();
        for i in 0..8usize {
            let r = call(&c, &gws[i % 3], &format!("/fhir/Patient/v{i}"), &token).await;
            if r.status != 200 {
                assert_blocked(&r, &format!("burst request {i}"));
            }
            statuses.push(r.status);
        }
        let fired = metric_sum(&gws, "ward_signals_total", &[("signal", "volume")]).await;
        if fired == 0.0 {
            assert_ne!(
                redis_second(&redis).await,
                burst_second,
                "a burst inside one interval did not fire: {statuses:?}"
            );
            continue;
        }
        assert_eq!(fired, 1.0);
        assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 403, 403]);
        for (i, gw) in gws.iter().enumerate() {
            assert_blocked(
                &call(&c, gw, "/fhir/Patient/after", &token).await,
                &format!("{who} on replica {i}"),
            );
        }
        let events = wait_events(&s.hook, "signal").await;
        assert_eq!(events.len(), 1, "{events:?}");
        let ev = &events[0].1;
        assert_eq!(ev["signal"], "volume");
        assert_eq!(ev["identity"], format!("sub:https://idp.test|{who}"));
        assert_eq!(ev["value"], 6);
        assert_eq!(ev["threshold"], 5);
        assert_counters_hashed_and_expiring(&redis, &[who.as_str()]).await;
        redis.stop();
        return;
    }
    panic!("no burst fell inside one interval in 5 attempts");
}

/// Not a test: the cost of the shared counting against a local `redis-server`, for the
/// README. `cargo test --test respond -- --ignored --nocapture measure_`.
#[tokio::test]
#[ignore]
async fn measure_the_round_trips_of_shared_counting() {
    use ward::respond::shared::{Observation, Shared};
    use ward::respond::signals::{SignalKind, Signals, SignalsConfig};
    let mut redis = Redis::start().await;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let fallback =
        prometheus::IntCounterVec::new(prometheus::Opts::new("f", "f"), &["phase"]).unwrap();
    let shared = Shared::new(
        conn.clone(),
        "ward:respond",
        Duration::from_secs(5),
        fallback,
    );
    let cfg: SignalsConfig = serde_json::from_value(json!({
        "exfiltration": {"distinct_patients": 1000000, "window_secs": 3600},
        "probing": {"denials": 1000000, "window_secs": 300},
        "volume": {"factor": 20.0, "min_requests": 100, "interval_secs": 60, "baseline_intervals": 10}
    }))
    .unwrap();
    let signals = Signals::new(&cfg).unwrap();
    const N: u32 = 5000;
    let ids: Vec<String> = (0..50)
        .map(|i| format!("sub:https://idp.test|user{i}"))
        .collect();
    let fields = vec![
        "sub:user".to_owned(),
        "sub:https://idp.test|user".to_owned(),
    ];

    let mut c = conn.clone();
    let t = std::time::Instant::now();
    for _ in 0..N {
        let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    }
    let ping = t.elapsed() / N;

    let t = std::time::Instant::now();
    for i in 0..N {
        let id = &ids[i as usize % ids.len()];
        shared
            .on_request(
                "ward:blocks",
                &fields,
                Some(id),
                30,
                signals.volume_params(),
            )
            .await
            .unwrap();
    }
    let request = t.elapsed() / N;

    let t = std::time::Instant::now();
    for i in 0..N {
        let id = &ids[i as usize % ids.len()];
        let patient = format!("pat{i}");
        let obs = [Observation {
            kind: SignalKind::Exfiltration,
            key: id,
            item: Some(&patient),
            yields: true,
        }];
        shared.observe(&signals, &obs).await.unwrap();
    }
    let read = t.elapsed() / N;

    let t = std::time::Instant::now();
    for i in 0..N {
        let id = &ids[i as usize % ids.len()];
        let obs = [
            Observation {
                kind: SignalKind::Probing,
                key: "ip:192.0.2.7",
                item: None,
                yields: false,
            },
            Observation {
                kind: SignalKind::Probing,
                key: id,
                item: None,
                yields: false,
            },
        ];
        shared.observe(&signals, &obs).await.unwrap();
    }
    let denial = t.elapsed() / N;
    println!(
        "per call, {N} sequential calls: PING {ping:?}; after authentication (blocks + throttle + volume) {request:?}; patient read (HyperLogLog, 4 sub-windows) {read:?}; denial (two counters, 6 sub-windows) {denial:?}"
    );
    // Redis's own time per script call (the server side of the above).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    for l in info.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
        println!("{l}");
    }
    redis.stop();
}

#[tokio::test]
async fn off_hours_reads_spread_over_three_replicas_fire_once_and_block_on_every_replica() {
    let mut redis = Redis::start().await;
    let s = setup().await;
    // A window around "now" (UTC), so the test holds at any hour.
    let mins = (now_secs() / 60 % (24 * 60)) as i64;
    let hhmm = |m: i64| {
        let m = m.rem_euclid(24 * 60);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    let signals = format!(
        "    exfiltration:\n      distinct_patients: 100\n      window_secs: 3600\n    off_hours:\n      identities: [\"sub:https://idp.test|night*\"]\n      start: \"{}\"\n      end: \"{}\"\n      utc_offset: \"Z\"\n      distinct_patients: 6\n      window_secs: 3600\n",
        hhmm(mins - 120),
        hhmm(mins + 120)
    );
    let gws = replicas(
        &s,
        &redis,
        3,
        Opts {
            signals: &signals,
            actions: "    off_hours:\n      action: block\n      duration_secs: 600\n",
            ..Opts::default()
        },
        |y| y,
    )
    .await;
    let c = client(&s.env.pki, false);
    let owl = mint(&s.key, ISS, "night-owl", "user/*.read", None);
    let day = mint(&s.key, ISS, "day-shift", "user/*.read", None);
    // Both read 12 patients round-robin (at most 2 per replica before the 6th); only the
    // listed identity is held to the off-hours threshold.
    let mut owl_statuses = Vec::new();
    for i in 0..12usize {
        let gw = &gws[i % 3];
        let r = call(&c, gw, &format!("/fhir/Patient/n{i:02}"), &owl).await;
        if r.status != 200 {
            assert_blocked(&r, &format!("night-owl read {i}"));
        }
        owl_statuses.push(r.status);
        let r = call(&c, gw, &format!("/fhir/Patient/d{i:02}"), &day).await;
        assert_eq!(r.status, 200, "day-shift read {i}: {:?}", r.body);
    }
    let served = owl_statuses.iter().take_while(|s| **s == 200).count();
    assert_eq!(served, 6, "{owl_statuses:?}");
    assert!(owl_statuses[served..].iter().all(|s| *s == 403));
    for (i, gw) in gws.iter().enumerate() {
        assert_blocked(
            &call(&c, gw, "/fhir/Patient/n00", &owl).await,
            &format!("night-owl on replica {i}"),
        );
    }
    assert_eq!(
        metric_sum(&gws, "ward_signals_total", &[("signal", "off_hours")]).await,
        1.0
    );
    assert_eq!(
        metric_sum(&gws, "ward_signals_total", &[("signal", "exfiltration")]).await,
        0.0
    );
    let events = wait_events(&s.hook, "signal").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["signal"], "off_hours");
    assert_eq!(events[0].1["identity"], "sub:https://idp.test|night-owl");
    assert_eq!(events[0].1["value"], 6);
    assert_counters_hashed_and_expiring(&redis, &["night-owl", "day-shift"]).await;
    redis.stop();
}
