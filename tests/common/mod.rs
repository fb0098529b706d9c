//! Shared test harness: a recording upstream, certificates made at test time, the gateway
//! booted in-process on 127.0.0.1:0, and clients (hyper over rustls, and raw TLS bytes for
//! the cases a well-behaved client library refuses to send).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use ward::demo::Pki;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The body arrived complete (not aborted mid-way).
    pub complete: bool,
}

#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// Requests to `/gate` wait here.
    pub gate: Notify,
    pub gate_entered: Notify,
}

impl UpstreamState {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

async fn upstream_handler(
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let (bytes, complete) = match body.collect().await {
        Ok(b) => (b.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: pq.clone(),
        headers: parts.headers.clone(),
        body: bytes.clone(),
        complete,
    });
    if pq.starts_with("/stall") {
        std::future::pending::<()>().await;
    }
    if pq.starts_with("/gate") {
        state.gate_entered.notify_one();
        state.gate.notified().await;
    }
    let json = serde_json::json!({
        "method": parts.method.to_string(),
        "path": pq,
        "body_len": bytes.len(),
    });
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("server", "LegacyEHR/1.0".parse().unwrap());
    r
}

/// Serve HTTP/1.1 on 127.0.0.1:0 with `handler(state, request)`; returns the address.
pub async fn serve_http1<S, F, Fut>(state: Arc<S>, handler: F) -> SocketAddr
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (st, h) = (state.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (st, h) = (st.clone(), h.clone());
                    async move { Ok::<_, Infallible>(h(st, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A recording HTTP/1.1 upstream on 127.0.0.1:0.
pub async fn upstream() -> (SocketAddr, Arc<UpstreamState>) {
    let state = Arc::new(UpstreamState::default());
    let addr = serve_http1(state.clone(), upstream_handler).await;
    (addr, state)
}

/// An upstream that promises 1000 bytes, sends 10 and closes the connection.
pub async fn truncating_upstream() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n0123456789")
                    .await;
                let _ = s.flush().await;
                drop(s);
            });
        }
    });
    addr
}

/// An address where nothing listens, deterministically: a TCP socket bound to
/// 127.0.0.1:0 but never put into `listen()`. A SYN to a bound, non-listening port finds
/// no listener, so the kernel answers RST and `connect()` fails with ECONNREFUSED at once.
/// The socket is kept open for the life of the test process (in `RESERVED`), so the port
/// stays reserved: it is bound without `SO_REUSEADDR`, so no other socket can bind it, and
/// Linux does not hand an explicitly bound port out as an ephemeral port either. (Binding,
/// dropping and re-using the port instead races with every other test choosing ports.)
/// The cost is one file descriptor per call until the test binary exits.
pub async fn dead_addr() -> SocketAddr {
    static RESERVED: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let r = ReservedPort::bind();
    let a = r.addr;
    RESERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(r.sock);
    a
}

/// A loopback port that refuses connections now (bound, not listening: see [`dead_addr`])
/// and can start accepting later on the very same socket with [`ReservedPort::listen`], for
/// "the collector is down at start and comes up later" without ever releasing the port.
pub struct ReservedPort {
    pub addr: SocketAddr,
    sock: tokio::net::TcpSocket,
}

impl ReservedPort {
    pub fn bind() -> ReservedPort {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = sock.local_addr().unwrap();
        ReservedPort { addr, sock }
    }

    /// Starts listening on the reserved port (must run inside a tokio runtime).
    pub fn listen(self) -> TcpListener {
        self.sock.listen(1024).unwrap()
    }
}

/// A port that is free right now, for an *external* server (redis-server, prometheus)
/// the test starts on it. Unlike [`dead_addr`] this cannot hold the port for the child,
/// so another process could take it in between; that makes the child fail to start
/// (a loud test failure), never a test that passes wrongly.
pub async fn free_port() -> u16 {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.local_addr().unwrap().port()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&["localhost"]).unwrap();
        pki.write(&dir.path().join("certs")).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        Env { dir, pki }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Write and load a config; panics with every error if it does not load.
    pub fn config(&self, yaml: &str) -> ward::config::Config {
        let p = self.write("ward.yaml", yaml);
        match ward::config::load_with(&p, &|_| None) {
            Ok(c) => c,
            Err(errs) => panic!("config errors: {errs:#?}"),
        }
    }
    pub async fn start(&self, yaml: &str) -> ward::Gateway {
        ward::Gateway::start(self.config(yaml))
            .await
            .expect("gateway starts")
    }
}

/// A standard config: one TLS listener, one upstream, a FHIR route and a plain route.
/// `extra_listener` lines are spliced into the listener (e.g. limits).
pub fn basic_config(upstream: SocketAddr, listener_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    bind: 127.0.0.1:0
    tls:
      certificates:
        - cert: certs/server.pem
          key: certs/server.key
          server_names: [localhost]
{listener_extra}
upstreams:
  - name: ehr
    url: http://{upstream}
{upstream_extra}
routes:
  - name: fhir
    listener: public
    path_prefix: /fhir
    upstream: ehr
    fhir: true
  - name: api
    listener: public
    path_prefix: /api
    upstream: ehr
  - name: slow
    listener: public
    path_prefix: /stall
    upstream: ehr
  - name: gate
    listener: public
    path_prefix: /gate
    upstream: ehr
admin:
  bind: 127.0.0.1:0
shutdown_grace: 30s
"#
    )
}

