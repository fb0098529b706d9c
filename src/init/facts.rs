//! What `ward init` learns from documents it did not write: the EHR's CapabilityStatement
//! and the identity provider's discovery documents.
//!
//! Both come from systems outside Ward's control (and, fetched over a network, possibly
//! from an impostor), and what is read here is written into YAML that the gateway then
//! trusts. So every value is checked against a narrow character set before it is kept:
//! a name that could close a quote, start a comment, add a YAML key, or smuggle a `${VAR}`
//! (expanded from the environment when the config loads) is dropped with a note, never
//! escaped and kept.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Interactions a FHIR R4 server may advertise per resource type (CapabilityStatement
/// `rest.resource.interaction.code`, value set `type-restful-interaction`).
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];
/// Whole-system interactions (`rest.interaction.code`).
const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "search-system", "history-system"];

/// Bounds on what a (possibly hostile) document may make us write.
const MAX_TYPES: usize = 200;
const MAX_PARAMS: usize = 100;

/// What one resource type supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeCaps {
    pub interactions: BTreeSet<String>,
    pub search_params: BTreeSet<String>,
}

/// What the EHR supports, as far as Ward can enforce it.
#[derive(Debug, Clone, Default)]
pub struct Ehr {
    pub fhir_version: Option<String>,
    pub types: BTreeMap<String, TypeCaps>,
    pub system_interactions: BTreeSet<String>,
    pub system_params: BTreeSet<String>,
    /// Operation names without `$`.
    pub operations: BTreeSet<String>,
    /// What was dropped, and why (printed, and written as comments).
    pub notes: Vec<String>,
}

/// A search parameter or operation name: `_id`, `general-practitioner`, `code`.
pub fn is_safe_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && s.len() <= 64
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A URL or audience safe to write inside a double-quoted YAML scalar: no quote, backslash,
/// `$` (environment expansion), `#`, whitespace or control character.
pub fn is_safe_text(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.'
                        | '_'
                        | '~'
                        | ':'
                        | '/'
                        | '?'
                        | '&'
                        | '='
                        | '%'
                        | '+'
                        | ','
                        | ';'
                        | '@'
                        | '['
                        | ']'
                )
        })
}

/// An `https://host…` URL that is safe to write (see [`is_safe_text`]).
pub fn check_https_url(what: &str, s: &str) -> Result<String, String> {
    if !is_safe_text(s) {
        return Err(format!(
            "{what}: not a plain URL (quotes, spaces, `$`, `#` and control characters are refused)"
        ));
    }
    match s.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Ok(s.to_owned()),
        _ => Err(format!("{what}: must be an https:// URL")),
    }
}

