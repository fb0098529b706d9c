//! `ward demo`: demo certificates (made with rcgen, or reused), a built-in sample FHIR
//! upstream on loopback serving entirely fictitious records, and a gateway in front of it
//! that shows every capability: validation, mTLS, tokens, rate limits, the patient
//! compartment with break-glass, DLP, HL7 v2 over MLLP, a hash-chained audit trail, and
//! detect and respond with an operator token for the admin API. The walkthrough commands
//! live in `docs/tutorial.sh` ([`TUTORIAL`]), printed by the demo and run by a test.
//!
//! The same PKI helper makes the certificates the integration tests use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
#[cfg(feature = "demo")]
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;

use crate::Body;

/// PEM texts of a demo/test PKI: a CA, a server certificate for `localhost`/127.0.0.1 and
/// a client certificate (clientAuth).
pub struct Pki {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub const PKI_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

// Made with rcgen: only in builds with the `demo` feature.
#[cfg(feature = "demo")]
impl Pki {
    pub fn generate(server_names: &[&str]) -> Result<Pki, rcgen::Error> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Ward Demo CA (not for production)");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;

        let mut names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        if names.is_empty() {
            names.push("localhost".into());
        }
        let mut server = CertificateParams::new(names)?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "demo-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &issuer)?;

        Ok(Pki {
            ca_cert: issuer.pem(),
            ca_key: ca_key_pem,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        })
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let texts = [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ];
        for (name, text) in PKI_FILES.iter().zip(texts) {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            #[cfg(unix)]
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(())
    }
}

pub const DEMO_ISSUER: &str = "https://ward.demo/issuer";
pub const DEMO_AUDIENCE: &str = "ward-demo";

/// What `ward token` (and the tests) put in a token.
pub struct TokenSpec<'a> {
    pub iss: &'a str,
    pub aud: &'a str,
    pub sub: &'a str,
    pub scope: &'a str,
    pub patient: Option<&'a str>,
    pub ttl: std::time::Duration,
    pub kid: Option<&'a str>,
    pub cnf_x5t: Option<&'a str>,
}

/// Sign a token with a PEM private key. The algorithm defaults from the key type.
pub fn mint_token(pem: &[u8], alg: Option<&str>, spec: &TokenSpec<'_>) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::str::FromStr;
    let (key, default_alg) = if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        // The curve decides the algorithm: look for the secp384r1 OID (1.3.132.0.34).
        use rustls_pki_types::pem::PemObject;
        const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        let p384 = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
            .map(|d| d.secret_der().windows(P384.len()).any(|w| w == P384))
            .unwrap_or(false);
        (
            k,
            if p384 {
                Algorithm::ES384
            } else {
                Algorithm::ES256
            },
        )
    } else if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        (k, Algorithm::RS256)
    } else if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        (k, Algorithm::EdDSA)
    } else {
        return Err("the key is not a PEM private key (EC, RSA or Ed25519)".into());
    };
    let alg = match alg {
        Some(a) => Algorithm::from_str(a).map_err(|_| format!("unknown algorithm {a}"))?,
        None => default_alg,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "clock before 1970")?
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": spec.iss,
        "aud": spec.aud,
        "sub": spec.sub,
        "iat": now,
        "nbf": now,
        "exp": now + spec.ttl.as_secs(),
    });
    if !spec.scope.is_empty() {
        claims["scope"] = spec.scope.into();
    }
    if let Some(p) = spec.patient {
        claims["patient"] = p.into();
    }
    if let Some(x) = spec.cnf_x5t {
        claims["cnf"] = serde_json::json!({ "x5t#S256": x });
    }
    let mut header = Header::new(alg);
    header.kid = spec.kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}

