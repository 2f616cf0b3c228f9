//! Manifests: YAML (multi-document) or JSON text to typed, validated [`Object`]s.
//!
//! Decoding never drops a field silently. Every field the types do not know is reported by
//! its path: as a warning where ignoring it is safe (`metadata.managedFields`), and as an
//! error where ignoring it would change what runs (`containers[0].livenessProbe`,
//! a `configMap` volume). Type errors name the path too, so a user can find the line.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{FieldError, Invalid};
use crate::object::{Kind, Object};
use crate::validate::validate;

/// The largest manifest text accepted, in bytes (the API server's body limit is the same).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// A decoded object and the unknown fields that were safely ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub object: Object,
    pub warnings: Vec<String>,
}

/// Fields Bramble does not implement and whose absence would change behaviour: a pod that
/// asked for a probe, an init container or a security context must not run without it.
const BEHAVIOURAL_FIELDS: &[&str] = &[
    "startupProbe",
    "ephemeralContainers",
    "serviceAccountToken",
    "clusterTrustBundle",
    "volumeDevices",
    "podAffinity",
    "podAntiAffinity",
    "hostPID",
    "hostIPC",
    "runtimeClassName",
    "readinessGates",
    "subPathExpr",
    "mountPropagation",
    "resourceClaims",
];

/// The deepest nesting a YAML manifest may have (a Deployment is about 12 levels deep).
pub const MAX_YAML_DEPTH: usize = 100;

/// Checks a YAML text's shape before it is built into values, cheaply and without building
/// anything: nesting deeper than [`MAX_YAML_DEPTH`] is refused (a 200 KB text 100,000 levels
/// deep took the parser 39 s of CPU), and so are aliases unless `aliases` (each `*name`
/// copies its anchor's value: 77 KB of them built 264 MB). A text the event parser cannot
/// read is left to the real parser to report.
pub fn check_yaml_shape(text: &str, aliases: bool) -> Result<(), Invalid> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    let mut document = 0usize;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // The event parser stops at its own nesting limit (a few hundred flow levels)
            // before it emits the deep events: that is too deep as well.
            Err(e) if e.info().contains("recursion limit") => {
                return Err(Invalid::single(
                    &format!("document {}", document.max(1)),
                    "",
                    format!(
                        "line {}: nested more than {MAX_YAML_DEPTH} levels deep",
                        e.marker().line()
                    ),
                ));
            }
            Err(_) => return Ok(()),
        };
        let at = |what: &str| {
            Invalid::single(
                &format!("document {}", document.max(1)),
                "",
                format!("line {}: {what}", mark.line()),
            )
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart => document += 1,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(at(&format!(
                        "nested more than {MAX_YAML_DEPTH} levels deep"
                    )));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Alias(_) if !aliases => {
                return Err(at(
                    "YAML aliases (*name) are not accepted by the server; write the value out, or apply the file with bramble, which expands them",
                ));
            }
            _ => {}
        }
    }
}

/// As [`parse_documents`], for a body that reached the API server: aliases are refused
/// (the CLI expands them before it sends anything).
pub fn parse_body_documents(text: &str) -> Result<Vec<Value>, Invalid> {
    check_yaml_shape(text, false)?;
    parse_documents(text)
}

/// Splits YAML (or JSON) text into documents as JSON values; empty documents are skipped
/// and a `kind: List` is expanded into its items. YAML deeper than [`MAX_YAML_DEPTH`] is
/// refused.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, Invalid> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Invalid::single(
            "manifest",
            "",
            format!(
                "is {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                text.len()
            ),
        ));
    }
    let mut docs = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Invalid::single("manifest", "", format!("invalid JSON: {e}")))?;
        match v {
            Value::Array(items) => docs.extend(items),
            v => docs.push(v),
        }
    } else {
        check_yaml_shape(text, true)?;
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(doc).map_err(|e| {
                Invalid::single(
                    &format!("document {}", i + 1),
                    "",
                    format!("invalid YAML: {e}"),
                )
            })?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        if d.get("kind").and_then(Value::as_str) == Some("List")
            && let Some(Value::Array(items)) = d.get("items")
        {
            out.extend(items.iter().cloned());
            continue;
        }
        out.push(d);
    }
    Ok(out)
}

/// Decodes and validates every document of a manifest; all errors are returned together.
pub fn parse_manifests(text: &str) -> Result<Vec<Decoded>, Vec<Invalid>> {
    let docs = parse_documents(text).map_err(|e| vec![e])?;
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        match decode(doc) {
            Ok(d) => ok.push(d),
            Err(mut e) => {
                if e.what == "object" {
                    e.what = format!("document {}", i + 1);
                }
                errs.push(e);
            }
        }
    }
    if errs.is_empty() { Ok(ok) } else { Err(errs) }
}

