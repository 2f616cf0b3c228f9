//! Pod: one or more containers that share a network namespace and run on one node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, IntOrString, ObjectMeta};
use crate::quantity::Quantity;

/// A Pod (`v1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl PodSpec {
    /// The restart policy of the container named `name`: the pod's for app containers;
    /// for init containers `Always` (sidecars), else `Never` when the pod's is, `OnFailure`
    /// otherwise (an init container that succeeded is done whatever the pod's policy).
    pub fn restart_policy_of(&self, name: &str) -> &str {
        match self.init_containers.iter().find(|c| c.name == name) {
            Some(c) if c.is_sidecar() => "Always",
            Some(_) if self.restart_policy == "Never" => "Never",
            Some(_) => "OnFailure",
            None => self.restart_policy.as_str(),
        }
    }

    /// Init containers, then app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers.iter().chain(&self.containers)
    }

    /// Every ConfigMap and Secret the pod reads (env, envFrom, volumes), once each; a
    /// reference that is optional anywhere and required elsewhere is required.
    pub fn config_refs(&self) -> Vec<ConfigRef> {
        let mut refs: BTreeMap<(bool, String), bool> = BTreeMap::new();
        let mut add = |secret: bool, name: &str, optional: Option<bool>| {
            if name.is_empty() {
                return;
            }
            let o = refs.entry((secret, name.to_string())).or_insert(true);
            *o = *o && optional.unwrap_or(false);
        };
        for c in self.all_containers() {
            for e in &c.env {
                let Some(f) = &e.value_from else { continue };
                if let Some(k) = &f.config_map_key_ref {
                    add(false, &k.name, k.optional);
                }
                if let Some(k) = &f.secret_key_ref {
                    add(true, &k.name, k.optional);
                }
            }
            for e in &c.env_from {
                if let Some(r) = &e.config_map_ref {
                    add(false, &r.name, r.optional);
                }
                if let Some(r) = &e.secret_ref {
                    add(true, &r.name, r.optional);
                }
            }
        }
        for v in &self.volumes {
            if let Some(c) = &v.config_map {
                add(false, &c.name, c.optional);
            }
            if let Some(s) = &v.secret {
                add(true, &s.secret_name, s.optional);
            }
            for p in v.projected.iter().flat_map(|p| &p.sources) {
                if let Some(c) = &p.config_map {
                    add(false, &c.name, c.optional);
                }
                if let Some(s) = &p.secret {
                    add(true, &s.name, s.optional);
                }
            }
        }
        refs.into_iter()
            .map(|((secret, name), optional)| ConfigRef {
                secret,
                name,
                optional,
            })
            .collect()
    }
}

/// A pod template inside a Deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

/// The desired state of a pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    /// Run in order, each to completion (sidecars: started), before the app containers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub restart_policy: String,
    /// The node the pod is bound to; empty until scheduled.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node affinity (required terms); pod (anti-)affinity is not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// What every container runs as, unless its own `securityContext` says otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// With `hostname`: the pod's name is `HOSTNAME.SUBDOMAIN.NAMESPACE.svc.DOMAIN`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subdomain: String,
    /// `ClusterFirst` (default), `ClusterFirstWithHostNet`, `Default` or `None`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dns_policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<PodDnsConfig>,
    /// Extra `/etc/hosts` entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_aliases: Vec<HostAlias>,
    /// Service environment variables (`WEB_SERVICE_HOST`, ...); default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<bool>,
    /// How the pods of a group spread over the values of a node label (hosts, zones, racks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// One PID namespace for all the pod's containers: they see and signal each other's
    /// processes, and the first container's process is PID 1 of all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,
}

/// A pod's `dnsConfig`: merged into what its `dnsPolicy` gives (the whole of it with
/// `None`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodDnsConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<PodDnsConfigOption>,
}

/// One resolver option (`ndots`, `5`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodDnsConfigOption {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Names for an address in the pod's `/etc/hosts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct HostAlias {
    pub ip: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

/// A pod's `securityContext`: the fields Bramble honours (any other is refused by path).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodSecurityContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Added to every container's groups; the group of the pod's emptyDir volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supplemental_groups: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// A container's `securityContext`; its fields win over the pod's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityContext {
    /// Every capability, no seccomp filter, no masked paths: the host's power.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Whether a process may gain privileges (setuid binaries, file capabilities); the
    /// default is no (`no_new_privs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// Capabilities to add to and drop from the default set, by name (`NET_ADMIN`, or `ALL` to
