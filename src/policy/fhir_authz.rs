//! `fhir_authz` policy: SMART on FHIR scopes and the patient-compartment guard against
//! broken object-level authorization (a valid token reading another patient's records).
//!
//! Runs after `auth` (it reads the verified `Claims`) on `fhir: true` routes (it reads the
//! parsed `FhirRequest`). With `user/` or `system/` scopes only per-type permissions apply.
//! With patient-level access (a `patient/` scope, or the patient launch-context claim) every
//! interaction is confined to the token's patient, before the request and again on the
//! response:
//! - `Patient/{id}` only for the token's patient; other compartment resources read by id
//!   are checked in the upstream's answer; anything else answers the same 404 a missing
//!   resource gets (existence is never revealed);
//! - searches only on compartment types; the patient restriction is checked when present
//!   (a conflicting value is 403) and added when absent; every entry of the returned
//!   Bundle must belong to the patient (removed, or the response fails closed);
//! - `_has`, chained parameters, `_include`/`_revinclude` are refused unless allowed;
//! - creates and updates must carry the token's patient and match the URL;
//! - batch/transaction entries are authorized one by one (and their results checked);
//!   deletes and patches read the target first;
//! - what cannot be confined fails closed with a stable code: conditional writes,
//!   system-wide searches and history in patient context.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::Value;

use crate::context::{is_blank, Claims};
use crate::error::Rejection;
use crate::error::{claim_invalid, insufficient_scope};
use crate::fhir::compartment::{compartment_references, in_patient_compartment, owned_by};
use crate::fhir::refs::{search_value_for_patient, written_resource_ok, Bases, UrnTargets};
use crate::fhir::request::{parse_params, FhirRequest, Interaction, SearchParam};
use crate::fhir::scope_filter::Grants;
use crate::fhir::scopes::{self, Context as ScopeContext, Perm, Scope};
use crate::fhir::strict_json::{self, StrictError};
use crate::metrics::Metrics;
use crate::service::PolicyFuture;
use crate::Body;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BundleMode {
    /// Remove entries of other patients (and lower `Bundle.total` accordingly).
    #[default]
    Filter,
    /// Refuse the whole response.
    Fail,
}

/// What happens to a response holding resources the token's scopes do not grant.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMode {
    /// Remove those Bundle entries (and lower `Bundle.total` by the removed matches).
    #[default]
    Filter,
    /// Refuse the whole response (403 `insufficient_scope`).
    Refuse,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CountMode {
    /// Rewrite `_count` down to the maximum.
    #[default]
    Cap,
    /// Refuse requests over the maximum.
    Reject,
}

fn default_claim() -> String {
    "patient".into()
}
fn default_buffer() -> usize {
    8 * 1024 * 1024
}
fn default_max_count() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirAuthzConfig {
    /// Claim carrying the SMART launch-context patient id.
    #[serde(default = "default_claim")]
    pub patient_claim: String,
    /// `_include` / `_revinclude` values allowed in patient context, e.g.
    /// `Observation:subject`; included resources are still checked one by one.
    #[serde(default)]
    pub allowed_includes: Vec<String>,
    #[serde(default)]
    pub allow_has: bool,
    #[serde(default)]
    pub allow_chained: bool,
    /// Operations (without `$`) allowed on this route, e.g. `[everything]`.
    #[serde(default)]
    pub allowed_operations: Vec<String>,
    #[serde(default)]
    pub bundle_mode: BundleMode,
    /// Resources of types the token's scopes do not grant (includes, contained resources,
    /// operation outputs, batch results): `filter` removes the entries, `refuse` fails.
    #[serde(default)]
    pub response_scope_mode: ScopeMode,
    /// Largest upstream response (or request body) buffered for a check; beyond it the
    /// request fails closed.
    #[serde(default = "default_buffer")]
    pub max_buffer_bytes: usize,
    /// Search-parameter firewall: if not empty, only these parameters (and the `_`
    /// result parameters `_count`, `_sort`, `_format`, `_elements`, `_summary`).
    #[serde(default)]
    pub allowed_params: Vec<String>,
    #[serde(default = "default_max_count")]
    pub max_count: u32,
    #[serde(default)]
    pub count_mode: CountMode,
    /// Emergency access (HIPAA 164.312(a)(2)(ii)): an entitled token may read outside the
    /// patient compartment when the request states a reason in `Break-Glass-Reason`.
    #[serde(default)]
    pub break_glass: Option<BreakGlassConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    /// A scope the token must carry (`emergency-access`)…
    #[serde(default)]
    pub scope: Option<String>,
    /// …or a claim with this string value (or an array containing it).
    #[serde(default)]
    pub claim: Option<ClaimMatch>,
    /// Uses per identity per day.
    #[serde(default)]
    pub max_per_day: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatch {
    pub name: String,
    pub value: String,
}

impl BreakGlassConfig {
    fn entitled(&self, c: &Claims) -> bool {
        let by_scope = self
            .scope
            .as_ref()
            .is_some_and(|s| c.scopes.iter().any(|x| x == s));
        let by_claim = self
            .claim
            .as_ref()
            .is_some_and(|m| match c.raw.get(&m.name) {
                Some(Value::String(v)) => *v == m.value,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(m.value.as_str())),
                _ => false,
            });
        by_scope || by_claim
    }
}

impl FhirAuthzConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.patient_claim.is_empty() {
            out.push(("patient_claim", "must not be empty".into()));
        }
        if let Some(b) = &self.break_glass {
            if b.scope.is_none() && b.claim.is_none() {
                out.push((
                    "break_glass",
                    "needs a `scope` or a `claim` that entitles a token".into(),
                ));
            }
            if b.claim
                .as_ref()
                .is_some_and(|m| is_blank(&m.name) || is_blank(&m.value))
            {
                // A blank value would entitle every token whose claim names nobody.
                out.push((
                    "break_glass.claim",
                    "name and value must not be blank".into(),
                ));
            }
            if b.max_per_day == Some(0) {
                out.push(("break_glass.max_per_day", "must be greater than 0".into()));
            }
        }
        if self.max_buffer_bytes == 0 || self.max_buffer_bytes > 256 * 1024 * 1024 {
            out.push(("max_buffer_bytes", "between 1 and 268435456".into()));
        }
        if self.max_count == 0 {
            out.push(("max_count", "must be greater than 0".into()));
        }
        out
    }
}

/// Definitional or shared resource types that carry no patient's data: readable by id with
/// patient-level access when the scope allows. Every other type outside the Patient
/// compartment table is refused in patient context.
const SHARED_TYPES: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "CodeSystem",
    "ConceptMap",
    "DeviceDefinition",
    "Endpoint",
    "HealthcareService",
    "Library",
    "Location",
    "Measure",
    "Medication",
    "MedicationKnowledge",
    "NamingSystem",
    "ObservationDefinition",
    "OperationDefinition",
    "Organization",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "SearchParameter",
    "SpecimenDefinition",
    "StructureDefinition",
    "Substance",
    "ValueSet",
];

/// Always allowed by the parameter firewall: result controls, and the include parameters
/// (governed by `allowed_includes` in patient context).
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_format",
    "_elements",
    "_summary",
    "_total",
    "_pretty",
    "_include",
    "_revinclude",
];

struct Inner {
    cfg: FhirAuthzConfig,
    metrics: Arc<Metrics>,
    /// The upstream's `scheme://authority` (and its URL's own path, if any): references
    /// under it mean "this server".
    upstream_origin: Option<String>,
    upstream_url: Option<String>,
    /// Break-glass uses per identity per day.
    break_glass_limit: Option<governor::DefaultKeyedRateLimiter<String>>,
}

#[derive(Clone)]
pub struct FhirAuthzLayer(Arc<Inner>);

impl FhirAuthzLayer {
    pub fn new(cfg: &FhirAuthzConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        let break_glass_limit = cfg
            .break_glass
            .as_ref()
            .and_then(|b| b.max_per_day)
            .and_then(std::num::NonZeroU32::new)
            .and_then(|n| {
                governor::Quota::with_period(std::time::Duration::from_secs(86_400) / n.get())
                    .map(|q| governor::RateLimiter::keyed(q.allow_burst(n)))
            });
        Ok(FhirAuthzLayer(Arc::new(Inner {
            cfg: cfg.clone(),
            metrics,
            upstream_origin: None,
            upstream_url: None,
            break_glass_limit,
        })))
    }

