//! A FHIR answer read from the gateway's JSON token stream (`crate::json::Tokenizer`) for
//! the compartment guard, without building a tree: one pass keeps only what the guard's
//! checks look at — the document's `resourceType` and `id`, every `reference` string at a
//! member path short enough to be a compartment element, the `resourceType` of every object
//! (for the scopes), and a Bundle's entries (`resource`, `request`, `search.mode`) and paging
//! links.
//!
//! The questions asked of an [`Answer`] are the ones `fhir::compartment` and
//! `fhir::scope_filter` answer on a `serde_json::Value`, with the same results (the guard's
//! differential tests compare them on generated variants). The grammar is `strict_json`'s
//! exactly: the same tokenizer and depth limit, and the numbers serde_json cannot hold
//! (`1e400`) refused, so a body read here is one `strict_json` reads, and one refused here is
//! handed to `strict_json` to say why (duplicate member or malformed).

use std::borrow::Cow;

use crate::json::{self, Kind, Token};

use super::compartment::{is_patient_like, references_patient, relative_patient};
use super::scope_filter::Grants;
use super::strict_json::MAX_DEPTH;

/// The longest compartment element path (`activity.detail.performer`), in member names; a
/// unit test holds the tables to it. Deeper `reference`s cannot decide membership.
pub const MAX_SEGMENTS: usize = 3;

/// A member the checks read: absent, a string, or any other value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Field<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Other,
}

impl Field<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// How a member is present: absent, an array, or another value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    #[default]
    Absent,
    Array,
    Other,
}

/// The members of a resource object the checks read directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource<'a> {
    pub resource_type: Field<'a>,
    pub id: Field<'a>,
}

/// `entry[i].resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResource<'a> {
    Absent,
    NotObject,
    Object(Resource<'a>),
}

/// One item of the document's `entry` array.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The item is an object (anything else has no members).
    pub object: bool,
    pub resource: EntryResource<'a>,
    /// A `request` member is present (any value).
    pub request: bool,
    /// `search.mode`, when `search` is an object and `mode` a string.
    pub mode: Option<Cow<'a, str>>,
    /// This entry's resource's references and types: ranges of `Answer::entry_refs` and
    /// `Answer::types`.
    refs: (usize, usize),
    types: (usize, usize),
}

/// A member name where it is in the body: its content's span, and whether it holds an
/// escape (then it is decoded to be compared). Copied, never allocated: a path is three of
/// these, and every container the reader enters gets two paths.
#[derive(Debug, Clone, Copy, Default)]
struct Name {
    start: usize,
    end: usize,
    esc: bool,
}

impl Name {
    fn of(t: &Token) -> Name {
        Name {
            start: t.start,
            end: t.end,
            esc: t.esc,
        }
    }

    /// The name's bytes, decoded (the lexer checked its escapes and UTF-8 already).
    #[inline]
    fn bytes<'a>(&self, b: &'a [u8]) -> Result<Cow<'a, [u8]>, NotRead> {
        let raw = b.get(self.start..self.end).ok_or(NotRead)?;
        if !self.esc {
            return Ok(Cow::Borrowed(raw));
        }
        Ok(json::decode(raw, true)?)
    }
}

/// A member path from a resource's root (names only: an array after a member is crossed).
#[derive(Debug, Clone, Copy, Default)]
struct Path {
    n: usize,
    names: [Name; MAX_SEGMENTS],
}

impl Path {
    fn push(&self, name: Name) -> Option<Path> {
        let mut p = *self;
        *p.names.get_mut(p.n)? = name;
        p.n += 1;
        Some(p)
    }

    /// Is this the dotted element path `dotted` (`participant.individual`), over body `b`?
    fn is(&self, b: &[u8], dotted: &str) -> bool {
        let mut parts = dotted.split('.');
        self.names[..self.n].iter().all(|n| {
            parts
                .next()
                .is_some_and(|part| n.bytes(b).is_ok_and(|nb| *nb == *part.as_bytes()))
        }) && parts.next().is_none()
    }
}

/// How a container is reached from a resource's root, following the compartment reader's
/// rule (`fhir::compartment`): member names, each optionally followed by one array level.
#[derive(Debug, Clone, Copy, Default)]
enum Reach {
    /// Not on any element path (an array inside an array, or too deep).
    #[default]
    Dead,
    /// An object at this path: its `reference` member is a reference at the path.
    Obj(Path),
    /// An array that is the value of the member at this path: its objects are at the path.
    Arr(Path),
}

