//! Mirror of `ward::fhir`, limited to the modules the fuzz targets need. Paths are relative to
//! this directory (fuzz/src/fhir/).

#[path = "../../../src/fhir/tables.rs"]
#[rustfmt::skip]
pub mod tables;

#[path = "../../../src/fhir/request.rs"]
pub mod request;

#[path = "../../../src/fhir/validate/mod.rs"]
pub mod validate;

#[path = "../../../src/fhir/scopes.rs"]
pub mod scopes;

#[path = "../../../src/fhir/scope_filter.rs"]
pub mod scope_filter;

#[path = "../../../src/fhir/refs.rs"]
pub mod refs;

#[path = "../../../src/fhir/base_url.rs"]
pub mod base_url;
#[path = "../../../src/fhir/strict_json.rs"]
pub mod strict_json;

/// Same as `ward::fhir::is_resource_type` (mod.rs itself is not included: it declares
/// modules the fuzz crate does not build).
pub fn is_resource_type(t: &str) -> bool {
    tables::RESOURCE_TYPES.binary_search(&t).is_ok()
}
