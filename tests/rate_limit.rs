//! Rate limits and load shedding over real TLS: exact quota arithmetic (long periods, so no
//! cell can refill during a test — no sleeps, no timing assertions), 429 with the IETF
//! headers, costs per FHIR interaction, key caps under a random-key flood, limits keyed by
//! token claims, per-upstream concurrency shedding, and two gateways sharing one real
//! `redis-server` — including Redis going away and coming back.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::json;

/// Attach policies to the `fhir` and `api` routes of `basic_config`.
fn with_policies(cfg: String, fhir: &str, api: &str) -> String {
    let cfg = cfg.replace(
        "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n",
        &format!(
            "    path_prefix: /fhir\n    upstream: ehr\n    fhir: true\n    policies: [{fhir}]\n"
        ),
    );
    cfg.replace(
        "    path_prefix: /api\n    upstream: ehr\n",
        &format!("    path_prefix: /api\n    upstream: ehr\n    policies: [{api}]\n"),
    )
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn metric(gw: &ward::Gateway, prefix: &str) -> f64 {
    let (_, text) = admin_get(gw, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn quota_is_exact_and_429_carries_retry_after_and_ratelimit_headers() {
    let env = Env::new();
    env.write(
        "policies/per-ip.yaml",
        "rate_limit:\n  limits:\n    - name: per-ip\n      key: client_ip\n      rate: 3\n      per: hour\n",
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policies(basic_config(up, "", ""), "per-ip", "per-ip"))
        .await;
    let c = client(&env.pki, false);
    for _ in 0..3 {
        assert_eq!(send(&c, get(&url(&gw, "/api/x"))).await.status, 200);
    }
    let r = send(&c, get(&url(&gw, "/api/x"))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    // One cell every 20 minutes: the next one is due in (0, 1200] seconds.
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "retry-after {retry}");
    assert_eq!(r.headers["ratelimit-policy"], "\"per-ip\";q=3;w=3600");
    assert_eq!(
        r.headers["ratelimit"].to_str().unwrap(),
        format!("\"per-ip\";r=0;t={retry}")
    );
    assert_eq!(
        state.count(),
        3,
        "the upstream never saw the refused request"
    );
    // Limits count per route: the FHIR route has its own bucket, and answers in FHIR.
    for _ in 0..3 {
        assert_eq!(
            send(&c, get(&url(&gw, "/fhir/Patient/1"))).await.status,
            200
        );
    }
    let r = send(&c, get(&url(&gw, "/fhir/Patient/1"))).await;
    assert_eq!(r.status, 429);
    let oo = r.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "throttled");
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(metric(&gw, "ward_rate_limited_total{").await, 2.0);
}

#[tokio::test]
async fn header_keys_have_their_own_buckets_and_a_missing_header_shares_one() {
    let env = Env::new();
    env.write(
        "policies/per-key.yaml",
        "rate_limit:\n  limits:\n    - name: per-api-key\n      key: header\n      header: X-Api-Key\n      rate: 2\n      per: hour\n",
    );
    let (up, _state) = upstream().await;
    let gw = env
        .start(&with_policies(
            basic_config(up, "", ""),
            "per-key",
            "per-key",
        ))
        .await;
    let c = client(&env.pki, false);
    let status = |k: Option<&'static str>| {
        let c = &c;
        let u = url(&gw, "/api/x");
        async move {
            let h: Vec<(&str, &str)> = k.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
            send(c, get_with(&u, &h)).await.status
        }
    };
    assert_eq!(status(Some("a")).await, 200);
    assert_eq!(status(Some("a")).await, 200);
    assert_eq!(status(Some("a")).await, 429);
    assert_eq!(status(Some("b")).await, 200, "another key, another bucket");
    // Leaving the header out is no way around the limit: all such requests share a bucket.
    assert_eq!(status(None).await, 200);
    assert_eq!(status(None).await, 200);
    assert_eq!(status(None).await, 429);
    // Several values (or a list) could be read differently upstream: they share one
    // bucket instead of each value list being a fresh key.
    let c = client(&env.pki, false);
    let u = url(&gw, "/api/x");
    let mut codes = Vec::new();
    for extra in ["x1", "x2", "x3"] {
        let r = send(
            &c,
            get_with(&u, &[("x-api-key", "c"), ("x-api-key", extra)]),
        )
        .await;
        codes.push(r.status);
    }
    let r = send(&c, get_with(&u, &[("x-api-key", "c, x4")])).await;
    codes.push(r.status);
    assert_eq!(codes, [200, 200, 429, 429]);
}

#[tokio::test]
async fn fhir_interactions_cost_what_the_policy_says() {
    let env = Env::new();
    env.write(
        "policies/costly.yaml",
        "rate_limit:\n  limits:\n    - name: route-budget\n      key: route\n      rate: 10\n      per: hour\n      cost:\n        search: 4\n        $everything: 10\n",
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policies(basic_config(up, "", ""), "costly", "costly"))
        .await;
    let c = client(&env.pki, false);
    let st = |p: &'static str| {
        let c = &c;
        let u = url(&gw, p);
        async move { send(c, get(&u)).await.status }
    };
    // 10 cells: two searches (8), two reads (10), then nothing is left.
    assert_eq!(st("/fhir/Observation?patient=1").await, 200);
    assert_eq!(st("/fhir/Observation?patient=2").await, 200);
    assert_eq!(st("/fhir/Patient/1").await, 200);
    assert_eq!(st("/fhir/Patient/2").await, 200);
    assert_eq!(st("/fhir/Patient/3").await, 429);
    assert_eq!(state.count(), 4);
    // On a fresh route budget, `$everything` takes the whole burst at once.
    assert_eq!(
        st("/api/Patient/1/$everything").await,
        200,
        "non-FHIR route: cost 1"
    );
}

