//! Idle HTTP/1 connections give their HTTP buffers back (`limits.idle_release`) and come
//! back on a fresh hyper connection when the client sends again. Nothing about the
//! protocol may change across a release: every case below is played on a gateway that
//! releases at every idle moment (`idle_release: 0s`) and on one that never does, over the
//! same kind of TLS connection, and the answers and what the upstream saw must be equal.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// The sum of a metric's series.
async fn metric(gw: &ward::Gateway, name: &str) -> u64 {
    let (_, text) = admin_get(gw, "/metrics").await;
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// How many idle releases the gateway has counted.
async fn releases(gw: &ward::Gateway) -> u64 {
    metric(gw, "ward_idle_releases_total").await
}

/// Wait (bounded) until the gateway has no client connection left: a release counted
/// after this can only be the next connection's.
async fn no_connections(gw: &ward::Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(gw, "ward_active_connections").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a connection stayed open"
        );
        tokio::task::yield_now().await;
    }
}

/// Wait (bounded) until the gateway has counted more than `n` releases.
async fn released_past(gw: &ward::Gateway, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = releases(gw).await;
        if now > n {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was never released"
        );
        tokio::task::yield_now().await;
    }
}

/// Read one HTTP/1 response (content-length, chunked, or to the end). Returns the status
/// line, the headers that do not vary between runs (sorted), the body, and whether the
/// server said it will close.
async fn read_response(s: &mut Tls, buf: &mut Vec<u8>) -> Option<(String, Vec<String>, Vec<u8>)> {
    async fn more(s: &mut Tls, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("the gateway neither answered nor closed")
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !more(s, buf).await {
            assert!(
                buf.is_empty(),
                "truncated head: {:?}",
                String::from_utf8_lossy(buf)
            );
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let request_id = head.split("\r\n").find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-request-id:")
            .map(|v| v.trim().to_string())
    });
    let mut headers: Vec<String> = lines
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| !l.starts_with("date:") && !l.starts_with("x-request-id:"))
        .collect();
    headers.sort();
    let header = |name: &str| {
        headers
            .iter()
            .find_map(|h| h.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length:") {
        let n: usize = n.parse().expect("content-length");
        while buf.len() < n {
            assert!(more(s, buf).await, "truncated body");
        }
        body = buf.drain(..n).collect();
    } else if header("transfer-encoding:").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(more(s, buf).await, "truncated chunk size");
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .expect("chunk size");
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers: up to the empty line.
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            break;
                        }
                    } else {
                        assert!(more(s, buf).await, "truncated trailers");
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                assert!(more(s, buf).await, "truncated chunk");
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else if status.contains(" 204 ") || status.contains(" 304 ") {
    } else {
        while more(s, buf).await {}
        body = std::mem::take(buf);
    }
    // Error bodies name the request id, which differs between runs.
    if let Some(id) = request_id.filter(|id| !id.is_empty()) {
        let text = String::from_utf8_lossy(&body).replace(&id, "<request-id>");
        body = text.into_bytes();
    }
    Some((status, headers, body))
}

/// One case: steps, each a list of writes (flushed one by one) and how many answers the
/// step expects. Between steps the connection is idle (and, on the releasing gateway,
/// released before the next step starts).
struct Case {
    name: String,
    steps: Vec<(Vec<Vec<u8>>, usize)>,
}

type Answer = (String, Vec<String>, Vec<u8>);