    /// The route's upstream URL: absolute references to it are this server's own.
    pub fn for_upstream(
        cfg: &FhirAuthzConfig,
        metrics: Arc<Metrics>,
        url: &str,
    ) -> Result<Self, String> {
        let FhirAuthzLayer(inner) = Self::new(cfg, metrics)?;
        let mut inner = Arc::into_inner(inner).ok_or("fhir_authz: layer already shared")?;
        inner.upstream_origin = url.split_once("://").map(|(scheme, rest)| {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{authority}")
        });
        inner.upstream_url = Some(url.trim_end_matches('/').to_owned());
        Ok(FhirAuthzLayer(Arc::new(inner)))
    }
}

impl<S> tower::Layer<S> for FhirAuthzLayer {
    type Service = FhirAuthz<S>;
    fn layer(&self, inner: S) -> FhirAuthz<S> {
        FhirAuthz {
            inner,
            a: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FhirAuthz<S> {
    inner: S,
    a: Arc<Inner>,
}

fn denied(code: &'static str, detail: &'static str) -> Rejection {
    Rejection::new(StatusCode::FORBIDDEN, code, detail)
}

/// What a missing resource answers: used whenever the truth would reveal existence.
fn hidden() -> Rejection {
    Rejection::new(StatusCode::NOT_FOUND, "not_found", "resource not found")
}

/// The decision before the upstream is called.
enum Plan {
    /// No compartment restriction (user/system scope, capabilities, non-compartment read).
    Pass,
    /// Patient context: check the response resource (read/vread) or Bundle (search/history).
    CheckResponse {
        patient: String,
        bundle: bool,
        hide: bool,
    },
    /// Patient context, change to an existing resource (delete, patch): read it first
    /// through the same upstream and proceed only if it is the patient's.
    PreRead { patient: String },
}

/// Parameters every FHIR server knows (R4 "all resources" and result parameters), plus
/// the patient-naming ones; a case variant of any of them is refused.
const KNOWN_PARAMS: &[&str] = &[
    "_id",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_source",
    "_text",
    "_content",
    "_list",
    "_has",
    "_type",
    "_query",
    "_filter",
    "_include",
    "_revinclude",
    "_count",
    "_sort",
    "_format",
    "_elements",
    "_summary",
    "_total",
    "_pretty",
    "_contained",
    "_containedType",
    "_getpages",
    "_getpagesoffset",
    "_bundletype",
    "patient",
    "subject",
];

fn case_variant_of_known(name: &str) -> bool {
    let differs = |k: &str| k != name && k.eq_ignore_ascii_case(name);
    KNOWN_PARAMS.iter().any(|k| differs(k))
        || crate::fhir::tables::PATIENT_COMPARTMENT
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .any(|(k, _)| differs(k))
}

/// Refuse `_include`/`_revinclude`/`_has`/chains that name a type the scopes do not let
/// the token search (403 `insufficient_scope`); a wildcard, or a chain whose target type is
/// not spelled out, needs a scope for every type.
fn named_types_granted(
    scopes: &[Scope],
    primary: Option<&str>,
    params: &[SearchParam],
) -> Result<(), Rejection> {
    let g = Grants::new(scopes, Perm::Search, primary, params);
    if g.universal() {
        return Ok(());
    }
    for p in params {
        let ok = match Grants::named_types(p) {
            Ok(types) => types
                .iter()
                .all(|t| g.allows(t, Some(t.as_str()) == primary)),
            Err(_) => false,
        };
        if !ok {
            return Err(insufficient_scope());
        }
    }
    Ok(())
}

/// Every parameter of a patient-context search that names a patient must name the token's
/// (absolute URLs on this server's bases are rewritten relative; any other base is
/// refused). Returns whether one of them restricts the search to the patient: only the
/// type's compartment parameters (and `_id` on Patient) count — a lenient server ignores
/// parameters it does not know. `rtype` `None`: a `Patient/{id}/*` compartment search.
fn patient_params(
    rtype: Option<&str>,
    pid: &str,
    params: &mut [SearchParam],
    bases: &Bases,
) -> Result<bool, Rejection> {
    let compartment: Vec<&str> = match rtype {
        Some(t) => crate::fhir::patient_compartment(t)
            .map(|ps| ps.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default(),
        None => crate::fhir::tables::PATIENT_COMPARTMENT
            .iter()
            .flat_map(|(_, ps)| ps.iter().map(|(p, _)| *p))
            .collect(),
    };
    let mut restricted = false;
    for p in params.iter_mut() {
        let counts =
            (rtype == Some("Patient") && p.name == "_id") || compartment.contains(&p.name.as_str());
        if !counts && p.name != "patient" && p.name != "subject" {
            continue;
        }
        // Only plain references (or `:Patient`); `:missing`, `:not`, `:identifier` would
        // widen the search.
        if !matches!(p.modifier.as_deref(), None | Some("Patient")) {
            return Err(denied(
                "search_param_denied",
                "modifier not allowed on the patient restriction",
            ));
        }
        let Some(canonical) = search_value_for_patient(&p.value, pid, bases) else {
            return Err(denied(
                "patient_mismatch",
                "the search names another patient",
            ));
        };
        p.value = canonical;
        restricted |= counts;
    }
    Ok(restricted)
}

impl Inner {
    /// The bases under which an absolute reference means this server: the route as the
    /// client addressed it, and the upstream (its origin with the route's upstream path,
    /// and its configured URL).
    fn bases(&self, parts: &http::request::Parts) -> Bases {
        let mut v = Vec::new();
        if let Some(l) = LinkBase::from_parts(parts) {
            v.push(l.gateway.clone());
            if let Some(o) = &self.upstream_origin {
                v.push(format!("{o}{}", l.upstream_path));
            }
        }
        if let Some(u) = &self.upstream_url {
            v.push(u.clone());
        }
        Bases::new(v)
    }

    /// `Some(reason)` when this request is a permitted break-glass read; refusals for a
    /// header the token may not use or an empty reason. Without the header: `None`, and
    /// the usual rules apply.
    fn break_glass(
        &self,
        f: &FhirRequest,
        claims: &Claims,
        parts: &http::request::Parts,
    ) -> Result<Option<String>, Rejection> {
        let Some(v) = parts.headers.get("break-glass-reason") else {
            return Ok(None);
        };
        let entitled = self
            .cfg
            .break_glass
            .as_ref()
            .is_some_and(|b| b.entitled(claims));
        if !entitled {
            return Err(denied(
                "break_glass_not_permitted",
                "this token is not entitled to emergency access",
            ));
        }
        let reason = v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|r| !r.is_empty() && r.chars().count() <= 500)
            .filter(|r| !r.chars().any(char::is_control))
            .ok_or_else(|| {
                Rejection::bad_request(
                    "break_glass_reason_invalid",
                    "Break-Glass-Reason must state a reason (1 to 500 characters)",
                )
            })?;
        // One patient's record, not a dump: instance reads, that patient's history and
        // compartment, or a search naming the patient.
        let names_patient = f.params.iter().any(|p| {
            matches!(
                p.name.split(':').next().unwrap_or(""),
                "patient" | "subject" | "_id"
            ) && !p.value.contains(',')
        });
        let one_patient = match f.interaction {
            Interaction::Read
            | Interaction::Vread
            | Interaction::HistoryInstance
            | Interaction::SearchCompartment => true,
            Interaction::SearchType => names_patient,
            _ => false,
        };
        if !one_patient {
            return Err(denied(
                "break_glass_read_only",
                "emergency access reads one patient's record: an instance, its history or compartment, or a search naming the patient",
            ));
        }
        Ok(Some(reason.to_owned()))
    }

    /// Charge one use of the daily break-glass allowance (after the request is known to
    /// be allowed, so a refused attempt costs nothing). With `respond.redis` the allowance
    /// is one for all replicas; the local limiter is charged as well, and decides alone
    /// while Redis does not answer.
    async fn charge_break_glass(
        &self,
        claims: &Claims,
        route: &str,
        slot: Option<&crate::respond::RespondSlot>,
    ) -> Result<(), Rejection> {
        if let Some(l) = &self.break_glass_limit {
            let key = format!("{}|{}", claims.iss, claims.sub);
            let local = l.check_key(&key).is_ok();
            let per_day = self
                .cfg
                .break_glass
                .as_ref()
                .and_then(|b| b.max_per_day)
                .unwrap_or(1);
            let shared = match slot {
                Some(s) => s.charge_break_glass(route, &key, per_day).await,
                None => None,
            };
            if !shared.unwrap_or(local) {
                return Err(Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "break_glass_limit",
                    "the daily number of emergency accesses is used up",
                ));
            }
        }
        Ok(())
    }

    fn decide(
        &self,
        f: &FhirRequest,
        claims: &Claims,
        params: &mut Vec<SearchParam>,
        break_glass: bool,
        bases: &Bases,
    ) -> Result<Plan, Rejection> {
        use Interaction::*;
        if f.interaction == Capabilities {
            return Ok(Plan::Pass);
        }
        // Search-parameter firewall and `_count` cap apply to everyone.
        self.firewall(params)?;
        let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
        // Whatever the context: `_include`, `_revinclude`, `_has` and chains may only name
        // types the token may search (the response is filtered too; this refuses early and
        // stops chains, whose results never show the chained type).
        named_types_granted(&scopes, f.resource_type, params)?;
        let rtype = f.resource_type.unwrap_or("*");
        let perm = scopes::needed(f.interaction);
        let ops_perm = match f.interaction {
            OperationSystem | OperationType | OperationInstance => {
                let op = f.operation.as_deref().unwrap_or("");
                if !self.cfg.allowed_operations.iter().any(|o| o == op) {
                    return Err(denied(
                        "operation_denied",
                        "this operation is not allowed on this route",
                    ));
                }
                Some(Perm::Read)
            }
            // Each entry is authorized on its own by `authorize_bundle`.
            BatchOrTransaction => return Ok(Plan::Pass),
            _ => None,
        };
        let Some(perm) = perm.or(ops_perm) else {
            return Ok(Plan::Pass);
        };
        let grants = |s: &&Scope| match f.resource_type {
            Some(t) => s.grants(t, perm, params),
            // System-level interactions need a wildcard scope.
            None => s.resource_type.is_none() && s.grants("Patient", perm, params),
        };
        let broad = scopes
            .iter()
            .filter(|s| s.context != ScopeContext::Patient)
            .any(|s| grants(&s));
        let narrow = scopes
            .iter()
            .filter(|s| s.context == ScopeContext::Patient)
            .any(|s| grants(&s));
        let launch_patient = claims
            .raw
            .get(&self.cfg.patient_claim)
            .and_then(Value::as_str);
        if broad && launch_patient.is_none() {
            return Ok(Plan::Pass);
        }
        if !broad && !narrow {
            return Err(insufficient_scope());
        }
        // Break-glass (already checked: entitled, reason given, a read): the scopes still
        // decide which types, but the patient compartment does not confine this read.
        if break_glass {
            return Ok(Plan::Pass);
        }
        // Patient-level access from here on.
        let pid = launch_patient
            .ok_or_else(|| {
                denied(
                    "patient_context_missing",
                    "patient-level access needs a patient launch context",
                )
            })?
            .to_owned();
        // Answers are checked as JSON: another format could not be (and would differ from
        // the 404 a hidden record gets).
        if f.format.as_deref().is_some_and(|fmt| !fmt.contains("json")) {
            return Err(denied(
                "format_denied",
                "only JSON is available with patient-level access",
            ));
        }
        let in_compartment =
            crate::fhir::patient_compartment(rtype).is_some() || rtype == "Patient";
        match f.interaction {
            Read | Vread | HistoryInstance => {
                if rtype == "Patient" && f.id.as_deref() != Some(pid.as_str()) {
                    return Err(hidden());
                }
                if !in_compartment {
                    // Shared, definitional data (Medication, Organization, ...) is not about
                    // a patient: the scope decides. Anything else outside the compartment
                    // table (Binary, Bundle, Device, ...) may well be, and cannot be checked.
                    if SHARED_TYPES.contains(&rtype) {
                        return Ok(Plan::Pass);
                    }
                    return Err(denied(
                        "type_outside_compartment",
                        "this resource type is not available with patient-level access",
                    ));
                }
                // The history of another patient's resource must look like a missing one.
                let history = f.interaction == HistoryInstance;
                Ok(Plan::CheckResponse {
                    patient: pid,
                    bundle: history,
                    hide: history,
                })
            }
            OperationInstance if f.operation.as_deref() == Some("everything") => {
                if rtype != "Patient" || f.id.as_deref() != Some(pid.as_str()) {
                    return Err(hidden());
                }
                Ok(Plan::CheckResponse {
                    patient: pid,
                    bundle: true,
                    hide: false,
                })
            }
            OperationSystem | OperationType | OperationInstance => Err(denied(
                "operation_denied",
                "operations other than $everything are not allowed in patient context",
            )),
            // A page of an earlier search (HAPI-style `[base]?_getpages=…`): its entries are
            // checked like any search result.
            SearchSystem if params.iter().any(|p| p.name == "_getpages") => {
                if params.iter().any(|p| {
                    !matches!(
                        p.name.as_str(),
                        "_getpages"
                            | "_getpagesoffset"
                            | "_count"
                            | "_format"
                            | "_pretty"
                            | "_bundletype"
                    )
                }) {
                    return Err(denied(
                        "search_param_denied",
                        "a page request carries only paging parameters",
                    ));
                }
                Ok(Plan::CheckResponse {
                    patient: pid,
                    bundle: true,
                    hide: false,
                })
            }
            SearchCompartment => {
                let (ct, cid) = f.compartment.as_ref().ok_or_else(Rejection::internal)?;
                if *ct != "Patient" || *cid != pid {
                    return Err(hidden());
                }
                self.search_rules(params)?;
                // The path names the patient; parameters naming one must agree with it.
                patient_params(f.resource_type, &pid, params, bases)?;
                Ok(Plan::CheckResponse {
                    patient: pid,
                    bundle: true,
                    hide: false,
                })
            }
            SearchType => {
                if !in_compartment {
                    return Err(denied(
                        "search_outside_compartment",
                        "patient-level search is limited to the patient's compartment",
                    ));
                }
                self.search_rules(params)?;
                self.restrict_to_patient(rtype, &pid, params, bases)?;
                Ok(Plan::CheckResponse {
                    patient: pid,
                    bundle: true,
                    hide: false,
                })
            }
            Create | Update | Delete | Patch if f.conditional || !params.is_empty() => Err(denied(
                // Conditional writes search across all patients; parameters such as
                // `_cascade` reach beyond the addressed resource.
                "conditional_denied",
                "conditional writes and write parameters are not allowed in patient context",
            )),
            Create => {
                // The body is checked by the caller (it has to be read first).
                Ok(Plan::Pass)
            }
            Update if rtype == "Patient" => {
                if f.id.as_deref() != Some(pid.as_str()) {
                    return Err(hidden());
                }
                Ok(Plan::Pass)
            }
            // An update replaces a resource that must already be the patient's (no
            // update-as-create: it would reveal which ids exist, and chose ids for others).
            Update => Ok(Plan::PreRead { patient: pid }),
            Delete | Patch => {
                if f.conditional {
                    return Err(denied(
                        "conditional_denied",
                        "conditional writes are not allowed in patient context",
                    ));
                }
                match (rtype, f.interaction) {
                    ("Patient", Patch) if f.id.as_deref() == Some(pid.as_str()) => Ok(Plan::Pass),
                    ("Patient", Patch) => Err(hidden()),
                    ("Patient", _) => Err(denied(
                        "interaction_denied",
                        "a patient-context token cannot delete patients",
                    )),
                    _ if !in_compartment => Err(denied(
                        "interaction_denied",
                        "this interaction is not allowed in patient context",
                    )),
                    _ => Ok(Plan::PreRead { patient: pid }),
                }
            }
            _ => Err(denied(
                "interaction_denied",
                "this interaction is not allowed in patient context",
            )),
        }
    }

    /// Authorize every entry of a batch/transaction Bundle as its own request: writes'
    /// bodies are checked, reads and searches get the patient restriction (the entry URL is
    /// rewritten when one is added) and their results are checked in the batch response.
    /// Returns the body to forward (rewritten if needed) and what to check per entry.
    fn authorize_bundle(
        &self,
        body: &[u8],
        claims: &Claims,
        bases: &Bases,
    ) -> Result<BundleAuth, Rejection> {
        let invalid =
            |code: &'static str, detail: &'static str| Rejection::bad_request(code, detail);
        let mut v: Value = strict_body(body)?;
        let urns = crate::fhir::refs::urn_targets(&v);
        let mut checks = Vec::new();
        let mut entry_scopes = Vec::new();
        let mut rewritten = false;
        if v.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || !matches!(
                v.get("type").and_then(Value::as_str),
                Some("batch" | "transaction")
            )
        {
            return Err(invalid(
                "fhir_invalid",
                "expected a batch or transaction Bundle",
            ));
        }
        let pid = claims
            .raw
            .get(&self.cfg.patient_claim)
            .and_then(Value::as_str);
        let mut entries: Vec<Value> = match v.get_mut("entry").map(Value::take) {
            Some(Value::Array(a)) => a,
            None => Vec::new(),
            // Lenient servers read an object as a one-entry list: it must be a list here.
            Some(_) => return Err(invalid("fhir_invalid", "Bundle.entry must be a list")),
        };
        for e in entries.iter_mut() {
            let resource = e.get("resource").cloned();
            let resource = resource.as_ref();
            if resource
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
                == Some("Bundle")
            {
                return Err(invalid(
                    "fhir_nested_bundle",
                    "Bundles inside a batch or transaction are not accepted",
                ));
            }
            let req = e
                .get("request")
                .ok_or_else(|| invalid("fhir_invalid", "a Bundle entry has no request"))?;
            let method = req
                .get("method")
                .and_then(Value::as_str)
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
            let url = req.get("url").and_then(Value::as_str);
            let (Some(method), Some(url)) = (method, url) else {
                return Err(invalid(
                    "fhir_invalid",
                    "a Bundle entry has no method or url",
                ));
            };
            // Entry URLs are relative to the base; an absolute one must not point elsewhere.
            if url.contains("://") || url.starts_with('/') {
                return Err(invalid(
                    "fhir_invalid",
                    "Bundle entry urls must be relative",
                ));
            }
            let (path, query) = match url.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (url.to_owned(), None),
            };
            let er = crate::fhir::request::parse(&method, &path, query.as_deref())
                .map_err(Rejection::from)?;
            if matches!(er.interaction, Interaction::BatchOrTransaction) {
                return Err(invalid(
                    "fhir_nested_bundle",
                    "Bundles inside a batch or transaction are not accepted",
                ));
            }
            // Servers act on the method and the resource, not on what the URL looks like:
            // a POST entry is a create (whatever its URL), and only creates and updates
            // carry a resource.
            let is_write = matches!(er.interaction, Interaction::Create | Interaction::Update);
            if (method == http::Method::POST && er.interaction != Interaction::Create)
                || (resource.is_some() && !is_write)
            {
                return Err(invalid(
                    "fhir_batch_entry_invalid",
                    "Bundle entry method, url and resource disagree",
                ));
            }
            let conditional = ["ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"]
                .iter()
                .any(|k| req.get(*k).is_some());
            if conditional && pid.is_some() {
                return Err(denied(
                    "conditional_denied",
                    "conditional entries are not allowed in patient context",
                ));
            }
            let mut params = er.params.clone();
            let plan = self.decide(&er, claims, &mut params, false, bases)?;
            let patient_level = patient_scoped(claims, &er);
            if let (Some(pid), true, Interaction::Create | Interaction::Update) =
                (pid, patient_level, er.interaction)
            {
                let Some(r) = e.get_mut("resource") else {
                    return Err(invalid(
                        "fhir_batch_entry_invalid",
                        "a create or update entry has no resource",
                    ));
                };
                check_write(&er, r, pid, bases, &urns)?;
            }
            entry_scopes.push(EntryScope {
                perm: response_perm(er.interaction),
                resource_type: er.resource_type,
                params: params.clone(),
            });
            checks.push(match plan {
                Plan::Pass => EntryCheck::None,
                Plan::CheckResponse {
                    patient,
                    bundle,
                    hide,
                } => EntryCheck::Result {
                    patient,
                    bundle,
                    hide,
                },
                // A delete or patch inside a batch cannot be pre-read here.
                Plan::PreRead { .. } => {
                    return Err(denied(
                        "batch_change_unsupported",
                        "deletes and patches inside a batch are not accepted in patient context",
                    ))
                }
            });
            if params != er.params {
                let url = format!("{path}?{}", encode_params(&params));
                if let Some(r) = e.get_mut("request") {
                    r["url"] = Value::from(url);
                    rewritten = true;
                }
            }
        }
        v["entry"] = Value::Array(entries);
        // Always forward exactly what was checked, re-serialised.
        let _ = rewritten;
        Ok((Some(Bytes::from(v.to_string())), checks, entry_scopes))
    }

    fn firewall(&self, params: &mut [SearchParam]) -> Result<(), Rejection> {
        // A name that differs from a known parameter only in case (`SUBJECT`, `Patient`,
        // `_Include`) is unknown to a strict server and the known one to a lenient one: the
        // guard would check one thing and the upstream search another.
        if params.iter().any(|p| case_variant_of_known(&p.name)) {
            return Err(denied(
                "search_param_denied",
                "search parameter names are case-sensitive",
            ));
        }
        if !self.cfg.allowed_params.is_empty() {
            for p in params.iter() {
                // `name` allows the plain parameter, `name:modifier` one modifier, `name:*` any.
                let ok = RESULT_PARAMS.contains(&p.name.as_str())
                    || self.cfg.allowed_params.iter().any(|a| {
                        match (a.split_once(':'), &p.modifier) {
                            (None, None) => *a == p.name,
                            (Some((n, "*")), _) => n == p.name,
                            (Some((n, m)), Some(pm)) => n == p.name && m == pm,
                            _ => false,
                        }
                    });
                if !ok {
                    return Err(denied(
                        "search_param_denied",
                        "search parameter not allowed on this route",
                    ));
                }
            }
        }
        for p in params.iter_mut().filter(|p| p.name == "_count") {
            let n: u64 = p.value.parse().map_err(|_| {
                Rejection::bad_request("fhir_bad_query", "malformed search parameters")
            })?;
            if n > u64::from(self.cfg.max_count) {
                match self.cfg.count_mode {
                    CountMode::Cap => p.value = self.cfg.max_count.to_string(),
                    CountMode::Reject => {
                        return Err(denied(
                            "search_count_exceeded",
                            "_count exceeds the route's maximum",
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn search_rules(&self, params: &[SearchParam]) -> Result<(), Rejection> {
        for p in params {
            // `_include:iterate` reaches arbitrarily far, so it needs its own allow-list entry
            // (`iterate:Observation:subject`); whatever it pulls in is still checked.
            let include = matches!(p.name.as_str(), "_include" | "_revinclude");
            let allowed_include = match p.modifier.as_deref() {
                None => self.cfg.allowed_includes.contains(&p.value),
                Some("iterate") => self
                    .cfg
                    .allowed_includes
                    .iter()
                    .any(|a| a.strip_prefix("iterate:") == Some(p.value.as_str())),
                Some(_) => false,
            };
            if (include && !allowed_include)
                || (p.name == "_has" && !self.cfg.allow_has)
                || (p.chain.is_some() && !self.cfg.allow_chained)
            {
                return Err(denied(
                    "search_param_denied",
                    "search parameter not allowed in patient context",
                ));
            }
        }
        Ok(())
    }

    /// Check the patient restriction of a search, or add one.
    fn restrict_to_patient(
        &self,
        rtype: &str,
        pid: &str,
        params: &mut Vec<SearchParam>,
        bases: &Bases,
    ) -> Result<(), Rejection> {
        let compartment: Vec<&str> = match crate::fhir::patient_compartment(rtype) {
            Some(ps) => ps.iter().map(|(p, _)| *p).collect(),
            None if rtype == "Patient" => Vec::new(),
            None => {
                return Err(denied(
                    "search_outside_compartment",
                    "patient-level search is limited to the patient's compartment",
                ))
            }
        };
        let restricted = patient_params(Some(rtype), pid, params, bases)?;
        if !restricted {
            let (name, value) = if rtype == "Patient" {
                ("_id", pid.to_owned())
            } else {
                (
                    compartment.first().copied().unwrap_or("patient"),
                    format!("Patient/{pid}"),
                )
            };
            params.push(SearchParam {
                name: name.to_owned(),
                modifier: None,
                chain: None,
                value,
            });
        }
        Ok(())
    }

    fn record(&self, route: &str, f: &FhirRequest, decision: &str, code: &str) {
        self.metrics
            .fhir_authz
            .with_label_values(&[
                route,
                f.resource_type.unwrap_or("-"),
                f.interaction.label(),
                decision,
                code,
            ])
            .inc();
    }
}

/// Re-encode search parameters into a query string.
fn encode_params(params: &[SearchParam]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~:/|,$*".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut q = String::new();
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            q.push('&');
        }
        enc(&p.name, &mut q);
        if let Some(m) = &p.modifier {
            q.push(':');
            enc(m, &mut q);
        }
        if let Some(c) = &p.chain {
            q.push('.');
            enc(c, &mut q);
        }
        q.push('=');
        enc(&p.value, &mut q);
    }
    q
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

type BytesFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Rejection>> + Send + 'static>>;

/// Read a whole body up to `max` bytes. Boxed with an explicit `'static` type for the same
/// rustc lifetime-inference reason as `policy::call_next`.
fn read_limited(body: Body, max: usize) -> BytesFuture {
    Box::pin(async move {
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Rejection::upstream_error())?;
            if let Ok(d) = frame.into_data() {
                if buf.len() + d.len() > max {
                    return Err(Rejection::new(
                        StatusCode::BAD_GATEWAY,
                        "response_too_large",
                        "response too large to authorize",
                    ));
                }
                buf.extend_from_slice(&d);
            }
        }
        Ok(buf.freeze())
    })
}

impl<S> tower::Service<Request<Body>> for FhirAuthz<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = PolicyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let a = self.a.clone();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let route = req
                .extensions()
                .get::<crate::context::RouteId>()
                .map(|r| r.0.name.clone())
                .unwrap_or_else(|| Arc::from("-"));
            let (Some(f), Some(claims)) = (
                req.extensions().get::<Arc<FhirRequest>>().cloned(),
                req.extensions().get::<Arc<Claims>>().cloned(),
            ) else {
                // Config validation puts this policy only behind `auth` on FHIR routes.
                return Err(Rejection::internal());
            };
            let result = authorize(a.clone(), f.clone(), claims, req, inner).await;
            match &result {
                Ok(_) => a.record(&route, &f, "allow", "ok"),
                Err(r) => a.record(&route, &f, "deny", r.code),
            }
            result
        })
    }
}

fn authorize<S>(
    a: Arc<Inner>,
    f: Arc<FhirRequest>,
    claims: Arc<Claims>,
    req: Request<Body>,
    inner: S,
) -> PolicyFuture
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(authorize_inner(a, f, claims, req, inner))
}

