//! Does a FHIR resource belong to a given patient? Decided from HL7's Patient
//! CompartmentDefinition: a resource is in the patient's compartment when one of the
//! compartment's reference elements for its type points at `Patient/{id}`.

use serde_json::Value;

/// `Patient/123`, `Patient/123/_history/4`, or an absolute URL ending in one of those.
pub fn references_patient(reference: &str, patient_id: &str) -> bool {
    let r = reference.split('#').next().unwrap_or("");
    let r = match r.find("/_history/") {
        Some(i) => &r[..i],
        None => r,
    };
    let Some(rest) = r.strip_suffix(patient_id) else {
        return false;
    };
    rest == "Patient/" || rest.ends_with("/Patient/")
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
/// compartment are never in it.
pub fn in_patient_compartment(resource: &Value, patient_id: &str) -> bool {
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if rtype == "Patient" && resource.get("id").and_then(Value::as_str) == Some(patient_id) {
        return true;
    }
    let Some(params) = super::patient_compartment(rtype) else {
        return false;
    };
    let mut refs = Vec::new();
    for (_, paths) in params {
        for p in *paths {
            references_at(resource, p, &mut refs);
        }
    }
    refs.iter().any(|r| references_patient(r, patient_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references() {
        assert!(references_patient("Patient/a", "a"));
        assert!(references_patient(
            "https://ehr.example/fhir/Patient/a/_history/3",
            "a"
        ));
        assert!(!references_patient("Patient/ab", "b"));
        assert!(!references_patient("Group/a", "a"));
        assert!(!references_patient("XPatient/a", "a"));
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
        let org = json!({"resourceType": "Organization", "id": "a"});
        assert!(!in_patient_compartment(&org, "a"));
        assert!(!in_patient_compartment(
            &json!({"subject": {"reference": "Patient/a"}}),
            "a"
        ));
    }
}