impl Reach {
    /// The reach of a container value: of `key`'s value in an object, or of an item in an
    /// array.
    fn child(&self, key: Option<Name>, obj: bool) -> Reach {
        let path = match (self, key) {
            (Reach::Obj(p), Some(k)) => p.push(k),
            (Reach::Arr(p), None) if obj => return Reach::Obj(*p),
            _ => None,
        };
        match path {
            Some(p) if obj => Reach::Obj(p),
            Some(p) => Reach::Arr(p),
            None => Reach::Dead,
        }
    }

    /// The path of a `reference` string member (decoded name `key`) of this container, if
    /// it is one.
    fn reference(&self, key: Option<&[u8]>) -> Option<&Path> {
        match (self, key) {
            (Reach::Obj(p), Some(b"reference")) if p.n > 0 => Some(p),
            _ => None,
        }
    }
}

/// What a container is to the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The document (an object).
    Doc,
    /// The document's `entry` array.
    Entries,
    Entry(usize),
    /// `entry[i].resource` (an object).
    Resource(usize),
    /// `entry[i].search` (an object).
    Search(usize),
    /// The document's `link` array.
    Links,
    Link(usize),
    Other,
}

struct Frame<'a> {
    role: Role,
    /// The reach from the document's root, and from the enclosing entry's resource.
    doc: Reach,
    res: Reach,
    /// Inside the value of the document's `entry` member.
    under_entry: bool,
    /// Inside `entry[i].resource`.
    in_resource: Option<usize>,
    /// The member whose value comes next (objects): where it is, and its decoded bytes
    /// (borrowed unless it has an escape).
    key: Option<(Name, Cow<'a, [u8]>)>,
}

/// The `resourceType` of one object somewhere in the document.
#[derive(Debug, Clone)]
struct TypeSeen<'a> {
    /// `None`: not a string.
    ty: Option<Cow<'a, str>>,
    /// The document's own.
    doc_root: bool,
    under_entry: bool,
    /// An entry resource's own.
    res_root: bool,
}

/// What the compartment guard reads in one answer.
#[derive(Debug, Default)]
pub struct Answer<'a> {
    /// The document is an object.
    pub object: bool,
    pub root: Resource<'a>,
    pub entry: Shape,
    pub entries: Vec<Entry<'a>>,
    pub link: Shape,
    /// `link[].url` per link (`None`: the item is no object, or its `url` no string).
    pub links: Vec<Option<Cow<'a, str>>>,
    doc_refs: Vec<(Path, Cow<'a, str>)>,
    entry_refs: Vec<(Path, Cow<'a, str>)>,
    types: Vec<TypeSeen<'a>>,
    /// The body read (the paths' names are spans of it).
    body: &'a [u8],
}

/// Whose references: the document's, or an entry resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Doc,
    Entry(usize),
}

/// A number `strict_json` reads (it converts each with serde_json, which refuses what no
/// f64 holds). Short plain numbers always fit.
pub(crate) fn number_ok(raw: &[u8]) -> bool {
    (raw.len() <= 15 && !raw.iter().any(|c| matches!(c, b'e' | b'E')))
        || serde_json::from_slice::<serde_json::Value>(raw).is_ok()
}

/// Why a body was not read here: the caller asks `strict_json` (duplicate or malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRead;

impl From<json::Error> for NotRead {
    fn from(_: json::Error) -> Self {
        NotRead
    }
}

fn text<'a>(b: &'a [u8], t: &Token) -> Result<Cow<'a, str>, NotRead> {
    Ok(json::decode_str(t.raw(b), t.esc)?)
}

/// Read `b` (a whole answer) from the token stream.
pub fn read(b: &[u8]) -> Result<Answer<'_>, NotRead> {
    read_indexed(b, None)
}

/// Read `b` from its index when a policy lexed it already (`json::LexedBody`; it must be the
/// index of exactly `b`), else lex it now.
///
/// Lexing now builds an index too (for a body up to [`INDEX_AHEAD_MAX`]): its one-loop pass
/// is cheaper than the tokenizer's state machine, and it replays the tokenizer's tokens and
/// errors exactly (`json::tests`), so the answer read is the same.
pub fn read_indexed<'a>(
    b: &'a [u8],
    index: Option<&'a json::Index>,
) -> Result<Answer<'a>, NotRead> {
    match index {
        Some(ix) if ix.body_len() == b.len() => read_index(b, ix),
        None if b.len() <= INDEX_AHEAD_MAX => match json::Index::build(b) {
            Some(ix) => read_index(b, &ix),
            None => read_tokens(b, json::Source::new(b, None, MAX_DEPTH)),
        },
        _ => read_tokens(b, json::Source::new(b, None, MAX_DEPTH)),
    }
}

