//! OpenAPI v3, as much as kubectl needs to validate on the server: `/openapi/v3` lists a
//! document per group version, and each document holds the paths of the kinds it serves,
//! every PATCH operation tagged with its kind (`x-kubernetes-group-version-kind`) and taking
//! `fieldValidation`. kubectl (>= 1.27) then sends `fieldValidation=Strict` and lets Bramble
//! report unknown fields, as Bramble reports them, instead of validating against schemas.
//! Built from [`Kind::ALL`] like discovery, so it cannot drift from the paths served.
//! Not yet: the schemas of the objects (`kubectl explain`).

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
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
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
        "components": {"schemas": {}},
    })
}

/// `GET /openapi/v3/api/v1`.
pub async fn core(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if super::role_of(&st, &headers).is_none() {
        return unauthorized();
    }
    json_ok(document(""))
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
    json_ok(document(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

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
