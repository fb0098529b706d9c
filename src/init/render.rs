//! The text of what `ward init` writes: `ward.yaml` and `policies/*.yaml`, every setting
//! with a comment saying why it is there.
//!
//! Pure: a [`Plan`] in, `(relative path, text)` pairs out, so the flag form and the
//! interactive form (which both end in a `Plan`) write byte-identical files. Values that
//! came from outside (EHR, IdP) were already narrowed by `facts.rs`; operator-given paths
//! are written as quoted scalars and may not contain `$` (the loader expands `${VAR}`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::facts::{Ehr, Idp};

/// Who connects; each kind gets one route (or, for HL7 v2, one MLLP listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientKind {
    Clinician,
    Patient,
    Backend,
    Research,
    Hl7v2,
}

impl ClientKind {
    pub const ALL: [ClientKind; 5] = [
        ClientKind::Clinician,
        ClientKind::Patient,
        ClientKind::Backend,
        ClientKind::Research,
        ClientKind::Hl7v2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Clinician => "clinician",
            ClientKind::Patient => "patient",
            ClientKind::Backend => "backend",
            ClientKind::Research => "research",
            ClientKind::Hl7v2 => "hl7v2",
        }
    }

    pub fn parse(s: &str) -> Option<ClientKind> {
        ClientKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The public path prefix of the kind's route.
    pub fn prefix(self) -> &'static str {
        match self {
            ClientKind::Clinician => "/clinician/fhir",
            ClientKind::Patient => "/patient/fhir",
            ClientKind::Backend => "/backend/fhir",
            ClientKind::Research => "/research/fhir",
            ClientKind::Hl7v2 => "",
        }
    }

    /// Kinds that may change data at the EHR (the others only read).
    fn writes(self) -> bool {
        matches!(self, ClientKind::Clinician | ClientKind::Backend)
    }
}

/// Parse `clinician,patient,…` (sorted, without duplicates).
pub fn parse_kinds(s: &str) -> Result<Vec<ClientKind>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        out.insert(ClientKind::parse(part).ok_or_else(|| {
            format!(
                "unknown client kind `{}` (expected some of: clinician, patient, backend, research, hl7v2)",
                part.trim().chars().take(32).collect::<String>()
            )
        })?);
    }
    if out.is_empty() {
        return Err("name at least one kind of client".into());
    }
    Ok(out.into_iter().collect())
}

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum Issuer {
    /// The hospital's IdP, with the CA bundle (written path) of its TLS certificate.
    Remote { idp: Idp, ca: String },
    /// A development issuer whose key `ward init --dev-certs` made (`ward token` signs).
    Dev,
}

/// Everything the files are made from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The EHR's FHIR base URL, as given (no trailing `/`).
    pub base_url: String,
    /// `scheme://host[:port]` of the EHR.
    pub origin: String,
    /// The base URL's path (`/fhir`, or empty).
    pub base_path: String,
    /// Written path of the EHR's CA bundle (https EHRs).
    pub upstream_ca: Option<String>,
    pub ehr: Ehr,
    /// `None` when no client kind needs tokens (HL7 v2 only).
    pub issuer: Option<Issuer>,
    pub audience: String,
    pub clients: Vec<ClientKind>,
    pub dev_certs: bool,
    pub server_name: String,
    pub bind: String,
    pub admin_bind: String,
    pub mllp_bind: String,
    pub hl7_upstream: String,
    pub hl7_sender: String,
    pub hl7_facility: String,
    pub backend_subjects: Vec<String>,
}

/// A quoted YAML scalar (JSON string syntax is YAML double-quoted syntax).
pub fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

impl Plan {
    fn has(&self, k: ClientKind) -> bool {
        self.clients.contains(&k)
    }

