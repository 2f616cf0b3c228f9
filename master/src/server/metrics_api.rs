//! `metrics.k8s.io/v1beta1`, served from the agents' metrics reports (no metrics-server):
//! NodeMetrics and PodMetrics, as `kubectl top nodes|pods` and `bramble top` read them. CPU is
//! in nanocores (`250000000n`), memory in KiB (`1024Ki`), as metrics-server writes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bramble_api::selector::Selector;
use bramble_api::wire::{PodUse, ResourceUse};
use bramble_api::{Kind, Object};
use serde_json::{Value, json};

use super::{AppState, authorize_api};
use crate::server::error::ApiError;
use crate::usage::Sample;

pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

fn usage(u: &ResourceUse) -> Value {
    json!({
        "cpu": format!("{}n", u.cpu_nanocores),
        "memory": format!("{}Ki", u.memory_bytes / 1024),
    })
}

fn stamp(s: &Sample) -> String {
    let secs =
        s.at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
    bramble_api::time::format_rfc3339(secs)
}

fn window(s: &Sample) -> String {
    format!("{}s", (s.report.window_ms / 1000).max(1))
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    axum::Json(json!({
        "kind": kind,
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }))
    .into_response()
}

fn not_found(what: &str, name: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{what} \"{name}\" not found"),
    )
    .into_response()
}

fn node_items(st: &AppState) -> Vec<Value> {
    st.gateway
        .usage
        .all()
        .iter()
        .map(|(node, s)| {
            json!({
                "kind": "NodeMetrics",
                "apiVersion": GROUP_VERSION,
                "metadata": {"name": node, "creationTimestamp": stamp(s)},
                "timestamp": stamp(s),
                "window": window(s),
                "usage": usage(&s.report.node),
            })
        })
        .collect()
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes`.
pub async fn node_list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    list("NodeMetricsList", node_items(&st))
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes/{name}`.
pub async fn node(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    node_items(&st)
        .into_iter()
        .find(|i| i["metadata"]["name"] == name)
        .map(|i| axum::Json(i).into_response())
        .unwrap_or_else(|| not_found("nodemetrics", &name))
}

/// Each report's pods that count: those the store has (a report may name a pod just
/// deleted), in `bound` (pod → the node it is bound to), reported by that node. A board
/// reports its own pods, never another's: a forged report naming another node's pod is
/// ignored.
fn own_pods<'a>(
    bound: &BTreeMap<(String, String), String>,
    samples: &'a [(String, Sample)],
) -> Vec<(&'a Sample, &'a PodUse)> {
    samples
        .iter()
        .flat_map(|(node, s)| s.report.pods.iter().map(move |p| (node, s, p)))
        .filter(|(node, _, p)| bound.get(&(p.namespace.clone(), p.name.clone())) == Some(*node))
        .map(|(_, s, p)| (s, p))
        .collect()
}

/// PodMetrics of the pods in `namespace` (None: all) that `selector` matches.
fn pod_items(st: &AppState, namespace: Option<&str>, selector: &Selector) -> Vec<Value> {
    let bound: BTreeMap<(String, String), String> = st
        .store
        .list(Kind::Pod, namespace, selector)
        .1
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Pod(p)) => Some(((p.metadata.namespace, p.metadata.name), p.spec.node_name)),
            _ => None,
        })
        .collect();
    let samples = st.gateway.usage.all();
    let mut items = BTreeMap::new();
    for (s, p) in own_pods(&bound, &samples) {
        let containers: Vec<Value> = p
            .containers
            .iter()
            .map(|(name, u)| json!({"name": name, "usage": usage(u)}))
            .collect();
        items.insert(
            (p.namespace.clone(), p.name.clone()),
            json!({
                "kind": "PodMetrics",
                "apiVersion": GROUP_VERSION,
                "metadata": {
                    "name": p.name,
                    "namespace": p.namespace,
                    "creationTimestamp": stamp(s),
                },
                "timestamp": stamp(s),
                "window": window(s),
                "containers": containers,
            }),
        );
    }
    items.into_values().collect()
}

fn selector_of(q: &BTreeMap<String, String>) -> Result<Selector, ApiError> {
    match q.get("labelSelector") {
        None => Ok(Selector::default()),
        Some(text) => Selector::parse(text)
            .map_err(|e| ApiError::bad_request(format!("labelSelector {text:?}: {e}"))),
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods` (every namespace).
pub async fn all_pods(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    match selector_of(&q) {
        Ok(sel) => list("PodMetricsList", pod_items(&st, None, &sel)),
        Err(e) => e.into_response(),
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`.
pub async fn pods(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    match selector_of(&q) {
        Ok(sel) => list("PodMetricsList", pod_items(&st, Some(&ns), &sel)),
        Err(e) => e.into_response(),
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}`.
pub async fn pod(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    pod_items(&st, Some(&ns), &Selector::default())
        .into_iter()
        .find(|i| i["metadata"]["name"] == name)
        .map(|i| axum::Json(i).into_response())
        .unwrap_or_else(|| not_found("podmetrics", &name))
}

/// The group's resources for discovery.
pub fn resources() -> Value {
    json!([
        {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;
    use bramble_api::wire::MetricsReport;

    fn report(pods: &[(&str, &str)]) -> MetricsReport {
        MetricsReport {
            window_ms: 1000,
            node: ResourceUse::default(),
            pods: pods
                .iter()
                .map(|(ns, name)| PodUse {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    containers: vec![(
                        "main".into(),
                        ResourceUse {
                            cpu_nanocores: 7,
                            memory_bytes: 7,
                        },
                    )],
                })
                .collect(),
        }
    }

    #[test]
    fn a_board_reports_only_its_own_pods() {
        let u = Usage::default();
        u.record("board-a", report(&[("default", "web-a")]));
        // board-b also names board-a's pod, and one the store does not have.
        u.record(
            "board-b",
            report(&[
                ("default", "web-a"),
                ("default", "web-b"),
                ("default", "gone"),
            ]),
        );
        let bound: BTreeMap<(String, String), String> = [
            (("default".into(), "web-a".into()), "board-a".into()),
            (("default".into(), "web-b".into()), "board-b".into()),
        ]
        .into();
        let samples = u.all();
        let seen: Vec<(String, String)> = own_pods(&bound, &samples)
            .into_iter()
            .map(|(s, p)| {
                let node = samples
                    .iter()
                    .find(|(_, x)| std::ptr::eq(x, s))
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default();
                (node, p.name.clone())
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("board-a".to_string(), "web-a".to_string()),
                ("board-b".to_string(), "web-b".to_string()),
            ]
        );
    }
}
