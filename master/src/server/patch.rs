//! Patches as kubectl sends them: JSON patch (RFC 6902, `application/json-patch+json`, what
//! `kubectl rollout undo` sends), JSON merge patch (RFC 7386, `application/merge-patch+json`)
//! and Kubernetes' strategic merge patch (`application/strategic-merge-patch+json`: lists
//! with a merge key are merged element by element, with the `$patch`, `$setElementOrder`,
//! `$retainKeys` and `$deleteFromPrimitiveList` directives). Pure: the handler applies the
//! result to the stored object as an update.

use serde_json::{Map, Value};

/// Which patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
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
        "application/json-patch+json" => Some(Kind::Json),
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
    if kind == Kind::Json {
        return json_patch(target, patch);
    }
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

/// RFC 6902: the operations in order, all or nothing.
fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::Invalid {
            path: String::new(),
            what: "a JSON patch is a list of operations".into(),
        });
    };
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let at = |what: String| PatchError::Invalid {
            path: format!("[{i}]"),
            what,
        };
        let field = |name: &str| -> Result<&str, PatchError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| at(format!("{name} is required")))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| at("value is required".into()))
        };
        match field("op")? {
            "add" => add(&mut doc, path, value()?).map_err(at)?,
            "remove" => {
                remove(&mut doc, path).map_err(at)?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(at)?;
                add(&mut doc, path, value()?).map_err(at)?;
            }
            "move" => {
                let v = remove(&mut doc, field("from")?).map_err(at)?;
                add(&mut doc, path, v).map_err(at)?;
            }
            "copy" => {
                let v = doc
                    .pointer(field("from")?)
                    .cloned()
                    .ok_or_else(|| at("from does not exist".into()))?;
                add(&mut doc, path, v).map_err(at)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(at(format!("test of {path} failed")));
                }
            }
            other => return Err(at(format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

/// A JSON pointer's parent and last token (`~1` is `/`, `~0` is `~`).
fn split_pointer(path: &str) -> Result<(String, String), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not a JSON pointer"));
    };
    let (parent, last) = match rest.rfind('/') {
        Some(i) => (format!("/{}", &rest[..i]), &rest[i + 1..]),
        None => (String::new(), rest),
    };
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("{path}: no index {last:?}"))?
            };
            a.insert(at, value);
            Ok(())
        }
        _ => Err(format!("{path}: the parent does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let gone = match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Some(a.remove(i)),
            _ => None,
        },
        _ => None,
    };
    gone.ok_or_else(|| format!("{path} does not exist"))
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
    fn json_patch_operations_apply_in_order_all_or_nothing() {
        let t = json!({"metadata": {"annotations": {"a/b": "1"}}, "spec": {"xs": [1, 2]}});
        let p = json!([
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
            {"op": "add", "path": "/spec/xs/-", "value": 3},
            {"op": "add", "path": "/spec/xs/0", "value": 0},
            {"op": "remove", "path": "/spec/xs/1"},
            {"op": "copy", "from": "/spec/xs", "path": "/spec/ys"},
            {"op": "move", "from": "/spec/ys", "path": "/spec/zs"},
            {"op": "test", "path": "/spec/zs/0", "value": 0}
        ]);
        assert_eq!(
            apply(&t, &p, Kind::Json).unwrap(),
            json!({"metadata": {"annotations": {"a/b": "2"}}, "spec": {"xs": [0, 2, 3], "zs": [0, 2, 3]}})
        );
        for bad in [
            json!([{"op": "test", "path": "/spec/xs/0", "value": 9}]),
            json!([{"op": "remove", "path": "/nope"}]),
            json!([{"op": "add", "path": "/spec/xs/7", "value": 1}]),
            json!([{"op": "explode", "path": "/spec"}]),
            json!([{"op": "add", "path": "spec"}]),
            json!({"op": "add"}),
        ] {
            assert!(apply(&t, &bad, Kind::Json).is_err(), "{bad}");
        }
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