/// Decodes one JSON value into a typed, validated object.
pub fn decode(value: Value) -> Result<Decoded, Invalid> {
    let Value::Object(map) = &value else {
        return Err(Invalid::single(
            "object",
            "",
            format!(
                "expected a mapping with apiVersion and kind, got {}",
                type_name(&value)
            ),
        ));
    };
    let api_version = map.get("apiVersion");
    let kind_field = map.get("kind");
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut errors = Vec::new();
    let kind = match kind_field {
        None => {
            errors.push(FieldError::new("kind", "Required value"));
            None
        }
        Some(Value::String(k)) => match Kind::from_kind_name(k) {
            Some(kind) => Some(kind),
            None => {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                errors.push(FieldError::new(
                    "kind",
                    format!("unknown kind {k:?}; Bramble serves {}", known.join(", ")),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "kind",
                format!("expected a string, got {}", type_name(other)),
            ));
            None
        }
    };
    let what = match (kind, name.is_empty()) {
        (Some(k), false) => format!("{} {name:?}", k.singular()),
        (Some(k), true) => k.singular().to_string(),
        (None, false) => format!("object {name:?}"),
        (None, true) => "object".to_string(),
    };
    match (api_version, kind) {
        (None, _) => errors.push(FieldError::new("apiVersion", "Required value")),
        (Some(Value::String(v)), Some(k)) if v != k.api_version() => errors.push(FieldError::new(
            "apiVersion",
            format!("{} is served as {:?}, got {v:?}", k.name(), k.api_version()),
        )),
        (Some(Value::String(_)), _) => {}
        (Some(other), _) => errors.push(FieldError::new(
            "apiVersion",
            format!("expected a string, got {}", type_name(other)),
        )),
    }
    let Some(kind) = kind else {
        return Err(Invalid { what, errors });
    };
    if !errors.is_empty() {
        return Err(Invalid { what, errors });
    }
    let (object, unknown) = match typed(kind, value) {
        Ok(v) => v,
        Err(e) => {
            return Err(Invalid {
                what,
                errors: vec![e],
            });
        }
    };
    let mut warnings = Vec::new();
    for path in unknown {
        match classify_unknown(&path) {
            Some(reason) => errors.push(FieldError::new(&path, reason)),
            None => warnings.push(format!("unknown field {path:?} ignored")),
        }
    }
    errors.extend(validate(&object));
    if errors.is_empty() {
        Ok(Decoded { object, warnings })
    } else {
        Err(Invalid { what, errors })
    }
}

/// Deserializes into the kind's type, collecting unknown field paths and naming the path of
/// any type error.
fn typed(kind: Kind, value: Value) -> Result<(Object, Vec<String>), FieldError> {
    fn de<T: serde::de::DeserializeOwned>(value: Value) -> Result<(T, Vec<String>), FieldError> {
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
        let result = serde_ignored::deserialize(tracked, |p| unknown.push(ignored_path(&p)));
        match result {
            Ok(v) => Ok((v, unknown)),
            Err(e) => Err(FieldError::new(&error_path(&track.path()), e.to_string())),
        }
    }
    let mut obj = match kind {
        Kind::Namespace => de(value).map(|(o, u)| (Object::Namespace(o), u)),
        Kind::Node => de(value).map(|(o, u)| (Object::Node(o), u)),
        Kind::Pod => de(value).map(|(o, u)| (Object::Pod(o), u)),
        Kind::Deployment => de(value).map(|(o, u)| (Object::Deployment(o), u)),
        Kind::ReplicaSet => de(value).map(|(o, u)| (Object::ReplicaSet(o), u)),
        Kind::DaemonSet => de(value).map(|(o, u)| (Object::DaemonSet(o), u)),
        Kind::Job => de(value).map(|(o, u)| (Object::Job(o), u)),
        Kind::CronJob => de(value).map(|(o, u)| (Object::CronJob(o), u)),
        Kind::Service => de(value).map(|(o, u)| (Object::Service(o), u)),
        Kind::Endpoints => de(value).map(|(o, u)| (Object::Endpoints(o), u)),
        Kind::Event => de(value).map(|(o, u)| (Object::Event(o), u)),
        Kind::ConfigMap => de(value).map(|(o, u)| (Object::ConfigMap(o), u)),
        // A decoding error quotes the value it could not read: never a Secret's.
        Kind::Secret => de(value)
            .map(|(o, u)| (Object::Secret(o), u))
            .map_err(|e| FieldError::new(&e.path, redact_values(&e.message))),
        Kind::Image => Err(FieldError::new(
            "kind",
            "Image objects are created by `bramble image import FILE`, not applied",
        )),
    }?;
    obj.0.normalize_type_meta();
    Ok(obj)
}

/// A decoding message with every quoted value (serde quotes them in backticks) left out.
fn redact_values(message: &str) -> String {
    let mut out = String::new();
    for (i, part) in message.split('`').enumerate() {
        out.push_str(if i % 2 == 1 {
            "(value not shown)"
        } else {
            part
        });
    }
    out
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let head = ignored_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Decides whether an unknown field is an error (the reason) or a warning (None).
fn classify_unknown(path: &str) -> Option<String> {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last_name = last.split('[').next().unwrap_or(last);
    if path.contains("securityContext.") {
        // seLinuxOptions, sysctls, procMount, appArmorProfile...: a pod that asked for
        // one must not run without it.
        return Some(
            "not supported by Bramble in a securityContext (runAsUser, runAsGroup, runAsNonRoot, fsGroup, supplementalGroups, privileged, capabilities, readOnlyRootFilesystem, allowPrivilegeEscalation and seccompProfile are)".into(),
        );
    }
    if BEHAVIOURAL_FIELDS.contains(&last_name) {
        return Some(
            "not supported by Bramble, and ignoring it would change how the workload runs".into(),
        );
    }
    // `spec.volumes[0].configMap`: a volume source Bramble cannot provide.
    let parent = &path[..path.len() - last.len()];
    if parent.ends_with("].")
        && parent
            .trim_end_matches('.')
            .rsplit('.')
            .next()
            .is_some_and(|p| p.starts_with("volumes["))
    {
        return Some(format!(
            "volume source {last_name:?} is not supported by Bramble (emptyDir, hostPath, configMap, secret, projected and downwardAPI are)"
        ));
    }
    None
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_WITH_ALIAS: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: &l {app: web}\n  annotations: *l\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn the_server_refuses_aliases_and_the_cli_expands_them() {
        let e = parse_body_documents(POD_WITH_ALIAS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("aliases") && e.contains("line 6"), "{e}");
        let docs = parse_documents(POD_WITH_ALIAS).unwrap();
        assert_eq!(docs[0]["metadata"]["annotations"]["app"], "web");
        // An anchor alone changes nothing and is accepted.
        let anchored = POD_WITH_ALIAS.replace("  annotations: *l\n", "");
        assert_eq!(parse_body_documents(&anchored).unwrap().len(), 1);
        // A billion laughs never gets to expand.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = (b'a' + i - 1) as char;
            let this = (b'a' + i) as char;
            bomb.push_str(&format!("{this}: &{this} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(
            parse_body_documents(&bomb)
                .unwrap_err()
                .to_string()
                .contains("aliases")
        );
    }

    #[test]
    fn nesting_is_capped_before_anything_is_built() {
        // (Text that starts with `[` or `{` is JSON, whose parser has its own limit of 128.)
        for deep in [
            format!("a: {}", "[".repeat(100_000)),
            format!("a: {}1{}", "[".repeat(101), "]".repeat(101)),
            (0..101)
                .map(|i| format!("{}k:\n", "  ".repeat(i)))
                .collect(),
        ] {
            let e = parse_documents(&deep).unwrap_err().to_string();
            assert!(e.contains("nested more than 100 levels"), "{e}");
        }
        let ok = format!("a: {}1{}", "[".repeat(99), "]".repeat(99));
        assert_eq!(parse_documents(&ok).unwrap().len(), 1);
    }

    #[test]
    fn classifies_unknown_fields() {
        assert!(classify_unknown("spec.template.spec.containers[0].startupProbe").is_some());
        assert!(classify_unknown("spec.volumes[0].configMap").is_some());
        assert!(classify_unknown("spec.template.spec.volumes[2].secret").is_some());
        assert!(classify_unknown("metadata.managedFields").is_none());
        assert!(classify_unknown("spec.dnsPolicy").is_none());
        assert!(classify_unknown("spec.volumes[0].csi").is_some());
        assert!(
            classify_unknown("spec.volumes[0].projected.sources[0].serviceAccountToken").is_some()
        );
    }

    #[test]
    fn unknown_nested_paths_are_reported_with_indices() {
        let docs = parse_documents(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: busybox\n    tty: true\n",
        )
        .unwrap();
        let d = decode(docs.into_iter().next().unwrap()).unwrap();
        assert_eq!(
            d.warnings,
            vec!["unknown field \"spec.containers[0].tty\" ignored".to_string()]
        );
    }
}
