//! Data-loss prevention: the engine shared by the HTTP `dlp` policy (`policy/dlp.rs`) and
//! MLLP listeners (`mllp.rs`).
//!
//! An [`Engine`] is compiled once from a policy's `dlp:` section (`DlpConfig`): the
//! free-text detectors into one scanner (`detect/`: one pass over the body for every
//! pattern, one automaton for every keyword), the FHIR path rules (`path.rs`) into a small
//! state machine, the HL7 v2 field rules into a table, and the key for `hash`/`date_shift`
//! read from its file. Per message it then runs over JSON (`json/`), HL7 v2 ER7
//! (`hl7.rs`) or plain text, and says what to send and what it found.
//!
//! What it found is a [`Report`]: counts per (detector or rule, action). Values are never
//! kept, logged or counted — only how many, of which kind, and what was done.

pub mod actions;
pub mod canon;
pub mod detect;
pub mod hl7;
pub mod json;
pub mod path;
pub mod unicode_tables;
pub mod xhtml;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;

use crate::fhir::validate::ValueKind;
use actions::{Action, Keys};
use detect::{DetectorSpec, Kind, Scanner};

fn default_max_scan() -> usize {
    8 * 1024 * 1024
}
fn default_shift_days() -> u32 {
    365
}
fn default_min_confidence() -> u8 {
    50
}
fn default_keep_last() -> u16 {
    4
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Rewrite or refuse.
    #[default]
    Enforce,
    /// Count and log what enforcing would do; the body passes byte for byte (rollout).
    Report,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Response,
    Request,
    Both,
}

