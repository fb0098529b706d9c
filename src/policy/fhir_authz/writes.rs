//! Writes in patient context: JSON Patch shape, and every reference anywhere in a written
//! resource or Bundle naming the token's patient only (`fhir::refs`).

use super::*;

/// A patient-context JSON Patch may not touch the elements that tie the resource to its
/// patient (it would move the record to someone else). FHIRPath Patch is not accepted.
pub(super) fn check_patch(
    f: &FhirRequest,
    headers: &http::HeaderMap,
    body: &[u8],
    pid: &str,
    bases: &Bases,
) -> Result<(), Rejection> {
    let json_patch = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json-patch+json"));
    if !json_patch {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "patch_format_unsupported",
            "only JSON Patch is accepted in patient context",
        ));
    }
    let ops = strict_body(body)?;
    let Value::Array(ops) = ops else {
        return Err(Rejection::bad_request(
            "fhir_invalid",
            "malformed JSON Patch",
        ));
    };
    // Values the patch adds may not carry references to another patient, wherever they go.
    let values = Value::Array(
        ops.iter()
            .filter_map(|op| op.get("value"))
            .cloned()
            .collect(),
    );
    if !written_resource_ok(&values, pid, bases, &UrnTargets::new()) {
        return Err(denied(
            "patient_mismatch",
            "the patch would add a reference to another patient",
        ));
    }
    // References can also be assembled piece by piece (`add /focus/0/reference` with a
    // plain string, `type` + `identifier` of a logical reference), carried over from
    // elsewhere (`copy`, `move`), or made by turning a contained resource into a Patient.
    for op in &ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        if matches!(kind, "copy" | "move") {
            return Err(denied(
                "patient_mismatch",
                "copy and move are not accepted in patient context",
            ));
        }
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let segs: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let deep = |name: &str| segs.iter().skip(1).any(|s| s == name);
        let piece_of_reference = match (segs.last().map(String::as_str), op.get("value")) {
            (Some("reference"), Some(v)) => {
                let r = serde_json::json!({ "reference": v });
                !written_resource_ok(&r, pid, bases, &UrnTargets::new())
            }
            (Some("type"), Some(Value::String(t))) => t == "Patient",
            _ => false,
        };
        if piece_of_reference
            || segs.iter().any(|s| s == "resourceType" || s == "contained")
            || deep("identifier")
        {
            return Err(denied(
                "patient_mismatch",
                "the patch would change what a reference or contained resource names",
            ));
        }
    }
    let rtype = f.resource_type.unwrap_or("");
    let guarded: Vec<&str> = match crate::fhir::patient_compartment(rtype) {
        Some(ps) => ps
            .iter()
            .flat_map(|(_, paths)| paths.iter().map(|p| p.split('.').next().unwrap_or(p)))
            .collect(),
        None => vec!["link"],
    };
    for op in &ops {
        for key in ["path", "from"] {
            let Some(path) = op.get(key).and_then(Value::as_str) else {
                continue;
            };
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            if first.is_empty()
                || first == "resourceType"
                || first == "id"
                || guarded.contains(&first)
            {
                return Err(denied(
                    "patient_mismatch",
                    "the patch would change what ties the resource to its patient",
                ));
            }
        }
    }
    Ok(())
}

/// Is this request authorized through patient-level scopes (rather than user/system)?
pub(super) fn patient_scoped(claims: &Claims, f: &FhirRequest) -> bool {
    let Some(perm) = scopes::needed(f.interaction) else {
        return false;
    };
    let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
    let rtype = f.resource_type.unwrap_or("*");
    !scopes
        .iter()
        .any(|s| s.context != ScopeContext::Patient && s.grants(rtype, perm, &f.params))
}

/// Parse a request body the guard decides on: duplicate member names are refused (the
/// upstream might read the other one).
pub(super) fn strict_body(body: &[u8]) -> Result<Value, Rejection> {
    strict_json::from_slice(body).map_err(|e| match e {
        StrictError::Duplicate => Rejection::bad_request(
            "fhir_invalid",
            "the body repeats a member name inside an object",
        ),
        StrictError::Malformed => {
            Rejection::bad_request("fhir_invalid", "the body is not a FHIR JSON resource")
        }
    })
}

/// Rewrite absolute references on this server's bases to their relative form, so that
/// the checks below and the upstream read the same thing. Returns whether anything changed.
pub(super) fn localize_references(v: &mut Value, bases: &Bases) -> bool {
    match v {
        Value::Object(m) => {
            let mut changed = false;
            if let Some(Value::String(r)) = m.get_mut("reference") {
                if r.contains("://") {
                    if let Some(rel) = bases.localize(r).filter(|rel| *rel != r.as_str()) {
                        *r = rel.to_owned();
                        changed = true;
                    }
                }
            }
            for x in m.values_mut() {
                changed |= localize_references(x, bases);
            }
            changed
        }
        Value::Array(a) => {
            // Every item is rewritten (no short-circuit).
            let mut changed = false;
            for x in a.iter_mut() {
                changed |= localize_references(x, bases);
            }
            changed
        }
        _ => false,
    }
}

/// A patient-context create or update: the resource matches the URL, belongs to the
/// token's patient, and no reference anywhere in it can resolve to another patient.
/// `v` may be rewritten (local absolute references made relative): returns whether it was.
pub(super) fn check_write(
    f: &FhirRequest,
    v: &mut Value,
    pid: &str,
    bases: &Bases,
    urns: &UrnTargets,
) -> Result<bool, Rejection> {
    let mismatch = || {
        denied(
            "patient_mismatch",
            "the resource belongs to another patient",
        )
    };
    let rt = v
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let rt = rt.as_deref();
    if rt != f.resource_type {
        return Err(Rejection::bad_request(
            "fhir_type_mismatch",
            "resourceType does not match the URL",
        ));
    }
    if f.interaction == Interaction::Update
        && v.get("id").and_then(Value::as_str) != f.id.as_deref()
    {
        return Err(Rejection::bad_request(
            "fhir_id_mismatch",
            "resource id does not match the URL",
        ));
    }
    let changed = localize_references(v, bases);
    if rt == Some("Patient") {
        // A patient-context token creates no patients and updates only its own.
        if f.interaction == Interaction::Create || f.id.as_deref() != Some(pid) {
            return Err(mismatch());
        }
    } else if !owned_by(v, pid) {
        return Err(mismatch());
    }
    // Whichever path a reference sits on (`link.other`, `focus`, extensions, contained
    // resources): it may not lead to another patient.
    if !written_resource_ok(v, pid, bases, urns) {
        return Err(mismatch());
    }
    // The compartment elements may not point at another server at all: the upstream
    // would not count such a record as anyone's, and another server's "Patient/a" is
    // someone else.
    if compartment_references(v)
        .iter()
        .any(|r| bases.localize(r).is_none())
    {
        return Err(mismatch());
    }
    Ok(changed)
}
