//! OpenAPI v3, as much as kubectl needs to validate on the server: `/openapi/v3` lists a
//! document per group version, and each document holds the paths of the kinds it serves,
//! every PATCH operation tagged with its kind (`x-kubernetes-group-version-kind`) and taking
//! `fieldValidation`. kubectl (>= 1.27) then sends `fieldValidation=Strict` and lets Bramble
//! report unknown fields, as Bramble reports them, instead of validating against schemas.
//! Built from [`Kind::ALL`] like discovery, so it cannot drift from the paths served. The
//! objects' schemas (`components.schemas`, what `kubectl explain` reads) are generated from
//! the `bramble-api` types themselves (schemars, from their serde names and doc comments), so
//! they cannot drift from what the server decodes either; each kind's root schema carries its
//! `x-kubernetes-group-version-kind`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::Kind;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;

/// `api/v1`, `apis/apps/v1`, ...: the group versions served, as `/openapi/v3` names them.
fn group_versions() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = vec![("api/v1".into(), "")];
    for k in Kind::ALL {
        let g = k.group();
        let path = format!("apis/{g}/v1");
        if !g.is_empty() && !out.iter().any(|(p, _)| *p == path) {
            out.push((path, g));
        }
    }
    out
}

fn json_ok(v: Value) -> Response {
    json_text(v.to_string())
}

/// `GET /openapi/v3`.
pub async fn index(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if super::role_of(&st, &headers).is_none() {
        return unauthorized();
    }
    let mut paths = Map::new();
    for (gv, _) in group_versions() {
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
        );
    }
    json_ok(json!({ "paths": paths }))
}

fn unauthorized() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Unauthorized: a valid bearer token is required",
    )
    .into_response()
}

/// The document of one group version: the paths of its kinds with their operations.
pub fn document(group: &str) -> Value {
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
    let mut paths = Map::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        let gvk = json!({"group": k.group(), "version": "v1", "kind": k.name()});
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", k.name()),
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [query("fieldValidation"), query("fieldManager"), query("dryRun")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let ns = k.namespaced().then_some("{namespace}");
        let (collection, item) = (k.path(ns, None), k.path(ns, Some("{name}")));
        paths.insert(collection, json!({"get": op("list"), "post": op("create")}));
        paths.insert(
            item,
            json!({"get": op("read"), "put": op("replace"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Bramble", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas(group)},
    })
}

/// An optional field's schema, `anyOf: [T, null]`, as Kubernetes writes it: `allOf: [T]` for
/// a reference (kubectl explain follows that), T itself otherwise. Absent and null mean the
/// same to the server.
fn plain_optionals(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let unwrap = map.get("anyOf").and_then(Value::as_array).and_then(|a| {
                let is_null = |s: &Value| s["type"] == "null" || s["enum"] == json!([null]);
                match a.as_slice() {
                    [t, n] if is_null(n) => Some(t.clone()),
                    [n, t] if is_null(n) => Some(t.clone()),
                    _ => None,
                }
            });
            if let Some(t) = unwrap {
                map.remove("anyOf");
                if t.get("$ref").is_some() {
                    map.insert("allOf".into(), json!([t]));
                } else if let Value::Object(inner) = t {
                    for (k, x) in inner {
                        map.entry(k).or_insert(x);
                    }
                }
            }
            for x in map.values_mut() {
                plain_optionals(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(plain_optionals),
        _ => {}
    }
}

/// The schemas of a group's kinds and of every type they hold.
pub fn schemas(group: &str) -> Map<String, Value> {
    use bramble_api as api;
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut roots = Vec::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        let root = match k {
            Kind::Namespace => generator.subschema_for::<api::namespace::Namespace>(),
            Kind::Node => generator.subschema_for::<api::node::Node>(),
            Kind::Pod => generator.subschema_for::<api::pod::Pod>(),
            Kind::Deployment => generator.subschema_for::<api::deployment::Deployment>(),
            Kind::ReplicaSet => generator.subschema_for::<api::replicaset::ReplicaSet>(),
            Kind::DaemonSet => generator.subschema_for::<api::daemonset::DaemonSet>(),
            Kind::Job => generator.subschema_for::<api::job::Job>(),
            Kind::CronJob => generator.subschema_for::<api::cronjob::CronJob>(),
            Kind::Service => generator.subschema_for::<api::service::Service>(),
            Kind::Endpoints => generator.subschema_for::<api::service::Endpoints>(),
            Kind::Event => generator.subschema_for::<api::event::Event>(),
            Kind::Image => generator.subschema_for::<api::image::Image>(),
            Kind::ConfigMap => generator.subschema_for::<api::config::ConfigMap>(),
            Kind::Secret => generator.subschema_for::<api::config::Secret>(),
        };
        roots.push((k, root));
    }
    let mut defs = generator.take_definitions(true);
    for schema in defs.values_mut() {
        plain_optionals(schema);
    }
    for (k, root) in roots {
        let name = root
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or(k.name())
            .to_string();
        if let Some(Value::Object(schema)) = defs.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group(), "version": "v1", "kind": k.name()}]),
            );
        }
    }
    defs
}

