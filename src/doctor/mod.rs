//! `ward doctor`: checks a config (and, if asked, a running gateway) for settings that
//! leave patients' data exposed, and prints them ranked, each with where it is and the fix.
//!
//! `ward check` answers "will this config run?"; doctor answers "is what runs safe?". A
//! config that does not load is itself a critical finding (one per error, with file:line),
//! so a monitoring job gets one answer either way.
//!
//! Exit code = worst severity: 0 nothing or info only, 1 low or medium, 2 high,
//! 3 critical. (clap's own usage errors also exit 2; monitoring should call it with fixed
//! arguments.)
//!
//! What doctor can and cannot know, decided here once:
//! - *DLP in report mode since when*: the modification time of the policy file whose `dlp`
//!   section says `mode: report`. Editing that file restarts the clock.
//! - *Several replicas*: a config cannot say how many copies of it run. `--replicas N` (or
//!   the `WARD_REPLICAS` environment variable, e.g. set from the Kubernetes manifest) says
//!   it; without it a shared-state gap is only reported as `info`.
//! - *Audit headroom*: free space of the audit volume (statvfs) against a day of growth,
//!   measured from the current audit file (its size over the time between its first and
//!   last record, when they are at least 10 minutes apart), else `--audit-bytes-per-day`,
//!   else 1 GiB per day (about a million audited requests of ~1 KiB).
//! - *EHR reachable directly*: a TCP connect from where doctor runs. On the gateway host
//!   that is expected (Ward needs it); the point is whether *clients* can, so doctor prints
//!   the command to run from a client network, and `--from-client-network` makes doctor
//!   itself that test (then a connection is a critical bypass).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::yaml::{self, LineIndex};
use crate::config::{ClientAuthMode, Config, PolicyConfig};

/// Default for `--report-mode-days`.
pub const DEFAULT_REPORT_MODE_DAYS: u64 = 14;
/// Certificates ending within this many days are flagged.
pub const CERT_WARN_DAYS: i64 = 30;
/// A day of audit growth when nothing better is known (see the module header).
pub const DEFAULT_AUDIT_BYTES_PER_DAY: u64 = 1 << 30;
/// Shortest span of audit records a growth rate is measured over.
const MIN_AUDIT_SPAN_SECS: u64 = 600;
/// How long a probe (TCP connect, admin request) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `ward doctor`.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// A running gateway's admin listener (`host:port` or `http://host:port`) for the live
    /// checks: readiness, reload failures, audit and Redis errors.
    #[arg(long)]
    pub admin: Option<String>,
    /// Try to connect to every upstream (HTTP and MLLP) from this host.
    #[arg(long)]
    pub probe_upstream: bool,
    /// This host is on a client network, not the gateway: any upstream that answers is a
    /// way around Ward (critical). Implies --probe-upstream.
    #[arg(long)]
    pub from_client_network: bool,
    /// Days a DLP policy may stay in report mode before it is flagged high.
    #[arg(long, default_value_t = DEFAULT_REPORT_MODE_DAYS)]
    pub report_mode_days: u64,
    /// How many replicas run this config (default: $WARD_REPLICAS, else unknown).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Expected audit growth per day in bytes (default: measured, else 1 GiB).
    #[arg(long)]
    pub audit_bytes_per_day: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One thing found, with where and how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier (monitoring keys on it).
    pub id: &'static str,
    pub severity: Severity,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Key path in that file (`routes[2].policies`), when it applies to one.
    pub key: Option<String>,
    pub message: String,
    pub fix: String,
}

/// 0 none/info, 1 low/medium, 2 high, 3 critical.
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.severity).max() {
        None | Some(Severity::Info) => 0,
        Some(Severity::Low | Severity::Medium) => 1,
        Some(Severity::High) => 2,
        Some(Severity::Critical) => 3,
    }
}

/// Line numbers for one YAML file, read again only to locate findings.
struct Lines {
    file: String,
    idx: Option<LineIndex>,
}

impl Lines {
    fn read(path: &Path) -> Lines {
        let file = path.display().to_string();
        let idx = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| yaml::parse(&file, &t).ok())
            .map(|root| LineIndex::build(&root));
        Lines { file, idx }
    }
    fn line(&self, key: &str) -> Option<u32> {
        self.idx.as_ref().and_then(|i| i.line(key))
    }
}

/// Findings collected for one run.
struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn at(
        &mut self,
        id: &'static str,
        severity: Severity,
        lines: &Lines,
        key: &str,
        message: String,
        fix: String,
    ) {
        self.findings.push(Finding {
            id,
            severity,
            file: Some(lines.file.clone()),
            // An empty key is a section that is missing: no line to point at.
            line: if key.is_empty() {
                None
            } else {
                lines.line(key)
            },
            key: (!key.is_empty()).then(|| key.to_owned()),
            message,
            fix,
        });
    }
    fn nowhere(&mut self, id: &'static str, severity: Severity, message: String, fix: String) {
        self.findings.push(Finding {
            id,
            severity,
            file: None,
            line: None,
            key: None,
            message,
            fix,
        });
    }
}

