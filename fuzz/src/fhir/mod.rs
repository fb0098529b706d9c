//! Mirror of `ward::fhir`, limited to the modules the fuzz targets need. Paths are relative to
//! this directory (fuzz/src/fhir/).

#[path = "../../../src/fhir/tables.rs"]
#[rustfmt::skip]
pub mod tables;

#[path = "../../../src/fhir/request.rs"]
pub mod request;

#[path = "../../../src/fhir/validate.rs"]
pub mod validate;
