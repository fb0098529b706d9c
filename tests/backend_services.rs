//! SMART Backend Services (client-credentials tokens with `system/` scopes) over real TLS:
//! such a token is authorized server-to-server on an ordinary FHIR route, and a route with
//! `fhir_authz.allowed_scope_levels: [system]` refuses every patient- or user-facing token
//! (`scope_level_denied`). Every token variant is run against every route.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{json, Value};

/// A small FHIR upstream: reads answer the resource (owned by Patient/p-1), searches a
/// Bundle of one such resource; records each path and query.
async fn fhir_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve_http1(
        seen.clone(),
        |seen, req: Request<hyper::body::Incoming>| async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push(pq);
            // /{route}/{Type}[/{id}]
            let mut segs = req.uri().path().split('/').skip(2);
            let rtype = segs.next().unwrap_or("").to_owned();
            let resource = |id: &str| {
                json!({"resourceType": rtype, "id": id, "status": "final", "code": {"text": "x"},
                       "subject": {"reference": "Patient/p-1"}})
            };
            let body = match segs.next() {
                Some(id) => resource(id),
                None => json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
                               "entry": [{"resource": resource("r1"), "search": {"mode": "match"}}]}),
            };
            let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
            r.headers_mut()
                .insert("content-type", "application/fhir+json".parse().unwrap());
            r
        },
    )
    .await;
    (addr, seen)
}

struct Setup {
    env: Env,
    gw: ward::Gateway,
    seen: Arc<Mutex<Vec<String>>>,
    key: KeyPair,
}

/// Routes: `/fhir` (scopes of every level), `/backend` (`[system]`), `/staff`
/// (`[user, system]`), all behind the same JWT provider.
async fn setup() -> Setup {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write("policies/smart.yaml", "fhir_authz: {}\n");
    env.write(
        "policies/backend.yaml",
        "fhir_authz:\n  allowed_scope_levels: [system]\n",
    );
    env.write(
        "policies/staff.yaml",
        "fhir_authz:\n  allowed_scope_levels: [user, system]\n",
    );
    let (up, seen) = fhir_upstream().await;
    let route = |name: &str| {
        format!("  - name: {name}\n    listener: public\n    path_prefix: /{name}\n    upstream: ehr\n    fhir: true\n    policies: [token, {name}]\n")
    };
    let cfg = basic_config(up, "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [token, smart]\n",
        )
        .replace(
            "admin:\n",
            &format!("{}{}admin:\n", route("backend"), route("staff")),
        );
    let gw = env.start(&cfg).await;
    Setup { env, gw, seen, key }
}