impl Direction {
    pub fn requests(self) -> bool {
        matches!(self, Direction::Request | Direction::Both)
    }
    pub fn responses(self) -> bool {
        matches!(self, Direction::Response | Direction::Both)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unscannable {
    /// A body DLP cannot read (binary, unknown encoding) is refused.
    #[default]
    Block,
    /// …or passed unread (counted).
    Pass,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// HIPAA Safe Harbor (45 CFR 164.514(b)(2)): see the README's table.
    SafeHarbor,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Free text only: FHIR `string`, `markdown`, narrative; HL7 fields; text bodies.
    Text,
    /// Every string value, typed ones too (`id`, `code`, `uri`, `date`…).
    Any,
}

/// The `dlp:` section of a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Largest body scanned; beyond it the message is refused (fail closed).
    #[serde(default = "default_max_scan")]
    pub max_scan_bytes: usize,
    /// Largest body after undoing `Content-Encoding` (decompression-bomb cap); default:
    /// `max_scan_bytes`.
    #[serde(default)]
    pub max_decoded_bytes: Option<usize>,
    #[serde(default)]
    pub unscannable: Unscannable,
    /// Secret for `hash` and `date_shift` (at least 32 bytes).
    #[serde(default)]
    pub key_file: Option<String>,
    /// Largest date shift, in days.
    #[serde(default = "default_shift_days")]
    pub date_shift_days: u32,
    /// Confidence (0–100) a free-text finding needs, unless its detector says otherwise.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: u8,
    /// Built-in detectors by name (`ssn`, `card`, `npi`, `mbi`, `email`, `phone`, `ip`,
    /// `date`, `vin`, `url`, `mrn`) and custom ones (any other name, with `pattern` or
    /// `keywords`).
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorConfig>,
    /// FHIR element rules.
    #[serde(default)]
    pub fhir: Vec<FhirRuleConfig>,
    /// HL7 v2 field rules (HTTP ER7 bodies and MLLP).
    #[serde(default)]
    pub hl7v2: Vec<Hl7RuleConfig>,
    /// One action for every FHIR `date`, `dateTime` and `instant` value: `generalize`
    /// (the `safe_harbor` default: year only; instants, which must be precise, go),
    /// `date_shift`, `redact` or `report`.
    #[serde(default)]
    pub dates: Option<Action>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub keep_last: Option<u16>,
    /// A regular expression (custom detectors and `mrn`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Literal words or phrases (custom detectors), matched case-insensitively.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Context words that raise a finding's confidence when near it.
    #[serde(default)]
    pub boost: Vec<String>,
    /// Context words that lower it.
    #[serde(default)]
    pub suppress: Vec<String>,
    #[serde(default)]
    pub min_confidence: Option<u8>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirRuleConfig {
    pub path: String,
    pub action: Action,
    #[serde(default)]
    pub keep_last: Option<u16>,
    /// Metric label; default: the path.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7RuleConfig {
    /// `PID-19`, or a component: `PID-11.5`.
    pub field: String,
    pub action: Action,
    #[serde(default)]
    pub keep_last: Option<u16>,
    #[serde(default)]
    pub name: Option<String>,
}

const BUILTIN: &[&str] = &[
    "ssn", "card", "npi", "mbi", "email", "phone", "ip", "date", "vin", "url", "mrn",
];

impl DlpConfig {
    /// Config problems as `(key, message)`: everything is compiled here, so `ward check`
    /// reports a bad pattern or path with its place.
    pub fn problems(&self, resolve: &dyn Fn(&str) -> PathBuf) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.max_scan_bytes == 0 {
            out.push(("max_scan_bytes".into(), "must be greater than 0".into()));
        }
        if self.max_decoded_bytes == Some(0) {
            out.push(("max_decoded_bytes".into(), "must be greater than 0".into()));
        }
        if self.min_confidence > 100 {
            out.push(("min_confidence".into(), "is 0 to 100".into()));
        }
        if let Some(a) = self.dates {
            if matches!(a, Action::Mask | Action::Hash | Action::Block) {
                out.push((
                    "dates".into(),
                    "dates take generalize, date_shift, redact or report".into(),
                ));
            }
        }
        if self.date_shift_days == 0 {
            out.push(("date_shift_days".into(), "must be greater than 0".into()));
        }
        for (name, d) in &self.detectors {
            let at = format!("detectors.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                out.push((
                    at.clone(),
                    "detector names are letters, digits, `_` and `-`".into(),
                ));
            }
            if d.min_confidence.is_some_and(|c| c > 100) {
                out.push((format!("{at}.min_confidence"), "is 0 to 100".into()));
            }
            let builtin = BUILTIN.contains(&name.as_str());
            match (builtin, &d.pattern, d.keywords.is_empty()) {
                (_, Some(_), false) => out.push((
                    at.clone(),
                    "a detector has `pattern` or `keywords`, not both".into(),
                )),
                (true, Some(_), _) if name != "mrn" => out.push((
                    format!("{at}.pattern"),
                    "built-in detectors have their own pattern; name a custom detector instead"
                        .into(),
                )),
                (true, None, true) if name == "mrn" && d.enabled => out.push((
                    format!("{at}.pattern"),
                    "`mrn` needs the site's medical record number pattern".into(),
                )),
                (false, None, true) => out.push((
                    at.clone(),
                    "a custom detector needs `pattern` or `keywords`".into(),
                )),
                _ => {}
            }
            if let Some(a) = d.action {
                if matches!(a, Action::DateShift | Action::Generalize) {
                    out.push((
                        format!("{at}.action"),
                        "free-text findings take redact, mask, hash, block or report".into(),
                    ));
                }
            }
        }
        for (i, r) in self.fhir.iter().enumerate() {
            if let Err(e) = path::parse(&r.path) {
                out.push((format!("fhir[{i}].path"), e));
            }
        }
        for (i, r) in self.hl7v2.iter().enumerate() {
            if let Err(e) = hl7::parse_field_ref(&r.field) {
                out.push((format!("hl7v2[{i}].field"), e));
            }
        }
        let needs_key = self
            .effective_actions()
            .any(|a| matches!(a, Action::Hash | Action::DateShift));
        match &self.key_file {
            None if needs_key => out.push((
                "key_file".into(),
                "`hash` and `date_shift` need a secret key file".into(),
            )),
            Some(f) => match std::fs::read(resolve(f)) {
                Ok(k) if trim_key(&k).len() < 32 => out.push((
                    "key_file".into(),
                    "the key must be at least 32 bytes".into(),
                )),
                Ok(_) => {}
                Err(e) => out.push(("key_file".into(), format!("cannot read {f}: {}", e.kind()))),
            },
            None => {}
        }
        if out.is_empty() {
            if let Err(e) = Engine::compile(self, resolve) {
                out.push((String::new(), e));
            }
        }
        out
    }

    fn effective_actions(&self) -> impl Iterator<Item = Action> + '_ {
        let d = self
            .detectors
            .values()
            .filter_map(|d| d.action)
            .chain(self.dates);
        let f = self.fhir.iter().map(|r| r.action);
        let h = self.hl7v2.iter().map(|r| r.action);
        d.chain(f).chain(h)
    }
}

