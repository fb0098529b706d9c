//! Configuration: one YAML file plus one YAML file per named policy under `policies/`.
//!
//! Loading is read → parse (with lines) → expand `${ENV}` → decode each item
//! (`deny_unknown_fields`) → validate. Every error found on the way is kept, with
//! `file:line: key.path`, so `ward check` lists them all at once. A running gateway only
//! ever holds a [`Config`] that passed all of this.

pub mod yaml;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod primitives;

pub use primitives::*;
pub use yaml::ConfigError;
use yaml::{LineIndex, Located, Node};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Must be written explicitly to serve without TLS (HTTP/1.1 only, warned at start).
    #[serde(default)]
    pub plaintext: bool,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Request-Id` are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: ListenerLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub listener: String,
    /// Host (without port) this route answers for; absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    pub path_prefix: String,
    /// Allowed methods; absent = GET HEAD POST PUT PATCH DELETE OPTIONS.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    /// Replaces `path_prefix` in the forwarded path.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub fhir: bool,
    #[serde(default)]
    pub policies: Vec<String>,
    /// FHIR routes: the URL clients reach `path_prefix` at (e.g.
    /// `https://fhir.hospital.example/patient/fhir`). The upstream's base URL is rewritten
    /// to it in headers and bodies; absent, the scheme and Host the client used are taken.
    #[serde(default)]
    pub public_url: Option<String>,
    /// FHIR routes: other base URLs the upstream calls itself by (e.g. the name it was
    /// installed under, `https://ehr.internal/fhir`), rewritten like its own.
    #[serde(default)]
    pub upstream_aliases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub bind: String,
}
impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: "127.0.0.1:9901".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Per-route request limits carried by a policy file's `limits` section. They can only
/// tighten the listener's limits.
/// One file under `policies/`; its name is the file stem.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub limits: Option<crate::policy::limits::LimitsPolicyConfig>,
    #[serde(default)]
    pub mtls: Option<crate::policy::mtls::MtlsConfig>,
    #[serde(default)]
    pub auth: Option<crate::policy::auth::AuthConfig>,
    #[serde(default)]
    pub fhir_authz: Option<crate::policy::fhir_authz::FhirAuthzConfig>,
    #[serde(default)]
    pub rate_limit: Option<crate::policy::rate_limit::RateLimitConfig>,
    #[serde(default)]
    pub validate: Option<crate::policy::validate::ValidateConfig>,
    #[serde(default)]
    pub audit: Option<crate::policy::audit::AuditPolicyConfig>,
    #[serde(default)]
    pub dlp: Option<crate::dlp::DlpConfig>,
    /// SMART discovery (`.well-known/smart-configuration`, CapabilityStatement security).
    #[serde(default)]
    pub discovery: Option<crate::fhir::discovery::DiscoveryConfig>,
    /// Where the file is, for messages.
    #[serde(skip)]
    pub file: String,
}

impl PolicyConfig {
    /// The sections this policy defines, by name.
    pub fn sections(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.limits.is_some() {
            v.push("limits");
        }
        if self.mtls.is_some() {
            v.push("mtls");
        }
        if self.auth.is_some() {
            v.push("auth");
        }
        if self.fhir_authz.is_some() {
            v.push("fhir_authz");
        }
        if self.rate_limit.is_some() {
            v.push("rate_limit");
        }
        if self.validate.is_some() {
            v.push("validate");
        }
        if self.audit.is_some() {
            v.push("audit");
        }
        if self.dlp.is_some() {
            v.push("dlp");
        }
        if self.discovery.is_some() {
            v.push("discovery");
        }
        v
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub base_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    /// HL7 v2 MLLP listeners (`mllp.rs`).
    pub mllp: Vec<crate::mllp::MllpConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub admin: AdminConfig,
    pub shutdown_grace: Duration,
    pub log: LogConfig,
    /// Where audit records go; routes opt in with an `audit` policy section.
    pub audit: Option<crate::audit::AuditConfig>,
    /// Detect and respond: signals, blocks, notifications (every route).
    pub respond: Option<crate::respond::RespondConfig>,
    /// The policies folder, resolved (watched for hot reload).
    pub policies_dir: PathBuf,
    pub policies: BTreeMap<String, PolicyConfig>,
}

impl Config {
    /// Resolve a path written in the config relative to the config file's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve_in(&self.base_dir, p)
    }
}

fn resolve_in(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Load and validate from a file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let env = |n: &str| std::env::var(n).ok();
    load_with(path, &env)
}