/// drop).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Capabilities {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// `RuntimeDefault` (the default), `Unconfined`, or `Localhost` with a profile file under
/// the board's seccomp directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
}

/// The capabilities Linux knows, by Kubernetes' name (without `CAP_`).
pub const CAPABILITY_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// One container of a pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "ResourceRequirements::is_empty")]
    pub resources: ResourceRequirements,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_pull_policy: String,
    /// Restart the container when this fails `failureThreshold` times in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// The container is Ready only while this succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Only on an init container, only `Always`: a sidecar that starts before the app
    /// containers and keeps running beside them (Kubernetes 1.29+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// Hooks around a container's life.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// Run right after the container starts; it is not Running until this succeeds, and is
    /// killed (and restarted per its policy) when it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_start: Option<LifecycleHandler>,
    /// Run before the stop signal, within the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
}

/// One hook: exactly one of `exec`, `httpGet` and `sleep`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct LifecycleHandler {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
}

/// Wait this long (a hook that lets load balancers stop sending before the signal).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct SleepAction {
    pub seconds: i64,
}

impl Container {
    /// Whether this (init) container is a sidecar: `restartPolicy: Always`.
    pub fn is_sidecar(&self) -> bool {
        self.restart_policy.as_deref() == Some("Always")
    }
}

/// A health check: exactly one of `exec`, `httpGet` or `tcpSocket`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Default 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Default 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

/// Run a command in the container; exit 0 is success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// An HTTP GET; a status from 200 to 399 is success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct HttpGetAction {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub port: Option<IntOrString>,
    /// Default: the pod's own address (its loopback, from inside its network namespace).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `HTTP` only.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scheme: String,
}

/// A TCP connect; an accepted connection is success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSocketAction {
    pub port: Option<IntOrString>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
}

impl Container {
    /// The port number a probe names, by number or by the name of one of the container's ports.
    pub fn resolve_port(&self, port: &IntOrString) -> Option<u16> {
        match port {
            IntOrString::Int(i) => u16::try_from(*i).ok().filter(|p| *p > 0),
            IntOrString::String(name) => self
                .ports
                .iter()
                .find(|p| p.name == *name)
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
    }
}

/// An environment variable: a literal value, or one read from a ConfigMap, a Secret, the
/// pod's own fields or the container's resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from (exactly one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct EnvVarSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
}

/// One key of a ConfigMap or Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A field of the pod: `metadata.name`, `metadata.namespace`, `metadata.uid`,
/// `metadata.labels['KEY']`, `metadata.annotations['KEY']`, `spec.nodeName`,
/// `spec.serviceAccountName`, `status.podIP`, `status.hostIP`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectFieldSelector {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    pub field_path: String,
}

/// A container's request or limit: `limits.cpu`, `limits.memory`, `requests.cpu`,
/// `requests.memory` (and `.ephemeral-storage`), divided by `divisor` (default 1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceFieldSelector {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divisor: Option<Quantity>,
}

/// Every key of a ConfigMap or Secret as environment variables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct EnvFromSource {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<NameRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<NameRef>,
}

/// A ConfigMap or Secret by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NameRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A ConfigMap or Secret a pod reads, and whether the pod may start without it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigRef {
    /// A Secret (true) or a ConfigMap (false).
    pub secret: bool,
    pub name: String,
    pub optional: bool,
}

impl ConfigRef {
    /// `configmap "NAME"` / `secret "NAME"`, for messages.
    pub fn describe(&self) -> String {
        let kind = if self.secret { "secret" } else { "configmap" };
        format!("{kind} {:?}", self.name)
    }
}

/// A port a container listens on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// CPU and memory requests and limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceRequirements {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

impl ResourceRequirements {
    /// Whether neither requests nor limits are set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// A volume mounted into a container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

/// A pod volume: `emptyDir` or `hostPath` (no source means `emptyDir`, as in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiVolumeSource>,
}

impl Volume {
    /// Whether the volume's files are made by the agent from data (configMap, secret,
    /// projected, downwardAPI): kept on tmpfs, read-only, updated in place.
    pub fn is_projected(&self) -> bool {
        self.config_map.is_some()
            || self.secret.is_some()
            || self.projected.is_some()
            || self.downward_api.is_some()
    }
}

