//! Unit tests of `config`.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("5d"), None);
    assert_eq!(parse_duration("9999999999999h"), None);
    assert_eq!(parse_duration("169h"), None);
}

#[test]
fn every_error_reported_with_lines() {
    let text = "\
listeners:
  - name: a
    bind: nonsense
    plaintext: true
upstreams:
  - name: u
    url: http://127.0.0.1:1
    bogus: 1
routes:
  - name: r
    listener: missing
    path_prefix: /x/../y
    upstream: u
extra: 1
";
    let errs = load_str("ward.yaml", text, Path::new("/nonexistent"), &no_env).unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let joined = all.join("\n");
    assert!(
        joined.contains("ward.yaml:3: listeners[0].bind"),
        "{joined}"
    );
    assert!(
        joined.contains("ward.yaml:8: upstreams[0].bogus: unknown field `bogus`"),
        "{joined}"
    );
    assert!(
        joined.contains("ward.yaml:11: routes[0].listener"),
        "{joined}"
    );
    assert!(
        joined.contains("ward.yaml:12: routes[0].path_prefix"),
        "{joined}"
    );
    assert!(joined.contains("ward.yaml:14: extra"), "{joined}");
}

#[test]
fn secrets_never_echoed() {
    let text = "listeners: []\nshutdown_grace: ${SECRET}\n";
    let vars = |n: &str| (n == "SECRET").then(|| "s3cr3t-value".to_owned());
    let errs = load_str("w.yaml", text, Path::new("/x"), &vars).unwrap_err();
    let joined: String = errs.iter().map(|e| e.to_string()).collect();
    assert!(!joined.contains("s3cr3t"), "{joined}");
    assert!(joined.contains("w.yaml:2: shutdown_grace"), "{joined}");
}
