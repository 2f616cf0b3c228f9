//! Kubernetes' protobuf encoding of request bodies (`application/vnd.kubernetes.protobuf`),
//! as kubectl's typed generators send them (`kubectl create deployment|configmap|secret|
//! service|namespace|job|cronjob`): the `k8s\0` magic, a `runtime.Unknown` envelope naming
//! the kind, and the object in the field numbers of Kubernetes' `generated.proto`. Decoded to
//! the JSON the API takes, through a table of the messages those kinds hold, then handled as
//! a JSON body (validation included). A field the table does not know is an error naming it,
//! never dropped: the client should send JSON instead.
//!
//! Bounds: the body's size (the API's limit), a nesting depth of [`MAX_DEPTH`], lengths
//! checked against what is left.

use serde_json::{Map, Value, json};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 32;

/// How a field's bytes read.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// A plain integer: 0 stands for unset, as "" does.
    Int,
    /// An integer behind a pointer in Go: written only when set, so 0 is a value.
    IntP,
    Bool,
    Msg(&'static str),
    /// `map<string, string>`.
    MapStr,
    /// `map<string, bytes>`.
    MapBytes,
    /// `map<string, Quantity>`.
    MapQuantity,
    Time,
    Quantity,
    IntOrString,
    /// A message whose fields JSON writes into the enclosing object.
    Inline(&'static str),
    /// Read past: a create's status (the server sets status; gogo writes its zero fields).
    Skip,
}

/// (number, JSON name, type, repeated).
type Field = (u32, &'static str, Ty, bool);

use Ty::*;

/// The messages of the kinds decoded, by name.
fn message(name: &str) -> Option<&'static [Field]> {
    Some(match name {
        "ObjectMeta" => &[
            (1, "name", Str, false),
            (2, "generateName", Str, false),
            (3, "namespace", Str, false),
            (4, "selfLink", Str, false),
            (5, "uid", Str, false),
            (6, "resourceVersion", Str, false),
            (7, "generation", Int, false),
            (8, "creationTimestamp", Time, false),
            (9, "deletionTimestamp", Time, false),
            (10, "deletionGracePeriodSeconds", IntP, false),
            (11, "labels", MapStr, false),
            (12, "annotations", MapStr, false),
            (13, "ownerReferences", Msg("OwnerReference"), true),
            (14, "finalizers", Str, true),
        ],
        "OwnerReference" => &[
            (5, "apiVersion", Str, false),
            (1, "kind", Str, false),
            (3, "name", Str, false),
            (4, "uid", Str, false),
            (6, "controller", Bool, false),
            (7, "blockOwnerDeletion", Bool, false),
        ],
        "LabelSelector" => &[
            (1, "matchLabels", MapStr, false),
            (2, "matchExpressions", Msg("LabelSelectorRequirement"), true),
        ],
        "LabelSelectorRequirement" => &[
            (1, "key", Str, false),
            (2, "operator", Str, false),
            (3, "values", Str, true),
        ],
        "Deployment" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("DeploymentSpec"), false),
            (3, "status", Skip, false),
        ],
        "DeploymentSpec" => &[
            (1, "replicas", IntP, false),
            (2, "selector", Msg("LabelSelector"), false),
            (3, "template", Msg("PodTemplateSpec"), false),
            (4, "strategy", Msg("DeploymentStrategy"), false),
            (5, "minReadySeconds", Int, false),
            (6, "revisionHistoryLimit", IntP, false),
            (7, "paused", Bool, false),
            (9, "progressDeadlineSeconds", IntP, false),
        ],
        "DeploymentStrategy" => &[
            (1, "type", Str, false),
            (2, "rollingUpdate", Msg("RollingUpdateDeployment"), false),
        ],
        "RollingUpdateDeployment" => &[
            (1, "maxUnavailable", IntOrString, false),
            (2, "maxSurge", IntOrString, false),
        ],
        "ConfigMap" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (4, "immutable", Bool, false),
            (2, "data", MapStr, false),
            (3, "binaryData", MapBytes, false),
        ],
        "Secret" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (5, "immutable", Bool, false),
            (2, "data", MapBytes, false),
            (4, "stringData", MapStr, false),
            (3, "type", Str, false),
        ],
        "Service" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("ServiceSpec"), false),
            (3, "status", Skip, false),
        ],
        "ServiceSpec" => &[
            (1, "ports", Msg("ServicePort"), true),
            (2, "selector", MapStr, false),
            (3, "clusterIP", Str, false),
            (18, "clusterIPs", Str, true),
            (4, "type", Str, false),
            (5, "externalIPs", Str, true),
            (7, "sessionAffinity", Str, false),
            (8, "loadBalancerIP", Str, false),
            (9, "loadBalancerSourceRanges", Str, true),
            (10, "externalName", Str, false),
            (11, "externalTrafficPolicy", Str, false),
            (12, "healthCheckNodePort", Int, false),
            (13, "publishNotReadyAddresses", Bool, false),
            (19, "ipFamilies", Str, true),
            (17, "ipFamilyPolicy", Str, false),
            (22, "internalTrafficPolicy", Str, false),
        ],
        "ServicePort" => &[
            (1, "name", Str, false),
            (2, "protocol", Str, false),
            (6, "appProtocol", Str, false),
            (3, "port", Int, false),
            (4, "targetPort", IntOrString, false),
            (5, "nodePort", Int, false),
        ],
        "Namespace" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("NamespaceSpec"), false),
            (3, "status", Skip, false),
        ],
        "NamespaceSpec" => &[(1, "finalizers", Str, true)],
        "Pod" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("PodSpec"), false),
            (3, "status", Skip, false),
        ],
        "PodTemplateSpec" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("PodSpec"), false),
        ],
        "PodSpec" => &[
            (1, "volumes", Msg("Volume"), true),
            (20, "initContainers", Msg("Container"), true),
            (2, "containers", Msg("Container"), true),
            (3, "restartPolicy", Str, false),
            (4, "terminationGracePeriodSeconds", IntP, false),
            (5, "activeDeadlineSeconds", IntP, false),
            (6, "dnsPolicy", Str, false),
            (7, "nodeSelector", MapStr, false),
            (8, "serviceAccountName", Str, false),
            (9, "serviceAccount", Str, false),
            (10, "nodeName", Str, false),
            (11, "hostNetwork", Bool, false),
            (12, "hostPID", Bool, false),
            (13, "hostIPC", Bool, false),
            (27, "shareProcessNamespace", Bool, false),
            (16, "hostname", Str, false),
            (17, "subdomain", Str, false),
            (19, "schedulerName", Str, false),
            (24, "priorityClassName", Str, false),
            (25, "priority", IntP, false),
            (30, "enableServiceLinks", Bool, false),
            (31, "preemptionPolicy", Str, false),
        ],
        "Container" => &[
            (1, "name", Str, false),
            (2, "image", Str, false),
            (3, "command", Str, true),
            (4, "args", Str, true),
            (5, "workingDir", Str, false),
            (6, "ports", Msg("ContainerPort"), true),
            (7, "env", Msg("EnvVar"), true),
            (8, "resources", Msg("ResourceRequirements"), false),
            (9, "volumeMounts", Msg("VolumeMount"), true),
            (13, "terminationMessagePath", Str, false),
            (20, "terminationMessagePolicy", Str, false),
            (14, "imagePullPolicy", Str, false),
            (16, "stdin", Bool, false),
            (17, "stdinOnce", Bool, false),
            (18, "tty", Bool, false),
        ],
        "ContainerPort" => &[
            (1, "name", Str, false),
            (2, "hostPort", Int, false),
            (3, "containerPort", Int, false),
            (4, "protocol", Str, false),
            (5, "hostIP", Str, false),
        ],
        "EnvVar" => &[(1, "name", Str, false), (2, "value", Str, false)],
        "ResourceRequirements" => &[
            (1, "limits", MapQuantity, false),
            (2, "requests", MapQuantity, false),
        ],
        "VolumeMount" => &[
            (1, "name", Str, false),
            (2, "readOnly", Bool, false),
            (3, "mountPath", Str, false),
            (4, "subPath", Str, false),
        ],
        // JSON inlines a volume's source into the volume.
        "Volume" => &[
            (1, "name", Str, false),
            (2, "", Inline("VolumeSource"), false),
        ],
        "VolumeSource" => &[(2, "emptyDir", Msg("EmptyDirVolumeSource"), false)],
        "EmptyDirVolumeSource" => &[(1, "medium", Str, false), (2, "sizeLimit", Quantity, false)],
        "Job" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("JobSpec"), false),
            (3, "status", Skip, false),
        ],
        "JobSpec" => &[
            (1, "parallelism", IntP, false),
            (2, "completions", IntP, false),
            (3, "activeDeadlineSeconds", IntP, false),
            (7, "backoffLimit", IntP, false),
            (4, "selector", Msg("LabelSelector"), false),
            (5, "manualSelector", Bool, false),
            (6, "template", Msg("PodTemplateSpec"), false),
            (8, "ttlSecondsAfterFinished", IntP, false),
            (9, "completionMode", Str, false),
            (10, "suspend", Bool, false),
        ],
        "CronJob" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("CronJobSpec"), false),
            (3, "status", Skip, false),
        ],
        "CronJobSpec" => &[
            (1, "schedule", Str, false),
            (8, "timeZone", Str, false),
            (2, "startingDeadlineSeconds", IntP, false),
            (3, "concurrencyPolicy", Str, false),
            (4, "suspend", Bool, false),
            (5, "jobTemplate", Msg("JobTemplateSpec"), false),
            (6, "successfulJobsHistoryLimit", IntP, false),
            (7, "failedJobsHistoryLimit", IntP, false),
        ],
        "JobTemplateSpec" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "spec", Msg("JobSpec"), false),
        ],
        "DeleteOptions" => &[
            (1, "gracePeriodSeconds", IntP, false),
            (2, "preconditions", Msg("Preconditions"), false),
            (3, "orphanDependents", Bool, false),
            (4, "propagationPolicy", Str, false),
            (5, "dryRun", Str, true),
            (
                6,
                "ignoreStoreReadErrorWithClusterBreakingPotential",
                Bool,
                false,
            ),
        ],
        "Preconditions" => &[(1, "uid", Str, false), (2, "resourceVersion", Str, false)],
        "Eviction" => &[
            (1, "metadata", Msg("ObjectMeta"), false),
            (2, "deleteOptions", Msg("DeleteOptions"), false),
        ],
        _ => return None,
    })
}

