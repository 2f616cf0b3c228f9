//! The kinds Bramble serves and [`Object`], one value of any of them.

use std::fmt;

use serde::Serialize;

use crate::config::{ConfigMap, Secret};
use crate::cronjob::CronJob;
use crate::daemonset::DaemonSet;
use crate::deployment::Deployment;
use crate::event::Event;
use crate::image::Image;
use crate::job::Job;
use crate::meta::ObjectMeta;
use crate::namespace::Namespace;
use crate::node::Node;
use crate::pod::Pod;
use crate::replicaset::ReplicaSet;
use crate::service::{Endpoints, Service};

/// A kind of object the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Deployment,
    ReplicaSet,
    DaemonSet,
    Job,
    CronJob,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    Event,
    Image,
}

impl Kind {
    /// Every kind, in the order `bramble get all` prints them, which is also the enum's
    /// declaration order (its `Ord`; the store's ranges rely on it).
    pub const ALL: [Kind; 14] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::DaemonSet,
        Kind::Job,
        Kind::CronJob,
        Kind::Service,
        Kind::Endpoints,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Event,
        Kind::Image,
    ];

    /// The `kind` field, e.g. `Pod`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Event => "Event",
            Kind::Image => "Image",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The API group: empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet => "apps",
            Kind::Job | Kind::CronJob => "batch",
            Kind::Image => "bramble.io",
            _ => "",
        }
    }

    /// The `apiVersion` field, e.g. `apps/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet => "apps/v1",
            Kind::Job | Kind::CronJob => "batch/v1",
            Kind::Image => "bramble.io/v1",
            _ => "v1",
        }
    }

    /// The resource name in URLs, e.g. `pods`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Deployment => "deployments",
            Kind::ReplicaSet => "replicasets",
            Kind::DaemonSet => "daemonsets",
            Kind::Job => "jobs",
            Kind::CronJob => "cronjobs",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::Event => "events",
            Kind::Image => "images",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }

    /// The lowercase singular, e.g. `pod`, as used in messages.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::ReplicaSet => "replicaset",
            Kind::DaemonSet => "daemonset",
            Kind::Job => "job",
            Kind::CronJob => "cronjob",
            Kind::Service => "service",
            Kind::Endpoints => "endpoints",
            Kind::Event => "event",
            Kind::Image => "image",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// Whether objects of the kind have a status that only the system writes (the `/status`
    /// subresource).
    pub fn has_status(self) -> bool {
        matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::Pod
                | Kind::Deployment
                | Kind::ReplicaSet
                | Kind::DaemonSet
                | Kind::Job
                | Kind::CronJob
                | Kind::Service
        )
    }

    /// Whether the kind has a `/scale` subresource (`kubectl scale`).
    pub fn scalable(self) -> bool {
        matches!(self, Kind::Deployment | Kind::ReplicaSet)
    }

    /// kubectl's short names.
    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Namespace => "ns",
            Kind::Node => "no",
            Kind::Pod => "po",
            Kind::Deployment => "deploy",
            Kind::ReplicaSet => "rs",
            Kind::DaemonSet => "ds",
            // Kubernetes gives Jobs no short name.
            Kind::Job => "job",
            Kind::CronJob => "cj",
            Kind::Service => "svc",
            Kind::Endpoints => "ep",
            Kind::Event => "ev",
            Kind::Image => "img",
            Kind::ConfigMap => "cm",
            // Kubernetes gives Secrets no short name.
            Kind::Secret => "secret",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::Image)
    }

    /// `resource.group` as kubectl prints it: `deployment.apps`, `pod`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.singular().to_string(),
            g => format!("{}.{g}", self.singular()),
        }
    }

    /// The kind named by its `kind` field.
    pub fn from_kind_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind a user typed: `pods`, `pod`, `po`, `Pod`, `deployments.apps`, ...
    pub fn from_user(text: &str) -> Option<Kind> {
        let t = text.to_ascii_lowercase();
        let t = t.split_once('.').map_or(t.as_str(), |(r, g)| {
            // `deployment.apps` names the group; accept it only for the right group.
            if Kind::ALL.iter().any(|k| k.group() == g) {
                r
            } else {
                ""
            }
        });
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == t || k.singular() == t || k.short_name() == t)
    }

    /// The kind served at `/api/v1/<plural>` or `/apis/<group>/v1/<plural>`.
    pub fn from_path(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }

    /// The API path of a collection or of one object.
    pub fn path(self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut p = match self.group() {
            "" => "/api/v1".to_string(),
            g => format!("/apis/{g}/v1"),
        };
        if let (true, Some(ns)) = (self.namespaced(), namespace) {
            p.push_str("/namespaces/");
            p.push_str(ns);
        }
        p.push('/');
        p.push_str(self.plural());
        if let Some(n) = name {
            p.push('/');
            p.push_str(n);
        }
        p
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a JSON value is not an object of a kind Bramble serves.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("{kind}: {source}")]
    Decode {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
}