async fn authorize_inner<S>(
    a: Arc<Inner>,
    f: Arc<FhirRequest>,
    claims: Arc<Claims>,
    req: Request<Body>,
    inner: S,
) -> Result<Response<Body>, Rejection>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let f = &*f;
    let claims = &*claims;
    // A launch-context patient that names nobody (`""`, `" "`, a number, a list) is refused
    // outright: read as "no patient context" it would let broad scopes pass unconfined,
    // and as an id it would be a compartment nobody owns.
    match claims.raw.get(&a.cfg.patient_claim) {
        None => {}
        Some(Value::String(p)) if !is_blank(p) => {}
        Some(_) => return Err(claim_invalid()),
    }
    let (mut parts, mut body) = req.into_parts();
    let mut params = f.params.clone();
    let max = a.cfg.max_buffer_bytes;
    // `POST _search`: the form body's parameters count exactly like the query's.
    let mut body_bytes: Option<Bytes> = None;
    let mut batch_checks: Vec<EntryCheck> = Vec::new();
    let mut batch_scopes: Vec<EntryScope> = Vec::new();
    let bases = a.bases(&parts);
    let form_search = parts.method == http::Method::POST
        && matches!(
            f.interaction,
            Interaction::SearchType | Interaction::SearchCompartment
        );
    if form_search {
        let b = read_limited(
            std::mem::replace(&mut body, crate::empty_body()),
            max.min(1024 * 1024),
        )
        .await
        .map_err(|_| Rejection::body_too_large())?;
        let text = std::str::from_utf8(&b)
            .map_err(|_| Rejection::bad_request("fhir_bad_query", "malformed search parameters"))?;
        params.extend(parse_params(text).map_err(Rejection::from)?);
        body_bytes = Some(Bytes::new());
        // All parameters travel in the query from here on.
    } else if f.interaction == Interaction::BatchOrTransaction {
        let b = read_limited(std::mem::replace(&mut body, crate::empty_body()), max)
            .await
            .map_err(|_| Rejection::body_too_large())?;
        let (rewritten, checks, scopes) = a.authorize_bundle(&b, claims, &bases)?;
        batch_checks = checks;
        batch_scopes = scopes;
        body_bytes = Some(rewritten.unwrap_or(b));
    } else if matches!(
        f.interaction,
        Interaction::Create | Interaction::Update | Interaction::Patch
    ) {
        body_bytes = Some(
            read_limited(std::mem::replace(&mut body, crate::empty_body()), max)
                .await
                .map_err(|_| Rejection::body_too_large())?,
        );
    }
    let break_glass = a.break_glass(f, claims, &parts)?;
    let plan = a.decide(f, claims, &mut params, break_glass.is_some(), &bases)?;
    if let Some(reason) = break_glass {
        let route = parts
            .extensions
            .get::<crate::context::RouteId>()
            .map(|r| r.0.name.clone())
            .unwrap_or_default();
        let slot = parts
            .extensions
            .get::<crate::respond::RespondSlot>()
            .cloned();
        a.charge_break_glass(claims, &route, slot.as_ref()).await?;
        a.metrics.break_glass.with_label_values(&[&route]).inc();
        tracing::warn!(target: "ward::respond", route = %route, resource_type = f.resource_type.unwrap_or("*"), "break-glass access");
        if let Some(slot) = parts.extensions.get::<crate::context::AuditSlot>() {
            slot.set_break_glass(&reason);
        }
        if let Some(slot) = parts.extensions.get::<crate::respond::RespondSlot>() {
            slot.break_glass(&route, f.resource_type.unwrap_or("*"));
        }
    }
    let patient_ctx = claims
        .raw
        .get(&a.cfg.patient_claim)
        .and_then(Value::as_str)
        .is_some();
    if patient_ctx && parts.headers.contains_key("if-none-exist") {
        // A conditional create searches across all patients (and answers with the match).
        return Err(denied(
            "conditional_denied",
            "conditional writes are not allowed in patient context",
        ));
    }
    // Patient-context writes: the body must name this patient and match the URL.
    if let (Some(b), Some(pid)) = (
        &body_bytes,
        claims.raw.get(&a.cfg.patient_claim).and_then(Value::as_str),
    ) {
        if patient_scoped(claims, f) {
            match f.interaction {
                Interaction::Create | Interaction::Update => {
                    let mut v = strict_body(b)?;
                    // Local absolute references made relative: forward what was checked.
                    // (Only then re-serialised: serde_json would drop a decimal's
                    // trailing zeros, which FHIR counts as precision.)
                    if check_write(f, &mut v, pid, &bases, &UrnTargets::new())? {
                        body_bytes = Some(Bytes::from(v.to_string()));
                    }
                }
                Interaction::Patch => check_patch(f, &parts.headers, b, pid, &bases)?,
                _ => {}
            }
        }
    }
    // What the scopes let this token receive: `None` when every type is granted (or the
    // interaction returns no resources of the server's choosing).
    let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
    let scoped_perm = response_perm(f.interaction)
        .filter(|p| !Grants::new(&scopes, *p, f.resource_type, &params).universal());
    let batch_scoped = batch_scopes.iter().any(|e| {
        e.perm
            .is_some_and(|p| !Grants::new(&scopes, p, e.resource_type, &e.params).universal())
    });
    if (scoped_perm.is_some() || batch_scoped)
        && f.format.as_deref().is_some_and(|fmt| !fmt.contains("json"))
    {
        return Err(denied(
            "format_denied",
            "only JSON answers can be checked against this token's scopes",
        ));
    }
    // Every answer that carries resources is read (duplicate member names refused, scopes
    // applied); writes answer with what the client sent.
    let reads_answer =
        response_perm(f.interaction).is_some() || f.interaction == Interaction::BatchOrTransaction;
    // Rebuild the URI when parameters changed (added restriction, capped `_count`, form).
    if params != f.params || form_search {
        let q = encode_params(&params);
        // A form search is forwarded as the equivalent GET: the checked parameters are then
        // exactly the ones the upstream sees, in one place.
        let path = if form_search {
            parts
                .uri
                .path()
                .strip_suffix("/_search")
                .unwrap_or(parts.uri.path())
                .to_owned()
        } else {
            parts.uri.path().to_owned()
        };
        let pq = if q.is_empty() {
            path
        } else {
            format!("{path}?{q}")
        };
        let pq = PathAndQuery::try_from(pq).map_err(|_| Rejection::internal())?;
        parts.uri = Uri::from(pq);
        if form_search {
            parts.method = http::Method::GET;
            parts.headers.remove(CONTENT_TYPE);
            parts.headers.remove(CONTENT_LENGTH);
        }
    }
    let check_batch = f.interaction == Interaction::BatchOrTransaction;
    let checked =
        matches!(plan, Plan::CheckResponse { .. }) || check_batch || scoped_perm.is_some();
    if checked {
        if parts.method == http::Method::HEAD {
            // No body, nothing to check: a HEAD would tell existence apart.
            return Err(Rejection::method_not_allowed());
        }
        // The answer has to be read to be checked: identity-encoded JSON, complete (no
        // 304 from conditional headers), and no lenient handling of our restriction.
        for h in [
            ACCEPT_ENCODING,
            http::header::IF_NONE_MATCH,
            http::header::IF_MODIFIED_SINCE,
            http::header::HeaderName::from_static("prefer"),
        ] {
            parts.headers.remove(h);
        }
        parts.headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
    } else if reads_answer {
        // Only read for duplicate member names: identity encoding is enough.
        parts.headers.remove(ACCEPT_ENCODING);
    }
    if let Plan::PreRead { patient } = &plan {
        let etag = pre_read(&parts, inner.clone(), patient).await?;
        // Pin the write to the version that was checked (no change in between).
        if let (Some(tag), false) = (etag, parts.headers.contains_key(http::header::IF_MATCH)) {
            parts.headers.insert(http::header::IF_MATCH, tag);
        }
    }
    let body = match body_bytes {
        Some(b) => {
            // The body may have been rewritten: its length is the gateway's to state.
            if b.is_empty() {
                parts.headers.remove(CONTENT_LENGTH);
            } else {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
            }
            full(b)
        }
        None => body,
    };
    let links = LinkBase::from_parts(&parts);
    let req = Request::from_parts(parts, body);
    let resp = crate::service::call_next(inner, req).await?;
    let scope_mode = a.cfg.response_scope_mode;
    if check_batch {
        let grants: Vec<Option<Grants>> = batch_scopes
            .iter()
            .map(|e| {
                e.perm
                    .map(|p| Grants::new(&scopes, p, e.resource_type, &e.params))
                    .filter(|g| !g.universal())
            })
            .collect();
        return check_batch_response(&a, resp, &batch_checks, &grants, scope_mode).await;
    }
    let grants = scoped_perm.map(|p| Grants::new(&scopes, p, f.resource_type, &params));
    match plan {
        Plan::Pass | Plan::PreRead { .. } if reads_answer => {
            check_scoped(&a, resp, grants.as_ref(), scope_mode).await
        }
        Plan::Pass | Plan::PreRead { .. } => Ok(resp),
        Plan::CheckResponse {
            patient,
            bundle,
            hide,
        } => {
            let scope = grants.as_ref().map(|g| (g, scope_mode));
            check_response(&a, resp, &patient, bundle, hide, links.as_ref(), scope).await
        }
    }
}