fn strs<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Read a CapabilityStatement (FHIR R4) into what the generated config can enforce.
pub fn capabilities(v: &Value) -> Result<Ehr, String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return Err("the document is not a FHIR CapabilityStatement".into());
    }
    let mut ehr = Ehr::default();
    match v.get("fhirVersion").and_then(Value::as_str) {
        Some(ver) if ver.starts_with("4.0.") || ver == "4.0" => {
            ehr.fhir_version = Some(ver.to_owned());
        }
        Some(ver) => {
            let shown: String = ver
                .chars()
                .filter(char::is_ascii_graphic)
                .take(16)
                .collect();
            return Err(format!(
                "the EHR speaks FHIR {shown}; Ward checks FHIR R4 (4.0.x) requests and resources"
            ));
        }
        None => ehr
            .notes
            .push("the CapabilityStatement has no fhirVersion; assumed R4".into()),
    }
    let rests: Vec<&Value> = strs(v, "rest").collect();
    let rest = rests
        .iter()
        .find(|r| r.get("mode").and_then(Value::as_str) == Some("server"))
        .or(rests.first())
        .ok_or("the CapabilityStatement has no `rest` entry: nothing to route")?;
    let mut dropped_types = 0usize;
    let mut dropped_names = 0usize;
    for res in strs(rest, "resource") {
        let Some(t) = res.get("type").and_then(Value::as_str) else {
            dropped_types += 1;
            continue;
        };
        if !crate::fhir::is_resource_type(t) || ehr.types.len() >= MAX_TYPES {
            dropped_types += 1;
            continue;
        }
        let caps = ehr.types.entry(t.to_owned()).or_default();
        for i in strs(res, "interaction") {
            match i.get("code").and_then(Value::as_str) {
                Some(c) if TYPE_INTERACTIONS.contains(&c) => {
                    caps.interactions.insert(c.to_owned());
                }
                _ => dropped_names += 1,
            }
        }
        for p in strs(res, "searchParam") {
            match p.get("name").and_then(Value::as_str) {
                Some(n) if is_safe_name(n) && caps.search_params.len() < MAX_PARAMS => {
                    caps.search_params.insert(n.to_owned());
                }
                _ => dropped_names += 1,
            }
        }
        for o in strs(res, "operation") {
            match o.get("name").and_then(Value::as_str) {
                Some(n) if is_safe_name(n.trim_start_matches('$')) => {
                    ehr.operations.insert(n.trim_start_matches('$').to_owned());
                }
                _ => dropped_names += 1,
            }
        }
    }
    for i in strs(rest, "interaction") {
        match i.get("code").and_then(Value::as_str) {
            Some(c) if SYSTEM_INTERACTIONS.contains(&c) => {
                ehr.system_interactions.insert(c.to_owned());
            }
            _ => dropped_names += 1,
        }
    }
    for p in strs(rest, "searchParam") {
        match p.get("name").and_then(Value::as_str) {
            Some(n) if is_safe_name(n) && ehr.system_params.len() < MAX_PARAMS => {
                ehr.system_params.insert(n.to_owned());
            }
            _ => dropped_names += 1,
        }
    }
    for o in strs(rest, "operation") {
        match o.get("name").and_then(Value::as_str) {
            Some(n) if is_safe_name(n.trim_start_matches('$')) => {
                ehr.operations.insert(n.trim_start_matches('$').to_owned());
            }
            _ => dropped_names += 1,
        }
    }
    if dropped_types > 0 {
        ehr.notes.push(format!(
            "{dropped_types} resource entr(ies) skipped: not an R4 resource type (or over {MAX_TYPES})"
        ));
    }
    if dropped_names > 0 {
        ehr.notes.push(format!(
            "{dropped_names} interaction/parameter/operation name(s) skipped: unknown or not a plain name"
        ));
    }
    if ehr.types.values().all(|c| c.interactions.is_empty()) {
        return Err(
            "the CapabilityStatement advertises no interaction on any R4 resource type".into(),
        );
    }
    Ok(ehr)
}

/// What the identity provider's discovery documents say.
#[derive(Debug, Clone)]
pub struct Idp {
    pub issuer: String,
    pub jwks_uri: String,
    pub algorithms: Vec<String>,
    pub notes: Vec<String>,
}