/// Play a case on a new connection; returns every answer and whether the server closed.
/// With `wait_release`, each step starts only once this connection has been released.
async fn play(
    env: &Env,
    gw: &ward::Gateway,
    case: &Case,
    wait_release: bool,
) -> (Vec<Answer>, bool) {
    no_connections(gw).await;
    let mut seen = releases(gw).await;
    let mut s = tls_connect(&env.pki, gw.addr("public").unwrap()).await;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut closed = false;
    'steps: for (writes, expect) in &case.steps {
        if wait_release {
            seen = released_past(gw, seen).await;
        }
        for w in writes {
            if s.write_all(w).await.is_err() || s.flush().await.is_err() {
                closed = true;
                break 'steps;
            }
        }
        for _ in 0..*expect {
            match read_response(&mut s, &mut buf).await {
                Some(a) => {
                    let close = a.1.iter().any(|h| h == "connection: close");
                    answers.push(a);
                    if close {
                        closed = true;
                        break 'steps;
                    }
                }
                None => {
                    closed = true;
                    break 'steps;
                }
            }
        }
    }
    (answers, closed)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(path: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for p in parts {
        r.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        r.extend_from_slice(p);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    r
}

/// Split `bytes` into writes at the given positions.
fn split(bytes: &[u8], at: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut from = 0;
    for &p in at {
        let p = p.min(bytes.len());
        if p > from {
            out.push(bytes[from..p].to_vec());
            from = p;
        }
    }
    out.push(bytes[from..].to_vec());
    out
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let big = vec![b'x'; 70_000];
    // Plain exchanges, several per connection, of every body framing and size.
    let singles: Vec<(String, Vec<u8>)> = vec![
        ("get".into(), get("/api/a?x=1")),
        ("fhir read".into(), get("/fhir/Patient/example")),
        ("post empty".into(), post("/api/p", b"")),
        ("post small".into(), post("/api/p", b"{\"a\":1}")),
        ("post large".into(), post("/api/p", &big)),
        (
            "chunked".into(),
            chunked("/api/c", &[b"{\"a\"", b":", b"1}"]),
        ),
        (
            "chunked large".into(),
            chunked("/api/c", &[&big[..30_000], &big[..40_000]]),
        ),
        ("unknown route".into(), get("/nowhere")),
        ("bad path".into(), get("/api/%2e%2e/admin")),
    ];
    for (name, req) in &singles {
        v.push(Case {
            name: format!("{name} x3"),
            steps: vec![(vec![req.clone()], 1); 3],
        });
        // The same request in pieces, cut inside the head and inside the body.
        let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        for at in [
            vec![1],
            vec![5, head_end - 1],
            vec![head_end],
            vec![head_end + 3],
        ] {
            v.push(Case {
                name: format!("{name} split at {at:?}"),
                steps: vec![
                    (vec![get("/api/warm")], 1),
                    (split(req, &at), 1),
                    (vec![get("/api/after")], 1),
                ],
            });
        }
    }
    // Pipelined: several requests in one write after a release, and a request whose head
    // arrives together with the previous body.
    let mut pipe = post("/api/p1", b"abc");
    pipe.extend(get("/api/p2"));
    pipe.extend(chunked("/api/p3", &[b"zz"]));
    pipe.extend(get("/fhir/Patient/p4"));
    v.push(Case {
        name: "pipelined 4".into(),
        steps: vec![
            (vec![get("/api/warm")], 1),
            (vec![pipe.clone()], 4),
            (vec![pipe], 4),
        ],
    });
    // Empty lines before a request are tolerated the same way.
    let mut lead = b"\r\n\r\n".to_vec();
    lead.extend(get("/api/lead"));
    v.push(Case {
        name: "leading empty lines".into(),
        steps: vec![(vec![get("/api/warm")], 1), (vec![lead], 1)],
    });
    // Refused framing after a release: refused the same way, nothing forwarded.
    let smuggles: [&[u8]; 4] = [
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nabcdeGET /api/smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    ];
    for (i, sm) in smuggles.iter().enumerate() {
        v.push(Case {
            name: format!("smuggling {i}"),
            steps: vec![
                (vec![get("/api/warm")], 1),
                (vec![sm.to_vec()], 2),
                (vec![get("/api/never")], 1),
            ],
        });
    }
    // A client that asks to close, and HTTP/1.0 without keep-alive.
    v.push(Case {
        name: "connection close".into(),
        steps: vec![
            (vec![get("/api/warm")], 1),
            (
                vec![
                    b"GET /api/bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                ],
                1,
            ),
            (vec![get("/api/never")], 1),
        ],
    });
    v.push(Case {
        name: "http/1.0".into(),
        steps: vec![
            (vec![get("/api/warm")], 1),
            (
                vec![b"GET /api/old HTTP/1.0\r\nHost: localhost\r\n\r\n".to_vec()],
                1,
            ),
        ],
    });
    v
}

async fn gateway(env: &Env, up: std::net::SocketAddr, release: &str) -> ward::Gateway {
    let limits = format!("    limits:\n      idle_release: {release}\n      idle_timeout: 60s\n");
    env.start(&basic_config(up, &limits, "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_connection_behaves_like_one_that_was_never_released() {
    let env = Env::new();
    let (up_r, state_r) = upstream().await;
    let (up_k, state_k) = upstream().await;
    let releasing = gateway(&env, up_r, "0s").await;
    let keeping = gateway(&env, up_k, "60s").await;
    let mut released_before = releases(&releasing).await;
    for case in cases() {
        let (ra, rc) = play(&env, &releasing, &case, true).await;
        let (ka, kc) = play(&env, &keeping, &case, false).await;
        assert_eq!(
            ra, ka,
            "{}: answers differ with and without the release",
            case.name
        );
        assert_eq!(rc, kc, "{}: closing differs", case.name);
        assert!(!ka.is_empty(), "{}: no answer at all", case.name);
        let seen = |s: &Arc<UpstreamState>| -> Vec<(String, String, Vec<u8>, bool)> {
            s.seen
                .lock()
                .unwrap()
                .drain(..)
                .map(|x| (x.method, x.path_and_query, x.body.to_vec(), x.complete))
                .collect()
        };
        assert_eq!(
            seen(&state_r),
            seen(&state_k),
            "{}: the upstream saw different requests",
            case.name
        );
        let now = releases(&releasing).await;
        assert!(now > released_before, "{}: never released", case.name);
        released_before = now;
    }
    assert_eq!(
        releases(&keeping).await,
        0,
        "idle_release: 60s released a connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_times_out_and_shuts_down() {
    let env = Env::new();
    let (up, state) = upstream().await;
    // Idle timeout: a parked connection is cut like any idle one.
    let limits = "    limits:\n      idle_release: 0s\n      idle_timeout: 400ms\n      header_read_timeout: 400ms\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let addr = gw.addr("public").unwrap();
    for partial in [&b""[..], b"GET /api/slow HTTP/1.1\r\nHost: loc"] {
        let mut s = tls_connect(&env.pki, addr).await;
        let before = releases(&gw).await;
        s.write_all(&get("/api/first")).await.unwrap();
        let mut buf = Vec::new();
        let first = read_response(&mut s, &mut buf).await.expect("answer");
        assert!(first.0.contains(" 200 "), "{first:?}");
        released_past(&gw, before).await;
        // A head started on the parked connection is held to the header timeout.
        s.write_all(partial).await.unwrap();
        s.flush().await.unwrap();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "parked connection was never closed");
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(state.count(), 2);
    // Shutdown: parked connections do not hold the drain up, and their clients see the end.
    let limits = "    limits:\n      idle_release: 0s\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let mut conns = Vec::new();
    for i in 0..5 {
        let mut s = tls_connect(&env.pki, gw.addr("public").unwrap()).await;
        let before = releases(&gw).await;
        s.write_all(&get(&format!("/api/c{i}"))).await.unwrap();
        let mut buf = Vec::new();
        assert!(read_response(&mut s, &mut buf).await.is_some());
        released_past(&gw, before).await;
        conns.push(s);
    }
    gw.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(30), gw.drained())
        .await
        .expect("parked connections held the shutdown up");
    for mut s in conns {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "a parked connection stayed open after shutdown");
    }
}