/// Load with an explicit variable resolver (tests and the demo use this).
pub fn load_with(
    path: &Path,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: file.clone(),
            line: None,
            path: String::new(),
            message: format!("cannot read config: {}", e.kind()),
        }]
    })?;
    // A bare file name (`--config ward.yaml`) has the parent "" — not a folder anyone can
    // watch, and not one that compares equal to the paths file events carry. The folder is
    // made absolute (without resolving symlinks, so Kubernetes' `..data` swap still shows
    // up in the folder the operator named) once, here, so every relative path in the
    // config and every watcher sees the same spelling.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let base = parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base = std::path::absolute(&base).unwrap_or(base);
    load_str(&file, &text, &base, vars)
}

/// Findings that do not stop `cfg` (loaded from `path`) from running but that an operator
/// should see, located like errors (`file:line: key: message`). `ward check` prints them
/// and still exits 0; `ward run` logs the same facts at start.
pub fn warnings(path: &Path, cfg: &Config) -> Vec<ConfigError> {
    let file = path.display().to_string();
    // Re-read only for line numbers: the decision uses the loaded (env-expanded) values.
    let idx = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| yaml::parse(&file, &t).ok())
        .map(|root| LineIndex::build(&root));
    let at = |key: &str, message: String| ConfigError {
        file: file.clone(),
        line: idx.as_ref().and_then(|i| i.line(key)),
        path: key.to_owned(),
        message,
    };
    let mut out = Vec::new();
    // The admin listener serves metrics and the block API without authentication; on a
    // wildcard or LAN address anyone who reaches the host can read or change them.
    // (A hostname is not accepted at all: `validate` wants ip:port.)
    if let Ok(a) = cfg.admin.bind.parse::<SocketAddr>() {
        if !a.ip().to_canonical().is_loopback() {
            out.push(at(
                "admin.bind",
                format!(
                    "{} is not a loopback address: the admin listener (metrics, health, block API) has no authentication; bind it to 127.0.0.1 or ::1, or restrict access to it",
                    a.ip()
                ),
            ));
        }
    }
    out
}

/// Accumulates errors for one file.
struct Errs<'a> {
    file: String,
    idx: &'a LineIndex,
    out: &'a mut Vec<ConfigError>,
}

impl Errs<'_> {
    fn at(&mut self, path: &str, msg: impl Into<String>) {
        self.out.push(ConfigError {
            file: self.file.clone(),
            line: self.idx.line(path),
            path: path.to_owned(),
            message: msg.into(),
        });
    }
}

const TOP_KEYS: &[&str] = &[
    "listeners",
    "mllp",
    "upstreams",
    "routes",
    "admin",
    "policies_dir",
    "shutdown_grace",
    "log",
    "audit",
    "respond",
];

