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
//!
//! Bulk data export (`$export`, and Ward's own status and file URLs) is decided in
//! `bulk.rs`, with `bulk_export` configured.

use std::sync::Arc;

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
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
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
    /// SMART scope levels this route accepts (default: all three). `[system]` makes a
    /// server-to-server route (SMART Backend Services): a token is refused there
    /// (`scope_level_denied`) if it carries a `patient/` or `user/` resource scope, a
    /// patient launch context or a `fhirUser` claim, or no `system/` resource scope at all.
    #[serde(default)]
    pub allowed_scope_levels: Option<Vec<ScopeLevel>>,
    /// Bulk data export (`$export`, its status and file URLs); refused when absent.
    #[serde(default)]
    pub bulk_export: Option<BulkExportConfig>,
}

/// The context part of a SMART resource scope (`patient/`, `user/`, `system/`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScopeLevel {
    Patient,
    User,
    System,
}

impl ScopeLevel {
    fn of(c: ScopeContext) -> ScopeLevel {
        match c {
            ScopeContext::Patient => ScopeLevel::Patient,
            ScopeContext::User => ScopeLevel::User,
            ScopeContext::System => ScopeLevel::System,
        }
    }
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
        if let Some(levels) = &self.allowed_scope_levels {
            if levels.is_empty() {
                out.push((
                    "allowed_scope_levels",
                    "list at least one of patient, user, system (or leave it out)".into(),
                ));
            }
            if levels
                .iter()
                .enumerate()
                .any(|(i, l)| levels[..i].contains(l))
            {
                out.push(("allowed_scope_levels", "lists a level twice".into()));
            }
        }
        if let Some(b) = &self.bulk_export {
            out.extend(b.problems());
        }
        if self
            .allowed_operations
            .iter()
            .any(|o| o.to_ascii_lowercase().starts_with("export"))
        {
            out.push((
                "allowed_operations",
                "bulk export is configured with `bulk_export`, not as an operation".into(),
            ));
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

/// The compiled policy.
pub struct FhirAuthz {
    cfg: FhirAuthzConfig,
    metrics: Arc<Metrics>,
    /// The upstream's `scheme://authority` (and its URL's own path, if any): references
    /// under it mean "this server".
    upstream_origin: Option<String>,
    upstream_url: Option<String>,
    /// Break-glass uses per identity per day.
    break_glass_limit: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// Bulk-export status and file URLs handed out (with `bulk_export`).
    bulk: Option<bulk::Jobs>,
    /// The route's `upstream_aliases`: other bases the upstream names itself by.
    aliases: Vec<String>,
    /// Answers lexed into their shared index (`ward_json_lex_total{direction="response"}`),
    /// looked up once rather than per answer.
    lexed_answers: prometheus::IntCounter,
}

impl FromConfig for FhirAuthz {
    type Config = FhirAuthzConfig;
    fn from_config(cfg: &FhirAuthzConfig, b: &mut Build<'_>) -> Result<Self, String> {
        if cfg.break_glass.is_some() {
            // The route's break-glass counter exists (at 0) before its first use.
            b.metrics.break_glass.with_label_values(&[b.route]);
        }
        Ok(
            FhirAuthz::for_upstream(cfg, b.metrics.clone(), b.upstream_url)?
                .with_aliases(b.upstream_aliases),
        )
    }
}

impl FhirAuthz {
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
        Ok(FhirAuthz {
            cfg: cfg.clone(),
            upstream_origin: None,
            upstream_url: None,
            break_glass_limit,
            bulk: cfg.bulk_export.as_ref().map(bulk::Jobs::new),
            aliases: Vec::new(),
            lexed_answers: metrics.json_lex.with_label_values(&["response"]),
            metrics,
        })
    }

    /// The route's upstream URL: absolute references to it are this server's own.
    pub fn for_upstream(
        cfg: &FhirAuthzConfig,
        metrics: Arc<Metrics>,
        url: &str,
    ) -> Result<Self, String> {
        let mut inner = Self::new(cfg, metrics)?;
        inner.upstream_origin = url.split_once("://").map(|(scheme, rest)| {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{authority}")
        });
        inner.upstream_url = Some(url.trim_end_matches('/').to_owned());
        Ok(inner)
    }

    /// The route's `upstream_aliases` (bulk-export status and file URLs may name them).
    pub fn with_aliases(mut self, aliases: &[String]) -> Self {
        self.aliases = aliases
            .iter()
            .map(|a| a.trim_end_matches('/').to_owned())
            .collect();
        self
    }
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

impl FhirAuthz {
    /// The bases under which an absolute reference means this server: the route as the
    /// client addressed it, and the upstream (its origin with the route's upstream path,
    /// and its configured URL).
    fn bases(&self, link: Option<&LinkBase>) -> Bases {
        let mut v = Vec::new();
        if let Some(l) = link {
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
        // A search reads one patient's record only when exactly one plain `patient` or
        // `subject` (`_id` on Patient) names one patient, and nothing widens the answer:
        // no modifier (`patient:missing=false` matches everyone), no include, `_has`,
        // chain, `_filter` or `_query`, and no second patient parameter.
        let rtype = f.resource_type.unwrap_or("");
        let namers: Vec<_> = f
            .params
            .iter()
            .filter(|p| {
                let base = p.name.split(':').next().unwrap_or("");
                let base = base.split('.').next().unwrap_or(base);
                matches!(base, "patient" | "subject") || (base == "_id" && rtype == "Patient")
            })
            .collect();
        let widens = f.params.iter().any(|p| {
            let n = p.name.as_str();
            n.starts_with("_include")
                || n.starts_with("_revinclude")
                || n.starts_with("_has")
                || n.contains('.')
                || p.chain.is_some()
                || matches!(n, "_filter" | "_query" | "_contained" | "_containedType")
        });
        let names_patient = !widens
            && namers.len() == 1
            && matches!(namers[0].name.as_str(), "patient" | "subject" | "_id")
            // A modifier changes what the value means: `:missing`, `:not`, `:above`…
            // (`:Patient` only states the target type).
            && namers[0].modifier.as_deref().is_none_or(|m| m == "Patient")
            && namers[0].chain.is_none()
            && !namers[0].value.is_empty()
            && !namers[0].value.contains(',');
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

    /// `allowed_scope_levels`: the token's resource scopes must all be of a level this
    /// route accepts, and at least one must be. A mixed token is refused rather than cut
    /// down, so a patient-facing app never reaches a system-only route with whatever
    /// `system/` scope it also holds. Without `patient`, a launch-context patient is refused
    /// too (it is a patient-facing token whatever its scopes); without `user`, so is a
    /// `fhirUser` claim (a person is signed in).
    fn scope_levels(&self, claims: &Claims) -> Result<(), Rejection> {
        let Some(allowed) = &self.cfg.allowed_scope_levels else {
            return Ok(());
        };
        let refuse = || {
            denied(
                "scope_level_denied",
                "this route does not accept tokens of this scope level",
            )
        };
        let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
        let mut any = false;
        for s in &scopes {
            if !allowed.contains(&ScopeLevel::of(s.context)) {
                return Err(refuse());
            }
            any = true;
        }
        // Resource scopes that did not parse grant nothing, but they still say which kind
        // of client this is.
        for s in &claims.scopes {
            let level = match s.split_once('/').map(|(l, _)| l) {
                Some("patient") => ScopeLevel::Patient,
                Some("user") => ScopeLevel::User,
                _ => continue,
            };
            if !allowed.contains(&level) {
                return Err(refuse());
            }
        }
        if !any {
            return Err(refuse());
        }
        if !allowed.contains(&ScopeLevel::Patient)
            && claims.raw.contains_key(&self.cfg.patient_claim)
        {
            return Err(refuse());
        }
        if !allowed.contains(&ScopeLevel::User) && claims.raw.contains_key("fhirUser") {
            return Err(refuse());
        }
        Ok(())
    }

    fn decide(
        &self,
        f: &FhirRequest,
        claims: &Claims,
        scopes: &[Scope],
        params: &mut Vec<SearchParam>,
        break_glass: bool,
        bases: &Bases,
    ) -> Result<Plan, Rejection> {
        use Interaction::*;
        if matches!(f.interaction, Capabilities | SmartConfiguration) {
            return Ok(Plan::Pass);
        }
        // Search-parameter firewall and `_count` cap apply to everyone.
        self.firewall(params)?;
        // Whatever the context: `_include`, `_revinclude`, `_has` and chains may only name
        // types the token may search (the response is filtered too; this refuses early and
        // stops chains, whose results never show the chained type).
        named_types_granted(scopes, f.resource_type, params)?;
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
        let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
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
            let plan = self.decide(&er, claims, &scopes, &mut params, false, bases)?;
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

/// A discovery read `auth` let through without a token (`anonymous_discovery`): nothing to
/// authorize (no claims, no patient data). Checked again here so a marker on any other
/// request is worthless.
fn anonymous_discovery(req: &Request<Body>) -> bool {
    req.extensions()
        .get::<crate::context::AnonymousDiscovery>()
        .is_some()
        && crate::fhir::discovery::discovery_target(req)
}

/// Read a whole body up to `max` bytes. Boxed with an explicit `'static` type for the same
/// rustc lifetime-inference reason as `policy::call_next`.
fn read_limited(body: Body, max: usize) -> BytesFuture {
    Box::pin(async move {
        match crate::body::gather(body, max).await {
            Ok(crate::body::Gathered::Whole(b)) => Ok(b),
            Ok(crate::body::Gathered::Over { .. }) => Err(Rejection::new(
                StatusCode::BAD_GATEWAY,
                "response_too_large",
                "response too large to authorize",
            )),
            Err(_) => Err(Rejection::upstream_error()),
        }
    })
}

impl Policy for FhirAuthz {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let a = self.clone();
        let inner = next.later().into_inner();
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
                if anonymous_discovery(&req) {
                    return crate::service::call_next(inner, req).await;
                }
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

/// The guard's check of one answer, decided with the request. It travels down in the
/// request's extensions to [`AnswerGuard`], which applies it to the upstream's answer
/// before DLP or anything else rewrites it; if nothing below took it, `fhir_authz` applies
/// it itself. Either way it runs exactly once.
#[derive(Clone)]
pub(crate) struct AnswerCheck(Arc<std::sync::Mutex<Option<CheckFn>>>);

type CheckFn = Box<
    dyn FnOnce(
            Response<Body>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<Body>, Rejection>> + Send>,
        > + Send,
>;

impl AnswerCheck {
    fn new(f: CheckFn) -> Self {
        AnswerCheck(Arc::new(std::sync::Mutex::new(Some(f))))
    }

    /// Check `resp`, unless the check was already applied (then `resp` is its result).
    async fn apply(&self, resp: Response<Body>) -> Result<Response<Body>, Rejection> {
        // A poisoned lock cannot leave the check unapplied: fail closed.
        let f = self.0.lock().map_err(|_| Rejection::internal())?.take();
        match f {
            Some(f) => f(resp).await,
            None => Ok(resp),
        }
    }
}

/// The answer side of `fhir_authz`, placed right above the proxy (below validation and
/// DLP): applies the request's [`AnswerCheck`] to the upstream's answer as it arrives, so
/// the guard judges what the EHR sent (not a redacted copy) and DLP reuses its index.
#[derive(Debug, Default)]
pub struct AnswerGuard;

impl Policy for AnswerGuard {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let Some(check) = req.extensions_mut().remove::<AnswerCheck>() else {
            return next.run(req);
        };
        let fut = next.run(req);
        Box::pin(async move { check.apply(fut.await?).await })
    }
}

mod authorize;
mod bulk;
#[cfg(test)]
mod differential;
mod response;
#[cfg(test)]
mod tests;
mod writes;

use authorize::*;
use response::*;
use writes::*;

pub use bulk::BulkExportConfig;

/// For benches: the compartment guard's check of one read (`bundle: false`) or search
/// (`true`) answer for patient `pid` (no scopes, no paging links). `true`: it passes.
#[doc(hidden)]
pub fn bench_check_answer(body: &[u8], pid: &str, bundle: bool) -> bool {
    let check = BodyCheck {
        pid,
        bundle,
        hide: false,
        mode: BundleMode::Filter,
        links: None,
        scope: None,
    };
    check.run(body).is_ok()
}

/// [`bench_check_answer`] on a `serde_json::Value` tree (the check before issue #16), so a
/// bench compares both in the same minutes.
#[doc(hidden)]
pub fn bench_check_answer_tree(body: &[u8], pid: &str, bundle: bool) -> bool {
    let check = BodyCheck {
        pid,
        bundle,
        hide: false,
        mode: BundleMode::Filter,
        links: None,
        scope: None,
    };
    check.run_tree(body).is_ok()
}
