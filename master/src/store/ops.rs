//! The decisions of the writer: what each write request does to the store, as a pure
//! function of the current state (plus earlier decisions of the same group) and the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bramble_api::error::{FieldError, Invalid};
use bramble_api::namespace::NamespaceStatus;
use bramble_api::pod::PodStatus;
use bramble_api::{Kind, Object};

use super::state::{Change, EventType, Key, State};
use super::{DeleteRequest, Entry, Op, Outcome, StoreError, Subresource};

/// Namespaces that always exist and may not be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system"];
/// A pod's grace period when neither the request nor the pod says, as in Kubernetes.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The state as seen by one group of writes: the committed state plus the group's changes.
pub(crate) struct View<'a> {
    state: &'a State,
    ranges: super::alloc::ServiceRanges,
    overlay: BTreeMap<Key, Option<Arc<Entry>>>,
    /// Label sets first seen in this group.
    labels: super::state::LabelSets,
    changes: Vec<Arc<Change>>,
    revision: u64,
    now: i64,
}

impl<'a> View<'a> {
    pub fn new(state: &'a State, now: i64, ranges: super::alloc::ServiceRanges) -> Self {
        View {
            state,
            ranges,
            overlay: BTreeMap::new(),
            labels: Default::default(),
            changes: Vec::new(),
            revision: state.revision,
            now,
        }
    }