pub fn client_tls(pki: &Pki, alpn: &[&[u8]]) -> rustls::ClientConfig {
    client_tls_versions(
        pki,
        alpn,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

pub fn client_tls_versions(
    pki: &Pki,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

pub type TestClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A hyper client that speaks only HTTP/1.1 or only HTTP/2 to the gateway.
pub fn client(pki: &Pki, h2: bool) -> TestClient {
    // hyper-rustls sets ALPN itself from the enabled protocols.
    hyper_client(client_tls(pki, &[]), h2)
}

/// A pooled hyper client over `tls`, speaking only HTTP/1.1 or only HTTP/2.
fn hyper_client(tls: rustls::ClientConfig, h2: bool) -> TestClient {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let conn = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut cb = Client::builder(TokioExecutor::new());
    cb.http2_only(h2);
    cb.build(conn)
}

pub fn url(gw: &ward::Gateway, path: &str) -> String {
    let a = gw.addr("public").unwrap();
    format!("https://localhost:{}{}", a.port(), path)
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
    /// The stable error code in a JSON error or an OperationOutcome.
    pub fn code(&self) -> String {
        let v = self.json();
        if v["resourceType"] == "OperationOutcome" {
            v["issue"][0]["details"]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            v["error"]["code"].as_str().unwrap_or_default().to_owned()
        }
    }
}

pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("request did not hang")
        .expect("request succeeded at the transport level");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// Open a TLS connection to the gateway (HTTP/1.1 ALPN).
pub async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = client_tls(pki, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Send raw bytes over TLS and read until the server closes (bounded, so a hang fails
/// the test instead of stalling the suite).
pub async fn raw(pki: &Pki, addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tls_connect(pki, addr).await;
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("server closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn body_of(raw: &str) -> serde_json::Value {
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

pub async fn admin_get(gw: &ward::Gateway, path: &str) -> (u16, String) {
    let c: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}{}", gw.admin_addr(), path);
    let resp = c.request(get(&url)).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

// ---------------------------------------------------------------- client PKI for mTLS tests

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};

/// A CA that issues client certificates and CRLs.
pub struct ClientCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
}

pub struct ClientOpts {
    pub serial: u64,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub sans: Vec<SanType>,
    pub expired: bool,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            serial: 1,
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            sans: vec![],
            expired: false,
        }
    }
}

/// A client certificate and key, PEM.
pub struct ClientCert {
    pub cert: String,
    pub key: String,
}

impl ClientCa {
    pub fn new(cn: &str) -> ClientCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        ClientCa { issuer, pem }
    }

    pub fn issue(&self, cn: &str, o: ClientOpts) -> ClientCert {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = o.eku;
        p.subject_alt_names = o.sans;
        p.serial_number = Some(SerialNumber::from(o.serial));
        if o.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        ClientCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn crl(&self, number: u64, revoked: &[u64]) -> String {
        self.make_crl(number, revoked, false)
    }

    /// A CRL whose nextUpdate has passed.
    pub fn expired_crl(&self, number: u64) -> String {
        self.make_crl(number, &[], true)
    }

    fn make_crl(&self, number: u64, revoked: &[u64], expired: bool) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: if expired {
                rcgen::date_time_ymd(2024, 6, 1)
            } else {
                rcgen::date_time_ymd(2099, 1, 1)
            },
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// rustls client config that trusts the gateway's CA and presents `cert`.
pub fn client_tls_with_cert(pki: &Pki, cert: &ClientCert, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// One HTTP/1.1 request over a fresh TLS connection with the given client config.
/// `Err` when the handshake (or the connection) fails.
pub async fn request_with(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    req: &str,
) -> Result<String, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await?;
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without answer",
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// A pooled hyper client presenting a client certificate (keeps connections alive).
pub fn client_with_cert(pki: &Pki, cert: &ClientCert, h2: bool) -> TestClient {
    hyper_client(client_tls_with_cert(pki, cert, &[]), h2)
}

/// The `ward` binary running `run --config cfg`, its stderr (JSON log lines) on a channel,
/// and the public listener's port read from its "listening" line.
pub struct WardProcess {
    /// Killed and reaped when dropped, so a failing test leaves no gateway behind.
    pub child: KillOnDrop,
    pub port: u16,
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Lines read before the port was known.
    pub seen: Vec<String>,
}

/// A child process that is killed (SIGKILL) and waited for when dropped: a test that
/// panics half-way must not leave a `ward` process running (and holding its ports and
/// files). Derefs to the [`std::process::Child`], so `child.id()`, `child.wait()` and an
/// explicit `child.kill()` work as before; killing an already reaped child is harmless.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_ward(cfg: &std::path::Path) -> WardProcess {
    spawn_ward_cmd(std::process::Command::new(env!("CARGO_BIN_EXE_ward")), cfg)
}

/// [`spawn_ward`] with `dir` as the working directory, so `cfg` may be relative to it
/// (`ward.yaml`, `./ward.yaml`, `sub/ward.yaml`) as an operator types it.
pub fn spawn_ward_in(dir: &std::path::Path, cfg: &std::path::Path) -> WardProcess {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.current_dir(dir);
    spawn_ward_cmd(cmd, cfg)
}

fn spawn_ward_cmd(mut cmd: std::process::Command, cfg: &std::path::Path) -> WardProcess {
    use std::io::BufRead;
    let mut child = cmd
        .args(["run", "--config"])
        .arg(cfg)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let port = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ward logged its listener");
        seen.push(line.clone());
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        if v["message"] == "listening" && v["listener"] == "public" {
            break v["addr"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
        }
    };
    WardProcess {
        child: KillOnDrop(child),
        port,
        lines: rx,
        seen,
    }
}

/// Every error loading the config at `p` reports, one per line (the config must fail).
pub fn config_errors(p: &std::path::Path) -> String {
    match ward::config::load_with(p, &|_| None) {
        Ok(_) => panic!("{} loaded, but errors were expected", p.display()),
        Err(errs) => errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}
