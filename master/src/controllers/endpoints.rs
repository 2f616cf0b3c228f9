//! The Endpoints controller: each Service with a selector has an Endpoints object (same
//! namespace and name) listing the IPs of the pods it selects that have an IP and are not
//! terminating or finished — ready ones in `addresses`, the others in
//! `notReadyAddresses` — with the Service's ports resolved against each pod (`targetPort`
//! by number or by container port name). Level-triggered: any Service or pod change in a
//! namespace recomputes that namespace's Endpoints, written only when they differ. A
//! Service's deletion deletes its Endpoints.

use std::collections::{BTreeMap, BTreeSet};

use bramble_api::meta::IntOrString;
use bramble_api::pod::Pod;
use bramble_api::service::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use crate::store::{Change, DeleteRequest, Op, Store, StoreError};

fn ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The port a Service port reaches on a pod, if the pod has it.
fn resolve(target: &Option<IntOrString>, port: i32, protocol: &str, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| {
                &p.name == name
                    && (p.protocol.is_empty() && protocol == "TCP" || p.protocol == protocol)
            })
            .map(|p| p.container_port),
    }
}

/// Ready and not-ready addresses of one subset.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

/// The subsets a Service's Endpoints should hold, given the pods of its namespace. Pods with
/// the same resolved ports share a subset; everything is sorted, so equal inputs give equal
/// objects.
pub fn subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    if svc.spec.selector.is_empty() {
        return Vec::new();
    }
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Addresses> = BTreeMap::new();
    for p in pods {
        let st = p.status.as_ref();
        let ip = st.map(|s| s.pod_ip.as_str()).unwrap_or("");
        let phase = st.map(|s| s.phase.as_str()).unwrap_or("");
        if ip.is_empty()
            || p.metadata.deletion_timestamp.is_some()
            || matches!(phase, "Succeeded" | "Failed")
            || !svc
                .spec
                .selector
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        {
            continue;
        }
        let mut ports = Vec::new();
        for sp in &svc.spec.ports {
            let protocol = if sp.protocol.is_empty() {
                "TCP".to_string()
            } else {
                sp.protocol.clone()
            };
            if let Some(port) = resolve(&sp.target_port, sp.port, &protocol, p) {
                ports.push((sp.name.clone(), port, protocol));
            }
        }
        if ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip: ip.to_string(),
            node_name: (!p.spec.node_name.is_empty()).then(|| p.spec.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: p.metadata.namespace.clone(),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let g = groups.entry(ports).or_default();
        if ready(p) {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: ready,
                not_ready_addresses: not_ready,
                ports: ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn objects<T>(store: &Store, kind: Kind, ns: &str, pick: fn(Object) -> Option<T>) -> Vec<T> {
    store
        .list(kind, Some(ns), &Selector::everything())
        .1
        .iter()
        .filter_map(|e| e.object().ok().and_then(pick))
        .collect()
}

/// Brings one namespace's Endpoints in line with its Services and pods. A namespace without
/// Services or Endpoints costs one lookup; pods are matched by their labels before any is
/// decoded. Every write is tried; the first failure is returned (the caller retries the
/// namespace after a back-off).
pub async fn sync_namespace(store: &Store, ns: &str) -> Result<(), StoreError> {
    let mut result = Ok(());
    let services = objects(store, Kind::Service, ns, |o| match o {
        Object::Service(s) => Some(s),
        _ => None,
    });
    let existing = objects(store, Kind::Endpoints, ns, |o| match o {
        Object::Endpoints(e) => Some(e),
        _ => None,
    });
    if services.is_empty() && existing.is_empty() {
        return Ok(());
    }
    let selectors: Vec<&BTreeMap<String, String>> = services
        .iter()
        .map(|s| &s.spec.selector)
        .filter(|sel| !sel.is_empty())
        .collect();
    let pods: Vec<Pod> = store
        .list(Kind::Pod, Some(ns), &Selector::everything())
        .1
        .iter()
        .filter(|e| {
            selectors
                .iter()
                .any(|sel| sel.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        })
        .filter_map(|e| match e.object() {
            Ok(Object::Pod(p)) => Some(p),
            _ => None,
        })
        .collect();
    let mut wanted = BTreeSet::new();
    for svc in services.iter().filter(|s| !s.spec.selector.is_empty()) {
        let name = svc.metadata.name.clone();
        wanted.insert(name.clone());
        let subsets = subsets(svc, &pods);
        if existing
            .iter()
            .any(|e| e.metadata.name == name && e.subsets == subsets)
        {
            continue;
        }
        let mut e = Endpoints {
            subsets,
            ..Default::default()
        };
        e.metadata.name = name.clone();
        e.metadata.namespace = ns.to_string();
        e.metadata.labels = svc.metadata.labels.clone();
        if let Err(err) = store.write(Op::Apply(Object::Endpoints(e))).await {
            tracing::warn!(namespace = ns, service = name, error = %err, "cannot write endpoints");
            result = result.and(Err(err));
        }
    }
    for e in existing {
        let name = &e.metadata.name;
        // Endpoints of a Service that is gone (or lost its selector) are the controller's.
        if !wanted.contains(name) && !services.iter().any(|s| &s.metadata.name == name) {
            let r = store
                .write(Op::Delete(DeleteRequest {
                    kind: Kind::Endpoints,
                    namespace: ns.to_string(),
                    name: name.clone(),
                    grace_seconds: None,
                    resource_version: None,
                    orphan: false,
                }))
                .await;
            if let Err(err) = r
                && !matches!(err, StoreError::NotFound { .. })
            {
                tracing::warn!(namespace = ns, endpoints = name, error = %err, "cannot delete endpoints");
                result = result.and(Err(err));
            }
        }
    }
    result
}

/// The Endpoints controller on the shared shell; its key is a namespace.
pub struct EndpointsController;

impl Controller for EndpointsController {
    type Key = String;
    const NAME: &'static str = "endpoints";
    const WATCHES: &'static [Kind] = &[Kind::Service, Kind::Pod];

    async fn resync(&mut self, store: &Store) -> Vec<String> {
        let namespaces: BTreeSet<String> = [Kind::Service, Kind::Endpoints]
            .into_iter()
            .flat_map(|kind| store.list(kind, None, &Selector::everything()).1)
            .map(|e| e.namespace.clone())
            .collect();
        namespaces.into_iter().collect()
    }

    fn keys(&mut self, change: &Change) -> Vec<String> {
        vec![change.entry.namespace.clone()]
    }

    async fn reconcile(&mut self, store: &Store, ns: &String) -> Result<(), StoreError> {
        sync_namespace(store, ns).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &str, ip: &str, ready: bool, ports: &str) -> Pod {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  nodeName: n1\n  containers: [{{name: c, image: x, ports: [{ports}]}}]\n"
        );
        let mut p = match bramble_api::manifest::parse_manifests(&yaml)
            .unwrap()
            .remove(0)
            .object
        {
            Object::Pod(p) => p,
            _ => unreachable!(),
        };
        let mut st = bramble_api::pod::PodStatus {
            phase: "Running".into(),
            pod_ip: ip.into(),
            ..Default::default()
        };
        st.conditions.push(bramble_api::meta::Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        });
        p.status = Some(st);
        p
    }

    fn service(ports: &str) -> Service {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{ports}]\n"
        );
        match bramble_api::manifest::parse_manifests(&yaml)
            .unwrap()
            .remove(0)
            .object
        {
            Object::Service(s) => s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn ready_selected_pods_with_ips_become_addresses() {
        let svc = service("{name: http, port: 80, targetPort: 8080}");
        let mut terminating = pod("t", "app: web", "10.42.0.9", true, "");
        terminating.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let pods = vec![
            pod("b", "app: web", "10.42.0.6", true, ""),
            pod("a", "app: web", "10.42.0.5", true, ""),
            pod("c", "app: web", "10.42.0.7", false, ""),
            pod("other", "app: db", "10.42.0.8", true, ""),
            pod("noip", "app: web", "", true, ""),
            terminating,
        ];
        let s = subsets(&svc, &pods);
        assert_eq!(s.len(), 1);
        let ips: Vec<&str> = s[0].addresses.iter().map(|a| a.ip.as_str()).collect();
        assert_eq!(ips, ["10.42.0.5", "10.42.0.6"]);
        assert_eq!(s[0].not_ready_addresses[0].ip, "10.42.0.7");
        assert_eq!(s[0].ports[0].port, 8080);
        assert_eq!(s[0].addresses[0].target_ref.as_ref().unwrap().name, "a");
        assert!(subsets(&service("{port: 80}"), &[]).is_empty());
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = service("{name: http, port: 80, targetPort: web}");
        let pods = vec![
            pod(
                "old",
                "app: web",
                "10.42.0.5",
                true,
                "{name: web, containerPort: 8080}",
            ),
            pod(
                "new",
                "app: web",
                "10.42.0.6",
                true,
                "{name: web, containerPort: 9090}",
            ),
            pod(
                "none",
                "app: web",
                "10.42.0.7",
                true,
                "{name: other, containerPort: 1}",
            ),
        ];
        let s = subsets(&svc, &pods);
        let by_port: Vec<(i32, &str)> = s
            .iter()
            .map(|g| (g.ports[0].port, g.addresses[0].ip.as_str()))
            .collect();
        assert_eq!(by_port, [(8080, "10.42.0.5"), (9090, "10.42.0.6")]);
    }
}
