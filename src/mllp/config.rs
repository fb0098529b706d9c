//! The `mllp:` section of the config: a listener's settings, its senders, its rate limit
//! and its upstream, with the checks `ward check` runs on them.

use super::*;

pub(super) fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}
pub(super) fn default_max_message() -> usize {
    1024 * 1024
}
pub(super) fn default_frame_timeout() -> Dur {
    secs(30)
}
pub(super) fn default_idle_timeout() -> Dur {
    secs(300)
}
pub(super) fn default_max_connections() -> usize {
    256
}
pub(super) fn default_connect_timeout() -> Dur {
    secs(5)
}
pub(super) fn default_ack_timeout() -> Dur {
    secs(30)
}
pub(super) fn default_upstream_connections() -> usize {
    4
}
pub(super) fn default_handshake() -> Dur {
    secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpConfig {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Must be written explicitly to accept HL7 in clear.
    #[serde(default)]
    pub plaintext: bool,
    pub upstream: MllpUpstreamConfig,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Longest a frame may take from start block to end block.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: Dur,
    /// Longest a connection may sit between messages.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub validate: MllpValidateConfig,
    /// Who may send as whom. Empty: any sender may claim any MSH-3/MSH-4.
    #[serde(default)]
    pub senders: Vec<SenderRule>,
    /// The gateway's ACK when the upstream cannot be reached or does not answer in time:
    /// `AE` (the default: the sender should retry) or `AR`.
    #[serde(default)]
    pub on_upstream_failure: FailureAck,
    #[serde(default)]
    pub rate_limit: Option<MllpRateLimit>,
    /// One audit record per message (needs the top-level `audit:`).
    #[serde(default)]
    pub audit: bool,
    /// Name of a policy whose `dlp` section applies to every message before it is
    /// forwarded (the HL7 field rules and detectors; `mode: report` only counts).
    #[serde(default)]
    pub dlp: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum FailureAck {
    #[default]
    AE,
    AR,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MllpValidateConfig {
    #[serde(default)]
    pub allowed_message_types: Vec<String>,
    #[serde(default, deserialize_with = "crate::policy::validate::versions")]
    pub allowed_versions: Vec<String>,
    #[serde(default)]
    pub required_segments: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub lenient_line_endings: bool,
}

/// One kind of sender: who it is (any field that matches; no field = anyone) and what it
/// may claim as the whole MSH-3 / MSH-4 field, components included (`LAB` matches only a
/// field that is exactly `LAB`; write `LAB^1.2.3^ISO` for one with a universal id; empty
/// = anything).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderRule {
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub uri_sans: Vec<String>,
    #[serde(default)]
    pub dns_sans: Vec<String>,
    #[serde(default)]
    pub spki_sha256: Vec<String>,
    #[serde(default)]
    pub sending_applications: Vec<String>,
    #[serde(default)]
    pub sending_facilities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpRateLimit {
    /// Messages per `per`, per sender (client certificate key, else address).
    pub rate: u32,
    pub per: crate::ratelimit::Per,
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpUpstreamConfig {
    /// `host:port` of the receiving system.
    pub address: String,
    /// CA bundle: set to speak TLS to the upstream.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Name checked in the upstream's certificate; default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Dur,
    /// Most connections held to the upstream (also the most messages in flight to it).
    #[serde(default = "default_upstream_connections")]
    pub max_connections: usize,
    #[serde(default = "default_handshake")]
    pub handshake_timeout: Dur,
}

impl MllpConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = |k: &str, m: String| out.push((k.to_owned(), m));
        match self.upstream.address.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0) => {}
            _ => p("upstream.address", "expected host:port".into()),
        }
        if self.upstream.client_cert.is_some() != self.upstream.client_key.is_some() {
            p(
                "upstream.client_cert",
                "client_cert and client_key go together".into(),
            );
        }
        if self.upstream.client_cert.is_some() && self.upstream.ca.is_none() {
            p(
                "upstream.ca",
                "a client certificate needs TLS: set `ca`".into(),
            );
        }
        for (k, zero) in [
            ("max_message_bytes", self.max_message_bytes == 0),
            ("frame_timeout", self.frame_timeout.0.is_zero()),
            ("idle_timeout", self.idle_timeout.0.is_zero()),
            ("max_connections", self.max_connections == 0),
            (
                "upstream.max_connections",
                self.upstream.max_connections == 0,
            ),
            (
                "upstream.ack_timeout",
                self.upstream.ack_timeout.0.is_zero(),
            ),
            (
                "upstream.connect_timeout",
                self.upstream.connect_timeout.0.is_zero(),
            ),
        ] {
            if zero {
                p(k, "must be greater than 0".into());
            }
        }
        if let Some(r) = &self.rate_limit {
            if r.rate == 0 || r.burst == Some(0) {
                p("rate_limit", "rate and burst must be greater than 0".into());
            }
        }
        let v = crate::policy::validate::ValidateConfig {
            fhir: None,
            hl7v2: Some(self.validate.as_policy()),
        };
        for (k, m) in v.problems() {
            p(
                &format!("validate{}", k.strip_prefix("hl7v2").unwrap_or(&k)),
                m,
            );
        }
        if self.senders.iter().any(|s| {
            s.spki_sha256
                .iter()
                .any(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        }) {
            p("senders", "spki_sha256 entries are 64 hex digits".into());
        }
        // MSH-3 and MSH-4 are optional, so a message may carry them empty: a blank entry
        // would let such a message pass a sender binding that names who may send.
        if self.senders.iter().any(|s| {
            s.sending_applications
                .iter()
                .chain(&s.sending_facilities)
                .any(|v| v.trim().is_empty())
        }) {
            p(
                "senders",
                "sending_applications and sending_facilities entries must not be blank".into(),
            );
        }
        out
    }
}

impl MllpValidateConfig {
    pub(super) fn as_policy(&self) -> crate::policy::validate::Hl7v2ValidateConfig {
        crate::policy::validate::Hl7v2ValidateConfig {
            max_body_bytes: default_max_message(),
            allowed_message_types: self.allowed_message_types.clone(),
            allowed_versions: self.allowed_versions.clone(),
            required_segments: self.required_segments.clone(),
            lenient_line_endings: self.lenient_line_endings,
            media_types: vec!["x-application/hl7-v2+er7".into()],
            all_bodies: true,
        }
    }
    pub(super) fn rules(&self) -> hl7v2::Rules {
        hl7v2::Rules {
            allowed_message_types: self.allowed_message_types.clone(),
            allowed_versions: self.allowed_versions.clone(),
            required_segments: self
                .required_segments
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            lenient_line_endings: self.lenient_line_endings,
            ..hl7v2::Rules::default()
        }
    }
}

impl SenderRule {
    pub(super) fn matches_identity(&self, id: Option<&ClientIdentity>) -> bool {
        let constrained = !(self.subjects.is_empty()
            && self.uri_sans.is_empty()
            && self.dns_sans.is_empty()
            && self.spki_sha256.is_empty());
        if !constrained {
            return true;
        }
        let Some(id) = id else { return false };
        id.subject_cn
            .as_ref()
            .is_some_and(|cn| self.subjects.contains(cn))
            || id.uri_sans.iter().any(|u| self.uri_sans.contains(u))
            || id
                .dns_sans
                .iter()
                .any(|d| self.dns_sans.iter().any(|p| p.eq_ignore_ascii_case(d)))
            || self
                .spki_sha256
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&id.spki_sha256))
    }

    pub(super) fn allows(&self, app: &[u8], facility: &[u8]) -> bool {
        let ok =
            |list: &[String], v: &[u8]| list.is_empty() || list.iter().any(|x| x.as_bytes() == v);
        ok(&self.sending_applications, app) && ok(&self.sending_facilities, facility)
    }
}