/// One object of any kind.
// Objects are built once per request and moved, not copied in bulk; boxing every variant
// would add an allocation to each for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    DaemonSet(DaemonSet),
    Job(Job),
    CronJob(CronJob),
    Service(Service),
    Endpoints(Endpoints),
    Event(Event),
    Image(Image),
    ConfigMap(ConfigMap),
    Secret(Secret),
}

macro_rules! each {
    ($obj:expr, $o:ident => $e:expr) => {
        match $obj {
            Object::Namespace($o) => $e,
            Object::Node($o) => $e,
            Object::Pod($o) => $e,
            Object::Deployment($o) => $e,
            Object::ReplicaSet($o) => $e,
            Object::DaemonSet($o) => $e,
            Object::Job($o) => $e,
            Object::CronJob($o) => $e,
            Object::Service($o) => $e,
            Object::Endpoints($o) => $e,
            Object::Event($o) => $e,
            Object::Image($o) => $e,
            Object::ConfigMap($o) => $e,
            Object::Secret($o) => $e,
        }
    };
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Deployment(_) => Kind::Deployment,
            Object::ReplicaSet(_) => Kind::ReplicaSet,
            Object::DaemonSet(_) => Kind::DaemonSet,
            Object::Job(_) => Kind::Job,
            Object::CronJob(_) => Kind::CronJob,
            Object::Service(_) => Kind::Service,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Event(_) => Kind::Event,
            Object::Image(_) => Kind::Image,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::Secret(_) => Kind::Secret,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    /// The object's metadata, to change.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// Sets `apiVersion` and `kind` to this kind's canonical values.
    pub fn normalize_type_meta(&mut self) {
        let kind = self.kind();
        each!(self, o => {
            o.api_version = kind.api_version().to_string();
            o.kind = kind.name().to_string();
        })
    }

    /// Reads a stored or served object (trusted JSON) without validating it; the kind comes
    /// from its `kind` field.
    pub fn from_value(value: serde_json::Value) -> Result<Object, ObjectError> {
        let kind_name = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let kind = Kind::from_kind_name(kind_name)
            .ok_or_else(|| ObjectError::UnknownKind(kind_name.to_string()))?;
        let e = |source| ObjectError::Decode { kind, source };
        Ok(match kind {
            Kind::Namespace => Object::Namespace(serde_json::from_value(value).map_err(e)?),
            Kind::Node => Object::Node(serde_json::from_value(value).map_err(e)?),
            Kind::Pod => Object::Pod(serde_json::from_value(value).map_err(e)?),
            Kind::Deployment => Object::Deployment(serde_json::from_value(value).map_err(e)?),
            Kind::ReplicaSet => Object::ReplicaSet(serde_json::from_value(value).map_err(e)?),
            Kind::DaemonSet => Object::DaemonSet(serde_json::from_value(value).map_err(e)?),
            Kind::Job => Object::Job(serde_json::from_value(value).map_err(e)?),
            Kind::CronJob => Object::CronJob(serde_json::from_value(value).map_err(e)?),
            Kind::Service => Object::Service(serde_json::from_value(value).map_err(e)?),
            Kind::Endpoints => Object::Endpoints(serde_json::from_value(value).map_err(e)?),
            Kind::Event => Object::Event(serde_json::from_value(value).map_err(e)?),
            Kind::Image => Object::Image(serde_json::from_value(value).map_err(e)?),
            Kind::ConfigMap => Object::ConfigMap(serde_json::from_value(value).map_err(e)?),
            Kind::Secret => Object::Secret(serde_json::from_value(value).map_err(e)?),
        })
    }

    /// Reads a stored object of a known kind from its JSON, without validating it (what the
    /// store holds was validated on the way in).
    pub fn from_json(kind: Kind, json: &[u8]) -> Result<Object, serde_json::Error> {
        Ok(match kind {
            Kind::Namespace => Object::Namespace(serde_json::from_slice(json)?),
            Kind::Node => Object::Node(serde_json::from_slice(json)?),
            Kind::Pod => Object::Pod(serde_json::from_slice(json)?),
            Kind::Deployment => Object::Deployment(serde_json::from_slice(json)?),
            Kind::ReplicaSet => Object::ReplicaSet(serde_json::from_slice(json)?),
            Kind::DaemonSet => Object::DaemonSet(serde_json::from_slice(json)?),
            Kind::Job => Object::Job(serde_json::from_slice(json)?),
            Kind::CronJob => Object::CronJob(serde_json::from_slice(json)?),
            Kind::Service => Object::Service(serde_json::from_slice(json)?),
            Kind::Endpoints => Object::Endpoints(serde_json::from_slice(json)?),
            Kind::Event => Object::Event(serde_json::from_slice(json)?),
            Kind::Image => Object::Image(serde_json::from_slice(json)?),
            Kind::ConfigMap => Object::ConfigMap(serde_json::from_slice(json)?),
            Kind::Secret => Object::Secret(serde_json::from_slice(json)?),
        })
    }

    /// Serializes to JSON (infallible for these plain types).
    pub fn to_json(&self) -> Vec<u8> {
        fn ser<T: Serialize>(v: &T) -> Vec<u8> {
            // Plain structs of strings, numbers and maps with string keys always serialize.
            serde_json::to_vec(v).unwrap_or_default()
        }
        each!(self, o => ser(o))
    }

    /// Serializes to a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        fn ser<T: Serialize>(v: &T) -> serde_json::Value {
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
        }
        each!(self, o => ser(o))
    }

    /// The user-owned desired state: `spec` for kinds that have one, the whole body otherwise.
    /// A change of it bumps `metadata.generation`.
    pub fn desired_state(&self) -> serde_json::Value {
        let mut v = self.to_value();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            map.remove("status");
            map.remove("apiVersion");
            map.remove("kind");
        }
        v
    }

    /// Whether two objects of the same kind have the same desired state (what
    /// [`desired_state`](Self::desired_state) returns), compared on the typed fields: the
    /// store does this on every update.
    pub fn same_desired_state(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Namespace(a), Object::Namespace(b)) => a.spec == b.spec,
            (Object::Node(a), Object::Node(b)) => a.spec == b.spec,
            (Object::Pod(a), Object::Pod(b)) => a.spec == b.spec,
            (Object::Deployment(a), Object::Deployment(b)) => a.spec == b.spec,
            (Object::ReplicaSet(a), Object::ReplicaSet(b)) => a.spec == b.spec,
            (Object::DaemonSet(a), Object::DaemonSet(b)) => a.spec == b.spec,
            (Object::Job(a), Object::Job(b)) => a.spec == b.spec,
            (Object::CronJob(a), Object::CronJob(b)) => a.spec == b.spec,
            (Object::Service(a), Object::Service(b)) => a.spec == b.spec,
            (Object::Endpoints(a), Object::Endpoints(b)) => a.subsets == b.subsets,
            (Object::Image(a), Object::Image(b)) => a.spec == b.spec,
            (Object::ConfigMap(a), Object::ConfigMap(b)) => {
                (&a.data, &a.binary_data, a.immutable) == (&b.data, &b.binary_data, b.immutable)
            }
            (Object::Secret(a), Object::Secret(b)) => {
                (&a.type_, &a.data, &a.string_data, a.immutable)
                    == (&b.type_, &b.data, &b.string_data, b.immutable)
            }
            (Object::Event(a), Object::Event(b)) => {
                let strip = |e: &crate::event::Event| {
                    let mut e = e.clone();
                    e.metadata = Default::default();
                    e.api_version.clear();
                    e.kind.clear();
                    e
                };
                strip(a) == strip(b)
            }
            _ => false,
        }
    }

    /// Whether the kind has a status that only the system writes (status subresource).
    pub fn has_status(&self) -> bool {
        self.kind().has_status()
    }

    /// Replaces this object's status with `other`'s (same kind), for updates that must not
    /// touch status, and for status updates in reverse.
    pub fn copy_status_from(&mut self, other: &Object) {
        match (self, other) {
            (Object::Namespace(a), Object::Namespace(b)) => a.status = b.status.clone(),
            (Object::Node(a), Object::Node(b)) => a.status = b.status.clone(),
            (Object::Pod(a), Object::Pod(b)) => a.status = b.status.clone(),
            (Object::Deployment(a), Object::Deployment(b)) => a.status = b.status.clone(),
            (Object::ReplicaSet(a), Object::ReplicaSet(b)) => a.status = b.status.clone(),
            (Object::DaemonSet(a), Object::DaemonSet(b)) => a.status = b.status.clone(),
            (Object::Job(a), Object::Job(b)) => a.status = b.status.clone(),
            (Object::CronJob(a), Object::CronJob(b)) => a.status = b.status.clone(),
            (Object::Service(a), Object::Service(b)) => a.status = b.status.clone(),
            _ => {}
        }
    }

    /// A short `kind "name"` for messages, e.g. `deployment "web"`.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.kind().singular(), self.meta().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_desired_state_comparison_agrees_with_the_json_one() {
        let a = crate::manifest::parse_manifests(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {x: y}}\nspec:\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap()
        .remove(0)
        .object;
        let mut b = a.clone();
        b.meta_mut().labels.clear();
        assert!(a.same_desired_state(&b) && a.desired_state() == b.desired_state());
        if let Object::Pod(p) = &mut b {
            p.spec.containers[0].image = "j".into();
        }
        assert!(!a.same_desired_state(&b) && a.desired_state() != b.desired_state());
    }

    #[test]
    fn all_kinds_are_in_their_ord_order() {
        let mut sorted = Kind::ALL;
        sorted.sort();
        assert_eq!(sorted, Kind::ALL);
    }

    #[test]
    fn user_kind_names() {
        for (t, k) in [
            ("po", Kind::Pod),
            ("pods", Kind::Pod),
            ("Pod", Kind::Pod),
            ("deploy", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("rs", Kind::ReplicaSet),
            ("replicasets.apps", Kind::ReplicaSet),
            ("ds", Kind::DaemonSet),
            ("jobs", Kind::Job),
            ("jobs.batch", Kind::Job),
            ("cj", Kind::CronJob),
            ("cronjobs.batch", Kind::CronJob),
            ("daemonsets.apps", Kind::DaemonSet),
            ("cm", Kind::ConfigMap),
            ("secret", Kind::Secret),
            ("svc", Kind::Service),
            ("no", Kind::Node),
            ("ns", Kind::Namespace),
            ("ep", Kind::Endpoints),
            ("events", Kind::Event),
        ] {
            assert_eq!(Kind::from_user(t), Some(k), "{t}");
        }
        assert_eq!(Kind::from_user("widgets"), None);
        assert_eq!(Kind::from_user("pods.bogus"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(
            Kind::Pod.path(Some("default"), Some("web")),
            "/api/v1/namespaces/default/pods/web"
        );
        assert_eq!(Kind::Pod.path(None, None), "/api/v1/pods");
        assert_eq!(
            Kind::Node.path(Some("ignored"), Some("pi1")),
            "/api/v1/nodes/pi1"
        );
        assert_eq!(
            Kind::Deployment.path(Some("a"), None),
            "/apis/apps/v1/namespaces/a/deployments"
        );
        assert_eq!(
            Kind::from_path("apps", "deployments"),
            Some(Kind::Deployment)
        );
        assert_eq!(Kind::from_path("", "deployments"), None);
    }
}