    /// The shared copy of a label set: the store's, or one this group made.
    fn labels(&mut self, labels: &BTreeMap<String, String>) -> super::Labels {
        match self.state.labels.get(labels) {
            Some(l) => l,
            None => self.labels.intern(labels.clone()),
        }
    }

    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        match self.overlay.get(key) {
            Some(v) => v.clone(),
            None => self.state.objects.get(key).cloned(),
        }
    }

    /// Stores `obj` at the next revision and records the change.
    fn put(&mut self, type_: EventType, mut obj: Object) -> Arc<Entry> {
        self.revision += 1;
        obj.meta_mut().resource_version = self.revision.to_string();
        obj.normalize_type_meta();
        let key = key_of(&obj);
        let entry = Arc::new(Entry {
            kind: key.0,
            namespace: key.1.clone(),
            name: key.2.clone(),
            revision: self.revision,
            labels: self.labels(&obj.meta().labels),
            json: super::exact(obj.to_json()),
        });
        let stored = if type_ == EventType::Deleted {
            None
        } else {
            Some(entry.clone())
        };
        self.overlay.insert(key, stored);
        self.changes
            .push(Arc::new(Change::new(type_, entry.clone())));
        entry
    }

    /// The keys of every object in a namespace, committed or added by this group.
    fn keys_in_namespace(&self, ns: &str) -> Vec<Key> {
        let mut keys: Vec<Key> = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            keys.extend(
                self.state
                    .range(kind, Some(ns))
                    .map(|e| (e.kind, e.namespace.clone(), e.name.clone())),
            );
        }
        keys.extend(
            self.overlay
                .keys()
                .filter(|k| k.0.namespaced() && k.1 == ns)
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        keys.retain(|k| self.get(k).is_some());
        keys
    }

    /// Every Service but the one at `except`, committed or written by this group.
    fn other_services(&self, except: &Key) -> Vec<bramble_api::service::Service> {
        let mut keys: BTreeSet<Key> = self
            .state
            .range(Kind::Service, None)
            .map(|e| (e.kind, e.namespace.clone(), e.name.clone()))
            .collect();
        keys.extend(
            self.overlay
                .keys()
                .filter(|k| k.0 == Kind::Service)
                .cloned(),
        );
        keys.remove(except);
        keys.iter()
            .filter_map(|k| match self.get(k)?.object() {
                Ok(Object::Service(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    pub fn finish(self) -> (Vec<Arc<Change>>, u64) {
        (self.changes, self.revision)
    }
}

fn key_of(obj: &Object) -> Key {
    let kind = obj.kind();
    let m = obj.meta();
    let ns = if kind.namespaced() {
        m.namespace.clone()
    } else {
        String::new()
    };
    (kind, ns, m.name.clone())
}

/// Decides one write request.
pub(crate) fn decide(view: &mut View<'_>, op: Op) -> Result<Outcome, StoreError> {
    match op {
        Op::Create(obj) => create(view, obj),
        Op::Update(obj, sub) => update(view, obj, sub, false),
        Op::Apply(obj) => {
            let mut obj = obj;
            normalize_namespace(&mut obj);
            if view.get(&key_of(&obj)).is_some() {
                update(view, obj, Subresource::Main, true)
            } else {
                create(view, obj)
            }
        }
        Op::Delete(req) => delete(view, req),
        Op::Bind(b) => bind(view, b),
    }
}

/// Sets a pending pod's node. Decoding only the stored pod keeps a scheduler's burst of
/// bindings cheap.
fn bind(view: &mut View<'_>, b: super::Binding) -> Result<Outcome, StoreError> {
    let key = (Kind::Pod, b.namespace.clone(), b.name.clone());
    let conflict = |reason: String| StoreError::Conflict {
        kind: Kind::Pod,
        name: b.name.clone(),
        reason,
    };
    let Some(old_entry) = view.get(&key) else {
        return Err(StoreError::NotFound {
            kind: Kind::Pod,
            name: b.name.clone(),
        });
    };
    let Object::Pod(mut pod) = old_entry.object()? else {
        return Err(StoreError::Storage {
            context: format!("{:?} is not a pod", b.name),
            source: None,
        });
    };
    if !b.uid.is_empty() && pod.metadata.uid != b.uid {
        return Err(conflict("the pod was replaced (another uid)".into()));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(conflict("the pod is being deleted".into()));
    }
    if !pod.spec.node_name.is_empty() {
        return Err(conflict(format!(
            "pod {} is already assigned to node {:?}",
            b.name, pod.spec.node_name
        )));
    }
    pod.spec.node_name = b.node;
    pod.metadata.generation += 1;
    Ok(Outcome::Updated(
        view.put(EventType::Modified, Object::Pod(pod)),
    ))
}

fn normalize_namespace(obj: &mut Object) {
    let namespaced = obj.kind().namespaced();
    let m = obj.meta_mut();
    if !namespaced {
        m.namespace.clear();
    } else if m.namespace.is_empty() {
        m.namespace = "default".into();
    }
}

fn create(view: &mut View<'_>, mut obj: Object) -> Result<Outcome, StoreError> {
    normalize_namespace(&mut obj);
    if let Object::Secret(s) = &mut obj {
        s.normalize();
    }
    let kind = obj.kind();
    if kind.namespaced() {
        let ns = obj.meta().namespace.clone();
        if view
            .get(&(Kind::Namespace, String::new(), ns.clone()))
            .is_none()
        {
            return Err(StoreError::NamespaceNotFound(ns));
        }
    }
    if obj.meta().name.is_empty() {
        let prefix = obj.meta().generate_name.clone();
        loop {
            obj.meta_mut().name = format!("{prefix}{}", random_suffix());
            if view.get(&key_of(&obj)).is_none() {
                break;
            }
        }
    }
    let key = key_of(&obj);
    if view.get(&key).is_some() {
        return Err(StoreError::AlreadyExists { kind, name: key.2 });
    }
    let now = bramble_api::time::format_rfc3339(view.now);
    let m = obj.meta_mut();
    m.uid = new_uid();
    m.creation_timestamp = Some(now);
    m.generation = 1;
    m.deletion_timestamp = None;
    m.deletion_grace_period_seconds = None;
    let ranges = view.ranges;
    if let Object::Service(svc) = &mut obj {
        let others = view.other_services(&key);
        super::alloc::allocate(svc, &ranges, &super::alloc::InUse::of(others.iter()))?;
    }
    match &mut obj {
        Object::Pod(p) if p.status.is_none() => {
            p.status = Some(PodStatus {
                phase: "Pending".into(),
                ..Default::default()
            });
        }
        Object::Namespace(n) => {
            n.status = Some(NamespaceStatus {
                phase: "Active".into(),
            })
        }
        _ => {}
    }
    Ok(Outcome::Created(view.put(EventType::Added, obj)))
}

fn update(
    view: &mut View<'_>,
    mut obj: Object,
    sub: Subresource,
    apply: bool,
) -> Result<Outcome, StoreError> {
    normalize_namespace(&mut obj);
    if let Object::Secret(s) = &mut obj {
        s.normalize();
    }
    let kind = obj.kind();
    let key = key_of(&obj);
    let Some(old_entry) = view.get(&key) else {
        return Err(StoreError::NotFound { kind, name: key.2 });
    };
    let wanted_rv = &obj.meta().resource_version;
    if !apply && !wanted_rv.is_empty() && *wanted_rv != old_entry.revision.to_string() {
        return Err(StoreError::Conflict {
            kind,
            name: key.2,
            reason: "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        });
    }
    let old = old_entry.object()?;
    let mut new = match sub {
        Subresource::Status => {
            let mut n = old.clone();
            n.copy_status_from(&obj);
            n
        }
        Subresource::Main => {
            let mut n = obj;
            if n.has_status() {
                n.copy_status_from(&old);
            }
            keep_allocated(&mut n, &old);
            if let (Object::Service(ns), Object::Service(os)) = (&mut n, &old) {
                if !os.spec.cluster_ip.is_empty() && ns.spec.cluster_ip != os.spec.cluster_ip {
                    return Err(StoreError::Invalid(Invalid {
                        what: format!("service {:?}", ns.metadata.name),
                        errors: vec![FieldError::new(
                            "spec.clusterIP",
                            format!("field is immutable (it is {})", os.spec.cluster_ip),
                        )],
                    }));
                }
                let others = view.other_services(&key);
                let used = super::alloc::InUse::of(others.iter());
                // The Service's own address stays: only missing NodePorts are allocated.
                let mut probe = ns.clone();
                probe.spec.cluster_ip = "None".into();
                super::alloc::allocate(&mut probe, &view.ranges, &used)?;
                ns.spec.ports = probe.spec.ports;
            }
            if apply {
                // Apply owns labels, annotations and spec; the rest of metadata is kept.
                let (om, nm) = (old.meta(), n.meta_mut());
                if nm.owner_references.is_empty() {
                    nm.owner_references = om.owner_references.clone();
                }
                if nm.finalizers.is_empty() {
                    nm.finalizers = om.finalizers.clone();
                }
                // Annotations the system keeps (revision history) survive a user's apply.
                for (k, v) in &om.annotations {
                    let system =
                        k.starts_with("deployment.kubernetes.io/") || k.starts_with("bramble.io/");
                    if system && !nm.annotations.contains_key(k) {
                        nm.annotations.insert(k.clone(), v.clone());
                    }
                }
            }
            check_immutable(&old, &n)?;
            n
        }
    };
    {
        let (om, nm) = (old.meta(), new.meta_mut());
        nm.uid = om.uid.clone();
        nm.creation_timestamp = om.creation_timestamp.clone();
        nm.deletion_timestamp = om.deletion_timestamp.clone();
        nm.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
        nm.generate_name = om.generate_name.clone();
        nm.generation = om.generation;
        nm.resource_version = om.resource_version.clone();
    }
    if !new.same_desired_state(&old) {
        new.meta_mut().generation = old.meta().generation + 1;
    }
    if new == old {
        return Ok(Outcome::Unchanged(old_entry));
    }
    let m = new.meta();
    let finalized = m.deletion_timestamp.is_some()
        && m.finalizers.is_empty()
        && m.deletion_grace_period_seconds.unwrap_or(0) == 0;
    if finalized {
        return Ok(Outcome::Deleted(view.put(EventType::Deleted, new)));
    }
    Ok(Outcome::Updated(view.put(EventType::Modified, new)))
}

/// Fields the system assigned that a user's manifest does not carry.
fn keep_allocated(new: &mut Object, old: &Object) {
    match (new, old) {
        (Object::Node(n), Object::Node(o)) if n.spec.pod_cidr.is_empty() => {
            n.spec.pod_cidr = o.spec.pod_cidr.clone();
        }
        (Object::Pod(n), Object::Pod(o)) if n.spec.node_name.is_empty() => {
            n.spec.node_name = o.spec.node_name.clone();
        }
        (Object::Service(n), Object::Service(o)) => {
            if n.spec.cluster_ip.is_empty() {
                n.spec.cluster_ip = o.spec.cluster_ip.clone();
                n.spec.cluster_ips = o.spec.cluster_ips.clone();
            }
            for p in &mut n.spec.ports {
                if p.node_port.is_none() {
                    p.node_port = o
                        .spec
                        .ports
                        .iter()
                        .find(|q| q.port == p.port && q.protocol == p.protocol)
                        .and_then(|q| q.node_port);
                }
            }
        }
        (Object::Node(n), Object::Node(o)) if n.spec.pod_cidr.is_empty() => {
            n.spec.pod_cidr = o.spec.pod_cidr.clone();
        }
        _ => {}
    }
}

/// A pod's spec is immutable but for container images, added tolerations and its first
/// binding to a node, as in Kubernetes.
fn check_immutable(old: &Object, new: &Object) -> Result<(), StoreError> {
    if let (Object::Secret(o), Object::Secret(n)) = (old, new)
        && o.type_ != n.type_
    {
        return Err(StoreError::Invalid(Invalid {
            what: format!("secret {:?}", n.metadata.name),
            errors: vec![FieldError::new("type", "field is immutable")],
        }));
    }
    // An immutable ConfigMap or Secret keeps its data and stays immutable.
    let frozen = match (old, new) {
        (Object::ConfigMap(o), Object::ConfigMap(n)) => {
            o.immutable == Some(true)
                && (o.data != n.data || o.binary_data != n.binary_data || n.immutable != Some(true))
        }
        (Object::Secret(o), Object::Secret(n)) => {
            o.immutable == Some(true)
                && (o.data != n.data || o.type_ != n.type_ || n.immutable != Some(true))
        }
        _ => false,
    };
    if frozen {
        return Err(StoreError::Invalid(Invalid {
            what: format!("{} {:?}", new.kind().singular(), new.meta().name),
            errors: vec![FieldError::new(
                "data",
                "Forbidden: field is immutable when `immutable` is set; delete and recreate it",
            )],
        }));
    }
    // A Job's pod template and completion settings are fixed once it runs, as in Kubernetes.
    if let (Object::Job(o), Object::Job(n)) = (old, new)
        && (o.spec.template != n.spec.template
            || o.spec.completion_mode != n.spec.completion_mode
            || (o.spec.completions != n.spec.completions))
    {
        return Err(StoreError::Invalid(Invalid {
            what: format!("job {:?}", n.metadata.name),
            errors: vec![FieldError::new(
                "spec.template",
                "field is immutable (so are completions and completionMode); delete and recreate the Job",
            )],
        }));
    }
    let (Object::Pod(o), Object::Pod(n)) = (old, new) else {
        return Ok(());
    };
    let mut probe = n.spec.clone();
    if probe.containers.len() == o.spec.containers.len() {
        for (p, oc) in probe.containers.iter_mut().zip(&o.spec.containers) {
            p.image = oc.image.clone();
        }
    }
    if o.spec.node_name.is_empty() {
        probe.node_name.clear();
    }
    let added_only = o
        .spec
        .tolerations
        .iter()
        .all(|t| n.spec.tolerations.contains(t));
    if added_only {
        probe.tolerations = o.spec.tolerations.clone();
    }
    if probe == o.spec {
        return Ok(());
    }
    Err(StoreError::Invalid(Invalid {
        what: format!("pod {:?}", n.metadata.name),
        errors: vec![FieldError::new(
            "spec",
            "Forbidden: pod updates may not change fields other than spec.containers[*].image, \
             spec.tolerations (only additions) and an unset spec.nodeName; delete and recreate the pod",
        )],
    }))
}

fn delete(view: &mut View<'_>, req: DeleteRequest) -> Result<Outcome, StoreError> {
    let ns = if req.kind.namespaced() {
        req.namespace.clone()
    } else {
        String::new()
    };
    let key = (req.kind, ns, req.name.clone());
    let Some(entry) = view.get(&key) else {
        return Err(StoreError::NotFound {
            kind: req.kind,
            name: req.name,
        });
    };
    if let Some(rv) = req.resource_version
        && rv != entry.revision
    {
        return Err(StoreError::Conflict {
            kind: req.kind,
            name: req.name,
            reason: format!(
                "the resourceVersion in the precondition ({rv}) does not match ({})",
                entry.revision
            ),
        });
    }
    let mut obj = entry.object()?;
    if req.kind == Kind::Namespace {
        if PROTECTED_NAMESPACES.contains(&req.name.as_str()) {
            return Err(StoreError::Forbidden(format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                req.name
            )));
        }
        // Namespace deletion removes what the namespace holds in the same transaction.
        for k in view.keys_in_namespace(&req.name) {
            if let Some(e) = view.get(&k) {
                let o = e.object()?;
                view.put(EventType::Deleted, o);
            }
        }
        return Ok(Outcome::Deleted(view.put(EventType::Deleted, obj)));
    }
    if req.orphan && req.kind.namespaced() {
        // The owner's dependents keep running without it: their references to it go in
        // this same transaction, before any controller hears of the deletion.
        let uid = obj.meta().uid.clone();
        for k in view.keys_in_namespace(&key.1) {
            // An object that does not decode is not the owner's to keep (and must not stop
            // the deletion).
            let Some(Ok(mut child)) = view.get(&k).map(|e| e.object()) else {
                continue;
            };
            let refs = &mut child.meta_mut().owner_references;
            let before = refs.len();
            refs.retain(|o| o.uid != uid);
            if refs.len() != before {
                view.put(EventType::Modified, child);
            }
        }
    }
    let already_terminating = obj.meta().deletion_timestamp.is_some();
    let graceful_pod = match &obj {
        Object::Pod(p) if !p.spec.node_name.is_empty() && req.grace_seconds != Some(0) => Some(
            req.grace_seconds
                .or(p.spec.termination_grace_period_seconds)
                .unwrap_or(DEFAULT_GRACE_SECONDS),
        ),
        _ => None,
    };
    let has_finalizers = !obj.meta().finalizers.is_empty();
    if graceful_pod.is_none() && !has_finalizers {
        return Ok(Outcome::Deleted(view.put(EventType::Deleted, obj)));
    }
    if already_terminating {
        return Ok(Outcome::Terminating(entry));
    }
    let grace = graceful_pod.unwrap_or(0);
    let now = view.now;
    let m = obj.meta_mut();
    m.deletion_timestamp = Some(bramble_api::time::format_rfc3339(now.saturating_add(grace)));
    m.deletion_grace_period_seconds = Some(grace);
    Ok(Outcome::Terminating(view.put(EventType::Modified, obj)))
}

/// A random RFC 4122 version-4 UUID.
pub(crate) fn new_uid() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    // Kubernetes' alphabet for generated names: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    fill_random(&mut b);
    b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect()
}

fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // The kernel's random source failing is not recoverable in any useful way; fall back
        // to the clock so names stay unique enough rather than taking the master down.
        tracing::error!(error = %e, "getrandom failed");
        let t = bramble_api::time::now_nanos();
        for (i, x) in buf.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_v4_and_distinct() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uid());
        assert_eq!(random_suffix().len(), 5);
    }
}