fn trim_key(k: &[u8]) -> &[u8] {
    let end = k
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &k[..end]
}

/// A detector as the engine uses it.
#[derive(Debug, Clone, Copy)]
pub struct DetRule {
    pub label: u16,
    pub action: Action,
    pub keep_last: u16,
    pub any_type: bool,
}

impl DetRule {
    /// Whether findings of this detector count in a value of this FHIR kind.
    pub fn applies_to(&self, kind: ValueKind) -> bool {
        match kind {
            ValueKind::Structured(_) => self.any_type,
            _ => true,
        }
    }
}

/// `where` conditions of a step: `(child, literal)` pairs.
type Conds = Vec<(String, String)>;

/// A compiled FHIR path rule.
#[derive(Debug)]
struct Rule {
    steps: Vec<(Vec<u8>, Conds)>,
    action: Action,
    keep_last: u16,
    label: u16,
}

/// Where a rule is in its path: `step` is the index of the next element to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleState {
    rule: u16,
    step: u16,
}

/// FHIR path rules as a small NFA over element names.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// `*` rules: may start at any element of any resource.
    floating: Vec<u16>,
    /// Looked up for every resource and, with type-rooted rules, every typed object (see
    /// [`BuildWordHash`]).
    by_root: HashMap<Vec<u8>, Vec<u16>, BuildWordHash>,
    /// Some rule is rooted at a data type (checked per object only then).
    type_roots: bool,
}

/// A fast hash for the small configuration-keyed maps the walker reads per object: the
/// first and last eight bytes and the length, one multiply (SipHash, and even a byte-wise
/// FNV, showed in profiles: the type-rooted rules are looked up for every typed object).
/// The keys come from the configuration and a body's name is only looked up, so
/// collisions cost at most a few comparisons.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildWordHash;

/// See [`BuildWordHash`].
pub struct WordHash(u64);

const WORD_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for WordHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let (a, b) = if n >= 8 {
            let first = bytes.first_chunk::<8>().copied().unwrap_or_default();
            let last = bytes.last_chunk::<8>().copied().unwrap_or_default();
            (u64::from_le_bytes(first), u64::from_le_bytes(last))
        } else {
            let mut a = 0u64;
            for (i, &c) in bytes.iter().enumerate() {
                a |= u64::from(c) << (8 * i);
            }
            (a, 0)
        };
        self.0 =
            (self.0 ^ a ^ b.rotate_left(23) ^ (n as u64).rotate_left(56)).wrapping_mul(WORD_MUL);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(WORD_MUL);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

impl std::hash::BuildHasher for BuildWordHash {
    type Hasher = WordHash;
    #[inline]
    fn build_hasher(&self) -> WordHash {
        WordHash(0x243F_6A88_85A3_08D3)
    }
}

impl Rules {
    /// States at the root of a resource of type `rt`.
    pub fn start_states(&self, rt: &[u8], out: &mut Vec<RuleState>) {
        if let Some(rs) = self.by_root.get(rt) {
            out.extend(rs.iter().map(|&rule| RuleState { rule, step: 0 }));
        }
    }

    /// Member `key` (element `name`: `deceased` for `deceasedDateTime`) under `states`:
    /// continuing states go to `next`; rules whose last step this is are reported to
    /// `done`. A step matches the element name or the exact JSON key.
    pub fn step(
        &self,
        states: &[RuleState],
        name: &[u8],
        key: &[u8],
        next: &mut Vec<RuleState>,
        done: &mut dyn FnMut(Action, u16),
    ) {
        let floating = self
            .floating
            .iter()
            .map(|&rule| RuleState { rule, step: 0 });
        for st in states.iter().copied().chain(floating) {
            let Some(rule) = self.rules.get(usize::from(st.rule)) else {
                continue;
            };
            let Some((step_name, _)) = rule.steps.get(usize::from(st.step)) else {
                continue;
            };
            if step_name.as_slice() != name && step_name.as_slice() != key {
                continue;
            }
            if usize::from(st.step) + 1 == rule.steps.len() {
                done(rule.action, st.rule);
            } else {
                let ns = RuleState {
                    rule: st.rule,
                    step: st.step + 1,
                };
                if !next.contains(&ns) {
                    next.push(ns);
                }
            }
        }
    }