#[tokio::test]
async fn everything_costs_the_whole_burst() {
    let env = Env::new();
    env.write(
        "policies/costly.yaml",
        "rate_limit:\n  limits:\n    - name: route-budget\n      key: route\n      rate: 10\n      per: hour\n      cost:\n        $everything: 10\n",
    );
    let (up, _state) = upstream().await;
    let gw = env
        .start(&with_policies(basic_config(up, "", ""), "costly", "costly"))
        .await;
    let c = client(&env.pki, false);
    assert_eq!(
        send(&c, get(&url(&gw, "/fhir/Patient/1/$everything")))
            .await
            .status,
        200
    );
    assert_eq!(send(&c, get(&url(&gw, "/fhir/metadata"))).await.status, 429);
}

#[tokio::test]
async fn a_random_key_flood_is_capped_and_tracked_keys_keep_their_buckets() {
    let env = Env::new();
    env.write(
        "policies/capped.yaml",
        "rate_limit:\n  max_keys: 5\n  limits:\n    - name: per-key\n      key: header\n      header: X-Api-Key\n      rate: 1\n      per: hour\n",
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policies(basic_config(up, "", ""), "capped", "capped"))
        .await;
    // HTTP/2: one connection, many streams.
    let c = client(&env.pki, true);
    let mut admitted = 0;
    for i in 0..200 {
        let k = format!("flood-{i}");
        if send(&c, get_with(&url(&gw, "/api/x"), &[("x-api-key", &k)]))
            .await
            .status
            == 200
        {
            admitted += 1;
        }
    }
    // The first five keys got their own buckets (one cell each); the other 195 shared
    // one overflow bucket of one cell.
    assert_eq!(admitted, 6);
    assert_eq!(state.count(), 6);
    // A tracked key is still limited on its own bucket, not the overflow one.
    let r = send(
        &c,
        get_with(&url(&gw, "/api/x"), &[("x-api-key", "flood-0")]),
    )
    .await;
    assert_eq!(r.status, 429);
    // The key table never grew past the cap (the gauge is refreshed by each sweep, and a
    // full table triggers one).
    let keys = poll_metric(
        &gw,
        "ward_rate_limit_keys{limit=\"per-key\",route=\"api\"}",
        |v| v > 0.0,
    )
    .await;
    assert!(keys <= 5.0, "{keys} keys");
    let overflow = poll_metric(
        &gw,
        "ward_rate_limit_overflow_total{limit=\"per-key\",route=\"api\"}",
        |v| v >= 195.0,
    )
    .await;
    assert_eq!(overflow, 195.0);
}

