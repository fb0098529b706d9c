//! Prometheus metric families, registered once and handed to the parts that update them.
//!
//! Labels are bounded by construction: listener, route and upstream names come from the
//! config, methods are folded to a fixed set, statuses to classes, errors to fixed codes.
//! Never a raw path, host, subject or id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_up: IntGaugeVec,
    pub rejections: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub connections: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub idle_releases: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub bytes: IntCounterVec,
    pub config_loaded: IntGaugeVec,
    pub tls_reloads: IntCounterVec,
    pub cert_expiry_days: IntGaugeVec,
    pub authn: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub introspection_calls: IntCounterVec,
    pub introspection_cache_hits: IntCounterVec,
    pub introspection_failures: IntCounterVec,
    pub fhir_authz: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_keys: IntGaugeVec,
    pub rate_limit_overflow: IntCounterVec,
    pub rate_limit_fallback: IntCounterVec,
    pub rate_limit_backend_errors: IntCounterVec,
    pub upstream_shed: IntCounterVec,
    pub upstream_inflight: IntGaugeVec,
    pub validation_failures: IntCounterVec,
    pub dlp_findings: IntCounterVec,
    pub signals: IntCounterVec,
    pub blocks_active: prometheus::IntGauge,
    pub blocked: IntCounterVec,
    pub break_glass: IntCounterVec,
    pub respond_redis_fallback: IntCounterVec,
    pub notifications: IntCounterVec,
    pub dlp_messages: IntCounterVec,
    pub dlp_scanned_bytes: IntCounterVec,
    pub mllp_messages: IntCounterVec,
    pub mllp_acks: IntCounterVec,
    pub mllp_connections: IntCounterVec,
    pub mllp_active_connections: IntGaugeVec,
    pub mllp_discarded_bytes: IntCounterVec,
    pub mllp_frame_errors: IntCounterVec,
    pub mllp_upstream_connects: IntCounterVec,
    pub audit_backlog: prometheus::IntGauge,
    pub audit_records: IntCounterVec,
    pub audit_write_errors: prometheus::IntCounter,
    /// Batches the audit writer wrote (one write each) and fdatasync calls it made: with
    /// `ward_audit_records_total` they give the group-commit batch size.
    pub audit_batches: prometheus::IntCounter,
    pub audit_syncs: prometheus::IntCounter,
    pub config_reloads: IntCounterVec,
    pub audit_forward_backlog: prometheus::IntGauge,
    pub audit_forward: IntCounterVec,
    pub audit_repository: IntCounterVec,
    pub audit_spool: prometheus::IntGauge,
    pub upstream_retries: IntCounterVec,
    pub upstream_outages: IntCounterVec,
    pub upstream_outage: IntGaugeVec,
    pub upstream_client_stalls: IntCounterVec,
    pub redis_breaker_open: IntGaugeVec,
    pub redis_breaker_short_circuits: IntCounterVec,
    /// Bodies lexed into a token index (`json::LexedBody`), by direction: one per body
    /// however many policies read it.
    pub json_lex: IntCounterVec,
    /// The `-` route's duration and bytes children (requests refused before routing),
    /// looked up once, on the first such request, not per request.
    unrouted: std::sync::OnceLock<(prometheus::Histogram, prometheus::IntCounter)>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}
fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}
fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