/// The documents never change while the master runs, and kubectl fetches them for many
/// commands: each is generated once, on its first request.
static V2_PROTOBUF: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
static V2_JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static V3_JSON: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

fn cached<T>(cell: &'static std::sync::OnceLock<T>, make: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(make)
}

/// A group version's v3 document, as text.
fn group_document(group: &str) -> String {
    cached(&V3_JSON, || {
        group_versions()
            .into_iter()
            .map(|(_, g)| (g, document(g).to_string()))
            .collect()
    })
    .iter()
    .find(|(g, _)| *g == group)
    .map(|(_, d)| d.clone())
    .unwrap_or_default()
}

fn json_text(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// `GET /openapi/v2`: protobuf when asked for (kubectl before 1.27), JSON otherwise.
pub async fn v2(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if super::role_of(&st, &headers).is_none() {
        return unauthorized();
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(super::openapi_v2::PROTOBUF) {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, super::openapi_v2::PROTOBUF_ANSWER)],
            cached(&V2_PROTOBUF, super::openapi_v2::protobuf).clone(),
        )
            .into_response();
    }
    json_text(cached(&V2_JSON, || super::openapi_v2::document().to_string()).clone())
}

/// `GET /openapi/v3/api/v1`.
pub async fn core(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if super::role_of(&st, &headers).is_none() {
        return unauthorized();
    }
    json_text(group_document(""))
}

/// `GET /openapi/v3/apis/{group}/{version}`.
pub async fn group(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    if super::role_of(&st, &headers).is_none() {
        return unauthorized();
    }
    if version != "v1" || !group_versions().iter().any(|(_, g)| *g == group) || group.is_empty() {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    }
    json_text(group_document(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_schema_from_its_type_tagged_with_its_kind() {
        for k in Kind::ALL {
            let doc = document(k.group());
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let (_, root) = schemas
                .iter()
                .find(|(_, s)| s["x-kubernetes-group-version-kind"][0]["kind"] == k.name())
                .unwrap_or_else(|| panic!("no schema for {}", k.name()));
            // The type's serde names and fields: what the server decodes.
            for field in ["apiVersion", "kind", "metadata"] {
                assert!(
                    root["properties"][field].is_object(),
                    "{} {field}",
                    k.name()
                );
            }
        }
        let core = document("");
        let s = &core["components"]["schemas"];
        let pod = &s["Pod"]["properties"]["spec"];
        assert!(pod.to_string().contains("PodSpec"), "{pod}");
        let containers = &s["PodSpec"]["properties"]["containers"];
        assert_eq!(containers["type"], "array", "{containers}");
        assert!(
            s["Container"]["properties"]["imagePullPolicy"].is_object(),
            "{}",
            s["Container"]
        );
        // An optional struct is a plain reference (kubectl explain follows it).
        let strategy =
            &document("apps")["components"]["schemas"]["DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(
            strategy["allOf"][0]["$ref"], "#/components/schemas/DeploymentStrategy",
            "{strategy}"
        );
        // Doc comments become descriptions (what kubectl explain prints).
        assert!(s["Pod"]["description"].is_string(), "{}", s["Pod"]);
    }

    #[test]
    fn every_kind_has_a_patch_operation_taking_field_validation() {
        for k in Kind::ALL {
            let doc = document(k.group());
            let item = k.path(k.namespaced().then_some("{namespace}"), Some("{name}"));
            let patch = &doc["paths"][&item]["patch"];
            assert_eq!(
                patch["x-kubernetes-group-version-kind"]["kind"],
                k.name(),
                "{item}"
            );
            assert!(
                patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"),
                "{item}"
            );
        }
    }
}