/// Wait (bounded) until a metric satisfies `ok`: the sweep that updates gauges runs on its
/// own task.
async fn poll_metric(gw: &ward::Gateway, prefix: &str, ok: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..500 {
        let v = metric(gw, prefix).await;
        if ok(v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metric(gw, prefix).await
}

fn token(key: &KeyPair, sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = json!({"iss": "https://idp.test", "aud": "ehr", "sub": sub, "client_id": "app", "exp": now + 600, "scope": "system/*.read"});
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &k).unwrap()
}

#[tokio::test]
async fn token_keyed_limits_run_after_auth_and_address_limits_before_it() {
    let env = Env::new();
    let key = KeyPair::generate().unwrap();
    env.write("keys/idp.pub.pem", &key.public_key_pem());
    env.write(
        "policies/token.yaml",
        "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.test\n      audiences: [ehr]\n      algorithms: [ES256]\n      keys_file: keys/idp.pub.pem\n",
    );
    env.write(
        "policies/limits.yaml",
        "rate_limit:\n  limits:\n    - name: per-user\n      key: token_sub\n      rate: 2\n      per: hour\n    - name: per-ip\n      key: client_ip\n      rate: 6\n      per: hour\n",
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policies(
            basic_config(up, "", ""),
            "token, limits",
            "token, limits",
        ))
        .await;
    let c = client(&env.pki, false);
    let call = |tok: Option<String>| {
        let c = &c;
        let u = url(&gw, "/api/x");
        async move {
            let h = tok.map(|t| format!("Bearer {t}"));
            let hs: Vec<(&str, &str)> = h
                .as_deref()
                .map(|h| vec![("authorization", h)])
                .unwrap_or_default();
            send(c, get_with(&u, &hs)).await
        }
    };
    let alice = token(&key, "alice");
    let bob = token(&key, "bob");
    assert_eq!(call(Some(alice.clone())).await.status, 200);
    assert_eq!(call(Some(alice.clone())).await.status, 200);
    let r = call(Some(alice.clone())).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert_eq!(r.headers["ratelimit-policy"], "\"per-user\";q=2;w=3600");
    assert_eq!(
        call(Some(bob.clone())).await.status,
        200,
        "bob has his own bucket"
    );
    // A tokenless request is refused by auth (the per-user limit never sees it)…
    assert_eq!(call(None).await.status, 401);
    // …and has used one of the address's 6 cells (alice 3, bob 1, anonymous 1 = 5).
    assert_eq!(call(None).await.status, 401);
    // The address budget is spent: refused before the token is even looked at.
    let r = call(Some(bob)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["ratelimit-policy"], "\"per-ip\";q=6;w=3600");
    assert_eq!(state.count(), 3);
}

#[tokio::test]
async fn upstream_concurrency_limit_sheds_with_503_and_recovers() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env
        .start(&basic_config(up, "", "    max_concurrent_requests: 1\n"))
        .await;
    let c = client(&env.pki, true);
    let held = {
        let c = c.clone();
        let u = url(&gw, "/gate/hold");
        tokio::spawn(async move { send(&c, get(&u)).await.status })
    };
    state.gate_entered.notified().await;
    let r = send(&c, get(&url(&gw, "/api/x"))).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "upstream_overloaded");
    assert_eq!(r.headers["retry-after"], "1");
    let r = send(&c, get(&url(&gw, "/fhir/Patient/1"))).await;
    assert_eq!(
        (r.status, r.json()["resourceType"].as_str()),
        (503, Some("OperationOutcome"))
    );
    state.gate.notify_one();
    assert_eq!(held.await.unwrap(), 200);
    // The slot is free again once the held response has ended.
    let mut ok = false;
    for _ in 0..100 {
        if send(&c, get(&url(&gw, "/api/x"))).await.status == 200 {
            ok = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "the upstream slot was never released");
    assert_eq!(
        metric(&gw, "ward_upstream_shed_total{upstream=\"ehr\"}").await,
        2.0
    );
    assert_eq!(state.count(), 2, "shed requests never reached the upstream");
}

