//! OpenAPI v2 (`/openapi/v2`), for kubectl before 1.27: it validates manifests, computes
//! `diff` and answers `explain` from it, and asks for it as protobuf (gnostic's
//! `openapi.v2.Document`). The definitions are the same generated schemas as OpenAPI v3's
//! ([`super::openapi::schemas`]), rewritten to Swagger 2.0 (references under `#/definitions`,
//! int-or-string as a string of that format, no `anyOf`/`oneOf`/`nullable`), and encoded by
//! hand: only the fields of `Document`, `Schema` and their parts that schemas use.

use serde_json::{Map, Value, json};

use bramble_api::Kind;

/// The protobuf media type kubectl asks for.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The one the answer carries: the same with `.` for `@`, which is not a valid media type
/// character (Go's `mime` refuses it), as Kubernetes answers.
pub const PROTOBUF_ANSWER: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Every group's definitions, Swagger 2.0 style, by name.
pub fn definitions() -> Map<String, Value> {
    let mut groups: Vec<&str> = Vec::new();
    for k in Kind::ALL {
        if !groups.contains(&k.group()) {
            groups.push(k.group());
        }
    }
    let mut out = Map::new();
    for g in groups {
        for (name, schema) in super::openapi::schemas(g) {
            out.insert(name, to_v2(&schema));
        }
    }
    out
}

/// The document as JSON (for clients that ask for JSON).
pub fn document() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Bramble", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": {},
        "definitions": definitions(),
    })
}

/// An OpenAPI 3 schema as Swagger 2.0 has it.
fn to_v2(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                let mut out = json!({"type": "string", "format": "int-or-string"});
                if let Some(d) = m.get("description") {
                    out["description"] = d.clone();
                }
                return out;
            }
            // Swagger 2.0 readers (kubectl's) take a reference with siblings, not `allOf`.
            if let Some([single]) = m.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
                let mut merged = m.clone();
                merged.remove("allOf");
                if let Value::Object(inner) = single {
                    for (k, x) in inner {
                        merged.entry(k.clone()).or_insert(x.clone());
                    }
                }
                return to_v2(&Value::Object(merged));
            }
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "$ref" => {
                        let r = x.as_str().unwrap_or("");
                        let name = r.rsplit('/').next().unwrap_or(r);
                        out.insert(k.clone(), json!(format!("#/definitions/{name}")));
                    }
                    "anyOf" | "oneOf" | "nullable" | "const" | "$schema" => {}
                    _ => {
                        out.insert(k.clone(), to_v2(x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
        other => other.clone(),
    }
}

/// Protobuf's wire: tags, varints, length-delimited fields.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.varint(u64::from(field) << 3);
            self.varint(1);
        }
    }

    fn double(&mut self, field: u32, d: f64) {
        self.varint(u64::from(field) << 3 | 1);
        self.0.extend_from_slice(&d.to_le_bytes());
    }

    fn int64(&mut self, field: u32, i: i64) {
        self.varint(u64::from(field) << 3);
        self.varint(i as u64);
    }
}

/// `Any { yaml }`: JSON is YAML.
fn any(v: &Value) -> Pb {
    let mut a = Pb::default();
    a.string(2, &v.to_string());
    a
}

/// `NamedAny { name, value }`.
fn named_any(name: &str, v: &Value) -> Pb {
    let mut n = Pb::default();
    n.string(1, name);
    n.message(2, any(v));
    n
}

/// `NamedSchema { name, value }`.
fn named_schema(name: &str, v: &Value) -> Pb {
    let mut n = Pb::default();
    n.string(1, name);
    n.message(2, schema(v));
    n
}

/// gnostic's `Schema`.
fn schema(v: &Value) -> Pb {
    let mut s = Pb::default();
    let Some(m) = v.as_object() else {
        return s;
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
    s.string(1, text("$ref"));
    s.string(2, text("format"));
    s.string(3, text("title"));
    s.string(4, text("description"));
    if let Some(d) = m.get("default") {
        s.message(5, any(d));
    }
    if let Some(x) = m.get("maximum").and_then(Value::as_f64) {
        s.double(7, x);
    }
    if let Some(x) = m.get("minimum").and_then(Value::as_f64) {
        s.double(9, x);
    }
    for (field, key) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
    ] {
        if let Some(x) = m.get(key).and_then(Value::as_i64) {
            s.int64(field, x);
        }
    }
    s.string(13, text("pattern"));
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.string(19, r.as_str().unwrap_or(""));
    }
    for e in m
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.message(20, any(e));
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Pb::default();
            a.varint(2 << 3);
            a.varint(u64::from(*b));
            s.message(21, a);
        }
        Some(x @ Value::Object(_)) => {
            let mut a = Pb::default();
            a.message(1, schema(x));
            s.message(21, a);
        }
        _ => {}
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut t = Pb::default();
        for x in types {
            t.string(1, x);
        }
        s.message(22, t);
    }
    match m.get("items") {
        Some(x @ Value::Object(_)) => {
            let mut i = Pb::default();
            i.message(1, schema(x));
            s.message(23, i);
        }
        Some(Value::Array(a)) => {
            let mut i = Pb::default();
            for x in a {
                i.message(1, schema(x));
            }
            s.message(23, i);
        }
        _ => {}
    }
    for x in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.message(24, schema(x));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        let mut p = Pb::default();
        for (name, x) in props {
            p.message(1, named_schema(name, x));
        }
        s.message(25, p);
    }
    s.boolean(27, m.get("readOnly") == Some(&Value::Bool(true)));
    for (k, x) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        s.message(31, named_any(k, x));
    }
    s
}