/// Make the demo PKI in `dir` unless a complete one is already there.
#[cfg(feature = "demo")]
pub fn ensure_certs(dir: &Path) -> anyhow::Result<bool> {
    let mut made = false;
    if !PKI_FILES.iter().all(|f| dir.join(f).is_file()) {
        Pki::generate(&["localhost"])?.write(dir)?;
        made = true;
    }
    if !dir.join(TOKEN_KEY).is_file() || !dir.join(TOKEN_PUB).is_file() {
        write_token_keys(dir)?;
        made = true;
    }
    Ok(made)
}

/// The demo token issuer's signing key (EC P-256, PKCS#8) and its public key.
pub const TOKEN_KEY: &str = "token-signing.key";
pub const TOKEN_PUB: &str = "token-signing.pub.pem";

#[cfg(feature = "demo")]
pub fn write_token_keys(dir: &Path) -> std::io::Result<()> {
    let key = KeyPair::generate().map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(TOKEN_KEY), key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(TOKEN_KEY), std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(dir.join(TOKEN_PUB), key.public_key_pem())
}

/// The scope that entitles a demo token to break-glass on the patient route.
pub const BREAK_GLASS_SCOPE: &str = "emergency-access";

/// The demo operator's bearer token for the admin API (`ward blocks`, `ward unblock`), and
/// the operators file that lists only its SHA-256 (what the gateway keeps).
pub const OPERATOR_TOKEN: &str = "operator.token";
pub const OPERATORS_FILE: &str = "operators.txt";
/// The demo's hash-chained audit trail, under the demo directory.
pub const AUDIT_FILE: &str = "audit/audit.jsonl";

/// The audit trail's folder, the demo operator token (32 random bytes, hex) and the
/// operators file, unless they are there. The token file is private (0600): whoever can
/// read it can lift blocks. Returns whether a new token was made.
pub fn ensure_demo_state(dir: &Path) -> std::io::Result<bool> {
    if let Some(audit_dir) = dir.join(AUDIT_FILE).parent() {
        std::fs::create_dir_all(audit_dir)?;
    }
    let (tok, ops) = (dir.join(OPERATOR_TOKEN), dir.join(OPERATORS_FILE));
    if tok.is_file() && ops.is_file() {
        return Ok(false);
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| std::io::Error::other("no randomness"))?;
    let token = hex::encode(raw);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hash = hex::encode(digest);
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tok, format!("{token}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(
        &ops,
        format!("# Ward demo operators: <name> <sha256 hex of the token>\ndemo-operator {hash}\n"),
    )?;
    Ok(true)
}

