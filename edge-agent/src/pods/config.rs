//! What a pod reads from ConfigMaps, Secrets and its own fields, resolved as the kubelet does:
//! environment variables (`env[].valueFrom`, `envFrom`) and the files of configMap, secret,
//! projected and downwardAPI volumes. Pure: the data comes with the desired pod
//! ([`ConfigData`]), the pod's addresses and the node's capacity are arguments.
//!
//! A required ConfigMap, Secret or key that is missing is an error naming it (the container
//! waits in `CreateContainerConfigError`); an optional one is left out. No message carries a
//! value.

use std::collections::BTreeMap;
use std::sync::Arc;

use bramble_api::pod::{
    Container, DownwardApiFile, KeyToPath, ObjectFieldSelector, Pod, ResourceFieldSelector, Volume,
};
use bramble_api::wire::ConfigData;

/// What the downward API reads besides the pod itself.
#[derive(Debug, Clone, Default)]
pub struct PodContext<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    /// The node's allocatable CPU (millicores) and memory (bytes): a limit that is not set
    /// reads as these, as in Kubernetes.
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// One file of a volume: its path under the volume, bytes and mode.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for VolumeFile {
    // Never the bytes: they may be a Secret's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {:o})",
            self.path,
            self.bytes.len(),
            self.mode
        )
    }
}

/// The data of one ConfigMap or Secret that came with the pod.
fn find<'a>(data: &'a [Arc<ConfigData>], secret: bool, name: &str) -> Option<&'a ConfigData> {
    data.iter()
        .find(|d| d.secret == secret && d.name == name)
        .map(|d| d.as_ref())
}

fn kind_name(secret: bool) -> &'static str {
    if secret { "secret" } else { "configmap" }
}

fn missing(secret: bool, name: &str) -> String {
    format!("{} {name:?} not found", kind_name(secret))
}

/// The value of one key; Ok(None) when it may be absent.
fn key_value(
    data: &[Arc<ConfigData>],
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<Vec<u8>>, String> {
    let Some(d) = find(data, secret, name) else {
        return if optional {
            Ok(None)
        } else {
            Err(missing(secret, name))
        };
    };
    match d.items.iter().find(|(k, _)| k == key) {
        Some((_, v)) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {} {name:?}",
            kind_name(secret)
        )),
    }
}

/// A pod field (`fieldRef`).
fn field_value(pod: &Pod, f: &ObjectFieldSelector, ctx: &PodContext<'_>) -> String {
    let m = &pod.metadata;
    let keyed = |prefix: &str, map: &BTreeMap<String, String>| {
        f.field_path
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| map.get(k).cloned().unwrap_or_default())
    };
    let whole = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    match f.field_path.as_str() {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => whole(&m.labels),
        "metadata.annotations" => whole(&m.annotations),
        "spec.nodeName" => pod.spec.node_name.clone(),
        "spec.serviceAccountName" => "default".into(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        _ => keyed("metadata.labels", &m.labels)
            .or_else(|| keyed("metadata.annotations", &m.annotations))
            .unwrap_or_default(),
    }
}

/// A container's request or limit (`resourceFieldRef`), divided by its divisor and rounded
/// up, as the kubelet does.
fn resource_value(
    pod: &Pod,
    own: &Container,
    r: &ResourceFieldSelector,
    ctx: &PodContext<'_>,
) -> String {
    let c = if r.container_name.is_empty() {
        own
    } else {
        pod.spec
            .containers
            .iter()
            .find(|c| c.name == r.container_name)
            .unwrap_or(own)
    };
    let (map, what) = match r.resource.split_once('.') {
        Some(("limits", w)) => (&c.resources.limits, w),
        Some(("requests", w)) => (&c.resources.requests, w),
        _ => return String::new(),
    };
    let set = map.get(what);
    let limits = r.resource.starts_with("limits.");
    // In nano units of the resource, so that `divisor: 1m` of CPU divides exactly.
    let nanos: i128 = match (what, set) {
        (_, Some(q)) => q.nanos(),
        ("cpu", None) if limits => i128::from(ctx.cpu_millis) * 1_000_000,
        ("memory", None) if limits => i128::from(ctx.memory_bytes) * 1_000_000_000,
        _ => 0,
    };
    let divisor = r
        .divisor
        .as_ref()
        .map(|d| d.nanos())
        .filter(|d| *d > 0)
        .unwrap_or(1_000_000_000);
    let value = (nanos + divisor - 1).div_euclid(divisor);
    // A CPU request of 0 reads as 1 at the default divisor, as in Kubernetes (at least 1).
    let value = if what == "cpu" && value == 0 && nanos > 0 {
        1
    } else {
        value
    };
    value.to_string()
}