    /// Conditions of the step a state has just passed (its `where`).
    pub fn conds_before(&self, st: RuleState) -> &[(String, String)] {
        usize::from(st.step)
            .checked_sub(1)
            .and_then(|i| self.rules.get(usize::from(st.rule))?.steps.get(i))
            .map_or(&[], |(_, c)| c.as_slice())
    }

    /// Conditions of a rule's last step.
    pub fn conds_last(&self, rule: u16) -> &[(String, String)] {
        self.rules
            .get(usize::from(rule))
            .and_then(|r| r.steps.last())
            .map_or(&[], |(_, c)| c.as_slice())
    }

    pub fn keep_last(&self, rule: u16) -> u16 {
        self.rules.get(usize::from(rule)).map_or(4, |r| r.keep_last)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn has_type_roots(&self) -> bool {
        self.type_roots
    }
}

/// Counts of findings by (label, action). Never values.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub counts: Vec<(u16, Action, u32)>,
    /// Set when a message was refused as a whole.
    pub blocked: bool,
}

impl Report {
    pub fn add(&mut self, label: u16, action: Action) {
        for c in &mut self.counts {
            if c.0 == label && c.1 == action {
                c.2 = c.2.saturating_add(1);
                return;
            }
        }
        self.counts.push((label, action, 1));
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(c.2)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// A compiled `dlp:` section.
pub struct Engine {
    pub scanner: Scanner,
    /// Indexed by `Hit::detector`.
    pub detectors: Vec<DetRule>,
    pub rules: Rules,
    pub hl7: hl7::Hl7Rules,
    pub keys: Option<Keys>,
    pub date_shift_days: u32,
    /// The `dates:` action and its metric label.
    pub dates: Option<(Action, u16)>,
    /// What happens to an `Attachment.data`/`Binary.data` that cannot be read as text (an
    /// image, a PDF, undecodable base64): `Block` on routes with a `block` detector (never
    /// forwarded unscanned, whatever `unscannable` says), `Redact` (the data element goes) on
    /// routes that redact and `unscannable: block`, `None` (passed, counted) otherwise.
    pub opaque_attachment: Option<Action>,
    /// Metric label of attachments handled by `opaque_attachment`.
    pub opaque_label: u16,
    /// Shared: a request's audit record keeps the names of what DLP found (`DlpFindings`).
    labels: Vec<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("detectors", &self.detectors.len())
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Built-in detector settings: kind, default action, scope.
fn builtin(name: &str) -> Option<(Kind, Scope)> {
    Some(match name {
        "ssn" => (Kind::Ssn, Scope::Any),
        "card" => (Kind::Card, Scope::Any),
        "npi" => (Kind::Npi, Scope::Any),
        "mbi" => (Kind::Mbi, Scope::Any),
        "email" => (Kind::Email, Scope::Any),
        "phone" => (Kind::Phone, Scope::Any),
        "ip" => (Kind::Ip, Scope::Any),
        "vin" => (Kind::Vin, Scope::Any),
        // Dates and URLs are what typed FHIR elements are made of (`birthDate`,
        // `system`): those are for path rules; the detectors look at free text.
        "date" => (Kind::Date, Scope::Text),
        "url" => (Kind::Url, Scope::Text),
        _ => return None,
    })
}

/// Strength of an action, for choosing between overlapping findings and rules.
fn action_rank(a: Action) -> u8 {
    match a {
        Action::Block => 6,
        Action::Redact => 5,
        Action::Generalize => 4,
        Action::DateShift => 3,
        Action::Hash => 2,
        Action::Mask => 1,
        Action::Report => 0,
    }
}

impl Engine {
    /// `a` wins over (or ties with) `b` when one element matches several rules.
    pub fn stronger(a: Action, b: Action) -> bool {
        action_rank(a) >= action_rank(b)
    }

    /// Number of metric labels (detector and rule names); `label` indices are below it.
    pub fn label_count(&self) -> usize {
        self.labels.len()
    }

    pub fn label(&self, idx: u16) -> &str {
        self.labels.get(usize::from(idx)).map_or("unknown", |l| l)
    }

    /// [`Engine::label`], shared.
    pub fn label_arc(&self, idx: u16) -> std::sync::Arc<str> {
        self.labels
            .get(usize::from(idx))
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::from("unknown"))
    }

    pub fn rule_label(&self, rule: u16) -> u16 {
        self.rules
            .rules
            .get(usize::from(rule))
            .map_or(0, |r| r.label)
    }

    fn intern(labels: &mut Vec<std::sync::Arc<str>>, s: &str) -> u16 {
        if let Some(i) = labels.iter().position(|l| &**l == s) {
            return u16::try_from(i).unwrap_or(u16::MAX);
        }
        labels.push(std::sync::Arc::from(s));
        u16::try_from(labels.len() - 1).unwrap_or(u16::MAX)
    }

    /// Compile a `dlp:` section (after `problems` found nothing).
    pub fn compile(cfg: &DlpConfig, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Engine, String> {
        let mut labels: Vec<std::sync::Arc<str>> = Vec::new();
        // Detectors: the preset's, then the policy's (which override by name).
        let mut dets: BTreeMap<String, DetectorConfig> = BTreeMap::new();
        let mut fhir: Vec<FhirRuleConfig> = Vec::new();
        let mut hl7r: Vec<Hl7RuleConfig> = Vec::new();
        if cfg.preset == Some(Preset::SafeHarbor) {
            let (d, f, h) = safe_harbor();
            dets.extend(d);
            fhir.extend(f);
            hl7r.extend(h);
        }
        for (k, v) in &cfg.detectors {
            dets.insert(k.clone(), v.clone());
        }
        // A policy rule on the same path replaces the preset's.
        for r in &cfg.fhir {
            fhir.retain(|p| p.path != r.path);
        }
        fhir.extend(cfg.fhir.iter().cloned());
        for r in &cfg.hl7v2 {
            hl7r.retain(|p| p.field != r.field);
        }
        hl7r.extend(cfg.hl7v2.iter().cloned());

        let mut specs = Vec::new();
        let mut detectors = Vec::new();
        for (name, d) in &dets {
            if !d.enabled {
                continue;
            }
            let (kind, scope) = match (builtin(name), &d.pattern, d.keywords.is_empty()) {
                (Some(b), None, true) => b,
                (_, Some(p), _) => (Kind::Regex(p.clone()), Scope::Any),
                (None, None, false) => (Kind::Keywords(d.keywords.clone()), Scope::Text),
                _ => return Err(format!("detector `{name}` has nothing to look for")),
            };
            specs.push(DetectorSpec {
                name: name.clone(),
                kind,
                min_confidence: d.min_confidence,
                boost: d.boost.clone(),
                suppress: d.suppress.clone(),
            });
            detectors.push(DetRule {
                label: Self::intern(&mut labels, name),
                action: d.action.unwrap_or(Action::Redact),
                keep_last: d.keep_last.unwrap_or_else(default_keep_last),
                any_type: d.scope.unwrap_or(scope) == Scope::Any,
            });
        }
        let mut scanner =
            Scanner::new(&specs, cfg.min_confidence).map_err(|e| format!("detectors: {e}"))?;
        // A merged finding is attributed to the strongest action first, then to a detector
        // that applies to typed values: the weakest member must never decide its fate.
        let priority: Vec<u8> = detectors
            .iter()
            .map(|d| action_rank(d.action) * 2 + u8::from(d.any_type))
            .collect();
        scanner.set_priority(&priority);

        let mut rules = Rules::default();
        for r in &fhir {
            let p = path::parse(&r.path).map_err(|e| format!("fhir path `{}`: {e}", r.path))?;
            let idx = u16::try_from(rules.rules.len()).map_err(|_| "too many fhir rules")?;
            let label = Self::intern(&mut labels, r.name.as_deref().unwrap_or(&r.path));
            rules.rules.push(Rule {
                steps: p
                    .steps
                    .into_iter()
                    .map(|s| (s.name.into_bytes(), s.conds))
                    .collect(),
                action: r.action,
                keep_last: r.keep_last.unwrap_or_else(default_keep_last),
                label,
            });
            match p.root {
                Some(root) => {
                    if crate::fhir::validate::complex_type_of(root.as_bytes()).is_some() {
                        rules.type_roots = true;
                    }
                    rules
                        .by_root
                        .entry(root.into_bytes())
                        .or_default()
                        .push(idx)
                }
                None => rules.floating.push(idx),
            }
        }
        let mut hl7_rules = hl7::Hl7Rules::default();
        for r in &hl7r {
            let at = hl7::parse_field_ref(&r.field)?;
            let label = Self::intern(&mut labels, r.name.as_deref().unwrap_or(&r.field));
            hl7_rules.push(
                at,
                r.action,
                r.keep_last.unwrap_or_else(default_keep_last),
                label,
            );
        }
        let keys = match &cfg.key_file {
            Some(f) => {
                let k =
                    std::fs::read(resolve(f)).map_err(|e| format!("key_file {f}: {}", e.kind()))?;
                Some(Keys::new(trim_key(&k)))
            }
            None => None,
        };
        let dates = cfg
            .dates
            .or((cfg.preset == Some(Preset::SafeHarbor)).then_some(Action::Generalize))
            .map(|a| (a, Self::intern(&mut labels, "dates")));
        let opaque_attachment = if detectors.iter().any(|d| d.action == Action::Block) {
            Some(Action::Block)
        } else if cfg.unscannable == Unscannable::Block
            && detectors.iter().any(|d| d.action != Action::Report)
        {
            Some(Action::Redact)
        } else {
            None
        };
        let opaque_label = Self::intern(&mut labels, "unscannable_attachment");
        Ok(Engine {
            scanner,
            detectors,
            rules,
            hl7: hl7_rules,
            keys,
            date_shift_days: cfg.date_shift_days,
            dates,
            opaque_attachment,
            opaque_label,
            labels,
        })
    }

    /// Plain text: every finding replaced in place.
    pub fn process_text(&self, body: &[u8], report: &mut Report) -> TextOutcome {
        let mut hits = Vec::new();
        self.scanner.scan(body, &mut hits);
        let mut out: Option<Vec<u8>> = None;
        let mut cur = 0;
        for h in &hits {
            let Some(det) = self.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            report.add(det.label, det.action);
            let (s, e) = (h.start, h.end);
            let repl = match det.action {
                Action::Block => {
                    report.blocked = true;
                    return TextOutcome::Blocked;
                }
                Action::Report => continue,
                Action::Mask => actions::mask(&body[s..e], usize::from(det.keep_last)),
                Action::Hash => match &self.keys {
                    Some(k) => k.hash(&body[s..e]),
                    None => actions::REDACTED.to_vec(),
                },
                _ => actions::REDACTED.to_vec(),
            };
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
            o.extend_from_slice(&body[cur..s]);
            o.extend_from_slice(&repl);
            cur = e;
        }
        match out {
            Some(mut o) => {
                o.extend_from_slice(&body[cur..]);
                TextOutcome::Rewritten(o)
            }
            None => TextOutcome::Unchanged,
        }
    }
}

pub enum TextOutcome {
    Unchanged,
    Rewritten(Vec<u8>),
    Blocked,
}

/// The `safe_harbor` preset: HIPAA's 18 identifiers (45 CFR 164.514(b)(2)(i)) as far as
/// content shows them. The README's table says, identifier by identifier, which rule or
/// detector below covers it. Names, addresses, contact points, reference displays and
/// attachments are matched by data type, so they are covered in every resource; every
/// typed date is generalised to its year (`Engine::compile` sets `dates`).
#[allow(clippy::type_complexity)]
fn safe_harbor() -> (
    BTreeMap<String, DetectorConfig>,
    Vec<FhirRuleConfig>,
    Vec<Hl7RuleConfig>,
) {
    let mut d = BTreeMap::new();
    for n in [
        "ssn", "card", "npi", "mbi", "email", "phone", "ip", "date", "vin", "url",
    ] {
        d.insert(
            n.to_owned(),
            DetectorConfig {
                enabled: true,
                ..Default::default()
            },
        );
    }
    let f = |path: &str, action: Action| FhirRuleConfig {
        path: path.to_owned(),
        action,
        keep_last: None,
        name: None,
    };
    let fhir = vec![
        // Names, addresses and contact points wherever their data types appear (a
        // practitioner's too: over-redaction is the safe side of a preset).
        f("HumanName.family", Action::Redact),
        f("HumanName.given", Action::Redact),
        f("HumanName.text", Action::Redact),
        f("HumanName.prefix", Action::Redact),
        f("HumanName.suffix", Action::Redact),
        f("Address.line", Action::Redact),
        f("Address.city", Action::Redact),
        f("Address.district", Action::Redact),
        f("Address.text", Action::Redact),
        f("Address.postalCode", Action::Generalize),
        f("ContactPoint.value", Action::Redact),
        // A reference's display is usually the person's name.
        f("Reference.display", Action::Redact),
        // Documents and images travel base64-encoded: they cannot be inspected.
        f("Attachment.data", Action::Redact),
        f("Attachment.url", Action::Redact),
        f("Patient.birthDate", Action::Generalize),
        f("Patient.deceased", Action::Generalize),
        f("RelatedPerson.birthDate", Action::Generalize),
        f("Person.birthDate", Action::Generalize),
        f("Patient.identifier", Action::Redact),
        f("RelatedPerson.identifier", Action::Redact),
        f("Person.identifier", Action::Redact),
        f("Coverage.identifier", Action::Redact),
        f("Coverage.subscriberId", Action::Redact),
        f("Account.identifier", Action::Redact),
        f("Device.identifier", Action::Redact),
        f("Device.serialNumber", Action::Redact),
        f("Device.udiCarrier", Action::Redact),
        f("Patient.photo", Action::Redact),
        f("Media.content", Action::Redact),
        f("Binary.data", Action::Redact),
        // Narrative is free text written for people: names, places and relatives'
        // details no detector can find. Safe Harbor cannot vouch for it, so it is replaced
        // by a `[REDACTED]` div (the element is required, so it stays valid R4).
        f("Narrative.div", Action::Redact),
    ];
    let h = |field: &str, action: Action| Hl7RuleConfig {
        field: field.to_owned(),
        action,
        keep_last: None,
        name: None,
    };
    let hl7 = vec![
        h("PID-2", Action::Redact),
        h("PID-3", Action::Redact),
        h("PID-4", Action::Redact),
        h("PID-5", Action::Redact),
        h("PID-6", Action::Redact),
        h("PID-7", Action::Generalize),
        h("PID-9", Action::Redact),
        h("PID-11", Action::Generalize),
        h("PID-13", Action::Redact),
        h("PID-14", Action::Redact),
        h("PID-18", Action::Redact),
        h("PID-19", Action::Redact),
        h("PID-20", Action::Redact),
        h("PID-21", Action::Redact),
        h("PID-29", Action::Generalize),
        h("NK1-2", Action::Redact),
        h("NK1-4", Action::Generalize),
        h("NK1-5", Action::Redact),
        h("NK1-6", Action::Redact),
        h("PV1-19", Action::Redact),
        h("PV1-44", Action::Generalize),
        h("PV1-45", Action::Generalize),
        h("MRG-1", Action::Redact),
        h("GT1-3", Action::Redact),
        h("GT1-5", Action::Generalize),
        h("GT1-6", Action::Redact),
        h("GT1-12", Action::Redact),
        h("IN1-16", Action::Redact),
        h("IN1-19", Action::Generalize),
        h("IN1-36", Action::Redact),
    ];
    (d, fhir, hl7)
}

/// `{"ssn":{"redact":2}}`: counts by detector or rule and action.
pub fn counts_json(eng: &Engine, report: &Report) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for &(label, act, n) in &report.counts {
        let e = m
            .entry(eng.label(label).to_owned())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let serde_json::Value::Object(o) = e {
            o.insert(act.label().to_owned(), serde_json::Value::from(n));
        }
    }
    serde_json::Value::Object(m)
}

/// The counts of one direction's report for the request's audit record (names shared with
/// the engine: no strings are built on the request path).
pub fn findings(eng: &Engine, report: &Report) -> Vec<crate::context::DlpCount> {
    report
        .counts
        .iter()
        .map(|&(label, act, n)| crate::context::DlpCount {
            label: eng.label_arc(label),
            action: act.label(),
            n,
        })
        .collect()
}

/// `{"ssn":{"redact":2}}`-style counts for logs.
pub fn summary(eng: &Engine, report: &Report) -> String {
    counts_json(eng, report).to_string()
}
