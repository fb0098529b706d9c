//! What a token's SMART scopes let it *receive*, and what its search parameters may *name*.
//!
//! The request line says which type a token asks for, but a response can carry many more:
//! `_include`/`_revinclude` (and `:iterate`), `$everything`, batch results, operation
//! outputs, contained resources. Every resource anywhere in a response must be a type the
//! scopes grant for the interaction; on the request side, `_include`, `_revinclude`, `_has`
//! and chained parameters may only name such types (a chain on a type the token cannot read
//! would still test that type's data, one yes/no at a time).

use serde_json::Value;

use super::request::SearchParam;
use super::scopes::{Perm, Scope};

/// Types that only wrap or describe other resources: their content is checked, not them.
const CONTAINERS: &[&str] = &["Bundle", "Parameters", "OperationOutcome"];

/// A resource (or a parameter's target) the scopes do not grant, or that cannot be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotGranted;

/// The scopes of one request, asked per resource type.
pub struct Grants<'a> {
    scopes: &'a [Scope],
    perm: Perm,
    /// The type the request is about and its parameters: only its own (matching) entries
    /// can satisfy a v2 constrained scope such as `Observation.rs?category=laboratory`.
    primary: Option<&'a str>,
    params: &'a [SearchParam],
}

impl<'a> Grants<'a> {
    pub fn new(
        scopes: &'a [Scope],
        perm: Perm,
        primary: Option<&'a str>,
        params: &'a [SearchParam],
    ) -> Self {
        Grants {
            scopes,
            perm,
            primary,
            params,
        }
    }

