//! SMART App Launch scopes (v1 and v2) and what a FHIR interaction needs of them.
//!
//! v1: `patient/Observation.read`, `user/*.write`, `system/*.*`.
//! v2: `patient/Observation.rs`, `user/*.cruds`, with optional constraints
//! `patient/Observation.rs?category=laboratory`.
//! Scopes that are not resource scopes (`openid`, `fhirUser`, `launch/patient`, ...) grant
//! nothing here.

use super::request::{Interaction, SearchParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Patient,
    User,
    System,
}

/// The permission letters of SMART v2 (v1 `read` = `rs`, `write` = `cud`, `*` = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn bit(self) -> u8 {
        match self {
            Perm::Create => 1,
            Perm::Read => 2,
            Perm::Update => 4,
            Perm::Delete => 8,
            Perm::Search => 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    perms: u8,
    /// v2 constraints (`?name=value&...`): the scope only grants requests that carry
    /// exactly these search parameters.
    pub constraints: Vec<(String, String)>,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (rtype, perm) = rest.rsplit_once('.')?;
        let resource_type = match rtype {
            "*" => None,
            t if super::is_resource_type(t) => Some(t.to_owned()),
            _ => return None,
        };
        let perms = match perm {
            "read" => Perm::Read.bit() | Perm::Search.bit(),
            "write" => Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit(),
            "*" => 31,
            letters => {
                // v2: a non-empty subsequence of "cruds", in that order.
                let mut bits = 0u8;
                let mut last = 0usize;
                for c in letters.chars() {
                    let (idx, p) = match c {
                        'c' => (1, Perm::Create),
                        'r' => (2, Perm::Read),
                        'u' => (3, Perm::Update),
                        'd' => (4, Perm::Delete),
                        's' => (5, Perm::Search),
                        _ => return None,
                    };
                    if idx <= last {
                        return None;
                    }
                    last = idx;
                    bits |= p.bit();
                }
                if bits == 0 {
                    return None;
                }
                bits
            }
        };
        let mut constraints = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=')?;
                let k = super::request::form_decode(k).ok()?;
                let v = super::request::form_decode(v).ok()?;
                constraints.push((k, v));
            }
            // Constraints exist only in v2 syntax.
            if matches!(perm, "read" | "write" | "*") {
                return None;
            }
        }
        Some(Scope {
            context,
            resource_type,
            perms,
            constraints,
        })
    }

    /// Does this scope grant `perm` on `rtype` for a request with these search params?
    pub fn grants(&self, rtype: &str, perm: Perm, params: &[SearchParam]) -> bool {
        if self.perms & perm.bit() == 0 {
            return false;
        }
        if self.resource_type.as_deref().is_some_and(|t| t != rtype) {
            return false;
        }
        // A constrained scope grants only searches that carry every constraint (a read by
        // id cannot be checked before the response, so it is not granted here).
        self.constraints.is_empty()
            || (perm == Perm::Search
                && self.constraints.iter().all(|(k, v)| {
                    params
                        .iter()
                        .any(|p| p.name == *k && p.modifier.is_none() && p.value == *v)
                }))
    }
}

/// Parse a space-separated `scope` (or the items of an `scp` array); unknown scopes are
/// skipped.
pub fn parse_all<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
    items
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(Scope::parse)
        .collect()
}

/// The permission an interaction needs on its resource type; `None` when it needs none
/// (capabilities) or cannot be judged from the type alone (operations, batches: their
/// policy decides).
pub fn needed(i: Interaction) -> Option<Perm> {
    use Interaction::*;
    match i {
        Read | Vread | HistoryInstance => Some(Perm::Read),
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => {
            Some(Perm::Search)
        }
        Create => Some(Perm::Create),
        Update | Patch => Some(Perm::Update),
        Delete => Some(Perm::Delete),
        Capabilities | SmartConfiguration | BatchOrTransaction | OperationSystem
        | OperationType | OperationInstance => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str, value: &str) -> SearchParam {
        SearchParam {
            name: name.into(),
            modifier: None,
            chain: None,
            value: value.into(),
        }
    }

    #[test]
    fn v1_scopes() {
        let s = Scope::parse("patient/Observation.read").unwrap();
        assert_eq!(s.context, Context::Patient);
        assert!(s.grants("Observation", Perm::Read, &[]));
        assert!(s.grants("Observation", Perm::Search, &[]));
        assert!(!s.grants("Observation", Perm::Create, &[]));
        assert!(!s.grants("Condition", Perm::Read, &[]));
        let w = Scope::parse("user/*.write").unwrap();
        assert!(w.grants("Condition", Perm::Update, &[]) && w.grants("Patient", Perm::Delete, &[]));
        assert!(!w.grants("Condition", Perm::Read, &[]));
        assert!(Scope::parse("system/*.*")
            .unwrap()
            .grants("Encounter", Perm::Search, &[]));
    }

    #[test]
    fn v2_scopes_and_constraints() {
        let s = Scope::parse("patient/Observation.rs").unwrap();
        assert!(
            s.grants("Observation", Perm::Read, &[]) && !s.grants("Observation", Perm::Update, &[])
        );
        assert!(Scope::parse("user/*.cruds")
            .unwrap()
            .grants("Patient", Perm::Create, &[]));
        assert!(
            Scope::parse("patient/Observation.sr").is_none(),
            "out of order"
        );
        assert!(Scope::parse("patient/Observation.x").is_none());
        assert!(Scope::parse("patient/NotAType.rs").is_none());
        assert!(
            Scope::parse("patient/Observation.read?category=x").is_none(),
            "constraints are v2 only"
        );
        let c = Scope::parse("patient/Observation.rs?category=laboratory").unwrap();
        assert!(c.grants("Observation", Perm::Search, &[sp("category", "laboratory")]));
        assert!(!c.grants(
            "Observation",
            Perm::Search,
            &[sp("category", "vital-signs")]
        ));
        assert!(!c.grants("Observation", Perm::Search, &[]));
        assert!(
            !c.grants("Observation", Perm::Read, &[]),
            "a constrained read cannot be judged up front"
        );
    }

    #[test]
    fn scope_lists() {
        let all = parse_all([
            "openid fhirUser launch/patient patient/Patient.read",
            "patient/Observation.rs",
        ]);
        assert_eq!(all.len(), 2);
        assert_eq!(needed(Interaction::Vread), Some(Perm::Read));
        assert_eq!(needed(Interaction::Patch), Some(Perm::Update));
        assert_eq!(needed(Interaction::Capabilities), None);
    }
}
