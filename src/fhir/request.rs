//! The FHIR REST interaction a request asks for, parsed once at the ingress of a
//! `fhir: true` route and carried as a typed `FhirRequest` extension.
//!
//! Grammar (FHIR R4 RESTful API, http://hl7.org/fhir/R4/http.html), relative to the
//! route's base: `metadata`, `_history`, `_search`, `$op`, `Type`, `Type/_search`,
//! `Type/_history`, `Type/$op`, `Type/id`, `Type/id/_history[/vid]`, `Type/id/$op`,
//! `Type/id/Type2|*` (compartment search), and the base itself (batch/transaction,
//! system search). Anything else is refused: an EHR must never see a request shape the
//! gateway's policies could not classify.

use http::Method;

use crate::error::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Capabilities,
    /// `GET [base]/.well-known/smart-configuration` (SMART App Launch discovery).
    SmartConfiguration,
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    Create,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    SearchType,
    SearchSystem,
    SearchCompartment,
    /// POST to the base: a batch or transaction Bundle (which one is in the body).
    BatchOrTransaction,
    OperationSystem,
    OperationType,
    OperationInstance,
}

impl Interaction {
    /// Bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        use Interaction::*;
        match self {
            Capabilities => "capabilities",
            SmartConfiguration => "smart-configuration",
            Read => "read",
            Vread => "vread",
            Update => "update",
            Patch => "patch",
            Delete => "delete",
            Create => "create",
            HistoryInstance => "history-instance",
            HistoryType => "history-type",
            HistorySystem => "history-system",
            SearchType => "search-type",
            SearchSystem => "search-system",
            SearchCompartment => "search-compartment",
            BatchOrTransaction => "batch",
            OperationSystem | OperationType | OperationInstance => "operation",
        }
    }
}

/// One search parameter: `name[:modifier][.chain]=value`, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    pub name: String,
    pub modifier: Option<String>,
    pub chain: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirRequest {
    pub interaction: Interaction,
    pub resource_type: Option<&'static str>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// For compartment searches: (compartment type, id); `resource_type` is the searched
    /// type (`None` for `*`).
    pub compartment: Option<(&'static str, String)>,
    /// Operation name without the `$`.
    pub operation: Option<String>,
    /// Conditional update/patch/delete (search criteria instead of an id).
    pub conditional: bool,
    /// Query parameters (for `POST _search`, the form body's are added by the policy that
    /// reads the body).
    pub params: Vec<SearchParam>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirRequestError {
    UnknownType,
    BadId,
    BadOperation,
    BadQuery,
    Unsupported,
}

impl From<FhirRequestError> for Rejection {
    fn from(e: FhirRequestError) -> Self {
        use FhirRequestError::*;
        let (code, detail) = match e {
            UnknownType => ("fhir_unknown_type", "not a FHIR R4 resource type"),
            BadId => ("fhir_bad_id", "malformed resource id or version"),
            BadOperation => ("fhir_bad_operation", "malformed operation name"),
            BadQuery => ("fhir_bad_query", "malformed search parameters"),
            Unsupported => ("fhir_unsupported", "not a FHIR REST interaction"),
        };
        Rejection::bad_request(code, detail)
    }
}

/// Compartment types of FHIR R4 (`Type/id/Type2` searches are only valid for these).
const COMPARTMENTS: &[&str] = &[
    "Device",
    "Encounter",
    "Patient",
    "Practitioner",
    "RelatedPerson",
];

fn resource_type(s: &str) -> Result<&'static str, FhirRequestError> {
    super::tables::RESOURCE_TYPES
        .binary_search(&s)
        .map(|i| super::tables::RESOURCE_TYPES[i])
        .map_err(|_| FhirRequestError::UnknownType)
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
fn id(s: &str) -> Result<String, FhirRequestError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| s.to_owned()).ok_or(FhirRequestError::BadId)
}

