//! kubectl-style tables: the columns of each kind (`bramble get`, and the Tables the API
//! serves for kubectl's server-side printing) and aligned printing.

use crate::meta::ObjectMeta;
use crate::pod::Pod;
use crate::time::{human_age, parse_rfc3339};
use crate::{Kind, Object};

/// Column headers of a kind.
pub fn headers(kind: Kind, wide: bool, with_namespace: bool) -> Vec<&'static str> {
    let mut h: Vec<&'static str> = match kind {
        Kind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        Kind::Deployment => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        Kind::ReplicaSet => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        Kind::Service => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        Kind::Node => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        Kind::Namespace => vec!["NAME", "STATUS", "AGE"],
        Kind::Endpoints => vec!["NAME", "ENDPOINTS", "AGE"],
        Kind::Event => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        Kind::Image => vec!["IMAGE", "TAG", "DIGEST", "PLATFORMS", "SIZE", "AGE"],
        Kind::ConfigMap => vec!["NAME", "DATA", "AGE"],
        Kind::Job => vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        Kind::CronJob => vec![
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ],
        Kind::DaemonSet => vec![
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        Kind::Secret => vec!["NAME", "TYPE", "DATA", "AGE"],
    };
    if wide {
        h.extend(match kind {
            Kind::Pod => vec!["IP", "NODE"],
            Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet | Kind::Job | Kind::CronJob => {
                vec!["CONTAINERS", "IMAGES", "SELECTOR"]
            }
            Kind::Service => vec!["SELECTOR"],
            Kind::Node => vec!["INTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "ARCH"],
            _ => vec![],
        });
    }
    if with_namespace && kind.namespaced() {
        h.insert(0, "NAMESPACE");
    }
    h
}

/// A Kubernetes `meta.k8s.io/v1` Table of objects of one kind, for kubectl's server-side
/// printing: `bramble get`'s columns, the `-o wide` ones at priority 1 (kubectl shows them
/// with `-o wide`), the first NAME column in the `name` format (kubectl prefixes it with the
/// kind when it prints several kinds), each row with the object's metadata as
/// `PartialObjectMetadata` (kubectl reads the namespace of `-A` from it).
pub fn kube_table(
    kind: Kind,
    objects: &[Object],
    resource_version: &str,
    now: i64,
) -> serde_json::Value {
    let narrow = headers(kind, false, false).len();
    let columns: Vec<serde_json::Value> = headers(kind, true, false)
        .iter()
        .enumerate()
        .map(|(i, h)| {
            serde_json::json!({
                "name": h,
                "type": "string",
                "format": if i == 0 && *h == "NAME" { "name" } else { "" },
                "description": "",
                "priority": i32::from(i >= narrow),
            })
        })
        .collect();
    let rows: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| {
            serde_json::json!({
                "cells": row(o, true, false, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.meta(),
                },
            })
        })
        .collect();
    serde_json::json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn age(meta: &ObjectMeta, now: i64) -> String {
    meta.creation_timestamp
        .as_deref()
        .and_then(parse_rfc3339)
        .map_or_else(|| "<unknown>".to_string(), |t| human_age(now - t))
}

/// `21.3MB`, `512kB`, `87B`, as `docker images` prints sizes (powers of 1000).
pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.1}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.0}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}

