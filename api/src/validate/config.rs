//! Validation of ConfigMaps, Secrets and the pod fields that read them (env `valueFrom`,
//! `envFrom`, configMap/secret/projected/downwardAPI volumes). No message quotes a Secret's
//! value.

use std::collections::BTreeSet;

use super::Errors;
use crate::config::{self, ConfigMap, Secret};
use crate::names;
use crate::pod::{
    Container, DownwardApiFile, KeyToPath, ObjectFieldSelector, PodSpec, ResourceFieldSelector,
    Volume,
};

pub(super) fn validate_config_map(v: &mut Errors, c: &ConfigMap) {
    let mut total = 0usize;
    for (k, val) in &c.data {
        v.check(&format!("data[{k}]"), config::check_key(k));
        total += k.len() + val.len();
    }
    for (k, val) in &c.binary_data {
        v.check(&format!("binaryData[{k}]"), config::check_key(k));
        if c.data.contains_key(k) {
            v.push(
                &format!("binaryData[{k}]"),
                format!("Duplicate value: {k:?} is also a key of data"),
            );
        }
        match config::decode(val) {
            Some(b) => total += k.len() + b.len(),
            None => v.push(&format!("binaryData[{k}]"), "is not valid base64"),
        }
    }
    if total > config::MAX_DATA_BYTES {
        v.push(
            "data",
            format!(
                "Too long: the ConfigMap holds {total} bytes, more than the limit of {} (1 MiB)",
                config::MAX_DATA_BYTES
            ),
        );
    }
}

pub(super) fn validate_secret(v: &mut Errors, s: &Secret) {
    let mut total = 0usize;
    for (k, val) in &s.data {
        v.check(&format!("data[{k}]"), config::check_key(k));
        match config::decode(val) {
            Some(b) => total += k.len() + b.len(),
            // Never the value itself: it is secret.
            None => v.push(
                &format!("data[{k}]"),
                "is not valid base64 (data values are base64; use stringData for plain text)",
            ),
        }
    }
    for (k, val) in &s.string_data {
        v.check(&format!("stringData[{k}]"), config::check_key(k));
        total += k.len() + val.len();
    }
    if total > config::MAX_DATA_BYTES {
        v.push(
            "data",
            format!(
                "Too long: the Secret holds {total} bytes, more than the limit of {} (1 MiB)",
                config::MAX_DATA_BYTES
            ),
        );
    }
    if s.type_.len() > 253 || s.type_.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.push("type", "must be at most 253 characters without whitespace");
    }
    let entries = s.entries();
    for key in config::required_secret_keys(&s.type_) {
        if !entries.contains_key(*key) {
            v.push(
                &format!("data[{key}]"),
                format!("Required value: a Secret of type {} needs it", s.type_),
            );
        }
    }
    if s.type_ == "kubernetes.io/basic-auth"
        && !entries.contains_key("username")
        && !entries.contains_key("password")
    {
        v.push(
            "data",
            "Required value: a Secret of type kubernetes.io/basic-auth needs username or password",
        );
    }
    if s.type_ == "kubernetes.io/dockerconfigjson"
        && let Some(b) = entries.get(".dockerconfigjson")
        && serde_json::from_slice::<serde_json::Value>(b).is_err()
    {
        v.push("data[.dockerconfigjson]", "is not valid JSON");
    }
}

/// A pod field a `fieldRef` may name.
fn check_field_path(v: &mut Errors, path: &str, f: &ObjectFieldSelector, env: bool) {
    let p = f.field_path.as_str();
    let keyed = |prefix: &str| {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| names::label_key(k).is_ok())
    };
    let ok = matches!(
        p,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.podIP"
            | "status.podIPs"
            | "status.hostIP"
            | "status.hostIPs"
    ) || keyed("metadata.labels") == Some(true)
        || keyed("metadata.annotations") == Some(true)
        // Whole maps only as files, as in Kubernetes.
        || (!env && matches!(p, "metadata.labels" | "metadata.annotations"));
    if !ok {
        v.push(
            &format!("{path}.fieldPath"),
            format!(
                "unsupported value {p:?}: must be metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP or status.hostIP{}",
                if env { "" } else { " (or metadata.labels, metadata.annotations)" }
            ),
        );
    }
    if !matches!(f.api_version.as_str(), "" | "v1") {
        v.push(
            &format!("{path}.apiVersion"),
            format!("unsupported value {:?}: must be v1", f.api_version),
        );
    }
}