    fn http_kinds(&self) -> impl Iterator<Item = ClientKind> + '_ {
        self.clients
            .iter()
            .copied()
            .filter(|k| *k != ClientKind::Hl7v2)
    }

    /// Every search parameter the EHR supports, on any type or system-wide.
    fn search_params(&self) -> BTreeSet<&str> {
        self.ehr
            .types
            .values()
            .flat_map(|c| c.search_params.iter())
            .chain(&self.ehr.system_params)
            .map(String::as_str)
            .collect()
    }

    /// Types whose bodies the EHR accepts (create, update, patch), plus Bundle for
    /// transaction/batch.
    fn writable_types(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .ehr
            .types
            .iter()
            .filter(|(_, c)| {
                ["create", "update", "patch"]
                    .iter()
                    .any(|i| c.interactions.contains(*i))
            })
            .map(|(t, _)| t.as_str())
            .collect();
        let sys = &self.ehr.system_interactions;
        if (sys.contains("transaction") || sys.contains("batch")) && !v.contains(&"Bundle") {
            v.push("Bundle");
            v.sort_unstable();
        }
        v
    }

    /// HTTP methods the EHR's interactions need, for a kind.
    fn methods(&self, k: ClientKind) -> Vec<&'static str> {
        let any = |i: &str| self.ehr.types.values().any(|c| c.interactions.contains(i));
        let sys = |i: &str| self.ehr.system_interactions.contains(i);
        // GET always: `/metadata` is how FHIR clients learn what they may do.
        let mut m = vec!["GET"];
        if k.writes() {
            if any("create") || sys("transaction") || sys("batch") {
                m.push("POST");
            }
            if any("update") {
                m.push("PUT");
            }
            if any("patch") {
                m.push("PATCH");
            }
            if any("delete") {
                m.push("DELETE");
            }
        }
        m
    }

    fn allowed_operations(&self) -> Vec<&str> {
        // `$everything` is confined by the compartment guard to the token's own patient;
        // every other operation stays denied until someone decides it is needed.
        self.ehr
            .operations
            .iter()
            .filter(|o| *o == "everything")
            .map(String::as_str)
            .collect()
    }

    fn client_ca(&self) -> &'static str {
        if self.dev_certs {
            "certs/ca.pem"
        } else {
            "certs/client-ca.pem"
        }
    }

    /// All files, as (path relative to the output folder, text).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut out = vec![("ward.yaml".to_owned(), self.ward_yaml())];
        out.extend(self.policies());
        out
    }

    fn capability_summary(&self) -> String {
        let mut s = String::new();
        let ver = self
            .ehr
            .fhir_version
            .as_deref()
            .unwrap_or("(unstated, R4 assumed)");
        let _ = writeln!(
            s,
            "# What the EHR's CapabilityStatement advertises (FHIR {ver}):"
        );
        for (t, c) in &self.ehr.types {
            let i: Vec<&str> = c.interactions.iter().map(String::as_str).collect();
            let p: Vec<&str> = c.search_params.iter().map(String::as_str).collect();
            let _ = writeln!(
                s,
                "#   {t}: {}{}",
                if i.is_empty() {
                    "(no interactions)".to_owned()
                } else {
                    i.join(", ")
                },
                if p.is_empty() {
                    String::new()
                } else {
                    format!("; search: {}", p.join(", "))
                }
            );
        }
        if !self.ehr.system_interactions.is_empty() {
            let i: Vec<&str> = self
                .ehr
                .system_interactions
                .iter()
                .map(String::as_str)
                .collect();
            let _ = writeln!(s, "#   whole system: {}", i.join(", "));
        }
        s.push_str(
            "# Ward has no per-resource-type interaction switch. From this table it enforces:\n\
             #   - each route's `methods`: only the HTTP methods these interactions need;\n",
        );
        s.push_str(if self.writable_types().is_empty() {
            "#   - no writes at all: the EHR advertises no create, update or patch;\n"
        } else {
            "#   - policies/validate.yaml: request bodies only of types the EHR accepts writes for;\n"
        });
        s.push_str(
            "#   - the search-parameter firewall (`allowed_params` in the fhir_authz policies):\n\
             #     only parameters the EHR supports (on any type: the firewall is per route);\n\
             #   - per type and interaction, the SMART scopes in each token\n\
             #     (e.g. patient/Observation.read): ask your IdP to issue only those.\n",
        );
        let denied: Vec<&str> = self
            .ehr
            .operations
            .iter()
            .filter(|o| *o != "everything")
            .map(String::as_str)
            .collect();
        if !denied.is_empty() {
            let _ = writeln!(
                s,
                "# Operations the EHR offers that no route allows (add to allowed_operations if needed): {}",
                denied.join(", ")
            );
        }
        for n in &self.ehr.notes {
            let _ = writeln!(s, "# Note: {n}");
        }
        s
    }

    fn ward_yaml(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "# ward.yaml, generated by `ward init` for the EHR at {base}.\n\
             # Check: `ward check --config ward.yaml`. Run: `ward run --config ward.yaml`.\n\
             # Relative paths are relative to this file. Everything not allowed here is refused:\n\
             # unknown paths get 404, other methods 405, requests without a valid token 401.\n\
             #\n",
            base = self.base_url
        );
        s.push_str(&self.capability_summary());
        s.push_str(
            "\n# Per-route policies (one file each, with its own comments) live here.\n\
             policies_dir: policies\n\n",
        );
        if self.http_kinds().next().is_some() {
            let _ = write!(
                s,
                "listeners:\n\
                 \x20 - name: public\n\
                 \x20   # Where clients connect. TLS only: Ward speaks TLS 1.2 and 1.3, never\n\
                 \x20   # plaintext HTTP, so tokens and PHI are never on the wire in clear.\n\
                 \x20   bind: {bind}\n\
                 \x20   tls:\n\
                 \x20     certificates:\n\
                 \x20       # {cert_note}\n\
                 \x20       - cert: certs/server.pem\n\
                 \x20         key: certs/server.key\n\
                 \x20         server_names: [{name}]\n",
                bind = q(&self.bind),
                name = q(&self.server_name),
                cert_note = if self.dev_certs {
                    "Self-signed development certificate (ward init --dev-certs): replace before production."
                } else {
                    "Put the gateway's certificate chain and key here (PEM)."
                },
            );
            if self.has(ClientKind::Backend) {
                let _ = write!(
                    s,
                    "\x20     # Backend systems prove who they are with a client certificate from this CA.\n\
                     \x20     # `optional` lets apps without one connect to the other routes; the\n\
                     \x20     # backend route's mtls policy refuses requests without one.\n\
                     \x20     client_auth:\n\
                     \x20       mode: optional\n\
                     \x20       ca: [{ca}]\n",
                    ca = q(self.client_ca())
                );
            }
            s.push('\n');
        }
        let _ = write!(
            s,
            "upstreams:\n\
             \x20 - name: ehr\n\
             \x20   # The EHR. Firewall it so that only Ward can reach it: a gateway that can be\n\
             \x20   # bypassed protects nothing.\n\
             \x20   url: {origin}\n",
            origin = q(&self.origin)
        );
        if let Some(ca) = &self.upstream_ca {
            let _ = write!(
                s,
                "\x20   # Only a certificate from this CA is accepted as the EHR (no impostor EHR).\n\
                 \x20   ca: {}\n",
                q(ca)
            );
        }
        let _ = write!(
            s,
            "\x20   health:\n\
             \x20     # /readyz on the admin listener reports the EHR down when this fails.\n\
             \x20     path: {}\n\n",
            q(&format!("{}/metadata", self.base_path))
        );
        if self.http_kinds().next().is_some() {
            s.push_str("routes:\n");
        }
        for k in self.http_kinds() {
            s.push_str(&self.route(k));
        }
        if self.has(ClientKind::Hl7v2) {
            s.push_str(&self.mllp());
        }
        s.push_str(
            "\n# Who asked for which record, hash-chained so that edits, deletions and reordering\n\
             # show (`ward audit verify audit/ward-audit.jsonl --key secrets/audit.key`).\n\
             # HIPAA 164.312(b) asks for audit controls; every route here opts in.\n\
             audit:\n\
             \x20 path: audit/ward-audit.jsonl\n\
             \x20 # HMAC key (made by ward init, mode 0600): without it, anyone able to rewrite\n\
             \x20 # the file could also recompute plain hashes.\n\
             \x20 key_file: secrets/audit.key\n\n",
        );
        let _ = write!(
            s,
            "admin:\n\
             \x20 # Metrics, health and the block API have no authentication: loopback only.\n\
             \x20 bind: {}\n\n\
             # In-flight requests get this long to finish on shutdown.\n\
             shutdown_grace: 30s\n\n\
             log:\n\
             \x20 # JSON lines for a log collector. Ward never logs tokens, bodies or PHI.\n\
             \x20 format: json\n\
             \x20 level: info\n",
            q(&self.admin_bind)
        );
        s
    }

    fn route(&self, k: ClientKind) -> String {
        let (why, policies): (&str, Vec<&str>) = match k {
            ClientKind::Clinician => (
                "Clinician-facing apps: a valid token from the IdP, SMART scopes decide which\n\
                 \x20 # types each may read or write, writes are validated, and every request is audited.",
                vec!["baseline", "idp", "scopes", "validate", "audit"],
            ),
            ClientKind::Patient => (
                "Patient-facing apps: a valid token, and every request confined to the patient in\n\
                 \x20 # the token's launch context (another patient's record is refused). Read-only.",
                vec!["baseline", "idp", "patient-compartment", "audit"],
            ),
            ClientKind::Backend => (
                "Backend systems: a client certificate (mTLS) AND a token; give these systems\n\
                 \x20 # system/ scopes (e.g. system/Observation.read) at the IdP.",
                vec!["baseline", "backend-mtls", "idp", "scopes", "validate", "audit"],
            ),
            ClientKind::Research => (
                "Research and analytics: a valid token, read-only, and every response\n\
                 \x20 # de-identified (HIPAA Safe Harbor) before it leaves Ward.",
                vec!["baseline", "idp", "scopes", "safe-harbor", "audit"],
            ),
            ClientKind::Hl7v2 => ("", vec![]),
        };
        let has_validate = !self.writable_types().is_empty();
        let policies: Vec<&str> = policies
            .into_iter()
            .filter(|p| *p != "validate" || has_validate)
            .collect();
        let rewrite = if self.base_path.is_empty() {
            "/"
        } else {
            self.base_path.as_str()
        };
        format!(
            "  # {why}\n\
             \x20 - name: {name}\n\
             \x20   listener: public\n\
             \x20   path_prefix: {prefix}\n\
             \x20   # Only what the EHR supports{ro}.\n\
             \x20   methods: [{methods}]\n\
             \x20   upstream: ehr\n\
             \x20   rewrite_prefix: {rewrite}\n\
             \x20   # FHIR-aware: requests are classified (read, search, …) and errors are OperationOutcomes.\n\
             \x20   fhir: true\n\
             \x20   policies: [{policies}]\n",
            name = k.name(),
            prefix = q(k.prefix()),
            ro = if k.writes() { "" } else { ", and reads only" },
            methods = self.methods(k).join(", "),
            rewrite = q(rewrite),
            policies = policies.join(", "),
        )
    }

    fn mllp(&self) -> String {
        format!(
            "\n# HL7 v2 interfaces over MLLP: TLS with a REQUIRED client certificate, and each\n\
             # sending system may claim only its own facility in MSH-4 (sender binding), so one\n\
             # compromised interface cannot inject messages in another's name.\n\
             mllp:\n\
             \x20 - name: hl7v2\n\
             \x20   bind: {bind}\n\
             \x20   tls:\n\
             \x20     certificates:\n\
             \x20       - cert: certs/server.pem\n\
             \x20         key: certs/server.key\n\
             \x20     client_auth:\n\
             \x20       mode: required\n\
             \x20       ca: [{ca}]\n\
             \x20   senders:\n\
             \x20     # The certificate CN of the sending system, and the facility it sends for.\n\
             \x20     - subjects: [{sender}]\n\
             \x20       sending_facilities: [{facility}]\n\
             \x20   validate:\n\
             \x20     # Only the message types this interface carries; others get an AR ACK.\n\
             \x20     allowed_message_types: [ADT^A01, ADT^A04, ADT^A08, ORU^R01]\n\
             \x20   # Every message is recorded in the audit trail.\n\
             \x20   audit: true\n\
             \x20   upstream:\n\
             \x20     # The interface engine's MLLP port (reachable only from Ward).\n\
             \x20     address: {up}\n",
            bind = q(&self.mllp_bind),
            ca = q(self.client_ca()),
            sender = q(&self.hl7_sender),
            facility = q(&self.hl7_facility),
            up = q(&self.hl7_upstream),
        )
    }

    fn policies(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |name: &str, text: String| out.push((format!("policies/{name}.yaml"), text));
        add(
            "baseline",
            "# Request limits for every route: policies can only tighten the listener's limits.\n\
             description: Default request limits\n\
             limits:\n\
             \x20 max_body_bytes: 2097152   # 2 MiB: more than any single FHIR resource needs\n\
             \x20 body_timeout: 30s         # a client trickling a body cannot hold a connection\n"
                .into(),
        );
        add(
            "audit",
            "# Present = the route's requests are written to the audit trail (ward.yaml `audit:`):\n\
             # who asked for what, when, and the answer; HIPAA 164.312(b) audit controls.\n\
             description: Audit every request\n\
             audit: {}\n"
                .into(),
        );
        let http = self.http_kinds().next().is_some();
        if http {
            if let Some(i) = &self.issuer {
                add("idp", self.idp(i));
            }
            let params = self.search_params();
            let (params_note, params) = if params.is_empty() {
                (
                    "  # The EHR advertises no search parameters; an empty list would allow any, so\n\
                     \x20 # only _id is allowed.\n",
                    vec!["_id"],
                )
            } else {
                (
                    "  # Only the search parameters the EHR advertises (its CapabilityStatement):\n\
                     \x20 # anything else is refused before it reaches the EHR's query engine.\n",
                    params.into_iter().collect(),
                )
            };
            let ops = self.allowed_operations();
            if self.has(ClientKind::Clinician)
                || self.has(ClientKind::Backend)
                || self.has(ClientKind::Research)
            {
                add(
                    "scopes",
                    format!(
                        "# SMART on FHIR scopes: a token may only do what its scopes grant, per resource\n\
                         # type and interaction (user/, system/ or patient/ scopes).\n\
                         description: SMART scopes and the search-parameter firewall\n\
                         fhir_authz:\n\
                         {params_note}\
                         \x20 allowed_params: {params}\n\
                         \x20 # Operations are denied unless listed.\n\
                         \x20 allowed_operations: {ops}\n\
                         \x20 # Large result pages are capped, not refused.\n\
                         \x20 max_count: 100\n\
                         \x20 count_mode: cap\n",
                        params = list(&params),
                        ops = list(&ops),
                    ),
                );
            }
            if self.has(ClientKind::Patient) {
                add(
                    "patient-compartment",
                    format!(
                        "# The guard against the most common API breach (OWASP API1, broken object-level\n\
                         # authorization): a patient app may only reach the patient in its token.\n\
                         description: Patient compartment guard (SMART patient-level access)\n\
                         fhir_authz:\n\
                         \x20 # Tokens with patient/ scopes or this claim are confined to that patient. A\n\
                         \x20 # token with only user/ or system/ scopes is not: have the IdP give patient\n\
                         \x20 # apps patient/ scopes and a launch patient, never user/ or system/ ones.\n\
                         \x20 patient_claim: patient          # the SMART launch-context claim\n\
                         {params_note}\
                         \x20 allowed_params: {params}\n\
                         \x20 allowed_operations: {ops}   # $everything: only on the token's own Patient\n\
                         \x20 # Chained and reverse-chained searches could reach other patients.\n\
                         \x20 allow_has: false\n\
                         \x20 allow_chained: false\n\
                         \x20 allowed_includes: []\n\
                         \x20 # Entries of other patients in a response are removed.\n\
                         \x20 bundle_mode: filter\n\
                         \x20 max_count: 100\n\
                         \x20 count_mode: cap\n",
                        params = list(&params),
                        ops = list(&ops),
                    ),
                );
            }
            let types = self.writable_types();
            if !types.is_empty()
                && (self.has(ClientKind::Clinician) || self.has(ClientKind::Backend))
            {
                add(
                    "validate",
                    format!(
                        "# Request bodies are FHIR R4-validated before the EHR parses them, and only of\n\
                         # the types the EHR accepts writes for. Invalid: 400 OperationOutcome.\n\
                         description: FHIR R4 validation of writes\n\
                         validate:\n\
                         \x20 fhir:\n\
                         \x20   allowed_types: {types}\n\
                         \x20   max_body_bytes: 2097152\n\
                         \x20   max_bundle_entries: 200\n",
                        types = list(&types)
                    ),
                );
            }
            if self.has(ClientKind::Backend) {
                let subjects = if self.backend_subjects.is_empty() {
                    "  # Any certificate from the client CA in ward.yaml; to name each system, add\n  \
                     # e.g. subjects: [lab-analyser-1]\n"
                        .to_owned()
                } else {
                    format!(
                        "  # Only these certificate subjects (CN).\n  subjects: {}\n",
                        list(&self.backend_subjects)
                    )
                };
                add(
                    "backend-mtls",
                    format!(
                        "# Backend systems authenticate with a client certificate as well as a token.\n\
                         description: Backend systems (mTLS)\n\
                         mtls:\n\
                         \x20 require: true\n\
                         {subjects}\
                         \x20 require_client_auth_eku: true   # a server certificate is not a client identity\n\
                         \x20 forward_header: x-client-identity\n"
                    ),
                );
            }
            if self.has(ClientKind::Research) {
                add(
                    "safe-harbor",
                    "# Research and analytics get de-identified data: HIPAA Safe Harbor\n\
                     # (45 CFR 164.514(b)(2)) removes or generalizes the 18 identifiers in every response.\n\
                     description: Safe Harbor de-identification of responses\n\
                     dlp:\n\
                     \x20 mode: enforce                # report would only count, not redact\n\
                     \x20 direction: response\n\
                     \x20 preset: safe_harbor\n\
                     \x20 max_scan_bytes: 16777216     # larger responses are refused (fail closed)\n"
                        .into(),
                );
            }
        }
        out
    }

    fn idp(&self, i: &Issuer) -> String {
        let mut s = String::from(
            "# Bearer tokens: only signed by the identity provider below, for this audience,\n\
             # unexpired. No token or a bad one: 401 before anything reaches the EHR.\n\
             description: Access tokens from the identity provider\n\
             auth:\n\
             \x20 providers:\n",
        );
        match i {
            Issuer::Remote { idp, ca } => {
                for n in &idp.notes {
                    let _ = writeln!(s, "    # Note: {n}");
                }
                let _ = write!(
                    s,
                    "    - name: idp\n\
                     \x20     issuer: {iss}\n\
                     \x20     # The `aud` the IdP puts in access tokens for this API: a token minted for\n\
                     \x20     # another service is refused here.\n\
                     \x20     audiences: [{aud}]\n\
                     \x20     # From what the IdP advertises, intersected with what Ward verifies; never\n\
                     \x20     # `none` or HS* (a secret shared with an IdP could mint tokens).\n\
                     \x20     algorithms: [{algs}]\n\
                     \x20     # The IdP's signing keys, from its discovery document; refreshed, so key\n\
                     \x20     # rotation needs no restart.\n\
                     \x20     jwks_url: {jwks}\n\
                     \x20     jwks_ca: {ca}\n\
                     \x20     jwks_refresh: 5m\n\
                     \x20     jwks_min_refetch: 30s      # unknown kids cannot make Ward hammer the IdP\n\
                     \x20     leeway: 30s                # clock skew\n",
                    iss = q(&idp.issuer),
                    aud = q(&self.audience),
                    algs = idp.algorithms.join(", "),
                    jwks = q(&idp.jwks_uri),
                    ca = q(ca),
                );
            }
            Issuer::Dev => {
                let _ = write!(
                    s,
                    "    # DEVELOPMENT issuer: its key is certs/token-signing.key (made by ward init);\n\
                     \x20   # mint tokens with `ward token --key certs/token-signing.key --sub NAME --scope …`.\n\
                     \x20   # Replace with your IdP (ward init --idp ISSUER) before production.\n\
                     \x20   - name: dev-issuer\n\
                     \x20     issuer: {iss}\n\
                     \x20     audiences: [{aud}]\n\
                     \x20     algorithms: [ES256]\n\
                     \x20     keys_file: certs/token-signing.pub.pem\n",
                    iss = q(crate::demo::DEMO_ISSUER),
                    aud = q(&self.audience),
                );
            }
        }
        s.push_str(
            "  # RFC 8705 certificate-bound tokens: set true if the IdP issues them (then a stolen\n\
             \x20 # token is useless without the client's certificate).\n\
             \x20 require_certificate_binding: false\n\
             \x20 # The EHR learns who asked, without seeing the token.\n\
             \x20 forward_claims:\n\
             \x20   sub: x-user-sub\n\
             \x20 upstream_authorization: strip\n",
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cap: serde_json::Value, clients: &str) -> Plan {
        Plan {
            base_url: "http://ehr.test/fhir".into(),
            origin: "http://ehr.test".into(),
            base_path: "/fhir".into(),
            upstream_ca: None,
            ehr: super::super::facts::capabilities(&cap).unwrap(),
            issuer: Some(Issuer::Dev),
            audience: "aud".into(),
            clients: parse_kinds(clients).unwrap(),
            dev_certs: true,
            server_name: "localhost".into(),
            bind: "127.0.0.1:0".into(),
            admin_bind: "127.0.0.1:0".into(),
            mllp_bind: "127.0.0.1:0".into(),
            hl7_upstream: "engine:2575".into(),
            hl7_sender: "demo-client".into(),
            hl7_facility: "H".into(),
            backend_subjects: vec![],
        }
    }

    #[test]
    fn a_read_only_ehr_gets_read_only_routes_and_no_open_firewall() {
        // Reads only, and no search parameters advertised: every route is GET only, no
        // write validation policy, and the firewall allows _id rather than anything.
        let cap = serde_json::json!({"resourceType":"CapabilityStatement","fhirVersion":"4.0.1",
            "rest":[{"mode":"server","resource":[{"type":"Observation","interaction":[{"code":"read"},{"code":"search-type"}]}]}]});
        let p = plan(cap, "clinician,backend,research");
        for k in [
            ClientKind::Clinician,
            ClientKind::Backend,
            ClientKind::Research,
        ] {
            assert_eq!(p.methods(k), ["GET"], "{k:?}");
        }
        let files = p.files();
        assert!(!files.iter().any(|(n, _)| n == "policies/validate.yaml"));
        let scopes = &files
            .iter()
            .find(|(n, _)| n == "policies/scopes.yaml")
            .unwrap()
            .1;
        assert!(scopes.contains("allowed_params: [\"_id\"]"), "{scopes}");
        assert!(
            !files[0]
                .1
                .lines()
                .any(|l| l.contains("policies: [") && l.contains("validate")),
            "{}",
            files[0].1
        );
    }

    #[test]
    fn writes_map_to_methods_for_writing_kinds_only() {
        let cap = serde_json::json!({"resourceType":"CapabilityStatement","fhirVersion":"4.0.1",
            "rest":[{"mode":"server","interaction":[{"code":"transaction"}],"resource":[
                {"type":"Patient","interaction":[{"code":"read"},{"code":"update"},{"code":"patch"},{"code":"delete"}]}]}]});
        let p = plan(cap, "clinician,patient,research");
        assert_eq!(
            p.methods(ClientKind::Clinician),
            ["GET", "POST", "PUT", "PATCH", "DELETE"]
        );
        assert_eq!(p.methods(ClientKind::Patient), ["GET"]);
        assert_eq!(p.methods(ClientKind::Research), ["GET"]);
        assert_eq!(p.writable_types(), ["Bundle", "Patient"]);
    }

    #[test]
    fn kinds_parse_strictly() {
        assert_eq!(
            parse_kinds(" patient, Clinician,patient ").unwrap(),
            [ClientKind::Clinician, ClientKind::Patient]
        );
        for bad in ["", ",", "admin", "clinician,root", "clinicians"] {
            assert!(parse_kinds(bad).is_err(), "{bad:?}");
        }
    }
}