/// The CONTAINERS and IMAGES columns of a workload's template (`-o wide`).
fn containers_and_images(cs: &[crate::pod::Container]) -> [String; 2] {
    let join =
        |f: fn(&crate::pod::Container) -> &str| cs.iter().map(f).collect::<Vec<_>>().join(",");
    [join(|c| c.name.as_str()), join(|c| c.image.as_str())]
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

/// The STATUS column of a pod, as kubectl computes it.
pub fn pod_status(p: &Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let st = p.status.clone().unwrap_or_default();
    // Init containers first, as kubectl reads them: the first not done names the status.
    for (i, c) in st.init_container_statuses.iter().enumerate() {
        let sidecar = p
            .spec
            .init_containers
            .iter()
            .any(|s| s.name == c.name && s.is_sidecar());
        let Some(state) = &c.state else {
            return format!("Init:{i}/{}", p.spec.init_containers.len());
        };
        match (&state.terminated, &state.waiting) {
            (Some(t), _) if t.exit_code == 0 => continue,
            _ if sidecar && state.running.is_some() => continue,
            (Some(t), _) if !t.reason.is_empty() => return format!("Init:{}", t.reason),
            (Some(t), _) => return format!("Init:ExitCode:{}", t.exit_code),
            (None, Some(w))
                if !w.reason.is_empty()
                    && w.reason != "PodInitializing"
                    && w.reason != "ContainerCreating" =>
            {
                return format!("Init:{}", w.reason);
            }
            _ => return format!("Init:{i}/{}", p.spec.init_containers.len()),
        }
    }
    if p.spec.init_containers.len() > st.init_container_statuses.len()
        && st.container_statuses.is_empty()
    {
        return format!("Init:0/{}", p.spec.init_containers.len());
    }
    let mut status = if st.reason.is_empty() {
        st.phase.clone()
    } else {
        st.reason.clone()
    };
    for c in &st.container_statuses {
        let Some(state) = &c.state else { continue };
        if let Some(w) = state.waiting.as_ref().filter(|w| !w.reason.is_empty()) {
            status = w.reason.clone();
        } else if let Some(t) = state.terminated.as_ref() {
            if !t.reason.is_empty() {
                status = t.reason.clone();
            } else {
                status = format!("ExitCode:{}", t.exit_code);
            }
        }
    }
    if status.is_empty() {
        "Pending".into()
    } else {
        status
    }
}

/// One row of a kind's table.
pub fn row(obj: &Object, wide: bool, with_namespace: bool, now: i64) -> Vec<String> {
    let m = obj.meta();
    let mut r: Vec<String> = match obj {
        Object::ReplicaSet(rs) => {
            let st = rs.status.clone().unwrap_or_default();
            let mut r = vec![
                m.name.clone(),
                rs.spec.replicas.unwrap_or(1).to_string(),
                st.replicas.to_string(),
                st.ready_replicas.to_string(),
                age(m, now),
            ];
            if wide {
                r.extend(containers_and_images(&rs.spec.template.spec.containers));
                r.push(
                    crate::Selector::from_label_selector(&rs.spec.selector, "")
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
            }
            r
        }
        Object::CronJob(c) => {
            let st = c.status.clone().unwrap_or_default();
            let mut r = vec![
                m.name.clone(),
                c.spec.schedule.clone(),
                c.spec.time_zone.clone().unwrap_or_else(|| "<none>".into()),
                (c.spec.suspend == Some(true)).to_string(),
                st.active.len().to_string(),
                st.last_schedule_time
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map_or_else(|| "<none>".into(), |t| human_age(now - t)),
                age(m, now),
            ];
            if wide {
                r.extend(containers_and_images(
                    &c.spec.job_template.spec.template.spec.containers,
                ));
                r.push("<none>".into());
            }
            r
        }
        Object::Job(j) => {
            let st = j.status.clone().unwrap_or_default();
            let status = match st.finished() {
                Some(f) => f.to_string(),
                None if j.spec.suspend == Some(true) => "Suspended".into(),
                None => "Running".into(),
            };
            let start = st.start_time.as_deref().and_then(parse_rfc3339);
            let end = st
                .completion_time
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(now);
            let mut r = vec![
                m.name.clone(),
                status,
                format!("{}/{}", st.succeeded, j.spec.completions()),
                start.map_or_else(String::new, |s| human_age(end - s)),
                age(m, now),
            ];
            if wide {
                r.extend(containers_and_images(&j.spec.template.spec.containers));
                r.push(format!(
                    "{}={}",
                    crate::job::CONTROLLER_UID_LABEL,
                    j.metadata.uid
                ));
            }
            r
        }
        Object::DaemonSet(d) => {
            let st = d.status.clone().unwrap_or_default();
            let selector: Vec<String> = d
                .spec
                .template
                .spec
                .node_selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut r = vec![
                m.name.clone(),
                st.desired_number_scheduled.to_string(),
                st.current_number_scheduled.to_string(),
                st.number_ready.to_string(),
                st.updated_number_scheduled.to_string(),
                st.number_available.to_string(),
                or_none(selector.join(",")),
                age(m, now),
            ];
            if wide {
                r.extend(containers_and_images(&d.spec.template.spec.containers));
                r.push(
                    crate::Selector::from_label_selector(&d.spec.selector, "")
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
            }
            r
        }
        Object::ConfigMap(c) => vec![
            m.name.clone(),
            (c.data.len() + c.binary_data.len()).to_string(),
            age(m, now),
        ],
        Object::Secret(s) => vec![
            m.name.clone(),
            s.type_.clone(),
            s.entries().len().to_string(),
            age(m, now),
        ],
        Object::Pod(p) => {
            let st = p.status.clone().unwrap_or_default();
            let ready = st.container_statuses.iter().filter(|c| c.ready).count();
            let restarts: i32 = st.container_statuses.iter().map(|c| c.restart_count).sum();
            let mut r = vec![
                m.name.clone(),
                format!("{ready}/{}", p.spec.containers.len()),
                pod_status(p),
                restarts.to_string(),
                age(m, now),
            ];
            if wide {
                r.push(or_none(st.pod_ip));
                r.push(or_none(p.spec.node_name.clone()));
            }
            r
        }
        Object::Deployment(d) => {
            let st = d.status.clone().unwrap_or_default();
            let want = d.spec.replicas.unwrap_or(1);
            let mut r = vec![
                m.name.clone(),
                format!("{}/{want}", st.ready_replicas),
                st.updated_replicas.to_string(),
                st.available_replicas.to_string(),
                age(m, now),
            ];
            if wide {
                r.extend(containers_and_images(&d.spec.template.spec.containers));
                let sel: Vec<String> = d
                    .spec
                    .selector
                    .match_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                r.push(or_none(sel.join(",")));
            }
            r
        }
        Object::Service(s) => {
            let ports: Vec<String> = s
                .spec
                .ports
                .iter()
                .map(|p| {
                    let proto = if p.protocol.is_empty() {
                        "TCP"
                    } else {
                        &p.protocol
                    };
                    match p.node_port {
                        Some(np) => format!("{}:{np}/{proto}", p.port),
                        None => format!("{}/{proto}", p.port),
                    }
                })
                .collect();
            let type_ = if s.spec.type_.is_empty() {
                "ClusterIP".to_string()
            } else {
                s.spec.type_.clone()
            };
            let external = if type_ == "LoadBalancer" {
                "<pending>"
            } else {
                "<none>"
            };
            let mut r = vec![
                m.name.clone(),
                type_,
                or_none(s.spec.cluster_ip.clone()),
                external.to_string(),
                or_none(ports.join(",")),
                age(m, now),
            ];
            if wide {
                let sel: Vec<String> = s
                    .spec
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                r.push(or_none(sel.join(",")));
            }
            r
        }
        Object::Node(n) => {
            let st = n.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            let mut status = match ready.map(|c| c.status.as_str()) {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if n.spec.unschedulable {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = m
                .labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let info = st.node_info.clone().unwrap_or_default();
            let mut r = vec![
                m.name.clone(),
                status,
                or_none(roles.join(",")),
                age(m, now),
                or_none(info.kubelet_version.clone()),
            ];
            if wide {
                let ip = st
                    .addresses
                    .iter()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone());
                r.push(or_none(ip.unwrap_or_default()));
                r.push(or_none(info.os_image));
                r.push(or_none(info.kernel_version));
                r.push(or_none(info.architecture));
            }
            r
        }
        Object::Namespace(n) => {
            let phase = n
                .status
                .as_ref()
                .map(|s| s.phase.clone())
                .unwrap_or_default();
            vec![m.name.clone(), or_none(phase), age(m, now)]
        }
        Object::Endpoints(e) => {
            let mut eps = Vec::new();
            for s in &e.subsets {
                for a in &s.addresses {
                    if s.ports.is_empty() {
                        eps.push(a.ip.clone());
                    }
                    for p in &s.ports {
                        eps.push(format!("{}:{}", a.ip, p.port));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![m.name.clone(), or_none(shown), age(m, now)]
        }
        Object::Event(ev) => {
            let last = ev
                .last_timestamp
                .as_deref()
                .or(ev.first_timestamp.as_deref())
                .or(m.creation_timestamp.as_deref())
                .and_then(parse_rfc3339)
                .map_or_else(|| "<unknown>".into(), |t| human_age(now - t));
            let o = &ev.involved_object;
            vec![
                last,
                ev.type_.clone(),
                ev.reason.clone(),
                format!("{}/{}", o.kind.to_lowercase(), o.name),
                ev.message.clone(),
            ]
        }
        Object::Image(i) => {
            let (repo, tag) = i
                .spec
                .reference
                .rsplit_once(':')
                .unwrap_or((i.spec.reference.as_str(), ""));
            let digest = i
                .spec
                .digest
                .strip_prefix("sha256:")
                .unwrap_or(&i.spec.digest);
            let platforms: Vec<String> = i.spec.platforms.iter().map(|p| p.display()).collect();
            vec![
                repo.to_string(),
                tag.to_string(),
                digest.chars().take(12).collect(),
                or_none(platforms.join(",")),
                human_bytes(i.spec.size),
                age(m, now),
            ]
        }
    };
    if with_namespace && obj.kind().namespaced() {
        r.insert(0, m.namespace.clone());
    }
    r
}

/// Prints rows aligned in columns three spaces apart, as kubectl does.
pub fn print(headers: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .map(|h| h.iter().map(|s| s.len()).collect())
        .unwrap_or_default();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i >= widths.len() {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    if let Some(h) = headers {
        line(h.to_vec());
    }
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["web".to_string(), "1/1".to_string()],
            vec!["database".to_string(), "0/1".to_string()],
        ];
        let out = print(Some(&["NAME", "READY"]), &rows);
        assert_eq!(out, "NAME       READY\nweb        1/1\ndatabase   0/1\n");
    }

    #[test]
    fn pod_status_prefers_waiting_reason_and_terminating() {
        let mut p = Pod::default();
        assert_eq!(pod_status(&p), "Pending");
        let v = serde_json::json!({"phase":"Running","containerStatuses":[{"name":"c","ready":false,"restartCount":3,
            "state":{"waiting":{"reason":"CrashLoopBackOff"}}}]});
        p.status = Some(serde_json::from_value(v).unwrap());
        assert_eq!(pod_status(&p), "CrashLoopBackOff");
        p.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(pod_status(&p), "Terminating");
    }
}