/// [`read_tokens`] over the index's tokens directly. The cursor it replaces would yield the
/// same tokens and then fail (on the index's error, or on `TooDeep` for nesting beyond this
/// reader's limit); any failure is `NotRead`, whatever comes before it, so those two cases
/// are answered first and the tokens then read without per-token checks.
fn read_index<'a>(b: &'a [u8], ix: &json::Index) -> Result<Answer<'a>, NotRead> {
    if ix.error().is_some() || ix.nesting() > MAX_DEPTH {
        return Err(NotRead);
    }
    walk(b, ix.tokens().map(Ok))
}

/// The largest body [`read_indexed`] indexes for itself: an index holds 16 bytes per token
/// (up to eight times the body), worth it for answers of ordinary size; a larger one is read
/// from the tokenizer, in constant memory.
pub const INDEX_AHEAD_MAX: usize = 1 << 20;

/// Read from a token source over `b` (lexed now, or replayed from the body's index).
pub fn read_tokens<'a>(b: &'a [u8], mut t: json::Source<'_>) -> Result<Answer<'a>, NotRead> {
    walk(b, std::iter::from_fn(move || t.next().transpose()))
}

/// The one reader, over tokens from either source.
fn walk<'a>(
    b: &'a [u8],
    tokens: impl Iterator<Item = Result<Token, json::Error>>,
) -> Result<Answer<'a>, NotRead> {
    let mut a = Answer {
        body: b,
        ..Answer::default()
    };
    let mut stack: Vec<Frame<'a>> = Vec::with_capacity(16);
    for tok in tokens {
        let tok = tok?;
        let obj = tok.kind == Kind::ObjStart;
        let container = obj || tok.kind == Kind::ArrStart;
        match tok.kind {
            Kind::Key => {
                if let Some(f) = stack.last_mut() {
                    let name = Name::of(&tok);
                    f.key = Some((name, name.bytes(b)?));
                }
                continue;
            }
            Kind::ObjEnd | Kind::ArrEnd => {
                stack.pop();
                continue;
            }
            Kind::Num if !number_ok(tok.raw(b)) => return Err(NotRead),
            _ => {}
        }
        let Some(p) = stack.last_mut() else {
            // The document itself.
            if container {
                a.object = obj;
                stack.push(Frame {
                    role: if obj { Role::Doc } else { Role::Other },
                    doc: if obj {
                        Reach::Obj(Path::default())
                    } else {
                        Reach::Dead
                    },
                    res: Reach::Dead,
                    under_entry: false,
                    in_resource: None,
                    key: None,
                });
            }
            continue;
        };
        let key: Option<&[u8]> = p.key.as_ref().map(|k| k.1.as_ref());
        // Most values: a scalar that no check reads (not a type, not a reference, in no
        // container the checks know by role).
        if !container
            && p.role == Role::Other
            && !matches!(key, Some(b"resourceType" | b"reference"))
        {
            continue;
        }
        let string = || -> Result<Field<'a>, NotRead> {
            Ok(if tok.kind == Kind::Str {
                Field::Str(text(b, &tok)?)
            } else {
                Field::Other
            })
        };
        // The scopes read every object's type.
        if key == Some(b"resourceType") {
            a.types.push(TypeSeen {
                ty: match string()? {
                    Field::Str(s) => Some(s),
                    _ => None,
                },
                doc_root: p.role == Role::Doc,
                under_entry: p.under_entry,
                res_root: matches!(p.role, Role::Resource(_)),
            });
            if let Some(i) = p.in_resource {
                if let Some(e) = a.entries.get_mut(i) {
                    e.types.1 = a.types.len();
                }
            }
        }
        // References on element paths.
        if tok.kind == Kind::Str {
            if let Some(path) = p.doc.reference(key) {
                a.doc_refs.push((*path, text(b, &tok)?));
            }
            if let (Some(path), Some(i)) = (p.res.reference(key), p.in_resource) {
                a.entry_refs.push((*path, text(b, &tok)?));
                if let Some(e) = a.entries.get_mut(i) {
                    e.refs.1 = a.entry_refs.len();
                }
            }
        }
        // The members the checks read by name, and the containers' roles.
        let mut role = Role::Other;
        match (p.role, key) {
            (Role::Doc, Some(b"resourceType")) => a.root.resource_type = string()?,
            (Role::Doc, Some(b"id")) => a.root.id = string()?,
            (Role::Doc, Some(b"entry")) => {
                a.entry = if tok.kind == Kind::ArrStart {
                    role = Role::Entries;
                    Shape::Array
                } else {
                    Shape::Other
                }
            }
            (Role::Doc, Some(b"link")) => {
                a.link = if tok.kind == Kind::ArrStart {
                    role = Role::Links;
                    Shape::Array
                } else {
                    Shape::Other
                }
            }
            (Role::Entries, None) => {
                let i = a.entries.len();
                let (r, t) = (a.entry_refs.len(), a.types.len());
                a.entries.push(Entry {
                    object: obj,
                    resource: EntryResource::Absent,
                    request: false,
                    mode: None,
                    refs: (r, r),
                    types: (t, t),
                });
                if obj {
                    role = Role::Entry(i);
                }
            }
            (Role::Entry(i), Some(k)) => {
                if let Some(e) = a.entries.get_mut(i) {
                    match k {
                        b"resource" if obj => {
                            e.resource = EntryResource::Object(Resource::default());
                            // Its references and types come next, in one run each.
                            e.refs = (a.entry_refs.len(), a.entry_refs.len());
                            e.types = (a.types.len(), a.types.len());
                            role = Role::Resource(i);
                        }
                        b"resource" => e.resource = EntryResource::NotObject,
                        b"request" => e.request = true,
                        b"search" if obj => role = Role::Search(i),
                        _ => {}
                    }
                }
            }
            (Role::Search(i), Some(b"mode")) => {
                if let (Some(e), Field::Str(m)) = (a.entries.get_mut(i), string()?) {
                    e.mode = Some(m);
                }
            }
            (Role::Resource(i), Some(k @ (b"resourceType" | b"id"))) => {
                if let Some(EntryResource::Object(r)) =
                    a.entries.get_mut(i).map(|e| &mut e.resource)
                {
                    let f = string()?;
                    if k == b"id" {
                        r.id = f;
                    } else {
                        r.resource_type = f;
                    }
                }
            }
            (Role::Links, None) => {
                if obj {
                    role = Role::Link(a.links.len());
                }
                a.links.push(None);
            }
            (Role::Link(j), Some(b"url")) => {
                if let (Some(l), Field::Str(u)) = (a.links.get_mut(j), string()?) {
                    *l = Some(u);
                }
            }
            _ => {}
        }
        if container {
            let k = p.key.as_ref().map(|k| k.0);
            let frame = Frame {
                role,
                doc: p.doc.child(k, obj),
                res: if matches!(role, Role::Resource(_)) {
                    Reach::Obj(Path::default())
                } else {
                    p.res.child(k, obj)
                },
                under_entry: p.under_entry || (p.role == Role::Doc && key == Some(b"entry")),
                in_resource: match role {
                    Role::Resource(i) => Some(i),
                    _ => p.in_resource,
                },
                key: None,
            };
            stack.push(frame);
        }
    }
    Ok(a)
}