    /// Every type is granted (an unconstrained wildcard scope): nothing to filter.
    pub fn universal(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| s.resource_type.is_none() && s.grants("Patient", self.perm, &[]))
    }

    /// May a resource of type `t` be returned? `primary_match`: it is a matching entry of
    /// the request's own type (not an include, not contained).
    pub fn allows(&self, t: &str, primary_match: bool) -> bool {
        let params: &[SearchParam] = if primary_match && self.primary == Some(t) {
            self.params
        } else {
            &[]
        };
        self.scopes.iter().any(|s| s.grants(t, self.perm, params))
    }

    /// May an object of type `t` appear where `allows` is asked (containers always may:
    /// their content is judged)?
    pub fn type_allowed(&self, t: &str, primary_match: bool) -> bool {
        CONTAINERS.contains(&t) || self.allows(t, primary_match)
    }

    /// Is `r` a typed resource, and is every resource inside it (itself, contained ones,
    /// nested Bundle entries, Parameters values: any object with a `resourceType`) granted?
    pub fn resource_allowed(&self, r: &Value, primary_match: bool) -> bool {
        // Something without a type cannot be judged (and a client may still read it).
        r.get("resourceType").is_some_and(Value::is_string) && self.nested_allowed(r, primary_match)
    }

    /// Is every resource found anywhere in `v` granted?
    fn nested_allowed(&self, v: &Value, primary: bool) -> bool {
        match v {
            Value::Object(m) => {
                if let Some(t) = m.get("resourceType") {
                    let Some(t) = t.as_str() else { return false };
                    if !self.type_allowed(t, primary) {
                        return false;
                    }
                }
                m.values().all(|x| self.nested_allowed(x, false))
            }
            Value::Array(a) => a.iter().all(|x| self.nested_allowed(x, false)),
            _ => true,
        }
    }

    /// Remove (or, with `refuse`, refuse: `Err`) every entry of a Bundle response holding a
    /// resource the scopes do not grant; nested Bundles (batch results) are filtered in
    /// place. `Bundle.total` counts matches only (FHIR R4 3.1.1.4.2), so it drops by the
    /// removed matching entries, not by removed includes. A resource that is not a Bundle
    /// must be granted entirely (`Err` otherwise). Returns whether anything changed.
    pub fn filter(&self, v: &mut Value, refuse: bool) -> Result<bool, NotGranted> {
        if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return if self.resource_allowed(v, true) {
                Ok(false)
            } else {
                Err(NotGranted)
            };
        }
        let mut changed = false;
        let mut removed_matches = 0u64;
        match v.get_mut("entry") {
            None => {}
            Some(Value::Array(entries)) => {
                let mut kept = Vec::with_capacity(entries.len());
                for mut e in std::mem::take(entries) {
                    let mode = e
                        .get("search")
                        .and_then(|s| s.get("mode"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    let is_match = !matches!(mode.as_deref(), Some("include" | "outcome"));
                    let ok = match e.get_mut("resource") {
                        None => true,
                        Some(r)
                            if r.get("resourceType").and_then(Value::as_str) == Some("Bundle") =>
                        {
                            changed |= self.filter(r, refuse)?;
                            true
                        }
                        Some(r) => self.resource_allowed(r, is_match),
                    };
                    if ok {
                        kept.push(e);
                    } else if refuse {
                        return Err(NotGranted);
                    } else {
                        changed = true;
                        if is_match {
                            removed_matches += 1;
                        }
                    }
                }
                *entries = kept;
            }
            // Lenient readers take an object as a one-entry list: not here.
            Some(_) => return Err(NotGranted),
        }
        if removed_matches > 0 {
            if let Some(t) = v.get_mut("total") {
                if let Some(n) = t.as_u64() {
                    *t = Value::from(n.saturating_sub(removed_matches));
                }
            }
        }
        // Anything else the Bundle carries besides entries (`issues`, a signature's
        // `who`): checked whole.
        if let Value::Object(m) = v {
            for (k, x) in m.iter() {
                if k != "entry" && !self.nested_allowed(x, false) {
                    return Err(NotGranted);
                }
            }
        }
        Ok(changed)
    }

    /// The resource types a search parameter makes the server read or return, beyond the
    /// searched type: `Err(NotGranted)` when they cannot be known (a wildcard `*`, or a chain whose
    /// target type is not spelled out), so only a universal grant covers it.
    pub fn named_types(p: &SearchParam) -> Result<Vec<String>, NotGranted> {
        let lname = p.name.to_ascii_lowercase();
        let mut out = Vec::new();
        match lname.as_str() {
            "_include" | "_revinclude" => {
                // `Source:param[:Target]`, or `*`.
                let parts: Vec<&str> = p.value.split(':').collect();
                if parts.iter().any(|x| x.trim() == "*") || parts.len() < 2 {
                    return Err(NotGranted);
                }
                for (i, x) in parts.iter().enumerate() {
                    if i == 1 {
                        continue;
                    }
                    if !super::is_resource_type(x) {
                        return Err(NotGranted);
                    }
                    out.push((*x).to_owned());
                }
            }
            "_has" => {
                // `_has:Type:param:[_has:Type:param:]*name`.
                let m = p.modifier.as_deref().unwrap_or("");
                let parts: Vec<&str> = m.split(':').collect();
                let mut expect_type = true;
                for x in parts {
                    if expect_type {
                        if !super::is_resource_type(x) {
                            return Err(NotGranted);
                        }
                        out.push(x.to_owned());
                        expect_type = false;
                    } else if x.eq_ignore_ascii_case("_has") {
                        expect_type = true;
                    }
                }
                if p.chain.is_some() {
                    return Err(NotGranted);
                }
            }
            _ => {
                if let Some(chain) = &p.chain {
                    // `param[:Type].param2[:Type2].name`: every hop's target type.
                    match p.modifier.as_deref() {
                        Some(t) if super::is_resource_type(t) => out.push(t.to_owned()),
                        _ => match implied_type(&p.name) {
                            Some(t) => out.push(t),
                            None => return Err(NotGranted),
                        },
                    }
                    let hops: Vec<&str> = chain.split('.').collect();
                    for hop in &hops[..hops.len().saturating_sub(1)] {
                        match hop.split_once(':') {
                            Some((_, t)) if super::is_resource_type(t) => out.push(t.to_owned()),
                            Some(_) => return Err(NotGranted),
                            None => match implied_type(hop) {
                                Some(t) => out.push(t),
                                None => return Err(NotGranted),
                            },
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A reference parameter named after its only target type (`patient` → Patient,
/// `encounter` → Encounter): R4's parameters named like a type target that type.
fn implied_type(name: &str) -> Option<String> {
    let mut c = name.chars();
    let first = c.next()?.to_ascii_uppercase();
    let t: String = std::iter::once(first).chain(c).collect();
    super::is_resource_type(&t).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::request::parse_params;
    use crate::fhir::scopes::parse_all;
    use serde_json::json;

    #[test]
    fn named_types_of_every_shape() {
        let cases: &[(&str, Result<&[&str], NotGranted>)] = &[
            (
                "_include=Observation:subject:Patient",
                Ok(&["Observation", "Patient"]),
            ),
            ("_include:iterate=Observation:subject", Ok(&["Observation"])),
            ("_revinclude=Provenance:target", Ok(&["Provenance"])),
            (
                "_revinclude:iterate=Provenance:target:Patient",
                Ok(&["Provenance", "Patient"]),
            ),
            ("_include=*", Err(NotGranted)),
            ("_include=Observation:*", Err(NotGranted)),
            ("_include=Observation", Err(NotGranted)),
            ("_include=observation:subject", Err(NotGranted)),
            ("_has:Observation:patient:code=1", Ok(&["Observation"])),
            (
                "_has:Observation:patient:_has:AuditEvent:entity:agent=x",
                Ok(&["Observation", "AuditEvent"]),
            ),
            ("_has:Foo:patient:code=1", Err(NotGranted)),
            ("subject:Patient.name=x", Ok(&["Patient"])),
            ("patient.name=x", Ok(&["Patient"])),
            ("subject.name=x", Err(NotGranted)),
            (
                "patient.organization.name=x",
                Ok(&["Patient", "Organization"]),
            ),
            (
                "subject:Patient.general-practitioner:Practitioner.name=x",
                Ok(&["Patient", "Practitioner"]),
            ),
            ("code=1", Ok(&[])),
        ];
        for (q, want) in cases {
            let p = &parse_params(q).unwrap()[0];
            let got = Grants::named_types(p);
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{q}");
        }
    }

    #[test]
    fn bundle_filtering_by_scope() {
        let scopes = parse_all(["patient/Observation.rs patient/Encounter.read"]);
        let g = Grants::new(&scopes, Perm::Search, Some("Observation"), &[]);
        assert!(!g.universal());
        let mut b = json!({"resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
            {"resource": {"resourceType": "Observation", "id": "1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Observation", "id": "2", "contained": [{"resourceType": "Condition"}]}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Encounter", "id": "e"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
        ]});
        assert!(g.filter(&mut b.clone(), true).is_err());
        let mut untyped = json!({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}, {"resource": {"resourceType": ["Observation"]}}]});
        assert_eq!(g.filter(&mut untyped, false), Ok(true));
        assert_eq!(untyped["entry"], json!([]));
        assert!(g.filter(&mut json!({"id": "x"}), false).is_err());
        assert_eq!(g.filter(&mut b, false), Ok(true));
        let ids: Vec<_> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].clone())
            .collect();
        assert_eq!(
            ids,
            vec![
                json!("Observation"),
                json!("Encounter"),
                json!("OperationOutcome")
            ]
        );
        assert_eq!(b["total"], 1, "one match removed, includes do not count");
        let constrained = parse_all(["user/Observation.rs?category=laboratory"]);
        let ps = parse_params("category=laboratory").unwrap();
        let g = Grants::new(&constrained, Perm::Search, Some("Observation"), &ps);
        assert!(g.allows("Observation", true));
        assert!(
            !g.allows("Observation", false),
            "an include cannot prove the constraint"
        );
        assert!(Grants::new(&parse_all(["user/*.read"]), Perm::Search, None, &[]).universal());
    }
}