/// Read the target of a patient-context delete/patch through the same route (same
/// upstream, same gateway headers) and allow the change only if it is the patient's.
async fn pre_read<S>(
    parts: &http::request::Parts,
    inner: S,
    pid: &str,
) -> Result<Option<HeaderValue>, Rejection>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection> + Send + 'static,
    S::Future: Send + 'static,
{
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    let mut get = Request::new(crate::empty_body());
    *get.method_mut() = http::Method::GET;
    *get.uri_mut() =
        Uri::from(PathAndQuery::try_from(parts.uri.path()).map_err(|_| Rejection::internal())?);
    *get.headers_mut() = parts.headers.clone();
    for h in [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        ACCEPT_ENCODING,
        http::header::IF_MATCH,
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
        http::header::HeaderName::from_static("prefer"),
    ] {
        get.headers_mut().remove(h);
    }
    get.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    copy_extensions(parts, get.extensions_mut());
    let resp = crate::service::call_next(inner, get).await?;
    if resp.status() == StatusCode::NOT_FOUND || resp.status() == StatusCode::GONE {
        return Err(hidden());
    }
    if !resp.status().is_success() {
        return Err(unverifiable());
    }
    let etag = resp.headers().get(ETAG).cloned();
    let bytes = read_limited(resp.into_body(), 8 * 1024 * 1024).await?;
    let v: Value = match strict_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(StrictError::Duplicate) => return Err(duplicate_members()),
        Err(StrictError::Malformed) => return Err(unverifiable()),
    };
    if owned_by(&v, pid) {
        Ok(etag)
    } else {
        Err(hidden())
    }
}

