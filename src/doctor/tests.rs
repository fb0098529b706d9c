//! Unit tests of `doctor`.

use super::*;

#[test]
fn metric_sums_by_label() {
    let t = "# HELP x\nward_config_reloads_total{result=\"error\"} 2\nward_config_reloads_total{result=\"ok\"} 5\nward_config_reloads_total_other 9\nward_audit_write_errors_total 3\n";
    assert_eq!(
        metric_sum(t, "ward_config_reloads_total", "result", "error"),
        2.0
    );
    assert_eq!(
        metric_sum(t, "ward_config_reloads_total", "result", "ok"),
        5.0
    );
    assert_eq!(metric_sum(t, "ward_config_reloads_total", "", ""), 7.0);
    assert_eq!(metric_sum(t, "ward_audit_write_errors_total", "", ""), 3.0);
    assert_eq!(metric_sum(t, "ward_missing_total", "", ""), 0.0);
}

#[test]
fn rfc3339() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(parse_rfc3339("1970-01-02T01:00:01Z"), Some(86_400 + 3601));
    for bad in [
        "",
        "1970-13-01T00:00:00Z",
        "1970-01-01 00:00:00Z",
        "x970-01-01T00:00:00Z",
        "1970-01-01T00:00:00",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn audit_growth_measured_from_first_and_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let rec = |seq: u32, time: &str| {
        format!("{{\"seq\":{seq},\"prev\":\"x\",\"time\":\"{time}\",\"kind\":\"http\",\"hash\":\"y\"}}\n")
    };
    // Spans of 10 minutes and more are measured; shorter ones, and files whose
    // records carry no readable time, fall back (None).
    for (last, pad, want) in [
        ("2026-01-01T00:10:00.000Z", 100_000usize, Some(600u64)),
        ("2026-01-01T01:00:00.000Z", 70_000, Some(3600)),
        ("2026-01-02T00:00:00.000Z", 200_000, Some(86_400)),
        ("2026-01-01T00:09:59.000Z", 1000, None),
        ("2026-01-01T00:00:00.000Z", 1000, None),
        ("garbage", 1000, None),
    ] {
        let text = format!(
            "{}{}\n{}",
            rec(1, "2026-01-01T00:00:00.000Z"),
            "x".repeat(pad),
            rec(2, last)
        );
        std::fs::write(&p, &text).unwrap();
        let size = text.len() as u64;
        assert_eq!(
            measured_growth(&p),
            want.map(|span| size * 86_400 / span),
            "{last}"
        );
    }
    assert_eq!(measured_growth(&dir.path().join("missing")), None);
    #[cfg(unix)]
    assert!(free_bytes(&p).is_some());
}

#[test]
fn live_checks_read_metrics_that_exist() {
    let src = include_str!("../metrics.rs");
    for (metric, label, _, _, _, text) in LIVE_CHECKS {
        assert!(src.contains(&format!("\"{metric}\"")), "{metric}");
        if !label.is_empty() {
            assert!(src.contains(&format!("\"{label}\"")), "{metric} {label}");
        }
        assert!(text.contains('|'), "{metric}: what|fix");
    }
}

#[test]
fn exit_codes_by_worst() {
    let f = |s| Finding {
        id: "x",
        severity: s,
        file: None,
        line: None,
        key: None,
        message: String::new(),
        fix: String::new(),
    };
    assert_eq!(exit_code(&[]), 0);
    assert_eq!(exit_code(&[f(Severity::Info)]), 0);
    assert_eq!(exit_code(&[f(Severity::Info), f(Severity::Low)]), 1);
    assert_eq!(exit_code(&[f(Severity::Medium)]), 1);
    assert_eq!(exit_code(&[f(Severity::High), f(Severity::Low)]), 2);
    assert_eq!(exit_code(&[f(Severity::Critical), f(Severity::High)]), 3);
}

#[test]
fn loopback_hosts() {
    for h in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "::1",
        "127.5.5.5",
        "::ffff:127.0.0.1",
    ] {
        assert!(is_loopback_host(h), "{h}");
    }
    for h in ["10.0.0.1", "ehr.example.org", "0.0.0.0", "[::]"] {
        assert!(!is_loopback_host(h), "{h}");
    }
}