/// Combine the SMART (`smart-configuration`) and OpenID (`openid-configuration`) documents:
/// the first `jwks_uri`, and the signing algorithms either advertises that Ward supports.
/// `issuer` (if given) must be the one the documents name (OpenID Connect Discovery 1.0
/// §4.3: a mismatch means the document is not this issuer's).
pub fn discovery(docs: &[Value], issuer: Option<&str>) -> Result<Idp, String> {
    if docs.is_empty() {
        return Err("no discovery document".into());
    }
    let mut notes = Vec::new();
    let named: Vec<&str> = docs
        .iter()
        .filter_map(|d| d.get("issuer").and_then(Value::as_str))
        .collect();
    let issuer = match (issuer, named.first()) {
        (Some(i), _) => {
            let i = i.trim_end_matches('/');
            if named.iter().any(|n| n.trim_end_matches('/') != i) {
                return Err(
                    "the discovery document names a different issuer than the one given".into(),
                );
            }
            i.to_owned()
        }
        (None, Some(n)) => (*n).to_owned(),
        (None, None) => {
            return Err("the discovery document has no `issuer`; give --idp ISSUER".into())
        }
    };
    let issuer = check_https_url("issuer", &issuer)?;
    let jwks = docs
        .iter()
        .find_map(|d| d.get("jwks_uri").and_then(Value::as_str))
        .ok_or("the discovery document has no `jwks_uri`")?;
    let jwks_uri = check_https_url("jwks_uri", jwks)?;
    let mut advertised = BTreeSet::new();
    let mut any_list = false;
    for d in docs {
        for key in [
            "id_token_signing_alg_values_supported",
            "token_endpoint_auth_signing_alg_values_supported",
        ] {
            if let Some(list) = d.get(key).and_then(Value::as_array) {
                any_list = true;
                advertised.extend(list.iter().filter_map(Value::as_str));
            }
        }
    }
    // Only asymmetric algorithms: `none` accepts unsigned tokens, and HS* would need a
    // secret shared with a public IdP (anyone holding it could mint tokens).
    let mut algorithms: Vec<String> = crate::policy::auth::ASYMMETRIC
        .iter()
        .filter(|a| advertised.contains(*a))
        .map(|a| (*a).to_owned())
        .collect();
    if !any_list {
        // OpenID Connect Core 1.0 §15.1: RS256 is the algorithm every provider supports.
        notes.push(
            "the IdP advertises no signing algorithms; RS256 assumed (the OpenID default)".into(),
        );
        algorithms.push("RS256".into());
    } else if algorithms.is_empty() {
        return Err(format!(
            "the IdP advertises no signing algorithm Ward accepts (Ward: {})",
            crate::policy::auth::ASYMMETRIC.join(" ")
        ));
    }
    let refused: Vec<&str> = advertised
        .iter()
        .copied()
        .filter(|a| !crate::policy::auth::ASYMMETRIC.contains(a))
        .filter(|a| is_safe_name(a))
        .collect();
    if !refused.is_empty() {
        notes.push(format!(
            "not accepted although advertised: {} (unsigned or shared-secret algorithms)",
            refused.join(", ")
        ));
    }
    Ok(Idp {
        issuer,
        jwks_uri,
        algorithms,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sample_capability_statement_is_read() {
        let v: Value = serde_json::from_str(crate::demo::CAPABILITY_STATEMENT).unwrap();
        let ehr = capabilities(&v).unwrap();
        let p = &ehr.types["Patient"];
        assert!(p.interactions.contains("read") && p.interactions.contains("create"));
        assert!(p.search_params.contains("birthdate"));
        assert!(ehr.operations.contains("everything"));
    }

    #[test]
    fn hostile_names_are_dropped() {
        for bad in [
            "a\"b", "x: y", "${HOME}", "a#b", "a b", "a\nb", "", "'q'", "a\\b", "[x]", "{x}", "é",
        ] {
            let v = json!({"resourceType":"CapabilityStatement","fhirVersion":"4.0.1","rest":[{"mode":"server","resource":[
                {"type":"Patient","interaction":[{"code":"read"}],"searchParam":[{"name":bad}],"operation":[{"name":bad}]},
                {"type":bad,"interaction":[{"code":"read"}]}]}]});
            let ehr = capabilities(&v).unwrap();
            assert!(ehr.types["Patient"].search_params.is_empty(), "{bad:?}");
            assert!(ehr.operations.is_empty(), "{bad:?}");
            assert_eq!(ehr.types.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn algorithms_never_none_or_hmac() {
        let d = json!({"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks",
            "id_token_signing_alg_values_supported":["none","HS256","HS512","RS256"],
            "token_endpoint_auth_signing_alg_values_supported":["ES256","hs384"]});
        let idp = discovery(&[d], Some("https://idp.test")).unwrap();
        assert_eq!(idp.algorithms, ["RS256", "ES256"]);
        let only_bad = json!({"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks",
            "id_token_signing_alg_values_supported":["none","HS256"]});
        assert!(discovery(&[only_bad], None).is_err());
    }

    #[test]
    fn unsafe_urls_and_issuer_mismatch_refused() {
        for bad in [
            "http://idp.test/jwks",
            "https://idp.test/${SECRET}",
            "https://idp.test/a b",
            "https://idp.test/\"x",
            "https://idp.test/#x",
            "https://idp.test/x\n",
            "file:///etc/passwd",
        ] {
            let d = json!({"issuer":"https://idp.test","jwks_uri":bad});
            assert!(discovery(&[d], None).is_err(), "{bad:?}");
        }
        let d = json!({"issuer":"https://evil.test","jwks_uri":"https://idp.test/jwks"});
        assert!(discovery(&[d], Some("https://idp.test")).is_err());
    }
}
