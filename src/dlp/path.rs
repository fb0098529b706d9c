//! The FHIRPath subset DLP rules are addressed by.
//!
//! ```text
//! path  := root ('.' step)*
//! root  := ResourceType | ComplexDataType | '*'
//! step  := name [ '.where(' cond (' and ' cond)* ')' ]
//! cond  := name '=' '\'' literal '\''
//! ```
//!
//! `Patient.telecom` is anchored at a Patient resource's root; a rule rooted at a complex
//! data type (`HumanName.family`, `Reference.display`, `Attachment.data`) applies wherever
//! an element of that type appears, in any resource. `*.address.line` matches the
//! element chain `address.line` anywhere inside any resource (`Patient.contact.address.line`
//! too): a leading `*` means "at any depth", which is what a rule protecting a data type
//! (every `address`, every narrative `text.div`) needs. Names are FHIR element names, so
//! `Patient.deceased` covers `deceasedDateTime` and `deceasedBoolean`.
//!
//! A `where` filters the items of the element it follows by direct primitive children
//! (`identifier.where(system='http://hl7.org/fhir/sid/us-ssn')`). It may be on the last step
//! or the one before it: the walker decides such a rule when the filtered object closes, and
//! a decision made further up would have to reach into objects already written.

/// One parsed rule path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePath {
    /// `None` for `*` (any resource, any depth).
    pub root: Option<String>,
    pub steps: Vec<Step>,
    /// Index of the step carrying a `where`, if any.
    pub where_at: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// `(child, literal)` pairs that must all hold.
    pub conds: Vec<(String, String)>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parse a rule path; the error says what is wrong without repeating the whole input.
pub fn parse(src: &str) -> Result<RulePath, String> {
    let s = src.trim();
    if s.is_empty() {
        return Err("empty path".into());
    }
    // Split on '.' outside quotes and parentheses.
    let mut parts: Vec<&str> = Vec::new();
    let (mut depth, mut quoted, mut start) = (0usize, false, 0usize);
    for (i, ch) in s.char_indices() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            '.' if !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted || depth != 0 {
        return Err("unbalanced quote or parenthesis".into());
    }
    parts.push(&s[start..]);
    let mut it = parts.into_iter();
    let root = match it.next() {
        Some("*") => None,
        Some(r) if is_name(r) && r.starts_with(|c: char| c.is_ascii_uppercase()) => {
            if !crate::fhir::validate::is_known_resource_type(r)
                && crate::fhir::validate::complex_type_of(r.as_bytes()).is_none()
            {
                return Err(format!(
                    "`{r}` is not an R4 resource type or complex data type"
                ));
            }
            Some(r.to_owned())
        }
        _ => return Err("a path starts with a resource type or `*`".into()),
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut where_at = None;
    for part in it {
        if let Some(inner) = part
            .strip_prefix("where(")
            .and_then(|p| p.strip_suffix(')'))
        {
            let Some(last) = steps.last_mut() else {
                return Err("`where` needs an element before it".into());
            };
            if where_at.is_some() {
                return Err("only one `where` per path is supported".into());
            }
            last.conds = parse_conds(inner)?;
            where_at = Some(steps.len() - 1);
            continue;
        }
        if !is_name(part) {
            return Err(format!("`{part}` is not an element name (the subset is `name`, `where(child='literal')` and a leading `*`)"));
        }
        steps.push(Step {
            name: part.to_owned(),
            conds: Vec::new(),
        });
    }
    if steps.is_empty() {
        return Err("a path names at least one element".into());
    }
    if let Some(w) = where_at {
        if w + 2 < steps.len() {
            return Err("`where` must filter the last element or the one before it".into());
        }
    }
    if steps
        .iter()
        .any(|st| matches!(st.name.as_str(), "meta" | "resourceType" | "security"))
    {
        return Err(
            "rules may not change `meta` or `resourceType`: DLP writes the security label there"
                .into(),
        );
    }
    Ok(RulePath {
        root,
        steps,
        where_at,
    })
}

fn parse_conds(inner: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for c in split_and(inner) {
        let (k, v) = c
            .split_once('=')
            .ok_or("a `where` condition is `child='literal'`")?;
        let k = k.trim();
        let v = v.trim();
        if !is_name(k) {
            return Err(format!("`{k}` is not an element name"));
        }
        let lit = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .filter(|l| !l.contains('\''))
            .ok_or("a `where` literal is written in single quotes")?;
        out.push((k.to_owned(), lit.to_owned()));
    }
    if out.is_empty() {
        return Err("empty `where`".into());
    }
    Ok(out)
}

/// Split on ` and ` outside quotes.
fn split_and(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0usize);
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted && b[i..].starts_with(b" and ") {
            out.push(&s[start..i]);
            i += 5;
            start = i;
            continue;
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let p = parse("Patient.identifier.where(system='http://hl7.org/fhir/sid/us-ssn').value")
            .unwrap();
        assert_eq!(p.root.as_deref(), Some("Patient"));
        assert_eq!(p.steps.len(), 2);
        assert_eq!(
            p.steps[0].conds,
            vec![(
                "system".to_owned(),
                "http://hl7.org/fhir/sid/us-ssn".to_owned()
            )]
        );
        assert_eq!(p.where_at, Some(0));
        let p = parse("*.address.line").unwrap();
        assert!(p.root.is_none());
        assert_eq!(p.steps.len(), 2);
        let p = parse("Patient.telecom.where(system='phone' and use='home')").unwrap();
        assert_eq!(p.steps[0].conds.len(), 2);
        assert_eq!(p.where_at, Some(0));
        assert!(parse("*.text.div").is_ok());
        assert!(parse("Patient.birthDate").is_ok());
        assert_eq!(
            parse("Reference.display").unwrap().root.as_deref(),
            Some("Reference")
        );
        assert!(parse("HumanName.family").is_ok());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for bad in [
            "",
            "Patient",
            "patient.name",
            "Nope.name",
            "Patient..name",
            "Patient.name.first()",
            "Patient.identifier.where(system=x).value",
            "Patient.identifier.where(system='a').where(use='b')",
            "Patient.contact.where(gender='male').name.family",
            "Patient.meta.security",
            "Patient.identifier.where(sé='x')",
            "*.security",
            "Patient.name.where(use='x",
            "Patient.where(x='y')",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