/// The root message of a kind, as the envelope names it.
fn root(kind: &str) -> Option<&'static str> {
    [
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "Namespace",
        "Job",
        "CronJob",
        "Pod",
        "DeleteOptions",
        "Eviction",
    ]
    .into_iter()
    .find(|k| *k == kind && message(k).is_some())
}

/// A protobuf reader over a message's bytes.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let (&x, rest) = self.b.split_first().ok_or("a varint cut short")?;
            self.b = rest;
            if shift == 63 && x > 1 {
                return Err("a varint longer than 64 bits".into());
            }
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err(format!("a field of {n} bytes with {} left", self.b.len()));
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }

    /// The next (field, wire type, payload): varints as their value's bytes.
    fn next(&mut self) -> Result<Option<(u32, Payload<'a>)>, String> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| "a field number too large")?;
        let p = match key & 7 {
            0 => Payload::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Payload::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length too large")?;
                Payload::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Payload::Fixed
            }
            w => return Err(format!("wire type {w} of field {field}")),
        };
        Ok(Some((field, p)))
    }
}

enum Payload<'a> {
    Varint(u64),
    /// A fixed-size number (no field of the kinds decoded has one).
    Fixed,
    Bytes(&'a [u8]),
}

fn bytes<'a>(p: &Payload<'a>, what: &str) -> Result<&'a [u8], String> {
    match p {
        Payload::Bytes(b) => Ok(b),
        _ => Err(format!("{what}: not length-delimited")),
    }
}

