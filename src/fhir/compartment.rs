//! Does a FHIR resource belong to a given patient? Decided from HL7's Patient
//! CompartmentDefinition: a resource is in the patient's compartment when one of the
//! compartment's reference elements for its type points at `Patient/{id}`.
//!
//! Two strengths: [`in_patient_compartment`] (HL7's definition, for what the upstream
//! returns) and [`owned_by`] (the resource's *primary* link is this patient and it names no
//! other, for anything a patient-context token writes or changes).

use serde_json::Value;

/// Is `v` a FHIR id / version id (`[A-Za-z0-9\-\.]{1,64}`)?
fn is_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Patient/{id}` or `Patient/{id}/_history/{vid}`, exactly (relative form).
pub(crate) fn relative_patient(r: &str, patient_id: &str) -> bool {
    match r
        .strip_prefix("Patient/")
        .and_then(|rest| rest.strip_prefix(patient_id))
    {
        Some("") => true,
        Some(rest) => rest.strip_prefix("/_history/").is_some_and(is_id),
        None => false,
    }
}

/// A reference to patient `patient_id`: the relative form, or an absolute URL whose path
/// ends in it (`https://ehr/fhir/Patient/1`). Nothing else: no conditional references
/// (`Patient?identifier=...`), no nested forms (`Patient/b/Patient/a`).
pub fn references_patient(reference: &str, patient_id: &str) -> bool {
    if reference.contains('?') || reference.contains('#') {
        return false;
    }
    if relative_patient(reference, patient_id) {
        return true;
    }
    let Some((_, rest)) = reference.split_once("://") else {
        return false;
    };
    let Some((_, path)) = rest.split_once('/') else {
        return false;
    };
    // The last `Patient/` starts the reference; before it only the server's base path.
    match path.rfind("Patient/") {
        Some(i) if i == 0 || path[..i].ends_with('/') => {
            !path[..i].contains("Patient/") && relative_patient(&path[i..], patient_id)
        }
        _ => false,
    }
}

/// Does this reference point at some Patient (any id), or is it a conditional reference
/// that could resolve to one?
pub(crate) fn is_patient_like(reference: &str) -> bool {
    reference.starts_with("Patient/")
        || reference.starts_with("Patient?")
        || reference.contains("/Patient/")
        || reference.contains('?')
}

/// Every `reference` string found at `path` (dotted, arrays flattened) below `v`.
fn references_at<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a str>) {
    let (head, tail) = match path.split_once('.') {
        Some((h, t)) => (h, Some(t)),
        None => (path, None),
    };
    let next = match v {
        Value::Object(m) => m.get(head),
        _ => None,
    };
    let Some(next) = next else { return };
    let items: Vec<&Value> = match next {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for item in items {
        match tail {
            Some(t) => references_at(item, t, out),
            None => {
                if let Some(r) = item.get("reference").and_then(Value::as_str) {
                    out.push(r);
                }
            }
        }
    }
}

/// Is `resource` in the compartment of patient `patient_id`? Types outside the Patient
/// compartment are never in it; a Patient only if it is that patient (another Patient that
/// merely links to them is someone else's record).
pub fn in_patient_compartment(resource: &Value, patient_id: &str) -> bool {
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if rtype == "Patient" {
        return resource.get("id").and_then(Value::as_str) == Some(patient_id);
    }
    let Some(params) = super::patient_compartment(rtype) else {
        return false;
    };
    compartment_refs(resource, params)
        .iter()
        .any(|r| references_patient(r, patient_id))
}

/// Every reference string at the elements that put a resource of this type in a patient's
/// compartment (none for types outside it).
pub fn compartment_references(resource: &Value) -> Vec<&str> {
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    match super::patient_compartment(rtype) {
        Some(params) => compartment_refs(resource, params),
        None => Vec::new(),
    }
}

/// Every reference at any of the compartment parameters' element paths.
fn compartment_refs<'a>(
    resource: &'a Value,
    params: &[super::tables::CompartmentParam],
) -> Vec<&'a str> {
    let mut refs = Vec::new();
    for (_, paths) in params {
        for p in *paths {
            references_at(resource, p, &mut refs);
        }
    }
    refs
}

/// For what a patient-context token writes or changes: the resource's primary link (the
/// first compartment parameter, e.g. `Observation.subject`) names this patient in relative
/// form, and no compartment element names any other patient or carries a conditional
/// reference.
pub fn owned_by(resource: &Value, patient_id: &str) -> bool {
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if rtype == "Patient" {
        return resource.get("id").and_then(Value::as_str) == Some(patient_id);
    }
    let Some(params) = super::patient_compartment(rtype) else {
        return false;
    };
    let Some((_, primary)) = params.first() else {
        return false;
    };
    let mut mine = Vec::new();
    for p in *primary {
        references_at(resource, p, &mut mine);
    }
    if !mine.iter().any(|r| relative_patient(r, patient_id)) {
        return false;
    }
    compartment_refs(resource, params)
        .iter()
        .all(|r| !is_patient_like(r) || relative_patient(r, patient_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references() {
        assert!(references_patient("Patient/a", "a"));
        assert!(references_patient("Patient/a/_history/3", "a"));
        assert!(references_patient(
            "https://ehr.example/fhir/Patient/a/_history/3",
            "a"
        ));
        assert!(!references_patient("Patient/ab", "b"));
        assert!(!references_patient("Patient/ab", "a"));
        assert!(!references_patient("Group/a", "a"));
        assert!(!references_patient("XPatient/a", "a"));
        assert!(!references_patient("Patient/b/Patient/a", "a"));
        assert!(!references_patient(
            "https://ehr.example/Patient/b/Patient/a",
            "a"
        ));
        assert!(!references_patient(
            "Patient?identifier=x&_tag:not=/Patient/a",
            "a"
        ));
        assert!(!references_patient("Patient/a/_history/", "a"));
    }

    #[test]
    fn membership() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}});
        assert!(in_patient_compartment(&obs, "a"));
        assert!(!in_patient_compartment(&obs, "b"));
        let perf = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}, "performer": [{"reference": "Practitioner/p"}, {"reference": "Patient/b"}]});
        assert!(in_patient_compartment(&perf, "b"));
        let pat = json!({"resourceType": "Patient", "id": "a"});
        assert!(in_patient_compartment(&pat, "a") && !in_patient_compartment(&pat, "b"));
        let linked = json!({"resourceType": "Patient", "id": "b", "link": [{"other": {"reference": "Patient/a"}}]});
        assert!(!in_patient_compartment(&linked, "a"));
        let org = json!({"resourceType": "Organization", "id": "a"});
        assert!(!in_patient_compartment(&org, "a"));
        assert!(!in_patient_compartment(
            &json!({"subject": {"reference": "Patient/a"}}),
            "a"
        ));
    }

    #[test]
    fn ownership_for_writes() {
        let own = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}});
        assert!(owned_by(&own, "a"));
        let performer_only = json!({"resourceType": "Observation", "subject": {"reference": "Patient/b"}, "performer": [{"reference": "Patient/a"}]});
        assert!(!owned_by(&performer_only, "a"));
        let two = json!({"resourceType": "Observation", "subject": [{"reference": "Patient/a"}, {"reference": "Patient/b"}]});
        assert!(!owned_by(&two, "a"));
        let cond = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Patient?identifier=mrn|1"}]});
        assert!(!owned_by(&cond, "a"));
        let abs = json!({"resourceType": "Observation", "subject": {"reference": "https://evil/Patient/a"}});
        assert!(!owned_by(&abs, "a"));
    }
}