/// The typed extensions the proxy step needs, copied onto a request the policy makes.
fn copy_extensions(from: &http::request::Parts, to: &mut http::Extensions) {
    if let Some(c) = from.extensions.get::<crate::context::RequestContext>() {
        to.insert(c.clone());
    }
    if let Some(r) = from.extensions.get::<crate::context::RouteId>() {
        to.insert(r.clone());
    }
    if let Some(h) = from.extensions.get::<crate::context::UpstreamHeaders>() {
        to.insert(h.clone());
    }
}

/// A patient-context JSON Patch may not touch the elements that tie the resource to its
/// patient (it would move the record to someone else). FHIRPath Patch is not accepted.
fn check_patch(
    f: &FhirRequest,
    headers: &http::HeaderMap,
    body: &[u8],
    pid: &str,
    bases: &Bases,
) -> Result<(), Rejection> {
    let json_patch = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json-patch+json"));
    if !json_patch {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "patch_format_unsupported",
            "only JSON Patch is accepted in patient context",
        ));
    }
    let ops = strict_body(body)?;
    let Value::Array(ops) = ops else {
        return Err(Rejection::bad_request(
            "fhir_invalid",
            "malformed JSON Patch",
        ));
    };
    // Values the patch adds may not carry references to another patient, wherever they go.
    let values = Value::Array(
        ops.iter()
            .filter_map(|op| op.get("value"))
            .cloned()
            .collect(),
    );
    if !written_resource_ok(&values, pid, bases, &UrnTargets::new()) {
        return Err(denied(
            "patient_mismatch",
            "the patch would add a reference to another patient",
        ));
    }
    let rtype = f.resource_type.unwrap_or("");
    let guarded: Vec<&str> = match crate::fhir::patient_compartment(rtype) {
        Some(ps) => ps
            .iter()
            .flat_map(|(_, paths)| paths.iter().map(|p| p.split('.').next().unwrap_or(p)))
            .collect(),
        None => vec!["link"],
    };
    for op in &ops {
        for key in ["path", "from"] {
            let Some(path) = op.get(key).and_then(Value::as_str) else {
                continue;
            };
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            if first.is_empty()
                || first == "resourceType"
                || first == "id"
                || guarded.contains(&first)
            {
                return Err(denied(
                    "patient_mismatch",
                    "the patch would change what ties the resource to its patient",
                ));
            }
        }
    }
    Ok(())
}

