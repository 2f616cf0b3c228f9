//! Patches as kubectl sends them: JSON merge patch (RFC 7386, `application/merge-patch+json`)
//! and Kubernetes' strategic merge patch (`application/strategic-merge-patch+json`: lists
//! with a merge key are merged element by element, with the `$patch`, `$setElementOrder`,
//! `$retainKeys` and `$deleteFromPrimitiveList` directives). Pure: the handler applies the
//! result to the stored object as an update.

use serde_json::{Map, Value};

/// Which patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Merge,
    Strategic,
}

/// The patch a PATCH request's Content-Type names; None for server-side apply (and for
/// anything else, which the apply handler refuses with 415 naming what it takes).
pub fn media(headers: &axum::http::HeaderMap) -> Option<Kind> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())?;
    match ct.split(';').next()?.trim().to_ascii_lowercase().as_str() {
        "application/merge-patch+json" => Some(Kind::Merge),
        "application/strategic-merge-patch+json" => Some(Kind::Strategic),
        _ => None,
    }
}

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not a JSON object")]
    NotAnObject,
    #[error("{path}: unknown patch directive {directive:?}")]
    Directive { path: String, directive: String },
    #[error("{path}: element {index} has no merge key {key:?}")]
    NoMergeKey {
        path: String,
        index: usize,
        key: String,
    },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

/// The merge key of a list field in Kubernetes' types (`patchMergeKey`), by field name.
/// Lists not named here are replaced whole, as Kubernetes replaces them.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "hostAliases" => Some("ip"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("port"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// Container ports merge on `containerPort`, a Service's on `port`: the parent decides.
fn list_key(parent: &str, field: &str) -> Option<&'static str> {
    if field == "ports" && parent == "containers" {
        return Some("containerPort");
    }
    merge_key(field)
}

/// Applies `patch` to `target`.
pub fn apply(target: &Value, patch: &Value, kind: Kind) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject);
    };
    let mut out = target.clone();
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    merge_map(&mut out, p, kind, "", "")?;
    Ok(out)
}

fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    kind: Kind,
    path: &str,
    parent: &str,
) -> Result<(), PatchError> {
    if kind == Kind::Strategic {
        match patch.get("$patch").and_then(Value::as_str) {
            Some("replace") => {
                let mut m = patch.clone();
                m.remove("$patch");
                *target = Value::Object(strip_directives(m));
                return Ok(());
            }
            Some("delete") => {
                *target = Value::Null;
                return Ok(());
            }
            Some("merge") | None => {}
            Some(other) => {
                return Err(PatchError::Directive {
                    path: path.to_string(),
                    directive: format!("$patch: {other}"),
                });
            }
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in patch {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if kind == Kind::Strategic && k.starts_with('$') {
            if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                let remove = v.as_array().cloned().unwrap_or_default();
                if let Some(Value::Array(items)) = t.get_mut(field) {
                    items.retain(|i| !remove.contains(i));
                }
                continue;
            }
            if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
                // Order hints and retained keys: the merge keeps the target's order and
                // the patch names every key it changes.
                continue;
            }
            return Err(PatchError::Directive {
                path: here,
                directive: k.clone(),
            });
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_map(slot, pm, kind, &here, k)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(items) if kind == Kind::Strategic => match list_key(parent, k) {
                Some(key) => {
                    let slot = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                    merge_list(slot, items, key, kind, &here, k)?;
                }
                None => {
                    t.insert(k.clone(), Value::Array(strip_list(items)));
                }
            },
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

/// Merges a patch list into a list by `key`: an element with the key of an existing one is
/// merged into it (or removed with `$patch: delete`), others are appended.
fn merge_list(
    target: &mut Value,
    patch: &[Value],
    key: &str,
    kind: Kind,
    path: &str,
    field: &str,
) -> Result<(), PatchError> {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(items) = target else {
        return Ok(());
    };
    // `[{"$patch": "replace"}, ...]`: the list as given.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *items = strip_list(
            &patch
                .iter()
                .filter(|e| e.get("$patch").is_none())
                .cloned()
                .collect::<Vec<_>>(),
        );
        return Ok(());
    }
    for (i, e) in patch.iter().enumerate() {
        let Value::Object(pm) = e else {
            return Err(PatchError::Invalid {
                path: format!("{path}[{i}]"),
                what: "a list merged by key holds objects".into(),
            });
        };
        let Some(id) = pm.get(key) else {
            return Err(PatchError::NoMergeKey {
                path: path.to_string(),
                index: i,
                key: key.to_string(),
            });
        };
        let at = items.iter().position(|x| x.get(key) == Some(id));
        let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(j), true) => {
                items.remove(j);
            }
            (None, true) => {}
            (Some(j), false) => {
                merge_map(&mut items[j], pm, kind, &format!("{path}[{i}]"), field)?;
            }
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                merge_map(&mut fresh, pm, kind, &format!("{path}[{i}]"), field)?;
                items.push(fresh);
            }
        }
    }
    Ok(())
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