fn string(p: &Payload<'_>, what: &str) -> Result<String, String> {
    String::from_utf8(bytes(p, what)?.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
}

/// A `map<string, V>` entry: key 1, value 2.
fn entry<'a>(b: &'a [u8], what: &str) -> Result<(String, Option<Payload<'a>>), String> {
    let mut r = Reader { b };
    let (mut k, mut v) = (String::new(), None);
    while let Some((f, p)) = r.next()? {
        match f {
            1 => k = string(&p, what)?,
            2 => v = Some(p),
            n => return Err(format!("{what}: map entry field {n}")),
        }
    }
    Ok((k, v))
}

fn decode_message(name: &str, b: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} deep"));
    }
    let fields =
        message(name).ok_or_else(|| format!("message {name} is not understood in protobuf"))?;
    let mut out = Map::new();
    let mut r = Reader { b };
    while let Some((num, p)) = r.next()? {
        let Some(&(_, json_name, ty, repeated)) = fields.iter().find(|f| f.0 == num) else {
            return Err(format!(
                "field {num} of {name} is not understood in protobuf; send the object as JSON"
            ));
        };
        let what = format!("{name}.{json_name}");
        let value = match ty {
            Str => {
                let s = string(&p, &what)?;
                if s.is_empty() && !repeated {
                    continue;
                }
                json!(s)
            }
            Int | IntP => match p {
                Payload::Varint(0) if matches!(ty, Int) => continue,
                Payload::Varint(v) => json!(v as i64),
                _ => return Err(format!("{what}: not a varint")),
            },
            // gogo writes every plain field, set or not: false and "" stand for unset (as
            // JSON's omitempty leaves them out), so that a default is not read as a choice.
            Bool => match p {
                Payload::Varint(0) => continue,
                Payload::Varint(_) => json!(true),
                _ => return Err(format!("{what}: not a varint")),
            },
            Skip => continue,
            Msg(m) => decode_message(m, bytes(&p, &what)?, depth + 1)?,
            Inline(m) => {
                if let Value::Object(inner) = decode_message(m, bytes(&p, &what)?, depth + 1)? {
                    out.extend(inner);
                }
                continue;
            }
            Time => {
                let mut t = Reader {
                    b: bytes(&p, &what)?,
                };
                let mut secs = 0i64;
                while let Some((f, x)) = t.next()? {
                    if let (1, Payload::Varint(v)) = (f, x) {
                        secs = v as i64;
                    }
                }
                if secs == 0 {
                    continue;
                }
                json!(bramble_api::time::format_rfc3339(secs))
            }
            Quantity => {
                let mut q = Reader {
                    b: bytes(&p, &what)?,
                };
                let mut s = String::new();
                while let Some((f, x)) = q.next()? {
                    if f == 1 {
                        s = string(&x, &what)?;
                    }
                }
                json!(s)
            }
            IntOrString => {
                let mut q = Reader {
                    b: bytes(&p, &what)?,
                };
                let (mut kind, mut int, mut text) = (0u64, 0i64, String::new());
                while let Some((f, x)) = q.next()? {
                    match (f, x) {
                        (1, Payload::Varint(v)) => kind = v,
                        (2, Payload::Varint(v)) => int = v as i32 as i64,
                        (3, x) => text = string(&x, &what)?,
                        (n, _) => return Err(format!("{what}: IntOrString field {n}")),
                    }
                }
                match kind {
                    0 if int == 0 => continue,
                    0 => json!(int),
                    _ => json!(text),
                }
            }
            MapStr | MapBytes | MapQuantity => {
                let (k, v) = entry(bytes(&p, &what)?, &what)?;
                let v = match (ty, v) {
                    (_, None) => json!(""),
                    (MapStr, Some(v)) => json!(string(&v, &what)?),
                    (MapBytes, Some(v)) => {
                        use base64::Engine;
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes(&v, &what)?))
                    }
                    (_, Some(v)) => {
                        let mut q = Reader {
                            b: bytes(&v, &what)?,
                        };
                        let mut s = String::new();
                        while let Some((f, x)) = q.next()? {
                            if f == 1 {
                                s = string(&x, &what)?;
                            }
                        }
                        json!(s)
                    }
                };
                let m = out
                    .entry(json_name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = m {
                    m.insert(k, v);
                }
                continue;
            }
        };
        if repeated {
            let a = out
                .entry(json_name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = a {
                a.push(value);
            }
        } else {
            out.insert(json_name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// A protobuf body as the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body without Kubernetes' k8s\\0 prefix")?;
    // runtime.Unknown: typeMeta 1 {apiVersion 1, kind 2}, raw 2, contentEncoding 3,
    // contentType 4.
    let mut r = Reader { b: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, p)) = r.next()? {
        match f {
            1 => {
                let mut t = Reader {
                    b: bytes(&p, "typeMeta")?,
                };
                while let Some((g, x)) = t.next()? {
                    match g {
                        1 => api_version = string(&x, "apiVersion")?,
                        2 => kind = string(&x, "kind")?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes(&p, "raw")?,
            3 | 4 => {
                if !bytes(&p, "content")?.is_empty() {
                    return Err("a protobuf body with a content encoding or type".into());
                }
            }
            n => return Err(format!("field {n} of the protobuf envelope")),
        }
    }
    let root = root(&kind).ok_or_else(|| {
        format!("{kind:?} in protobuf is not understood; send it as JSON (application/json)")
    })?;
    let mut v = decode_message(root, raw, 0)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny protobuf writer for the tests.
    fn field(n: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![];
        varint(&mut b, u64::from(n) << 3 | 2);
        varint(&mut b, payload.len() as u64);
        b.extend_from_slice(payload);
        b
    }

    fn int(n: u32, v: u64) -> Vec<u8> {
        let mut b = vec![];
        varint(&mut b, u64::from(n) << 3);
        varint(&mut b, v);
        b
    }

    fn varint(b: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            b.push(v as u8 | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = field(1, api_version.as_bytes());
        tm.extend(field(2, kind.as_bytes()));
        let mut b = MAGIC.to_vec();
        b.extend(field(1, &tm));
        b.extend(field(2, raw));
        b.extend(field(3, b""));
        b.extend(field(4, b""));
        b
    }

    #[test]
    fn a_deployment_decodes_as_its_json_with_unset_fields_left_out() {
        let mut meta = field(1, b"web");
        meta.extend(field(3, b""));
        let mut label = field(1, b"app");
        label.extend(field(2, b"web"));
        meta.extend(field(11, &label));
        meta.extend(field(8, b""));
        let mut container = field(1, b"busybox");
        container.extend(field(2, b"busybox"));
        let mut port = int(2, 0);
        port.extend(int(3, 80));
        container.extend(field(6, &port));
        container.extend(int(16, 0));
        let mut spec = field(2, &container);
        spec.extend(int(11, 0));
        let mut template = field(1, &field(11, &label));
        template.extend(field(2, &spec));
        let mut dspec = int(1, 0);
        dspec.extend(field(2, &field(1, &label)));
        dspec.extend(field(3, &template));
        dspec.extend(field(4, b""));
        let mut raw = field(1, &meta);
        raw.extend(field(2, &dspec));
        raw.extend(field(3, &int(1, 0)));
        let v = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    // replicas is a pointer in Go: 0 is a value.
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "busybox", "image": "busybox", "ports": [{"containerPort": 80}]}]},
                    },
                    "strategy": {},
                },
            })
        );
    }

    #[test]
    fn delete_options_and_evictions_keep_their_dry_run() {
        let mut opts = field(5, b"All");
        opts.extend(int(1, 0));
        let v = decode(&envelope("meta.k8s.io/v1", "DeleteOptions", &opts)).unwrap();
        // A pointer's 0 is a value (delete now).
        assert_eq!(v["dryRun"], json!(["All"]));
        assert_eq!(v["gracePeriodSeconds"], 0);
        let ev = decode(&envelope("policy/v1", "Eviction", &field(2, &opts))).unwrap();
        assert_eq!(ev["deleteOptions"]["dryRun"], json!(["All"]));
    }

    #[test]
    fn hostile_or_unknown_protobuf_is_refused_by_name() {
        let cm = |raw: &[u8]| decode(&envelope("v1", "ConfigMap", raw));
        // An unknown field, an unknown kind, no magic, a length past the end, a varint that
        // never ends. (The table has no message that holds itself, so nesting is bounded by
        // it, and by MAX_DEPTH besides.)
        assert!(
            cm(&field(9, b"x"))
                .unwrap_err()
                .contains("field 9 of ConfigMap")
        );
        assert!(
            decode(&envelope("v1", "Node", b""))
                .unwrap_err()
                .contains("Node")
        );
        assert!(decode(b"{}").is_err());
        let mut cut = field(1, b"abcdef");
        cut.truncate(4);
        assert!(cm(&cut).is_err());
        assert!(
            cm(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
        // A status is read past whatever it holds (the server sets status).
        let job = decode(&envelope("batch/v1", "Job", &field(3, &field(1, b"junk")))).unwrap();
        assert!(job.get("status").is_none(), "{job}");
        // A ConfigMap with binary data and a Secret's bytes come out base64, as JSON has them.
        let mut entry = field(1, b"k");
        entry.extend(field(2, &[0, 1, 2]));
        let v = cm(&field(3, &entry)).unwrap();
        assert_eq!(v["binaryData"]["k"], "AAEC");
    }
}
