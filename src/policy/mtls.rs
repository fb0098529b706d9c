//! `mtls` policy: the route requires a verified client certificate, optionally from an
//! allow-list, and may forward the identity to the upstream in a gateway-set header.
//!
//! The chain, validity and revocation were checked by rustls during the handshake (the
//! listener's `client_auth`); this policy decides *which* verified clients a route admits.
//! Each configured list is a condition (all must hold); within a list any entry matches.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use serde::Deserialize;

use crate::context::UpstreamHeaders;
use crate::error::Rejection;
use crate::identity::ClientIdentity;
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::Body;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// Refuse requests without a client certificate (default true).
    #[serde(default = "yes")]
    pub require: bool,
    /// Subject common names.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// DNS SANs; `*.example.org` matches one label.
    #[serde(default)]
    pub dns_sans: Vec<String>,
    /// URI SANs (SPIFFE IDs included); an entry ending in `/*` matches that prefix.
    #[serde(default)]
    pub uri_sans: Vec<String>,
    #[serde(default)]
    pub email_sans: Vec<String>,
    /// Full issuer DN, e.g. `CN=Hospital Client CA, O=General Hospital`. Names are not
    /// proof of identity: when a listener trusts several CAs, one of them can issue under
    /// another's name; give each trust domain its own listener.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo, hex (colons allowed).
    #[serde(default)]
    pub spki_sha256: Vec<String>,
    /// Require the clientAuth EKU to be present (webpki accepts a certificate without any
    /// EKU extension).
    #[serde(default = "yes")]
    pub require_client_auth_eku: bool,
    /// Header that carries the verified identity to the upstream.
    #[serde(default)]
    pub forward_header: Option<String>,
    /// Which attribute `forward_header` carries (default `auto`: the CN, else the first
    /// SAN). Name the attribute the allow-list checks, so the upstream sees what was
    /// verified.
    #[serde(default)]
    pub forward_field: ForwardField,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForwardField {
    #[default]
    Auto,
    Cn,
    UriSan,
    DnsSan,
    EmailSan,
    SpkiSha256,
}

impl ForwardField {
    fn pick<'a>(&self, id: &'a ClientIdentity) -> Option<&'a str> {
        match self {
            ForwardField::Auto => Some(id.display_name()),
            ForwardField::Cn => id.subject_cn.as_deref(),
            ForwardField::UriSan => id.uri_sans.first().map(String::as_str),
            ForwardField::DnsSan => id.dns_sans.first().map(String::as_str),
            ForwardField::EmailSan => id.email_sans.first().map(String::as_str),
            ForwardField::SpkiSha256 => Some(&id.spki_sha256),
        }
    }
}

impl MtlsConfig {
    /// Problems for `ward check`, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for f in &self.spki_sha256 {
            if normalize_hex(f).is_none() {
                out.push(("spki_sha256", format!("`{f}` is not a SHA-256 in hex")));
            }
        }
        if let Some(h) = &self.forward_header {
            if let Err(m) = crate::proxy::headers::check_forward_header(h) {
                out.push(("forward_header", m));
            }
        }
        out
    }
}

fn normalize_hex(s: &str) -> Option<String> {
    let h: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

/// The compiled policy.
#[derive(Debug)]
pub struct Mtls {
    cfg: MtlsConfig,
    spki: Vec<String>,
    header: Option<HeaderName>,
}

impl FromConfig for Mtls {
    type Config = MtlsConfig;
    fn from_config(cfg: &MtlsConfig, _: &mut Build<'_>) -> Result<Self, String> {
        Mtls::compile(cfg)
    }
}

impl Mtls {
    fn compile(cfg: &MtlsConfig) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        Ok(Mtls {
            spki: cfg
                .spki_sha256
                .iter()
                .filter_map(|s| normalize_hex(s))
                .collect(),
            header: cfg
                .forward_header
                .as_ref()
                .and_then(|h| HeaderName::try_from(h.as_str()).ok()),
            cfg: cfg.clone(),
        })
    }
}

fn dns_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

fn uri_match(pattern: &str, uri: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => uri.starts_with(prefix),
        _ => pattern == uri,
    }
}

