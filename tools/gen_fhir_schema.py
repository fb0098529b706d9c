#!/usr/bin/env python3
"""Generate Ward's compact FHIR R4 schema table (src/fhir/schema.txt).

Input : HL7 FHIR R4 definitions directory (profiles-resources.json,
        profiles-types.json, valuesets.json, version.info).
Output: a line-based, tab-separated text file read by src/fhir/validate/mod.rs
        via include_str!("../schema.txt").

Usage:  python3 tools/gen_fhir_schema.py [DEFS_DIR] [OUT_FILE]
        (defaults: $FHIR_R4_DEFS, else ../shared/fhir-r4 beside the repo, else /work/shared/fhir-r4;
         output src/fhir/schema.txt)

Stdlib only. Output is deterministic (same input -> byte-identical file).

File format (one record per line, fields separated by TAB, '#' = comment):
  V <TAB> url <TAB> code <TAB> code ...       required-binding value set, numbered 0.. in order
  T <TAB> Name <TAB> kind                     type header; kind: P primitive, C complex datatype,
                                              R resource, B backbone element, A abstract "Resource"
  <name> <TAB> min <TAB> max <TAB> types <TAB> vs
                                              element of the preceding T; name ends in "[x]" for
                                              choice elements; max is "1" or "*"; types is a
                                              comma-separated list of type names (primitive,
                                              complex, resource, "Resource" or a backbone type
                                              named by its element path, e.g. "Questionnaire.item");
                                              vs is a V index or "-".
"""
import json
import os
import sys

MAX_CODES = 200
R4_VERSION = "4.0.1"
SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SIMPLE_QTY = "http://hl7.org/fhir/StructureDefinition/SimpleQuantity"
PRIMITIVES = [
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
]


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def entries(bundle):
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


