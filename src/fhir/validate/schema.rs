//! The embedded FHIR R4 schema: type ids, primitive kinds, element definitions and value sets,
//! parsed once from `../schema.txt` (see the module header) into per-type member tables plus the
//! open-addressing (type, member name) hash index the walker looks members up in.

use super::*;

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

pub(super) type TypeId = u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prim {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Prim {
    pub(super) fn from_name(s: &str) -> Option<Prim> {
        Some(match s {
            "base64Binary" => Prim::Base64Binary,
            "boolean" => Prim::Boolean,
            "canonical" => Prim::Canonical,
            "code" => Prim::Code,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "decimal" => Prim::Decimal,
            "id" => Prim::Id,
            "instant" => Prim::Instant,
            "integer" => Prim::Integer,
            "markdown" => Prim::Markdown,
            "oid" => Prim::Oid,
            "positiveInt" => Prim::PositiveInt,
            "string" => Prim::String,
            "time" => Prim::Time,
            "unsignedInt" => Prim::UnsignedInt,
            "uri" => Prim::Uri,
            "url" => Prim::Url,
            "uuid" => Prim::Uuid,
            "xhtml" => Prim::Xhtml,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Prim::Base64Binary => "base64Binary",
            Prim::Boolean => "boolean",
            Prim::Canonical => "canonical",
            Prim::Code => "code",
            Prim::Date => "date",
            Prim::DateTime => "dateTime",
            Prim::Decimal => "decimal",
            Prim::Id => "id",
            Prim::Instant => "instant",
            Prim::Integer => "integer",
            Prim::Markdown => "markdown",
            Prim::Oid => "oid",
            Prim::PositiveInt => "positiveInt",
            Prim::String => "string",
            Prim::Time => "time",
            Prim::UnsignedInt => "unsignedInt",
            Prim::Uri => "uri",
            Prim::Url => "url",
            Prim::Uuid => "uuid",
            Prim::Xhtml => "xhtml",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Prim(Prim),
    Complex,
    Backbone,
    Resource,
    AnyResource,
}

#[derive(Debug)]
pub(super) struct ElemDef {
    /// Element name as in the StructureDefinition (`value[x]` for choices).
    pub(super) name: &'static str,
    pub(super) min: u32,
    pub(super) many: bool,
    pub(super) choice: bool,
    pub(super) type_names: Vec<&'static str>,
    pub(super) types: Vec<TypeId>,
    pub(super) binding: Option<u16>,
    /// `contained` of a resource (type Resource, repeating).
    pub(super) is_contained: bool,
}

#[derive(Debug)]
pub(super) struct Member {
    /// JSON member name (`valueQuantity` for choice variants).
    pub(super) key: Box<str>,
    pub(super) elem: u16,
    pub(super) ty: TypeId,
}

/// One slot of the member hash index (see `key_words`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Slot {
    pub(super) a: u64,
    pub(super) b: u64,
    pub(super) ty: TypeId,
    pub(super) len: u16,
    pub(super) member: u16,
}

#[derive(Debug)]
pub(super) struct TypeDef {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) elems: Vec<ElemDef>,
    /// Sorted by key bytes.
    pub(super) members: Vec<Member>,
    /// Indexes of elements with min >= 1.
    pub(super) required: Vec<u16>,
    /// Bit i set = element i has min >= 1 (every type has at most 64 elements).
    pub(super) required_mask: u64,
}

impl TypeDef {
    pub(super) fn member(&self, key: &[u8]) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.key.as_bytes().cmp(key))
            .ok()
            .and_then(|i| self.members.get(i))
    }

    pub(super) fn elem_index(&self, name: &str) -> Option<u16> {
        self.elems
            .iter()
            .position(|e| e.name == name)
            .and_then(|i| u16::try_from(i).ok())
    }
}

#[derive(Debug)]
pub(super) struct ValueSet {
    pub(super) url: &'static str,
    /// Sorted.
    pub(super) codes: Vec<&'static str>,
}