/// File modes (`defaultMode`, `mode`): a number, or YAML 1.1's octal text (`0644`), which
/// YAML 1.2 reads as a string but Kubernetes' YAML reader as octal, as charts expect.
mod file_mode {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        let raw: Option<Raw> = Option::deserialize(d)?;
        let n = match raw {
            None => return Ok(None),
            Some(Raw::Number(n)) => n,
            Some(Raw::Text(t)) => {
                let digits = t.strip_prefix("0o").or_else(|| t.strip_prefix('0'));
                match digits.map(|d| i64::from_str_radix(d, 8)) {
                    Some(Ok(n)) => n,
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "invalid file mode {t:?}: expected a number or octal such as 0644"
                        )));
                    }
                }
            }
        };
        i32::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("file mode {n} is out of range")))
    }
}

/// A key of a ConfigMap or Secret as a file of a volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub mode: Option<i32>,
}

/// A ConfigMap's keys as files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A Secret's keys as files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Several sources in one directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ProjectedVolumeSource {
    pub sources: Vec<VolumeProjection>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub default_mode: Option<i32>,
}

/// One source of a projected volume (exactly one field).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeProjection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ProjectionSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<ProjectionSource>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiProjection>,
}

/// A ConfigMap or Secret inside a projected volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ProjectionSource {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// The pod's own fields inside a projected volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct DownwardApiProjection {
    pub items: Vec<DownwardApiFile>,
}

/// The pod's own fields as files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct DownwardApiVolumeSource {
    pub items: Vec<DownwardApiFile>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub default_mode: Option<i32>,
}

/// One file of the downward API: a pod field or a container's resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct DownwardApiFile {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "file_mode::deserialize"
    )]
    pub mode: Option<i32>,
}

/// Scratch space that lives as long as the pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct EmptyDirVolumeSource {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub medium: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// A file or directory of the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct HostPathVolumeSource {
    pub path: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
}

/// Scheduling constraints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Affinity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
}

/// One `topologySpreadConstraints` entry: the pods matching `labelSelector` (in the pod's
/// namespace) may differ by at most `maxSkew` between the values of `topologyKey`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct TopologySpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) or `ScheduleAnyway` (a preference).
    pub when_unsatisfiable: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<crate::meta::LabelSelector>,
    /// Fewer eligible domains than this count as a global minimum of 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_domains: Option<i32>,
    /// Keys of the pod's own labels added to the selector (as `pod-template-hash`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_label_keys: Vec<String>,
    /// `Honor` (default) or `Ignore`: whether the pod's node selector and affinity limit
    /// the domains counted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_affinity_policy: String,
    /// `Honor` or `Ignore` (default): whether nodes whose taints the pod does not tolerate
    /// are left out of the domains counted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_taints_policy: String,
}

/// Which nodes a pod may run on, by their labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NodeAffinity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
}

/// Terms ORed together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// Requirements ANDed together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSelectorTerm {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

/// `key` `operator` `values`: In, NotIn, Exists, DoesNotExist, Gt, Lt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl NodeSelectorRequirement {
    /// Whether a node's labels satisfy the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        let num = |s: &str| s.parse::<i64>().ok();
        match self.operator.as_str() {
            "In" => v.is_some_and(|v| self.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !self.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" => {
                matches!((v.and_then(|v| num(v)), self.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
            }
            "Lt" => {
                matches!((v.and_then(|v| num(v)), self.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
            }
            _ => false,
        }
    }
}

impl NodeSelector {
    /// Whether any term matches (an empty term matches nothing, as in Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.iter().any(|t| {
            !t.match_expressions.is_empty() && t.match_expressions.iter().all(|r| r.matches(labels))
        })
    }
}

/// Lets a pod run on nodes with a matching taint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Toleration {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operator: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub effect: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// The observed state of a pod, reported by its node's agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    #[serde(rename = "podIP", skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// The state of one container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerStatus {
    pub name: String,
    pub ready: bool,
    pub restart_count: i32,
    /// Always present, as in Kubernetes (client libraries require it, and `imageID`).
    pub image: String,
    /// The image's digest reference once known; empty until then.
    #[serde(rename = "imageID")]
    pub image_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
}

/// Exactly one of waiting, running or terminated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<StateWaiting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<StateRunning>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated: Option<StateTerminated>,
}

/// A container not yet running, with the reason (e.g. `CrashLoopBackOff`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct StateWaiting {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A running container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct StateRunning {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// A container that exited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct StateTerminated {
    pub exit_code: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}