class ValueSets:
    def __init__(self, vs_bundle):
        self.vs = {}
        self.cs = {}
        for r in entries(vs_bundle):
            if r["resourceType"] == "ValueSet":
                self.vs[r["url"]] = r
            elif r["resourceType"] == "CodeSystem":
                self.cs[r["url"]] = r
        self.cache = {}

    def cs_codes(self, url):
        cs = self.cs.get(url)
        if cs is None or cs.get("content") != "complete":
            return None
        out = []

        def walk(concepts):
            for c in concepts:
                out.append(c["code"])
                walk(c.get("concept", []))

        walk(cs.get("concept", []))
        return out

    def include_codes(self, inc, stack):
        if "filter" in inc:
            return None
        codes = None
        if "system" in inc:
            if "concept" in inc:
                codes = [c["code"] for c in inc["concept"]]
            else:
                codes = self.cs_codes(inc["system"])
            if codes is None:
                return None
        if "valueSet" in inc:
            if codes is not None:
                return None  # system + valueSet intersection: not handled
            codes = []
            for ref in inc["valueSet"]:
                sub = self.expand(ref, stack)
                if sub is None:
                    return None
                codes.extend(sub)
        return codes

    def expand(self, url, stack=()):
        url = url.split("|")[0]
        if url in self.cache:
            return self.cache[url]
        if url in stack:
            return None
        vs = self.vs.get(url)
        result = None
        if vs is not None and "compose" in vs:
            compose = vs["compose"]
            codes = []
            ok = True
            for inc in compose.get("include", []):
                c = self.include_codes(inc, stack + (url,))
                if c is None:
                    ok = False
                    break
                codes.extend(c)
            if ok:
                for exc in compose.get("exclude", []):
                    if "concept" not in exc or "filter" in exc or "valueSet" in exc:
                        ok = False
                        break
                    drop = {c["code"] for c in exc["concept"]}
                    codes = [c for c in codes if c not in drop]
            if ok and codes:
                result = sorted(set(codes))
        self.cache[url] = result
        return result


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) > 1:
        defs = sys.argv[1]
    else:
        candidates = [os.environ.get("FHIR_R4_DEFS", ""),
                      os.path.join(here, "..", "..", "shared", "fhir-r4")]
        defs = next((c for c in candidates if c and os.path.isfile(os.path.join(c, "profiles-resources.json"))), None)
        if defs is None:
            raise SystemExit("FHIR R4 definitions not found; pass DEFS_DIR or set FHIR_R4_DEFS")
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "src", "fhir", "schema.txt")

    version = "unknown"
    vi = os.path.join(defs, "version.info")
    if os.path.exists(vi):
        with open(vi, encoding="utf-8") as f:
            for line in f:
                if line.startswith("FhirVersion="):
                    version = line.strip().split("=", 1)[1]

    res_sds = [r for r in entries(load(os.path.join(defs, "profiles-resources.json")))
               if r["resourceType"] == "StructureDefinition"]
    typ_sds = [r for r in entries(load(os.path.join(defs, "profiles-types.json")))
               if r["resourceType"] == "StructureDefinition"]
    vsets = ValueSets(load(os.path.join(defs, "valuesets.json")))

    skipped_types = []
    resources = []
    for sd in res_sds:
        if sd.get("kind") != "resource" or sd.get("derivation") != "specialization" or sd.get("abstract"):
            continue
        if sd.get("fhirVersion") != R4_VERSION:
            # e.g. SubscriptionStatus (R4B 4.3.0) added by the packager: not an R4 resource type.
            skipped_types.append("%s (fhirVersion %s)" % (sd["type"], sd.get("fhirVersion")))
            continue
        resources.append(sd)
    resource_names = {sd["type"] for sd in resources}

    complex_sds = []
    for sd in typ_sds:
        if sd["kind"] == "complex-type" and sd.get("derivation") == "specialization" and not sd.get("abstract"):
            complex_sds.append((sd["type"], sd))
        elif sd["id"] == "SimpleQuantity":
            complex_sds.append(("SimpleQuantity", sd))
    element_sd = next(sd for sd in typ_sds if sd["id"] == "Element")
    complex_sds.append(("Element", element_sd))

    vs_index = {}
    vs_lines = []
    stats = {"bound": 0, "skipped": set()}

    def binding_for(el, codes):
        b = el.get("binding")
        if not b or b.get("strength") != "required" or "code" not in codes or "valueSet" not in b:
            return "-"
        url = b["valueSet"].split("|")[0]
        exp = vsets.expand(url)
        if exp is None or len(exp) > MAX_CODES:
            stats["skipped"].add(url)
            return "-"
        for c in exp:
            if "\t" in c or "\n" in c:
                stats["skipped"].add(url)
                return "-"
        if url not in vs_index:
            vs_index[url] = len(vs_lines)
            vs_lines.append("V\t%s\t%s" % (url, "\t".join(exp)))
        stats["bound"] += 1
        return str(vs_index[url])

    def type_names(el, is_resource_root_child):
        if "contentReference" in el:
            return [el["contentReference"].split("#", 1)[1]]
        out = []
        for t in el.get("type", []):
            code = t["code"]
            if code.startswith(SYSTEM_PREFIX):
                ft = [x.get("valueUrl") for x in t.get("extension", []) if x.get("url") == FHIR_TYPE_EXT]
                code = ft[0] if ft and ft[0] else "string"
                if is_resource_root_child and el["path"].endswith(".id"):
                    code = "id"  # Resource.id is of type id (regex [A-Za-z0-9\-\.]{1,64})
            elif code == "Quantity" and t.get("profile") == [SIMPLE_QTY]:
                code = "SimpleQuantity"
            out.append(code)
        return out

    def emit_sd(name, sd, kind, out):
        elems = sd["snapshot"]["element"]
        root = elems[0]["path"]
        paths = {e["path"] for e in elems}
        # group children by parent path
        groups = {root: []}
        order = [root]
        for el in elems[1:]:
            if el.get("max") == "0":
                continue
            path = el["path"]
            parent, child = path.rsplit(".", 1)
            codes = type_names(el, parent == root and kind == "R")
            is_backbone = ("contentReference" not in el and codes in (["BackboneElement"], ["Element"])
                           and any(p.startswith(path + ".") for p in paths))
            if is_backbone:
                codes = [path]
                groups[path] = []
                order.append(path)
            if parent not in groups:
                raise SystemExit("orphan element %s in %s" % (path, name))
            mx = el.get("max")
            if mx not in ("1", "*"):
                raise SystemExit("unexpected max %r at %s" % (mx, path))
            mn = int(el.get("min", 0))
            groups[parent].append("%s\t%d\t%s\t%s\t%s" % (child, mn, mx, ",".join(codes), binding_for(el, codes)))
        for g in order:
            tname = name if g == root else g
            if g != root and root != name:
                tname = name + g[len(root):]
            out.append("T\t%s\t%s" % (tname, kind if g == root else "B"))
            out.extend(groups[g])

    body = []
    for p in PRIMITIVES:
        body.append("T\t%s\tP" % p)
    body.append("T\tResource\tA")
    for name, sd in sorted(complex_sds, key=lambda x: x[0]):
        emit_sd(name, sd, "C", body)
    for sd in sorted(resources, key=lambda s: s["type"]):
        emit_sd(sd["type"], sd, "R", body)

    # sanity: every referenced type exists
    defined = {l.split("\t")[1] for l in body if l.startswith("T\t")}
    for l in body:
        if not l.startswith("T\t"):
            for t in l.split("\t")[3].split(","):
                if t not in defined:
                    raise SystemExit("undefined type %s in line %r" % (t, l))

    header = [
        "# Ward FHIR schema table -- GENERATED by tools/gen_fhir_schema.py; do not edit.",
        "# Derived from the HL7 FHIR R4 definitions (FhirVersion=%s): StructureDefinitions from" % version,
        "# profiles-resources.json / profiles-types.json and required-binding value sets from valuesets.json.",
        "# HL7 FHIR is (c) HL7 International, published under CC0 (\"No Rights Reserved\");",
        "# FHIR(R) is a registered trademark of HL7. See http://hl7.org/fhir/license.html",
        "# Resource types: %d; excluded non-R4 types: %s" % (len(resources), ", ".join(skipped_types) or "none"),
        "# Required bindings enumerated: %d elements / %d value sets (max %d codes each)"
        % (stats["bound"], len(vs_lines), MAX_CODES),
    ]
    text = "\n".join(header + vs_lines + body) + "\n"
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    sys.stderr.write("wrote %s: %d bytes, %d resource types, %d value sets, %d bound elements, "
                     "%d required value sets skipped (not enumerable or > %d codes)\n"
                     % (out_path, len(text.encode("utf-8")), len(resources), len(vs_lines),
                        stats["bound"], len(stats["skipped"]), MAX_CODES))
    for s in sorted(stats["skipped"]):
        sys.stderr.write("  skipped binding: %s\n" % s)


if __name__ == "__main__":
    main()
