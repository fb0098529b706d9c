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

use crate::audit::{AuditLog, HttpRecord};
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
    record: Option<HttpRecord>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            add_claims(&mut r, &self.slot);
            r.decision = "cancelled";
            r.status = 499;
            self.log.record_detached(r);
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

/// Who the token said the caller is, if a token was verified; and what DLP found.
fn add_claims(r: &mut HttpRecord, slot: &AuditSlot) {
    r.dlp_findings = slot.take_dlp();
    r.break_glass_reason = slot.break_glass();
    r.claims = slot.claims();
}

/// The request's part of the record (before it is handed on): shared handles to the
/// request's extensions, which the audit writer formats off the request path.
fn request_record(req: &Request<Body>) -> HttpRecord {
    let mut r = HttpRecord::new(rfc3339_now(), req.method().clone());
    let ext = req.extensions();
    if let Some(c) = ext.get::<RequestContext>() {
        r.request_id = Some(c.request_id.clone());
        r.listener = Some(c.listener.clone());
        r.client_ip = Some(c.client_ip);
    }
    r.route = ext.get::<RouteId>().map(|id| id.0.name.clone());
    r.identity = ext.get::<Arc<ClientIdentity>>().cloned();
    if let Some(f) = ext.get::<Arc<FhirRequest>>() {
        r.fhir = Some(f.clone());
        // The raw request target, for the AuditEvent's base64 `entity.query` (BALP); the
        // writer never puts it in the line.
        r.query = req.uri().path_and_query().cloned();
    }
    r
}

impl Policy for Audit {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let log = self.log.clone();
        if !log.accepting() {
            return Box::pin(std::future::ready(Err(crate::audit::unavailable())));
        }
        let slot = AuditSlot::default();
        req.extensions_mut().insert(slot.clone());
        let record = request_record(&req);
        let next = next.later();
        Box::pin(async move {
            // If the client goes away mid-request the future is dropped here, possibly
            // after the upstream acted: the guard still records the request.
            let mut guard = Unfinished {
                log: log.clone(),
                slot: slot.clone(),
                record: Some(record),
            };
            let result = next.run(req).await;
            let Some(mut record) = guard.record.take() else {
                // Not reachable (the record is only taken here); fail closed regardless.
                return Err(crate::audit::unavailable());
            };
            add_claims(&mut record, &slot);
            match &result {
                Ok(resp) => {
                    record.decision = "allow";
                    record.status = resp.status().as_u16();
                    record.upstream_status = Some(resp.status().as_u16());
                }
                Err(rej) => {
                    // Refused by a policy, or failed at the upstream (5xx).
                    record.decision = if rej.status.is_server_error() {
                        "error"
                    } else {
                        "refuse"
                    };
                    record.status = rej.status.as_u16();
                    record.code = Some(rej.code);
                }
            }
            // With fsync durability the answer waits for its record.
            log.record(record).await?;
            result
        })
    }
}
