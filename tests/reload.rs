//! Hot reload: continuous load on several routes while the config is reloaded 50 times
//! fails no request; a changed policy applies to the next request; a request in flight
//! finishes on the config it started with; a broken config (or one changing what needs a
//! restart) changes nothing; editing a policy file is picked up without a signal.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn config(up: std::net::SocketAddr) -> String {
    basic_config(up, "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [toggle]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    policies: [toggle]\n",
        )
}

const SMALL: &str = "limits:\n  max_body_bytes: 10\n";
const LARGE: &str = "limits:\n  max_body_bytes: 100000\n";

fn post(url: &str, n: usize) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from(vec![b'x'; n])))
        .unwrap()
}

#[tokio::test]
async fn fifty_reloads_under_load_fail_no_request() {
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    let (up, _state) = upstream().await;
    let gw = Arc::new(env.start(&config(up)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for t in 0..4 {
        let c = client(&env.pki, t % 2 == 0);
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let u = url(&gw, if t < 2 { "/fhir/Patient" } else { "/api/x" });
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Bodies under both limits: every request must succeed under either config.
                match tokio::time::timeout(Duration::from_secs(30), c.request(post(&u, 5))).await {
                    Ok(Ok(r)) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..50 {
        env.write(
            "policies/toggle.yaml",
            if i % 2 == 0 { SMALL } else { LARGE },
        );
        gw.reload_config()
            .await
            .unwrap_or_else(|e| panic!("reload {i}: {e:?}"));
        // Let some requests through on each generation.
        let before = ok.load(Ordering::Relaxed);
        for _ in 0..1000 {
            if ok.load(Ordering::Relaxed) >= before + 4 {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    // 50 explicit reloads, plus whatever the file watcher added for the same edits.
    assert!(reloads(&gw, "ok").await >= 50.0);
}

#[tokio::test]
async fn a_changed_policy_applies_to_the_next_request_and_a_broken_one_changes_nothing() {
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    let (up, state) = upstream().await;
    let gw = env.start(&config(up)).await;
    let c = client(&env.pki, false);
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 50)).await.status, 200);

    env.write("policies/toggle.yaml", SMALL);
    gw.reload_config().await.unwrap();
    let r = send(&c, post(&url(&gw, "/api/x"), 50)).await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));

    // A broken policy: refused with its file and line; the running config is untouched.
    env.write("policies/toggle.yaml", "limits:\n  max_body_byte: 100000\n");
    let errs = gw.reload_config().await.unwrap_err();
    assert!(errs.iter().any(|e| e.contains("toggle.yaml:2")), "{errs:?}");
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 50)).await.status, 413);
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 5)).await.status, 200);
    // A config that changes what only a restart can change: refused, nothing changes.
    let cfg = env.path("ward.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    env.write("policies/toggle.yaml", LARGE);
    std::fs::write(
        &cfg,
        text.replace("shutdown_grace: 30s", "shutdown_grace: 5s"),
    )
    .unwrap();
    let errs = gw.reload_config().await.unwrap_err();
    assert!(errs[0].contains("need a restart"), "{errs:?}");
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 50)).await.status, 413);
    std::fs::write(&cfg, text).unwrap();
    assert!(reloads(&gw, "error").await >= 2.0);
    assert!(state.count() >= 2);
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_its_config() {
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    let (up, state) = upstream().await;
    // The gated route takes the toggle policy too.
    let cfg = config(up).replace(
        "    path_prefix: /gate\n    upstream: ehr\n",
        "    path_prefix: /gate\n    upstream: ehr\n    policies: [toggle]\n",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, true);
    let held = {
        let (c, u) = (c.clone(), url(&gw, "/gate/x"));
        tokio::spawn(async move { send(&c, post(&u, 50)).await.status })
    };
    state.gate_entered.notified().await;
    env.write("policies/toggle.yaml", SMALL);
    gw.reload_config().await.unwrap();
    // New requests see the new limit…
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 50)).await.status, 413);
    // …the one in flight completes under the old one.
    state.gate.notify_one();
    assert_eq!(held.await.unwrap(), 200);
}

