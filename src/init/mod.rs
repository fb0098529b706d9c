//! `ward init`: a first configuration that is safe by default, generated from what the EHR
//! and the identity provider say about themselves.
//!
//! Gateways that are hard to configure get configured open; this writes the closed one.
//! The questions are asked on stdin/stdout one line each (so a pipe can answer them, and
//! a test can), or all given as flags with `--non-interactive`. Both end in the same
//! [`render::Plan`], so both write the same files. Nothing existing is overwritten without
//! `--force`, and the result goes through the same loader as `ward check` before `ward
//! init` reports success.
//!
//! - `facts.rs`: reading the CapabilityStatement and discovery documents (untrusted input);
//! - `fetch.rs`: one bounded GET over the gateway's own hyper/rustls client stack;
//! - `render.rs`: the files' text, commented.

pub mod facts;
pub mod fetch;
pub mod render;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use render::{ClientKind, Issuer, Plan};

/// `ward init` flags. Anything not given is asked for, unless `--non-interactive`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InitArgs {
    /// The EHR's FHIR base URL, e.g. https://ehr.internal/fhir (its CapabilityStatement is
    /// read from <URL>/metadata).
    #[arg(long)]
    pub upstream: Option<String>,
    /// CA bundle (PEM) that signed the EHR's certificate (https EHRs).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Read the CapabilityStatement from this file instead of fetching it (offline).
    #[arg(long)]
    pub capability_statement: Option<PathBuf>,
    /// The identity provider's issuer URL; its SMART / OpenID discovery document is read.
    #[arg(long)]
    pub idp: Option<String>,
    /// CA bundle (PEM) that signed the identity provider's certificate.
    #[arg(long)]
    pub idp_ca: Option<PathBuf>,
    /// Read the discovery document from this file instead of fetching it (offline).
    #[arg(long)]
    pub discovery: Option<PathBuf>,
    /// The `aud` tokens must carry (default: the EHR's FHIR base URL, as SMART apps send).
    #[arg(long)]
    pub audience: Option<String>,
    /// Who will connect: clinician, patient, backend, research, hl7v2 (comma-separated).
    #[arg(long)]
    pub clients: Option<String>,
    /// Make self-signed development certificates (and, without --idp, a development token
    /// issuer).
    #[arg(long)]
    pub dev_certs: bool,
    /// The gateway's host name (its certificate's name).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The public listener's address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub bind: String,
    /// The admin listener's address (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_bind: String,
    /// The HL7 v2 (MLLP) listener's address.
    #[arg(long, default_value = "0.0.0.0:2575")]
    pub mllp_bind: String,
    /// The interface engine's MLLP address (host:port) that HL7 v2 messages go to.
    #[arg(long)]
    pub hl7_upstream: Option<String>,
    /// Certificate CN of the system sending HL7 v2 messages.
    #[arg(long)]
    pub hl7_sender: Option<String>,
    /// The sending facility (MSH-4) that system may claim.
    #[arg(long)]
    pub hl7_facility: Option<String>,
    /// Certificate CN a backend system may use (repeatable; default: any from the client CA).
    #[arg(long = "backend-subject")]
    pub backend_subjects: Vec<String>,
    /// Where to write (default: the current folder).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Never ask: everything comes from flags and defaults.
    #[arg(long)]
    pub non_interactive: bool,
}

/// Asks one question per line; flags already given are never asked.
struct Prompter<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    interactive: bool,
}

impl Prompter<'_> {
    /// The answer, or `default` for an empty line. End of input is an error rather than a
    /// silent default: a script that answers too few questions should learn so.
    fn ask(&mut self, question: &str, default: &str) -> Result<String, String> {
        if !self.interactive {
            return Ok(default.to_owned());
        }
        if default.is_empty() {
            let _ = write!(self.out, "{question}: ");
        } else {
            let _ = write!(self.out, "{question} [{default}]: ");
        }
        let _ = self.out.flush();
        let mut line = String::new();
        let n = self
            .input
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the answer: {}", e.kind()))?;
        if n == 0 {
            return Err(format!("no answer to \"{question}\" (end of input)"));
        }
        let a = line.trim();
        Ok(if a.is_empty() { default } else { a }.to_owned())
    }

    fn ask_yes(&mut self, question: &str) -> Result<bool, String> {
        let a = self.ask(&format!("{question} (y/N)"), "n")?;
        Ok(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
    }
}

fn say(out: &mut dyn Write, s: &str) {
    let _ = writeln!(out, "{s}");
}

