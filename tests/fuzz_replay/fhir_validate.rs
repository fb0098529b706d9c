// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);
// do not edit: edit the fuzz target and refresh (see that file's header).
//! FHIR R4 JSON validator (`src/fhir/validate/`): resources with and without a gateway
//! profile, under default and tight limits, and the same bytes as a JSON Patch document.
//!
//! Beyond "never panics", checks documented invariants:
//! * a rejection carries at least one issue and at most `max(max_issues, 1)`;
//! * an accepted resource carries only warnings, at most `max_issues`;
//! * a profile only adds checks, so profile-accepted ⇒ accepted without the profile;
//! * tighter limits only add failures, so accepted under tight limits ⇒ accepted by default.

use std::sync::LazyLock;

use ward::fhir::validate::{
    check_profile_paths, validate_json_patch, validate_resource, Issue, Limits, Profile,
    Severity, Summary,
};

static PROFILE: LazyLock<Profile> = LazyLock::new(|| {
    let p = Profile {
        allowed_types: Some(
            ["Patient", "Observation", "Encounter", "Bundle", "Parameters"]
                .map(String::from)
                .to_vec(),
        ),
        required: ["Patient.name.family", "Observation.subject"]
            .map(String::from)
            .to_vec(),
        forbidden: ["Patient.photo", "Observation.note.text"]
            .map(String::from)
            .to_vec(),
        max_bundle_entries: Some(5),
    };
    if let Err(e) = check_profile_paths(&p) {
        panic!("fuzz profile itself is invalid: {e}");
    }
    p
});

const TIGHT: Limits = Limits {
    max_bytes: 64 * 1024,
    max_depth: 8,
    max_issues: 3,
};

fn check(r: &Result<Summary, Vec<Issue>>, limits: &Limits) {
    let cap = limits.max_issues.max(1);
    match r {
        Ok(s) => {
            assert!(s.warnings.len() <= cap, "{} warnings > cap {cap}", s.warnings.len());
            assert!(
                s.warnings.iter().all(|i| i.severity == Severity::Warning),
                "accepted resource carries an error issue: {:?}",
                s.warnings
            );
        }
        Err(issues) => {
            assert!(!issues.is_empty(), "rejection without issues");
            assert!(issues.len() <= cap, "{} issues > cap {cap}", issues.len());
        }
    }
}

pub fn fuzz_one(data: &[u8]) {
    let default = Limits::default();

    let base = validate_resource(data, &default, None);
    check(&base, &default);

    let profiled = validate_resource(data, &default, Some(&PROFILE));
    check(&profiled, &default);
    if let Ok(p) = &profiled {
        let b = base.as_ref().expect("accepted with profile but rejected without");
        assert_eq!(p.resource_type, b.resource_type);
        assert_eq!(p.bundle_entries, b.bundle_entries);
    }

    let tight = validate_resource(data, &TIGHT, None);
    check(&tight, &TIGHT);
    if tight.is_ok() {
        assert!(base.is_ok(), "accepted under tight limits but rejected under defaults");
    }

    match validate_json_patch(data, &default) {
        Ok(()) => {}
        Err(issues) => assert!(!issues.is_empty() && issues.len() <= default.max_issues),
    }
}