/// Everything doctor knows about the environment, besides the config (tests set it).
pub struct Context {
    pub now: SystemTime,
    pub replicas: Option<u32>,
}

/// Run every check; findings come back ranked (worst first, then by file and line).
pub async fn diagnose(args: &DoctorArgs, ctx: &Context) -> Vec<Finding> {
    let mut out = Out {
        findings: Vec::new(),
    };
    match crate::config::load(&args.config) {
        Err(errs) => {
            for e in errs {
                out.findings.push(Finding {
                    id: "config_invalid",
                    severity: Severity::Critical,
                    file: Some(e.file.clone()),
                    line: e.line,
                    key: (!e.path.is_empty()).then(|| e.path.clone()),
                    message: format!("the config does not load: {}", e.message),
                    fix: "correct it (`ward check --config <file>` lists every error); a gateway never starts, or reloads into, a config with errors".into(),
                });
            }
        }
        Ok(cfg) => {
            let main = Lines::read(&args.config);
            let mut pol_lines: BTreeMap<String, Lines> = BTreeMap::new();
            for (name, p) in &cfg.policies {
                pol_lines.insert(name.clone(), Lines::read(Path::new(&p.file)));
            }
            let c = Checker {
                cfg: &cfg,
                main: &main,
                pols: &pol_lines,
                args,
                ctx,
            };
            c.routes(&mut out);
            c.listeners(&mut out);
            c.admin(&mut out);
            c.dlp(&mut out);
            c.certificates(&mut out);
            c.audit(&mut out);
            c.shared_state(&mut out);
            c.upstreams(&mut out).await;
        }
    }
    if let Some(admin) = &args.admin {
        live(admin, &mut out).await;
    }
    let mut f = out.findings;
    f.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.file.cmp(&b.file))
            .then_with(|| a.line.cmp(&b.line))
            .then_with(|| a.id.cmp(b.id))
    });
    f
}

