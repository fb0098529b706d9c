//! An audit record as a FHIR R4 `AuditEvent` shaped by IHE Basic Audit Log Patterns (BALP,
//! https://profiles.ihe.net/ITI/BALP): one profile per RESTful interaction (Read, Query,
//! Create, Update, Delete) and its Patient variant when a patient is known.
//!
//! The event is built from the record's fields only (never from bodies), by the writer
//! thread, so the request path does not pay for it. The raw query of a search is the one
//! value the record line does not carry; it travels beside the fields under
//! [`QUERY_FIELD`] and lands base64-encoded in `entity[query].query`, as BALP asks (it
//! keeps exactly what was asked, including malicious patterns, without putting search
//! terms in clear in logs).
//!
//! Outcome: a request the upstream answered is `0` (success) below 400, `4` (minor
//! failure) for 4xx and `8` (serious failure) for 5xx. A request the gateway refused is
//! `4`, one that failed at the gateway or upstream `8`, one the client abandoned `4`;
//! `outcomeDesc` is then the stable refusal code (`scope_denied`, …). BALP's profiles fix
//! `outcome` to success, so a failure event keeps the profile's shape but does not claim
//! the profile in `meta.profile`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Private member of a record's fields: the raw request target of a FHIR request
/// (path and query). Taken out by the writer before the line is sealed.
pub const QUERY_FIELD: &str = "\u{0}query";

/// `audit.audit_event`: emit records as FHIR AuditEvents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEventConfig {
    /// Identifier of this gateway as the observer (`source.observer`) and the server agent
    /// (e.g. its DNS name).
    pub source_id: String,
    /// `source.site`: the enterprise or location the gateway serves.
    #[serde(default)]
    pub site: Option<String>,
    /// Also write each AuditEvent into its chained line (member `audit_event`, covered by
    /// the hash). Off by default: the line then stays free of the (base64) query.
    #[serde(default)]
    pub in_file: bool,
}

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const ENTITY_TYPE_BALP: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const PROVENANCE_PARTICIPANT: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The BALP family an interaction belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Query,
    Create,
    Update,
    Delete,
    /// history, operations, batch, capabilities: no BALP profile; a plain `rest` event.
    Other,
}

impl Kind {
    fn of(interaction: &str) -> Kind {
        match interaction {
            "read" | "vread" => Kind::Read,
            "search-type" | "search-system" | "search-compartment" => Kind::Query,
            "create" => Kind::Create,
            "update" | "patch" => Kind::Update,
            "delete" => Kind::Delete,
            _ => Kind::Other,
        }
    }
    fn profile(self, patient: bool) -> Option<String> {
        let name = match self {
            Kind::Read => "Read",
            Kind::Query => "Query",
            Kind::Create => "Create",
            Kind::Update => "Update",
            Kind::Delete => "Delete",
            Kind::Other => return None,
        };
        Some(format!(
            "{BALP}{}{name}",
            if patient { "Patient" } else { "" }
        ))
    }
    /// AuditEvent.action (http://hl7.org/fhir/audit-event-action).
    fn action(self, interaction: &str) -> &'static str {
        match self {
            Kind::Read => "R",
            Kind::Query => "E",
            Kind::Create => "C",
            Kind::Update => "U",
            Kind::Delete => "D",
            Kind::Other if interaction.starts_with("history") => "R",
            Kind::Other => "E",
        }
    }
    /// (client agent type, server agent type): BALP gives the DICOM roles by the way the
    /// data flows (a read flows from server to client; a delete is app and custodian).
    fn agent_types(self) -> (Value, Value) {
        let dcm = |code: &str, display: &str| coding(DCM, code, display);
        match self {
            Kind::Read => (
                dcm("110152", "Destination Role ID"),
                dcm("110153", "Source Role ID"),
            ),
            Kind::Delete => (
                dcm("110150", "Application"),
                coding(PROVENANCE_PARTICIPANT, "custodian", "Custodian"),
            ),
            _ => (
                dcm("110153", "Source Role ID"),
                dcm("110152", "Destination Role ID"),
            ),
        }
    }
}

