//! The parsers of untrusted bytes from Ward, compiled standalone for fuzzing.
//!
//! The modules are the gateway's own source files, included by path (nothing is copied), laid
//! out under the same module paths as in the `ward` crate so their `crate::` / `super::` uses
//! resolve unchanged:
//!
//! * `fhir::validate` — ../src/fhir/validate/ (its `include_str!("../schema.txt")` is resolved
//!   relative to its mod.rs, so the real schema is embedded);
//! * `fhir::request` + `fhir::tables` — ../src/fhir/request.rs and tables.rs;
//! * `hl7v2::{er7, validate, ack}` — ../src/hl7v2/er7/, validate/, ack.rs (not hl7v2/mod.rs, which
//!   also declares the tokio-based `mllp` module; see src/hl7v2/mod.rs here);
//! * `path` — ../src/path.rs;
//! * `json` — ../src/json/: the one JSON lexer the validator, DLP and `strict_json` share;
//! * `dlp` (and `calendar`) — ../src/dlp/ and ../src/calendar.rs: the DLP engine (detectors,
//!   FHIR path rules, JSON walker, HL7 v2 rules);
//! * `error` — a shim (see below), because path.rs and request.rs convert their errors into
//!   `crate::error::Rejection`, and the real error.rs drags in hyper/serde_json/bytes.

pub mod fhir;

#[path = "../../src/calendar.rs"]
pub mod calendar;

#[path = "../../src/dlp/mod.rs"]
pub mod dlp;

#[path = "../../src/json/mod.rs"]
pub mod json;

pub mod hl7v2;

#[path = "../../src/path.rs"]
pub mod path;

/// Minimal stand-in for `ward::error`: only what the included modules use
/// (`Rejection::bad_request`, called from their `From<...Error> for Rejection` impls).
/// The conversions are not exercised by the fuzz targets; the shim exists so the files compile
/// unmodified.
pub mod error {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rejection {
        pub code: &'static str,
        pub detail: &'static str,
    }

    impl Rejection {
        pub fn bad_request(code: &'static str, detail: &'static str) -> Self {
            Rejection { code, detail }
        }
    }
}
