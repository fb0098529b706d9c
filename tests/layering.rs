//! The module graph reads like the architecture (`src/lib.rs` states the rule; this test holds
//! it in CI). It reads every `crate::…` and `super::…` path in `src/` (outside comments and
//! unit-test modules), resolves each to the module it names, and checks:
//!
//! 1. there is no cycle among modules;
//! 2. every import goes down or sideways in the layer order
//!    leaves → engines → policies → stack/router → servers → gateway/CLI;
//! 3. a policy never imports another policy (shared pieces live in leaves or engines);
//! 4. `config/mod.rs`, which gathers every layer's config types into one file format, is
//!    imported only by the composition layer (`stack`, `router`) and the gateway/CLI;
//!    everything else takes its settings from `config::primitives` or its own config type.
//!
//! A new module must be given a layer below (an unknown module fails the test), so the map
//! stays complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of a module by its first path segment (`config::primitives` is a leaf).
fn layer(module: &str) -> Option<u8> {
    if module == "config::primitives" {
        return Some(1);
    }
    let top = module.split("::").next().unwrap_or(module);
    Some(match top {
        // Leaves: value types, typed request extensions, errors, clocks, shutdown, metrics,
        // TLS set-up, identities, path canonicalisation, tower plumbing.
        "context" | "error" | "calendar" | "service" | "shutdown" | "metrics" | "tls"
        | "identity" | "path" | "hex" | "body" | "breaker" | "logwriter" | "accesslog" => 1,
        // Engines: pure-ish machinery the policies drive.
        "fhir" | "hl7v2" | "dlp" | "ratelimit" | "respond" | "audit" | "proxy" | "conn_guard"
        | "json" | "oauth" => 2,
        // Policies: decisions, one per file.
        "policy" => 3,
        // Composition: which layers a route gets, which route a request takes.
        "stack" | "router" => 4,
        // Servers: sockets, handshakes, drains.
        "server" | "admin" | "mllp" => 5,
        // Gateway start-up, reload, configuration and the CLI's tools.
        "lib" | "main" | "gateway" | "reload" | "watch" | "config" | "demo" | "doctor" | "init" => {
            6
        }
        _ => return None,
    })
}

/// Every module of the crate: its path (`dlp::json`) → its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut m = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        // A `tests.rs` beside a module is that module's unit tests.
        if parts.last().is_some_and(|p| p == "tests") && parts.len() > 1 {
            continue;
        }
        m.insert(parts.join("::"), f);
    }
    m
}

/// The code of a file without comments, string contents that look like paths, and unit-test
/// modules (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            // Keep `"http://…"` inside strings from cutting the line: a comment starts
            // only after an even number of quotes.
            Some(k) if line[..k].matches('"').count() % 2 == 0 => &line[..k],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    match out.find("#[cfg(test)]\nmod ") {
        Some(k) => out[..k].to_owned(),
        None => out,
    }
}

fn ident_at(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// Paths of a use-tree starting at `i` (after `crate::`), with `prefix` before them.
fn use_tree(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        if s.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                i = use_tree(s, i, path.clone(), out);
            }
        }
        let (id, j) = ident_at(s, i);
        if id.is_empty() {
            out.push(path);
            return j.max(i + 1);
        }
        path.push(id);
        i = j;
        if s.get(i..i + 2) == Some(b"::") {
            i += 2;
            continue;
        }
        out.push(path);
        // Skip an `as alias`.
        return i;
    }
}

/// Modules `module` (whose file is `file`) imports.
fn imports(module: &str, file: &Path, names: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code_of(&std::fs::read_to_string(file).unwrap());
    let s = code.as_bytes();
    // `super` is the parent of the module the file defines (for `dlp/mod.rs`, the crate
    // root; for `dlp/json.rs`, `dlp`).
    let here: Vec<String> = if module == "lib" || module == "main" {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
    let mut paths: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let word_start = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        if word_start && rest.starts_with(b"crate::") {
            i = use_tree(s, i + 7, Vec::new(), &mut paths);
        } else if word_start && rest.starts_with(b"super::") {
            let mut p = parent.clone();
            let mut j = i + 7;
            while s[j..].starts_with(b"super::") {
                p.pop();
                j += 7;
            }
            i = use_tree(s, j, p, &mut paths);
        } else {
            i += 1;
        }
    }
    let mut out = BTreeSet::new();
    for p in paths {
        // The longest module prefix; items of the crate root (`crate::Body`) are re-exports
        // of leaves and name no module.
        for n in (1..=p.len()).rev() {
            let cand = p[..n].join("::");
            if names.contains(&cand) {
                if cand != module {
                    out.insert(cand);
                }
                break;
            }
        }
    }
    out
}