impl Mtls {
    fn admit(&self, id: &ClientIdentity) -> Result<(), Rejection> {
        let c = &self.cfg;
        if c.require_client_auth_eku && !id.client_auth_eku {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "client_cert_eku",
                "client certificate lacks the clientAuth extended key usage",
            ));
        }
        let any = |list: &[String], f: &dyn Fn(&str) -> bool| {
            list.is_empty() || list.iter().any(|p| f(p))
        };
        let ok = any(&c.subjects, &|p| id.subject_cn.as_deref() == Some(p))
            && any(&c.dns_sans, &|p| {
                id.dns_sans.iter().any(|n| dns_match(p, n))
            })
            && any(&c.uri_sans, &|p| {
                id.uri_sans.iter().any(|u| uri_match(p, u))
            })
            && any(&c.email_sans, &|p| {
                id.email_sans.iter().any(|e| e.eq_ignore_ascii_case(p))
            })
            && any(&c.issuers, &|p| id.issuer == p)
            && (self.spki.is_empty() || self.spki.contains(&id.spki_sha256));
        if ok {
            Ok(())
        } else {
            Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "client_cert_denied",
                "client certificate is not allowed on this route",
            ))
        }
    }
}

pub fn cert_required() -> Rejection {
    Rejection::new(
        StatusCode::UNAUTHORIZED,
        "client_cert_required",
        "a client certificate is required",
    )
}

impl Policy for Mtls {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let id = req.extensions().get::<Arc<ClientIdentity>>().cloned();
        let decision = match &id {
            None if self.cfg.require => Err(cert_required()),
            None => Ok(()),
            Some(id) => self.admit(id),
        };
        if let Err(rej) = decision {
            return Box::pin(std::future::ready(Err(rej)));
        }
        if let Some(name) = &self.header {
            let field = self.cfg.forward_field;
            let value = id
                .as_deref()
                .and_then(|i| field.pick(i))
                .and_then(|v| HeaderValue::from_str(v).ok());
            UpstreamHeaders::push(&mut req, name.clone(), value);
        }
        next.run(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ClientIdentity {
        ClientIdentity {
            subject_cn: Some("lab-system".into()),
            subject: "CN=lab-system".into(),
            issuer: "CN=Hospital CA".into(),
            issuer_cn: Some("Hospital CA".into()),
            dns_sans: vec!["lab.hospital.example".into()],
            uri_sans: vec!["spiffe://hospital.example/ns/lab/sa/analyzer".into()],
            email_sans: vec![],
            spki_sha256: "ab".repeat(32),
            x5t_s256: String::new(),
            cert_sha256: String::new(),
            client_auth_eku: true,
            serial: "01".into(),
            not_after: 0,
        }
    }

    fn cfg(yaml: &str) -> Mtls {
        let c: MtlsConfig = serde_saphyr::from_str(yaml).unwrap();
        Mtls::compile(&c).unwrap()
    }

    #[test]
    fn allow_lists() {
        assert!(cfg("subjects: [lab-system]").admit(&id()).is_ok());
        assert!(cfg("subjects: [other]").admit(&id()).is_err());
        assert!(cfg("dns_sans: ['*.hospital.example']").admit(&id()).is_ok());
        assert!(cfg("dns_sans: ['*.example']").admit(&id()).is_err());
        assert!(cfg("uri_sans: ['spiffe://hospital.example/ns/lab/*']")
            .admit(&id())
            .is_ok());
        assert!(cfg("uri_sans: ['spiffe://hospital.example/ns/er/*']")
            .admit(&id())
            .is_err());
        assert!(cfg("issuers: ['CN=Hospital CA']").admit(&id()).is_ok());
        // A CN alone is not an issuer identity.
        assert!(cfg("issuers: [Hospital CA]").admit(&id()).is_err());
        assert!(cfg(&format!("spki_sha256: ['{}']", "AB".repeat(32)))
            .admit(&id())
            .is_ok());
        assert!(cfg(&format!("spki_sha256: ['{}']", "cd".repeat(32)))
            .admit(&id())
            .is_err());
        // All lists must hold.
        assert!(cfg("subjects: [lab-system]\nissuers: [Other CA]")
            .admit(&id())
            .is_err());
        let mut no_eku = id();
        no_eku.client_auth_eku = false;
        assert_eq!(
            cfg("{}").admit(&no_eku).unwrap_err().code,
            "client_cert_eku"
        );
    }
}
