//! The schema-driven walk: member lookup, resources (including contained and Bundle entries),
//! objects, members and choice types, cardinality, primitive values with their bindings,
//! references, and the per-object invariants checked when an object closes.

use super::*;

impl<'a> Parser<'a> {
    // ----- schema-driven validation -----

    #[inline]
    pub(super) fn lookup(&self, ty: TypeId, key: &[u8]) -> Found {
        if let Some(m) = self.s.find_member(ty, key) {
            return Found::Member(m, false);
        }
        if let Some(rest) = key.strip_prefix(b"_") {
            return match self.s.find_member(ty, rest) {
                Some(m) if matches!(self.s.ty(m.ty).kind, Kind::Prim(p) if p != Prim::Xhtml) => {
                    Found::Member(m, true)
                }
                Some(m) => Found::UnderscoreNonPrimitive(m),
                None => Found::Unknown,
            };
        }
        if key == b"resourceType" {
            return Found::ResourceType;
        }
        Found::Unknown
    }

    /// Validates a resource object at `{`. Returns the number of Bundle entries (0 if not a Bundle).
    pub(super) fn resource(&mut self, expected: Option<TypeId>, role: Role) -> Res<usize> {
        let Some(rt) = self.find_resource_type(self.pos) else {
            self.err("required", "resource has no 'resourceType' string member")?;
            return self.any_value().map(|_| 0);
        };
        let Some(tid) = self.s.resource_type(&rt) else {
            let msg = format!(
                "'{}' is not a known FHIR R4 resource type",
                display_key(&rt)
            );
            self.err("not-supported", msg)?;
            return self.any_value().map(|_| 0);
        };
        let td: &'static TypeDef = self.s.ty(tid);
        if self.path.is_empty() {
            self.path.push(Seg::Name(td.name));
        }
        if let Some(exp) = expected {
            if exp != tid {
                let msg = format!(
                    "resource must be of type {}, found {}",
                    self.s.ty(exp).name,
                    td.name
                );
                self.err("structure", msg)?;
            }
        }
        let prof = self.prof;
        if let Some(allowed) = prof.and_then(|p| p.allowed.as_ref()) {
            if allowed.binary_search(&tid).is_err() {
                self.err(
                    "business-rule",
                    format!(
                        "resource type {} is not allowed by the gateway policy",
                        td.name
                    ),
                )?;
            }
        }
        let saved_role = self.role;
        self.role = role;
        if role == Role::Entry {
            if let Some(b) = self.bundles.last_mut() {
                b.in_entry = b.in_entry.saturating_add(1);
            }
        }
        if tid == self.s.bundle {
            self.bundles.push(BundleFrame::default());
        }
        let cur_start = self.cursors.len();
        let slot_start = self.req_hits.len();
        if let Some(p) = prof {
            for (ri, rule) in p.rules.iter().enumerate() {
                if rule.rtype == tid && (rule.forbidden || matches!(role, Role::Top | Role::Entry))
                {
                    let slot = self.req_hits.len();
                    if !rule.forbidden {
                        self.req_hits.push(false);
                    }
                    self.cursors.push(Cursor {
                        rule: u32::try_from(ri).unwrap_or(u32::MAX),
                        step: 0,
                        slot: u32::try_from(slot).unwrap_or(u32::MAX),
                    });
                }
            }
        }
        let cur = (cur_start, self.cursors.len());
        let entries = self.object(tid, Some(role), cur)?;
        if let Some(p) = prof {
            for ci in cur_start..cur.1 {
                let Some(c) = self.cursors.get(ci).copied() else {
                    continue;
                };
                let Some(rule) = p.rules.get(c.rule as usize) else {
                    continue;
                };
                if !rule.forbidden && !self.req_hits.get(c.slot as usize).copied().unwrap_or(true) {
                    let expr = format!("{}.{}", self.render_path(), rule.rest);
                    let msg = format!(
                        "element '{}.{}' is required by the gateway policy",
                        td.name, rule.rest
                    );
                    self.report_at(Severity::Error, "required", expr, msg)?;
                }
            }
            if tid == self.s.bundle {
                if let Some(max) = p.max_entries {
                    if entries > max {
                        let expr = format!("{}.entry", self.render_path());
                        let msg = format!(
                            "Bundle has {entries} entries; the gateway policy allows at most {max}"
                        );
                        self.report_at(Severity::Error, "too-costly", expr, msg)?;
                    }
                }
            }
        }
        self.cursors.truncate(cur_start);
        self.req_hits.truncate(slot_start);
        self.role = saved_role;
        if tid == self.s.bundle {
            if let Some(b) = self.bundles.pop() {
                if !b.submits {
                    for path in b.conditional {
                        self.report_at(
                            Severity::Error,
                            "value",
                            path,
                            CONDITIONAL_ONLY_IN_BUNDLES.to_owned(),
                        )?;
                    }
                }
            }
        }
        if role == Role::Entry {
            if let Some(b) = self.bundles.last_mut() {
                b.in_entry = b.in_entry.saturating_sub(1);
            }
        }
        Ok(entries)
    }