fn operation(s: &str) -> Result<Option<String>, FhirRequestError> {
    let Some(name) = s.strip_prefix('$') else {
        return Ok(None);
    };
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(Some(name.to_owned()))
    } else {
        Err(FhirRequestError::BadOperation)
    }
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
pub fn form_decode(s: &str) -> Result<String, FhirRequestError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| hexval(*c)),
                    b.get(i + 2).and_then(|c| hexval(*c)),
                ) else {
                    return Err(FhirRequestError::BadQuery);
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FhirRequestError::BadQuery)
}

/// Parse `a=1&b:exact=2&subject:Patient.name=x` (query string or form body).
pub fn parse_params(q: &str) -> Result<Vec<SearchParam>, FhirRequestError> {
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = form_decode(k)?;
        let value = form_decode(v)?;
        if k.is_empty() || k.len() > 256 || k.chars().any(|c| c.is_control() || c == ' ') {
            return Err(FhirRequestError::BadQuery);
        }
        // `_has:Type:param:...` keeps everything after the first colon as its modifier.
        let (head, modifier) = match k.split_once(':') {
            Some((h, m)) => (h.to_owned(), Some(m.to_owned())),
            None => (k.clone(), None),
        };
        let (name, chain, modifier) = match (head.split_once('.'), modifier) {
            (Some((n, c)), m) => (n.to_owned(), Some(c.to_owned()), m),
            (None, Some(m)) if !head.starts_with("_has") && m.contains('.') => {
                let (m, c) = m.split_once('.').unwrap_or((&m, ""));
                (head, Some(c.to_owned()), Some(m.to_owned()))
            }
            (None, m) => (head, None, m),
        };
        if name.is_empty() {
            return Err(FhirRequestError::BadQuery);
        }
        out.push(SearchParam {
            name,
            modifier,
            chain,
            value,
        });
    }
    Ok(out)
}