/// Every rule broken in the tree under `src`, and the import graph.
fn check(src: &Path) -> (Vec<String>, BTreeMap<String, BTreeSet<String>>) {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, f) in &mods {
        edges.insert(m.clone(), imports(m, f, &names));
    }
    let mut problems: Vec<String> = Vec::new();
    for m in mods.keys() {
        if layer(m).is_none() {
            problems.push(format!("module `{m}` has no layer in tests/layering.rs"));
        }
    }
    for (a, bs) in &edges {
        let la = layer(a).unwrap_or(0);
        for b in bs {
            let lb = layer(b).unwrap_or(0);
            let composition = matches!(a.as_str(), "stack" | "router");
            if b == "config" {
                if la < 6 && !composition {
                    problems.push(format!(
                        "`{a}` imports config/mod.rs: take `config::primitives` or its own config type"
                    ));
                }
                continue;
            }
            if la < lb {
                problems.push(format!("`{a}` (layer {la}) imports `{b}` (layer {lb})"));
            }
            if a.starts_with("policy::")
                && b.starts_with("policy::")
                && a.split("::").nth(1) != b.split("::").nth(1)
            {
                problems.push(format!(
                    "policy `{a}` imports policy `{b}`: move what they share to a leaf"
                ));
            }
        }
    }
    // Cycles: a depth-first search that reports each back edge's loop.
    fn dfs(
        v: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) {
        state.insert(v.to_owned(), 1);
        stack.push(v.to_owned());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => dfs(w, edges, state, stack, out),
                1 => {
                    let k = stack.iter().position(|x| x == w).unwrap_or(0);
                    out.push(format!("cycle: {} -> {w}", stack[k..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_owned(), 2);
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            dfs(v, &edges, &mut state, &mut Vec::new(), &mut problems);
        }
    }
    (problems, edges)
}

#[test]
fn module_graph_is_layered_and_acyclic() {
    let (problems, edges) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        problems.is_empty(),
        "module layering broken:\n  {}",
        problems.join("\n  ")
    );
    // The checker itself sees imports (a parser that saw nothing would pass everything).
    assert!(
        edges["stack"].contains("policy::auth"),
        "{:?}",
        edges["stack"]
    );
    assert!(edges["dlp::json"].contains("fhir::validate"));
    assert!(
        edges["hl7v2::ack"].contains("hl7v2::er7"),
        "{:?}",
        edges["hl7v2::ack"]
    );
}

#[test]
fn the_checker_catches_what_it_claims() {
    // A policy importing another policy, an engine importing a policy, a leaf importing an
    // engine, and a cycle — on a scratch tree.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let w = |p: &str, t: &str| {
        let f = src.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, t).unwrap();
    };
    w("lib.rs", "pub mod context; pub mod policy; pub mod dlp;");
    w(
        "context.rs",
        "use crate::dlp::Engine;\n// crate::policy::auth in a comment\n",
    );
    w(
        "dlp/mod.rs",
        "use crate::policy::auth::{Claims, x};\nuse crate::context::A;",
    );
    w("policy/mod.rs", "");
    w(
        "policy/auth.rs",
        "use crate::{policy::audit::Slot, context::B};",
    );
    w(
        "policy/audit.rs",
        "use super::auth::Claims;\n#[cfg(test)]\nmod tests { use crate::dlp::X; }",
    );
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let e = |m: &str| imports(m, &mods[m], &names);
    assert_eq!(e("context"), BTreeSet::from(["dlp".to_owned()]));
    assert_eq!(
        e("dlp"),
        BTreeSet::from(["policy::auth".to_owned(), "context".to_owned()])
    );
    assert_eq!(
        e("policy::auth"),
        BTreeSet::from(["policy::audit".to_owned(), "context".to_owned()])
    );
    assert_eq!(
        e("policy::audit"),
        BTreeSet::from(["policy::auth".to_owned()])
    );
    let (problems, _) = check(src);
    let all = problems.join("\n");
    assert!(
        all.contains("`context` (layer 1) imports `dlp` (layer 2)"),
        "{all}"
    );
    assert!(
        all.contains("`dlp` (layer 2) imports `policy::auth` (layer 3)"),
        "{all}"
    );
    assert!(
        all.contains("policy `policy::auth` imports policy `policy::audit`"),
        "{all}"
    );
    assert!(all.contains("cycle: "), "{all}");
}