/// Is this request authorized through patient-level scopes (rather than user/system)?
fn patient_scoped(claims: &Claims, f: &FhirRequest) -> bool {
    let Some(perm) = scopes::needed(f.interaction) else {
        return false;
    };
    let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
    let rtype = f.resource_type.unwrap_or("*");
    !scopes
        .iter()
        .any(|s| s.context != ScopeContext::Patient && s.grants(rtype, perm, &f.params))
}

/// Parse a request body the guard decides on: duplicate member names are refused (the
/// upstream might read the other one).
fn strict_body(body: &[u8]) -> Result<Value, Rejection> {
    strict_json::from_slice(body).map_err(|e| match e {
        StrictError::Duplicate => Rejection::bad_request(
            "fhir_invalid",
            "the body repeats a member name inside an object",
        ),
        StrictError::Malformed => {
            Rejection::bad_request("fhir_invalid", "the body is not a FHIR JSON resource")
        }
    })
}

/// Rewrite absolute references on this server's bases to their relative form, so that
/// the checks below and the upstream read the same thing. Returns whether anything changed.
fn localize_references(v: &mut Value, bases: &Bases) -> bool {
    match v {
        Value::Object(m) => {
            let mut changed = false;
            if let Some(Value::String(r)) = m.get_mut("reference") {
                if r.contains("://") {
                    if let Some(rel) = bases.localize(r).filter(|rel| *rel != r.as_str()) {
                        *r = rel.to_owned();
                        changed = true;
                    }
                }
            }
            for x in m.values_mut() {
                changed |= localize_references(x, bases);
            }
            changed
        }
        Value::Array(a) => {
            // Every item is rewritten (no short-circuit).
            let mut changed = false;
            for x in a.iter_mut() {
                changed |= localize_references(x, bases);
            }
            changed
        }
        _ => false,
    }
}