fn token(key: &KeyPair, extra: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({"iss": "https://idp.test", "aud": "ehr", "exp": now + 600, "iat": now});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

async fn get(s: &Setup, tok: &str, path: &str) -> Reply {
    let c = client(&s.env.pki, false);
    let req = Request::get(url(&s.gw, path))
        .header("authorization", format!("Bearer {tok}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&c, req).await
}

/// What a route answers a token: 200, or 403 with this code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Denied(&'static str),
}
use Want::*;

const LEVEL: Want = Denied("scope_level_denied");
const SCOPE: Want = Denied("insufficient_scope");

#[tokio::test]
async fn system_scopes_server_to_server_and_system_only_routes() {
    let s = setup().await;
    // A client-credentials token: `sub` is the client, no patient, no user.
    let cc =
        |scope: &str| json!({"sub": "backend-app", "client_id": "backend-app", "scope": scope});
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    // (what, claims, /fhir, /backend, /staff)
    let cases: Vec<(&str, Value, Want, Want, Want)> = vec![
        ("system v2", cc("system/Observation.rs"), Ok, Ok, Ok),
        ("system v1", cc("system/Observation.read"), Ok, Ok, Ok),
        ("system wildcard", cc("system/*.rs"), Ok, Ok, Ok),
        ("system v2 all", cc("system/*.cruds"), Ok, Ok, Ok),
        (
            "system + openid noise",
            cc("openid system/Observation.rs"),
            Ok,
            Ok,
            Ok,
        ),
        (
            "system, other type",
            cc("system/Condition.rs"),
            SCOPE,
            SCOPE,
            SCOPE,
        ),
        (
            "system, no search",
            cc("system/Observation.r"),
            SCOPE,
            SCOPE,
            SCOPE,
        ),
        ("no resource scope", cc("openid"), SCOPE, LEVEL, LEVEL),
        (
            "patient app",
            with(
                cc("launch/patient patient/Observation.rs"),
                "patient",
                json!("p-1"),
            ),
            Ok,
            LEVEL,
            LEVEL,
        ),
        (
            "patient scope, no context",
            cc("patient/Observation.rs"),
            Denied("patient_context_missing"),
            LEVEL,
            LEVEL,
        ),
        (
            "clinician",
            with(
                cc("openid fhirUser user/Observation.rs"),
                "fhirUser",
                json!("Practitioner/7"),
            ),
            Ok,
            LEVEL,
            Ok,
        ),
        ("user v1 wildcard", cc("user/*.read"), Ok, LEVEL, Ok),
        (
            "system + patient scopes",
            cc("system/Observation.rs patient/Observation.rs"),
            Ok,
            LEVEL,
            LEVEL,
        ),
        (
            "system + user scopes",
            cc("system/Observation.rs user/Observation.rs"),
            Ok,
            LEVEL,
            Ok,
        ),
        (
            "system scope, patient context",
            with(cc("system/Observation.rs"), "patient", json!("p-1")),
            Ok,
            LEVEL,
            LEVEL,
        ),
        (
            "system scope, signed-in user",
            with(
                cc("system/Observation.rs"),
                "fhirUser",
                json!("Practitioner/7"),
            ),
            Ok,
            LEVEL,
            Ok,
        ),
        (
            "system + unparsable patient scope",
            cc("system/Observation.rs patient/NotAType.rs"),
            Ok,
            LEVEL,
            LEVEL,
        ),
        (
            "system + unparsable user scope",
            cc("system/Observation.rs user/Observation.xyz"),
            Ok,
            LEVEL,
            Ok,
        ),
    ];
    for (what, claims, fhir, backend, staff) in &cases {
        let tok = token(&s.key, claims.clone());
        for (route, want) in [("fhir", fhir), ("backend", backend), ("staff", staff)] {
            let path = format!("/{route}/Observation?code=1234-5");
            let before = s.seen.lock().unwrap().len();
            let r = get(&s, &tok, &path).await;
            match want {
                Ok => {
                    assert_eq!(r.status, 200, "{what} on /{route}: {:?}", r.body);
                    assert_eq!(r.json()["resourceType"], "Bundle");
                    let seen = s.seen.lock().unwrap();
                    assert_eq!(seen.len(), before + 1, "{what} on /{route}");
                    let last = seen.last().unwrap();
                    assert!(
                        last.starts_with(&format!("/{route}/Observation?")),
                        "{what}: {last}"
                    );
                    // Patient-level access is confined; system and user access is not.
                    let confined = last.contains("p-1");
                    let patient_level = claims.get("patient").is_some();
                    assert_eq!(confined, patient_level, "{what} on /{route}: {last}");
                }
                Denied(code) => {
                    assert_eq!(r.status, 403, "{what} on /{route}: {:?}", r.body);
                    assert_eq!(r.code(), *code, "{what} on /{route}");
                    assert_eq!(
                        s.seen.lock().unwrap().len(),
                        before,
                        "{what} on /{route}: a refused request reached the upstream"
                    );
                }
            }
        }
    }
    // A system token reads by id and searches other types server-to-server.
    let tok = token(&s.key, cc("system/*.rs"));
    for path in [
        "/backend/Observation/o1",
        "/backend/Patient/p-9",
        "/backend/Encounter?date=ge2020",
    ] {
        let r = get(&s, &tok, path).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(s.seen.lock().unwrap().last().unwrap(), path);
    }
    // A system token without write scopes may not write there either.
    let c = client(&s.env.pki, false);
    let req = Request::post(url(&s.gw, "/backend/Observation"))
        .header("authorization", format!("Bearer {tok}"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
        )))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "insufficient_scope");
    let (_, metrics) = admin_get(&s.gw, "/metrics").await;
    assert!(metrics.contains("code=\"scope_level_denied\""));
}

#[test]
fn allowed_scope_levels_config_errors_have_file_and_line() {
    for (levels, needle) in [
        ("[]", "allowed_scope_levels: "),
        ("[system, system]", "allowed_scope_levels: "),
        ("[robot]", "`patient`"),
        ("system", "expected a sequence"),
    ] {
        let env = Env::new();
        env.write(
            "policies/backend.yaml",
            &format!("fhir_authz:\n  allowed_scope_levels: {levels}\n"),
        );
        let cfg = env.write(
            "ward.yaml",
            &basic_config(std::net::SocketAddr::from(([127, 0, 0, 1], 9)), "", ""),
        );
        let errs = config_errors(&cfg);
        let line = errs
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{levels}: no error with {needle}: {errs}"));
        let after = line
            .split_once("backend.yaml:")
            .map(|(_, r)| r)
            .unwrap_or_default();
        assert!(
            after.starts_with(|c: char| c.is_ascii_digit()),
            "{levels}: no file:line in {line}"
        );
    }
}
