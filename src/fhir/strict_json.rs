//! JSON parsing that refuses duplicate member names, at any depth.
//!
//! `serde_json::from_slice` keeps the *last* of two equal member names; other readers keep
//! the first, and the DLP walker refuses the body. If the authorization guard read
//! `{"subject":{"reference":"Patient/a"},"subject":{"reference":"Patient/b"}}` one way and
//! the client (or the upstream) another, a check could pass on data nobody else sees. Every
//! body the guard decides on is therefore read with this parser: the gateway's one JSON
//! grammar (`crate::json`, shared with the validator and the DLP walker, so escapes are
//! decoded before names are compared and `"a"` equals `"\u0061"`), built into a
//! `serde_json::Value` for the guard's callers.
//!
//! Two limits are kept from the serde_json reader this replaced, so no body changes verdict:
//! nesting deeper than [`MAX_DEPTH`] is malformed, and a number serde_json cannot hold
//! (`1e400`) is malformed (each number is converted by serde_json itself, so values are
//! exactly what they were).

use serde_json::{Map, Value};

use crate::json::{self, ErrorKind, Kind};

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictError {
    /// Not JSON (or nested deeper than [`MAX_DEPTH`]).
    Malformed,
    /// Valid JSON, but an object repeats a member name.
    Duplicate,
}

/// serde_json's recursion limit (128 levels refused, 127 read), kept so bodies the guard
/// read before are read now and no deeper ones.
pub const MAX_DEPTH: usize = 127;

impl From<json::Error> for StrictError {
    fn from(e: json::Error) -> Self {
        match e.kind {
            ErrorKind::Duplicate => StrictError::Duplicate,
            _ => StrictError::Malformed,
        }
    }
}

enum Open {
    Arr(Vec<Value>),
    /// An object and the name of the member whose value comes next.
    Obj(Map<String, Value>, Option<String>),
}

/// Parse `bytes` as JSON, refusing duplicate member names anywhere.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut t = json::Tokenizer::new(bytes, MAX_DEPTH);
    let mut stack: Vec<Open> = Vec::new();
    let mut root = None;
    while let Some(tok) = t.next()? {
        let raw = tok.raw(bytes);
        let v = match tok.kind {
            Kind::ObjStart => {
                stack.push(Open::Obj(Map::new(), None));
                continue;
            }
            Kind::ArrStart => {
                stack.push(Open::Arr(Vec::new()));
                continue;
            }
            Kind::Key => {
                if let Some(Open::Obj(_, k)) = stack.last_mut() {
                    *k = Some(json::decode_str(raw, tok.esc)?.into_owned());
                }
                continue;
            }
            Kind::ObjEnd | Kind::ArrEnd => match stack.pop() {
                Some(Open::Obj(m, _)) => Value::Object(m),
                Some(Open::Arr(a)) => Value::Array(a),
                None => return Err(StrictError::Malformed),
            },
            Kind::Str => Value::String(json::decode_str(raw, tok.esc)?.into_owned()),
            Kind::Num => serde_json::from_slice(raw).map_err(|_| StrictError::Malformed)?,
            Kind::True => Value::Bool(true),
            Kind::False => Value::Bool(false),
            Kind::Null => Value::Null,
        };
        match stack.last_mut() {
            None => root = Some(v),
            Some(Open::Arr(a)) => a.push(v),
            Some(Open::Obj(m, k)) => {
                let key = k.take().ok_or(StrictError::Malformed)?;
                // Refused as soon as the second value is read (the tokenizer would find
                // it when the object closes, after any later syntax error): the verdict
                // stays the one serde_json's visitor gave.
                if m.insert(key, v).is_some() {
                    return Err(StrictError::Duplicate);
                }
            }
        }
    }
    root.ok_or(StrictError::Malformed)
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

    #[test]
    fn same_verdicts_as_the_serde_json_reader_it_replaced() {
        // Depth: serde_json's limit, exactly.
        for depth in 120..=135 {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let text = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                let serde = serde_json::from_str::<Value>(&text).ok();
                assert_eq!(from_slice(text.as_bytes()).ok(), serde, "depth {depth}");
            }
        }
        // Numbers: the values serde_json gives, and its range refusals.
        for n in [
            "0",
            "-0",
            "-0.0",
            "1.5",
            "1e2",
            "1E-2",
            "9007199254740993",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1e308",
            "1e309",
            "-1e400",
            "1e-400",
            "123456789012345678901234567890",
        ] {
            for text in [n.to_owned(), format!("[{n}]"), format!("{{\"n\":{n}}}")] {
                let serde = serde_json::from_str::<Value>(&text).ok();
                assert_eq!(from_slice(text.as_bytes()).ok(), serde, "{text}");
            }
        }
        // A duplicate before a later syntax error is still a duplicate (as before); a
        // syntax error inside the repeated member's value is malformed (as before).
        assert_eq!(
            from_slice(br#"{"a":1,"a":2,"b":}"#),
            Err(StrictError::Duplicate)
        );
        assert_eq!(
            from_slice(br#"{"a":1,"a":[1,}"#),
            Err(StrictError::Malformed)
        );
        // What the shared grammar refuses, whatever serde_json would say.
        for bad in [
            &b"\xEF\xBB\xBF{}"[..],
            b"{\"a\":\"\\ud800\"}",
            b"[\"\x01\"]",
            b"[01]",
            b"",
        ] {
            assert_eq!(from_slice(bad), Err(StrictError::Malformed));
        }
    }
}