#[tokio::test]
async fn rate_limit_config_mistakes_are_reported_with_file_and_line() {
    let env = Env::new();
    env.write(
        "policies/bad.yaml",
        "rate_limit:\n  limits:\n    - name: a\n      key: header\n      rate: 5\n      per: minute\n      burst: 3\n      cost:\n        search: 4\n        frobnicate: 1\n    - name: a\n      key: client_ip\n      header: X-Nope\n      rate: 0\n      per: minute\n",
    );
    let (up, _) = upstream().await;
    let p = env.write(
        "ward.yaml",
        &with_policies(basic_config(up, "", ""), "bad", "bad"),
    );
    let all = config_errors(&p);
    for want in [
        "rate_limit.limits[0].header: key `header` needs `header`",
        "rate_limit.limits[0].cost.search: cost 4 is above the burst (3)",
        "rate_limit.limits[0].cost.frobnicate: unknown interaction",
        "rate_limit.limits[1].name: limit `a` is defined twice",
        "rate_limit.limits[1].header: only for `key: header`",
        "rate_limit.limits[1].rate: must be greater than 0",
    ] {
        assert!(all.contains(want), "missing `{want}` in:\n{all}");
    }
    assert!(all.contains("bad.yaml:"), "errors name the file: {all}");
    // Claim keys without an auth policy on the route.
    env.write(
        "policies/bad.yaml",
        "rate_limit:\n  limits:\n    - name: per-user\n      key: token_sub\n      rate: 5\n      per: minute\n",
    );
    let all = config_errors(&p);
    assert!(
        all.contains("counts by token claims but the route has no auth policy"),
        "{all}"
    );
}

// ------------------------------------------------------------------ cluster (Redis)

/// A `redis-server` on a loopback port, stopped on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// TLS settings (`--tls-port` serves instead of `--port`).
    tls: Vec<String>,
}

fn redis_binary() -> String {
    for p in [
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ] {
        if Command::new(p).arg("--version").output().is_ok() {
            return p.to_owned();
        }
    }
    panic!("redis-server not found: install it (apt-get install redis-server); .ci/test does this");
}

