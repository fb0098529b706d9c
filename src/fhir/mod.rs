//! FHIR R4 knowledge: resource types and the Patient compartment (derived from HL7's
//! definitions, see `tables.rs`), and the REST request model every FHIR-aware policy
//! reads (`request.rs`), and the R4 structure validator (`validate/`, data in
//! `schema.txt`, made by `tools/gen_fhir_schema.py`).

pub mod answer;
pub mod base_url;
pub mod base_url_json;
pub mod compartment;
pub mod discovery;
pub mod refs;
pub mod request;
pub mod scope_filter;
pub mod scopes;
pub mod strict_json;
#[rustfmt::skip]
pub mod tables;
pub mod validate;

pub use request::{FhirRequest, Interaction, SearchParam};

/// Is `t` a concrete FHIR R4 resource type?
pub fn is_resource_type(t: &str) -> bool {
    tables::RESOURCE_TYPES.binary_search(&t).is_ok()
}

/// The search parameters (with element paths) that put resources of type `t` in a
/// patient's compartment; `None` if `t` is not in the Patient compartment.
pub fn patient_compartment(t: &str) -> Option<&'static [tables::CompartmentParam]> {
    tables::PATIENT_COMPARTMENT
        .binary_search_by(|(name, _)| (*name).cmp(t))
        .ok()
        .map(|i| tables::PATIENT_COMPARTMENT[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_sane() {
        assert!(tables::RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(tables::PATIENT_COMPARTMENT
            .windows(2)
            .all(|w| w[0].0 < w[1].0));
        assert!(is_resource_type("Observation"));
        assert!(!is_resource_type("observation"));
        assert!(
            !is_resource_type("Project"),
            "Medplum-only types must not leak in"
        );
        let obs = patient_compartment("Observation").unwrap();
        assert!(obs
            .iter()
            .any(|(p, paths)| *p == "subject" && paths.contains(&"subject")));
        assert!(patient_compartment("Organization").is_none());
    }
}
