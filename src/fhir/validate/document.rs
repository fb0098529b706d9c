//! Document entry points of the parser: byte-order mark and trailing-data checks, the top-level
//! resource, and JSON Patch documents (RFC 6902) with their per-operation checks.

use super::*;

impl<'a> Parser<'a> {
    // ----- entry points -----

    pub(super) fn check_bom(&mut self) -> Res<()> {
        if self.b.starts_with(&[0xEF, 0xBB, 0xBF]) {
            return Err(self.fail(crate::json::ErrorKind::Bom.message()));
        }
        Ok(())
    }

    pub(super) fn check_end(&mut self) -> Res<()> {
        self.ws();
        if self.pos != self.b.len() {
            return Err(self.fail("unexpected data after the JSON value"));
        }
        Ok(())
    }

    pub(super) fn top_resource(&mut self) -> Res<usize> {
        self.check_bom()?;
        self.ws();
        let entries = match self.peek() {
            None => return Err(self.fail("empty body")),
            Some(b'{') => self.resource(None, Role::Top)?,
            Some(_) => {
                self.err("structure", "a FHIR resource must be a JSON object")?;
                self.any_value()?;
                0
            }
        };
        self.check_end()?;
        Ok(entries)
    }

    pub(super) fn top_patch(&mut self) -> Res<()> {
        self.check_bom()?;
        self.ws();
        match self.peek() {
            None => return Err(self.fail("empty body")),
            Some(b'[') => {}
            Some(_) => {
                self.err("structure", "a JSON Patch document must be a JSON array")?;
                self.any_value()?;
                return self.check_end();
            }
        }
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            let mut i = 0;
            loop {
                self.path.push(Seg::Idx(i));
                self.patch_op()?;
                self.path.pop();
                i += 1;
                if !self.sep(b']')? {
                    break;
                }
            }
        }
        self.leave();
        self.check_end()
    }

    pub(super) fn patch_op(&mut self) -> Res<()> {
        self.ws();
        if self.peek() != Some(b'{') {
            self.err("structure", "a JSON Patch operation must be a JSON object")?;
            return self.any_value();
        }
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.err("required", "JSON Patch operation is empty")?;
            self.leave();
            return Ok(());
        }
        const OPS: [&[u8]; 6] = [b"add", b"remove", b"replace", b"move", b"copy", b"test"];
        let mut op: Option<usize> = None; // index into OPS
        let mut have = [false; 4]; // op, path, value, from
        loop {
            let k = self.key()?;
            let mut buf = Vec::new();
            let key: &[u8] = if k.esc {
                unescape(k.raw, &mut buf);
                &buf
            } else {
                k.raw
            };
            let slot = match key {
                b"op" => Some(0),
                b"path" => Some(1),
                b"value" => Some(2),
                b"from" => Some(3),
                _ => None,
            };
            self.path
                .push(Seg::Name(if k.esc { "?" } else { display_key(k.raw) }));
            match slot {
                None => {
                    self.err("structure", "unknown member in JSON Patch operation")?;
                    self.any_value()?;
                }
                Some(sl) => {
                    if have.get(sl).copied().unwrap_or(false) {
                        self.err("structure", "duplicate member name")?;
                    }
                    if let Some(h) = have.get_mut(sl) {
                        *h = true;
                    }
                    if sl == 2 {
                        self.any_value()?;
                    } else {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            self.err("value", "must be a JSON string")?;
                            self.any_value()?;
                        } else {
                            let s = self.string()?;
                            let mut d = Vec::new();
                            let v: &[u8] = if s.esc {
                                unescape(s.raw, &mut d);
                                &d
                            } else {
                                s.raw
                            };
                            if sl == 0 {
                                op = OPS.iter().position(|o| *o == v);
                                if op.is_none() {
                                    self.err(
                                        "value",
                                        "op must be one of add, remove, replace, move, copy, test",
                                    )?;
                                }
                            } else if !m_json_pointer(v) {
                                self.err("value", "not a valid JSON Pointer (RFC 6901)")?;
                            }
                        }
                    }
                }
            }
            self.path.pop();
            if !self.sep(b'}')? {
                break;
            }
        }
        let needs = |name: &str| -> (bool, bool) {
            // (value needed, from needed)
            match name {
                "add" | "replace" | "test" => (true, false),
                "move" | "copy" => (false, true),
                _ => (false, false),
            }
        };
        let [has_op, has_path, has_value, has_from] = have;
        if !has_op {
            self.sub_err("op", "required", "JSON Patch operation requires 'op'")?;
        }
        if !has_path {
            self.sub_err("path", "required", "JSON Patch operation requires 'path'")?;
        }
        if let Some(o) = op.and_then(|o| OPS.get(o)) {
            let name = std::str::from_utf8(o).unwrap_or("?");
            let (nv, nf) = needs(name);
            if nv && !has_value {
                self.sub_err(
                    "value",
                    "required",
                    &format!("op '{name}' requires 'value'"),
                )?;
            }
            if !nv && has_value {
                self.sub_err(
                    "value",
                    "structure",
                    &format!("'value' is not a member of op '{name}'"),
                )?;
            }
            if nf && !has_from {
                self.sub_err("from", "required", &format!("op '{name}' requires 'from'"))?;
            }
            if !nf && has_from {
                self.sub_err(
                    "from",
                    "structure",
                    &format!("'from' is not a member of op '{name}'"),
                )?;
            }
        }
        self.leave();
        Ok(())
    }

    pub(super) fn sub_err(&mut self, name: &'static str, code: &'static str, msg: &str) -> Res<()> {
        self.path.push(Seg::Name(name));
        let r = self.err(code, msg);
        self.path.pop();
        r
    }
}