impl Redis {
    async fn start() -> Redis {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(tls: Vec<String>) -> Redis {
        let port = free_port().await;
        let mut r = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls.is_empty() {
            vec!["--port", &port]
        } else {
            vec!["--port", "0", "--tls-port", &port]
        };
        let child = Command::new(redis_binary())
            .args(["--bind", "127.0.0.1"])
            .args(&ports)
            .args(&self.tls)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Ready when it answers PING (bounded).
        for _ in 0..500 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if !self.tls.is_empty() {
            // Listening is enough; the gateway's own TLS handshake is what is under test.
            return true;
        }
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

fn cluster_config(up: std::net::SocketAddr) -> String {
    with_policies(basic_config(up, "", ""), "shared-closed", "shared-open")
}

fn write_cluster_policies(env: &Env, port: u16) {
    for (name, mode) in [
        ("shared-open", "fail_open"),
        ("shared-closed", "fail_closed"),
    ] {
        env.write(
            &format!("policies/{name}.yaml"),
            &format!(
                "rate_limit:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:{port}/0\n    timeout: 2s\n    failure_mode: {mode}\n  limits:\n    - name: per-client\n      key: header\n      header: X-Client\n      rate: 5\n      per: hour\n"
            ),
        );
    }
}

/// Send until Redis decides for this gateway again: a request with a fresh key that
/// did not go to the local fallback. Bounded.
async fn wait_for_redis(gw: &ward::Gateway, c: &TestClient, tag: &str) {
    for i in 0..400 {
        let before = metric(gw, "ward_rate_limit_fallback_total").await;
        let k = format!("probe-{tag}-{i}");
        let r = send(c, get_with(&url(gw, "/api/x"), &[("x-client", &k)])).await;
        let after = metric(gw, "ward_rate_limit_fallback_total").await;
        if r.status == 200 && after == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway never reached redis again");
}

#[tokio::test]
async fn two_gateways_share_one_redis_quota_and_survive_redis_restarts() {
    let mut redis = Redis::start().await;
    let env = Env::new();
    write_cluster_policies(&env, redis.port);
    let (up, state) = upstream().await;
    let cfg = cluster_config(up);
    // One config, two gateways (writing it twice would have the first reload it).
    let cfg = env.config(&cfg);
    let gw1 = ward::Gateway::start(cfg.clone()).await.unwrap();
    let gw2 = ward::Gateway::start(cfg).await.unwrap();
    let c = client(&env.pki, false);
    wait_for_redis(&gw1, &c, "a").await;
    wait_for_redis(&gw2, &c, "b").await;

    // One client alternating between the replicas gets the quota once, not twice.
    let mut admitted = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let r = send(
            &c,
            get_with(&url(gw, "/api/x"), &[("x-client", "shared-1")]),
        )
        .await;
        match r.status {
            200 => admitted += 1,
            429 => assert_eq!(r.code(), "rate_limited"),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(admitted, 5, "two replicas together admit exactly the quota");
    // Concurrent requests from both replicas at once: still never more than the quota.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let u = url(if i % 2 == 0 { &gw1 } else { &gw2 }, "/api/x");
        tasks.push(tokio::spawn(async move {
            send(&c, get_with(&u, &[("x-client", "shared-2")]))
                .await
                .status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "no race lets a replica take a cell twice");
    let seen_before_outage = state.count();

    // Redis goes away.
    redis.stop();
    // fail_open: served, limited by each replica's own local limiter (same quota).
    let mut open_ok = 0;
    for _ in 0..7 {
        let r = send(
            &c,
            get_with(&url(&gw1, "/api/x"), &[("x-client", "shared-1")]),
        )
        .await;
        if r.status == 200 {
            open_ok += 1;
        } else {
            assert_eq!(r.status, 429);
        }
    }
    assert_eq!(
        open_ok,
        5,
        "the local fallback enforces the quota per replica; fallback={} errors={}",
        metric(&gw1, "ward_rate_limit_fallback_total").await,
        metric(&gw1, "ward_rate_limit_backend_errors_total").await
    );
    assert!(metric(&gw1, "ward_rate_limit_fallback_total").await >= 7.0);
    assert!(metric(&gw1, "ward_rate_limit_backend_errors_total").await >= 7.0);
    // fail_closed: refused, with a stable code, and nothing reaches the upstream.
    let r = send(
        &c,
        get_with(&url(&gw2, "/fhir/Patient/1"), &[("x-client", "c")]),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "rate_limit_unavailable");
    assert_eq!(state.count(), seen_before_outage + 5);

    // Redis is back (empty: no persistence): shared limiting resumes.
    redis.spawn().await;
    wait_for_redis(&gw1, &c, "c").await;
    wait_for_redis(&gw2, &c, "d").await;
    let mut admitted = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &gw2 } else { &gw1 };
        if send(
            &c,
            get_with(&url(gw, "/api/x"), &[("x-client", "shared-3")]),
        )
        .await
        .status
            == 200
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    // The fail_closed route works again too.
    let mut back = false;
    for _ in 0..400 {
        let r = send(
            &c,
            get_with(&url(&gw2, "/fhir/Patient/1"), &[("x-client", "c2")]),
        )
        .await;
        if r.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "fail_closed route never recovered");
}

#[tokio::test]
async fn the_redis_backend_speaks_mutual_tls() {
    let env = Env::new();
    let certs = env.path("certs");
    let f = |n: &str| certs.join(n).display().to_string();
    let redis = Redis::start_with(vec![
        "--tls-cert-file".into(),
        f("server.pem"),
        "--tls-key-file".into(),
        f("server.key"),
        "--tls-ca-cert-file".into(),
        f("ca.pem"),
        // Redis refuses a client without a certificate from this CA.
        "--tls-auth-clients".into(),
        "yes".into(),
    ])
    .await;
    // fail_closed: a TLS failure would show as 503, never as 200.
    env.write(
        "policies/tls-redis.yaml",
        &format!(
            "rate_limit:\n  backend: redis\n  redis:\n    url: rediss://127.0.0.1:{}/0\n    ca: certs/ca.pem\n    client_cert: certs/client.pem\n    client_key: certs/client.key\n    timeout: 5s\n    failure_mode: fail_closed\n  limits:\n    - name: per-route\n      key: route\n      rate: 4\n      per: hour\n",
            redis.port
        ),
    );
    let (up, state) = upstream().await;
    let gw = env
        .start(&with_policies(
            basic_config(up, "", ""),
            "tls-redis",
            "tls-redis",
        ))
        .await;
    let c = client(&env.pki, false);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&c, get(&url(&gw, "/api/x"))).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    assert_eq!(state.count(), 4);
    assert_eq!(
        metric(&gw, "ward_rate_limit_backend_errors_total").await,
        0.0
    );
}
