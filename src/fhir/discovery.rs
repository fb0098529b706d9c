//! SMART discovery for a FHIR route: `[base]/.well-known/smart-configuration` (SMART App
//! Launch 2.x) and the `security` section of the CapabilityStatement at `[base]/metadata`,
//! both describing the authorization server Ward enforces — never the upstream's own.
//!
//! The configuration document is served by Ward from this section (`smart_configuration:
//! config`, the default) or fetched from the upstream (`upstream`) with every URL under the
//! upstream's base pointed at the gateway and any other URL on the upstream's host removed.
//!
//! [`anonymous`] is the one place that says which requests may skip the token when the
//! `auth` policy's `anonymous_discovery` is on: GET or HEAD, no query, no `Authorization`,
//! and the canonical path exactly `[base]/metadata` or `[base]/.well-known/smart-configuration`.

use bytes::Bytes;
use http::{Method, Request};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::context::RouteId;
use crate::fhir::request::{FhirRequest, Interaction};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmartSource {
    /// Ward answers from this section.
    #[default]
    Config,
    /// Fetched from the upstream, its base URLs rewritten to the gateway.
    Upstream,
}

fn yes() -> bool {
    true
}

/// A policy file's `discovery` section. Field names and meanings follow SMART App Launch
/// 2.x "Metadata" (`.well-known/smart-configuration`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub smart_configuration: SmartSource,
    /// Required when `capabilities` has `sso-openid-connect`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required when `capabilities` has `sso-openid-connect`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Required when `capabilities` has `launch-ehr` or `launch-standalone`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub management_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    /// Defaults to `[S256]`; must include `S256` and never `plain`.
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub response_types_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Replace `CapabilityStatement.rest.security` on `metadata` answers (default on).
    #[serde(default = "yes")]
    pub capability_security: bool,
    /// `rest.security.cors` in that section: whether browsers may call the server. Ward
    /// itself answers no CORS preflight, so this is true only when something in front of
    /// it does (default false).
    #[serde(default)]
    pub cors: bool,
}