/// Parse a request on a FHIR route. `rel` is the canonical path below the route prefix
/// (no leading slash), `query` the raw query string.
pub fn parse(
    method: &Method,
    rel: &str,
    query: Option<&str>,
) -> Result<FhirRequest, FhirRequestError> {
    use Interaction::*;
    let params = match query {
        Some(q) => parse_params(q)?,
        None => Vec::new(),
    };
    let format = params
        .iter()
        .find(|p| p.name == "_format")
        .map(|p| p.value.clone());
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    let segs: Vec<&str> = if rel.is_empty() {
        Vec::new()
    } else {
        rel.split('/').collect()
    };
    let mut r = FhirRequest {
        interaction: Capabilities,
        resource_type: None,
        id: None,
        version: None,
        compartment: None,
        operation: None,
        conditional: false,
        params,
        format,
    };
    let m = method;
    let get = *m == Method::GET || *m == Method::HEAD;
    r.interaction = match segs.as_slice() {
        [] if *m == Method::POST => BatchOrTransaction,
        [] if get => SearchSystem,
        ["metadata"] if get => Capabilities,
        [".well-known", "smart-configuration"] if get => SmartConfiguration,
        ["_history"] if get => HistorySystem,
        ["_search"] if *m == Method::POST => SearchSystem,
        [op] if op.starts_with('$') && (get || *m == Method::POST) => {
            r.operation = operation(op)?;
            OperationSystem
        }
        // Ward's own bulk-export status and file URLs (`fhir_authz.bulk_export`): an
        // opaque id, polled or cancelled (status) and downloaded (file).
        [op @ ("$export-poll" | "$export-file"), i] if get || *m == Method::DELETE => {
            r.operation = operation(op)?;
            r.id = Some(id(i)?);
            OperationSystem
        }
        [t, rest @ ..] => {
            r.resource_type = Some(resource_type(t)?);
            match rest {
                [] => match *m {
                    _ if get => SearchType,
                    Method::POST => Create,
                    // Conditional interactions: criteria in the query, no id.
                    Method::PUT | Method::DELETE | Method::PATCH if !r.params.is_empty() => {
                        r.conditional = true;
                        match *m {
                            Method::PUT => Update,
                            Method::DELETE => Delete,
                            _ => Patch,
                        }
                    }
                    _ => return Err(FhirRequestError::Unsupported),
                },
                ["_search"] if *m == Method::POST => SearchType,
                ["_history"] if get => HistoryType,
                [op] if op.starts_with('$') && (get || *m == Method::POST) => {
                    r.operation = operation(op)?;
                    OperationType
                }
                [i] => {
                    r.id = Some(id(i)?);
                    match *m {
                        _ if get => Read,
                        Method::PUT => Update,
                        Method::PATCH => Patch,
                        Method::DELETE => Delete,
                        _ => return Err(FhirRequestError::Unsupported),
                    }
                }
                [i, "_history"] if get => {
                    r.id = Some(id(i)?);
                    HistoryInstance
                }
                [i, "_history", v] if get => {
                    r.id = Some(id(i)?);
                    r.version = Some(id(v)?);
                    Vread
                }
                [i, op] if op.starts_with('$') && (get || *m == Method::POST) => {
                    r.id = Some(id(i)?);
                    r.operation = operation(op)?;
                    OperationInstance
                }
                [i, target] if get || *m == Method::POST => {
                    // Compartment search: `Patient/123/Observation` or `Patient/123/*`.
                    let ct = r.resource_type.take().unwrap_or_default();
                    let ct = COMPARTMENTS
                        .iter()
                        .find(|c| **c == ct)
                        .copied()
                        .ok_or(FhirRequestError::Unsupported)?;
                    r.compartment = Some((ct, id(i)?));
                    r.resource_type = if *target == "*" {
                        None
                    } else {
                        Some(resource_type(target)?)
                    };
                    SearchCompartment
                }
                _ => return Err(FhirRequestError::Unsupported),
            }
        }
        _ => return Err(FhirRequestError::Unsupported),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    fn p(m: Method, rel: &str, q: Option<&str>) -> Result<FhirRequest, FhirRequestError> {
        parse(&m, rel, q)
    }

    #[test]
    fn interactions() {
        let cases: &[(Method, &str, Option<&str>, Interaction)] = &[
            (Method::GET, "metadata", None, Capabilities),
            (
                Method::GET,
                ".well-known/smart-configuration",
                None,
                SmartConfiguration,
            ),
            (Method::GET, "Patient/123", None, Read),
            (Method::HEAD, "Patient/123", None, Read),
            (Method::GET, "Patient/123/_history/2", None, Vread),
            (Method::PUT, "Patient/123", None, Update),
            (Method::PATCH, "Patient/123", None, Patch),
            (Method::DELETE, "Patient/123", None, Delete),
            (Method::POST, "Observation", None, Create),
            (Method::GET, "Observation", Some("patient=1"), SearchType),
            (Method::POST, "Observation/_search", None, SearchType),
            (Method::GET, "", Some("_type=Patient"), SearchSystem),
            (Method::POST, "_search", None, SearchSystem),
            (
                Method::GET,
                "Patient/1/Observation",
                None,
                SearchCompartment,
            ),
            (Method::GET, "Patient/1/*", None, SearchCompartment),
            (Method::GET, "Patient/1/_history", None, HistoryInstance),
            (Method::GET, "Patient/_history", None, HistoryType),
            (Method::GET, "_history", None, HistorySystem),
            (Method::POST, "", None, BatchOrTransaction),
            (Method::GET, "$export", None, OperationSystem),
            (Method::POST, "Patient/$match", None, OperationType),
            (
                Method::GET,
                "Patient/1/$everything",
                None,
                OperationInstance,
            ),
            (Method::PUT, "Patient", Some("identifier=x|1"), Update),
            (
                Method::DELETE,
                "Observation",
                Some("subject=Patient/1"),
                Delete,
            ),
        ];
        for (m, rel, q, want) in cases {
            let r = p(m.clone(), rel, *q).unwrap_or_else(|e| panic!("{m} {rel}: {e:?}"));
            assert_eq!(r.interaction, *want, "{m} {rel}");
        }
        let r = p(Method::GET, "Patient/1/_history/2", None).unwrap();
        assert_eq!(
            (r.resource_type, r.id.as_deref(), r.version.as_deref()),
            (Some("Patient"), Some("1"), Some("2"))
        );
        let r = p(Method::GET, "Patient/1/Observation", None).unwrap();
        assert_eq!(r.compartment, Some(("Patient", "1".to_owned())));
        assert_eq!(r.resource_type, Some("Observation"));
        let r = p(Method::GET, "Patient/1/$everything", None).unwrap();
        assert_eq!(r.operation.as_deref(), Some("everything"));
        assert!(
            p(Method::PUT, "Patient", Some("name=x"))
                .unwrap()
                .conditional
        );
    }

    #[test]
    fn malformed_shapes() {
        use FhirRequestError::*;
        assert_eq!(p(Method::GET, "Foo/1", None).unwrap_err(), UnknownType);
        assert_eq!(p(Method::GET, "patient/1", None).unwrap_err(), UnknownType);
        assert_eq!(p(Method::GET, "Patient/a_b", None).unwrap_err(), BadId);
        assert_eq!(
            p(Method::GET, &format!("Patient/{}", "a".repeat(65)), None).unwrap_err(),
            BadId
        );
        assert_eq!(p(Method::GET, "Patient/%2e", None).unwrap_err(), BadId);
        assert_eq!(
            p(Method::GET, "Patient/1/_history/x_y", None).unwrap_err(),
            BadId
        );
        assert_eq!(p(Method::GET, "Patient/$", None).unwrap_err(), BadOperation);
        assert_eq!(
            p(Method::GET, "Observation/1/Condition", None).unwrap_err(),
            Unsupported
        );
        assert_eq!(
            p(Method::GET, "Patient/1/Observation/2", None).unwrap_err(),
            Unsupported
        );
        assert_eq!(p(Method::DELETE, "Patient", None).unwrap_err(), Unsupported);
        assert_eq!(p(Method::POST, "Patient/1", None).unwrap_err(), Unsupported);
        assert_eq!(
            p(Method::GET, "Patient", Some("a=%zz")).unwrap_err(),
            BadQuery
        );
        assert_eq!(p(Method::GET, "Patient", Some("=x")).unwrap_err(), BadQuery);
    }

    #[test]
    fn search_params() {
        let ps = parse_params("patient=Patient%2F1&code:not=x&subject:Patient.name=Smith&_has:Observation:patient:code=1234&_include=Observation:subject&_format=json&date=ge2020+01").unwrap();
        let find = |n: &str| ps.iter().find(|p| p.name == n).unwrap();
        assert_eq!(find("patient").value, "Patient/1");
        assert_eq!(find("code").modifier.as_deref(), Some("not"));
        let s = find("subject");
        assert_eq!(
            (s.modifier.as_deref(), s.chain.as_deref(), s.value.as_str()),
            (Some("Patient"), Some("name"), "Smith")
        );
        assert_eq!(
            find("_has").modifier.as_deref(),
            Some("Observation:patient:code")
        );
        assert_eq!(find("_include").value, "Observation:subject");
        assert_eq!(find("date").value, "ge2020 01");
        let r = parse(
            &Method::GET,
            "Patient",
            Some("_format=application/fhir%2Bjson"),
        )
        .unwrap();
        assert_eq!(r.format.as_deref(), Some("application/fhir+json"));
        let ps = parse_params("general-practitioner.name=x").unwrap();
        assert_eq!(
            (ps[0].name.as_str(), ps[0].chain.as_deref()),
            ("general-practitioner", Some("name"))
        );
    }
}
