//! JSON parsing that refuses duplicate member names, at any depth.
//!
//! `serde_json::from_slice` keeps the *last* of two equal member names; other readers keep
//! the first, and the DLP walker refuses the body. If the authorization guard read
//! `{"subject":{"reference":"Patient/a"},"subject":{"reference":"Patient/b"}}` one way and
//! the client (or the upstream) another, a check could pass on data nobody else sees. Every
//! body the guard decides on is therefore read with this parser: same grammar as
//! serde_json (it drives serde_json's own deserializer, so escapes are decoded before names
//! are compared and `"a"` equals `"\u0061"`), plus the duplicate rule.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictError {
    /// Not JSON (or nested deeper than serde_json's recursion limit).
    Malformed,
    /// Valid JSON, but an object repeats a member name.
    Duplicate,
}

const DUPLICATE: &str = "ward: duplicate member name";

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(k, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parse `bytes` as JSON, refusing duplicate member names anywhere.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => Ok(v),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(StrictError::Duplicate),
        Err(_) => Err(StrictError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json_without_duplicates() {
        for text in [
            r#"{"a":1,"b":[true,null,-2,3.5,"x\u0041"],"c":{"d":{}}}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#""plain""#,
            "18446744073709551615",
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(from_slice(text.as_bytes()), Ok(want), "{text}");
        }
    }

    #[test]
    fn duplicates_at_any_depth_and_in_any_spelling() {
        // Generated: a duplicate pair placed at each depth, spelled plainly or escaped.
        let spellings = [r#""subject""#, r#""subj\u0065ct""#, r#""\u0073ubject""#];
        for depth in 0..6 {
            for first in spellings {
                for second in spellings {
                    let inner = format!(r#"{{{first}:1,"x":2,{second}:3}}"#);
                    let mut text = inner;
                    for i in 0..depth {
                        text = if i % 2 == 0 {
                            format!(r#"{{"k":{text}}}"#)
                        } else {
                            format!("[0,{text}]")
                        };
                    }
                    assert_eq!(
                        from_slice(text.as_bytes()),
                        Err(StrictError::Duplicate),
                        "{text}"
                    );
                }
            }
        }
        assert_eq!(from_slice(b"{\"a\":1,}"), Err(StrictError::Malformed));
        assert_eq!(from_slice(b"{\"a\":1} x"), Err(StrictError::Malformed));
    }
}