pub fn load_str(
    file: &str,
    text: &str,
    base: &Path,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let root = yaml::parse(file, text).map_err(|e| vec![e])?;
    let idx = LineIndex::build(&root);
    let mut out = Vec::new();
    let mut e = Errs {
        file: file.to_owned(),
        idx: &idx,
        out: &mut out,
    };

    let Node::Map(entries) = &root.node else {
        e.at("", "the config must be a YAML mapping");
        return Err(out);
    };
    for (k, _, _) in entries {
        if !TOP_KEYS.contains(&k.as_str()) {
            e.at(
                k,
                format!(
                    "unknown key `{k}` (expected one of: {})",
                    TOP_KEYS.join(", ")
                ),
            );
        }
    }
    let get = |k: &str| entries.iter().find(|(n, _, _)| n == k).map(|(_, _, v)| v);

    // Decoded items keep their position in the file, for error paths.
    let (listener_pos, listeners): (Vec<usize>, Vec<ListenerConfig>) =
        decode_list(&mut e, get("listeners"), "listeners", vars)
            .into_iter()
            .unzip();
    let (upstream_pos, upstreams): (Vec<usize>, Vec<UpstreamConfig>) =
        decode_list(&mut e, get("upstreams"), "upstreams", vars)
            .into_iter()
            .unzip();
    let (mllp_pos, mllp): (Vec<usize>, Vec<crate::mllp::MllpConfig>) =
        decode_list(&mut e, get("mllp"), "mllp", vars)
            .into_iter()
            .unzip();
    let (route_pos, routes): (Vec<usize>, Vec<RouteConfig>) =
        decode_list(&mut e, get("routes"), "routes", vars)
            .into_iter()
            .unzip();
    let admin: AdminConfig = decode_one(&mut e, get("admin"), "admin", vars).unwrap_or_default();
    let log: LogConfig = decode_one(&mut e, get("log"), "log", vars).unwrap_or_default();
    let audit: Option<crate::audit::AuditConfig> = decode_one(&mut e, get("audit"), "audit", vars);
    if let Some(a) = &audit {
        for (k, m) in a.problems() {
            e.at(&format!("audit.{k}"), m);
        }
    }
    let respond: Option<crate::respond::RespondConfig> =
        decode_one(&mut e, get("respond"), "respond", vars);
    if let Some(r) = &respond {
        for (k, m) in r.problems(&|p| resolve_in(base, p)) {
            e.at(&format!("respond.{k}"), m);
        }
    }
    let shutdown_grace: Dur =
        decode_one(&mut e, get("shutdown_grace"), "shutdown_grace", vars).unwrap_or(secs(30));
    let policies_dir: String = decode_one(&mut e, get("policies_dir"), "policies_dir", vars)
        .unwrap_or_else(|| "policies".to_owned());

    // Policies: every file in the folder is loaded and checked, used or not, so a broken
    // file is found before a route starts to depend on it.
    let pdir = resolve_in(base, &policies_dir);
    let mut policies = BTreeMap::new();
    let referenced: HashSet<&str> = routes
        .iter()
        .flat_map(|r| r.policies.iter().map(String::as_str))
        .collect();
    if pdir.is_dir() {
        let (ok, mut perrs) = load_policies_partial(&pdir, base, vars);
        policies = ok;
        e.out.append(&mut perrs);
    } else if !referenced.is_empty() {
        e.at(
            "policies_dir",
            format!("policies folder {} not found", pdir.display()),
        );
    }

    // Names of items that failed to decode still count as defined, so one typo does not
    // cascade into "no listener with this name" on every route.
    let raw_names = |key: &str| -> Vec<String> {
        match get(key).map(|n| &n.node) {
            Some(Node::Seq(items)) => items
                .iter()
                .filter_map(|it| match &it.node {
                    Node::Map(m) => m
                        .iter()
                        .find(|(k, _, _)| k == "name")
                        .and_then(|(_, _, v)| match &v.node {
                            Node::Str(s) => Some(s.clone()),
                            _ => None,
                        }),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let policy_files: Vec<String> = std::fs::read_dir(&pdir)
        .map(|rd| {
            rd.filter_map(|d| d.ok().map(|d| d.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|x| x.to_str()),
                        Some("yaml") | Some("yml")
                    )
                })
                .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known = KnownNames {
        listeners: raw_names("listeners"),
        upstreams: raw_names("upstreams"),
        policies: policy_files,
        listener_pos,
        mllp_pos,
        upstream_pos,
        route_pos,
    };
    let cfg = Config {
        source: PathBuf::from(file),
        base_dir: base.to_path_buf(),
        listeners,
        mllp,
        upstreams,
        routes,
        admin,
        shutdown_grace: shutdown_grace.0,
        log,
        audit,
        respond,
        policies_dir: pdir.clone(),
        policies,
    };
    validate(&cfg, &known, &mut e);
    if out.is_empty() {
        Ok(cfg)
    } else {
        Err(out)
    }
}

fn decode_list<T: serde::de::DeserializeOwned>(
    e: &mut Errs<'_>,
    node: Option<&Located>,
    key: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Vec<(usize, T)> {
    let Some(node) = node else {
        return Vec::new();
    };
    let Node::Seq(items) = &node.node else {
        if !matches!(node.node, Node::Null) {
            e.at(key, "expected a list");
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{key}[{i}]");
        if let Some(v) = decode_node(e, item, &path, vars) {
            out.push((i, v));
        }
    }
    out
}

fn decode_one<T: serde::de::DeserializeOwned>(
    e: &mut Errs<'_>,
    node: Option<&Located>,
    key: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Option<T> {
    decode_node(e, node?, key, vars)
}

fn decode_node<T: serde::de::DeserializeOwned>(
    e: &mut Errs<'_>,
    node: &Located,
    path: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Option<T> {
    let mut env_errs = Vec::new();
    let json = yaml::to_json(node, path, vars, &mut env_errs);
    let had_env_err = !env_errs.is_empty();
    for (p, _, msg) in env_errs {
        e.at(&p, msg);
    }
    if had_env_err {
        return None;
    }
    match yaml::decode::<T>(json, path, e.idx) {
        Ok(v) => Some(v),
        Err((p, msg)) => {
            e.at(&p, msg);
            None
        }
    }
}

/// Load every `*.yaml` / `*.yml` file in `dir` as a named policy.
/// Load every policy file; paths inside them are relative to `base` (the main config's
/// folder), like every other path.
pub fn load_policies(
    dir: &Path,
    base: &Path,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, PolicyConfig>, Vec<ConfigError>> {
    let (ok, errs) = load_policies_partial(dir, base, vars);
    if errs.is_empty() {
        Ok(ok)
    } else {
        Err(errs)
    }
}

/// The policies that load, and the errors of those that do not (so route checks still run
/// over the good ones and every error is reported in one go).
fn load_policies_partial(
    dir: &Path,
    base: &Path,
    vars: &dyn Fn(&str) -> Option<String>,
) -> (BTreeMap<String, PolicyConfig>, Vec<ConfigError>) {
    let mut out = BTreeMap::new();
    let mut errs = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml") | Some("yml")
                )
            })
            .collect(),
        Err(err) => {
            let e = ConfigError {
                file: dir.display().to_string(),
                line: None,
                path: String::new(),
                message: format!("cannot read policies folder: {}", err.kind()),
            };
            return (out, vec![e]);
        }
    };
    files.sort();
    for f in files {
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        match load_policy_file(&f, base, vars) {
            Ok(p) => {
                out.insert(name, p);
            }
            Err(mut e) => errs.append(&mut e),
        }
    }
    (out, errs)
}

pub fn load_policy_file(
    path: &Path,
    base: &Path,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<PolicyConfig, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigError {
            file: file.clone(),
            line: None,
            path: String::new(),
            message: format!("cannot read policy: {}", err.kind()),
        }]
    })?;
    let root = yaml::parse(&file, &text).map_err(|e| vec![e])?;
    let idx = LineIndex::build(&root);
    let mut out = Vec::new();
    let mut e = Errs {
        file,
        idx: &idx,
        out: &mut out,
    };
    let mut policy = PolicyConfig {
        file: path.display().to_string(),
        ..Default::default()
    };
    let resolve = |p: &str| resolve_in(base, p);
    match &root.node {
        Node::Map(entries) => {
            for (k, _, v) in entries {
                match k.as_str() {
                    "description" => policy.description = decode_node(&mut e, v, k, vars),
                    "limits" => {
                        policy.limits = decode_node(&mut e, v, k, vars);
                        if let Some(l) = &policy.limits {
                            if l.max_body_bytes == Some(0) {
                                e.at("limits.max_body_bytes", "must be greater than 0");
                            }
                            if l.body_timeout.is_some_and(|d| d.0.is_zero()) {
                                e.at("limits.body_timeout", "must be greater than 0");
                            }
                        }
                    }
                    "mtls" => {
                        policy.mtls = decode_node(&mut e, v, k, vars);
                        if let Some(m) = &policy.mtls {
                            for (key, msg) in m.problems() {
                                e.at(&format!("mtls.{key}"), msg);
                            }
                        }
                    }
                    "fhir_authz" => {
                        policy.fhir_authz = decode_node(&mut e, v, k, vars);
                        if let Some(f) = &policy.fhir_authz {
                            for (key, msg) in f.problems() {
                                e.at(&format!("fhir_authz.{key}"), msg);
                            }
                        }
                    }
                    "audit" => policy.audit = decode_node(&mut e, v, k, vars),
                    "validate" => {
                        policy.validate = decode_node(&mut e, v, k, vars);
                        if let Some(r) = &policy.validate {
                            for (key, msg) in r.problems() {
                                let at = if key.is_empty() { "validate".to_owned() } else { format!("validate.{key}") };
                                e.at(&at, msg);
                            }
                        }
                    }
                    "rate_limit" => {
                        policy.rate_limit = decode_node(&mut e, v, k, vars);
                        if let Some(r) = &policy.rate_limit {
                            for (key, msg) in r.problems() {
                                e.at(&format!("rate_limit.{key}"), msg);
                            }
                        }
                    }
                    "auth" => {
                        policy.auth = decode_node(&mut e, v, k, vars);
                        if let Some(a) = &policy.auth {
                            for (key, msg) in a.problems(&resolve) {
                                e.at(&format!("auth.{key}"), msg);
                            }
                        }
                    }
                    "dlp" => {
                        policy.dlp = decode_node(&mut e, v, k, vars);
                        if let Some(d) = &policy.dlp {
                            for (key, msg) in d.problems(&resolve) {
                                let at = if key.is_empty() { "dlp".to_owned() } else { format!("dlp.{key}") };
                                e.at(&at, msg);
                            }
                        }
                    }
                    "discovery" => {
                        policy.discovery = decode_node(&mut e, v, k, vars);
                        if let Some(d) = &policy.discovery {
                            for (key, msg) in d.problems() {
                                e.at(&format!("discovery.{key}"), msg);
                            }
                        }
                    }
                    _ => e.at(
                        k,
                        format!(
                            "unknown policy section `{k}` (expected description, limits, mtls, auth, fhir_authz, rate_limit, validate, audit, dlp or discovery)"
                        ),
                    ),
                }
            }
        }
        Node::Null => {}
        _ => e.at("", "a policy file must be a YAML mapping"),
    }
    if out.is_empty() {
        Ok(policy)
    } else {
        Err(out)
    }
}

pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Checks across the policies one route combines, and against its listener.
fn validate_route_policies(cfg: &Config, r: &RouteConfig, p: &str, e: &mut Errs<'_>) {
    let listener = cfg.listeners.iter().find(|l| l.name == r.listener);
    let client_auth = listener
        .and_then(|l| l.tls.as_ref())
        .map(|t| t.client_auth.mode)
        .unwrap_or(ClientAuthMode::None);
    let plaintext = listener.is_some_and(|l| l.tls.is_none());
    let mut seen: Vec<(&'static str, &str)> = Vec::new();
    let mut headers: Vec<(String, &str)> = Vec::new();
    for (j, name) in r.policies.iter().enumerate() {
        let Some(pc) = cfg.policies.get(name) else {
            continue;
        };
        let at = format!("{p}.policies[{j}]");
        // A route takes each policy kind once: a second `mtls` or `auth` would otherwise
        // be silently ignored, and a policy must never be skipped.
        // (`limits` sections compose: each can only tighten.)
        for sec in pc.sections().into_iter().filter(|s| *s != "limits") {
            if let Some((_, other)) = seen.iter().find(|(s, _)| *s == sec) {
                e.at(&at, format!("`{name}` and `{other}` both define `{sec}`; a route takes each policy kind once"));
            }
            seen.push((sec, name.as_str()));
        }
        if let Some(m) = &pc.mtls {
            if listener.is_some() && client_auth == ClientAuthMode::None {
                e.at(&at, format!("`{name}` has an mtls section but listener `{}` does not request client certificates (tls.client_auth.mode)", r.listener));
            }
            if let Some(h) = &m.forward_header {
                headers.push((h.to_ascii_lowercase(), name.as_str()));
            }
        }
        if let Some(a) = &pc.auth {
            if plaintext {
                e.at(&at, format!("`{name}` has an auth section but listener `{}` is plaintext: tokens would cross the network in clear", r.listener));
            }
            if a.require_certificate_binding && client_auth == ClientAuthMode::None {
                e.at(&at, format!("`{name}` requires certificate-bound tokens but listener `{}` does not request client certificates", r.listener));
            }
            for h in a.forward_claims.values() {
                headers.push((h.to_ascii_lowercase(), name.as_str()));
            }
        }
    }
    let has = |sec: &str| seen.iter().any(|(s, _)| *s == sec);
    if let Some((name, rl)) = seen
        .iter()
        .find(|(s, _)| *s == "rate_limit")
        .and_then(|(_, n)| {
            cfg.policies
                .get(*n)
                .and_then(|pc| pc.rate_limit.as_ref())
                .map(|rl| (*n, rl))
        })
    {
        if rl.needs_auth() && !has("auth") {
            e.at(
                p,
                format!("`{name}` counts by token claims but the route has no auth policy"),
            );
        }
        if rl.needs_client_cert() && listener.is_some() && client_auth == ClientAuthMode::None {
            e.at(p, format!("`{name}` counts by client certificate but listener `{}` does not request client certificates", r.listener));
        }
    }
    if let Some(name) = seen.iter().find(|(s, _)| *s == "audit").map(|(_, n)| *n) {
        if cfg.audit.is_none() {
            e.at(p, format!("`{name}` audits this route but the config has no top-level `audit:` (where records go)"));
        }
    }
    if let Some(name) = seen.iter().find(|(s, _)| *s == "validate").map(|(_, n)| *n) {
        let fhir = cfg
            .policies
            .get(name)
            .and_then(|pc| pc.validate.as_ref())
            .is_some_and(|v| v.fhir.is_some());
        if fhir && !r.fhir {
            e.at(
                p,
                format!("`{name}` validates FHIR bodies but the route is not `fhir: true`"),
            );
        }
    }
    if let Some(name) = seen
        .iter()
        .find(|(s, _)| *s == "discovery")
        .map(|(_, n)| *n)
    {
        if !r.fhir {
            e.at(
                p,
                format!("`{name}` has a discovery section but the route is not `fhir: true`"),
            );
        }
    }
    if let Some(name) = seen.iter().find(|(s, _)| *s == "auth").map(|(_, n)| *n) {
        let anon = cfg
            .policies
            .get(name)
            .and_then(|pc| pc.auth.as_ref())
            .is_some_and(|a| a.anonymous_discovery);
        if anon && !r.fhir {
            e.at(
                p,
                format!("`{name}` has auth.anonymous_discovery, which applies to `fhir: true` routes only"),
            );
        }
    }
    if has("fhir_authz") {
        if !r.fhir {
            e.at(p, "a fhir_authz policy needs a `fhir: true` route");
        }
        if !has("auth") {
            e.at(p, "a fhir_authz policy needs an auth policy on the same route (it reads the token's scopes)");
        }
    }
    for (i, (h, pol)) in headers.iter().enumerate() {
        if headers[..i].iter().any(|(o, _)| o == h) {
            e.at(
                p,
                format!("header `{h}` is set by more than one policy (`{pol}`)"),
            );
        }
    }
}

/// Checks of a TLS server section (HTTP and MLLP listeners alike).
fn check_tls(cfg: &Config, tls: &TlsConfig, p: &str, e: &mut Errs<'_>) {
    if tls.certificates.is_empty() {
        e.at(
            &format!("{p}.tls.certificates"),
            "at least one certificate is required",
        );
    }
    for (j, c) in tls.certificates.iter().enumerate() {
        let cp = format!("{p}.tls.certificates[{j}]");
        if let Err(msg) = crate::tls::check_cert_pair(&cfg.resolve(&c.cert), &cfg.resolve(&c.key)) {
            e.at(&cp, msg);
        }
    }
    let ca = &tls.client_auth;
    if ca.mode != ClientAuthMode::None && ca.ca.is_empty() {
        e.at(
            &format!("{p}.tls.client_auth.ca"),
            "client certificates need at least one CA bundle",
        );
    }
    if ca.mode == ClientAuthMode::None && (!ca.ca.is_empty() || !ca.crls.is_empty()) {
        e.at(
            &format!("{p}.tls.client_auth.mode"),
            "CAs/CRLs given but mode is none (use optional or required)",
        );
    }
    if ca.mode != ClientAuthMode::None {
        if let Err(msg) = crate::tls::client_verifier(ca, &|f| cfg.resolve(f)) {
            e.at(&format!("{p}.tls.client_auth"), msg);
        }
    }
    if tls.handshake_timeout.0.is_zero() {
        e.at(
            &format!("{p}.tls.handshake_timeout"),
            "must be greater than 0",
        );
    }
}

/// What the file defines, even where an item failed to decode, and where each decoded
/// item sits in its list.
struct KnownNames {
    listeners: Vec<String>,
    upstreams: Vec<String>,
    policies: Vec<String>,
    listener_pos: Vec<usize>,
    mllp_pos: Vec<usize>,
    upstream_pos: Vec<usize>,
    route_pos: Vec<usize>,
}

fn validate(cfg: &Config, known: &KnownNames, e: &mut Errs<'_>) {
    let mut names = HashSet::new();
    let mut binds: Vec<(SocketAddr, String)> = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let p = format!("listeners[{}]", known.listener_pos[i]);
        if l.name.is_empty() || !names.insert(l.name.as_str()) {
            e.at(
                &format!("{p}.name"),
                "listener names must be unique and non-empty",
            );
        }
        match l.bind.parse::<SocketAddr>() {
            Ok(a) => {
                if a.port() != 0 && binds.iter().any(|(b, _)| *b == a) {
                    e.at(
                        &format!("{p}.bind"),
                        "address already used by another listener",
                    );
                }
                binds.push((a, l.name.clone()));
            }
            Err(_) => e.at(&format!("{p}.bind"), "expected ip:port, e.g. 0.0.0.0:8443"),
        }
        match (&l.tls, l.plaintext) {
            (Some(_), true) => e.at(
                &format!("{p}.plaintext"),
                "a listener is either tls or plaintext, not both",
            ),
            (None, false) => e.at(
                &format!("{p}.tls"),
                "missing `tls` (a plaintext listener needs an explicit `plaintext: true`)",
            ),
            _ => {}
        }
        if let Some(tls) = &l.tls {
            check_tls(cfg, tls, &p, e);
        }
        for (j, cidr) in l.trusted_proxies.iter().enumerate() {
            if crate::proxy::headers::parse_cidr(cidr).is_none() {
                e.at(
                    &format!("{p}.trusted_proxies[{j}]"),
                    "expected an IP address or CIDR (e.g. 10.0.0.0/8)",
                );
            }
        }
        let lim = &l.limits;
        let lp = format!("{p}.limits");
        for (k, zero) in [
            ("max_header_bytes", lim.max_header_bytes == 0),
            ("max_headers", lim.max_headers == 0),
            ("max_body_bytes", lim.max_body_bytes == 0),
            ("header_read_timeout", lim.header_read_timeout.0.is_zero()),
            ("body_timeout", lim.body_timeout.0.is_zero()),
            ("idle_timeout", lim.idle_timeout.0.is_zero()),
            ("max_connections", lim.max_connections == 0),
            (
                "h2_max_concurrent_streams",
                lim.h2_max_concurrent_streams == 0,
            ),
        ] {
            if zero {
                e.at(&format!("{lp}.{k}"), "must be greater than 0");
            }
        }
        if lim.max_header_bytes > 1024 * 1024 {
            e.at(&format!("{lp}.max_header_bytes"), "at most 1 MiB");
        }
        if lim.max_connections > 1_000_000 {
            e.at(&format!("{lp}.max_connections"), "at most 1000000");
        }
        if lim.max_body_bytes > 1 << 40 {
            e.at(&format!("{lp}.max_body_bytes"), "at most 1 TiB");
        }
        if lim.max_headers > 1000 {
            e.at(&format!("{lp}.max_headers"), "at most 1000");
        }
    }

    let mut unames = HashSet::new();
    // MLLP listeners share the listener namespace and addresses.
    for (i, m) in cfg.mllp.iter().enumerate() {
        let p = format!("mllp[{}]", known.mllp_pos[i]);
        if m.name.is_empty() || !names.insert(m.name.as_str()) {
            e.at(
                &format!("{p}.name"),
                "listener names must be unique and non-empty",
            );
        }
        match m.bind.parse::<SocketAddr>() {
            Ok(a) => {
                if a.port() != 0 && binds.iter().any(|(b, _)| *b == a) {
                    e.at(
                        &format!("{p}.bind"),
                        "address already used by another listener",
                    );
                }
                binds.push((a, m.name.clone()));
            }
            Err(_) => e.at(&format!("{p}.bind"), "expected ip:port, e.g. 0.0.0.0:2575"),
        }
        match (&m.tls, m.plaintext) {
            (Some(_), true) => e.at(
                &format!("{p}.plaintext"),
                "a listener is either tls or plaintext, not both",
            ),
            (None, false) => e.at(
                &format!("{p}.tls"),
                "missing `tls` (plaintext HL7 needs an explicit `plaintext: true`)",
            ),
            _ => {}
        }
        if let Some(tls) = &m.tls {
            check_tls(cfg, tls, &p, e);
        }
        for (k, msg) in m.problems() {
            e.at(&format!("{p}.{k}"), msg);
        }
        if let Some(d) = &m.dlp {
            match cfg.policies.get(d) {
                None => e.at(&format!("{p}.dlp"), "no policy file with this name"),
                Some(pc) if pc.dlp.is_none() => e.at(
                    &format!("{p}.dlp"),
                    format!("policy `{d}` has no `dlp` section"),
                ),
                Some(_) => {}
            }
        }
        let certs = m
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth.mode != ClientAuthMode::None);
        let names_certs = m.senders.iter().any(|s| {
            !(s.subjects.is_empty()
                && s.uri_sans.is_empty()
                && s.dns_sans.is_empty()
                && s.spki_sha256.is_empty())
        });
        if names_certs && !certs {
            e.at(&format!("{p}.senders"), "senders are identified by client certificate, but this listener does not request one (tls.client_auth.mode)");
        }
        if m.audit && cfg.audit.is_none() {
            e.at(
                &format!("{p}.audit"),
                "needs the top-level `audit:` (where records go)",
            );
        }
        let u = &m.upstream;
        if let Some(ca) = &u.ca {
            let client = u
                .client_cert
                .as_ref()
                .zip(u.client_key.as_ref())
                .map(|(c, k)| (cfg.resolve(c), cfg.resolve(k)));
            if let Err(msg) = crate::tls::upstream_client_config(
                &cfg.resolve(ca),
                client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            ) {
                e.at(&format!("{p}.upstream"), msg);
            }
        }
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let p = format!("upstreams[{}]", known.upstream_pos[i]);
        if u.name.is_empty() || !unames.insert(u.name.as_str()) {
            e.at(
                &format!("{p}.name"),
                "upstream names must be unique and non-empty",
            );
        }
        match crate::proxy::UpstreamTarget::parse(&u.url) {
            Ok(t) => {
                if t.https && u.ca.is_none() {
                    e.at(&format!("{p}.ca"), "an https upstream needs `ca` (the CA bundle that signed the upstream's certificate)");
                }
                if !t.https && (u.ca.is_some() || u.client_cert.is_some()) {
                    e.at(
                        &format!("{p}.url"),
                        "`ca`/`client_cert` need an https:// url",
                    );
                }
            }
            Err(msg) => e.at(&format!("{p}.url"), msg),
        }
        if let Some(ca) = &u.ca {
            if let Err(msg) = crate::tls::check_ca_bundle(&cfg.resolve(ca)) {
                e.at(&format!("{p}.ca"), msg);
            }
        }
        match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => {
                if let Err(msg) = crate::tls::check_cert_pair(&cfg.resolve(c), &cfg.resolve(k)) {
                    e.at(&format!("{p}.client_cert"), msg);
                }
            }
            (None, None) => {}
            _ => e.at(
                &format!("{p}.client_cert"),
                "`client_cert` and `client_key` go together",
            ),
        }
        if let Some(hp) = &u.health.path {
            if !hp.starts_with('/') {
                e.at(&format!("{p}.health.path"), "must start with /");
            }
        }
        for (k, zero) in [
            ("connect_timeout", u.connect_timeout.0.is_zero()),
            ("response_timeout", u.response_timeout.0.is_zero()),
            ("send_timeout", u.send_timeout.0.is_zero()),
            ("health.interval", u.health.interval.0.is_zero()),
            (
                "max_concurrent_requests",
                u.max_concurrent_requests == Some(0),
            ),
            ("health.timeout", u.health.timeout.0.is_zero()),
        ] {
            if zero {
                e.at(&format!("{p}.{k}"), "must be greater than 0");
            }
        }
    }

    let mut rnames = HashSet::new();
    // (listener, host, prefix, methods, index) of every route seen so far.
    type RouteKey = (String, Option<String>, String, Vec<String>, usize);
    let mut keys: Vec<RouteKey> = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let p = format!("routes[{}]", known.route_pos[i]);
        if r.name.is_empty() || !rnames.insert(r.name.as_str()) {
            e.at(
                &format!("{p}.name"),
                "route names must be unique and non-empty",
            );
        }
        if !known.listeners.contains(&r.listener) {
            e.at(&format!("{p}.listener"), "no listener with this name");
        }
        if !known.upstreams.contains(&r.upstream) {
            e.at(&format!("{p}.upstream"), "no upstream with this name");
        }
        for (k, v) in [
            ("path_prefix", Some(&r.path_prefix)),
            ("rewrite_prefix", r.rewrite_prefix.as_ref()),
        ] {
            if let Some(v) = v {
                let ok = v.starts_with('/')
                    && (v == "/" || !v.ends_with('/'))
                    && crate::path::normalize(v).is_ok_and(|n| n == *v);
                if !ok {
                    e.at(&format!("{p}.{k}"), "must be a normalised path starting with / and without a trailing / (e.g. /fhir)");
                }
            }
        }
        if (r.public_url.is_some() || !r.upstream_aliases.is_empty()) && !r.fhir {
            e.at(
                &format!("{p}.public_url"),
                "public_url and upstream_aliases apply to `fhir: true` routes only",
            );
        }
        if let Some(u) = &r.public_url {
            if let Err(m) = crate::fhir::base_url::Base::parse(u) {
                e.at(&format!("{p}.public_url"), m);
            }
        }
        for (j, u) in r.upstream_aliases.iter().enumerate() {
            if let Err(m) = crate::fhir::base_url::Base::parse(u) {
                e.at(&format!("{p}.upstream_aliases[{j}]"), m);
            }
        }
        if let Some(h) = &r.host {
            if h.is_empty() || h.contains(['/', ':', ' ']) {
                e.at(&format!("{p}.host"), "expected a host name without port");
            }
        }
        let methods: Vec<String> = match &r.methods {
            Some(ms) => {
                if ms.is_empty() {
                    e.at(
                        &format!("{p}.methods"),
                        "list at least one method (or omit the key)",
                    );
                }
                for (j, m) in ms.iter().enumerate() {
                    if !KNOWN_METHODS.contains(&m.as_str()) {
                        e.at(
                            &format!("{p}.methods[{j}]"),
                            format!(
                                "unsupported method (expected one of: {})",
                                KNOWN_METHODS.join(", ")
                            ),
                        );
                    }
                }
                ms.clone()
            }
            None => DEFAULT_METHODS.iter().map(|s| s.to_string()).collect(),
        };
        for (j, pol) in r.policies.iter().enumerate() {
            if !known.policies.contains(pol) {
                e.at(
                    &format!("{p}.policies[{j}]"),
                    "no policy file with this name in the policies folder",
                );
            }
        }
        validate_route_policies(cfg, r, &p, e);
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        for (ol, oh, op, om, oi) in &keys {
            if *ol == r.listener
                && *oh == host
                && *op == r.path_prefix
                && om.iter().any(|m| methods.contains(m))
            {
                e.at(
                    &format!("{p}.path_prefix"),
                    format!("overlaps routes[{oi}] (same listener, host, prefix and method)"),
                );
            }
        }
        keys.push((r.listener.clone(), host, r.path_prefix.clone(), methods, i));
    }

    match cfg.admin.bind.parse::<SocketAddr>() {
        Ok(a) => {
            if a.port() != 0 && binds.iter().any(|(b, _)| *b == a) {
                e.at(
                    "admin.bind",
                    "the admin listener must not share an address with a public listener",
                );
            }
        }
        Err(_) => e.at("admin.bind", "expected ip:port, e.g. 127.0.0.1:9901"),
    }
    if cfg
        .log
        .level
        .parse::<tracing_subscriber::filter::EnvFilter>()
        .is_err()
    {
        e.at(
            "log.level",
            "invalid log filter (e.g. info, warn, ward=debug)",
        );
    }
}

#[cfg(test)]
mod tests;
