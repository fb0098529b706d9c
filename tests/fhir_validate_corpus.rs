//! False-rejection tests: hand-written R4 fixtures plus every HL7-authored resource embedded in
//! the R4 definition files (`$FHIR_R4_DEFS` or `<repo>/../shared/fhir-r4`; required when `CI` is set).
use std::path::{Path, PathBuf};
use ward::fhir::validate::{validate_resource, Issue, Limits};

fn show(issues: &[Issue]) -> String {
    issues
        .iter()
        .take(50)
        .map(|i| {
            format!(
                "  {:?} {} {}: {}",
                i.severity, i.code, i.expression, i.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn big_limits() -> Limits {
    Limits {
        max_bytes: 128 * 1024 * 1024,
        max_depth: 64,
        max_issues: 10_000,
    }
}

#[test]
fn fixtures_valid_all_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-valid");
    let mut n = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/fhir-valid")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let body = std::fs::read(&p).expect("read fixture");
        n += 1;
        if let Err(issues) = validate_resource(&body, &Limits::default(), None) {
            failures.push(format!("{}:\n{}", p.display(), show(&issues)));
        }
    }
    assert!(n >= 40, "expected at least 40 fixtures, found {n}");
    assert!(
        failures.is_empty(),
        "{} fixture(s) rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("validated {n} fixtures");
}

/// The R4 definitions: `$FHIR_R4_DEFS`, else `shared/fhir-r4` next to the repository
/// (`<repo>/../shared/fhir-r4`, found from `CARGO_MANIFEST_DIR`, so no machine-specific
/// path). `None` when neither holds `profiles-resources.json`.
fn defs_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(d) = std::env::var("FHIR_R4_DEFS") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fhir-r4"));
    candidates
        .into_iter()
        .find(|d| d.join("profiles-resources.json").is_file())
}

/// A missing prerequisite never passes silently: in CI (`CI` set, as every CI system
/// does) it fails the test; elsewhere it is skipped with a loud note on stderr.
fn require_defs() -> Option<PathBuf> {
    if let Some(d) = defs_dir() {
        return Some(d);
    }
    let why = "FHIR R4 definitions not found: set FHIR_R4_DEFS or provide \
               <repo>/../shared/fhir-r4/profiles-resources.json";
    let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    assert!(!in_ci, "{why} (required in CI)");
    eprintln!("\n!!! SKIPPED hl7_definition_resources_all_pass: {why} !!!\n");
    None
}

#[test]
fn hl7_definition_resources_all_pass() {
    let Some(dir) = require_defs() else {
        return;
    };
    let mut total = 0usize;
    let mut failures = Vec::new();
    let bundles = [
        "profiles-resources.json",
        "profiles-types.json",
        "valuesets.json",
        "search-parameters.json",
        "compartmentdefinition-patient.json",
    ];
    for f in bundles {
        let path = dir.join(f);
        let Ok(body) = std::fs::read(&path) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let list: Vec<serde_json::Value> = match v.get("entry").and_then(|e| e.as_array()) {
            Some(entries) => entries
                .iter()
                .filter_map(|e| e.get("resource").cloned())
                .collect(),
            None => vec![v.clone()],
        };
        // The packaged copy adds non-R4 definitions (SubscriptionStatus, fhirVersion 4.3.0). They
        // are not HL7 R4 content and are *correctly* rejected (4.3.0 is not an R4 FHIRVersion code).
        let non_r4: Vec<usize> = list
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.get("fhirVersion")
                    .and_then(|x| x.as_str())
                    .is_some_and(|fv| !fv.starts_with("4.0"))
            })
            .map(|(i, _)| i)
            .collect();
        // 1. the whole file, byte for byte (it is itself a resource, mostly a Bundle)
        match validate_resource(&body, &big_limits(), None) {
            Ok(s) => println!("{f}: whole file OK ({} entries)", s.bundle_entries),
            Err(issues) => {
                let unexpected: Vec<Issue> = issues
                    .into_iter()
                    .filter(|is| {
                        !non_r4.iter().any(|i| {
                            is.expression == format!("Bundle.entry[{i}].resource.fhirVersion")
                                && is.code == "code-invalid"
                        })
                    })
                    .collect();
                if unexpected.is_empty() {
                    println!(
                        "{f}: whole file OK apart from {} non-R4 entries",
                        non_r4.len()
                    );
                } else {
                    failures.push(format!("{f} (whole file):\n{}", show(&unexpected)));
                }
            }
        }
        // 2. every entry resource on its own (re-serialized: members sorted, so `resourceType`
        //    is usually not first -> exercises the out-of-order path)
        for (i, r) in list.iter().enumerate() {
            let b = serde_json::to_vec(r).expect("ser");
            let res = validate_resource(&b, &big_limits(), None);
            if non_r4.contains(&i) {
                let rejected_for_version = res.as_ref().err().is_some_and(|is| {
                    is.len() == 1
                        && is[0].expression.ends_with(".fhirVersion")
                        && is[0].code == "code-invalid"
                });
                assert!(
                    rejected_for_version,
                    "{f} entry {i}: non-R4 definition should be rejected on fhirVersion"
                );
                println!("NOTE: {f} entry {i} ({}) is not R4 content (fhirVersion {}); correctly rejected", r["id"], r["fhirVersion"]);
                continue;
            }
            total += 1;
            if let Err(issues) = res {
                failures.push(format!("{f} entry {i} ({}):\n{}", r["id"], show(&issues)));
            }
        }
    }
    // US Core profiles: a JSON array of StructureDefinitions
    if let Ok(body) = std::fs::read(dir.join("uscore-v5.0.1-structuredefinitions.json")) {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        for (i, r) in v.as_array().into_iter().flatten().enumerate() {
            let b = serde_json::to_vec(r).expect("ser");
            total += 1;
            if let Err(issues) = validate_resource(&b, &big_limits(), None) {
                failures.push(format!(
                    "uscore entry {i} ({}):\n{}",
                    r["id"],
                    show(&issues)
                ));
            }
        }
    }
    println!(
        "validated {total} HL7-authored resources from {}",
        dir.display()
    );
    assert!(total > 2500, "too few resources found: {total}");
    assert!(
        failures.is_empty(),
        "{} rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Robustness: truncations and single-byte corruptions of valid resources never panic, and
/// every corruption that breaks JSON is reported (never accepted as-is when truncated).
#[test]
fn mutations_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-valid");
    for name in [
        "patient-full.json",
        "bundle-transaction.json",
        "questionnaireresponse.json",
    ] {
        let body = std::fs::read(dir.join(name)).expect("fixture");
        let lim = Limits::default();
        let end = body
            .iter()
            .rposition(|c| !c.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        for cut in 0..end {
            let r = validate_resource(&body[..cut], &lim, None);
            // a strict prefix of a JSON object is never a complete JSON text
            assert!(r.is_err(), "{name}: truncated at {cut} accepted");
        }
        for pos in 0..body.len() {
            for b in [b'"', b'{', b'[', b',', b'\\', 0xff, b'0', b'n', b'}'] {
                let mut m = body.clone();
                m[pos] = b;
                let _ = validate_resource(&m, &lim, None);
                let _ = ward::fhir::validate::validate_json_patch(&m, &lim);
            }
        }
    }
}

/// A body lexed once (`json::Index`, shared by a route's policies) is validated exactly as a
/// body the validator lexes itself: same verdict, same findings, in the same order — for
/// every fixture and generated corruptions of three of them (substituted, deleted and
/// doubled bytes; truncations), as resources and as JSON Patch documents, at default and at
/// tight limits.
#[test]
fn indexed_validation_finds_exactly_what_unindexed_validation_finds() {
    use ward::fhir::validate::{
        validate_json_patch, validate_json_patch_indexed, validate_resource_indexed,
        validate_resource_with,
    };
    use ward::json::Index;
    fn verdict<T>(r: &Result<T, Vec<Issue>>) -> String {
        match r {
            Ok(_) => "ok".to_owned(),
            Err(issues) => show(issues),
        }
    }
    let tight = Limits {
        max_bytes: 1 << 20,
        max_depth: 4,
        max_issues: 3,
    };
    let mut n = 0;
    let mut check = |body: &[u8]| {
        let ix = Index::build(body).expect("small");
        for lim in [Limits::default(), tight] {
            let a = validate_resource_with(body, &lim, None);
            let b = validate_resource_indexed(body, Some(&ix), &lim, None);
            assert_eq!(
                verdict(&a),
                verdict(&b),
                "{}",
                String::from_utf8_lossy(body)
            );
            if let (Ok(x), Ok(y)) = (&a, &b) {
                assert_eq!(x.resource_type, y.resource_type);
                assert_eq!(show(&x.warnings), show(&y.warnings));
            }
            let p = validate_json_patch(body, &lim);
            let q = validate_json_patch_indexed(body, Some(&ix), &lim);
            assert_eq!(verdict(&p), verdict(&q));
        }
        n += 1;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir-valid");
    for e in std::fs::read_dir(&dir).expect("fixtures").flatten() {
        if e.path().extension().and_then(|x| x.to_str()) == Some("json") {
            check(&std::fs::read(e.path()).unwrap());
        }
    }
    check(br#"[{"op":"replace","path":"/name/0/family","value":{"a":[1,"x"]}}]"#);
    for name in [
        "patient-full.json",
        "bundle-transaction.json",
        "questionnaireresponse.json",
    ] {
        let body = std::fs::read(dir.join(name)).expect("fixture");
        for cut in (0..body.len()).step_by(7) {
            check(&body[..cut]);
        }
        for pos in (0..body.len()).step_by(5) {
            for b in [b'"', b'{', b']', b',', b'\\', 0xff, b'0', b'n', b' '] {
                let mut m = body.clone();
                m[pos] = b;
                check(&m);
            }
            let mut del = body.clone();
            del.remove(pos);
            check(&del);
        }
    }
    assert!(n > 5_000, "{n} bodies");
}