/// A path the config may name: absolute (valid wherever the config is loaded from), UTF-8,
/// without `$` (the loader expands `${VAR}`), and a readable CA bundle.
fn ca_path(what: &str, p: &Path) -> Result<String, String> {
    let abs = std::path::absolute(p).map_err(|e| format!("{what}: {}", e.kind()))?;
    let s = abs
        .to_str()
        .ok_or_else(|| format!("{what}: the path is not UTF-8"))?;
    if s.contains('$') || s.chars().any(char::is_control) {
        return Err(format!(
            "{what}: the path may not contain `$` or control characters"
        ));
    }
    crate::tls::check_ca_bundle(&abs).map_err(|e| format!("{what}: {e}"))?;
    Ok(s.to_owned())
}

/// A short operator-given value written into the config (host:port, CN, facility).
fn plain(what: &str, s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '[' | ']' | '^' | ' ')
        })
        && s.trim() == s;
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{what}: use letters, digits and - _ . : ^ only (got {} characters)",
            s.chars().count()
        ))
    }
}

/// Split the EHR's base URL into the upstream origin and the base path.
fn split_base(url: &str) -> Result<(String, String, String, bool), String> {
    let url = url.trim().trim_end_matches('/');
    if !facts::is_safe_text(url) || url.contains('?') {
        return Err("--upstream: not a plain URL (no query, quotes, spaces, `$` or `#`)".into());
    }
    let u: http::Uri = url
        .parse()
        .map_err(|_| "--upstream: not a valid URL".to_owned())?;
    let https = match u.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("--upstream: must be an http:// or https:// URL".into()),
    };
    let auth = u
        .authority()
        .filter(|a| !a.as_str().contains('@'))
        .ok_or("--upstream: the URL needs a host (and no user:password)")?;
    let origin = format!("{}://{}", if https { "https" } else { "http" }, auth);
    let path = u.path().trim_end_matches('/').to_owned();
    Ok((url.to_owned(), origin, path, https))
}

/// Everything `ward init` writes besides the rendered texts.
fn extra_files(plan: &Plan) -> Vec<String> {
    let mut v = vec!["secrets/audit.key".to_owned()];
    if plan.dev_certs {
        v.extend(crate::demo::PKI_FILES.iter().map(|f| format!("certs/{f}")));
    }
    if matches!(plan.issuer, Some(Issuer::Dev)) {
        v.push(format!("certs/{}", crate::demo::TOKEN_KEY));
        v.push(format!("certs/{}", crate::demo::TOKEN_PUB));
    }
    v
}