/// A name the environment can carry (the kubelet leaves other envFrom keys out).
fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('=')
        && !name.chars().any(|c| c.is_control())
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// The container's environment: `envFrom` first (each key, prefixed), then `env` in order;
/// a later name wins. Values that are not UTF-8 are taken lossily (Kubernetes takes bytes).
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    data: &[Arc<ConfigData>],
    ctx: &PodContext<'_>,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |name: String, value: String| {
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    };
    for e in &c.env_from {
        let (secret, r) = match (&e.config_map_ref, &e.secret_ref) {
            (Some(r), _) => (false, r),
            (None, Some(r)) => (true, r),
            (None, None) => continue,
        };
        let Some(d) = find(data, secret, &r.name) else {
            if r.optional.unwrap_or(false) {
                continue;
            }
            return Err(missing(secret, &r.name));
        };
        for (k, v) in &d.items {
            let name = format!("{}{k}", e.prefix);
            if env_name_ok(&name) {
                set(name, String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    for e in &c.env {
        let Some(from) = &e.value_from else {
            set(e.name.clone(), e.value.clone());
            continue;
        };
        let value = if let Some(k) = &from.config_map_key_ref {
            key_value(data, false, &k.name, &k.key, k.optional.unwrap_or(false))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        } else if let Some(k) = &from.secret_key_ref {
            key_value(data, true, &k.name, &k.key, k.optional.unwrap_or(false))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        } else if let Some(f) = &from.field_ref {
            Some(field_value(pod, f, ctx))
        } else {
            from.resource_field_ref
                .as_ref()
                .map(|r| resource_value(pod, c, r, ctx))
        };
        // An optional key that is absent leaves the variable unset.
        if let Some(v) = value {
            set(e.name.clone(), v);
        }
    }
    Ok(out)
}

/// The files of `items` (or of every key) of one ConfigMap or Secret.
fn key_files(
    data: &[Arc<ConfigData>],
    secret: bool,
    name: &str,
    items: &[KeyToPath],
    optional: bool,
    mode: u32,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    let Some(d) = find(data, secret, name) else {
        return if optional {
            Ok(())
        } else {
            Err(missing(secret, name))
        };
    };
    if items.is_empty() {
        for (k, v) in &d.items {
            out.push(VolumeFile {
                path: k.clone(),
                bytes: v.clone(),
                mode,
            });
        }
        return Ok(());
    }
    for item in items {
        match d.items.iter().find(|(k, _)| *k == item.key) {
            Some((_, v)) => out.push(VolumeFile {
                path: item.path.clone(),
                bytes: v.clone(),
                mode: item.mode.map_or(mode, |m| m as u32),
            }),
            None if optional => {}
            None => {
                return Err(format!(
                    "couldn't find key {} in {} {name:?}",
                    item.key,
                    kind_name(secret)
                ));
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardApiFile],
    mode: u32,
    ctx: &PodContext<'_>,
    out: &mut Vec<VolumeFile>,
) {
    let first = pod.spec.containers.first().cloned().unwrap_or_default();
    for f in items {
        let value = match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), _) => field_value(pod, r, ctx),
            (None, Some(r)) => resource_value(pod, &first, r, ctx),
            (None, None) => continue,
        };
        out.push(VolumeFile {
            path: f.path.clone(),
            bytes: value.into_bytes(),
            mode: f.mode.map_or(mode, |m| m as u32),
        });
    }
}

/// The files of a configMap, secret, projected or downwardAPI volume; None for other
/// volumes. Modes default to 0644, as in Kubernetes.
pub fn volume_files(
    pod: &Pod,
    v: &Volume,
    data: &[Arc<ConfigData>],
    ctx: &PodContext<'_>,
) -> Option<Result<Vec<VolumeFile>, String>> {
    let mode = |m: Option<i32>| m.map_or(0o644, |m| m as u32);
    let mut out = Vec::new();
    let r = if let Some(c) = &v.config_map {
        key_files(
            data,
            false,
            &c.name,
            &c.items,
            c.optional.unwrap_or(false),
            mode(c.default_mode),
            &mut out,
        )
    } else if let Some(s) = &v.secret {
        key_files(
            data,
            true,
            &s.secret_name,
            &s.items,
            s.optional.unwrap_or(false),
            mode(s.default_mode),
            &mut out,
        )
    } else if let Some(d) = &v.downward_api {
        downward_files(pod, &d.items, mode(d.default_mode), ctx, &mut out);
        Ok(())
    } else if let Some(p) = &v.projected {
        let m = mode(p.default_mode);
        p.sources.iter().try_for_each(|s| {
            if let Some(c) = &s.config_map {
                key_files(
                    data,
                    false,
                    &c.name,
                    &c.items,
                    c.optional.unwrap_or(false),
                    m,
                    &mut out,
                )
            } else if let Some(c) = &s.secret {
                key_files(
                    data,
                    true,
                    &c.name,
                    &c.items,
                    c.optional.unwrap_or(false),
                    m,
                    &mut out,
                )
            } else if let Some(d) = &s.downward_api {
                downward_files(pod, &d.items, m, ctx, &mut out);
                Ok(())
            } else {
                Ok(())
            }
        })
    } else {
        return None;
    };
    Some(r.map(|()| out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, uid: u1, labels: {{app: web, tier: \"1\"}}}}\nspec:\n  nodeName: pi1\n{yaml}"
        );
        match bramble_api::manifest::parse_manifests(&text)
            .unwrap()
            .remove(0)
            .object
        {
            bramble_api::Object::Pod(p) => p,
            _ => unreachable!(),
        }
    }

    fn data(secret: bool, name: &str, items: &[(&str, &str)]) -> Arc<ConfigData> {
        Arc::new(ConfigData {
            secret,
            name: name.into(),
            revision: 1,
            items: items
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            repeated: false,
        })
    }

    const CTX: PodContext<'static> = PodContext {
        pod_ip: "10.42.1.5",
        host_ip: "192.168.1.10",
        cpu_millis: 4000,
        memory_bytes: 1 << 30,
    };

    #[test]
    fn env_reads_configmaps_secrets_fields_and_resources_in_kubelet_order() {
        let p = pod(
            "  containers:\n  - name: c\n    image: i\n    resources: {limits: {cpu: 250m}, requests: {memory: 64Mi}}\n    envFrom: [{prefix: CFG_, configMapRef: {name: cfg}}, {secretRef: {name: gone, optional: true}}]\n    env:\n    - {name: CFG_a, value: literal}\n    - {name: LIVES, valueFrom: {configMapKeyRef: {name: cfg, key: lives}}}\n    - {name: PW, valueFrom: {secretKeyRef: {name: db, key: password}}}\n    - {name: OPT, valueFrom: {secretKeyRef: {name: db, key: nope, optional: true}}}\n    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}\n    - {name: CPU1, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}\n    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n    - {name: REQ, valueFrom: {resourceFieldRef: {resource: requests.memory, divisor: 1Mi}}}\n",
        );
        let d = vec![
            data(
                false,
                "cfg",
                &[("a", "1"), ("lives", "3"), ("bad=name", "x")],
            ),
            data(true, "db", &[("password", "s3cr3t")]),
        ];
        let env = resolve_env(&p, &p.spec.containers[0], &d, &CTX).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_a"), Some("literal"), "env wins over envFrom");
        assert_eq!(get("CFG_lives"), Some("3"));
        assert_eq!(get("CFG_bad=name"), None);
        assert_eq!(get("LIVES"), Some("3"));
        assert_eq!(get("PW"), Some("s3cr3t"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("NODE"), Some("pi1"));
        assert_eq!(get("IP"), Some("10.42.1.5"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("CPU"), Some("250"));
        assert_eq!(get("CPU1"), Some("1"), "rounded up");
        assert_eq!(get("MEM"), Some("1024"), "no limit: the node's memory");
        assert_eq!(get("REQ"), Some("64"));
        // A required ConfigMap, Secret or key that is missing is named, no value quoted.
        let e = resolve_env(&p, &p.spec.containers[0], &d[..1], &CTX).unwrap_err();
        assert_eq!(e, "secret \"db\" not found");
        let e = resolve_env(&p, &p.spec.containers[0], &d[1..], &CTX).unwrap_err();
        assert_eq!(e, "configmap \"cfg\" not found");
        let d2 = vec![d[0].clone(), data(true, "db", &[("user", "x")])];
        let e = resolve_env(&p, &p.spec.containers[0], &d2, &CTX).unwrap_err();
        assert_eq!(e, "couldn't find key password in secret \"db\"");
    }

    #[test]
    fn volume_files_follow_items_modes_and_optional_sources() {
        let p = pod(
            "  containers: [{name: c, image: i, resources: {limits: {memory: 128Mi}}}]\n  volumes:\n  - {name: all, configMap: {name: cfg, defaultMode: 0400}}\n  - {name: some, secret: {secretName: db, items: [{key: password, path: pw/file, mode: 0600}]}}\n  - name: proj\n    projected:\n      sources:\n      - configMap: {name: cfg, items: [{key: a, path: conf/a}]}\n      - secret: {name: gone, optional: true}\n      - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}, {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}]}\n  - {name: scratch, emptyDir: {}}\n",
        );
        let d = vec![
            data(false, "cfg", &[("a", "1"), ("b", "2")]),
            data(true, "db", &[("password", "s3cr3t")]),
        ];
        let files = |i: usize| {
            volume_files(&p, &p.spec.volumes[i], &d, &CTX)
                .unwrap()
                .unwrap()
        };
        let all = files(0);
        assert_eq!(
            all.iter()
                .map(|f| (f.path.as_str(), f.mode))
                .collect::<Vec<_>>(),
            [("a", 0o400), ("b", 0o400)]
        );
        assert_eq!(files(1)[0].path, "pw/file");
        assert_eq!(files(1)[0].mode, 0o600);
        let proj = files(2);
        let by: BTreeMap<&str, &[u8]> = proj
            .iter()
            .map(|f| (f.path.as_str(), &f.bytes[..]))
            .collect();
        assert_eq!(by["conf/a"], b"1");
        assert_eq!(by["labels"], b"app=\"web\"\ntier=\"1\"\n");
        assert_eq!(by["mem"], b"128");
        assert!(volume_files(&p, &p.spec.volumes[3], &d, &CTX).is_none());
        // A required source that is missing: an error naming it, nothing half-made.
        let e = volume_files(&p, &p.spec.volumes[1], &d[..1], &CTX)
            .unwrap()
            .unwrap_err();
        assert_eq!(e, "secret \"db\" not found");
        // The debug form never shows bytes.
        assert!(!format!("{:?}", files(1)).contains("s3cr3t"));
    }
}