/// A patient-context create or update: the resource matches the URL, belongs to the
/// token's patient, and no reference anywhere in it can resolve to another patient.
/// `v` may be rewritten (local absolute references made relative): returns whether it was.
fn check_write(
    f: &FhirRequest,
    v: &mut Value,
    pid: &str,
    bases: &Bases,
    urns: &UrnTargets,
) -> Result<bool, Rejection> {
    let mismatch = || {
        denied(
            "patient_mismatch",
            "the resource belongs to another patient",
        )
    };
    let rt = v
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let rt = rt.as_deref();
    if rt != f.resource_type {
        return Err(Rejection::bad_request(
            "fhir_type_mismatch",
            "resourceType does not match the URL",
        ));
    }
    if f.interaction == Interaction::Update
        && v.get("id").and_then(Value::as_str) != f.id.as_deref()
    {
        return Err(Rejection::bad_request(
            "fhir_id_mismatch",
            "resource id does not match the URL",
        ));
    }
    let changed = localize_references(v, bases);
    if rt == Some("Patient") {
        // A patient-context token creates no patients and updates only its own.
        if f.interaction == Interaction::Create || f.id.as_deref() != Some(pid) {
            return Err(mismatch());
        }
    } else if !owned_by(v, pid) {
        return Err(mismatch());
    }
    // Whichever path a reference sits on (`link.other`, `focus`, extensions, contained
    // resources): it may not lead to another patient.
    if !written_resource_ok(v, pid, bases, urns) {
        return Err(mismatch());
    }
    // The compartment elements may not point at another server at all: the upstream
    // would not count such a record as anyone's, and another server's "Patient/a" is
    // someone else.
    if compartment_references(v)
        .iter()
        .any(|r| bases.localize(r).is_none())
    {
        return Err(mismatch());
    }
    Ok(changed)
}

async fn check_response(
    a: &Inner,
    resp: Response<Body>,
    pid: &str,
    bundle: bool,
    hide: bool,
    links: Option<&LinkBase>,
    scope: Option<(&Grants<'_>, ScopeMode)>,
) -> Result<Response<Body>, Rejection> {
    let status = resp.status();
    if status == StatusCode::NOT_FOUND
        || status == StatusCode::GONE
        || (!bundle && !status.is_success())
    {
        // Same answer as a resource of another patient: on reads, no other status may
        // tell an existing record of someone else apart from a missing one.
        return Err(hidden());
    }
    if !status.is_success() {
        return Ok(resp);
    }
    // An answer that cannot be checked is hidden like a missing record on reads (a 502
    // would tell existence apart), and refused on searches.
    let unverifiable = || {
        if bundle {
            Rejection::new(
                StatusCode::BAD_GATEWAY,
                "response_unverifiable",
                "the upstream's answer could not be checked",
            )
        } else {
            hidden()
        }
    };
    let (mut parts, bytes, mut v) = match json_answer(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    let changed = if hide {
        filter_bundle(&mut v, pid, BundleMode::Fail).map_err(|_| hidden())?
    } else if bundle || v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        filter_bundle(&mut v, pid, a.cfg.bundle_mode)?
    } else if in_patient_compartment(&v, pid) {
        false
    } else {
        return Err(hidden());
    };
    // Then the scopes: what is left must be of types the token may receive.
    let changed = match scope {
        Some((g, mode)) => {
            g.filter(&mut v, mode == ScopeMode::Refuse).map_err(|_| {
                if hide {
                    hidden()
                } else {
                    scope_refused()
                }
            })? || changed
        }
        None => changed,
    };
    // Paging links point at the upstream; pointed back at the gateway, every next page
    // goes through this guard too.
    let changed = match links {
        Some(l) if bundle => l.rewrite(&mut v) || changed,
        _ => changed,
    };
    let out = if changed {
        Bytes::from(v.to_string())
    } else {
        bytes
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    if changed {
        parts.headers.remove(ETAG);
    }
    Ok(Response::from_parts(parts, full(out)))
}

/// Read an upstream answer that is to be checked: identity-encoded JSON within the buffer
/// cap. `Err(None)`: it cannot be checked (the caller decides how that looks);
/// `Err(Some(_))`: a definite refusal (too large, unreadable).
async fn json_answer(
    a: &Inner,
    resp: Response<Body>,
) -> Result<(http::response::Parts, Bytes, Value), Option<Rejection>> {
    let (parts, body) = resp.into_parts();
    if parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return Err(None);
    }
    let bytes = read_limited(body, a.cfg.max_buffer_bytes)
        .await
        .map_err(Some)?;
    let v = match strict_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(StrictError::Duplicate) => return Err(Some(duplicate_members())),
        Err(StrictError::Malformed) => return Err(None),
    };
    Ok((parts, bytes, v))
}

/// An upstream answer with a repeated member name: refused with the code DLP gives the
/// same body (`dlp_unscannable`), so operators see one signal for one cause.
fn duplicate_members() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "dlp_unscannable",
        "the upstream response could not be checked",
    )
}

/// The permission every resource in an interaction's answer needs; `None` for answers
/// that carry no resources of the server's choosing (writes echo what the client sent,
/// capabilities describe the server; batches are judged per entry).
fn response_perm(i: Interaction) -> Option<Perm> {
    use Interaction::*;
    match i {
        Read | Vread | HistoryInstance => Some(Perm::Read),
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => {
            Some(Perm::Search)
        }
        OperationSystem | OperationType | OperationInstance => Some(Perm::Read),
        Capabilities | Create | Update | Patch | Delete | BatchOrTransaction => None,
    }
}

/// A batch body authorized: what to forward, and per entry what to check in the answer.
type BundleAuth = (Option<Bytes>, Vec<EntryCheck>, Vec<EntryScope>);

/// Scope information for one batch entry's result.
struct EntryScope {
    perm: Option<Perm>,
    resource_type: Option<&'static str>,
    params: Vec<SearchParam>,
}

fn scope_refused() -> Rejection {
    insufficient_scope()
}