fn check_resource_field(
    v: &mut Errors,
    path: &str,
    r: &ResourceFieldSelector,
    spec: &PodSpec,
    container_required: bool,
) {
    let resources = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    if !resources.contains(&r.resource.as_str()) {
        v.push(
            &format!("{path}.resource"),
            format!(
                "unsupported value {:?}: must be one of {}",
                r.resource,
                resources.join(", ")
            ),
        );
    }
    if r.container_name.is_empty() {
        if container_required {
            v.push(&format!("{path}.containerName"), "Required value");
        }
    } else if !spec.containers.iter().any(|c| c.name == r.container_name) {
        v.push(
            &format!("{path}.containerName"),
            format!("Not found: no container named {:?}", r.container_name),
        );
    }
    if let Some(d) = &r.divisor
        && d.nanos() <= 0
    {
        v.push(&format!("{path}.divisor"), "must be greater than 0");
    }
}

/// A ConfigMap's or Secret's name in a reference.
fn check_ref_name(v: &mut Errors, path: &str, name: &str) {
    if name.is_empty() {
        v.push(path, "Required value");
    } else {
        v.check(path, names::dns1123_subdomain(name));
    }
}

/// `env[].valueFrom` and `envFrom` of one container.
pub(super) fn validate_env(v: &mut Errors, cp: &str, c: &Container, spec: &PodSpec) {
    for (j, e) in c.env.iter().enumerate() {
        let Some(from) = &e.value_from else { continue };
        let ep = format!("{cp}.env[{j}]");
        let fp = format!("{ep}.valueFrom");
        let n = [
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            v.push(
                &fp,
                "must specify exactly one of configMapKeyRef, secretKeyRef, fieldRef and resourceFieldRef",
            );
        }
        if !e.value.is_empty() {
            v.push(
                &format!("{ep}.value"),
                "may not be specified when valueFrom is",
            );
        }
        for (field, r) in [
            ("configMapKeyRef", &from.config_map_key_ref),
            ("secretKeyRef", &from.secret_key_ref),
        ] {
            if let Some(r) = r {
                check_ref_name(v, &format!("{fp}.{field}.name"), &r.name);
                v.check(&format!("{fp}.{field}.key"), config::check_key(&r.key));
            }
        }
        if let Some(f) = &from.field_ref {
            check_field_path(v, &format!("{fp}.fieldRef"), f, true);
        }
        if let Some(r) = &from.resource_field_ref {
            check_resource_field(v, &format!("{fp}.resourceFieldRef"), r, spec, false);
        }
    }
    for (j, e) in c.env_from.iter().enumerate() {
        let ep = format!("{cp}.envFrom[{j}]");
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(r), None) => check_ref_name(v, &format!("{ep}.configMapRef.name"), &r.name),
            (None, Some(r)) => check_ref_name(v, &format!("{ep}.secretRef.name"), &r.name),
            _ => v.push(
                &ep,
                "must specify exactly one of configMapRef and secretRef",
            ),
        }
        if e.prefix.contains('=') || e.prefix.chars().any(|ch| ch.is_control()) {
            v.push(
                &format!("{ep}.prefix"),
                "must not contain '=' or control characters",
            );
        }
    }
}

fn check_mode(v: &mut Errors, path: &str, mode: Option<i32>) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        v.push(
            path,
            format!("must be a number between 0 and 0777 (octal), both inclusive; got {m}"),
        );
    }
}

