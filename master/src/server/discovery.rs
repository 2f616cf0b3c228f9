//! Kubernetes API discovery, so that kubectl and the client libraries find what Bramble
//! serves: `/version`, `/api` (APIVersions), `/apis` (APIGroupList) and an APIResourceList per
//! group version, built from [`Kind::ALL`] so it cannot drift from the paths served. A client
//! asking for aggregated discovery (`as=APIGroupDiscoveryList`) gets these plain documents as
//! `application/json`, from which kubectl falls back to the per-group lists.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::Kind;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// The Kubernetes version whose API Bramble's resembles. kubectl warns past one minor
/// version of skew (and the gcloud kubectl dispatcher picks its kubectl by this minor).
pub const KUBE_MINOR: &str = "32";

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Any role may discover; a request without a valid token gets 401.
fn authorized(st: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if super::role_of(st, headers).is_some() {
        Ok(())
    } else {
        Err(Box::new(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized: a valid bearer token is required",
            )
            .into_response(),
        ))
    }
}

/// `GET /version`.
pub async fn version(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    ok(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-bramble.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// `GET /api`.
pub async fn core_versions(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    ok(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }))
}

/// The API groups besides the core one, in [`Kind::ALL`] order.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in Kind::ALL {
        if !k.group().is_empty() && !out.contains(&k.group()) {
            out.push(k.group());
        }
    }
    out
}

/// `GET /apis`.
pub async fn group_list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [v.clone()], "preferredVersion": v})
        })
        .chain(std::iter::once({
            let v =
                json!({"groupVersion": super::metrics_api::GROUP_VERSION, "version": "v1beta1"});
            json!({"name": "metrics.k8s.io", "versions": [v.clone()], "preferredVersion": v})
        }))
        .collect();
    ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// The resources of one group (empty: core) as an APIResourceList's entries.
pub fn resources(group: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        // Images come in through `bramble image import`, not the API's create.
        let verbs: &[&str] = if k == Kind::Image {
            &["delete", "get", "list", "watch"]
        } else {
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        };
        let mut r = json!({
            "name": k.plural(),
            "singularName": k.singular(),
            "namespaced": k.namespaced(),
            "kind": k.name(),
            "verbs": verbs,
        });
        if k.short_name() != k.singular() {
            r["shortNames"] = json!([k.short_name()]);
        }
        if matches!(
            k,
            Kind::Pod
                | Kind::Service
                | Kind::Deployment
                | Kind::ReplicaSet
                | Kind::DaemonSet
                | Kind::Job
                | Kind::CronJob
        ) {
            r["categories"] = json!(["all"]);
        }
        out.push(r);
        if k.has_status() {
            out.push(json!({
                "name": format!("{}/status", k.plural()),
                "singularName": "",
                "namespaced": k.namespaced(),
                "kind": k.name(),
                "verbs": ["get", "update"],
            }));
        }
        if k.scalable() {
            out.push(json!({
                "name": format!("{}/scale", k.plural()),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if k == Kind::Pod {
            out.push(json!({
                "name": "pods/log",
                "singularName": "",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["get"],
            }));
            // kubectl drain (1.2x and later) evicts when it finds this. The policy group is
            // not listed: it would be empty, and kubectl refuses an empty group version.
            out.push(json!({
                "name": "pods/eviction",
                "singularName": "",
                "namespaced": true,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }));
            for (sub, kind) in [
                ("attach", "PodAttachOptions"),
                ("exec", "PodExecOptions"),
                ("portforward", "PodPortForwardOptions"),
            ] {
                out.push(json!({
                    "name": format!("pods/{sub}"),
                    "singularName": "",
                    "namespaced": true,
                    "kind": kind,
                    "verbs": ["create", "get"],
                }));
            }
        }
    }
    out
}

fn resource_list(group_version: &str, group: &str) -> Response {
    ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources(group),
    }))
}

/// `GET /api/v1`.
pub async fn core_resources(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    resource_list("v1", "")
}

/// `GET /apis/{group}/{version}`.
pub async fn group_resources(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    if group == "metrics.k8s.io" && version == "v1beta1" {
        return ok(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": super::metrics_api::GROUP_VERSION,
            "resources": super::metrics_api::resources(),
        }));
    }
    if version != "v1" || !groups().contains(&group.as_str()) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    }
    resource_list(&format!("{group}/v1"), &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_discoverable_in_its_group() {
        for k in Kind::ALL {
            let listed = resources(k.group());
            let r = listed
                .iter()
                .find(|r| r["name"] == k.plural())
                .unwrap_or_else(|| panic!("{k:?}"));
            assert_eq!(r["kind"], k.name());
            assert_eq!(r["namespaced"], k.namespaced());
            assert!(
                r["verbs"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!("get")))
            );
        }
        assert_eq!(groups(), vec!["apps", "batch", "bramble.io"]);
        let core = resources("");
        assert!(core.iter().any(|r| r["name"] == "pods/log"));
        let pods = core.iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        // Kubernetes gives Secrets no short name, and neither do we.
        let secrets = core.iter().find(|r| r["name"] == "secrets").unwrap();
        assert!(secrets.get("shortNames").is_none());
    }
}