fn url_ok(u: &str) -> bool {
    crate::fhir::base_url::Base::parse(u).is_ok()
        && u.get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

impl DiscoveryConfig {
    fn endpoints(&self) -> [(&'static str, &Option<String>); 8] {
        [
            ("issuer", &self.issuer),
            ("jwks_uri", &self.jwks_uri),
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("registration_endpoint", &self.registration_endpoint),
            ("management_endpoint", &self.management_endpoint),
            ("introspection_endpoint", &self.introspection_endpoint),
            ("revocation_endpoint", &self.revocation_endpoint),
        ]
    }

    /// Problems for `ward check`, as (key below `discovery`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (k, v) in self.endpoints() {
            if v.as_deref().is_some_and(|u| !url_ok(u)) {
                out.push((
                    k,
                    "expected an https:// URL without query or credentials".into(),
                ));
            }
        }
        let has = |c: &str| self.capabilities.iter().any(|x| x == c);
        let config = self.smart_configuration == SmartSource::Config;
        if (config || self.capability_security) && self.token_endpoint.is_none() {
            out.push((
                "token_endpoint",
                "required (the SMART configuration and the CapabilityStatement's security name it)"
                    .into(),
            ));
        }
        if config {
            if self.capabilities.is_empty() {
                out.push(("capabilities", "list the SMART capabilities (e.g. launch-standalone, client-public, permission-v2)".into()));
            }
            if self.grant_types_supported.is_empty() {
                out.push((
                    "grant_types_supported",
                    "list at least one grant type (e.g. authorization_code)".into(),
                ));
            }
            if (has("launch-ehr") || has("launch-standalone"))
                && self.authorization_endpoint.is_none()
            {
                out.push((
                    "authorization_endpoint",
                    "required with launch-ehr or launch-standalone".into(),
                ));
            }
            if has("sso-openid-connect") {
                if self.issuer.is_none() {
                    out.push(("issuer", "required with sso-openid-connect".into()));
                }
                if self.jwks_uri.is_none() {
                    out.push(("jwks_uri", "required with sso-openid-connect".into()));
                }
            }
        }
        let m = &self.code_challenge_methods_supported;
        if !m.is_empty() && !m.iter().any(|x| x == "S256") {
            out.push((
                "code_challenge_methods_supported",
                "must include S256".into(),
            ));
        }
        if m.iter().any(|x| x.eq_ignore_ascii_case("plain")) {
            out.push((
                "code_challenge_methods_supported",
                "must not include plain".into(),
            ));
        }
        for (k, list) in [
            ("capabilities", &self.capabilities),
            ("grant_types_supported", &self.grant_types_supported),
            ("scopes_supported", &self.scopes_supported),
        ] {
            if list.iter().any(|x| crate::context::is_blank(x)) {
                out.push((k, "entries must not be blank".into()));
            }
        }
        out
    }

    /// The `.well-known/smart-configuration` document this section describes.
    pub fn document(&self) -> Bytes {
        let mut m = Map::new();
        for (k, v) in self.endpoints() {
            if let Some(u) = v {
                m.insert(k.into(), Value::from(u.as_str()));
            }
        }
        let methods = if self.code_challenge_methods_supported.is_empty() {
            vec!["S256".to_owned()]
        } else {
            self.code_challenge_methods_supported.clone()
        };
        for (k, list) in [
            ("capabilities", &self.capabilities),
            ("grant_types_supported", &self.grant_types_supported),
            ("code_challenge_methods_supported", &methods),
            ("scopes_supported", &self.scopes_supported),
            ("response_types_supported", &self.response_types_supported),
            (
                "token_endpoint_auth_methods_supported",
                &self.token_endpoint_auth_methods_supported,
            ),
            (
                "token_endpoint_auth_signing_alg_values_supported",
                &self.token_endpoint_auth_signing_alg_values_supported,
            ),
        ] {
            if !list.is_empty() {
                m.insert(k.into(), Value::from(list.clone()));
            }
        }
        Bytes::from(Value::Object(m).to_string())
    }

    /// `rest[].security` as SMART on FHIR describes it: the `oauth-uris` extension with this
    /// section's endpoints, the SMART-on-FHIR service coding, and `cors`.
    pub fn security(&self) -> Value {
        let mut uris = Vec::new();
        for (name, v) in [
            ("authorize", &self.authorization_endpoint),
            ("token", &self.token_endpoint),
            ("register", &self.registration_endpoint),
            ("manage", &self.management_endpoint),
            ("introspect", &self.introspection_endpoint),
            ("revoke", &self.revocation_endpoint),
        ] {
            if let Some(u) = v {
                uris.push(json!({"url": name, "valueUri": u}));
            }
        }
        json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }],
            "cors": self.cors,
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                    "display": "SMART-on-FHIR",
                }],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }],
        })
    }

    /// Put this section's `security` on every server `rest` entry of a CapabilityStatement
    /// (the upstream's own describes an authorization server clients do not talk to).
    /// Returns whether `v` was a CapabilityStatement.
    pub fn rewrite_capability(&self, v: &mut Value) -> bool {
        if !self.capability_security
            || v.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement")
        {
            return false;
        }
        let security = self.security();
        match v.get_mut("rest").and_then(Value::as_array_mut) {
            Some(rest) if !rest.is_empty() => {
                for r in rest {
                    if let Some(o) = r.as_object_mut() {
                        o.insert("security".into(), security.clone());
                    }
                }
            }
            _ => {
                v["rest"] = json!([{"mode": "server", "security": security}]);
            }
        }
        true
    }
}

/// The relative paths (under a FHIR route's base) that discovery answers, exactly.
pub const METADATA: &str = "metadata";
pub const SMART_CONFIGURATION: &str = ".well-known/smart-configuration";

