//! The `ward run` binary as an operator runs it: JSON logs with one access line per
//! request (no query strings), and SIGTERM drains then exits 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn run_logs_access_lines_and_exits_cleanly_on_sigterm() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let cfg = env.write("ward.yaml", &basic_config(up, "", ""));
    let WardProcess {
        mut child,
        port,
        lines: rx,
        seen,
    } = spawn_ward(&cfg);
    let mut lines = seen;
    let c = client(&env.pki, false);
    let r = send(
        &c,
        get(&format!(
            "https://localhost:{port}/api/x?patient=SECRET-MRN-123&access_token=tok"
        )),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(state.count(), 1);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();

    // The shell's builtin `kill`: no dependency on a procps binary.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "ward must exit 0 after draining");
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    let all = lines.join("\n");
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ward::access")
        .collect();
    assert_eq!(access.len(), 1, "{all}");
    let a = &access[0];
    assert_eq!(a["request_id"], rid.as_str());
    assert_eq!(a["route"], "api");
    assert_eq!(a["status"], 200);
    assert_eq!(a["completed"], true);
    assert!(a["duration_ms"].as_f64().is_some());
    assert!(
        !all.contains("SECRET-MRN-123") && !all.contains("access_token"),
        "query string logged:\n{all}"
    );
    assert!(all.contains("drained"), "{all}");
}