/// restful-interaction code for the record's interaction label.
fn subtype(interaction: &str) -> Option<(&'static str, &'static str)> {
    Some(match interaction {
        "read" => ("read", "read"),
        "vread" => ("vread", "vread"),
        "update" => ("update", "update"),
        "patch" => ("patch", "patch"),
        "delete" => ("delete", "delete"),
        "create" => ("create", "create"),
        "search-type" => ("search-type", "search type"),
        "search-system" => ("search-system", "search system"),
        "search-compartment" => ("search", "search"),
        "history-instance" => ("history-instance", "history instance"),
        "history-type" => ("history-type", "history type"),
        "history-system" => ("history-system", "history system"),
        "capabilities" => ("capabilities", "capabilities"),
        "batch" => ("batch", "batch"),
        "operation" => ("operation", "operation"),
        _ => return None,
    })
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn text<'a>(f: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    f.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Longest string copied from a token or certificate into an event.
const MAX_TEXT: usize = 1024;

/// A value from a token, certificate or header as a valid FHIR `string`: control
/// characters (which R4 forbids) become U+FFFD, surrounding whitespace goes, overlong
/// values are cut; nothing left means absent. The event must stay valid whatever a
/// client put in its claims, or a repository would refuse it.
fn clean(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    let t = t.trim().to_owned();
    (!t.is_empty()).then_some(t)
}

/// [`clean`] of a record field.
fn field(f: &Map<String, Value>, k: &str) -> Option<String> {
    text(f, k).and_then(clean)
}

/// Usable as an `Identifier.system` (a FHIR `uri`): an absolute URI without spaces.
fn uri(s: &str) -> bool {
    s.len() <= MAX_TEXT
        && s.contains(':')
        && !s.starts_with(':')
        && s.chars().all(|c| c.is_ascii_graphic())
}

/// A FHIR id: what a `Type/id` reference may carry (anything else is left out rather
/// than making the event invalid).
fn fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The patient the request concerns, if known: the token's `patient` claim, a Patient
/// compartment, or the Patient resource itself.
fn patient_of(f: &Map<String, Value>) -> Option<String> {
    let from_resource = (text(f, "resource_type") == Some("Patient"))
        .then(|| text(f, "resource_id"))
        .flatten();
    let from_compartment = text(f, "compartment").and_then(|c| c.strip_prefix("Patient/"));
    from_resource
        .or(from_compartment)
        .or(text(f, "patient"))
        .filter(|id| fhir_id(id))
        .map(|id| format!("Patient/{id}"))
}

/// The record's AuditEvent, or `None` for a record that is not a FHIR request (MLLP,
/// plain HTTP routes, respond events).
pub fn audit_event(
    f: &Map<String, Value>,
    query: Option<&str>,
    cfg: &AuditEventConfig,
) -> Option<Value> {
    if text(f, "kind") != Some("http") {
        return None;
    }
    let interaction = text(f, "fhir_interaction")?;
    let kind = Kind::of(interaction);
    let patient = patient_of(f);

    let status = f.get("status").and_then(Value::as_u64).unwrap_or(0);
    let decision = text(f, "decision").unwrap_or("error");
    let (outcome, desc) = match decision {
        "allow" if status < 400 => ("0", None),
        "allow" if status < 500 => ("4", Some(format!("upstream status {status}"))),
        "allow" => ("8", Some(format!("upstream status {status}"))),
        "refuse" => ("4", field(f, "code")),
        "cancelled" => ("4", Some("cancelled".to_owned())),
        _ => ("8", field(f, "code")),
    };

    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    if outcome == "0" {
        if let Some(p) = kind.profile(patient.is_some()) {
            ev.insert("meta".into(), json!({ "profile": [p] }));
        }
    }
    ev.insert(
        "type".into(),
        coding(EVENT_TYPE, "rest", "Restful Operation"),
    );
    if let Some((code, display)) = subtype(interaction) {
        ev.insert(
            "subtype".into(),
            json!([coding(INTERACTION, code, display)]),
        );
    }
    ev.insert("action".into(), json!(kind.action(interaction)));
    ev.insert(
        "recorded".into(),
        json!(text(f, "time").unwrap_or("1970-01-01T00:00:00Z")),
    );
    ev.insert("outcome".into(), json!(outcome));
    if let Some(d) = desc {
        ev.insert("outcomeDesc".into(), json!(d));
    }

    // Agents: the client application, the gateway (server side), and the user.
    let (client_type, server_type) = kind.agent_types();
    let user = field(f, "sub");
    let mut client = Map::new();
    client.insert("type".into(), json!({ "coding": [client_type] }));
    let ip = field(f, "client_ip");
    let subject = field(f, "cert_subject");
    let client_who = match (field(f, "client_id"), &subject) {
        (Some(id), _) => json!({ "identifier": { "value": id } }),
        (None, Some(subject)) => json!({ "display": subject }),
        (None, None) => json!({ "display": ip.as_deref().unwrap_or("unknown") }),
    };
    client.insert("who".into(), client_who);
    if let Some(name) = subject {
        client.insert("altId".into(), json!(name));
    }
    // Without a user, the application is the one asking.
    client.insert("requestor".into(), json!(user.is_none()));
    if let Some(ip) = ip {
        client.insert("network".into(), json!({ "address": ip, "type": "2" }));
    }
    let mut agents = vec![Value::Object(client)];
    agents.push(json!({
        "type": { "coding": [server_type] },
        "who": { "identifier": { "value": cfg.source_id } },
        "requestor": false,
        "network": { "address": cfg.source_id, "type": "1" },
    }));
    if let Some(sub) = user {
        let mut u = Map::new();
        u.insert(
            "type".into(),
            json!({ "coding": [coding(PARTICIPATION, "IRCP", "information recipient")] }),
        );
        let mut ident = Map::new();
        if let Some(iss) = text(f, "iss").filter(|i| uri(i)) {
            ident.insert("system".into(), json!(iss));
        }
        ident.insert("value".into(), json!(sub));
        u.insert("who".into(), json!({ "identifier": ident }));
        u.insert("requestor".into(), json!(true));
        if f.get("break_glass") == Some(&Value::Bool(true)) {
            u.insert(
                "purposeOfUse".into(),
                json!([{ "coding": [coding(ACT_REASON, "BTG", "break the glass")] }]),
            );
        }
        agents.push(Value::Object(u));
    }
    ev.insert("agent".into(), Value::Array(agents));

    let mut source = Map::new();
    if let Some(site) = &cfg.site {
        source.insert("site".into(), json!(site));
    }
    source.insert(
        "observer".into(),
        json!({ "identifier": { "value": cfg.source_id }, "display": "Ward gateway" }),
    );
    source.insert(
        "type".into(),
        json!([coding(SOURCE_TYPE, "6", "Security Server")]),
    );
    ev.insert("source".into(), Value::Object(source));

    // Entities: the X-Request-Id, the resource (or query), the patient.
    let mut entities = Vec::new();
    if let Some(rid) = field(f, "request_id") {
        entities.push(json!({
            "what": { "identifier": { "value": rid } },
            "type": coding(ENTITY_TYPE_BALP, "XrequestId", "transport specific unique identifier where http X-Request-Id is used"),
        }));
    }
    if kind == Kind::Query {
        let mut q = Map::new();
        q.insert("type".into(), coding(ENTITY_TYPE, "2", "System Object"));
        q.insert("role".into(), coding(OBJECT_ROLE, "24", "Query"));
        if let Some(query) = query {
            use base64::Engine as _;
            q.insert(
                "query".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(query.as_bytes())),
            );
        }
        entities.push(Value::Object(q));
    } else if let Some(t) = text(f, "resource_type") {
        let what = match text(f, "resource_id").filter(|id| fhir_id(id)) {
            Some(id) => json!({ "reference": format!("{t}/{id}") }),
            // A create (or conditional write): the type is known, the id is not.
            None => json!({ "type": t }),
        };
        entities.push(json!({
            "what": what,
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
        }));
    }
    if let Some(p) = &patient {
        entities.push(json!({
            "what": { "reference": p },
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if !entities.is_empty() {
        ev.insert("entity".into(), Value::Array(entities));
    }
    Some(Value::Object(ev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuditEventConfig {
        AuditEventConfig {
            source_id: "ward.example.org".into(),
            site: Some("Example Hospital".into()),
            in_file: false,
        }
    }

    fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("time".into(), json!("2026-01-02T03:04:05.678Z"));
        m.insert("kind".into(), json!("http"));
        m.insert("request_id".into(), json!("req-1"));
        m.insert("client_ip".into(), json!("127.0.0.1"));
        m.insert("decision".into(), json!("allow"));
        m.insert("status".into(), json!(200));
        for (k, v) in pairs {
            m.insert((*k).to_owned(), v.clone());
        }
        m
    }

    fn valid(ev: &Value) {
        let bytes = ev.to_string().into_bytes();
        if let Err(issues) = crate::fhir::validate::validate_resource(
            &bytes,
            &crate::fhir::validate::Limits::default(),
            None,
        ) {
            panic!("invalid AuditEvent {ev:#}: {issues:#?}");
        }
    }

    fn profile(ev: &Value) -> Option<&str> {
        ev["meta"]["profile"][0].as_str()
    }

    /// Every interaction × patient known or not × every decision: a valid R4 AuditEvent
    /// with the BALP profile, action and subtype of its interaction.
    #[test]
    fn every_interaction_and_outcome_gives_a_valid_balp_event() {
        let cases = [
            ("read", "R", Some("Read"), "Observation", Some("o1")),
            ("vread", "R", Some("Read"), "Observation", Some("o1")),
            ("search-type", "E", Some("Query"), "Observation", None),
            ("search-system", "E", Some("Query"), "", None),
            ("create", "C", Some("Create"), "Observation", None),
            ("update", "U", Some("Update"), "Observation", Some("o1")),
            ("patch", "U", Some("Update"), "Observation", Some("o1")),
            ("delete", "D", Some("Delete"), "Observation", Some("o1")),
            ("history-instance", "R", None, "Observation", Some("o1")),
            ("capabilities", "E", None, "", None),
            ("batch", "E", None, "", None),
            ("operation", "E", None, "Patient", None),
        ];
        let decisions = [
            ("allow", 200, None, "0"),
            ("allow", 404, None, "4"),
            ("allow", 502, None, "8"),
            ("refuse", 403, Some("scope_denied"), "4"),
            ("error", 503, Some("upstream_unavailable"), "8"),
            ("cancelled", 499, None, "4"),
        ];
        for (interaction, action, prof, rtype, id) in cases {
            for with_patient in [false, true] {
                for (decision, status, code, outcome) in decisions {
                    let mut pairs = vec![
                        ("fhir_interaction", json!(interaction)),
                        ("decision", json!(decision)),
                        ("status", json!(status)),
                        ("sub", json!("dr-who")),
                        ("iss", json!("https://idp.example")),
                        ("client_id", json!("app-1")),
                    ];
                    if !rtype.is_empty() {
                        pairs.push(("resource_type", json!(rtype)));
                    }
                    if let Some(id) = id {
                        pairs.push(("resource_id", json!(id)));
                    }
                    if let Some(c) = code {
                        pairs.push(("code", json!(c)));
                    }
                    if with_patient {
                        pairs.push(("patient", json!("p1")));
                    }
                    let f = fields(&pairs);
                    let ev = audit_event(&f, Some("/fhir/Observation?code=SECRET"), &cfg())
                        .unwrap_or_else(|| panic!("{interaction}: no event"));
                    let ctx = format!("{interaction} patient={with_patient} {decision}/{status}");
                    valid(&ev);
                    assert_eq!(ev["action"], action, "{ctx}");
                    assert_eq!(ev["outcome"], outcome, "{ctx}");
                    assert_eq!(ev["type"]["code"], "rest", "{ctx}");
                    assert_eq!(ev["subtype"][0]["system"], INTERACTION, "{ctx}");
                    let want = match (outcome, prof) {
                        ("0", Some(p)) => Some(format!(
                            "{BALP}{}{p}",
                            if with_patient { "Patient" } else { "" }
                        )),
                        _ => None,
                    };
                    assert_eq!(profile(&ev), want.as_deref(), "{ctx}");
                    if outcome != "0" {
                        assert!(ev["outcomeDesc"].as_str().is_some(), "{ctx}");
                    }
                    if let Some(c) = code {
                        assert_eq!(ev["outcomeDesc"], c, "{ctx}");
                    }
                    let entities = ev["entity"].as_array().cloned().unwrap_or_default();
                    let patient_entities: Vec<_> = entities
                        .iter()
                        .filter(|e| e["role"]["code"] == "1")
                        .collect();
                    assert_eq!(patient_entities.len(), usize::from(with_patient), "{ctx}");
                    if with_patient {
                        assert_eq!(patient_entities[0]["what"]["reference"], "Patient/p1");
                    }
                    // The query only for searches, only in base64.
                    let queries: Vec<_> = entities
                        .iter()
                        .filter(|e| e["role"]["code"] == "24")
                        .collect();
                    assert_eq!(queries.len(), usize::from(prof == Some("Query")), "{ctx}");
                    assert!(!ev.to_string().contains("SECRET"), "{ctx}");
                    // Exactly one requestor: the user.
                    let agents = ev["agent"].as_array().unwrap();
                    assert_eq!(
                        agents.iter().filter(|a| a["requestor"] == true).count(),
                        1,
                        "{ctx}"
                    );
                }
            }
        }
    }

    #[test]
    fn patient_is_found_from_claim_compartment_or_resource_and_odd_ids_are_left_out() {
        for (pairs, want) in [
            (
                vec![
                    ("resource_type", json!("Patient")),
                    ("resource_id", json!("p9")),
                ],
                Some("Patient/p9"),
            ),
            (
                vec![("compartment", json!("Patient/p7"))],
                Some("Patient/p7"),
            ),
            (vec![("compartment", json!("Encounter/e1"))], None),
            (vec![("patient", json!("p5"))], Some("Patient/p5")),
            (vec![("patient", json!("p 5/../x"))], None),
            (vec![("patient", json!(""))], None),
        ] {
            let mut pairs = pairs.clone();
            pairs.push(("fhir_interaction", json!("read")));
            let f = fields(&pairs);
            assert_eq!(patient_of(&f).as_deref(), want, "{pairs:?}");
            let ev = audit_event(&f, None, &cfg()).unwrap();
            valid(&ev);
        }
    }

    #[test]
    fn the_query_is_base64_of_the_raw_request_target() {
        use base64::Engine as _;
        for q in [
            "/fhir/Patient?name=Smith",
            "/fhir/Observation?code=%3Cscript%3E&_count=1",
            "/fhir/Patient/p1/Observation?_has:Foo:bar=x",
            "/fhir/?_type=Patient",
        ] {
            let f = fields(&[("fhir_interaction", json!("search-type"))]);
            let ev = audit_event(&f, Some(q), &cfg()).unwrap();
            valid(&ev);
            let entity = ev["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["role"]["code"] == "24")
                .unwrap();
            let b = entity["query"].as_str().unwrap();
            assert_eq!(
                base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
                q.as_bytes()
            );
        }
    }

    /// Whatever a token, certificate or header carried, the event stays valid R4: every
    /// hostile value in every string field the event copies.
    #[test]
    fn hostile_values_in_copied_fields_never_make_an_invalid_event() {
        let long = "x".repeat(100_000);
        let values = [
            "\u{0}",
            "a\u{7}b",
            "v\u{b}tab",
            "\u{c}",
            "   ",
            " padded ",
            "line\nbreak",
            "tab\there",
            "\r\n",
            long.as_str(),
            "日本語",
            "\u{202e}rtl",
            "quote\"back\\slash",
            "💥",
            "\u{FEFF}",
            "\u{85}next-line",
            "urn:x y",
            ":",
        ];
        for key in [
            "sub",
            "iss",
            "client_id",
            "cert_subject",
            "request_id",
            "client_ip",
            "patient",
            "code",
        ] {
            for v in values {
                for decision in ["allow", "refuse"] {
                    let f = fields(&[
                        ("fhir_interaction", json!("search-type")),
                        ("resource_type", json!("Observation")),
                        ("sub", json!("u")),
                        ("decision", json!(decision)),
                        ("code", json!("scope_denied")),
                        (key, json!(v)),
                    ]);
                    let ev = audit_event(&f, Some("/fhir/Observation?x=1"), &cfg()).unwrap();
                    let bytes = ev.to_string().into_bytes();
                    if let Err(issues) = crate::fhir::validate::validate_resource(
                        &bytes,
                        &crate::fhir::validate::Limits::default(),
                        None,
                    ) {
                        panic!("{key}={v:?} ({decision}): {issues:#?}");
                    }
                    assert!(bytes.len() < 20_000, "{key}: copied values are bounded");
                }
            }
        }
    }

    /// The validator used above does reject what R4 forbids (so a passing test means
    /// something): unknown members, codes outside required bindings, wrong shapes.
    #[test]
    fn the_validator_rejects_broken_events() {
        let f = fields(&[
            ("fhir_interaction", json!("read")),
            ("patient", json!("p1")),
        ]);
        let ev = audit_event(&f, None, &cfg()).unwrap();
        for (path, bad) in [
            ("/action", json!("Z")),
            ("/outcome", json!("3")),
            ("/bogus", json!(1)),
            ("/agent/0/network/type", json!("9")),
            ("/agent/0/requestor", json!("yes")),
            ("/recorded", json!("yesterday")),
            // What `clean` guards against: the R4 string pattern `[ \r\n\t\S]+`
            // excludes vertical tab and form feed.
            ("/agent/0/altId", json!("a\u{b}b")),
            ("/outcomeDesc", json!("\u{c}")),
        ] {
            let mut e = ev.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            e.pointer_mut(if parent.is_empty() { "" } else { parent })
                .and_then(Value::as_object_mut)
                .unwrap()
                .insert(key.to_owned(), bad);
            let bytes = e.to_string().into_bytes();
            assert!(
                crate::fhir::validate::validate_resource(
                    &bytes,
                    &crate::fhir::validate::Limits::default(),
                    None
                )
                .is_err(),
                "{path} accepted"
            );
        }
    }

    #[test]
    fn non_fhir_records_have_no_event() {
        let mut f = fields(&[]);
        assert!(audit_event(&f, None, &cfg()).is_none());
        f.insert("kind".into(), json!("mllp"));
        f.insert("fhir_interaction".into(), json!("read"));
        assert!(audit_event(&f, None, &cfg()).is_none());
    }
}
