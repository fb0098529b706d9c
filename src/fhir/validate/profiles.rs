//! Gateway profiles compiled against the schema: each `required`/`forbidden` path of a
//! [`Profile`] resolved once into member steps, so checking a resource costs no string work.

use super::*;

// ---------------------------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(super) struct Rule {
    pub(super) rtype: TypeId,
    /// (element index, specific choice variant)
    pub(super) steps: Steps,
    pub(super) forbidden: bool,
    /// Path below the resource type, for messages (`name.family`).
    pub(super) rest: String,
}

#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) allowed: Option<Vec<TypeId>>,
    pub(super) rules: Vec<Rule>,
    pub(super) max_entries: Option<usize>,
}

pub(super) type Steps = Vec<(u16, Option<TypeId>)>;

pub(super) fn compile_path(s: &Schema, path: &str) -> Result<(TypeId, Steps, String), String> {
    let mut segs = path.split('.');
    let first = segs.next().unwrap_or("");
    let rtype = s
        .resource_type(first.as_bytes())
        .ok_or_else(|| format!("'{path}': '{first}' is not a known R4 resource type"))?;
    let mut cur: Option<TypeId> = Some(rtype);
    let mut steps = Vec::new();
    for seg in segs {
        let ty = cur.ok_or_else(|| {
            format!(
                "'{path}': cannot navigate below a primitive, resource or untyped choice element"
            )
        })?;
        let td = s.ty(ty);
        if !matches!(td.kind, Kind::Complex | Kind::Backbone | Kind::Resource) {
            return Err(format!("'{path}': cannot navigate into type {}", td.name));
        }
        if let Some(m) = td.member(seg.as_bytes()) {
            let el = td.elems.get(usize::from(m.elem)).ok_or("schema error")?;
            steps.push((m.elem, el.choice.then_some(m.ty)));
            cur = match s.ty(m.ty).kind {
                Kind::Complex | Kind::Backbone => Some(m.ty),
                _ => None,
            };
        } else if let Some(ei) = td.elem_index(&format!("{seg}[x]")) {
            steps.push((ei, None));
            cur = None;
        } else {
            return Err(format!(
                "'{path}': '{seg}' is not an element of {}",
                td.name
            ));
        }
    }
    if steps.is_empty() {
        return Err(format!(
            "'{path}': path must name an element below the resource type"
        ));
    }
    let rest = path
        .split_once('.')
        .map(|(_, r)| r.to_string())
        .unwrap_or_default();
    Ok((rtype, steps, rest))
}

pub(super) fn compile(s: &Schema, p: &Profile) -> Result<Compiled, String> {
    let allowed = match &p.allowed_types {
        None => None,
        Some(list) => {
            let mut ids = Vec::with_capacity(list.len());
            for n in list {
                ids.push(s.resource_type(n.as_bytes()).ok_or_else(|| {
                    format!("allowed_types: '{n}' is not a known R4 resource type")
                })?);
            }
            ids.sort_unstable();
            Some(ids)
        }
    };
    let mut rules = Vec::new();
    for (list, forbidden) in [(&p.required, false), (&p.forbidden, true)] {
        for path in list {
            let (rtype, steps, rest) = compile_path(s, path).map_err(|e| {
                format!("{}: {e}", if forbidden { "forbidden" } else { "required" })
            })?;
            rules.push(Rule {
                rtype,
                steps,
                forbidden,
                rest,
            });
        }
    }
    Ok(Compiled {
        allowed,
        rules,
        max_entries: p.max_bundle_entries,
    })
}