#[tokio::test]
async fn editing_a_policy_file_reloads_without_a_signal() {
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    let (up, _) = upstream().await;
    let gw = env.start(&config(up)).await;
    let c = client(&env.pki, false);
    assert_eq!(send(&c, post(&url(&gw, "/api/x"), 50)).await.status, 200);
    env.write("policies/toggle.yaml", SMALL);
    // The watcher debounces; wait (bounded) for the new limit to show.
    assert_eq!(
        until_status(&c, &gw, 413).await,
        413,
        "the file change was not picked up"
    );
}

async fn reloads(gw: &ward::Gateway, result: &str) -> f64 {
    let (_, m) = admin_get(gw, "/metrics").await;
    let prefix = format!("ward_config_reloads_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_reload_keeps_the_buckets_of_unchanged_limits() {
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    env.write(
        "policies/limit.yaml",
        "rate_limit:\n  limits:\n    - name: per-route\n      key: route\n      rate: 2\n      per: hour\n",
    );
    let (up, _) = upstream().await;
    let cfg = config(up).replace(
        "    policies: [toggle]\n",
        "    policies: [toggle, limit]\n",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    let get_api = || send(&c, get(&url(&gw, "/api/x")));
    assert_eq!(get_api().await.status, 200);
    assert_eq!(get_api().await.status, 200);
    assert_eq!(get_api().await.status, 429);
    // Another policy changes; the limit does not: its spent bucket stays spent.
    env.write("policies/toggle.yaml", SMALL);
    gw.reload_config().await.unwrap();
    assert_eq!(
        get_api().await.status,
        429,
        "a reload must not reset a limit"
    );
    // A changed limit is a new limit, with a fresh bucket.
    env.write(
        "policies/limit.yaml",
        "rate_limit:\n  limits:\n    - name: per-route\n      key: route\n      rate: 3\n      per: hour\n",
    );
    gw.reload_config().await.unwrap();
    assert_eq!(get_api().await.status, 200);
}

/// POSTs 50 bytes to `path` on a spawned ward until the status is `want` (bounded).
async fn poll_status(c: &TestClient, port: u16, path: &str, want: u16) -> u16 {
    let mut status = 0;
    for _ in 0..300 {
        status = send(c, post(&format!("https://localhost:{port}{path}"), 50))
            .await
            .status;
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

/// `ward run --config <relative>` as operators type it: a bare file name (whose parent is
/// ""), `./`, a sub-folder and a path through `..`, each run from the folder the path is
/// relative to. Editing a policy file and then the config file itself must each be picked
/// up by the watcher, with no signal.
#[tokio::test]
async fn a_relative_config_path_hot_reloads_config_and_policy_edits() {
    for arg in [
        "ward.yaml",
        "./ward.yaml",
        "sub/ward.yaml",
        "sub/../ward.yaml",
    ] {
        let env = Env::new();
        std::fs::create_dir_all(env.path("sub")).unwrap();
        env.write("policies/toggle.yaml", LARGE);
        let (up, state) = upstream().await;
        let mut yaml = config(up);
        if arg.starts_with("sub/ward") {
            // Relative paths inside the config are relative to its own folder.
            yaml = yaml.replace("certs/", "../certs/") + "policies_dir: ../policies\n";
        }
        let cfg_path = env.write(arg, &yaml);
        // `_lines` stays alive: dropping it would stop the stderr reader and, once the
        // pipe fills with access lines, stall the gateway.
        let WardProcess {
            mut child,
            port,
            lines: _lines,
            ..
        } = spawn_ward_in(env.dir.path(), std::path::Path::new(arg));
        let c = client(&env.pki, false);
        assert_eq!(poll_status(&c, port, "/api/x", 200).await, 200, "{arg}");
        let before = state.count();
        assert!(before >= 1, "{arg}: the upstream saw nothing");

        env.write("policies/toggle.yaml", SMALL);
        let s = poll_status(&c, port, "/api/x", 413).await;
        assert_eq!(s, 413, "{arg}: the policy edit was not picked up");
        let refused_at = state.count();

        // Now the config file itself: the /api route drops the policy.
        let edited = yaml.replacen(
            "    path_prefix: /api\n    upstream: ehr\n    policies: [toggle]\n",
            "    path_prefix: /api\n    upstream: ehr\n",
            1,
        );
        assert_ne!(edited, yaml);
        std::fs::write(&cfg_path, edited).unwrap();
        let s = poll_status(&c, port, "/api/x", 200).await;
        assert_eq!(s, 200, "{arg}: the config edit was not picked up");
        // The 413s never reached the upstream; the last request did, with its body.
        assert_eq!(state.count(), refused_at + 1, "{arg}");
        assert_eq!(state.last().body.len(), 50, "{arg}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Poll (bounded) until a POST of 50 bytes gets `want`.
async fn until_status(c: &TestClient, gw: &ward::Gateway, want: u16) -> u16 {
    let mut status = 0;
    for _ in 0..300 {
        status = send(c, post(&url(gw, "/api/x"), 50)).await.status;
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

/// Every way editors, config tools and Kubernetes change a file is seen: in-place rewrite,
/// truncate-then-append, write-a-temporary-then-rename, delete-then-create, and a swap of a
/// symlink in the folder. The watcher only subscribes to content and name changes, so each
/// style must land on one of those events. Reading the files (as any backup agent or a web
/// server sharing the folder would) between edits is not a change and must not break the
/// sequence.
#[tokio::test]
async fn every_edit_style_is_picked_up_and_reads_are_not_changes() {
    use std::io::Write;
    let env = Env::new();
    env.write("policies/toggle.yaml", LARGE);
    let (up, _) = upstream().await;
    let gw = env.start(&config(up)).await;
    let c = client(&env.pki, false);
    let file = env.path("policies/toggle.yaml");
    type Edit<'a> = Box<dyn Fn(&str) + 'a>;
    let styles: Vec<(&str, Edit)> = vec![
        (
            "in place",
            Box::new(|t: &str| std::fs::write(env.path("policies/toggle.yaml"), t).unwrap()),
        ),
        (
            "truncate then append",
            Box::new(|t: &str| {
                let p = env.path("policies/toggle.yaml");
                std::fs::File::create(&p).unwrap();
                let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                f.write_all(t.as_bytes()).unwrap();
            }),
        ),
        (
            "temporary then rename",
            Box::new(|t: &str| {
                let tmp = env.path("policies/.toggle.yaml.swp");
                std::fs::write(&tmp, t).unwrap();
                std::fs::rename(&tmp, env.path("policies/toggle.yaml")).unwrap();
            }),
        ),
        (
            "delete then create",
            Box::new(|t: &str| {
                let p = env.path("policies/toggle.yaml");
                std::fs::remove_file(&p).unwrap();
                std::fs::write(&p, t).unwrap();
            }),
        ),
        #[cfg(unix)]
        (
            "symlink swap",
            Box::new(|t: &str| {
                let dir = env.path("policies");
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let target = env.path(&format!("..real-{n}.yaml"));
                std::fs::write(&target, t).unwrap();
                let link = dir.join(".toggle.tmp");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&target, &link).unwrap();
                std::fs::rename(&link, dir.join("toggle.yaml")).unwrap();
            }),
        ),
    ];
    let mut want_small = true;
    for (name, edit) in &styles {
        for _ in 0..50 {
            let _ = std::fs::read(&file).unwrap();
            let _ = std::fs::read(env.path("policies")).ok();
        }
        let (text, want) = if want_small {
            (SMALL, 413)
        } else {
            (LARGE, 200)
        };
        edit(text);
        assert_eq!(
            until_status(&c, &gw, want).await,
            want,
            "{name}: change not picked up"
        );
        want_small = !want_small;
    }
}