/// May this request be let through without a token (when the route's `auth` policy has
/// `anonymous_discovery`)? Only GET/HEAD of exactly `[base]/metadata` or
/// `[base]/.well-known/smart-configuration` on a FHIR route, without a query string or an
/// `Authorization` header (a client that sends a token gets it checked). The path has been
/// canonicalised at the ingress (dot segments, encoded dots and slashes, `;` are refused
/// there); this compares the canonical path byte for byte, so case variants, trailing
/// slashes and extra segments are not exempt.
pub fn anonymous<B>(req: &Request<B>) -> bool {
    !req.headers().contains_key(http::header::AUTHORIZATION) && discovery_target(req)
}

/// GET/HEAD of exactly one of the two discovery paths, without a query string (the
/// `Authorization` header aside: `auth` may have set the upstream's credential since).
pub fn discovery_target<B>(req: &Request<B>) -> bool {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return false;
    }
    if req.uri().query().is_some() {
        return false;
    }
    let (Some(route), Some(f)) = (
        req.extensions().get::<RouteId>(),
        req.extensions().get::<std::sync::Arc<FhirRequest>>(),
    ) else {
        return false;
    };
    if !route.0.fhir {
        return false;
    }
    let rel = match f.interaction {
        Interaction::Capabilities => METADATA,
        Interaction::SmartConfiguration => SMART_CONFIGURATION,
        _ => return false,
    };
    let prefix = route.0.path_prefix.trim_end_matches('/');
    req.uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        == Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: serde_json::Value) -> DiscoveryConfig {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn problems_follow_smart_2() {
        let good = cfg(json!({
            "authorization_endpoint": "https://idp.example/authorize",
            "token_endpoint": "https://idp.example/token",
            "capabilities": ["launch-standalone", "client-public"],
            "grant_types_supported": ["authorization_code"],
        }));
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let doc: Value = serde_json::from_slice(&good.document()).unwrap();
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        for (bad, key) in [
            (
                json!({"capabilities": ["x"], "grant_types_supported": ["a"]}),
                "token_endpoint",
            ),
            (
                json!({"token_endpoint": "https://i/t", "capabilities": ["launch-ehr"], "grant_types_supported": ["a"]}),
                "authorization_endpoint",
            ),
            (
                json!({"token_endpoint": "https://i/t", "capabilities": ["sso-openid-connect"], "grant_types_supported": ["a"]}),
                "issuer",
            ),
            (
                json!({"token_endpoint": "https://i/t", "capabilities": ["x"], "grant_types_supported": ["a"], "code_challenge_methods_supported": ["plain", "S256"]}),
                "code_challenge_methods_supported",
            ),
            (
                json!({"token_endpoint": "http://i/t", "capabilities": ["x"], "grant_types_supported": ["a"]}),
                "token_endpoint",
            ),
            (
                json!({"token_endpoint": "https://i/t", "grant_types_supported": ["a"]}),
                "capabilities",
            ),
        ] {
            let c = cfg(bad.clone());
            assert!(
                c.problems().iter().any(|(k, _)| *k == key),
                "{bad}: {:?}",
                c.problems()
            );
        }
        let up = cfg(json!({"smart_configuration": "upstream", "capability_security": false}));
        assert!(up.problems().is_empty());
    }

    #[test]
    fn capability_security_replaced() {
        let c = cfg(json!({
            "authorization_endpoint": "https://idp.example/authorize",
            "token_endpoint": "https://idp.example/token",
            "capabilities": ["launch-standalone"],
            "grant_types_supported": ["authorization_code"],
        }));
        let mut v = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": {"service": [{"text": "upstream"}]}}]});
        assert!(c.rewrite_capability(&mut v));
        let sec = &v["rest"][0]["security"];
        assert_eq!(sec["cors"], false);
        assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let uris = &sec["extension"][0]["extension"];
        assert_eq!(
            uris[0],
            json!({"url": "authorize", "valueUri": "https://idp.example/authorize"})
        );
        assert_eq!(
            uris[1],
            json!({"url": "token", "valueUri": "https://idp.example/token"})
        );
        let mut not = json!({"resourceType": "Patient"});
        assert!(!c.rewrite_capability(&mut not));
    }
}