/// The demo's own policy files (they name demo files, so they live with the demo
/// certificates, not in the repository's `policies/`).
pub fn write_demo_policies(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("baseline.yaml"),
        "description: Default request limits\nlimits:\n  max_body_bytes: 2097152\n  body_timeout: 30s\n",
    )?;
    std::fs::write(
        dir.join("demo-mtls.yaml"),
        "description: Only the demo client certificate\nmtls:\n  subjects: [demo-client]\n  forward_header: x-client-identity\n",
    )?;
    // Break-glass is entitled by a scope here (a demo token can carry it); a real deployment
    // names its IdP's role claim instead (policies/emergency-access.yaml).
    std::fs::write(
        dir.join("demo-patient.yaml"),
        format!("description: Patient compartment guard, with break-glass emergency access\nfhir_authz:\n  allowed_operations: [everything]\n  break_glass:\n    scope: {BREAK_GLASS_SCOPE}\n    max_per_day: 10\n"),
    )?;
    std::fs::write(
        dir.join("demo-audit.yaml"),
        "description: One hash-chained audit record per request (the trail is top-level `audit:`)\naudit: {}\n",
    )?;
    std::fs::write(
        dir.join("demo-validate.yaml"),
        "description: FHIR R4 validation, and Patients must have a name\nvalidate:\n  fhir:\n    required: [Patient.name]\n    max_bundle_entries: 100\n",
    )?;
    std::fs::write(
        dir.join("demo-dlp.yaml"),
        "description: HIPAA Safe Harbor de-identification of responses\ndlp:\n  preset: safe_harbor\n  detectors:\n    card: { action: mask, keep_last: 4 }\n",
    )?;
    std::fs::write(
        dir.join("demo-rate.yaml"),
        "description: A deliberately low per-user limit, to see a 429\nrate_limit:\n  limits:\n    - name: demo-per-user\n      key: token_sub\n      rate: 10\n      per: minute\n      burst: 5\n      cost:\n        search: 2\n",
    )?;
    std::fs::write(
        dir.join("demo-token.yaml"),
        format!(
            "description: Tokens from the demo issuer (ward token)\nauth:\n  providers:\n    - name: demo-issuer\n      issuer: {DEMO_ISSUER}\n      audiences: [{DEMO_AUDIENCE}]\n      algorithms: [ES256]\n      keys_file: {TOKEN_PUB}\n  forward_claims:\n    sub: x-user-sub\n  anonymous_discovery: true\n"
        ),
    )?;
    // SMART discovery on the patient route. The demo has no authorization server (`ward
    // token` mints tokens), so the endpoints are the issuer's fictitious ones.
    std::fs::write(
        dir.join("demo-discovery.yaml"),
        format!(
            "description: SMART discovery (.well-known/smart-configuration, metadata security)\ndiscovery:\n  issuer: {DEMO_ISSUER}\n  jwks_uri: {DEMO_ISSUER}/jwks\n  authorization_endpoint: {DEMO_ISSUER}/authorize\n  token_endpoint: {DEMO_ISSUER}/token\n  capabilities: [launch-standalone, client-public, context-standalone-patient, permission-patient, permission-v2]\n  grant_types_supported: [authorization_code]\n  code_challenge_methods_supported: [S256]\n  scopes_supported: [launch/patient, patient/*.rs]\n  response_types_supported: [code]\n"
        ),
    )
}

// Entirely fictitious records (names from no real person; identifiers in reserved ranges).
const PATIENTS: &[(&str, &str)] = &[
    (
        "example-1",
        r#"{"resourceType":"Patient","id":"example-1","meta":{"versionId":"1"},"name":[{"family":"Testperson","given":["Alba"]}],"gender":"female","birthDate":"1970-01-01"}"#,
    ),
    (
        "example-2",
        r#"{"resourceType":"Patient","id":"example-2","meta":{"versionId":"1"},"name":[{"family":"Sampleton","given":["Bo"]}],"gender":"male","birthDate":"1985-06-15"}"#,
    ),
    // PHI for the DLP demo: an SSN identifier, a phone number, and a note carrying an SSN,
    // a phone number and a (test) card number. 123-45-6789 and 4111 1111 1111 1111 are
    // well-known example values; 555-01xx numbers are reserved for fiction.
    (
        "example-3",
        r#"{"resourceType":"Patient","id":"example-3","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Cleo Fictive, SSN 123-45-6789</div>"},"extension":[{"url":"http://example.org/fhir/StructureDefinition/note","valueString":"Called from 555-234-0123 about card 4111 1111 1111 1111; SSN 123-45-6789 on file."}],"identifier":[{"system":"http://hl7.org/fhir/sid/us-ssn","value":"123-45-6789"}],"name":[{"family":"Fictive","given":["Cleo"]}],"telecom":[{"system":"phone","value":"555-234-0123","use":"mobile"}],"gender":"female","birthDate":"1931-07-04","address":[{"line":["1 Example Way"],"city":"Springfield","state":"MA","postalCode":"01103"}]}"#,
    ),
    // More fictitious patients, so that the exfiltration demo has someone to read.
    (
        "example-4",
        r#"{"resourceType":"Patient","id":"example-4","meta":{"versionId":"1"},"name":[{"family":"Madeupson","given":["Dara"]}],"gender":"other","birthDate":"1992-03-09"}"#,
    ),
    (
        "example-5",
        r#"{"resourceType":"Patient","id":"example-5","meta":{"versionId":"1"},"name":[{"family":"Placeholder","given":["Eli"]}],"gender":"unknown","birthDate":"2001-11-30"}"#,
    ),
];
const OBSERVATIONS: &[(&str, &str)] = &[
    (
        "obs-1",
        r#"{"resourceType":"Observation","id":"obs-1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/example-1"},"valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}"#,
    ),
    (
        "obs-2",
        r#"{"resourceType":"Observation","id":"obs-2","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8310-5","display":"Body temperature"}]},"subject":{"reference":"Patient/example-2"},"valueQuantity":{"value":36.8,"unit":"Cel","system":"http://unitsofmeasure.org","code":"Cel"}}"#,
    ),
];