    /// Validates an object of complex/backbone/resource type `ty` at `{`.
    /// Returns the Bundle entry count for Bundle objects.
    pub(super) fn object(
        &mut self,
        ty: TypeId,
        res: Option<Role>,
        cur: (usize, usize),
    ) -> Res<usize> {
        let td: &'static TypeDef = self.s.ty(ty);
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.err("structure", "empty object is not allowed in FHIR JSON")?;
            self.leave();
            return Ok(0);
        }
        let mut st = ObjState {
            val: 0,
            und: 0,
            rt_seen: false,
            align: false,
            frame: self.seen.len(),
            entries: 0,
        };
        loop {
            let k = self.key()?;
            self.member(td, ty, k, res, cur, &mut st)?;
            if !self.sep(b'}')? {
                break;
            }
        }
        self.finish_object(td, ty, &st)?;
        self.seen.truncate(st.frame);
        self.leave();
        Ok(st.entries)
    }

    pub(super) fn member(
        &mut self,
        td: &'static TypeDef,
        ty: TypeId,
        k: Str<'a>,
        res: Option<Role>,
        cur: (usize, usize),
        st: &mut ObjState,
    ) -> Res<()> {
        let found = if k.esc {
            let mut buf = std::mem::take(&mut self.scratch);
            unescape(k.raw, &mut buf);
            let f = self.lookup(ty, &buf);
            self.scratch = buf;
            f
        } else {
            self.lookup(ty, k.raw)
        };
        let (m, under) = match found {
            Found::Member(m, under) => (m, under),
            Found::ResourceType => {
                self.path.push(Seg::Name("resourceType"));
                if res.is_none() {
                    self.err(
                        "structure",
                        "'resourceType' is only allowed at resource level",
                    )?;
                    self.any_value()?;
                } else {
                    if st.rt_seen {
                        self.err("structure", "duplicate member name")?;
                    }
                    st.rt_seen = true;
                    self.ws();
                    if self.peek() == Some(b'"') {
                        self.string()?;
                    } else {
                        self.err("value", "'resourceType' must be a JSON string")?;
                        self.any_value()?;
                    }
                }
                self.path.pop();
                return Ok(());
            }
            Found::UnderscoreNonPrimitive(m) => {
                self.path.push(Seg::Name(&m.key));
                self.err(
                    "structure",
                    "'_' sibling members are only allowed for primitive elements (not xhtml)",
                )?;
                self.any_value()?;
                self.path.pop();
                return Ok(());
            }
            Found::Unknown => {
                self.path
                    .push(Seg::Name(if k.esc { "?" } else { display_key(k.raw) }));
                let msg = format!("unknown element for type {}", td.name);
                self.err("structure", msg)?;
                self.any_value()?;
                self.path.pop();
                return Ok(());
            }
        };
        let Some(el) = td.elems.get(usize::from(m.elem)) else {
            return Err(self.fail("internal schema error"));
        };
        self.path.push(Seg::Name(&m.key));
        let bit = 1u64 << (m.elem & 63);
        if (st.val | st.und) & bit != 0 {
            // slow path: duplicates / choice exclusivity / `_x` vs `x` variant agreement
            let same = if under { st.und } else { st.val };
            let mut problem = None;
            if el.choice {
                for s in self.seen.get(st.frame..).unwrap_or_default() {
                    if s.elem == m.elem {
                        if s.ty != m.ty {
                            problem =
                                Some("only one choice-type variant of this element may be present");
                            break;
                        } else if s.under == under {
                            problem = Some("duplicate member name");
                        }
                    }
                }
            } else if same & bit != 0 {
                problem = Some("duplicate member name");
            }
            if let Some(p) = problem {
                self.err("structure", p)?;
            }
        }
        if under {
            st.und |= bit;
        } else {
            st.val |= bit;
        }
        let is_prim = matches!(self.s.ty(m.ty).kind, Kind::Prim(_));
        let track = el.choice || (el.many && is_prim);
        let seen_idx = if track {
            self.seen.push(Seen {
                elem: m.elem,
                ty: m.ty,
                under,
                many: el.many,
                len: 0,
                nulls: Vec::new(),
            });
            Some(self.seen.len() - 1)
        } else {
            None
        };
        if el.is_contained && res == Some(Role::Contained) {
            self.err(
                "invariant",
                "a contained resource SHALL NOT contain nested resources (dom-2)",
            )?;
        }
        // profile cursors
        let child_start = self.cursors.len();
        if cur.0 < cur.1 {
            self.advance_cursors(cur, m)?;
        }
        let child = (child_start, self.cursors.len());
        let role = if el.is_contained {
            Role::Contained
        } else if ty == self.s.bundle_entry
            && m.elem == self.s.entry_resource_elem
            && matches!(self.role, Role::Top | Role::Entry)
        {
            Role::Entry
        } else {
            Role::Nested
        };
        let (len, nulls) = match self.s.ty(m.ty).kind {
            // fast path: single-valued primitive with a value (the most common member shape)
            Kind::Prim(p) if !el.many && !under => {
                self.ws();
                match self.peek() {
                    Some(b'[' | b'n') => self.elem_value(el, m.ty, under, seen_idx, child, role)?,
                    _ => {
                        self.want = if ty == self.s.reference
                            && m.elem == self.s.reference_reference_elem
                        {
                            Want::Reference
                        } else if ty == self.s.bundle && m.elem == self.s.bundle_type_elem {
                            Want::BundleType
                        } else {
                            Want::Nothing
                        };
                        let r = self.primitive(p, el.binding);
                        self.want = Want::Nothing;
                        r?;
                        (1, false)
                    }
                }
            }
            _ => self.elem_value(el, m.ty, under, seen_idx, child, role)?,
        };
        if el.many && is_prim && (under || nulls) {
            st.align = true;
        }
        if ty == self.s.bundle && m.elem == self.s.bundle_entry_elem && !under {
            st.entries = len as usize;
        }
        self.cursors.truncate(child_start);
        self.path.pop();
        Ok(())
    }

    pub(super) fn advance_cursors(&mut self, cur: (usize, usize), m: &'static Member) -> Res<()> {
        let Some(p) = self.prof else { return Ok(()) };
        for ci in cur.0..cur.1 {
            let Some(c) = self.cursors.get(ci).copied() else {
                continue;
            };
            let Some(rule) = p.rules.get(c.rule as usize) else {
                continue;
            };
            let Some(&(elem, variant)) = rule.steps.get(c.step as usize) else {
                continue;
            };
            if elem != m.elem || variant.is_some_and(|v| v != m.ty) {
                continue;
            }
            if c.step as usize + 1 == rule.steps.len() {
                if rule.forbidden {
                    let msg = format!("element '{}' is forbidden by the gateway policy", rule.rest);
                    self.err("business-rule", msg)?;
                } else if let Some(h) = self.req_hits.get_mut(c.slot as usize) {
                    *h = true;
                }
            } else {
                self.cursors.push(Cursor {
                    rule: c.rule,
                    step: c.step + 1,
                    slot: c.slot,
                });
            }
        }
        Ok(())
    }

    /// Returns (array length, whether any null slot was seen).
    pub(super) fn elem_value(
        &mut self,
        el: &'static ElemDef,
        ty: TypeId,
        under: bool,
        seen_idx: Option<usize>,
        cur: (usize, usize),
        role: Role,
    ) -> Res<(u32, bool)> {
        self.ws();
        let is_arr = self.peek() == Some(b'[');
        if !el.many {
            if is_arr {
                self.err(
                    "structure",
                    "element is single-valued (max 1); a JSON array is not allowed",
                )?;
                self.any_value()?;
                return Ok((0, false));
            }
            self.single(el, ty, under, false, cur, role)?;
            return Ok((1, false));
        }
        if !is_arr {
            self.err(
                "structure",
                "element repeats (max *); its value must be a JSON array",
            )?;
            self.single(el, ty, under, false, cur, role)?;
            return Ok((1, false));
        }
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.err("structure", "empty array is not allowed in FHIR JSON")?;
            self.leave();
            return Ok((0, false));
        }
        let mut i: u32 = 0;
        let mut any_null = false;
        loop {
            self.path.push(Seg::Idx(i as usize));
            let was_null = self.single(el, ty, under, true, cur, role)?;
            self.path.pop();
            if was_null {
                any_null = true;
                if let Some(s) = seen_idx.and_then(|x| self.seen.get_mut(x)) {
                    s.nulls.push(i);
                }
            }
            i = i.saturating_add(1);
            if !self.sep(b']')? {
                break;
            }
        }
        if let Some(s) = seen_idx.and_then(|x| self.seen.get_mut(x)) {
            s.len = i;
        }
        self.leave();
        Ok((i, any_null))
    }

    /// Validates one value; returns true if it was an (allowed) `null` array slot.
    pub(super) fn single(
        &mut self,
        el: &'static ElemDef,
        ty: TypeId,
        under: bool,
        in_array: bool,
        cur: (usize, usize),
        role: Role,
    ) -> Res<bool> {
        self.ws();
        let kind = self.s.ty(ty).kind;
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            if in_array && (under || matches!(kind, Kind::Prim(_))) {
                return Ok(true);
            }
            self.err(
                "structure",
                "null is only allowed inside primitive value or '_' extension arrays",
            )?;
            return Ok(false);
        }
        if under {
            if self.peek() != Some(b'{') {
                self.err(
                    "structure",
                    "a '_' sibling must be a JSON object with 'id' and/or 'extension'",
                )?;
                self.any_value()?;
            } else {
                self.object(self.s.element, None, (0, 0))?;
            }
            return Ok(false);
        }
        match kind {
            Kind::Prim(p) => self.primitive(p, el.binding)?,
            Kind::Complex | Kind::Backbone => {
                if self.peek() == Some(b'{') {
                    self.object(ty, None, cur)?;
                } else {
                    self.err(
                        "value",
                        format!("expected a JSON object of type {}", self.s.ty(ty).name),
                    )?;
                    self.any_value()?;
                }
            }
            Kind::Resource | Kind::AnyResource => {
                if self.peek() == Some(b'{') {
                    let expected = (kind == Kind::Resource).then_some(ty);
                    self.resource(expected, role)?;
                } else {
                    self.err("value", "expected a JSON object containing a resource")?;
                    self.any_value()?;
                }
            }
        }
        Ok(false)
    }

    pub(super) fn wrong_json_type(&mut self, p: Prim, expected: &str) -> Res<()> {
        self.err(
            "value",
            format!("FHIR {} must be a JSON {expected}", p.name()),
        )?;
        self.any_value()
    }

    #[inline]
    pub(super) fn primitive(&mut self, p: Prim, binding: Option<u16>) -> Res<()> {
        let c = self.peek();
        match p {
            Prim::Boolean => match c {
                Some(b't') => self.literal(b"true"),
                Some(b'f') => self.literal(b"false"),
                _ => self.wrong_json_type(p, "boolean"),
            },
            Prim::Decimal => match c {
                Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
                _ => self.wrong_json_type(p, "number"),
            },
            Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => match c {
                Some(b'-' | b'0'..=b'9') => {
                    let (raw, int) = self.number()?;
                    if !int {
                        return self.err(
                            "value",
                            format!("FHIR {} must be an integral JSON number", p.name()),
                        );
                    }
                    let neg = raw.first() == Some(&b'-');
                    let digits = if neg {
                        raw.get(1..).unwrap_or_default()
                    } else {
                        raw
                    };
                    let mag: i64 = if digits.len() > 11 {
                        i64::MAX
                    } else {
                        digits
                            .iter()
                            .fold(0i64, |a, &d| a * 10 + i64::from(d - b'0'))
                    };
                    let v = if neg { -mag } else { mag };
                    let ok = match p {
                        Prim::Integer => (-2_147_483_648..=2_147_483_647).contains(&v),
                        Prim::PositiveInt => !neg && (1..=2_147_483_647).contains(&v),
                        _ => !neg && (0..=2_147_483_647).contains(&v),
                    };
                    if ok {
                        Ok(())
                    } else {
                        self.err(
                            "value",
                            format!("value is out of range for FHIR {}", p.name()),
                        )
                    }
                }
                _ => self.wrong_json_type(p, "number"),
            },
            _ => {
                if c != Some(b'"') {
                    return self.wrong_json_type(p, "string");
                }
                let s = self.string()?;
                if s.esc {
                    let mut buf = std::mem::take(&mut self.scratch);
                    unescape(s.raw, &mut buf);
                    let r = self.check_string(p, &buf, binding, true);
                    self.scratch = buf;
                    r
                } else {
                    self.check_string(p, s.raw, binding, false)
                }
            }
        }
    }

    #[inline]
    pub(super) fn check_string(
        &mut self,
        p: Prim,
        v: &[u8],
        binding: Option<u16>,
        escaped: bool,
    ) -> Res<()> {
        if v.is_empty() {
            return self.err("value", "empty string is not allowed in FHIR JSON");
        }
        match std::mem::take(&mut self.want) {
            Want::Nothing => {}
            Want::Reference => self.check_reference(v)?,
            Want::BundleType => {
                if let Some(b) = self.bundles.last_mut() {
                    b.submits = matches!(v, b"transaction" | b"batch");
                }
            }
        }
        let ok = match p {
            // Fast path for the most common type.
            Prim::String if !escaped => true,
            _ => check_prim_lexical(p, v),
        };
        if !ok {
            let msg = if p == Prim::Xhtml {
                "narrative div must be an XHTML <div> element (shallow check)".to_string()
            } else {
                format!("value does not match the FHIR {} format", p.name())
            };
            return self.err(
                if p == Prim::Xhtml {
                    "invariant"
                } else {
                    "value"
                },
                msg,
            );
        }
        if matches!(p, Prim::String | Prim::Markdown) {
            if v.len() > MAX_STRING_CHARS
                && v.iter().filter(|&&c| (c & 0xC0) != 0x80).count() > MAX_STRING_CHARS
            {
                self.err(
                    "too-long",
                    "string exceeds the FHIR limit of 1 MiB characters",
                )?;
            }
            if escaped
                && v.iter()
                    .any(|&c| c < 0x20 && !matches!(c, b'\t' | b'\r' | b'\n'))
            {
                self.warn(
                    "value",
                    "string contains control characters (FHIR: SHOULD NOT)",
                )?;
            }
            if v.iter().all(|&c| is_rx_ws(c)) {
                self.warn(
                    "value",
                    "string contains only whitespace (FHIR: SHOULD have non-whitespace content)",
                )?;
            }
        }
        if let (Some(vs), Prim::Code) = (binding, p) {
            let Some(set) = self.s.value_sets.get(usize::from(vs)) else {
                return Ok(());
            };
            // Byte-wise search: `v` is valid UTF-8 here (checked by `string`), so this is the
            // same as comparing `&str`s, without re-validating UTF-8.
            let found = set.codes.binary_search_by(|c| c.as_bytes().cmp(v)).is_ok();
            if !found {
                let msg = format!("code is not in the required value set {}", set.url);
                return self.err("code-invalid", msg);
            }
        }
        Ok(())
    }

    /// `Reference.reference` syntax (see [`reference_form`]). A conditional reference is
    /// held by the innermost Bundle when it sits in one of its entry resources (decided at
    /// the Bundle's end, once its `type` is known), refused anywhere else.
    #[cold]
    pub(super) fn check_reference(&mut self, v: &[u8]) -> Res<()> {
        match reference_form(self.s, v) {
            RefForm::Literal => Ok(()),
            RefForm::Invalid(why) => self.err("value", format!("invalid reference: {why}")),
            RefForm::Conditional => {
                let path = self.render_path();
                match self.bundles.last_mut() {
                    Some(b) if b.in_entry > 0 => {
                        b.conditional.push(path);
                        Ok(())
                    }
                    _ => self.err("value", CONDITIONAL_ONLY_IN_BUNDLES),
                }
            }
        }
    }

    pub(super) fn finish_object(
        &mut self,
        td: &'static TypeDef,
        ty: TypeId,
        st: &ObjState,
    ) -> Res<()> {
        let present = st.val | st.und;
        if td.required_mask & !present != 0 {
            for &ri in &td.required {
                if present & (1u64 << (ri & 63)) == 0 {
                    let Some(el) = td.elems.get(usize::from(ri)) else {
                        continue;
                    };
                    self.path.push(Seg::Name(el.name));
                    let r = self.err(
                        "required",
                        format!(
                            "missing required element '{}' (min cardinality {})",
                            el.name, el.min
                        ),
                    );
                    self.path.pop();
                    r?;
                }
            }
        }
        if st.align {
            let (frame, n) = (st.frame, self.seen.len());
            for i in frame..n {
                let Some(s) = self.seen.get(i) else { continue };
                if !s.many || (!s.under && s.nulls.is_empty()) {
                    continue;
                }
                let (elem, sty, under, len) = (s.elem, s.ty, s.under, s.len);
                let partner = (frame..n).find(|&j| {
                    j != i
                        && self
                            .seen
                            .get(j)
                            .is_some_and(|p| p.elem == elem && p.ty == sty && p.under != under)
                });
                let mut problem = None;
                match (under, partner.and_then(|j| self.seen.get(j))) {
                    (true, Some(p)) if p.len != len => {
                        problem =
                            Some("'_' extension array length must equal the value array length");
                    }
                    (true, None) if !s.nulls.is_empty() => {
                        problem =
                            Some("null in a '_' extension array without a corresponding value");
                    }
                    (false, p) => {
                        let ok = s
                            .nulls
                            .iter()
                            .all(|&k| p.is_some_and(|p| k < p.len && !p.nulls.contains(&k)));
                        if !ok {
                            problem = Some("null in a primitive array requires an extension at the same index in the '_' array");
                        }
                    }
                    _ => {}
                }
                if let Some(msg) = problem {
                    let name = td.elems.get(usize::from(elem)).map_or("?", |e| e.name);
                    self.path.push(Seg::Name(name));
                    let r = self.err("invariant", msg);
                    self.path.pop();
                    r?;
                }
            }
        }
        if ty == self.s.extension {
            let has_value = present & (1u64 << (self.s.ext_value & 63)) != 0;
            let has_ext = present & (1u64 << (self.s.ext_extension & 63)) != 0;
            if has_value == has_ext {
                self.err(
                    "invariant",
                    "an extension must have either extensions or value[x], not both (ext-1)",
                )?;
            }
        }
        Ok(())
    }
}