#[derive(Debug)]
pub(super) struct Schema {
    pub(super) types: Vec<TypeDef>,
    /// Open-addressing hash index over (type, member name); `len == 0` marks an empty slot
    /// (member names are never empty).
    pub(super) index: Vec<Slot>,
    pub(super) by_name: HashMap<&'static str, TypeId>,
    pub(super) value_sets: Vec<ValueSet>,
    pub(super) element: TypeId,
    pub(super) extension: TypeId,
    pub(super) ext_value: u16,
    pub(super) ext_extension: u16,
    pub(super) bundle: TypeId,
    pub(super) bundle_entry_elem: u16,
    pub(super) bundle_entry: TypeId,
    pub(super) entry_resource_elem: u16,
    pub(super) bundle_type_elem: u16,
    pub(super) reference: TypeId,
    pub(super) reference_reference_elem: u16,
}

impl Schema {
    #[inline]
    pub(super) fn ty(&self, id: TypeId) -> &TypeDef {
        // Ids are only created by `load_schema`, which resolves every reference; the fallback
        // (an empty complex type) is unreachable but keeps this panic-free.
        static EMPTY: TypeDef = TypeDef {
            name: "?",
            kind: Kind::Complex,
            elems: Vec::new(),
            members: Vec::new(),
            required: Vec::new(),
            required_mask: 0,
        };
        self.types.get(usize::from(id)).unwrap_or(&EMPTY)
    }

    /// Member lookup by JSON name via the hash index. Each slot carries the key's words, length
    /// and type, so a probe is decided without touching the member table or calling memcmp
    /// (except for keys over 16 bytes, which are rare).
    #[inline]
    pub(super) fn find_member(&self, ty: TypeId, key: &[u8]) -> Option<&Member> {
        let mask = self.index.len().wrapping_sub(1);
        let n = key.len();
        let w = key_words(key);
        let mut h = key_hash(ty, n, w) as usize & mask;
        loop {
            let slot = self.index.get(h)?;
            if slot.len == 0 {
                return None;
            }
            if slot.ty == ty && usize::from(slot.len) == n && slot.a == w.0 && slot.b == w.1 {
                let m = self
                    .types
                    .get(usize::from(ty))?
                    .members
                    .get(usize::from(slot.member))?;
                if n <= 16 || m.key.as_bytes() == key {
                    return Some(m);
                }
            }
            h = (h + 1) & mask;
        }
    }

    pub(super) fn resource_type(&self, name: &[u8]) -> Option<TypeId> {
        let name = std::str::from_utf8(name).ok()?;
        let id = *self.by_name.get(name)?;
        (self.ty(id).kind == Kind::Resource).then_some(id)
    }
}

pub(super) const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
pub(super) fn load_u64(s: &[u8], at: usize) -> u64 {
    match s.get(at..at + 8) {
        Some(c) => {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        }
        None => 0,
    }
}

#[inline(always)]
pub(super) fn load_u32(s: &[u8], at: usize) -> u64 {
    match s.get(at..at + 4) {
        Some(c) => {
            let mut w = [0u8; 4];
            w.copy_from_slice(c);
            u64::from(u32::from_le_bytes(w))
        }
        None => 0,
    }
}

/// Two words that, together with the length, identify a key of at most 16 bytes exactly
/// (branch-light overlapping loads instead of a byte loop): 8+ bytes -> first and last 8 bytes;
/// 4..7 -> first and last 4 bytes; 1..3 -> first, middle and last byte. Longer keys share
/// words with other keys of the same length and are confirmed by a full comparison.
#[inline(always)]
pub(super) fn key_words(key: &[u8]) -> (u64, u64) {
    let n = key.len();
    if n >= 8 {
        (load_u64(key, 0), load_u64(key, n - 8))
    } else if n >= 4 {
        (load_u32(key, 0) | (load_u32(key, n - 4) << 32), 0)
    } else if let (Some(&a), Some(&z)) = (key.first(), key.last()) {
        let m = key.get(n / 2).copied().unwrap_or(0);
        (u64::from(a) | (u64::from(m) << 8) | (u64::from(z) << 16), 0)
    } else {
        (0, 0)
    }
}