/// An answer outside the patient compartment guard: read it whole (duplicate member names
/// refused) and, when the scopes do not grant every type, remove or refuse what they do
/// not cover.
async fn check_scoped(
    a: &Inner,
    resp: Response<Body>,
    grants: Option<&Grants<'_>>,
    mode: ScopeMode,
) -> Result<Response<Body>, Rejection> {
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    let Some(g) = grants else {
        if !json {
            return Ok(resp);
        }
        // Only the duplicate rule applies: anything else passes as it came.
        let (mut parts, body) = resp.into_parts();
        if parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity")
        {
            return Err(unverifiable());
        }
        let bytes = read_limited(body, a.cfg.max_buffer_bytes).await?;
        if !bytes.is_empty() && strict_json::from_slice(&bytes) == Err(StrictError::Duplicate) {
            return Err(duplicate_members());
        }
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    let (mut parts, bytes, mut v) = match json_answer(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    let changed = g
        .filter(&mut v, mode == ScopeMode::Refuse)
        .map_err(|_| scope_refused())?;
    let out = if changed {
        Bytes::from(v.to_string())
    } else {
        bytes
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    if changed {
        parts.headers.remove(ETAG);
    }
    Ok(Response::from_parts(parts, full(out)))
}

/// Where the client reached this route, to point a Bundle's paging links back at it.
struct LinkBase {
    /// `https://host:port/prefix` as the client addressed the gateway.
    gateway: String,
    /// The upstream's base path for this route (the rewrite prefix, or the route prefix).
    upstream_path: String,
}

impl LinkBase {
    fn from_parts(parts: &http::request::Parts) -> Option<LinkBase> {
        let ctx = parts.extensions.get::<crate::context::RequestContext>()?;
        let route = parts.extensions.get::<crate::context::RouteId>()?;
        let scheme = if ctx.tls { "https" } else { "http" };
        let prefix = route.0.path_prefix.trim_end_matches('/');
        let upstream = route
            .0
            .rewrite_prefix
            .as_deref()
            .unwrap_or(&route.0.path_prefix);
        Some(LinkBase {
            gateway: format!("{scheme}://{}{prefix}", ctx.host),
            upstream_path: upstream.trim_end_matches('/').to_owned(),
        })
    }

    /// Rewrite `Bundle.link[].url` from the upstream's base to the gateway's. A link outside
    /// the upstream's base is dropped (it could only lead around the gateway).
    fn rewrite(&self, v: &mut Value) -> bool {
        let Some(links) = v.get_mut("link").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = links.len();
        let mut changed = false;
        links.retain_mut(|l| {
            let Some(url) = l.get("url").and_then(Value::as_str) else {
                return false;
            };
            // Path and query after the authority (absolute), or the URL itself (relative).
            let path = match url.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
                None => url,
            };
            let Some(rest) = path.strip_prefix(self.upstream_path.as_str()) else {
                return false;
            };
            if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
                return false;
            }
            l["url"] = Value::from(format!("{}{rest}", self.gateway));
            changed = true;
            true
        });
        changed || links.len() != before
    }
}

/// What to verify in the batch response for one request entry.
enum EntryCheck {
    None,
    Result {
        patient: String,
        bundle: bool,
        hide: bool,
    },
}

/// Check the results of read/search entries inside a batch/transaction response. A read of
/// another patient's resource becomes the entry a missing resource gets; search results are
/// filtered like any search.
async fn check_batch_response(
    a: &Inner,
    resp: Response<Body>,
    checks: &[EntryCheck],
    grants: &[Option<Grants<'_>>],
    mode: ScopeMode,
) -> Result<Response<Body>, Rejection> {
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (mut parts, _, mut v) = match json_answer(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    let entries = v
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .ok_or_else(unverifiable)?;
    if entries.len() != checks.len() || entries.len() != grants.len() {
        return Err(unverifiable());
    }
    let not_found = || serde_json::json!({"response": {"status": "404 Not Found"}});
    let forbidden = || serde_json::json!({"response": {"status": "403 Forbidden"}});
    for ((e, c), g) in entries.iter_mut().zip(checks).zip(grants) {
        // The scopes first, for every entry with a result: what a read or search entry
        // answered must be of granted types.
        if let (Some(g), Some(r)) = (g, e.get_mut("resource")) {
            if g.filter(r, mode == ScopeMode::Refuse).is_err() {
                if mode == ScopeMode::Refuse {
                    return Err(scope_refused());
                }
                *e = forbidden();
                continue;
            }
        }
        let EntryCheck::Result {
            patient,
            bundle,
            hide,
        } = c
        else {
            continue;
        };
        let Some(r) = e.get_mut("resource") else {
            continue;
        };
        let is_bundle = r.get("resourceType").and_then(Value::as_str) == Some("Bundle");
        if *hide && is_bundle {
            if filter_bundle(r, patient, BundleMode::Fail).is_err() {
                *e = not_found();
            }
        } else if *bundle || is_bundle {
            filter_bundle(r, patient, a.cfg.bundle_mode)?;
        } else if !in_patient_compartment(r, patient) {
            *e = not_found();
        }
    }
    let out = Bytes::from(v.to_string());
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    parts.headers.remove(ETAG);
    Ok(Response::from_parts(parts, full(out)))
}

/// Keep only entries of this patient (OperationOutcome entries of a search stay). Returns
/// whether the Bundle changed.
fn filter_bundle(v: &mut Value, pid: &str, mode: BundleMode) -> Result<bool, Rejection> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        ));
    }
    let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(false);
    };
    let before = entries.len();
    let keep = |e: &Value| match e.get("resource") {
        Some(r) if r.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") => {
            true
        }
        Some(r) => in_patient_compartment(r, pid),
        // History entries of deletions carry no resource: nothing to leak.
        None => e.get("request").is_some(),
    };
    if mode == BundleMode::Fail && !entries.iter().all(keep) {
        return Err(denied(
            "patient_mismatch",
            "the response contains another patient's data",
        ));
    }
    // `total` counts matches only (FHIR R4 3.1.1.4.2): removed includes do not lower it.
    let is_match = |e: &Value| {
        !matches!(
            e.get("search")
                .and_then(|s| s.get("mode"))
                .and_then(Value::as_str),
            Some("include" | "outcome")
        )
    };
    let removed_matches = entries.iter().filter(|e| !keep(e) && is_match(e)).count();
    entries.retain(keep);
    let removed = before - entries.len();
    if removed_matches > 0 {
        if let Some(t) = v.get_mut("total").and_then(|t| t.as_u64().map(|n| (t, n))) {
            *t.0 = Value::from(t.1.saturating_sub(removed_matches as u64));
        }
    }
    Ok(removed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundle_filtering() {
        let mut b = json!({"resourceType": "Bundle", "type": "searchset", "total": 3, "entry": [
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/a"}}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/b"}}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
        ]});
        assert!(filter_bundle(&mut b.clone(), "a", BundleMode::Fail).is_err());
        assert!(filter_bundle(&mut b, "a", BundleMode::Filter).unwrap());
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
        assert_eq!(b["total"], 2);
    }

    #[test]
    fn break_glass_entitlement_by_scope_or_claim() {
        let claims = |scopes: &[&str], raw: serde_json::Value| Claims {
            provider: Arc::from("p"),
            iss: "i".into(),
            sub: "s".into(),
            client_id: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            patient: None,
            exp: 0,
            cnf_x5t: None,
            cnf_present: false,
            raw: raw.as_object().cloned().unwrap_or_default(),
        };
        let by_scope: BreakGlassConfig =
            serde_json::from_value(json!({"scope": "emergency-access"})).unwrap();
        let by_claim: BreakGlassConfig =
            serde_json::from_value(json!({"claim": {"name": "role", "value": "emergency-access"}}))
                .unwrap();
        assert!(by_scope.entitled(&claims(&["patient/*.read", "emergency-access"], json!({}))));
        assert!(!by_scope.entitled(&claims(&["patient/*.read"], json!({}))));
        assert!(by_claim.entitled(&claims(&[], json!({"role": "emergency-access"}))));
        assert!(by_claim.entitled(&claims(
            &[],
            json!({"role": ["clinician", "emergency-access"]})
        )));
        assert!(!by_claim.entitled(&claims(&[], json!({"role": ["clinician"]}))));
        assert!(!by_claim.entitled(&claims(&["emergency-access"], json!({"role": "x"}))));
    }

    #[test]
    fn query_encoding_round_trips() {
        let ps = parse_params(
            "subject=Patient%2Fa&code=http%3A%2F%2Floinc.org%7C1234-5&name:exact=A%20B",
        )
        .unwrap();
        assert_eq!(parse_params(&encode_params(&ps)).unwrap(), ps);
    }
}