/// `ward doctor`: print the findings, return the exit code.
pub async fn main(args: &DoctorArgs) -> u8 {
    let replicas = args.replicas.or_else(|| {
        std::env::var("WARD_REPLICAS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    let ctx = Context {
        now: SystemTime::now(),
        replicas,
    };
    let findings = diagnose(args, &ctx).await;
    let code = exit_code(&findings);
    match args.format {
        Format::Json => println!("{}", render_json(&args.config, &findings, code)),
        Format::Text => print!("{}", render_text(&findings, code)),
    }
    code
}

pub fn render_json(config: &Path, findings: &[Finding], code: u8) -> String {
    let worst = findings.iter().map(|f| f.severity).max();
    let mut counts = BTreeMap::new();
    for f in findings {
        *counts.entry(f.severity.label()).or_insert(0u32) += 1;
    }
    serde_json::json!({
        "config": config.display().to_string(),
        "worst": worst.map(Severity::label),
        "exit_code": code,
        "counts": counts,
        "findings": findings,
    })
    .to_string()
}

pub fn render_text(findings: &[Finding], code: u8) -> String {
    let mut s = String::new();
    for f in findings {
        let sev = f.severity.label().to_ascii_uppercase();
        let place = match (&f.file, f.line) {
            (Some(file), Some(l)) => format!(" {file}:{l}"),
            (Some(file), None) => format!(" {file}"),
            _ => String::new(),
        };
        let key = f
            .key
            .as_deref()
            .map(|k| format!(" ({k})"))
            .unwrap_or_default();
        let _ = writeln!(s, "{sev:<8} {}{place}{key}", f.id);
        let _ = writeln!(s, "         {}", f.message);
        let _ = writeln!(s, "    fix: {}", f.fix);
    }
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .map_or("none", Severity::label);
    let _ = writeln!(
        s,
        "{} finding(s); worst: {worst}; exit code {code}",
        findings.len()
    );
    s
}

struct Checker<'a> {
    cfg: &'a Config,
    main: &'a Lines,
    pols: &'a BTreeMap<String, Lines>,
    args: &'a DoctorArgs,
    ctx: &'a Context,
}

/// Whether any of a route's policies satisfies `pick`.
fn route_has(cfg: &Config, policies: &[String], pick: impl Fn(&PolicyConfig) -> bool) -> bool {
    policies
        .iter()
        .filter_map(|n| cfg.policies.get(n))
        .any(pick)
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl Checker<'_> {
    fn policy_lines(&self, name: &str) -> Option<&Lines> {
        self.pols.get(name)
    }

    /// Names of policies some route or MLLP listener uses (unused files change nothing).
    fn used_policies(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .cfg
            .routes
            .iter()
            .flat_map(|r| r.policies.iter().map(String::as_str))
            .chain(self.cfg.mllp.iter().filter_map(|m| m.dlp.as_deref()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn routes(&self, out: &mut Out) {
        let cfg = self.cfg;
        for (i, r) in cfg.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let auth = route_has(cfg, &r.policies, |p| p.auth.is_some());
            let mtls = route_has(cfg, &r.policies, |p| p.mtls.is_some());
            let authz = route_has(cfg, &r.policies, |p| p.fhir_authz.is_some());
            let audited = route_has(cfg, &r.policies, |p| p.audit.is_some());
            let required_certs = cfg
                .listeners
                .iter()
                .find(|l| l.name == r.listener)
                .and_then(|l| l.tls.as_ref())
                .is_some_and(|t| t.client_auth.mode == ClientAuthMode::Required);
            if !auth && !mtls {
                let (sev, what) = match (r.fhir, required_certs) {
                    (_, true) => (Severity::Medium, "any client certificate from the listener's CAs is accepted, with no check of who it belongs to"),
                    (true, false) => (Severity::Critical, "anyone who can reach the listener reads and writes the EHR's FHIR API through it"),
                    (false, false) => (Severity::High, "anyone who can reach the listener reaches the upstream through it"),
                };
                out.at(
                    "route_unauthenticated",
                    sev,
                    self.main,
                    &key,
                    format!("route `{}` ({} {}) has no `auth` and no `mtls` policy: {what}", r.name, r.listener, r.path_prefix),
                    "add a policy file with an `auth` section (tokens from your identity provider) or an `mtls` section (named client certificates) to the route's `policies:`".into(),
                );
            }
            if r.fhir && auth && !authz {
                out.at(
                    "no_compartment_guard",
                    Severity::High,
                    self.main,
                    &key,
                    format!("FHIR route `{}` checks tokens but has no `fhir_authz` policy: SMART scopes and the patient compartment are not enforced, so a patient app's token (patient/*.read, launch patient X) reads every patient's records", r.name),
                    "add a policy with a `fhir_authz` section to the route (it enforces scopes per resource type and interaction, and keeps patient-scoped tokens inside their patient's compartment)".into(),
                );
            }
            if cfg.audit.is_some() && !audited {
                out.at(
                    "route_not_audited",
                    Severity::Medium,
                    self.main,
                    &key,
                    format!("route `{}` has no `audit` policy: who read which record through it is not recorded", r.name),
                    "add a policy with an `audit: {}` section to the route's `policies:`".into(),
                );
            }
        }
    }

    fn listeners(&self, out: &mut Out) {
        for (i, l) in self.cfg.listeners.iter().enumerate() {
            if l.plaintext {
                out.at(
                    "listener_plaintext",
                    Severity::High,
                    self.main,
                    &format!("listeners[{i}].plaintext"),
                    format!("listener `{}` serves HTTP without TLS: tokens and patient data cross the network in clear", l.name),
                    "give the listener a `tls:` section with a certificate and remove `plaintext: true` (a TLS-terminating proxy in front must be on the same host, and listed in trusted_proxies)".into(),
                );
            }
        }
        for (i, m) in self.cfg.mllp.iter().enumerate() {
            let p = format!("mllp[{i}]");
            if m.plaintext {
                out.at(
                    "mllp_plaintext",
                    Severity::High,
                    self.main,
                    &format!("{p}.plaintext"),
                    format!("MLLP listener `{}` accepts HL7 v2 in clear: ADT and ORU messages carry names, identifiers and results", m.name),
                    "give it a `tls:` section (with `client_auth.mode: required` for the sending systems' certificates) and remove `plaintext: true`".into(),
                );
            } else if m
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth.mode != ClientAuthMode::Required)
            {
                out.at(
                    "mllp_unauthenticated",
                    Severity::High,
                    self.main,
                    &format!("{p}.tls.client_auth"),
                    format!("MLLP listener `{}` does not require client certificates: any host that reaches it can inject HL7 messages", m.name),
                    "set `tls.client_auth.mode: required` with the CA of the sending systems, and name them under `senders:`".into(),
                );
            }
            if m.senders.is_empty() {
                out.at(
                    "mllp_any_sender",
                    Severity::Medium,
                    self.main,
                    &p,
                    format!("MLLP listener `{}` has no `senders:` rules: any connected system may claim any sending application and facility (MSH-3/MSH-4)", m.name),
                    "list each sending system under `senders:` with its certificate subject and the MSH-3/MSH-4 values it may use".into(),
                );
            }
            if self.cfg.audit.is_some() && !m.audit {
                out.at(
                    "route_not_audited",
                    Severity::Medium,
                    self.main,
                    &p,
                    format!("MLLP listener `{}` does not write audit records", m.name),
                    "set `audit: true` on it".into(),
                );
            }
            if m.upstream.ca.is_none()
                && !host_of(&m.upstream.address).is_some_and(is_loopback_host)
            {
                out.at(
                    "upstream_plaintext",
                    Severity::Medium,
                    self.main,
                    &format!("{p}.upstream.address"),
                    format!("MLLP listener `{}` forwards to {} without TLS: messages cross the network in clear after Ward", m.name, m.upstream.address),
                    "set `upstream.ca` (and client_cert/client_key if the receiver asks) to speak TLS to it, or keep that hop on a dedicated, isolated network".into(),
                );
            }
        }
    }

    fn admin(&self, out: &mut Out) {
        if let Ok(a) = self.cfg.admin.bind.parse::<SocketAddr>() {
            if !a.ip().to_canonical().is_loopback() {
                out.at(
                    "admin_off_loopback",
                    Severity::High,
                    self.main,
                    "admin.bind",
                    format!("the admin listener binds {}: metrics and readiness answer anyone who reaches that address (no authentication), and the block API is then only one operator token away", a.ip()),
                    "bind it to 127.0.0.1:<port> (Prometheus scrapes through a sidecar or the node), or, if it must be reachable, allow only the monitoring hosts with a network policy".into(),
                );
            }
        }
    }

    fn dlp(&self, out: &mut Out) {
        for name in self.used_policies() {
            let Some(pc) = self.cfg.policies.get(name) else {
                continue;
            };
            let Some(d) = &pc.dlp else { continue };
            let Some(lines) = self.policy_lines(name) else {
                continue;
            };
            if d.mode == crate::dlp::Mode::Report {
                let since = std::fs::metadata(&pc.file).and_then(|m| m.modified()).ok();
                let days = since
                    .and_then(|t| self.ctx.now.duration_since(t).ok())
                    .map(|d| d.as_secs() / 86_400);
                let limit = self.args.report_mode_days;
                match days {
                    Some(n) if n > limit => out.at(
                        "dlp_report_mode",
                        Severity::High,
                        lines,
                        "dlp.mode",
                        format!("DLP policy `{name}` has been in report mode for {n} days (file unchanged since; limit {limit}): it only counts what it would redact or block, and every finding still leaves"),
                        "review its findings (ward_dlp_findings_total), then set `mode: enforce` (or remove the line: enforce is the default)".into(),
                    ),
                    n => out.at(
                        "dlp_report_mode",
                        Severity::Info,
                        lines,
                        "dlp.mode",
                        format!("DLP policy `{name}` is in report mode{}: nothing is redacted or blocked yet", n.map(|n| format!(" (for {n} days; flagged high after {limit})")).unwrap_or_default()),
                        "switch to `mode: enforce` once its findings (ward_dlp_findings_total) look right".into(),
                    ),
                }
            }
            if d.unscannable == crate::dlp::Unscannable::Pass && d.mode == crate::dlp::Mode::Enforce
            {
                out.at(
                    "dlp_unscannable_pass",
                    Severity::Medium,
                    lines,
                    "dlp.unscannable",
                    format!("DLP policy `{name}` passes bodies it cannot read (binary, unknown encoding) unscanned: a client that asks for such an encoding gets data past it"),
                    "set `unscannable: block` (the default) unless a route must serve binaries, and then keep that route separate".into(),
                );
            }
        }
    }

    fn certificates(&self, out: &mut Out) {
        let cfg = self.cfg;
        let mut check = |lines: &Lines, key: String, file: &str| {
            cert_file(out, lines, &key, &cfg.resolve(file), self.ctx.now);
        };
        for (i, l) in cfg.listeners.iter().enumerate() {
            if let Some(t) = &l.tls {
                let p = format!("listeners[{i}].tls");
                for (j, c) in t.certificates.iter().enumerate() {
                    check(self.main, format!("{p}.certificates[{j}].cert"), &c.cert);
                }
                for (j, ca) in t.client_auth.ca.iter().enumerate() {
                    check(self.main, format!("{p}.client_auth.ca[{j}]"), ca);
                }
            }
        }
        for (i, m) in cfg.mllp.iter().enumerate() {
            let p = format!("mllp[{i}]");
            if let Some(t) = &m.tls {
                for (j, c) in t.certificates.iter().enumerate() {
                    check(
                        self.main,
                        format!("{p}.tls.certificates[{j}].cert"),
                        &c.cert,
                    );
                }
                for (j, ca) in t.client_auth.ca.iter().enumerate() {
                    check(self.main, format!("{p}.tls.client_auth.ca[{j}]"), ca);
                }
            }
            if let Some(ca) = &m.upstream.ca {
                check(self.main, format!("{p}.upstream.ca"), ca);
            }
            if let Some(c) = &m.upstream.client_cert {
                check(self.main, format!("{p}.upstream.client_cert"), c);
            }
        }
        for (i, u) in cfg.upstreams.iter().enumerate() {
            if let Some(ca) = &u.ca {
                check(self.main, format!("upstreams[{i}].ca"), ca);
            }
            if let Some(c) = &u.client_cert {
                check(self.main, format!("upstreams[{i}].client_cert"), c);
            }
        }
        if let Some(s) = cfg.audit.as_ref().and_then(|a| a.syslog.as_ref()) {
            check(self.main, "audit.syslog.ca".into(), &s.ca);
            if let Some(c) = &s.client_cert {
                check(self.main, "audit.syslog.client_cert".into(), c);
            }
        }
        if let Some(r) = cfg.audit.as_ref().and_then(|a| a.repository.as_ref()) {
            if let Some(ca) = &r.ca {
                check(self.main, "audit.repository.ca".into(), ca);
            }
            if let Some(c) = &r.client_cert {
                check(self.main, "audit.repository.client_cert".into(), c);
            }
        }
        for name in self.used_policies() {
            let (Some(pc), Some(lines)) = (cfg.policies.get(name), self.policy_lines(name)) else {
                continue;
            };
            if let Some(a) = &pc.auth {
                for (j, p) in a.providers.iter().enumerate() {
                    if let Some(ca) = &p.jwks_ca {
                        check(lines, format!("auth.providers[{j}].jwks_ca"), ca);
                    }
                    if let Some(i) = &p.introspection {
                        check(
                            lines,
                            format!("auth.providers[{j}].introspection.ca"),
                            &i.ca,
                        );
                    }
                }
            }
            if let Some(r) = pc.rate_limit.as_ref().and_then(|r| r.redis.as_ref()) {
                if let Some(ca) = &r.ca {
                    check(lines, "rate_limit.redis.ca".into(), ca);
                }
                if let Some(c) = &r.client_cert {
                    check(lines, "rate_limit.redis.client_cert".into(), c);
                }
            }
        }
    }

    fn audit(&self, out: &mut Out) {
        let Some(a) = &self.cfg.audit else {
            out.at(
                "audit_disabled",
                Severity::High,
                self.main,
                "",
                "no top-level `audit:` section: no record is kept of who accessed which patient's data (HIPAA 164.312(b) asks for one), and a breach cannot be reconstructed".into(),
                "add `audit: {path: /var/lib/ward/audit.log, key_file: <32-byte secret>}` and an `audit: {}` policy on every route".into(),
            );
            return;
        };
        if a.key_file.is_none() {
            out.at(
                "audit_unkeyed",
                Severity::Low,
                self.main,
                "audit",
                "the audit chain is plain SHA-256: whoever can rewrite the file can also recompute every link, so edits go unnoticed".into(),
                "set `audit.key_file` to a secret of at least 32 bytes kept off the audit volume (HMAC-SHA256 links), and/or forward records with `audit.syslog`".into(),
            );
        }
        let path = self.cfg.resolve(&a.path);
        let Some(free) = free_bytes(&path) else {
            out.at(
                "audit_volume_unknown",
                Severity::Medium,
                self.main,
                "audit.path",
                format!("cannot read the free space of the volume holding {}", path.display()),
                "create the folder, owned by the user Ward runs as, on a volume sized for the retention you need".into(),
            );
            return;
        };
        let (per_day, how) = match self.args.audit_bytes_per_day {
            Some(n) => (n.max(1), "as given by --audit-bytes-per-day".to_owned()),
            None => match measured_growth(&path) {
                Some(n) => (n.max(1), "measured from the current audit file".to_owned()),
                None => (
                    DEFAULT_AUDIT_BYTES_PER_DAY,
                    "assumed (1 GiB/day; pass --audit-bytes-per-day)".to_owned(),
                ),
            },
        };
        let headroom_days = free as f64 / per_day as f64;
        if headroom_days < 1.0 {
            out.at(
                "audit_volume_low",
                Severity::High,
                self.main,
                "audit.path",
                format!("the audit volume has {free} bytes free, less than a day at {per_day} bytes/day ({how}); when it fills, audited requests are refused (fail closed) and the clinic stops"),
                "grow the volume, or move rotated audit files (<path>.<seq>) to archive storage after `ward audit verify`; lower `audit.max_bytes` so rotation happens sooner".into(),
            );
        }
    }

    fn shared_state(&self, out: &mut Out) {
        let mut gaps: Vec<(&Lines, String, String)> = Vec::new();
        for name in self.used_policies() {
            let (Some(pc), Some(lines)) = (self.cfg.policies.get(name), self.policy_lines(name))
            else {
                continue;
            };
            if let Some(rl) = &pc.rate_limit {
                match &rl.redis {
                    None => gaps.push((
                        lines,
                        "rate_limit".into(),
                        format!("rate-limit policy `{name}` counts in each replica's memory (backend local)"),
                    )),
                    Some(r) if r.failure_mode == crate::ratelimit::cluster::FailureMode::FailOpen => {
                        out.at(
                            "rate_limit_fail_open",
                            Severity::Low,
                            lines,
                            "rate_limit.redis",
                            format!("rate-limit policy `{name}` is fail_open: while Redis is down each replica limits alone, so the cluster allows replicas × the quota"),
                            "accept it knowingly (clinical traffic keeps flowing) or set `redis.failure_mode: fail_closed`; alert on ward_rate_limit_fallback_total".into(),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(r) = &self.cfg.respond {
            if r.redis.is_none() {
                gaps.push((
                    self.main,
                    "respond".into(),
                    "`respond:` keeps its signal counters and blocks in each replica's memory"
                        .into(),
                ));
            }
        }
        for (lines, key, what) in gaps {
            match self.ctx.replicas {
                Some(n) if n > 1 => out.at(
                    "redis_missing",
                    Severity::High,
                    lines,
                    &key,
                    format!("{what}, but {n} replicas run: an attacker spread over replicas gets {n} × the limit, and a block made on one replica does not stop the others"),
                    "add a `redis:` section (rate_limit: `backend: redis` + `redis.url: ${WARD_REDIS_URL}`; respond: `redis.url`) so every replica shares counts and blocks".into(),
                ),
                Some(_) => {}
                None => out.at(
                    "redis_missing",
                    Severity::Info,
                    lines,
                    &key,
                    format!("{what}; that is right for one replica only (replica count unknown)"),
                    "if several replicas run this config, add a `redis:` section; tell doctor with --replicas N or WARD_REPLICAS".into(),
                ),
            }
        }
    }

    async fn upstreams(&self, out: &mut Out) {
        let probe = self.args.probe_upstream || self.args.from_client_network;
        // (key, name, host:port, curl-able URL or None for MLLP)
        let mut targets: Vec<(String, String, String, Option<String>)> = Vec::new();
        for (i, u) in self.cfg.upstreams.iter().enumerate() {
            let Ok(t) = crate::proxy::UpstreamTarget::parse(&u.url) else {
                continue;
            };
            let host = t.authority.host().to_owned();
            let port = t
                .authority
                .port_u16()
                .unwrap_or(if t.https { 443 } else { 80 });
            if !t.https && !is_loopback_host(&host) {
                out.at(
                    "upstream_plaintext",
                    Severity::Medium,
                    self.main,
                    &format!("upstreams[{i}].url"),
                    format!("upstream `{}` is plain http:// to {host}: patient data and forwarded identities cross the network in clear after Ward", u.name),
                    "use https:// with `ca:` (and client_cert/client_key so the EHR can require Ward's certificate)".into(),
                );
            }
            // Where a FHIR client would ask: the path a FHIR route forwards to.
            let base = self
                .cfg
                .routes
                .iter()
                .find(|r| r.upstream == u.name && r.fhir)
                .map(|r| {
                    r.rewrite_prefix
                        .clone()
                        .unwrap_or_else(|| r.path_prefix.clone())
                })
                .map(|p| format!("{}/metadata", p.trim_end_matches('/')))
                .unwrap_or_else(|| "/".into());
            let url = format!("{}{}", u.url.trim_end_matches('/'), base);
            targets.push((
                format!("upstreams[{i}].url"),
                u.name.clone(),
                format!("{host}:{port}"),
                Some(url),
            ));
        }
        for (i, m) in self.cfg.mllp.iter().enumerate() {
            targets.push((
                format!("mllp[{i}].upstream.address"),
                format!("{} (MLLP)", m.name),
                m.upstream.address.clone(),
                None,
            ));
        }
        for (key, name, addr, url) in targets {
            let cmd = match &url {
                // -k: the question is whether the port answers, not whether it is trusted.
                Some(u) if u.starts_with("https:") => {
                    format!("curl -k -m 5 -sS -o /dev/null -w '%{{http_code}}\\n' {u}")
                }
                Some(u) => format!("curl -m 5 -sS -o /dev/null -w '%{{http_code}}\\n' {u}"),
                None => {
                    let (h, p) = addr.rsplit_once(':').unwrap_or((&addr, ""));
                    format!("nc -vz -w 5 {h} {p}")
                }
            };
            if !probe {
                out.at(
                    "upstream_bypass_untested",
                    Severity::Info,
                    self.main,
                    &key,
                    format!("whether clients can reach upstream `{name}` ({addr}) without Ward was not tested; run from a client network: {cmd} (it must fail to connect)"),
                    "run `ward doctor --probe-upstream --from-client-network` (or the command above) from a workstation or app network".into(),
                );
                continue;
            }
            match connect(&addr).await {
                Ok(()) if self.args.from_client_network => out.at(
                    "upstream_bypass",
                    Severity::Critical,
                    self.main,
                    &key,
                    format!("upstream `{name}` ({addr}) accepts connections from this client network: Ward can be bypassed, and every policy it enforces with it"),
                    "restrict the EHR with a firewall or network policy so only the gateway's addresses can reach it (see deploy/k8s/networkpolicy.yaml for the Kubernetes form)".into(),
                ),
                // On loopback only this host reaches it; elsewhere, reaching it from here
                // says nothing about who else can: a bypass is not ruled out.
                Ok(()) => out.at(
                    "upstream_reachable",
                    if host_of(&addr).is_some_and(is_loopback_host) {
                        Severity::Info
                    } else {
                        Severity::Low
                    },
                    self.main,
                    &key,
                    format!("upstream `{name}` ({addr}) accepts connections from this host. Ward needs that; clients must not have it. From a client network, `{cmd}` must fail to connect"),
                    "allow the EHR's port only from the gateway's addresses (firewall / network policy), then confirm with `ward doctor --probe-upstream --from-client-network` on a client host".into(),
                ),
                Err(e) if self.args.from_client_network => out.at(
                    "upstream_not_reachable",
                    Severity::Info,
                    self.main,
                    &key,
                    format!("upstream `{name}` ({addr}) is not reachable from this client network ({e}): good"),
                    "nothing to do; repeat after network changes".into(),
                ),
                Err(e) => out.at(
                    "upstream_unreachable",
                    Severity::High,
                    self.main,
                    &key,
                    format!("upstream `{name}` ({addr}) cannot be reached from this host ({e}): if Ward runs here, every request to it fails"),
                    "check the address and port, DNS, and that the firewall allows this gateway host to reach it".into(),
                ),
            }
        }
    }
}

/// `host` of a `host:port` (IPv6 in brackets kept whole).
fn host_of(addr: &str) -> Option<&str> {
    addr.rsplit_once(':').map(|(h, _)| h)
}

async fn connect(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.kind().to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Check every certificate in a PEM file.
fn cert_file(out: &mut Out, lines: &Lines, key: &str, path: &Path, now: SystemTime) {
    let certs = match crate::tls::load_certs(path) {
        Ok(c) => c,
        // A file that does not load already failed `config::load`; a bundle without
        // certificates is not doctor's to judge.
        Err(_) => return,
    };
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let parsed: Vec<_> = certs
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, c)| c)
        .collect();
    // A CA bundle (several trust anchors) with a valid certificate still works: its stale
    // entries are housekeeping, not an outage. A certificate a listener presents, or the
    // only anchor of a bundle, is what handshakes depend on.
    let is_bundle = key.ends_with(".ca") || key.contains(".ca[") || key.ends_with("jwks_ca");
    let valid = parsed
        .iter()
        .filter(|c| {
            let v = c.validity();
            v.not_before.timestamp() <= now && now < v.not_after.timestamp()
        })
        .count();
    for cert in &parsed {
        let subject = cert.subject().to_string();
        let v = cert.validity();
        let end = v.not_after.timestamp();
        let start = v.not_before.timestamp();
        let days = (end - now).div_euclid(86_400);
        let file = path.display();
        let this_valid = start <= now && now < end;
        let stale = is_bundle && valid > usize::from(this_valid);
        let sev = |s: Severity| if stale { Severity::Low } else { s };
        let note = if stale {
            "; other certificates in this bundle are valid, so only peers that still chain to this one are affected"
        } else {
            ""
        };
        if end <= now {
            out.at(
                "cert_expired",
                sev(Severity::Critical),
                lines,
                key,
                format!("certificate `{subject}` in {file} expired {} days ago ({}): handshakes with it fail{note}", -days, v.not_after),
                "issue a new certificate and replace the file; Ward re-reads listener certificates on SIGHUP or when the file changes".into(),
            );
        } else if days < CERT_WARN_DAYS {
            out.at(
                "cert_expiring",
                sev(Severity::High),
                lines,
                key,
                format!("certificate `{subject}` in {file} expires in {days} days ({}){note}", v.not_after),
                "renew it now (automate renewal, e.g. cert-manager or an ACME client); Ward re-reads listener certificates on SIGHUP or when the file changes".into(),
            );
        }
        if start > now {
            out.at(
                "cert_not_yet_valid",
                sev(Severity::High),
                lines,
                key,
                format!("certificate `{subject}` in {file} is not valid before {}{note}", v.not_before),
                "check the issuing system's clock and this host's clock (NTP), or wait for its start date before deploying it".into(),
            );
        }
    }
}

/// Bytes available to Ward on the volume holding `path` (or its nearest existing folder).
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    let mut dir = path.parent()?;
    while !dir.exists() {
        dir = dir.parent()?;
    }
    // rustix's safe statvfs: `f_bavail` counts blocks available to unprivileged users.
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Bytes per day the current audit file grew, from its size and the `time` of its first and
/// last records; `None` if they are less than [`MIN_AUDIT_SPAN_SECS`] apart.
fn measured_growth(path: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = vec![0u8; 64 * 1024];
    let n = f.read(&mut head).ok()?;
    head.truncate(n);
    let first = head.split(|b| *b == b'\n').next()?;
    let tail_len = size.min(64 * 1024);
    f.seek(SeekFrom::Start(size - tail_len)).ok()?;
    let mut tail = Vec::new();
    f.take(tail_len).read_to_end(&mut tail).ok()?;
    let last = tail.split(|b| *b == b'\n').rev().find(|l| !l.is_empty())?;
    let t = |line: &[u8]| -> Option<i64> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        parse_rfc3339(v.get("time")?.as_str()?)
    };
    let span = u64::try_from(t(last)? - t(first)?).ok()?;
    if span < MIN_AUDIT_SPAN_SECS {
        return None;
    }
    Some(size.saturating_mul(86_400) / span)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → Unix seconds (the audit records' own format).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = crate::calendar::days_from_civil(i64::from(y), mo, d);
    Some(days * 86_400 + i64::from(h * 3600 + mi * 60 + se))
}

// ---- live checks ------------------------------------------------------------------

/// The running gateway, through its admin listener.
async fn live(admin: &str, out: &mut Out) {
    let addr = admin
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    if addr.starts_with("https://") || addr.contains('/') {
        out.nowhere(
            "admin_unreachable",
            Severity::High,
            format!("--admin {admin}: expected host:port or http://host:port (the admin listener speaks plain HTTP)"),
            "pass the admin listener's address, e.g. --admin 127.0.0.1:9901".into(),
        );
        return;
    }
    let ready = admin_get(&addr, "/readyz").await;
    let metrics = admin_get(&addr, "/metrics").await;
    let (ready, metrics) = match (ready, metrics) {
        (Ok(r), Ok(m)) => (r, m),
        (Err(e), _) | (_, Err(e)) => {
            out.nowhere(
                "admin_unreachable",
                Severity::High,
                format!("cannot query the admin listener at {addr}: {e}"),
                "check that Ward runs and that `admin.bind` matches --admin; without it there is no readiness or metrics for monitoring either".into(),
            );
            return;
        }
    };
    if ready.0 != 200 {
        let down: Vec<String> = serde_json::from_str::<serde_json::Value>(&ready.1)
            .ok()
            .and_then(|v| v.get("upstreams").and_then(|u| u.as_object()).cloned())
            .map(|m| {
                m.iter()
                    .filter(|(_, h)| h.as_str() != Some("up"))
                    .map(|(n, h)| format!("{n}: {}", h.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        out.nowhere(
            "not_ready",
            Severity::High,
            format!("/readyz answers {} (upstreams not up: {})", ready.0, if down.is_empty() { "none listed".to_owned() } else { down.join(", ") }),
            "check the upstreams' health paths and that the gateway can reach them; a draining gateway is shutting down".into(),
        );
    }
    let m = &metrics.1;
    for &(metric, label, value, id, sev, text) in LIVE_CHECKS {
        let n = metric_sum(m, metric, label, value);
        if n > 0.0 {
            let (what, fix) = text.split_once('|').unwrap_or((text, ""));
            out.nowhere(id, sev, format!("{metric}: {n} — {what}"), fix.to_owned());
        }
    }
}

/// Counters read from `/metrics`: (family, label, value, finding id, severity,
/// "what|fix"). A unit test holds the names to `metrics.rs`.
#[rustfmt::skip]
const LIVE_CHECKS: &[(&str, &str, &str, &str, Severity, &str)] = &[
        ("ward_config_reloads_total", "result", "error", "reload_failures", Severity::High,
         "config reload(s) were refused since start: the gateway still serves an older config than the file on disk|run `ward check --config <file>`, fix what it lists; the next save (or SIGHUP) reloads"),
        ("ward_tls_reloads_total", "result", "error", "tls_reload_failures", Severity::High,
         "TLS reload(s) (certificates, client CAs, CRLs) failed: a listener still serves its previous certificate or CRL|check the files (`ward check`), their permissions, and that key and certificate match; then SIGHUP"),
        ("ward_audit_write_errors_total", "", "", "audit_write_errors", Severity::High,
         "audit file write/sync/rotation error(s): records may be missing and audited requests were refused|check the audit volume (space, permissions, I/O errors) and run `ward audit verify`"),
        ("ward_audit_records_total", "result", "refused", "audit_refused", Severity::High,
         "requests were refused because the audit trail could not take their record|check the audit volume and `audit.queue`; see ward_audit_backlog"),
        ("ward_rate_limit_fallback_total", "", "", "redis_fallback", Severity::Medium,
         "rate-limit checks were decided locally because Redis did not answer|check Redis (reachability, latency vs `redis.timeout`)"),
        ("ward_respond_redis_fallback_total", "", "", "redis_fallback", Severity::Medium,
         "detect-and-respond calls to Redis failed: replicas decided alone and blocks may not have spread|check Redis reachability from every replica"),
];

/// Sum of the samples of `name` whose labels include `label="value"` (any, if `label` is
/// empty), from Prometheus text.
pub fn metric_sum(text: &str, name: &str, label: &str, value: &str) -> f64 {
    let want = format!("{label}=\"{value}\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, v) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, v) = r.split_once('}')?;
                    (labels, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if !label.is_empty() && !labels.split(',').any(|kv| kv == want) {
                return None;
            }
            v.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `GET path` on the admin listener: (status, body).
async fn admin_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.kind().to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.kind().to_string())?;
        let mut buf = Vec::new();
        // Bounded: a misdirected --admin must not make doctor read forever.
        (&mut s)
            .take(16 * 1024 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.kind().to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("not an HTTP answer")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok::<_, String>((status, body.to_owned()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[cfg(test)]
mod tests;