impl Metrics {
    /// Registration only fails on a programming error (duplicate or invalid names, which
    /// are constants here), so it panics at start-up rather than returning a Result.
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            requests: counter(
                &r,
                "ward_requests_total",
                "HTTP requests answered, by listener, route, method and status class.",
                &["listener", "route", "method", "status"],
            ),
            request_duration: histogram(
                &r,
                "ward_request_duration_seconds",
                "Time from request head to end of response body.",
                &["route"],
            ),
            upstream_duration: histogram(
                &r,
                "ward_upstream_duration_seconds",
                "Time from sending to the upstream to its response head.",
                &["upstream"],
            ),
            upstream_errors: counter(
                &r,
                "ward_upstream_errors_total",
                "Upstream failures by kind (connect, timeout, protocol, body).",
                &["upstream", "kind"],
            ),
            upstream_up: gauge(
                &r,
                "ward_upstream_up",
                "Result of the last health probe of each upstream (1 up, 0 down).",
                &["upstream"],
            ),
            rejections: counter(
                &r,
                "ward_rejections_total",
                "Requests refused by the gateway, by route and stable error code.",
                &["route", "code"],
            ),
            active_connections: gauge(
                &r,
                "ward_active_connections",
                "Open client connections.",
                &["listener"],
            ),
            connections: counter(
                &r,
                "ward_connections_total",
                "Accepted client connections.",
                &["listener"],
            ),
            idle_releases: counter(
                &r,
                "ward_idle_releases_total",
                "Idle HTTP/1 connections that gave their HTTP buffers back (parked until the client sends again).",
                &["listener"],
            ),
            connections_refused: counter(
                &r,
                "ward_connections_refused_total",
                "Client connections closed at accept, by reason.",
                &["listener", "reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                "ward_tls_handshake_failures_total",
                "Failed TLS handshakes by reason.",
                &["listener", "reason"],
            ),
            bytes: counter(
                &r,
                "ward_response_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            ),
            config_loaded: gauge(
                &r,
                "ward_config_loaded",
                "1 once a valid configuration is serving.",
                &["version"],
            ),
            tls_reloads: counter(&r, "ward_tls_reloads_total", "TLS configuration reloads (certificates, client CAs, CRLs) by result.", &["listener", "result"]),
            cert_expiry_days: gauge(&r, "ward_certificate_expiry_days", "Days until the earliest expiry in each configured server certificate / client CA file.", &["listener", "kind", "file"]),
            authn: counter(&r, "ward_authn_total", "Authentication decisions by route, provider, result and code.", &["route", "provider", "result", "code"]),
            jwks_refresh: counter(&r, "ward_jwks_refresh_total", "JWKS fetches by provider and result.", &["provider", "result"]),
            introspection_calls: counter(&r, "ward_introspection_calls_total", "Calls to a token introspection endpoint by provider and outcome (active, inactive, or the failure reason).", &["provider", "outcome"]),
            introspection_cache_hits: counter(&r, "ward_introspection_cache_hits_total", "Introspection answers served from the cache by provider and outcome (active, inactive).", &["provider", "outcome"]),
            introspection_failures: counter(&r, "ward_introspection_failures_total", "Introspection calls without a usable answer by provider and reason (connect, timeout, status, body, parse, assertion).", &["provider", "reason"]),
            fhir_authz: counter(&r, "ward_fhir_authz_total", "FHIR authorization decisions by route, resource type, interaction, decision and code.", &["route", "resource_type", "interaction", "decision", "code"]),
            rate_limited: counter(&r, "ward_rate_limited_total", "Requests refused with 429 by route and limit name.", &["route", "limit"]),
            rate_limit_keys: gauge(&r, "ward_rate_limit_keys", "Keys tracked by each local limiter (after the last sweep).", &["route", "limit"]),
            rate_limit_overflow: counter(&r, "ward_rate_limit_overflow_total", "Checks counted in a limit's shared overflow bucket because its key table was full.", &["route", "limit"]),
            rate_limit_fallback: counter(&r, "ward_rate_limit_fallback_total", "Checks decided by the local fallback limiter because Redis did not answer (fail_open).", &["route", "limit"]),
            rate_limit_backend_errors: counter(&r, "ward_rate_limit_backend_errors_total", "Redis rate-limit checks that failed, by policy and kind (timeout, error, circuit_open: not asked while the circuit breaker is open).", &["policy", "kind"]),
            upstream_shed: counter(&r, "ward_upstream_shed_total", "Requests refused with 503 because the upstream's concurrency limit was reached.", &["upstream"]),
            upstream_inflight: gauge(&r, "ward_upstream_inflight", "Requests in flight to each upstream (counted only where a concurrency limit is set).", &["upstream"]),
            validation_failures: counter(&r, "ward_validation_failures_total", "Request bodies refused by the validate policy, by route and kind (first FHIR issue type, media_type, format, unexpected_body, hl7v2_error, hl7v2_reject).", &["route", "kind"]),
            signals: counter(&r, "ward_signals_total", "Breach signals fired (exfiltration, probing, volume, dlp, off_hours) by signal and the action taken (alert, throttle, block).", &["signal", "action"]),
            blocks_active: {
                let g = prometheus::IntGauge::new("ward_blocks_active", "Blocks in force (operator and signal blocks, local and learned from other replicas).")
                    .unwrap_or_else(|e| panic!("metric ward_blocks_active: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("metric ward_blocks_active: {e}"));
                g
            },
            blocked: counter(&r, "ward_blocked_total", "Requests refused by a block or throttle, by what matched (ip, cidr, cert, sub, client_id, throttle).", &["kind"]),
            break_glass: counter(&r, "ward_break_glass_total", "Emergency (break-glass) reads outside the patient compartment, by route.", &["route"]),
            respond_redis_fallback: counter(&r, "ward_respond_redis_fallback_total", "Respond Redis calls (phase: blocks, request, outcome, throttle, break_glass) that failed or were skipped during an outage, so this replica decided alone.", &["phase"]),
            notifications: counter(&r, "ward_notifications_total", "Incident notifications by sink (webhook) and result (sent, failed, dropped).", &["sink", "result"]),
            dlp_findings: counter(&r, "ward_dlp_findings_total", "DLP findings by route (or MLLP listener), detector or rule name (from the policy) and action. Counts only: values are never recorded.", &["route", "detector", "action"]),
            dlp_messages: counter(&r, "ward_dlp_messages_total", "Bodies seen by DLP by route, direction (request, response) and outcome (clean, rewritten, reported, blocked, too_large, unscannable, error).", &["route", "direction", "outcome"]),
            dlp_scanned_bytes: counter(&r, "ward_dlp_scanned_bytes_total", "Bytes scanned by DLP (after undoing Content-Encoding) by route and direction.", &["route", "direction"]),
            mllp_messages: counter(&r, "ward_mllp_messages_total", "HL7 v2 messages on MLLP listeners by listener, message type (allow-listed or common HL7 codes, else other) and result (delivered, invalid, sender_denied, rate_limited, upstream_failed, framing).", &["listener", "type", "result"]),
            mllp_acks: counter(&r, "ward_mllp_acks_total", "ACKs sent to MLLP clients by listener and MSA-1 code (relayed upstream ACKs and the gateway's own).", &["listener", "code"]),
            mllp_connections: counter(&r, "ward_mllp_connections_total", "MLLP client connections accepted.", &["listener"]),
            mllp_active_connections: gauge(&r, "ward_mllp_active_connections", "Open MLLP client connections.", &["listener"]),
            mllp_discarded_bytes: counter(&r, "ward_mllp_discarded_bytes_total", "Bytes received outside any MLLP frame and discarded.", &["listener"]),
            mllp_frame_errors: counter(&r, "ward_mllp_frame_errors_total", "MLLP framing errors by listener and reason.", &["listener", "reason"]),
            mllp_upstream_connects: counter(&r, "ward_mllp_upstream_connects_total", "Connections made to MLLP upstreams (first ones and reconnects) by result.", &["listener", "result"]),
            audit_backlog: {
                let g = prometheus::IntGauge::new("ward_audit_backlog", "Audit records queued and not yet written.")
                    .unwrap_or_else(|e| panic!("metric ward_audit_backlog: {e}"));
                r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric ward_audit_backlog: {e}"));
                g
            },
            audit_records: counter(&r, "ward_audit_records_total", "Audit records by result: written (durable), queued (interval durability), refused (queue full or trail down: the request got 503), failed (write error).", &["result"]),
            audit_write_errors: {
                let c = prometheus::IntCounter::new("ward_audit_write_errors_total", "Failed writes, syncs or rotations of the audit file.")
                    .unwrap_or_else(|e| panic!("metric ward_audit_write_errors_total: {e}"));
                r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric ward_audit_write_errors_total: {e}"));
                c
            },
            audit_batches: {
                let c = prometheus::IntCounter::new("ward_audit_batches_total", "Batches of audit records written to the file, one write each (group commit).")
                    .unwrap_or_else(|e| panic!("metric ward_audit_batches_total: {e}"));
                r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric ward_audit_batches_total: {e}"));
                c
            },
            audit_syncs: {
                let c = prometheus::IntCounter::new("ward_audit_syncs_total", "fdatasync calls on the audit file (one per batch with `durability: fsync`).")
                    .unwrap_or_else(|e| panic!("metric ward_audit_syncs_total: {e}"));
                r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric ward_audit_syncs_total: {e}"));
                c
            },
            config_reloads: counter(&r, "ward_config_reloads_total", "Config and policy reloads (SIGHUP or file change) by result; on error the previous config keeps serving.", &["result"]),
            audit_forward_backlog: {
                let g = prometheus::IntGauge::new("ward_audit_forward_backlog", "Audit records written but not yet forwarded to the syslog collector.")
                    .unwrap_or_else(|e| panic!("metric ward_audit_forward_backlog: {e}"));
                r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric ward_audit_forward_backlog: {e}"));
                g
            },
            audit_forward: counter(&r, "ward_audit_forward_total", "Audit records forwarded to the syslog collector by result: sent, error (connect or write failed; retried), dropped (buffer full; the file keeps them).", &["result"]),
            audit_repository: counter(&r, "ward_audit_repository_total", "AuditEvents for the FHIR audit repository by result: sent (accepted), error (connect, timeout, 5xx or another retryable answer; retried from the spool), rejected (400/409/412/413/422: the event itself refused; kept in spool/rejected), dropped (spool full or unwritable; the chained file keeps the record).", &["result"]),
            audit_spool: {
                let g = prometheus::IntGauge::new("ward_audit_spool_records", "AuditEvents in the spool, waiting for the FHIR audit repository.")
                    .unwrap_or_else(|e| panic!("metric ward_audit_spool_records: {e}"));
                r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric ward_audit_spool_records: {e}"));
                g
            },
            upstream_retries: counter(&r, "ward_upstream_retries_total", "Requests sent a second time on a fresh connection because the first never reached the upstream (not_sent) or an idempotent one lost its connection before any answer (closed).", &["upstream", "reason"]),
            upstream_outages: counter(&r, "ward_upstream_outages_total", "Upstream outage episodes (a run of failed requests ended by the first success), counted when they start.", &["upstream"]),
            upstream_outage: gauge(&r, "ward_upstream_outage", "1 while an upstream outage episode is open (its last request failed), else 0.", &["upstream"]),
            upstream_client_stalls: counter(&r, "ward_upstream_client_stalls_total", "Responses aborted because the client took no bytes for the upstream's send_timeout while holding a concurrency slot.", &["upstream"]),
            redis_breaker_open: gauge(&r, "ward_redis_breaker_open", "1 while the Redis circuit breaker of a policy is open (checks apply the failure mode without asking Redis), else 0.", &["policy"]),
            redis_breaker_short_circuits: counter(&r, "ward_redis_breaker_short_circuits_total", "Redis calls skipped because the policy's circuit breaker was open.", &["policy"]),
            json_lex: counter(&r, "ward_json_lex_total", "JSON bodies lexed into a token index shared by the route's policies (validation, authorization, DLP), by direction (request, response): one per body, however many policies read it.", &["direction"]),
            unrouted: std::sync::OnceLock::new(),
            registry: r,
        }
    }

    /// Duration and bytes children of the `-` route (requests refused before routing).
    pub fn unrouted(&self) -> &(prometheus::Histogram, prometheus::IntCounter) {
        self.unrouted.get_or_init(|| {
            (
                self.request_duration.with_label_values(&["-"]),
                self.bytes.with_label_values(&["-"]),
            )
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
const STATUS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `ward_requests_total` children of one route, resolved on first use: the label lookup
/// (hashing four strings under a lock) otherwise runs on every request.
pub struct RequestCounters {
    vec: IntCounterVec,
    listener: std::sync::Arc<str>,
    route: std::sync::Arc<str>,
    cells: [[std::sync::OnceLock<prometheus::IntCounter>; 5]; 8],
}

impl RequestCounters {
    pub fn new(
        vec: IntCounterVec,
        listener: std::sync::Arc<str>,
        route: std::sync::Arc<str>,
    ) -> Self {
        RequestCounters {
            vec,
            listener,
            route,
            cells: Default::default(),
        }
    }

    pub fn inc(&self, m: &http::Method, s: http::StatusCode) {
        let label = method_label(m);
        let mi = METHOD_LABELS.iter().position(|l| *l == label).unwrap_or(7);
        let class = status_class(s);
        let si = STATUS_LABELS.iter().position(|l| *l == class).unwrap_or(4);
        self.cells[mi][si]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[&self.listener, &self.route, label, class])
            })
            .inc();
    }
}

/// Fold a method to a bounded label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub fn status_class(s: http::StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
