//! `ward run --workers N`: the process serves on one event loop (N = 1, what a gateway
//! pinned to one CPU gets by default) or on a multi-threaded runtime (N > 1), and both
//! proxy real TLS traffic, run policies and hot-reload; out-of-range values are refused by
//! the command line, not at the first request.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `ward run` on `env`'s config with `workers`; the port of its public listener.
async fn run(env: &Env, workers: Option<&str>) -> (Running, u16) {
    let addresses = env.path(&format!("addresses-{}", workers.unwrap_or("default")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("run")
        .arg("--config")
        .arg(env.path("ward.yaml"))
        .arg("--addresses-file")
        .arg(&addresses)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("ward.log")).unwrap());
    if let Some(w) = workers {
        cmd.args(["--workers", w]);
    }
    let child = Running(cmd.spawn().unwrap());
    // The file is written (atomically) once every listener is bound; poll, bounded.
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&addresses) {
            let port = text
                .lines()
                .find_map(|l| l.strip_prefix("public "))
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .expect("public listener address");
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ward run did not start");
}

#[tokio::test]
async fn one_and_several_workers_serve_policies_and_reloads() {
    let (up, state) = upstream().await;
    for workers in [Some("1"), Some("2"), Some("3"), None] {
        let env = Env::new();
        env.write("policies/small.yaml", "limits:\n  max_body_bytes: 10\n");
        let cfg = basic_config(up, "", "")
            .replace("shutdown_grace: 30s", "shutdown_grace: 1s")
            .replace(
                "    path_prefix: /api\n    upstream: ehr\n",
                "    path_prefix: /api\n    upstream: ehr\n    policies: [small]\n",
            );
        env.config(&cfg);
        env.write(
            "ward.yaml",
            &format!(
                "{}log:\n  level: info\n",
                std::fs::read_to_string(env.path("ward.yaml")).unwrap()
            ),
        );
        let (_ward, port) = run(&env, workers).await;
        let c = client(&env.pki, false);
        let h2 = client(&env.pki, true);
        let base = format!("https://localhost:{port}");
        let before = state.count();
        // Many requests on several connections and both protocols: all reach the upstream.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let c = if i % 2 == 0 { c.clone() } else { h2.clone() };
            let u = format!("{base}/fhir/Patient/p{i}");
            tasks.push(tokio::spawn(async move { send(&c, get(&u)).await.status }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "workers {workers:?}");
        }
        assert_eq!(state.count(), before + 40, "workers {workers:?}");
        // A policy runs: the 10-byte limit refuses 50 bytes before the upstream.
        let big = http::Request::post(format!("{base}/api/x"))
            .body(Full::new(Bytes::from(vec![b'x'; 50])))
            .unwrap();
        assert_eq!(send(&c, big).await.status, 413, "workers {workers:?}");
        assert_eq!(state.count(), before + 40, "workers {workers:?}");
        // Hot reload through the file watcher works on every runtime shape.
        env.write("policies/small.yaml", "limits:\n  max_body_bytes: 100000\n");
        let mut status = 0;
        for _ in 0..300 {
            let big = http::Request::post(format!("{base}/api/x"))
                .body(Full::new(Bytes::from(vec![b'x'; 50])))
                .unwrap();
            status = send(&c, big).await.status;
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 200, "workers {workers:?}: reload not picked up");
        // The access log is written in batches by a writer thread: a normal stop (SIGTERM)
        // still writes every line, the last request's included.
        let last = send(&c, get(&format!("{base}/fhir/Patient/last"))).await;
        let rid = last.headers["x-request-id"].to_str().unwrap().to_owned();
        drop((c, h2));
        let pid = _ward.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let mut ward = _ward;
        let exit = ward.0.wait().unwrap();
        assert!(exit.success(), "workers {workers:?}: {exit:?}");
        let log = std::fs::read_to_string(env.path("ward.log")).unwrap();
        let access = log.lines().filter(|l| l.contains("ward::access")).count();
        assert!(
            access >= 42,
            "workers {workers:?}: {access} access lines\n{log}"
        );
        assert!(
            log.contains(&rid),
            "workers {workers:?}: last request's line missing"
        );
    }
}

#[test]
fn out_of_range_worker_counts_are_refused_at_the_command_line() {
    let env = Env::new();
    env.config(&basic_config("127.0.0.1:9".parse().unwrap(), "", ""));
    for bad in ["0", "-1", "1025", "many", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_ward"))
            .arg("run")
            .arg("--config")
            .arg(env.path("ward.yaml"))
            .arg(format!("--workers={bad}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--workers {bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--workers"), "--workers {bad:?}: {err}");
    }
}