fn check_items(v: &mut Errors, path: &str, items: &[KeyToPath], paths: &mut BTreeSet<String>) {
    for (k, item) in items.iter().enumerate() {
        let ip = format!("{path}.items[{k}]");
        v.check(&format!("{ip}.key"), config::check_key(&item.key));
        v.check(&format!("{ip}.path"), config::check_item_path(&item.path));
        check_mode(v, &format!("{ip}.mode"), item.mode);
        if !paths.insert(item.path.clone()) {
            v.push(
                &format!("{ip}.path"),
                format!("Duplicate value: {:?}", item.path),
            );
        }
    }
}

fn check_downward(
    v: &mut Errors,
    path: &str,
    items: &[DownwardApiFile],
    spec: &PodSpec,
    paths: &mut BTreeSet<String>,
) {
    for (k, f) in items.iter().enumerate() {
        let ip = format!("{path}.items[{k}]");
        v.check(&format!("{ip}.path"), config::check_item_path(&f.path));
        if !paths.insert(f.path.clone()) {
            v.push(
                &format!("{ip}.path"),
                format!("Duplicate value: {:?}", f.path),
            );
        }
        check_mode(v, &format!("{ip}.mode"), f.mode);
        match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), None) => check_field_path(v, &format!("{ip}.fieldRef"), r, false),
            (None, Some(r)) => {
                check_resource_field(v, &format!("{ip}.resourceFieldRef"), r, spec, true)
            }
            _ => v.push(
                &ip,
                "must specify exactly one of fieldRef and resourceFieldRef",
            ),
        }
    }
}

/// The volume's sources: exactly one, and the data ones well-formed.
pub(super) fn validate_volume(v: &mut Errors, vp: &str, vol: &Volume, spec: &PodSpec) {
    let sources = [
        vol.empty_dir.is_some(),
        vol.host_path.is_some(),
        vol.config_map.is_some(),
        vol.secret.is_some(),
        vol.projected.is_some(),
        vol.downward_api.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        v.push(vp, "may not specify more than one volume source");
    }
    if let Some(c) = &vol.config_map {
        check_ref_name(v, &format!("{vp}.configMap.name"), &c.name);
        check_items(
            v,
            &format!("{vp}.configMap"),
            &c.items,
            &mut BTreeSet::new(),
        );
        check_mode(v, &format!("{vp}.configMap.defaultMode"), c.default_mode);
    }
    if let Some(s) = &vol.secret {
        check_ref_name(v, &format!("{vp}.secret.secretName"), &s.secret_name);
        check_items(v, &format!("{vp}.secret"), &s.items, &mut BTreeSet::new());
        check_mode(v, &format!("{vp}.secret.defaultMode"), s.default_mode);
    }
    if let Some(d) = &vol.downward_api {
        check_downward(
            v,
            &format!("{vp}.downwardAPI"),
            &d.items,
            spec,
            &mut BTreeSet::new(),
        );
        check_mode(v, &format!("{vp}.downwardAPI.defaultMode"), d.default_mode);
    }
    if let Some(p) = &vol.projected {
        let pp = format!("{vp}.projected");
        check_mode(v, &format!("{pp}.defaultMode"), p.default_mode);
        let mut paths = BTreeSet::new();
        for (i, s) in p.sources.iter().enumerate() {
            let sp = format!("{pp}.sources[{i}]");
            let n = [
                s.config_map.is_some(),
                s.secret.is_some(),
                s.downward_api.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                v.push(
                    &sp,
                    "must specify exactly one of configMap, secret and downwardAPI",
                );
            }
            for (field, src) in [("configMap", &s.config_map), ("secret", &s.secret)] {
                if let Some(src) = src {
                    check_ref_name(v, &format!("{sp}.{field}.name"), &src.name);
                    check_items(v, &format!("{sp}.{field}"), &src.items, &mut paths);
                }
            }
            if let Some(d) = &s.downward_api {
                check_downward(v, &format!("{sp}.downwardAPI"), &d.items, spec, &mut paths);
            }
        }
    }
}
