//! Fuzz regressions replayed by `cargo test`: every input under `fuzz/regressions/<target>/`
//! (and every seed under `fuzz/seeds/<target>/`) goes through the same invariant checks as
//! the libFuzzer target `fuzz/fuzz_targets/<target>.rs`, run against the `ward` crate.
//!
//! The checks are not rewritten by hand: `tests/fuzz_replay/<target>.rs` is the fuzz target
//! with the libFuzzer wrapper mechanically turned into `pub fn fuzz_one(data: &[u8])` (see
//! [`derive_replay`]), and `replay_copies_match_the_fuzz_targets` fails as soon as a target
//! and its copy differ, so a changed invariant cannot be forgotten here. To refresh the
//! copies after editing a target: `WARD_WRITE_FUZZ_REPLAY=1 cargo test --test fuzz_regressions`.
use std::path::{Path, PathBuf};

#[rustfmt::skip]
#[path = "fuzz_replay/base_url.rs"]
mod base_url;
#[rustfmt::skip]
#[path = "fuzz_replay/dlp.rs"]
mod dlp;
#[rustfmt::skip]
#[path = "fuzz_replay/er7.rs"]
mod er7;
#[rustfmt::skip]
#[path = "fuzz_replay/fhir_request.rs"]
mod fhir_request;
#[rustfmt::skip]
#[path = "fuzz_replay/fhir_validate.rs"]
mod fhir_validate;
#[rustfmt::skip]
#[path = "fuzz_replay/json_differential.rs"]
mod json_differential;
#[rustfmt::skip]
#[path = "fuzz_replay/path.rs"]
mod path;

/// One fuzz target's checks on one input (panics on a violation).
type Check = fn(&[u8]);

/// Every fuzz target and its replayed checks. A target directory not listed here fails
/// `every_target_is_replayed`.
const TARGETS: &[(&str, Check)] = &[
    ("base_url", base_url::fuzz_one),
    ("dlp", dlp::fuzz_one),
    ("er7", er7::fuzz_one),
    ("fhir_request", fhir_request::fuzz_one),
    ("fhir_validate", fhir_validate::fuzz_one),
    ("json_differential", json_differential::fuzz_one),
    ("path", path::fuzz_one),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fuzz target's source with the libFuzzer wrapper replaced, so it compiles as a test
/// module against `ward` (the fuzz crate mirrors `ward`'s module paths as `ward_fuzz`).
fn derive_replay(target_src: &str) -> String {
    let mut out = String::from(
        "// GENERATED from fuzz/fuzz_targets/ by tests/fuzz_regressions.rs (derive_replay);\n\
         // do not edit: edit the fuzz target and refresh (see that file's header).\n",
    );
    let lines: Vec<&str> = target_src.lines().collect();
    // The target body is the last item: its closing `});` is the file's last one.
    let close = lines.iter().rposition(|l| *l == "});");
    for (i, line) in lines.iter().enumerate() {
        let line = match *line {
            "#![no_main]" | "use libfuzzer_sys::fuzz_target;" => continue,
            "fuzz_target!(|data: &[u8]| {" => "pub fn fuzz_one(data: &[u8]) {".to_owned(),
            _ if Some(i) == close => "}".to_owned(),
            l => l.replace("ward_fuzz::", "ward::"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn replay_copies_match_the_fuzz_targets() {
    let write = std::env::var_os("WARD_WRITE_FUZZ_REPLAY").is_some();
    let mut stale = Vec::new();
    for (name, _) in TARGETS {
        let src = std::fs::read_to_string(root().join(format!("fuzz/fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz target {name}: {e}"));
        let want = derive_replay(&src);
        let copy = root().join(format!("tests/fuzz_replay/{name}.rs"));
        if std::fs::read_to_string(&copy).ok().as_deref() != Some(want.as_str()) {
            if write {
                std::fs::write(&copy, &want).unwrap();
            }
            stale.push(copy.display().to_string());
        }
    }
    assert!(
        write || stale.is_empty(),
        "replay copies differ from their fuzz targets (refresh with WARD_WRITE_FUZZ_REPLAY=1): {stale:?}"
    );
}

#[test]
fn every_target_is_replayed() {
    let mut targets: Vec<String> = std::fs::read_dir(root().join("fuzz/fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    targets.sort();
    let known: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(targets, known, "a fuzz target has no replay here");
    for dir in ["fuzz/regressions", "fuzz/seeds"] {
        for e in std::fs::read_dir(root().join(dir)).expect(dir).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // .gitkeep and the like
            }
            assert!(
                known.contains(&name.as_str()),
                "{dir}/{name}: no fuzz target of that name, so nothing would replay it"
            );
        }
    }
}

/// Files directly under `dir` (sorted); none if `dir` does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs every input of `kind` ("regressions" or "seeds") through its target's checks;
/// collects every failure (a panic is a failure) instead of stopping at the first.
fn replay(kind: &str) -> usize {
    let mut n = 0;
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        for input in inputs(&root().join("fuzz").join(kind).join(name)) {
            let data = std::fs::read(&input).unwrap();
            n += 1;
            if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", input.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    n
}

#[test]
fn fuzz_regressions_still_pass() {
    let n = replay("regressions");
    assert!(n >= 1, "no regression inputs found under fuzz/regressions");
}

#[test]
fn fuzz_seeds_pass() {
    let n = replay("seeds");
    assert!(n >= 5, "only {n} seed inputs found under fuzz/seeds");
}
