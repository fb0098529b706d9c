//! Faults of the things behind the gateway, over real sockets and TLS (issue #16 item 5):
//! - upstreams that close keep-alive connections (after N answers, or after reading a
//!   request without answering): idempotent requests are re-sent once on a fresh
//!   connection, so clients see no 502; a POST/PATCH that reached the upstream is never
//!   sent twice;
//! - `max_concurrent_requests` slots are held while a response streams to a client that
//!   does not read, freed when the client goes away, and bounded by `send_timeout`;
//! - a Redis circuit breaker: with `redis-server` killed, checks apply the failure mode
//!   without asking Redis (breaker metric 1, short-circuit counter grows); restarted on
//!   the same port, the circuit closes and shared limits apply again;
//! - an upstream outage is one episode (one log line when it starts, one when it ends),
//!   not one WARN line per failed request.
//!
//! No sleeps as synchronisation: upstreams signal over channels, and waits for an
//! asynchronous effect are polling loops bounded by a generous deadline.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ------------------------------------------------------------------ helpers

async fn metric(gw: &ward::Gateway, prefix: &str) -> f64 {
    let (_, text) = admin_get(gw, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `prefix` until `ok` holds (bounded by a generous deadline; a short pause between
/// reads only paces the loop).
async fn wait_metric(gw: &ward::Gateway, prefix: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(gw, prefix).await;
        if ok(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{prefix} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(method: &str, url: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// One HTTP/1.1 request read off a raw connection.
struct RawRequest {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Read one request (Content-Length bodies only: the gateway sends known bodies so).
/// `None` when the peer closed between requests.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "unexpected chunked request: {head}"
    );
    while buf.len() < end + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some(RawRequest { method, path, body })
}

async fn answer(s: &mut TcpStream, r: &RawRequest) -> bool {
    let body = if r.method == "HEAD" { "" } else { &r.path };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        r.path.len()
    );
    s.write_all(format!("{head}{body}").as_bytes())
        .await
        .is_ok()
        && s.flush().await.is_ok()
}

// ------------------------------------------------------------------ 1. stale connections

/// How the flaky upstream ends each connection. Neither sends `Connection: close`: the
/// gateway believes the connection can be reused.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// Answer n requests, then read the next one in full and close without answering.
    DropsRequest(usize),
    /// Close right after the n-th answer.
    AfterAnswers(usize),
}

#[derive(Default)]
struct FlakyLog {
    /// Every request read, answered or not: (method, path, body).
    seen: Mutex<Vec<(String, String, Vec<u8>)>>,
    answered: Mutex<Vec<(String, String)>>,
}

impl FlakyLog {
    fn seen_path(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .count()
    }
}

async fn flaky_upstream(mode: Closing) -> (SocketAddr, Arc<FlakyLog>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let log = Arc::new(FlakyLog::default());
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let log = l.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                while let Some(r) = read_request(&mut s, &mut buf).await {
                    log.seen.lock().unwrap().push((
                        r.method.clone(),
                        r.path.clone(),
                        r.body.clone(),
                    ));
                    if let Closing::DropsRequest(n) = mode {
                        if served == n {
                            return; // read in full, never answered: the socket closes
                        }
                    }
                    if !answer(&mut s, &r).await {
                        return;
                    }
                    log.answered.lock().unwrap().push((r.method, r.path));
                    served += 1;
                    if let Closing::AfterAnswers(n) = mode {
                        if served == n {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

const IDEMPOTENT: [&str; 5] = ["GET", "HEAD", "DELETE", "OPTIONS", "PUT"];

#[tokio::test]
async fn idempotent_requests_survive_upstreams_that_close_pooled_connections() {
    for mode in [
        Closing::DropsRequest(1),
        Closing::DropsRequest(3),
        Closing::AfterAnswers(1),
        Closing::AfterAnswers(2),
    ] {
        let env = Env::new();
        let (up, log) = flaky_upstream(mode).await;
        let gw = env.start(&basic_config(up, "", "")).await;
        for h2 in [false, true] {
            let c = client(&env.pki, h2);
            let mut paths = Vec::new();
            // Sequential: each request finds the previous one's pooled connection.
            for i in 0..30 {
                let m = IDEMPOTENT[i % IDEMPOTENT.len()];
                let path = format!("/api/seq/{h2}/{i}");
                let r = send(&c, request(m, &url(&gw, &path), b"")).await;
                assert_eq!(r.status, 200, "{mode:?} {m} {path}: {:?}", r.body);
                if m != "HEAD" {
                    assert_eq!(r.body, path.as_bytes(), "{mode:?} {m}");
                }
                paths.push((m, path));
            }
            // Concurrent: many pooled connections dying at once.
            let mut set = tokio::task::JoinSet::new();
            for i in 0..40 {
                let m = IDEMPOTENT[i % IDEMPOTENT.len()];
                let path = format!("/api/par/{h2}/{i}");
                paths.push((m, path.clone()));
                let (c, u) = (c.clone(), url(&gw, &path));
                set.spawn(async move {
                    let r = send(&c, request(m, &u, b"")).await;
                    (m, u, r)
                });
            }
            while let Some(done) = set.join_next().await {
                let (m, u, r) = done.unwrap();
                assert_eq!(r.status, 200, "{mode:?} {m} {u}: {:?}", r.body);
            }
            // The upstream answered each request exactly once.
            let answered = log.answered.lock().unwrap().clone();
            for (m, p) in &paths {
                let n = answered
                    .iter()
                    .filter(|(am, ap)| am == m && ap == p)
                    .count();
                assert_eq!(n, 1, "{mode:?}: {m} {p} answered {n} times");
            }
        }
        assert_eq!(
            metric(&gw, "ward_upstream_errors_total{").await,
            0.0,
            "{mode:?}"
        );
        if let Closing::DropsRequest(_) = mode {
            // The race really happened and was absorbed by a retry.
            let retried = metric(
                &gw,
                "ward_upstream_retries_total{reason=\"closed\",upstream=\"ehr\"}",
            )
            .await;
            assert!(retried >= 10.0, "{mode:?}: only {retried} retries");
        }
    }
}

#[tokio::test]
async fn requests_that_may_have_reached_the_upstream_are_never_sent_twice() {
    // Every request is read in full and the connection dropped without an answer.
    let env = Env::new();
    let (up, log) = flaky_upstream(Closing::DropsRequest(0)).await;
    let gw = env.start(&basic_config(up, "", "")).await;
    // HTTP/1.1 to the gateway: a 502 answering a HEAD over HTTP/2 carries its JSON body,
    // which the HTTP/2 client refuses (separate issue, not about retries).
    let c = client(&env.pki, false);
    let variants: [(&str, &'static [u8]); 4] = [
        ("POST", b"{\"resourceType\":\"Patient\"}"),
        ("POST", b""),
        ("PATCH", b"[{\"op\":\"remove\",\"path\":\"/x\"}]"),
        ("PATCH", b""),
    ];
    for (i, (m, body)) in variants.iter().enumerate() {
        let path = format!("/api/unsafe/{i}");
        let r = send(&c, request(m, &url(&gw, &path), body)).await;
        assert_eq!(r.status, 502, "{m} {path}");
        assert_eq!(r.code(), "upstream_error", "{m}");
        assert_eq!(log.seen_path(&path), 1, "{m} {path} was sent again");
        let seen = log.seen.lock().unwrap().clone();
        let (_, _, got) = seen.iter().find(|(_, p, _)| *p == path).unwrap();
        assert_eq!(got.as_slice(), *body, "the upstream got the whole body");
    }
    // Idempotent ones are re-sent exactly once (and fail, since every connection drops).
    for (i, m) in IDEMPOTENT.iter().enumerate() {
        let path = format!("/api/safe/{i}");
        let r = send(&c, request(m, &url(&gw, &path), b"")).await;
        assert_eq!(r.status, 502, "{m}");
        assert_eq!(log.seen_path(&path), 2, "{m} {path}: one retry, no more");
    }
    assert_eq!(
        metric(
            &gw,
            "ward_upstream_retries_total{reason=\"closed\",upstream=\"ehr\"}"
        )
        .await,
        IDEMPOTENT.len() as f64
    );
}

#[tokio::test]
async fn pool_idle_timeout_defaults_below_common_upstream_keep_alives() {
    let env = Env::new();
    let cfg = env.config(&basic_config("127.0.0.1:9".parse().unwrap(), "", ""));
    let u = &cfg.upstreams[0];
    assert!(u.pool_idle_timeout.0 < Duration::from_secs(5));
    assert!(!u.pool_idle_timeout.0.is_zero());
    assert_eq!(u.send_timeout.0, Duration::from_secs(30));
    let cfg = env.config(&basic_config(
        "127.0.0.1:9".parse().unwrap(),
        "",
        "    pool_idle_timeout: 1500ms\n    send_timeout: 2s\n",
    ));
    assert_eq!(
        cfg.upstreams[0].pool_idle_timeout.0,
        Duration::from_millis(1500)
    );
    assert_eq!(cfg.upstreams[0].send_timeout.0, Duration::from_secs(2));
    // Zero is refused with the key's path.
    let p = env.write(
        "zero.yaml",
        &basic_config("127.0.0.1:9".parse().unwrap(), "", "    send_timeout: 0s\n"),
    );
    let errs = config_errors(&p);
    assert!(errs.contains("upstreams[0].send_timeout"), "{errs}");
}

// ------------------------------------------------------------------ 2. slots and stalled clients

/// `/…/stream` sends an endless chunked body (signalling once its first chunk is out);
/// anything else gets a short answer.
async fn streaming_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    streaming_upstream_with(Arc::new(tokio::sync::Notify::new())).await
}

/// As [`streaming_upstream`]; `/…/held` signals, then waits for `release` before its
/// answer.
async fn streaming_upstream_with(
    release: Arc<tokio::sync::Notify>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let (tx, release) = (tx.clone(), release.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(r) = read_request(&mut s, &mut buf).await {
                    if r.path.ends_with("/held") {
                        let _ = tx.send(r.path.clone());
                        release.notified().await;
                    }
                    if !r.path.ends_with("/stream") {
                        if !answer(&mut s, &r).await {
                            return;
                        }
                        continue;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut chunk = b"10000\r\n".to_vec();
                    chunk.extend(std::iter::repeat_n(b'x', 0x10000));
                    chunk.extend_from_slice(b"\r\n");
                    let mut first = true;
                    // Ends when the gateway lets go of the upstream connection.
                    while s.write_all(&chunk).await.is_ok() {
                        if first {
                            let _ = tx.send(r.path.clone());
                            first = false;
                        }
                    }
                    return;
                }
            });
        }
    });
    (addr, rx)
}

/// A client that asks for an endless body and never reads it.
async fn stalled_client(
    pki: &ward::demo::Pki,
    gw: &ward::Gateway,
    path: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls_connect(pki, gw.addr("public").unwrap()).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.flush().await.unwrap();
    s
}

/// An upstream that reads requests and never answers.
async fn silent_upstream() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = tcp.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn concurrency_slots_are_held_while_a_body_streams_and_freed_when_the_client_goes() {
    let env = Env::new();
    let (up, mut started) = streaming_upstream().await;
    // `/stall` goes to an upstream that never answers: its 504 is the event that says
    // `response_timeout` has passed (the slots used to be freed then).
    let silent = silent_upstream().await;
    let cfg = basic_config(
        up,
        "",
        "    max_concurrent_requests: 2\n    response_timeout: 1s\n",
    )
    .replace(
        "routes:\n",
        &format!("  - name: silent\n    url: http://{silent}\n    response_timeout: 1s\nroutes:\n"),
    )
    .replace(
        "path_prefix: /stall\n    upstream: ehr",
        "path_prefix: /stall\n    upstream: silent",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, true);
    let a = stalled_client(&env.pki, &gw, "/api/a/stream").await;
    let b = stalled_client(&env.pki, &gw, "/api/b/stream").await;
    let mut streaming = vec![started.recv().await.unwrap(), started.recv().await.unwrap()];
    streaming.sort();
    assert_eq!(streaming, ["/api/a/stream", "/api/b/stream"]);
    // Several MiB are out and the clients read none of it: both slots are still held.
    for path in ["/api/x", "/fhir/Patient/1", "/api/c/stream"] {
        let r = send(&c, get(&url(&gw, path))).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.code(), "upstream_overloaded", "{path}");
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert_eq!(
        metric(&gw, "ward_upstream_inflight{upstream=\"ehr\"}").await,
        2.0
    );
    // Well past `response_timeout` since the streams started, the slots are still held.
    let r = send(&c, get(&url(&gw, "/stall/x"))).await;
    assert_eq!((r.status, r.code().as_str()), (504, "upstream_timeout"));
    let r = send(&c, get(&url(&gw, "/api/x"))).await;
    assert_eq!(
        r.status, 503,
        "a slot was freed while its body still streamed"
    );
    assert_eq!(
        metric(&gw, "ward_upstream_inflight{upstream=\"ehr\"}").await,
        2.0
    );
    // One client goes away: its slot comes back, the other stays held.
    drop(a);
    wait_metric(&gw, "ward_upstream_inflight{upstream=\"ehr\"}", |v| {
        v == 1.0
    })
    .await;
    let r = send(&c, get(&url(&gw, "/api/short"))).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"/api/short".as_ref()));
    drop(b);
    wait_metric(&gw, "ward_upstream_inflight{upstream=\"ehr\"}", |v| {
        v == 0.0
    })
    .await;
    let r = send(&c, get(&url(&gw, "/api/short2"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(&gw, "ward_upstream_client_stalls_total").await,
        0.0,
        "nobody stalled for the default send_timeout"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_after_send_timeout() {
    let env = Env::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let (up, mut started) = streaming_upstream_with(release.clone()).await;
    let silent = silent_upstream().await;
    let cfg = basic_config(
        up,
        "",
        "    max_concurrent_requests: 2\n    send_timeout: 1s\n",
    )
    .replace(
        "routes:\n",
        &format!(
            "  - name: silent\n    url: http://{silent}\n    response_timeout: 1500ms\nroutes:\n"
        ),
    )
    .replace(
        "path_prefix: /stall\n    upstream: ehr",
        "path_prefix: /stall\n    upstream: silent",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, true);
    // A slow upstream is not a slow client: a response head that takes longer than
    // send_timeout keeps its slot and arrives whole.
    let held = {
        let (c, u) = (c.clone(), url(&gw, "/api/h/held"));
        tokio::spawn(async move { send(&c, get(&u)).await })
    };
    assert_eq!(started.recv().await.unwrap(), "/api/h/held");
    // This 504 comes a silent upstream's response_timeout (> send_timeout) later.
    let r = send(&c, get(&url(&gw, "/stall/x"))).await;
    assert_eq!((r.status, r.code().as_str()), (504, "upstream_timeout"));
    release.notify_one();
    let r = held.await.unwrap();
    assert_eq!((r.status, r.body.as_ref()), (200, b"/api/h/held".as_ref()));
    assert_eq!(
        metric(&gw, "ward_upstream_client_stalls_total").await,
        0.0,
        "waiting for the upstream counted as a stalled client"
    );
    // The client connection used so far goes away before counting connections below.
    drop(c);
    wait_metric(&gw, "ward_active_connections{listener=\"public\"}", |v| {
        v == 0.0
    })
    .await;
    let c = client(&env.pki, true);
    let mut stalled = Vec::new();
    for path in ["/api/a/stream", "/api/b/stream"] {
        stalled.push(stalled_client(&env.pki, &gw, path).await);
        started.recv().await.unwrap();
    }
    // The clients stay connected and never read: the watchdog frees both slots.
    wait_metric(
        &gw,
        "ward_upstream_client_stalls_total{upstream=\"ehr\"}",
        |v| v == 2.0,
    )
    .await;
    wait_metric(&gw, "ward_upstream_inflight{upstream=\"ehr\"}", |v| {
        v == 0.0
    })
    .await;
    // …and closes their HTTP/1 connections without waiting for them to read again.
    wait_metric(&gw, "ward_active_connections{listener=\"public\"}", |v| {
        v == 0.0
    })
    .await;
    let r = send(&c, get(&url(&gw, "/api/short"))).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"/api/short".as_ref()));
    // Each stalled response ends aborted (connection closed, never the chunked end).
    for mut s in stalled {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the stalled connection was never closed");
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            &got[..got.len().min(40)]
        );
        assert!(got.len() > 1 << 16, "the response had started streaming");
        assert!(
            !got.ends_with(b"0\r\n\r\n"),
            "an aborted body must not look complete"
        );
    }
}

// ------------------------------------------------------------------ 3. Redis circuit breaker

/// A `redis-server` on a loopback port, stopped on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Redis {
        let mut r = Redis {
            port: free_port().await,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let bin = [
            "redis-server",
            "/usr/bin/redis-server",
            "/usr/local/bin/redis-server",
        ]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("redis-server installed (.ci/test installs it)");
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..500 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn redis_breaker_short_circuits_during_an_outage_and_closes_when_redis_returns() {
    let mut redis = Redis::start().await;
    let env = Env::new();
    // A long timeout: without the breaker every check of the outage would wait it out.
    for (name, mode) in [
        ("shared-closed", "fail_closed"),
        ("shared-open", "fail_open"),
    ] {
        env.write(
            &format!("policies/{name}.yaml"),
            &format!(
                "rate_limit:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:{}/0\n    timeout: 5s\n    failure_mode: {mode}\n  limits:\n    - name: per-client\n      key: header\n      header: X-Client\n      rate: 3\n      per: hour\n",
                redis.port
            ),
        );
    }
    let (up, _state) = upstream().await;
    let cfg = basic_config(up, "", "")
        .replace(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [shared-closed]\n",
        )
        .replace(
            "    path_prefix: /api\n    upstream: ehr\n",
            "    path_prefix: /api\n    upstream: ehr\n    policies: [shared-open]\n",
        );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, true);
    let open_closed = "ward_redis_breaker_open{policy=\"shared-closed\"}";
    let open_open = "ward_redis_breaker_open{policy=\"shared-open\"}";
    let short = "ward_redis_breaker_short_circuits_total{policy=\"shared-closed\"}";

    // Redis decides: the 4th request of a key is refused on both routes.
    let limits_apply = |tag: &'static str| {
        let (c, gw) = (c.clone(), &gw);
        async move {
            for path in ["/fhir/Patient/1", "/api/x"] {
                let key = format!("{tag}-{path}");
                for i in 0..4 {
                    let r = send(&c, get_with(&url(gw, path), &[("x-client", &key)])).await;
                    let want = if i < 3 { 200 } else { 429 };
                    assert_eq!(r.status, want, "{tag} {path} request {i}");
                }
            }
        }
    };
    limits_apply("before").await;
    assert_eq!(metric(&gw, open_closed).await, 0.0);
    let fallback_before = metric(&gw, "ward_rate_limit_fallback_total").await;
    assert_eq!(fallback_before, 0.0);

    redis.stop();
    // The outage: fail_closed answers 503, fail_open serves under local limits.
    let n: u32 = 40;
    for i in 0..n {
        let key = format!("outage-{i}");
        let r = send(
            &c,
            get_with(&url(&gw, "/fhir/Patient/1"), &[("x-client", &key)]),
        )
        .await;
        assert_eq!(r.status, 503, "request {i}");
        assert_eq!(r.code(), "rate_limit_unavailable");
        let r = send(&c, get_with(&url(&gw, "/api/x"), &[("x-client", &key)])).await;
        assert_eq!(r.status, 200, "fail_open request {i}");
    }
    assert_eq!(metric(&gw, open_closed).await, 1.0);
    assert_eq!(metric(&gw, open_open).await, 1.0);
    // At most a few checks asked the dead Redis (and waited); the rest never touched it.
    let skipped = metric(&gw, short).await;
    assert!(
        skipped >= f64::from(n - ward::breaker::FAILURES_TO_OPEN),
        "only {skipped} of {n} checks short-circuited"
    );
    let asked = metric(
        &gw,
        "ward_rate_limit_backend_errors_total{kind=\"timeout\",policy=\"shared-closed\"}",
    )
    .await;
    assert!(
        asked <= f64::from(ward::breaker::FAILURES_TO_OPEN),
        "{asked} checks waited for the timeout"
    );
    // Still open while Redis is down: more requests only grow the counter.
    let r = send(
        &c,
        get_with(&url(&gw, "/fhir/Patient/1"), &[("x-client", "later")]),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(metric(&gw, short).await > skipped);

    // Redis returns on the same port: the probe closes the circuits.
    redis.spawn().await;
    wait_metric(&gw, open_closed, |v| v == 0.0).await;
    wait_metric(&gw, open_open, |v| v == 0.0).await;
    let fallback = metric(&gw, "ward_rate_limit_fallback_total").await;
    limits_apply("after").await;
    assert_eq!(
        metric(&gw, "ward_rate_limit_fallback_total").await,
        fallback,
        "Redis decides again, not the local fallback"
    );
}

// ------------------------------------------------------------------ 4. outage episodes

/// Tracing output captured for the current thread (the gateway runs on this test's
/// current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn an_upstream_outage_logs_one_line_when_it_starts_and_one_when_it_ends() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = Env::new();
    // Down at first (bound, not listening: connections are refused), up later on the
    // very same port.
    let port = ReservedPort::bind();
    let gw = env.start(&basic_config(port.addr, "", "")).await;
    let c = client(&env.pki, true);
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let mut failed: u32 = 0;
    for i in 0..30 {
        let m = methods[i % methods.len()];
        let r = send(&c, request(m, &url(&gw, &format!("/api/{i}")), b"")).await;
        assert_eq!((r.status, r.code().as_str()), (502, "upstream_unavailable"));
        failed += 1;
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (c, u) = (c.clone(), url(&gw, &format!("/fhir/Patient/{i}")));
        set.spawn(async move { send(&c, get(&u)).await.status });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 502);
        failed += 1;
    }
    let up = "{upstream=\"ehr\"}";
    assert_eq!(
        metric(&gw, &format!("ward_upstream_outages_total{up}")).await,
        1.0
    );
    assert_eq!(metric(&gw, &format!("ward_upstream_outage{up}")).await, 1.0);
    assert_eq!(
        metric(
            &gw,
            "ward_upstream_errors_total{kind=\"connect\",upstream=\"ehr\"}"
        )
        .await,
        f64::from(failed)
    );
    // A refused connect never reached the upstream: every method was retried once.
    assert_eq!(
        metric(
            &gw,
            "ward_upstream_retries_total{reason=\"not_sent\",upstream=\"ehr\"}"
        )
        .await,
        f64::from(failed)
    );
    assert_eq!(logs.lines_with("upstream outage started").len(), 1);
    assert!(logs.lines_with("upstream outage started")[0].contains("WARN"));
    assert!(logs.lines_with("upstream request failed").is_empty());
    assert!(logs.lines_with("upstream outage ended").is_empty());

    // The upstream comes up: the first success ends the episode, with its counts.
    let listener = port.listen();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(r) = read_request(&mut s, &mut buf).await {
                    if !answer(&mut s, &r).await {
                        return;
                    }
                }
            });
        }
    });
    for i in 0..5 {
        let r = send(&c, get(&url(&gw, &format!("/api/back/{i}")))).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(metric(&gw, &format!("ward_upstream_outage{up}")).await, 0.0);
    assert_eq!(
        metric(&gw, &format!("ward_upstream_outages_total{up}")).await,
        1.0
    );
    let ended = logs.lines_with("upstream outage ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0].contains(&format!("failed_requests={failed}")),
        "{}",
        ended[0]
    );
    assert!(ended[0].contains("duration_ms="), "{}", ended[0]);
    assert_eq!(logs.lines_with("upstream outage started").len(), 1);
}
