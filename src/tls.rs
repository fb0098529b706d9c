//! rustls configurations: the hardened server side (TLS 1.2/1.3, ECDHE + AEAD only, ALPN,
//! SNI-selected certificates, no 0-RTT) and the upstream client side (private CA,
//! optional client certificate).
//!
//! rustls implements no CBC, RC4 or static-RSA suites at all; we still list the allowed
//! suites explicitly so that a future provider default cannot widen what we offer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls_pki_types::CertificateRevocationListDer;

use crate::config::primitives::{ClientAuthConfig, ClientAuthMode, TlsConfig};

/// The only suites Ward negotiates: forward-secret key exchange with AEAD ciphers.
pub fn provider() -> CryptoProvider {
    let base = aws_lc_rs::default_provider();
    use aws_lc_rs::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..base
    }
}

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        format!(
            "cannot read certificate file {}: {}",
            path.display(),
            short(&e)
        )
    })?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM in {}: {}", path.display(), short(&e)))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    // The error text never includes key material: pki-types reports kinds, not bytes.
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read private key {}: {}", path.display(), short(&e)))
}

fn short(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.kind().to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM section found".into(),
        _ => "malformed PEM".into(),
    }
}

pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))
}

/// Used by `ward check`: the pair must load and match.
pub fn check_cert_pair(cert: &Path, key: &Path) -> Result<(), String> {
    certified_key(cert, key).map(|_| ())
}

pub fn check_ca_bundle(path: &Path) -> Result<(), String> {
    root_store(path).map(|_| ())
}

pub fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Picks the certificate by SNI; the first configured certificate is the default (clients
/// that send no SNI, e.g. when connecting by IP address).
#[derive(Debug)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return Some(k.clone());
        }
        // One-level wildcard entries, written `*.example.org`.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.by_name.get(&format!("*.{parent}")) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

pub fn server_config(
    tls: &TlsConfig,
    resolve: &dyn Fn(&str) -> std::path::PathBuf,
) -> Result<ServerConfig, String> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for c in &tls.certificates {
        let ck = Arc::new(certified_key(&resolve(&c.cert), &resolve(&c.key))?);
        for n in &c.server_names {
            by_name.insert(n.to_ascii_lowercase(), ck.clone());
        }
        default.get_or_insert(ck);
    }
    let default = default.ok_or("no certificate configured")?;
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match tls.client_auth.mode {
        ClientAuthMode::None => builder.with_no_client_auth(),
        _ => builder.with_client_cert_verifier(client_verifier(&tls.client_auth, resolve)?),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    if tls.client_auth.mode != ClientAuthMode::None {
        // rustls does not re-run the client verifier on a resumed session, so a certificate
        // revoked by a newly loaded CRL could ride an old session. No resumption on
        // listeners that verify clients: no session cache, no tickets.
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No 0-RTT: early data is replayable, and a replayed POST to an EHR is a real harm.
    cfg.max_early_data_size = 0;
    cfg.ignore_client_order = true;
    Ok(cfg)
}

pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let iter = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CRL file {}: {}", path.display(), short(&e)))?;
    let crls: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM in {}: {}", path.display(), short(&e)))?;
    if crls.is_empty() {
        return Err(format!("no CRL found in {}", path.display()));
    }
    Ok(crls)
}

/// The client-certificate verifier of a listener: chain to one of the CAs, EKU clientAuth
/// when an EKU is present, and not revoked by any configured CRL (unknown revocation
/// status is refused: fail closed).
pub fn client_verifier(
    cfg: &ClientAuthConfig,
    resolve: &dyn Fn(&str) -> std::path::PathBuf,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for ca in &cfg.ca {
        let path = resolve(ca);
        for c in load_certs(&path)? {
            roots
                .add(c)
                .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
        }
    }
    let mut crls = Vec::new();
    for f in &cfg.crls {
        crls.extend(load_crls(&resolve(f))?);
    }
    // A CRL past its nextUpdate is refused rather than trusted forever: fail closed, and the
    // handshake failures (reason bad_certificate) make a stale CRL visible at once.
    let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
        .with_crls(crls)
        .enforce_revocation_expiration();
    if cfg.mode == ClientAuthMode::Optional {
        b = b.allow_unauthenticated();
    }
    b.build()
        .map_err(|e| format!("client certificate verifier: {e}"))
}

/// Client config for an https upstream.
pub fn upstream_client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = root_store(ca)?;
    let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("upstream client certificate unusable: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    // ALPN is left empty on purpose: hyper-rustls fills it from the enabled protocols (and
    // panics if it is preset).
    Ok(cfg)
}

/// A bounded label for a failed handshake, for `ward_tls_handshake_failures_total`.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        return match inner {
            E::PeerIncompatible(_) => "incompatible",
            E::InvalidCertificate(_) => "bad_certificate",
            E::NoCertificatesPresented => "no_client_certificate",
            E::InvalidCertRevocationList(_) => "bad_crl",
            E::AlertReceived(_) => "alert_received",
            E::InvalidMessage(_)
            | E::InappropriateHandshakeMessage { .. }
            | E::InappropriateMessage { .. } => "malformed",
            E::PeerMisbehaved(_) => "misbehaved",
            _ => "other",
        };
    }
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::InvalidData => "malformed",
        _ => "io",
    }
}
