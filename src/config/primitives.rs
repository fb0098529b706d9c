//! Configuration primitives: the value types many parts of the gateway take (durations,
//! TLS settings, listener limits, upstreams). A leaf of the module graph — it imports
//! nothing from the crate — so servers, engines and policies can take their own settings
//! without depending on `config/mod.rs`, which sits above them all (it gathers every
//! policy's config type into one file format).

use std::time::Duration;

use serde::Deserialize;

/// A duration written as `500ms`, `10s`, `5m`, `1h` (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n <= MAX_DURATION.as_secs() => Ok(Dur(Duration::from_secs(n))),
            Raw::N(_) => Err(serde::de::Error::custom(
                "duration too long (at most 7 days)",
            )),
            Raw::S(s) => parse_duration(&s).map(Dur).ok_or_else(|| {
                serde::de::Error::custom(
                    "invalid duration (use e.g. 500ms, 10s, 5m, 1h; at most 7 days)",
                )
            }),
        }
    }
}

/// Longest duration any setting takes: larger values are typos, and would overflow timer
/// arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn parse_duration(s: &str) -> Option<Duration> {
    parse_duration_unbounded(s).filter(|d| *d <= MAX_DURATION)
}

fn parse_duration_unbounded(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

pub(crate) fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificates: Vec<CertConfig>,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    #[serde(default)]
    pub client_auth: ClientAuthConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No client certificates are requested.
    #[default]
    None,
    /// Requested; a connection without one is allowed, a bad one is refused. Routes that
    /// need one say so with an `mtls` policy.
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// Client certificate verification for a listener. CAs and CRLs are re-read on SIGHUP and
/// when the files change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// CA bundles (PEM) that client certificates must chain to.
    #[serde(default)]
    pub ca: Vec<String>,
    /// CRLs (PEM). A certificate listed is refused on its next connection.
    #[serde(default)]
    pub crls: Vec<String>,
}
fn default_handshake_timeout() -> Dur {
    secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub cert: String,
    pub key: String,
    /// SNI names served with this certificate; the first certificate is also the default.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Dur,
    pub body_timeout: Dur,
    pub idle_timeout: Dur,
    /// HTTP/1: after this long idle, a keep-alive connection gives back its HTTP buffers
    /// (≈ 16 KiB) and waits for the client's next bytes holding only the TLS state.
    /// Zero releases as soon as an answer is out. Only below `idle_timeout` has it effect.
    pub idle_release: Dur,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: secs(10),
            body_timeout: secs(60),
            idle_timeout: secs(60),
            idle_release: Dur(Duration::from_millis(250)),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_reset_streams: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: String,
    /// CA bundle (PEM) trusted for an https upstream. Required for https: an EHR behind
    /// Ward should not be trusted through public web roots.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Dur,
    /// Idle pooled connections to this upstream are closed after this long. Keep it below
    /// the upstream's own keep-alive timeout (often 5 s in nginx-style servers, 5–60 s
    /// elsewhere): a connection the upstream closes first can be picked for a request in
    /// the moment it goes away. Such requests are retried once on a fresh connection when
    /// that is safe (see `proxy/mod.rs`), but retiring connections first avoids the race.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout: Dur,
    /// Idle pooled connections kept to this upstream. Set it at or above the peak number of
    /// requests in flight to it: beyond it, connections are closed as requests finish and
    /// opened again for the next ones (a TCP handshake per request, for as long as the load
    /// lasts). Idle connections still go after `pool_idle_timeout`.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    #[serde(default)]
    pub health: HealthConfig,
    /// Most requests in flight to this upstream at once (from the request being sent
    /// until its response body ends). Beyond it requests are shed with 503 and
    /// `Retry-After` instead of queueing on an EHR that is already struggling.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// With `max_concurrent_requests`: longest a response may wait for the client to take
    /// more bytes. A client that stops reading would otherwise hold a slot for as long as
    /// the upstream keeps sending; at expiry the slot is freed and the response aborted
    /// (the HTTP/1 connection closed at once, the HTTP/2 stream reset when next polled).
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
}
fn default_send_timeout() -> Dur {
    secs(30)
}
fn default_connect_timeout() -> Dur {
    secs(5)
}
fn default_response_timeout() -> Dur {
    secs(30)
}
fn default_pool_idle() -> Dur {
    secs(4)
}
fn default_pool_max_idle() -> usize {
    // Was 64: HTTP/2 clients with 320 streams in flight made the pool close and reopen
    // connections (full chain 77 -> 58 us CPU per request with 512; benches/README).
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// HTTP path probed with GET (any status below 500 counts as up); without it a TCP
    /// connect is the probe.
    pub path: Option<String>,
    pub interval: Dur,
    pub timeout: Dur,
}
impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: secs(10),
            timeout: secs(2),
        }
    }
}
