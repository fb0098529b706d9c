//! The access log line of `ward run`, as an operator's log parser reads it: over real TLS
//! (client certificates included), in JSON and text (with and without colours), for
//! generated awkward listener names, route names and client-certificate names (quotes,
//! backslashes, every kind of control character, ANSI sequences, non-ASCII). Every line is
//! parsed back and compared with what was configured and sent; no value may break a line.
//! And the filter (`WARD_LOG`, `log.level`) turns the line off and on.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A YAML double-quoted scalar for any string: printable ASCII as is, everything else as a
/// `\U` escape (YAML 1.2), so the config carries exactly these characters.
fn yaml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Characters that must not break, forge or colour a log line.
const NASTY: &[char] = &[
    '"', '\\', '\n', '\r', '\t', '\0', '\u{1}', '\u{8}', '\u{c}', '\u{1b}', '\u{1f}', '\u{7f}',
    '\u{85}', '\u{9b}', '=', ' ', '\'', '{', '}', ':', 'é', '日', '🩺', '\u{301}', '\u{200b}',
    '\u{2028}', '\u{feff}', '\u{202e}',
];

/// Distinct non-empty names: each nasty character alone inside a word, then random mixes.
fn names(tag: &str, n: usize, seed: u64) -> Vec<String> {
    let mut v: Vec<String> = NASTY
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{tag}{i}{c}x"))
        .collect();
    v.push(format!("{tag}\" route=forged level=ERROR"));
    v.push(format!("{tag}\u{1b}[31mred\u{1b}[0m"));
    v.push(format!("{tag}\"}},\"status\":200,\"x\":\""));
    let mut x = seed | 1;
    let mut i = 0;
    while v.len() < n {
        let mut s = format!("{tag}r{i}");
        for _ in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push(NASTY[(x % NASTY.len() as u64) as usize]);
        }
        v.push(s);
        i += 1;
    }
    v.truncate(n);
    v
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Json,
    Text { ansi: bool },
}

/// Start `ward run` on the config in `env`, stderr to `ward.log`; the public listener's port.
async fn start(env: &Env, vars: &[(&str, &str)]) -> (Running, u16) {
    let addresses = env.path("addresses");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("run")
        .arg("--config")
        .arg(env.path("ward.yaml"))
        .arg("--addresses-file")
        .arg(&addresses)
        .env_remove("WARD_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("ward.log")).unwrap());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = Running(cmd.spawn().unwrap());
    // Written atomically once every listener is bound; poll, bounded. Lines are
    // `<listener> <addr>`; the listener's name may itself hold line breaks.
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&addresses) {
            let port = text
                .lines()
                .filter(|l| !l.starts_with("admin "))
                .find_map(|l| l.rsplit_once(' '))
                .and_then(|(_, a)| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .expect("public listener address");
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ward run did not start: {}", log_of(env));
}

fn log_of(env: &Env) -> String {
    String::from_utf8_lossy(&std::fs::read(env.path("ward.log")).unwrap_or_default()).into_owned()
}

/// SIGTERM, exit 0, and the whole log (every line written at a normal stop).
fn stop(env: &Env, mut ward: Running) -> String {
    let pid = ward.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = ward.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}: {}", log_of(env));
    String::from_utf8(std::fs::read(env.path("ward.log")).unwrap()).expect("the log is UTF-8")
}

fn config(env: &Env, up: std::net::SocketAddr, listener: &str, routes: &[String], extra: &str) {
    let mut yaml = format!(
        "listeners:\n  - name: {l}\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n          server_names: [localhost]\n      client_auth:\n        mode: optional\n        ca: [clients/ca.pem]\nupstreams:\n  - name: ehr\n    url: http://{up}\nroutes:\n",
        l = yaml_str(listener)
    );
    for (i, r) in routes.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: {}\n    listener: {}\n    path_prefix: /r{i}\n    upstream: ehr\n",
            yaml_str(r),
            yaml_str(listener)
        ));
    }
    yaml.push_str("admin:\n  bind: 127.0.0.1:0\nshutdown_grace: 1s\n");
    yaml.push_str(extra);
    env.config(&yaml);
}

/// One access line's fields as strings (JSON strings unquoted; numbers, booleans as text).
type Fields = HashMap<String, String>;

