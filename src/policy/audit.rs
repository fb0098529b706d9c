//! `audit` policy: one audit record (`audit.rs`) per request on the route, whatever the
//! outcome — allowed and answered by the upstream, or refused by any policy.
//!
//! It is the outermost layer of the route stack so that it sees every decision. Inner
//! layers only know some facts (the verified token, the upstream status); they leave them
//! in an [`AuditSlot`] the request carries. If the trail is down or full (with
//! `when_full: fail`), the request is refused before it reaches any policy or the
//! upstream: an audited route never serves a request it could not record.

use std::sync::Arc;

use http::Request;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::audit::AuditLog;
use crate::context::{RequestContext, RouteId};
use crate::fhir::request::FhirRequest;
use crate::identity::ClientIdentity;
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::Body;

pub use crate::context::AuditSlot;
pub use crate::dlp::counts_json as dlp_counts;

/// Records a request whose future was dropped before it finished (client gone, stream
/// reset, shutdown grace over) as `cancelled`.
struct Unfinished {
    log: AuditLog,
    slot: AuditSlot,
    fields: Option<Map<String, Value>>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut f) = self.fields.take() {
            add_claims(&mut f, &self.slot);
            f.insert("decision".into(), Value::String("cancelled".into()));
            f.insert("status".into(), Value::from(499));
            self.log.record_detached(f);
        }
    }
}

/// The `audit` section of a policy file: present = the route's requests are audited (the
/// trail itself is configured once, at the top level: `audit:` in the main config).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditPolicyConfig {}

/// The compiled policy: the gateway's one audit trail.
pub struct Audit {
    log: AuditLog,
}

impl FromConfig for Audit {
    type Config = AuditPolicyConfig;
    fn from_config(_: &AuditPolicyConfig, b: &mut Build<'_>) -> Result<Self, String> {
        let log = b
            .engines
            .audit
            .clone()
            .ok_or("audit: the config has no top-level `audit:`")?;
        Ok(Audit::new(log))
    }
}

impl Audit {
    pub fn new(log: AuditLog) -> Self {
        Audit { log }
    }
}

pub use crate::calendar::rfc3339_now;

fn put(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
}

/// Who the token said the caller is, if a token was verified; and what DLP found.
fn add_claims(fields: &mut Map<String, Value>, slot: &AuditSlot) {
    if let Some(d) = slot.dlp() {
        fields.insert("dlp_findings".into(), d);
    }
    if let Some(reason) = slot.break_glass() {
        fields.insert("break_glass".into(), Value::Bool(true));
        fields.insert("break_glass_reason".into(), Value::String(reason));
    }
    if let Some(c) = slot.claims() {
        put(fields, "iss", Some(&c.iss));
        put(fields, "sub", Some(&c.sub));
        put(fields, "client_id", c.client_id.as_deref());
        put(fields, "patient", c.patient.as_deref());
    }
}

/// The request's part of the record (before it is handed on).
fn request_fields(req: &Request<Body>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("time".into(), Value::String(rfc3339_now()));
    m.insert("kind".into(), Value::String("http".into()));
    let ext = req.extensions();
    if let Some(c) = ext.get::<RequestContext>() {
        put(&mut m, "request_id", c.request_id.to_str().ok());
        put(&mut m, "listener", Some(&c.listener));
        m.insert("client_ip".into(), Value::String(c.client_ip.to_string()));
    }
    if let Some(r) = ext.get::<RouteId>() {
        put(&mut m, "route", Some(&r.0.name));
    }
    m.insert(
        "method".into(),
        Value::String(req.method().as_str().to_owned()),
    );
    if let Some(id) = ext.get::<Arc<ClientIdentity>>() {
        put(&mut m, "cert_subject", Some(&id.subject));
        put(&mut m, "cert_sha256", Some(&id.x5t_s256));
    }
    if let Some(f) = ext.get::<Arc<FhirRequest>>() {
        put(&mut m, "fhir_interaction", Some(f.interaction.label()));
        put(&mut m, "resource_type", f.resource_type);
        put(&mut m, "resource_id", f.id.as_deref());
        if let Some(op) = &f.operation {
            put(&mut m, "operation", Some(op));
        }
        if let Some((t, id)) = &f.compartment {
            put(&mut m, "compartment", Some(&format!("{t}/{id}")));
        }
        // The raw request target, for the AuditEvent's base64 `entity.query` (BALP); the
        // writer takes it out before the line is sealed, so it is never in clear.
        if let Some(pq) = req.uri().path_and_query() {
            put(&mut m, crate::audit::QUERY_FIELD, Some(pq.as_str()));
        }
    }
    m
}

impl Policy for Audit {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let log = self.log.clone();
        if !log.accepting() {
            return Box::pin(std::future::ready(Err(crate::audit::unavailable())));
        }
        let slot = AuditSlot::default();
        req.extensions_mut().insert(slot.clone());
        let fields = request_fields(&req);
        let next = next.later();
        Box::pin(async move {
            // If the client goes away mid-request the future is dropped here, possibly
            // after the upstream acted: the guard still records the request.
            let mut guard = Unfinished {
                log: log.clone(),
                slot: slot.clone(),
                fields: Some(fields),
            };
            let result = next.run(req).await;
            let mut fields = guard.fields.take().unwrap_or_default();
            add_claims(&mut fields, &slot);
            match &result {
                Ok(resp) => {
                    fields.insert("decision".into(), Value::String("allow".into()));
                    fields.insert("status".into(), Value::from(resp.status().as_u16()));
                    fields.insert(
                        "upstream_status".into(),
                        Value::from(resp.status().as_u16()),
                    );
                }
                Err(rej) => {
                    // Refused by a policy, or failed at the upstream (5xx).
                    let decision = if rej.status.is_server_error() {
                        "error"
                    } else {
                        "refuse"
                    };
                    fields.insert("decision".into(), Value::String(decision.into()));
                    fields.insert("status".into(), Value::from(rej.status.as_u16()));
                    fields.insert("code".into(), Value::String(rej.code.to_owned()));
                }
            }
            // With fsync durability the answer waits for its record.
            log.record(fields).await?;
            result
        })
    }
}
