//! Element lookup for other FHIR-aware components (DLP): resource/complex type by name and the
//! element definition (value kind, cardinality) of a member, answered from the embedded schema.

use super::*;

// ---------------------------------------------------------------------------------------------
// Element lookup for other FHIR-aware components (DLP)
// ---------------------------------------------------------------------------------------------

/// A FHIR R4 type (resource, complex or primitive) of the embedded schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FhirType(TypeId);

/// What kind of JSON value an element holds, as far as a content scanner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `string` and `markdown`: free text, may be rewritten in place.
    Text,
    /// `xhtml` narrative (`text.div`).
    Xhtml,
    /// Any other primitive: the value must keep its lexical form (`date`, `code`, `uri`…).
    /// `name` is the FHIR primitive type name.
    Structured(&'static str),
    /// A complex or backbone element (a JSON object).
    Complex,
    /// A resource in an element (`contained`, `Bundle.entry.resource`…).
    Resource,
}

/// One element of a type, looked up by its JSON member name.
#[derive(Debug, Clone, Copy)]
pub struct ElementInfo {
    pub ty: FhirType,
    /// Element name without the choice suffix (`deceased` for `deceasedDateTime`).
    pub name: &'static str,
    pub min: u32,
    pub many: bool,
    pub kind: ValueKind,
}

/// The resource type named `name`, if R4 has it.
pub fn resource_type_of(name: &[u8]) -> Option<FhirType> {
    schema().ok()?.resource_type(name).map(FhirType)
}

/// The complex data type (`HumanName`, `Address`, `Reference`…) named `name`.
pub fn complex_type_of(name: &[u8]) -> Option<FhirType> {
    let s = schema().ok()?;
    let id = *s.by_name.get(std::str::from_utf8(name).ok()?)?;
    (s.ty(id).kind == Kind::Complex).then_some(FhirType(id))
}

/// The FHIR name of a type.
pub fn type_name(t: FhirType) -> &'static str {
    schema().map_or("?", |s| s.ty(t.0).name)
}

/// The element of `t` that JSON member `key` carries (`_key` siblings are not elements).
pub fn element_of(t: FhirType, key: &[u8]) -> Option<ElementInfo> {
    let s = schema().ok()?;
    let m = s.find_member(t.0, key)?;
    let def = s.ty(t.0).elems.get(usize::from(m.elem))?;
    let kind = match s.ty(m.ty).kind {
        Kind::Prim(Prim::String | Prim::Markdown) => ValueKind::Text,
        Kind::Prim(Prim::Xhtml) => ValueKind::Xhtml,
        Kind::Prim(p) => ValueKind::Structured(p.name()),
        Kind::Complex | Kind::Backbone => ValueKind::Complex,
        Kind::Resource | Kind::AnyResource => ValueKind::Resource,
    };
    Some(ElementInfo {
        ty: FhirType(m.ty),
        name: def.name.strip_suffix("[x]").unwrap_or(def.name),
        min: def.min,
        many: def.many,
        kind,
    })
}