/// Each kind's PATCH operation, tagged with its group-version-kind and taking `dryRun`:
/// what kubectl 1.20 looks for before `diff` (a server-side dry run).
fn paths() -> Pb {
    let mut paths = Pb::default();
    for k in Kind::ALL {
        let ns = k.namespaced().then_some("{namespace}");
        let mut op = Pb::default();
        op.string(5, &format!("patch{}", k.name()));
        for name in ["dryRun", "fieldManager", "fieldValidation"] {
            let mut query = Pb::default();
            query.string(2, "query");
            query.string(4, name);
            query.string(6, "string");
            let mut non_body = Pb::default();
            non_body.message(3, query);
            let mut parameter = Pb::default();
            parameter.message(2, non_body);
            let mut item = Pb::default();
            item.message(1, parameter);
            op.message(8, item);
        }
        // On operations the extension is one object, not a list.
        op.message(
            13,
            named_any(
                "x-kubernetes-group-version-kind",
                &json!({"group": k.group(), "version": "v1", "kind": k.name()}),
            ),
        );
        let mut item = Pb::default();
        item.message(8, op);
        let mut named = Pb::default();
        named.string(1, &k.path(ns, Some("{name}")));
        named.message(2, item);
        paths.message(2, named);
    }
    paths
}

/// gnostic's `Document`, protobuf-encoded.
pub fn protobuf() -> Vec<u8> {
    let mut d = Pb::default();
    d.string(1, "2.0");
    let mut info = Pb::default();
    info.string(1, "Bramble");
    info.string(2, &format!("v1.{}.0", super::discovery::KUBE_MINOR));
    d.message(2, info);
    d.message(8, paths());
    let mut defs = Pb::default();
    for (name, x) in definitions() {
        defs.message(1, named_schema(&name, &x));
    }
    d.message(9, defs);
    d.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_swagger_2() {
        let d = definitions();
        let pod = d.get("Pod").unwrap();
        assert_eq!(
            pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod",
            "{pod}"
        );
        let text = Value::Object(d.clone()).to_string();
        assert!(!text.contains("#/components/schemas"));
        assert!(!text.contains("\"anyOf\""));
        assert_eq!(d["Quantity"]["format"], "int-or-string");
        assert!(
            !text.contains("\"allOf\""),
            "references are plain in Swagger 2.0"
        );
        let strategy = &d["DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(
            strategy["$ref"], "#/definitions/DeploymentStrategy",
            "{strategy}"
        );
        assert!(d.contains_key("Deployment") && d.contains_key("CronJob"));
    }

    /// Reads the (field, wire type, bytes) of a protobuf message's top level.
    fn fields(mut b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let varint = |b: &mut &[u8]| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let x = b[0];
                *b = &b[1..];
                v |= u64::from(x & 0x7f) << shift;
                shift += 7;
                if x < 0x80 {
                    return v;
                }
            }
        };
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = (key >> 3, key & 7);
            let data = match wire {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let d = b[..8].to_vec();
                    b = &b[8..];
                    d
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let d = b[..n].to_vec();
                    b = &b[n..];
                    d
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, wire, data));
        }
        out
    }

    #[test]
    fn the_document_encodes_as_gnostic_reads_it() {
        let doc = protobuf();
        let top = fields(&doc);
        assert_eq!(top[0], (1, 2, b"2.0".to_vec()));
        let defs = &top.iter().find(|f| f.0 == 9).unwrap().2;
        // Definitions: NamedSchema { name = 1, value = 2 }; find the Pod and its GVK extension.
        let pod = fields(defs)
            .into_iter()
            .map(|f| fields(&f.2))
            .find(|named| named[0].2 == b"Pod")
            .unwrap();
        let schema = fields(&pod[1].2);
        let ext = schema
            .iter()
            .find(|f| f.0 == 31)
            .expect("a vendor extension");
        let named = fields(&ext.2);
        assert_eq!(named[0].2, b"x-kubernetes-group-version-kind");
        let yaml = fields(&named[1].2);
        let text = String::from_utf8(yaml[0].2.clone()).unwrap();
        assert!(text.contains("\"kind\":\"Pod\""), "{text}");
        // Properties (25) hold the fields by name.
        let props = schema.iter().find(|f| f.0 == 25).unwrap();
        let names: Vec<Vec<u8>> = fields(&props.2)
            .iter()
            .map(|p| fields(&p.2)[0].2.clone())
            .collect();
        assert!(names.contains(&b"spec".to_vec()), "{names:?}");
    }
}
