//! The one place where a rejection becomes an HTTP response.
//!
//! Every layer (framing guard, router, policies, proxy) fails with a [`Rejection`]: a status,
//! a stable machine code and a short, fixed client-facing text. Nothing else in the crate
//! builds an error body, so clients never see upstream internals, config values or stack
//! traces, and FHIR routes always answer with an `OperationOutcome`.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::Body;

/// A request the gateway refuses (or cannot complete). `code` is part of the public API:
/// operators alert on it and clients branch on it, so codes are never renamed.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    /// Fixed text safe to show any client; never built from request or upstream data.
    pub detail: &'static str,
    /// Extra response headers (e.g. `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Close the client connection after answering (framing errors: the byte stream
    /// can no longer be trusted).
    pub close: bool,
    /// Findings or a protocol-native body to add (validation).
    pub extra: Option<Extra>,
}

/// What a refusal carries beyond its code, still rendered only here.
#[derive(Debug, Clone)]
pub enum Extra {
    /// Validation findings: one OperationOutcome issue each (`error.issues` in JSON).
    Issues(std::sync::Arc<[Finding]>),
    /// A body in the client's own protocol (an HL7 v2 NAK for an ER7 request), sent as is.
    Raw {
        content_type: &'static str,
        body: Bytes,
    },
}

/// One validation finding. `message` is built by the validator from fixed texts and
/// element names: it never contains a value from the request (PHI).
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: &'static str,
    /// FHIR IssueType code.
    pub code: &'static str,
    /// Where, as a FHIRPath-like path (`Patient.birthDate`).
    pub expression: String,
    pub message: String,
}

impl Rejection {
    pub const fn new(status: StatusCode, code: &'static str, detail: &'static str) -> Self {
        Rejection {
            status,
            code,
            detail,
            headers: Vec::new(),
            close: false,
            extra: None,
        }
    }

    pub fn with_extra(mut self, extra: Extra) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    // Catalogue of the core's codes. Later policies add their own constructors in their
    // own files, but they all end up here to be rendered.
    pub fn bad_request(code: &'static str, detail: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route matches this request",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }
    pub fn headers_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "request headers exceed the configured limit",
        )
        .closing()
    }
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body exceeds the configured limit",
        )
        .closing()
    }
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body was not received in time",
        )
        .closing()
    }
    pub fn upstream_unavailable() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "the upstream service could not be reached",
        )
    }
    pub fn upstream_error() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream service failed to answer",
        )
    }
    pub fn upstream_timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream service did not answer in time",
        )
    }
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down",
        )
        .closing()
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal gateway error",
        )
    }

    /// FHIR `IssueType` (http://hl7.org/fhir/R4/valueset-issue-type.html) for this status.
    fn fhir_issue_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 415 | 422 => "invalid",
            401 => "login",
            403 => "forbidden",
            404 => "not-found",
            408 | 504 => "timeout",
            413 | 431 => "too-costly",
            429 => "throttled",
            502 | 503 => "transient",
            _ => "exception",
        }
    }
}

/// Render a rejection. `fhir` selects an `OperationOutcome` (`application/fhir+json`);
/// otherwise a small JSON object. Both carry the stable code and the request id.
pub fn into_response(rej: &Rejection, fhir: bool, request_id: &str) -> Response<Body> {
    let findings: &[Finding] = match &rej.extra {
        Some(Extra::Issues(f)) => f,
        _ => &[],
    };
    let (content_type, bytes) = match &rej.extra {
        Some(Extra::Raw { content_type, body }) => (*content_type, body.clone()),
        _ if fhir => {
            let mut issues = vec![serde_json::json!({
                "severity": "error",
                "code": rej.fhir_issue_type(),
                "details": {
                    "coding": [{"system": CODE_SYSTEM, "code": rej.code}],
                    "text": rej.detail,
                },
                "diagnostics": format!("request id {request_id}"),
            })];
            issues.extend(findings.iter().map(|f| {
                serde_json::json!({
                    "severity": f.severity,
                    "code": f.code,
                    "expression": [f.expression],
                    "diagnostics": f.message,
                })
            }));
            let body = serde_json::json!({"resourceType": "OperationOutcome", "issue": issues});
            ("application/fhir+json", Bytes::from(body.to_string()))
        }
        _ => {
            let mut err = serde_json::json!({"code": rej.code, "message": rej.detail, "request_id": request_id});
            if !findings.is_empty() {
                err["issues"] = findings
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "severity": f.severity,
                            "code": f.code,
                            "expression": f.expression,
                            "message": f.message,
                        })
                    })
                    .collect();
            }
            (
                "application/json",
                Bytes::from(serde_json::json!({ "error": err }).to_string()),
            )
        }
    };
    let mut resp = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = rej.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in &rej.headers {
        h.append(name.clone(), value.clone());
    }
    if rej.close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Coding system for Ward's stable error codes inside an OperationOutcome.
pub const CODE_SYSTEM: &str = "urn:ward:error-code";

/// A token claim present but malformed (blank, wrong type).
pub fn claim_invalid() -> Rejection {
    Rejection::new(
        StatusCode::UNAUTHORIZED,
        "token_claim_invalid",
        "token has a malformed claim",
    )
    .with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ward\", error=\"invalid_token\""),
    )
}

/// The token's scopes do not grant the request (RFC 6750 `insufficient_scope`).
pub fn insufficient_scope() -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        "the token does not grant this access",
    )
    .with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ward\", error=\"insufficient_scope\""),
    )
}

/// A request body over the route's size limit or past its deadline (raised inside the
/// body by the `limits` policy, recognised by whoever reads the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("request body exceeds limit")]
    TooLarge,
    #[error("request body deadline passed")]
    Timeout,
}

impl From<LimitError> for Rejection {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::TooLarge => Rejection::body_too_large(),
            LimitError::Timeout => Rejection::body_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fhir_rejection_is_operation_outcome() {
        let resp = into_response(&Rejection::not_found(), true, "rid-1");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/fhir+json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["code"], "not-found");
        assert_eq!(v["issue"][0]["details"]["coding"][0]["code"], "not_found");
    }

    #[tokio::test]
    async fn plain_rejection_is_json_with_code() {
        let resp = into_response(&Rejection::body_too_large(), false, "rid-2");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[CONNECTION], "close");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "body_too_large");
        assert_eq!(v["error"]["request_id"], "rid-2");
    }
}
