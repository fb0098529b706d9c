//! YAML reading with line numbers kept, `${ENV}` expansion, and per-item typed decoding.
//!
//! serde-saphyr parses (panic-free, with alias-bomb and depth budgets) into a tree whose
//! nodes remember their line. From that tree we (1) index every key path to a line, so
//! semantic errors found later still point at `file:line`, and (2) decode each list item
//! and section on its own, so one typo does not hide the next one: `ward check` reports
//! every error in one go.
//!
//! `${VAR}` expansion happens on scalar strings *after* parsing, so a secret's value can
//! never inject YAML structure, and values are never copied into error messages.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One config problem, rendered as `file:line: key.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<u32>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A YAML value with the line it starts on.
#[derive(Debug, Clone)]
pub struct Located {
    pub line: u32,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Located>),
    Map(Vec<(String, u32, Located)>),
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, u32, Located)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyString>>()? {
            let value = map.next_value::<Located>()?;
            let line = key.referenced.line() as u32;
            if entries.iter().any(|(k, _, _)| *k == key.value.0) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{}`",
                    key.value.0
                )));
            }
            entries.push((key.value.0, line, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Map keys as strings (`8443: x` is a key "8443").
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(NodeVisitor)? {
            Node::Str(s) => Ok(KeyString(s)),
            Node::Int(i) => Ok(KeyString(i.to_string())),
            Node::Bool(b) => Ok(KeyString(b.to_string())),
            _ => Err(de::Error::custom("map keys must be scalars")),
        }
    }
}

struct NodeSeed(Node);
impl<'de> Deserialize<'de> for NodeSeed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor).map(NodeSeed)
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<NodeSeed>::deserialize(d)?;
        Ok(Located {
            line: s.referenced.line() as u32,
            node: s.value.0,
        })
    }
}

/// Parse YAML text into a located tree. Errors carry the parser's line.
pub fn parse(file: &str, text: &str) -> Result<Located, ConfigError> {
    // Default options keep serde-saphyr's parsing budget (depth, alias expansion, size).
    // YAML 1.2 booleans only: `y`, `no`, `off` stay strings (a subject list with a `NO`
    // country code must not turn into `false`).
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<Located>(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line() as u32);
        // The parser's own message (syntax position, budget exceeded, ...) never contains
        // scalar values beyond what scrub() removes.
        let msg = first_line(&e.to_string());
        ConfigError {
            file: file.to_owned(),
            line,
            path: String::new(),
            message: scrub(&msg),
        }
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("invalid YAML").to_owned()
}

/// Index of `key.path` → line for every node, for errors found after decoding.
#[derive(Debug, Default, Clone)]
pub struct LineIndex(HashMap<String, u32>);

impl LineIndex {
    pub fn build(root: &Located) -> Self {
        let mut idx = LineIndex::default();
        idx.walk("", root);
        idx
    }
    fn walk(&mut self, path: &str, n: &Located) {
        self.0.insert(path.to_owned(), n.line);
        match &n.node {
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(&format!("{path}[{i}]"), item);
                }
            }
            Node::Map(entries) => {
                for (k, kline, v) in entries {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.walk(&p, v);
                    // A key's own line is more useful than its value's (a nested map
                    // starts on the next line).
                    self.0.insert(p, *kline);
                }
            }
            _ => {}
        }
    }
    /// The first key named `field` at or below `prefix` (for decoder errors, which name the
    /// field but not where it sits).
    pub fn find_key(&self, prefix: &str, field: &str) -> Option<String> {
        let suffix = format!(".{field}");
        let mut hits: Vec<&String> = self
            .0
            .keys()
            .filter(|k| {
                k.starts_with(prefix)
                    && (k.ends_with(&suffix) || (prefix.is_empty() && *k == field))
            })
            .collect();
        hits.sort_by_key(|k| (self.0.get(*k).copied().unwrap_or(u32::MAX), k.len()));
        hits.first().map(|k| (*k).clone())
    }

    /// Line of `path`, or of its nearest ancestor that exists.
    pub fn line(&self, path: &str) -> Option<u32> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Convert a located node to JSON for typed decoding, expanding `${VAR}` in strings.
/// `vars` resolves a variable; a missing one is an error at that node's line.
pub fn to_json(
    n: &Located,
    path: &str,
    vars: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<(String, u32, String)>,
) -> serde_json::Value {
    use serde_json::Value;
    match &n.node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::from(*i),
        Node::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Node::Str(s) => match expand_env(s, vars) {
            Ok(v) => Value::String(v),
            Err(msg) => {
                errs.push((path.to_owned(), n.line, msg));
                Value::String(String::new())
            }
        },
        Node::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, it)| to_json(it, &format!("{path}[{i}]"), vars, errs))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, _, v) in entries {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                m.insert(k.clone(), to_json(v, &p, vars, errs));
            }
            Value::Object(m)
        }
    }
}

/// `${NAME}` → value of NAME; `$${` → literal `${`. Names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn expand_env(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| "unterminated `${` in value".to_owned())?;
            let name = &inner[..end];
            let valid = !name.is_empty()
                && name.chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                });
            if !valid {
                return Err(format!("invalid variable name `{name}`"));
            }
            let val =
                vars(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&val);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Decode one JSON value into `T`; on error, return a scrubbed message and, when serde
/// names an unknown field, the path of that field so the line can be pinpointed.
pub fn decode<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    path: &str,
    idx: &LineIndex,
) -> Result<T, (String, String)> {
    serde_json::from_value::<T>(v).map_err(|e| {
        let msg = e.to_string();
        let field_path = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(|f| {
                idx.find_key(path, f).unwrap_or_else(|| {
                    if path.is_empty() {
                        f.to_owned()
                    } else {
                        format!("{path}.{f}")
                    }
                })
            })
            .unwrap_or_else(|| path.to_owned());
        (field_path, scrub(&msg))
    })
}

/// Remove user-supplied scalar values from a decoder message: a value may be a secret
/// that came from `${VAR}`. Field names (backticks) stay; quoted values and unknown
/// variants go.
pub fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            // Skip to the closing quote.
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == '"' {
                    break;
                }
            }
            out.push_str("<value>");
        } else {
            out.push(c);
        }
    }
    if let Some(rest) = out.strip_prefix("unknown variant `") {
        if let Some(end) = rest.find('`') {
            return format!("unknown variant <value>{}", &rest[end + 1..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_indexed() {
        let text = "a: 1\nb:\n  c: x\n  d:\n    - 1\n    - e: 2\n";
        let root = parse("t.yaml", text).unwrap();
        let idx = LineIndex::build(&root);
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("b.c"), Some(3));
        assert_eq!(idx.line("b.d"), Some(4));
        assert_eq!(idx.line("b.d[1].e"), Some(6));
        assert_eq!(idx.line("b.d[1].zzz"), Some(6));
    }

    #[test]
    fn env_expansion() {
        let vars = |n: &str| (n == "S").then(|| "sec}ret".to_owned());
        assert_eq!(expand_env("x${S}y", &vars).unwrap(), "xsec}rety");
        assert_eq!(expand_env("$${S}", &vars).unwrap(), "${S}");
        assert_eq!(expand_env("a$b", &vars).unwrap(), "a$b");
        assert!(expand_env("${NOPE}", &vars).unwrap_err().contains("NOPE"));
        assert!(expand_env("${S", &vars).is_err());
        assert!(expand_env("${1A}", &vars).is_err());
    }

    #[test]
    fn scrub_hides_values() {
        let m = scrub("invalid type: string \"hunter2\", expected u64");
        assert!(!m.contains("hunter2"), "{m}");
        let m = scrub("unknown variant `hunter2`, expected `json` or `text`");
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("`json`"));
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("t.yaml", "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let root = parse("t.yaml", "a: [y, no, off, true]\n").unwrap();
        let Node::Map(m) = root.node else { panic!() };
        let Node::Seq(items) = &m[0].2.node else {
            panic!()
        };
        assert!(matches!(&items[0].node, Node::Str(s) if s == "y"));
        assert!(matches!(&items[1].node, Node::Str(s) if s == "no"));
        assert!(matches!(items[3].node, Node::Bool(true)));
    }

    #[test]
    fn duplicate_keys_rejected() {
        assert!(parse("t.yaml", "a: 1\na: 2\n").is_err());
    }
}