/// What the sample EHR can do, as a FHIR client (SMART's `fhirclient`, `ward init`) asks it on
/// `/metadata`: a complete R4 CapabilityStatement (`date` is required), with the interactions
/// and search parameters the sample really answers.
pub const CAPABILITY_STATEMENT: &str = r#"{"resourceType":"CapabilityStatement","id":"sample-ehr","status":"active","date":"2026-01-01","publisher":"Ward demo (fictitious data)","kind":"instance","software":{"name":"Ward sample EHR","version":"1"},"implementation":{"description":"Ward's built-in sample FHIR server (fictitious records)"},"fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server","resource":[{"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"},{"code":"create"}],"searchParam":[{"name":"_id","type":"token"},{"name":"name","type":"string"},{"name":"birthdate","type":"date"}]},{"type":"Observation","interaction":[{"code":"read"},{"code":"search-type"},{"code":"create"}],"searchParam":[{"name":"_id","type":"token"},{"name":"patient","type":"reference"},{"name":"subject","type":"reference"},{"name":"code","type":"token"}]}],"operation":[{"name":"everything","definition":"http://hl7.org/fhir/OperationDefinition/Patient-everything"}]}]}"#;

fn fhir(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

fn bundle(entries: &[(&str, &str)]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|(_, r)| format!(r#"{{"resource":{r},"search":{{"mode":"match"}}}}"#))
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":{},"entry":[{}]}}"#,
        entries.len(),
        items.join(",")
    )
}

/// What the sample upstream was asked (`METHOD /path`), for tests that must show what
/// reached the EHR and what did not.
pub type SampleLog = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn sample(req: Request<Incoming>, log: Option<SampleLog>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(Ok(mut l)) = log.as_ref().map(|l| l.lock()) {
        l.push(format!("{method} {path}"));
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = || {
        fhir(StatusCode::NOT_FOUND, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#.into())
    };
    match (method, segs.as_slice()) {
        (Method::GET, ["fhir", "metadata"]) => fhir(StatusCode::OK, CAPABILITY_STATEMENT.into()),
        (Method::GET, ["fhir", "Patient"]) => fhir(StatusCode::OK, bundle(PATIENTS)),
        (Method::GET, ["fhir", "Observation"]) => fhir(StatusCode::OK, bundle(OBSERVATIONS)),
        (Method::GET, ["fhir", "Patient", id]) => match PATIENTS.iter().find(|(i, _)| i == id) {
            Some((_, r)) => fhir(StatusCode::OK, (*r).to_owned()),
            None => not_found(),
        },
        (Method::GET, ["fhir", "Observation", id]) => {
            match OBSERVATIONS.iter().find(|(i, _)| i == id) {
                Some((_, r)) => fhir(StatusCode::OK, (*r).to_owned()),
                None => not_found(),
            }
        }
        (Method::POST, ["fhir", _type]) => {
            // Echo the created resource back, as many FHIR servers do.
            match req.into_body().collect().await {
                Ok(b) => fhir(StatusCode::CREATED, String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                Err(_) => fhir(StatusCode::BAD_REQUEST, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}"#.into()),
            }
        }
        _ => not_found(),
    }
}

/// Start the sample upstream on `bind` (use port 0 for any).
pub async fn sample_upstream(bind: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_sample(bind, None).await
}

/// The sample upstream, also recording every request it is asked (see [`SampleLog`]).
pub async fn sample_upstream_logged(bind: SocketAddr) -> std::io::Result<(SocketAddr, SampleLog)> {
    let log = SampleLog::default();
    Ok((serve_sample(bind, Some(log.clone())).await?, log))
}

async fn serve_sample(bind: SocketAddr, log: Option<SampleLog>) -> std::io::Result<SocketAddr> {
    let tcp = TcpListener::bind(bind).await?;
    let addr = tcp.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(sample(req, log).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A sample MLLP receiving system on `bind`: acknowledges every message with AA (its own
/// ACK, built from the message's header), as an interface engine would.
pub async fn sample_mllp_upstream(bind: SocketAddr) -> std::io::Result<SocketAddr> {
    use crate::hl7v2::mllp::{write_frame, FrameReader};
    let tcp = TcpListener::bind(bind).await?;
    let addr = tcp.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut r = FrameReader::new(s, 1 << 20);
                let t = std::time::Duration::from_secs(300);
                while let Ok(Some(msg)) = r.next(t, t).await {
                    let h = crate::hl7v2::header(&msg).unwrap_or_default();
                    let ack = crate::hl7v2::build_ack(
                        &h,
                        crate::hl7v2::AckCode::Accept,
                        &[],
                        &crate::calendar::hl7_now(),
                        "SAMPLE-EHR",
                    );
                    if write_frame(r.get_mut(), &ack).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A fictitious ADT^A01 for the demo's MLLP listener.
pub const DEMO_ADT_A01: &str = "MSH|^~\\&|REGISTRATION|DEMO-HOSP|EHR|DEMO-HOSP|20240315083012||ADT^A01^ADT_A01|DEMO-0001|P|2.5.1\rEVN|A01|20240315083000\rPID|1||example-1^^^DEMO-HOSP^MR||Testperson^Alba||19700101|F\rPV1|1|I|WARD1^101^A\r";

/// Where the demo's own listeners bind.
#[derive(Clone, Copy, Debug)]
pub struct DemoBinds {
    pub public: SocketAddr,
    pub mllp: SocketAddr,
    pub admin: SocketAddr,
}

impl Default for DemoBinds {
    /// The fixed loopback ports the demo's printed commands and README use.
    fn default() -> Self {
        DemoBinds {
            public: ([127, 0, 0, 1], 8443).into(),
            mllp: ([127, 0, 0, 1], 2575).into(),
            admin: ([127, 0, 0, 1], 9901).into(),
        }
    }
}

/// The demo's config text (to be written into `certs`, next to `policies/` made by
/// [`write_demo_policies`]); it goes through the same loader as any operator's file.
/// Five routes onto the sample upstream, and an MLLP listener onto the sample receiver.
pub fn demo_config(certs: &Path, upstream: SocketAddr, mllp_upstream: SocketAddr) -> String {
    demo_config_on(certs, upstream, mllp_upstream, DemoBinds::default())
}

/// [`demo_config`] with the listeners on `binds` (tests use port 0).
///
/// The token and patient routes are audited, into a hash-chained trail in the demo
/// directory. `respond:` watches every route with a deliberately low exfiltration
/// threshold (3 distinct patients a minute per identity), so that a short loop shows a
/// block; the operator token for the admin API is made by [`ensure_operator_token`].
pub fn demo_config_on(
    certs: &Path,
    upstream: SocketAddr,
    mllp_upstream: SocketAddr,
    binds: DemoBinds,
) -> String {
    let c = |f: &str| certs.join(f).display().to_string();
    format!(
        r#"# Generated by `ward demo`.
policies_dir: policies
listeners:
  - name: public
    bind: {public}
    tls:
      certificates:
        - cert: {cert:?}
          key: {key:?}
          server_names: [localhost]
      client_auth:
        mode: optional
        ca: [{ca:?}]
upstreams:
  - name: sample-ehr
    url: http://{upstream}
    health:
      path: /fhir/metadata
routes:
  - name: fhir
    listener: public
    path_prefix: /fhir
    methods: [GET, POST]
    upstream: sample-ehr
    fhir: true
    policies: [baseline, demo-validate]
  - name: fhir-mtls
    listener: public
    path_prefix: /mtls/fhir
    methods: [GET]
    upstream: sample-ehr
    rewrite_prefix: /fhir
    fhir: true
    policies: [baseline, demo-mtls]
  - name: fhir-patient
    listener: public
    path_prefix: /patient/fhir
    methods: [GET]
    upstream: sample-ehr
    rewrite_prefix: /fhir
    fhir: true
    policies: [baseline, demo-audit, demo-token, demo-patient, demo-discovery]
  - name: fhir-deid
    listener: public
    path_prefix: /deid/fhir
    methods: [GET]
    upstream: sample-ehr
    rewrite_prefix: /fhir
    fhir: true
    policies: [baseline, demo-dlp]
  - name: fhir-token
    listener: public
    path_prefix: /secure/fhir
    methods: [GET, POST]
    upstream: sample-ehr
    rewrite_prefix: /fhir
    fhir: true
    policies: [baseline, demo-audit, demo-token, demo-rate]
mllp:
  - name: hl7
    bind: {mllp}
    tls:
      certificates:
        - cert: {cert:?}
          key: {key:?}
      client_auth:
        mode: required
        ca: [{ca:?}]
    senders:
      - subjects: [demo-client]
        sending_facilities: [DEMO-HOSP]
    validate:
      allowed_message_types: [ADT^A01, ADT^A04, ADT^A08, ORU^R01]
    upstream:
      address: {mllp_upstream}
# Every request on the audited routes, one hash-chained JSON line each; check it with
# `ward audit verify`. fsync: a record is on disk before its response leaves. Each FHIR
# record also carries its FHIR AuditEvent (IHE Basic Audit Log Patterns), the form an
# audit repository or SIEM takes (see `syslog` and `repository` in the README).
audit:
  path: {audit:?}
  durability: fsync
  audit_event:
    source_id: ward-demo
    site: Ward demo (fictitious hospital)
    in_file: true
# Detect and respond. The threshold is a demo's (real ones are in the hundreds): a token
# reading 3 distinct patients within a minute is blocked for 15 minutes. Operators list
# and lift blocks through the admin API with a token whose SHA-256 is in tokens_file.
respond:
  blocks_file: {blocks:?}
  operators:
    tokens_file: {ops:?}
  signals:
    exfiltration:
      distinct_patients: 3
      window_secs: 60
  actions:
    exfiltration:
      action: block
      duration_secs: 900
admin:
  bind: {admin}
shutdown_grace: 5s
"#,
        cert = c("server.pem"),
        key = c("server.key"),
        ca = c("ca.pem"),
        audit = c(AUDIT_FILE),
        blocks = c("blocks.json"),
        ops = c(OPERATORS_FILE),
        public = binds.public,
        mllp = binds.mllp,
        admin = binds.admin,
    )
}

/// The guided tutorial: the demo's walkthrough commands as one bash script, shared by
/// `ward demo` (which prints its sections), README.md and the test that runs it.
pub const TUTORIAL: &str = include_str!("../docs/tutorial.sh");

/// The lines of one `# --- <name>` section of [`TUTORIAL`], up to the next section.
pub fn tutorial_section(name: &str) -> Option<String> {
    let head = format!("# --- {name}");
    let mut lines = TUTORIAL.lines().skip_while(|l| l.trim_end() != head);
    lines.next()?;
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("# --- ")).collect();
    Some(body.join("\n").trim().to_owned())
}

/// Where the demo keeps its certificates: `certs-example/demo` under the current folder.
pub fn demo_dir() -> PathBuf {
    PathBuf::from("certs-example").join("demo")
}