/// Hash of (type, member name) from its `key_words`. Collisions are resolved by comparing
/// the words, the length and (for keys over 16 bytes) the bytes.
#[inline(always)]
pub(super) fn key_hash(ty: TypeId, n: usize, (a, b): (u64, u64)) -> u64 {
    let h = (a ^ (u64::from(ty) << 32) ^ n as u64).wrapping_mul(HASH_K);
    let h = (h.rotate_left(27) ^ b).wrapping_mul(HASH_K);
    h ^ (h >> 31)
}

pub(super) fn json_suffix(type_name: &str) -> String {
    // Choice variant member names use the base type name (SimpleQuantity is a Quantity profile).
    let base = if type_name == "SimpleQuantity" {
        "Quantity"
    } else {
        type_name
    };
    let mut out = String::with_capacity(base.len());
    let mut chars = base.chars();
    if let Some(c) = chars.next() {
        out.extend(c.to_uppercase());
    }
    out.extend(chars);
    out
}

pub(super) fn load_schema(text: &'static str) -> Result<Schema, String> {
    let mut types: Vec<TypeDef> = Vec::new();
    let mut by_name: HashMap<&'static str, TypeId> = HashMap::new();
    let mut value_sets: Vec<ValueSet> = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("schema.txt line {}: malformed", lineno + 1);
        let mut f = line.split('\t');
        let first = f.next().ok_or_else(bad)?;
        match first {
            "V" => {
                let url = f.next().ok_or_else(bad)?;
                let mut codes: Vec<&'static str> = f.collect();
                codes.sort_unstable();
                value_sets.push(ValueSet { url, codes });
            }
            "T" => {
                let name = f.next().ok_or_else(bad)?;
                let kind = match f.next().ok_or_else(bad)? {
                    "P" => Kind::Prim(Prim::from_name(name).ok_or_else(bad)?),
                    "C" => Kind::Complex,
                    "B" => Kind::Backbone,
                    "R" => Kind::Resource,
                    "A" => Kind::AnyResource,
                    _ => return Err(bad()),
                };
                let id = TypeId::try_from(types.len()).map_err(|_| bad())?;
                if by_name.insert(name, id).is_some() {
                    return Err(format!("schema.txt: duplicate type {name}"));
                }
                types.push(TypeDef {
                    name,
                    kind,
                    elems: Vec::new(),
                    members: Vec::new(),
                    required: Vec::new(),
                    required_mask: 0,
                });
            }
            name => {
                let min: u32 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
                let many = match f.next().ok_or_else(bad)? {
                    "1" => false,
                    "*" => true,
                    _ => return Err(bad()),
                };
                let type_names: Vec<&'static str> = f.next().ok_or_else(bad)?.split(',').collect();
                let binding = match f.next().ok_or_else(bad)? {
                    "-" => None,
                    n => Some(n.parse::<u16>().map_err(|_| bad())?),
                };
                let cur = types.last_mut().ok_or_else(bad)?;
                cur.elems.push(ElemDef {
                    name,
                    min,
                    many,
                    choice: name.ends_with("[x]"),
                    type_names,
                    types: Vec::new(),
                    binding,
                    is_contained: false,
                });
            }
        }
    }
    for td in types.iter_mut() {
        if td.elems.len() > 64 {
            return Err(format!(
                "schema.txt: type {} has more than 64 elements",
                td.name
            ));
        }
        let mut members = Vec::new();
        for (ei, el) in td.elems.iter_mut().enumerate() {
            let ei = u16::try_from(ei).map_err(|_| "schema.txt: too many elements".to_string())?;
            if let Some(b) = el.binding {
                if usize::from(b) >= value_sets.len() {
                    return Err(format!("schema.txt: bad value set index in {}", td.name));
                }
            }
            for tn in &el.type_names {
                let id = *by_name
                    .get(tn)
                    .ok_or_else(|| format!("schema.txt: unknown type {tn} in {}", td.name))?;
                el.types.push(id);
                if el.choice {
                    let base = el.name.trim_end_matches("[x]");
                    members.push(Member {
                        key: format!("{base}{}", json_suffix(tn)).into_boxed_str(),
                        elem: ei,
                        ty: id,
                    });
                }
            }
            if !el.choice {
                let ty = *el
                    .types
                    .first()
                    .ok_or_else(|| format!("schema.txt: untyped element {}", el.name))?;
                if el.types.len() != 1 {
                    return Err(format!(
                        "schema.txt: multi-typed non-choice element {}",
                        el.name
                    ));
                }
                members.push(Member {
                    key: el.name.into(),
                    elem: ei,
                    ty,
                });
            }
            if el.min >= 1 {
                td.required.push(ei);
                td.required_mask |= 1u64 << ei;
            }
            el.is_contained = el.name == "contained" && el.many && el.type_names == ["Resource"];
        }
        members.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        if members
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.key == b.key))
        {
            return Err(format!("schema.txt: duplicate member name in {}", td.name));
        }
        td.members = members;
    }
    // open-addressing hash index over (type, member name)
    let total: usize = types.iter().map(|t| t.members.len()).sum();
    let slots = (total * 2).next_power_of_two().max(16);
    let mut index = vec![Slot::default(); slots];
    for (ti, td) in types.iter().enumerate() {
        for (mi, m) in td.members.iter().enumerate() {
            let key = m.key.as_bytes();
            let slot = Slot {
                a: 0,
                b: 0,
                ty: u16::try_from(ti).map_err(|_| "too many types")?,
                len: u16::try_from(key.len()).map_err(|_| "member name too long")?,
                member: u16::try_from(mi).map_err(|_| "too many members")?,
            };
            if slot.len == 0 {
                return Err(format!("schema.txt: empty member name in {}", td.name));
            }
            let w = key_words(key);
            let mut h = key_hash(slot.ty, key.len(), w) as usize & (slots - 1);
            while index.get(h).is_some_and(|x| x.len != 0) {
                h = (h + 1) & (slots - 1);
            }
            if let Some(x) = index.get_mut(h) {
                *x = Slot {
                    a: w.0,
                    b: w.1,
                    ..slot
                };
            }
        }
    }
    let get = |n: &str| {
        by_name
            .get(n)
            .copied()
            .ok_or_else(|| format!("schema.txt: missing type {n}"))
    };
    let element = get("Element")?;
    let extension = get("Extension")?;
    let bundle = get("Bundle")?;
    let bundle_entry = get("Bundle.entry")?;
    get("Resource")?;
    let elem_of = |t: TypeId, n: &str| {
        types
            .get(usize::from(t))
            .and_then(|td| td.elem_index(n))
            .ok_or_else(|| format!("schema.txt: missing element {n}"))
    };
    let ext_value = elem_of(extension, "value[x]")?;
    let ext_extension = elem_of(extension, "extension")?;
    let bundle_entry_elem = elem_of(bundle, "entry")?;
    let entry_resource_elem = elem_of(bundle_entry, "resource")?;
    let bundle_type_elem = elem_of(bundle, "type")?;
    let reference = get("Reference")?;
    let reference_reference_elem = elem_of(reference, "reference")?;
    Ok(Schema {
        types,
        index,
        by_name,
        value_sets,
        element,
        extension,
        ext_value,
        ext_extension,
        bundle,
        bundle_entry_elem,
        bundle_entry,
        entry_resource_elem,
        bundle_type_elem,
        reference,
        reference_reference_elem,
    })
}

pub(super) fn schema() -> Result<&'static Schema, &'static str> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    match SCHEMA.get_or_init(|| load_schema(SCHEMA_TEXT)) {
        Ok(s) => Ok(s),
        Err(e) => Err(e.as_str()),
    }
}