/// The `ward init` command: 0 written and valid; 1 refused or failed; 2 written, but
/// `ward check` finds problems to fix (e.g. certificates still to be put in place).
pub fn main(rt: &tokio::runtime::Runtime, args: InitArgs) -> std::process::ExitCode {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    match run(rt, &args, &mut input, &mut out) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("ward init: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ask, fetch, render, write, check. `Ok(false)`: written, but the config does not load yet.
pub fn run(
    rt: &tokio::runtime::Runtime,
    args: &InitArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<bool, String> {
    let mut p = Prompter {
        input,
        out,
        interactive: !args.non_interactive,
    };
    // 1. The EHR.
    let upstream = match &args.upstream {
        Some(u) => u.clone(),
        None if args.non_interactive => {
            return Err("--upstream URL is required (the EHR's FHIR base URL)".into())
        }
        None => p.ask(
            "The EHR's FHIR base URL (e.g. https://ehr.internal/fhir)",
            "",
        )?,
    };
    let (base_url, origin, base_path, https) = split_base(&upstream)?;
    let upstream_ca = match (&args.upstream_ca, https) {
        (Some(c), true) => Some(c.clone()),
        (Some(_), false) => return Err("--upstream-ca needs an https:// EHR URL".into()),
        (None, true) if args.non_interactive => {
            return Err("--upstream-ca FILE is required for an https EHR: the CA bundle that signed its certificate (Ward trusts no other)".into())
        }
        (None, true) => Some(PathBuf::from(p.ask(
            "CA bundle (PEM) that signed the EHR's certificate",
            "",
        )?)),
        (None, false) => None,
    };
    let upstream_ca_text = upstream_ca
        .as_deref()
        .map(|c| ca_path("--upstream-ca", c))
        .transpose()?;
    let doc = match &args.capability_statement {
        Some(f) => {
            let text = std::fs::read(f)
                .map_err(|e| format!("--capability-statement {}: {}", f.display(), e.kind()))?;
            serde_json::from_slice(&text)
                .map_err(|_| format!("--capability-statement {}: not JSON", f.display()))?
        }
        None => rt.block_on(fetch::get_json(
            &format!("{base_url}/metadata"),
            upstream_ca.as_deref(),
        ))?,
    };
    let ehr = facts::capabilities(&doc)?;
    say(
        p.out,
        &format!(
            "EHR: FHIR {}, {} resource type(s) with interactions",
            ehr.fhir_version.as_deref().unwrap_or("(R4 assumed)"),
            ehr.types
                .values()
                .filter(|c| !c.interactions.is_empty())
                .count()
        ),
    );
    for n in &ehr.notes {
        say(p.out, &format!("  note: {n}"));
    }

    // 2. Who connects.
    let clients = match &args.clients {
        Some(c) => render::parse_kinds(c)?,
        None => render::parse_kinds(&p.ask(
            "Which clients will connect? (clinician, patient, backend, research, hl7v2)",
            "clinician,patient",
        )?)?,
    };
    let dev_certs = args.dev_certs
        || p.ask_yes("Make self-signed development certificates (not for production)?")?;
    if dev_certs && !cfg!(feature = "demo") {
        return Err("this ward was built without the `demo` feature: development certificates (--dev-certs) are not available; give your own certificates".into());
    }
    let needs_token = clients.iter().any(|k| *k != ClientKind::Hl7v2);

    // 3. The identity provider.
    let mut issuer = None;
    let mut audience_default = base_url.clone();
    if needs_token {
        let idp = match (&args.idp, &args.discovery) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(p.ask(
                "Identity provider issuer URL (empty: a development issuer, with --dev-certs)",
                "",
            )?)
            .filter(|s| !s.is_empty()),
        };
        if idp.is_none() && args.discovery.is_none() {
            if !dev_certs {
                return Err("the routes need tokens: give --idp ISSUER (or --discovery FILE) for your identity provider, or --dev-certs for a development issuer".into());
            }
            audience_default = crate::demo::DEMO_AUDIENCE.to_owned();
            issuer = Some(Issuer::Dev);
        } else {
            let idp_issuer = idp
                .map(|i| facts::check_https_url("--idp", i.trim_end_matches('/')))
                .transpose()?;
            let idp_ca = match &args.idp_ca {
                Some(c) => c.clone(),
                None if args.non_interactive => return Err("--idp-ca FILE is required: the CA bundle that signed the identity provider's certificate (the gateway fetches its keys over https)".into()),
                None => PathBuf::from(p.ask("CA bundle (PEM) that signed the identity provider's certificate", "")?),
            };
            let ca_text = ca_path("--idp-ca", &idp_ca)?;
            let docs = match (&args.discovery, &idp_issuer) {
                (Some(f), _) => {
                    let text = std::fs::read(f)
                        .map_err(|e| format!("--discovery {}: {}", f.display(), e.kind()))?;
                    vec![serde_json::from_slice(&text)
                        .map_err(|_| format!("--discovery {}: not JSON", f.display()))?]
                }
                (None, Some(i)) => {
                    let mut docs = Vec::new();
                    let mut why = Vec::new();
                    for wk in ["smart-configuration", "openid-configuration"] {
                        match rt.block_on(fetch::get_json(
                            &format!("{i}/.well-known/{wk}"),
                            Some(&idp_ca),
                        )) {
                            Ok(d) => docs.push(d),
                            Err(e) => why.push(e),
                        }
                    }
                    if docs.is_empty() {
                        return Err(format!("no discovery document: {}", why.join("; ")));
                    }
                    docs
                }
                (None, None) => return Err("give --idp ISSUER or --discovery FILE".into()),
            };
            let idp = facts::discovery(&docs, idp_issuer.as_deref())?;
            say(
                p.out,
                &format!(
                    "IdP: {} (algorithms {})",
                    idp.issuer,
                    idp.algorithms.join(", ")
                ),
            );
            for n in &idp.notes {
                say(p.out, &format!("  note: {n}"));
            }
            issuer = Some(Issuer::Remote { idp, ca: ca_text });
        }
    }
    let audience = match &args.audience {
        Some(a) => a.clone(),
        None if needs_token => p.ask("Token audience (`aud`)", &audience_default)?,
        None => audience_default,
    };
    if !facts::is_safe_text(&audience) {
        return Err("--audience: use a URL or a plain name".into());
    }

    // 4. HL7 v2.
    let hl7 = clients.contains(&ClientKind::Hl7v2);
    let default_sender = if dev_certs {
        "demo-client"
    } else {
        "interface-engine"
    };
    let mut hl7_answer = |flag: &Option<String>, q: &str, d: &str| match flag {
        Some(v) => Ok(v.clone()),
        None if hl7 => p.ask(q, d),
        None => Ok(d.to_owned()),
    };
    let hl7_upstream = plain(
        "--hl7-upstream",
        &hl7_answer(
            &args.hl7_upstream,
            "The interface engine's MLLP address (host:port)",
            "interface-engine.internal:2575",
        )?,
    )?;
    let hl7_sender = plain(
        "--hl7-sender",
        &hl7_answer(
            &args.hl7_sender,
            "Certificate CN of the HL7 v2 sending system",
            default_sender,
        )?,
    )?;
    let hl7_facility = plain(
        "--hl7-facility",
        &hl7_answer(
            &args.hl7_facility,
            "Sending facility (MSH-4) it may claim",
            "MAIN-HOSP",
        )?,
    )?;
    let mut backend_subjects = args
        .backend_subjects
        .iter()
        .map(|s| plain("--backend-subject", s))
        .collect::<Result<Vec<_>, _>>()?;
    if backend_subjects.is_empty() && dev_certs && clients.contains(&ClientKind::Backend) {
        // The development client certificate's CN.
        backend_subjects.push("demo-client".into());
    }

    let plan = Plan {
        base_url,
        origin,
        base_path,
        upstream_ca: upstream_ca_text,
        ehr,
        issuer,
        audience,
        clients,
        dev_certs,
        server_name: plain("--server-name", &args.server_name)?,
        bind: plain("--bind", &args.bind)?,
        admin_bind: plain("--admin-bind", &args.admin_bind)?,
        mllp_bind: plain("--mllp-bind", &args.mllp_bind)?,
        hl7_upstream,
        hl7_sender,
        hl7_facility,
        backend_subjects,
    };
    let out = p.out;
    write_all(&args.dir, &plan, args.force, out)?;
    Ok(check(&args.dir, &plan, out))
}

/// Refuse to overwrite (listing every file), then write everything.
fn write_all(dir: &Path, plan: &Plan, force: bool, out: &mut dyn Write) -> Result<(), String> {
    let files = plan.files();
    let extra = extra_files(plan);
    let all: Vec<&str> = files
        .iter()
        .map(|(p, _)| p.as_str())
        .chain(extra.iter().map(String::as_str))
        .collect();
    let existing: Vec<&str> = all
        .iter()
        .copied()
        .filter(|f| dir.join(f).symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() && !force {
        return Err(format!(
            "refusing to overwrite existing files in {} (use --force to replace them): {}",
            dir.display(),
            existing.join(", ")
        ));
    }
    let io = |what: &str, e: std::io::Error| format!("cannot write {what}: {e}");
    for sub in ["policies", "secrets", "audit"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(sub, e))?;
    }
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).map_err(|e| io(name, e))?;
    }
    // 32 random bytes, hex: the audit trail's HMAC key (readable by Ward only).
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "no randomness for the audit key".to_owned())?;
    let hex = hex::encode(key);
    let key_path = dir.join("secrets/audit.key");
    std::fs::write(&key_path, format!("{hex}\n")).map_err(|e| io("secrets/audit.key", e))?;
    restrict(&key_path).map_err(|e| io("secrets/audit.key", e))?;
    #[cfg(feature = "demo")]
    if plan.dev_certs {
        crate::demo::Pki::generate(&[plan.server_name.as_str()])
            .map_err(|e| format!("cannot make development certificates: {e}"))?
            .write(&dir.join("certs"))
            .map_err(|e| io("certs/", e))?;
    }
    #[cfg(feature = "demo")]
    if matches!(plan.issuer, Some(Issuer::Dev)) {
        crate::demo::write_token_keys(&dir.join("certs")).map_err(|e| io("certs/", e))?;
    }
    say(out, &format!("wrote in {}:", dir.display()));
    for f in &all {
        say(out, &format!("  {f}"));
    }
    Ok(())
}

#[cfg(unix)]
fn restrict(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// What `ward check` does, on the result; prints the outcome and the next steps.
fn check(dir: &Path, plan: &Plan, out: &mut dyn Write) -> bool {
    let cfg_path = dir.join("ward.yaml");
    match crate::config::load(&cfg_path) {
        Ok(cfg) => {
            for w in crate::config::warnings(&cfg_path, &cfg) {
                say(out, &format!("warning: {w}"));
            }
            say(
                out,
                &format!(
                    "ward check: ok ({} routes, {} policies)",
                    cfg.routes.len(),
                    cfg.policies.len()
                ),
            );
            say(out, "next: ward run --config ward.yaml");
            if matches!(plan.issuer, Some(Issuer::Dev)) {
                say(out, "a development token: ward token --key certs/token-signing.key --sub dr-example --scope 'user/*.read'");
            }
            true
        }
        Err(errs) => {
            say(out, "ward check found problems to fix before `ward run`:");
            for e in &errs {
                say(out, &format!("  {e}"));
            }
            if !plan.dev_certs {
                say(out, "(certificates go in certs/; or rerun with --dev-certs --force for development ones)");
            }
            false
        }
    }
}
