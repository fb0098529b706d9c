//! The verified client certificate of a connection, as a typed request extension.
//!
//! Parsed once per connection (after rustls has verified the chain and revocation), so
//! policies only ever read fields: subject CN, SANs, issuer, SPKI fingerprint, the
//! certificate thumbprint RFC 8705 binds tokens to, and whether it carries clientAuth.

use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub subject_cn: Option<String>,
    pub subject: String,
    pub issuer: String,
    pub issuer_cn: Option<String>,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    pub email_sans: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
    /// SHA-256 of the whole DER certificate, base64url without padding (`x5t#S256`).
    pub x5t_s256: String,
    /// The same SHA-256, lower-case hex (how operators name a certificate in a block).
    pub cert_sha256: String,
    pub client_auth_eku: bool,
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ClientIdentity {
    /// Parse a leaf certificate. `None` only if the DER does not parse (rustls has already
    /// verified it, so that would be a parser disagreement: the caller fails closed).
    pub fn from_der(der: &[u8]) -> Option<ClientIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned)
        };
        let (mut dns, mut uri, mut email) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                match g {
                    x509_parser::extensions::GeneralName::DNSName(s) => dns.push(s.to_string()),
                    x509_parser::extensions::GeneralName::URI(s) => uri.push(s.to_string()),
                    x509_parser::extensions::GeneralName::RFC822Name(s) => {
                        email.push(s.to_string())
                    }
                    _ => {}
                }
            }
        }
        let client_auth_eku =
            matches!(cert.extended_key_usage(), Ok(Some(e)) if e.value.client_auth);
        Some(ClientIdentity {
            subject_cn: cn(cert.subject()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            issuer_cn: cn(cert.issuer()),
            dns_sans: dns,
            uri_sans: uri,
            email_sans: email,
            spki_sha256: hex::encode(sha256(cert.public_key().raw)),
            x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(der)),
            cert_sha256: hex::encode(sha256(der)),
            client_auth_eku,
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// A short, stable name for logs and metrics-free audit: the CN, else the first SAN.
    pub fn display_name(&self) -> &str {
        self.subject_cn
            .as_deref()
            .or(self.uri_sans.first().map(String::as_str))
            .or(self.dns_sans.first().map(String::as_str))
            .or(self.email_sans.first().map(String::as_str))
            .unwrap_or("-")
    }
}

/// Days until `not_after` (negative once expired), for the expiry gauges.
pub fn days_left(not_after: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (not_after - now).div_euclid(86_400)
}

/// `not_after` of a DER certificate.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_demo_client_certificate() {
        let pki = crate::demo::Pki::generate(&["localhost"]).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap();
        let id = ClientIdentity::from_der(&der).unwrap();
        assert_eq!(id.subject_cn.as_deref(), Some("demo-client"));
        assert!(id.client_auth_eku);
        assert_eq!(id.spki_sha256.len(), 64);
        assert_eq!(id.x5t_s256.len(), 43);
        assert!(days_left(id.not_after) > 0);
    }
}