impl<'a> Answer<'a> {
    /// The document's root, or an entry's resource (`None`: no resource object).
    fn resource(&self, o: Owner) -> Option<&Resource<'a>> {
        match o {
            Owner::Doc => self.object.then_some(&self.root),
            Owner::Entry(i) => match self.entries.get(i).map(|e| &e.resource) {
                Some(EntryResource::Object(r)) => Some(r),
                _ => None,
            },
        }
    }

    fn refs(&self, o: Owner) -> &[(Path, Cow<'a, str>)] {
        match o {
            Owner::Doc => &self.doc_refs,
            Owner::Entry(i) => self
                .entries
                .get(i)
                .and_then(|e| self.entry_refs.get(e.refs.0..e.refs.1))
                .unwrap_or_default(),
        }
    }

    /// Every reference at one of these element paths.
    fn refs_at<'s>(&'s self, o: Owner, paths: &'s [&'s str]) -> impl Iterator<Item = &'s str> + 's {
        self.refs(o)
            .iter()
            .filter(|(p, _)| paths.iter().any(|d| p.is(self.body, d)))
            .map(|(_, r)| r.as_ref())
    }

    /// `fhir::compartment::in_patient_compartment` of the document (`Owner::Doc`) or of an
    /// entry's resource.
    pub fn in_compartment(&self, o: Owner, patient_id: &str) -> bool {
        let Some(r) = self.resource(o) else {
            return false;
        };
        let Some(rtype) = r.resource_type.as_str() else {
            return false;
        };
        if rtype == "Patient" {
            return r.id.as_str() == Some(patient_id);
        }
        let Some(params) = super::patient_compartment(rtype) else {
            return false;
        };
        params.iter().any(|(_, paths)| {
            self.refs_at(o, paths)
                .any(|r| references_patient(r, patient_id))
        })
    }

    /// `fhir::compartment::owned_by` of the document.
    pub fn owned_by(&self, patient_id: &str) -> bool {
        let Some(r) = self.resource(Owner::Doc) else {
            return false;
        };
        let Some(rtype) = r.resource_type.as_str() else {
            return false;
        };
        if rtype == "Patient" {
            return r.id.as_str() == Some(patient_id);
        }
        let Some(params) = super::patient_compartment(rtype) else {
            return false;
        };
        let Some((_, primary)) = params.first() else {
            return false;
        };
        if !self
            .refs_at(Owner::Doc, primary)
            .any(|r| relative_patient(r, patient_id))
        {
            return false;
        }
        params.iter().all(|(_, paths)| {
            self.refs_at(Owner::Doc, paths)
                .all(|r| !is_patient_like(r) || relative_patient(r, patient_id))
        })
    }

    /// Would `fhir_authz`'s Bundle filter keep every entry (so nothing changes)? True when
    /// `entry` is no array (the filter leaves such a Bundle as it is).
    pub fn keeps_every_entry(&self, patient_id: &str) -> bool {
        if self.entry != Shape::Array {
            return true;
        }
        self.entries.iter().enumerate().all(|(i, e)| {
            e.object
                && match &e.resource {
                    EntryResource::Absent => e.request,
                    EntryResource::NotObject => false,
                    EntryResource::Object(r) => {
                        r.resource_type.as_str() == Some("OperationOutcome")
                            || self.in_compartment(Owner::Entry(i), patient_id)
                    }
                }
        })
    }

    fn types_ok<'s>(
        g: &Grants<'_>,
        mut types: impl Iterator<Item = &'s TypeSeen<'a>>,
        primary: impl Fn(&TypeSeen<'a>) -> bool,
    ) -> bool
    where
        'a: 's,
    {
        types.all(|t| {
            t.ty.as_deref()
                .is_some_and(|ty| g.type_allowed(ty, primary(t)))
        })
    }

    /// Would `Grants::filter` (either mode) leave this answer as it is, `Ok(false)`? `false`
    /// also when it cannot be told here (a Bundle inside an entry).
    pub fn scopes_pass(&self, g: &Grants<'_>) -> bool {
        if self.root.resource_type.as_str() != Some("Bundle") {
            // The whole document is one resource, granted entirely.
            return self.object
                && self.root.resource_type.as_str().is_some()
                && Self::types_ok(g, self.types.iter(), |t| t.doc_root);
        }
        match self.entry {
            Shape::Absent => {}
            Shape::Other => return false,
            Shape::Array => {
                for e in &self.entries {
                    let r = match &e.resource {
                        EntryResource::Absent => continue,
                        EntryResource::NotObject => return false,
                        EntryResource::Object(r) => r,
                    };
                    match r.resource_type.as_str() {
                        Some("Bundle") | None => return false,
                        Some(_) => {}
                    }
                    let is_match = !matches!(e.mode.as_deref(), Some("include" | "outcome"));
                    let types = self.types.get(e.types.0..e.types.1).unwrap_or_default();
                    if !Self::types_ok(g, types.iter(), |t| t.res_root && is_match) {
                        return false;
                    }
                }
            }
        }
        // What the Bundle carries besides its entries.
        Self::types_ok(
            g,
            self.types.iter().filter(|t| !t.under_entry && !t.doc_root),
            |_| false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_paths_fit_max_segments() {
        for (_, params) in super::super::tables::PATIENT_COMPARTMENT {
            for (_, paths) in *params {
                for p in *paths {
                    assert!(p.split('.').count() <= MAX_SEGMENTS, "{p}");
                }
            }
        }
    }

    #[test]
    fn reads_what_the_checks_need() {
        let b = br#"{"entry":[{"resource":{"subject":{"reference":"Patient/a"},"resourceType":"Observation","id":"o"},"search":{"mode":"match"}},5],"resourceType":"Bundle","link":[{"url":"u"},{}]}"#;
        let a = read(b).unwrap();
        assert_eq!(a.root.resource_type.as_str(), Some("Bundle"));
        assert_eq!(a.entries.len(), 2);
        assert!(!a.entries[1].object);
        assert_eq!(a.entries[0].mode.as_deref(), Some("match"));
        assert!(a.in_compartment(Owner::Entry(0), "a"));
        assert!(!a.in_compartment(Owner::Entry(0), "b"));
        assert_eq!(a.links, vec![Some("u".into()), None]);
        // One array level after a member, as the tree reader takes it; no deeper.
        let nested = br#"{"resourceType":"Observation","subject":[[{"reference":"Patient/a"}]]}"#;
        assert!(!read(nested).unwrap().in_compartment(Owner::Doc, "a"));
        let flat = br#"{"resourceType":"Observation","subject":[{"reference":"Patient/a"}]}"#;
        assert!(read(flat).unwrap().in_compartment(Owner::Doc, "a"));
        assert!(read(br#"{"a":1e400}"#).is_err());
        assert!(read(br#"{"a":1,"a":2}"#).is_err());
    }

    /// The answer read from the tokenizer and from an index (what `read` builds now, and
    /// what a shared `LexedBody` holds) is the same, field for field, on generated bodies:
    /// escaped names on every path the reader follows, references at every depth, numbers
    /// serde_json refuses, duplicates, and every truncation of each.
    #[test]
    fn tokenizer_and_index_read_the_same_answer() {
        let names = [
            "reference",
            "refer\\u0065nce",
            "resourceType",
            "resourc\\u0065Type",
            "id",
            "\\u0069d",
            "entry",
            "resource",
            "search",
            "mode",
            "link",
            "url",
            "subject",
            "participant",
            "individual",
        ];
        let mut docs: Vec<String> = Vec::new();
        for n in names {
            docs.push(format!(
                r#"{{"resourceType":"Observation","{n}":"Patient/a","subject":{{"{n}":"Patient/a"}},"performer":[{{"{n}":"Patient/b"}}],"participant":[{{"individual":{{"{n}":"Patient/c"}}}}]}}"#
            ));
            docs.push(format!(
                r#"{{"resourceType":"Bundle","{n}":[{{"resource":{{"resourceType":"Encounter","{n}":"x","subject":{{"{n}":"Patient/a"}}}},"search":{{"{n}":"match"}}}},{{"request":1}},7],"link":[{{"{n}":"u"}},{{}}]}}"#
            ));
        }
        docs.push(r#"{"resourceType":"Observation","a":1e400}"#.into());
        docs.push(r#"{"resourceType":"Observation","a":123456789012345678901}"#.into());
        docs.push(r#"{"resourceType":"Observation","id":"x","\u0069d":"y"}"#.into());
        docs.push(format!("{}1{}", "[".repeat(127), "]".repeat(127)));
        docs.push(format!("{}1{}", "[".repeat(128), "]".repeat(128)));
        let mut read_both = 0;
        for d in &docs {
            let d = d.as_bytes();
            for cut in 0..=d.len() {
                let b = &d[..cut];
                let lexed = read_tokens(b, json::Source::new(b, None, MAX_DEPTH));
                let ix = json::Index::build(b).unwrap();
                let indexed = read_indexed(b, Some(&ix));
                let fresh = read(b);
                let show = |r: &Result<Answer<'_>, NotRead>| format!("{r:?}");
                assert_eq!(
                    show(&lexed),
                    show(&indexed),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
                assert_eq!(
                    show(&lexed),
                    show(&fresh),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
                read_both += usize::from(lexed.is_ok());
            }
        }
        assert!(read_both >= 20, "{read_both}");
        // An escaped name is the name: the reference is found through either spelling.
        for d in docs.iter().step_by(2).take(2) {
            assert!(
                read(d.as_bytes()).unwrap().in_compartment(Owner::Doc, "a"),
                "{d}"
            );
        }
    }
}