fn strip_list(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|v| match v {
            Value::Object(m) => Value::Object(strip_directives(m.clone())),
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_maps_deletes_nulls_and_replaces_lists() {
        let t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"xs": [1, 2]}});
        let p = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"xs": [9]}});
        assert_eq!(
            apply(&t, &p, Kind::Merge).unwrap(),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"xs": [9]}})
        );
        assert_eq!(
            apply(&t, &json!([1]), Kind::Merge),
            Err(PatchError::NotAnObject)
        );
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_honours_directives() {
        let t = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}],
             "env": [{"name": "X", "value": "1"}]},
            {"name": "side", "image": "s:1"}
        ], "tolerations": [{"key": "k"}]}}}});
        let p = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [
                {"name": "app", "image": "a:2", "env": [{"name": "Y", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "side", "$patch": "delete"},
                {"name": "new", "image": "n:1"}
            ],
            "tolerations": [{"key": "other"}]
        }}}});
        let out = apply(&t, &p, Kind::Strategic).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2, "{out}");
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}])
        );
        assert_eq!(cs[1], json!({"name": "new", "image": "n:1"}));
        // A list without a merge key is replaced; the directive keys never land.
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "other"}])
        );
        assert!(!out.to_string().contains('$'), "{out}");
        // `$patch: replace` on a map, `$deleteFromPrimitiveList`.
        let t = json!({"a": {"x": 1, "y": 2}, "finalizers": ["f1", "f2"]});
        let p = json!({"a": {"$patch": "replace", "z": 3}, "$deleteFromPrimitiveList/finalizers": ["f1"]});
        assert_eq!(
            apply(&t, &p, Kind::Strategic).unwrap(),
            json!({"a": {"z": 3}, "finalizers": ["f2"]})
        );
    }

    #[test]
    fn hostile_strategic_patches_are_refused_with_the_path() {
        let t = json!({"spec": {"containers": [{"name": "a"}]}});
        let no_key = json!({"spec": {"containers": [{"image": "x"}]}});
        assert_eq!(
            apply(&t, &no_key, Kind::Strategic).unwrap_err().to_string(),
            "spec.containers: element 0 has no merge key \"name\""
        );
        let bad = json!({"spec": {"$patch": "explode"}});
        assert!(
            apply(&t, &bad, Kind::Strategic)
                .unwrap_err()
                .to_string()
                .starts_with("spec")
        );
        let unknown = json!({"spec": {"$bogus": 1}});
        assert!(matches!(
            apply(&t, &unknown, Kind::Strategic),
            Err(PatchError::Directive { .. })
        ));
        let not_objects = json!({"spec": {"containers": [1]}});
        assert!(matches!(
            apply(&t, &not_objects, Kind::Strategic),
            Err(PatchError::Invalid { .. })
        ));
    }
}