fn json_fields(line: &str) -> Fields {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = vec![
        "timestamp",
        "level",
        "request_id",
        "listener",
        "route",
        "method",
        "protocol",
        "status",
        "code",
        "head_ms",
        "duration_ms",
        "bytes_out",
        "completed",
        "client_ip",
        "client_cert",
        "tls",
        "target",
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "{line:?}");
    // Value types as tracing wrote them.
    for k in ["status", "bytes_out", "head_ms", "duration_ms"] {
        assert!(obj[k].is_number(), "{k} in {line:?}");
    }
    for k in ["completed", "tls"] {
        assert!(obj[k].is_boolean(), "{k} in {line:?}");
    }
    obj.iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The text line without colours: `<ts>  INFO ward::access: k=v …`, values bare or Rust
/// `Debug`-quoted (read back by `ward::accesslog::text_fields`).
fn text_fields(line: &str) -> Fields {
    let (ts, fields) = ward::accesslog::text_fields(line)
        .unwrap_or_else(|| panic!("not an access line: {line:?}"));
    assert_eq!(ts.len(), 27, "{line:?}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line:?}");
    let mut out = Fields::new();
    out.insert("timestamp".into(), ts);
    for (key, val) in fields {
        assert!(
            out.insert(key.clone(), val).is_none(),
            "{key} twice: {line:?}"
        );
    }
    out
}

/// `ESC [ digits m` sequences removed (values never hold a raw ESC: it is escaped).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(k) = rest.find('\u{1b}') {
        out.push_str(&rest[..k]);
        let after = &rest[k + 1..];
        let end = after.find('m').expect("an SGR sequence");
        assert!(after.starts_with('[') && after[1..end].bytes().all(|b| b.is_ascii_digit()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every access line in `log`, parsed; no line of the log may be a fragment of one.
fn access_lines(log: &str, form: Form) -> Vec<Fields> {
    let mut out = Vec::new();
    for line in log.lines() {
        match form {
            Form::Json => {
                // Every line is JSON (tracing's own lines and the access lines alike).
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line not JSON ({e}): {line:?}\n{log}"));
                if v["target"] == "ward::access" {
                    out.push(json_fields(line));
                }
            }
            // (tracing's own lines print the listener's name raw: only access lines are
            // read here; a torn access line fails the count and the values below.)
            Form::Text { ansi } if line.contains("ward::access") => {
                // Coloured exactly when colours are on (a value never adds a raw ESC).
                assert_eq!(line.contains('\u{1b}'), ansi, "{line:?}");
                let plain = if ansi {
                    strip_ansi(line)
                } else {
                    line.to_owned()
                };
                out.push(text_fields(&plain));
            }
            Form::Text { .. } => {}
        }
    }
    out
}

#[tokio::test]
async fn access_lines_carry_generated_awkward_names_whole_in_json_and_text() {
    let (up, state) = upstream().await;
    let forms = [
        Form::Json,
        Form::Text { ansi: false },
        Form::Text { ansi: true },
    ];
    for (run, form) in forms.into_iter().enumerate() {
        let env = Env::new();
        let ca = ClientCa::new("Log Test CA");
        env.write("clients/ca.pem", &ca.pem);
        let listener = &names("L", NASTY.len() + 3, 7 + run as u64)[run * 9 + 1];
        let routes = names("route", 12, 11 + run as u64);
        let cns = names("cn", NASTY.len() + 12, 13 + run as u64);
        let (format, vars): (&str, Vec<(&str, &str)>) = match form {
            Form::Json => ("json", vec![]),
            Form::Text { ansi: false } => ("text", vec![("NO_COLOR", "1")]),
            Form::Text { ansi: true } => ("text", vec![]),
        };
        config(
            &env,
            up,
            listener,
            &routes,
            &format!("log:\n  format: {format}\n  level: info\n"),
        );
        let (ward, port) = start(&env, &vars).await;
        let base = format!("https://localhost:{port}");
        let before = state.count();

        // (request id, route, client cert, status, protocol) of every request sent.
        let mut sent = Vec::new();
        for (i, cn) in cns.iter().enumerate() {
            let cert = ca.issue(
                cn,
                ClientOpts {
                    serial: 100 + i as u64,
                    ..Default::default()
                },
            );
            let h2 = i % 2 == 1;
            let c = client_with_cert(&env.pki, &cert, h2);
            let r = i % routes.len();
            let reply = send(&c, get(&format!("{base}/r{r}/x"))).await;
            assert_eq!(reply.status, 200, "{form:?} {cn:?}");
            let rid = reply.headers["x-request-id"].to_str().unwrap().to_owned();
            sent.push((
                rid,
                routes[r].clone(),
                cn.clone(),
                200,
                if h2 { "HTTP/2.0" } else { "HTTP/1.1" },
            ));
        }
        // No certificate; and a request no route takes (route `-`, refused with a code).
        let c = client(&env.pki, false);
        let reply = send(&c, get(&format!("{base}/r0/plain"))).await;
        sent.push((
            reply.headers["x-request-id"].to_str().unwrap().to_owned(),
            routes[0].clone(),
            String::new(),
            200,
            "HTTP/1.1",
        ));
        let reply = send(&c, get(&format!("{base}/nowhere"))).await;
        assert_eq!(reply.status, 404);
        sent.push((
            reply.headers["x-request-id"].to_str().unwrap().to_owned(),
            "-".into(),
            String::new(),
            404,
            "HTTP/1.1",
        ));
        // Every routed request reached the upstream; the 404 did not.
        assert_eq!(state.count(), before + cns.len() + 1, "{form:?}");
        drop(c);

        let log = stop(&env, ward);
        let lines = access_lines(&log, form);
        assert_eq!(
            lines.len(),
            sent.len(),
            "{form:?}: {} access lines for {} requests\n{log}",
            lines.len(),
            sent.len()
        );
        let by_id: HashMap<&str, &Fields> = lines
            .iter()
            .map(|f| (f["request_id"].as_str(), f))
            .collect();
        for (rid, route, cn, status, proto) in &sent {
            let f = by_id
                .get(rid.as_str())
                .unwrap_or_else(|| panic!("{form:?}: no line for {rid}\n{log}"));
            assert_eq!(f["listener"], *listener, "{form:?}");
            assert_eq!(f["route"], *route, "{form:?}");
            assert_eq!(f["client_cert"], *cn, "{form:?}");
            assert_eq!(f["status"], status.to_string(), "{form:?}");
            assert_eq!(f["protocol"], *proto, "{form:?}");
            assert_eq!(f["method"], "GET");
            assert_eq!(f["completed"], "true");
            assert_eq!(f["tls"], "true");
            assert_eq!(f["client_ip"], "127.0.0.1");
            assert_eq!(f["code"], if *status == 404 { "not_found" } else { "" });
            assert!(
                f["duration_ms"].parse::<f64>().unwrap() >= f["head_ms"].parse::<f64>().unwrap()
            );
            assert!(f["bytes_out"].parse::<u64>().unwrap() > 0);
            if form == Form::Json {
                assert_eq!(f["level"], "INFO");
                assert_eq!(f["target"], "ward::access");
                let ts = &f["timestamp"];
                assert!(
                    ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                    "{ts}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_log_filter_turns_the_access_line_off_and_on() {
    let (up, _state) = upstream().await;
    let routes = vec!["api".to_owned()];
    // (config level, WARD_LOG, access lines expected per request)
    for (level, ward_log, want) in [
        ("info", None, 1),
        ("warn", None, 0),
        ("info", Some("warn"), 0),
        ("info", Some("info,ward::access=off"), 0),
        ("warn", Some("ward::access=info"), 1),
        ("warn", Some("warn,ward::access=info"), 1),
        ("info,ward::access=off", None, 0),
        ("warn", Some("warn,[{client_cert}]=info"), 1),
        ("warn", Some("warn,[{no_such_field}]=info"), 0),
    ] {
        for format in ["json", "text"] {
            let env = Env::new();
            let ca = ClientCa::new("Log Test CA");
            env.write("clients/ca.pem", &ca.pem);
            config(
                &env,
                up,
                "public",
                &routes,
                &format!("log:\n  format: {format}\n  level: {level:?}\n"),
            );
            let mut vars = vec![("NO_COLOR", "1")];
            if let Some(w) = ward_log {
                vars.push(("WARD_LOG", w));
            }
            let (ward, port) = start(&env, &vars).await;
            let c = client(&env.pki, false);
            let mut ids = Vec::new();
            for _ in 0..3 {
                let r = send(&c, get(&format!("https://localhost:{port}/r0/x"))).await;
                assert_eq!(r.status, 200);
                ids.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
            }
            drop(c);
            let log = stop(&env, ward);
            let form = if format == "json" {
                Form::Json
            } else {
                Form::Text { ansi: false }
            };
            let lines = access_lines(&log, form);
            let ctx = format!("level {level} WARD_LOG {ward_log:?} {format}");
            assert_eq!(lines.len(), 3 * want, "{ctx}\n{log}");
            for id in &ids {
                assert_eq!(log.contains(id.as_str()), want == 1, "{ctx}\n{log}");
            }
        }
    }
}
