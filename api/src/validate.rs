//! Validation of every kind, with Kubernetes' rules and precise field paths.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::deployment::Deployment;
use crate::error::FieldError;
use crate::meta::{IntOrString, ObjectMeta};
use crate::names::{self, NameError};
use crate::node::Node;
use crate::object::{Kind, Object};
use crate::pod::{PodSpec, Toleration};
use crate::quantity::Quantity;
use crate::selector::Selector;
use crate::service::{Endpoints, Service};

mod config;

/// Largest total size of a object's annotations, as in Kubernetes.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Returns every rule the object breaks; empty means valid.
pub fn validate(obj: &Object) -> Vec<FieldError> {
    let mut v = Errors::default();
    validate_meta(&mut v, obj.kind(), obj.meta());
    match obj {
        Object::Namespace(_) => {}
        Object::Node(n) => validate_node(&mut v, n),
        Object::Pod(p) => validate_pod_spec(&mut v, &p.spec, "spec", Owner::Pod),
        Object::Job(j) => validate_job(&mut v, j),
        Object::CronJob(c) => validate_cronjob(&mut v, c),
        Object::Deployment(d) => validate_deployment(&mut v, d),
        Object::DaemonSet(d) => validate_daemonset(&mut v, d),
        Object::ReplicaSet(r) => {
            if let Some(n) = r.spec.replicas
                && n < 0
            {
                v.push("spec.replicas", format!("must be >= 0, got {n}"));
            }
            if let Some(x) = r.spec.min_ready_seconds
                && x < 0
            {
                v.push("spec.minReadySeconds", format!("must be >= 0, got {x}"));
            }
            validate_selector_and_template(
                &mut v,
                &r.spec.selector,
                &r.spec.template,
                "a ReplicaSet",
            );
        }
        Object::Service(s) => validate_service(&mut v, s),
        Object::Endpoints(e) => validate_endpoints(&mut v, e),
        Object::ConfigMap(c) => config::validate_config_map(&mut v, c),
        Object::Secret(s) => config::validate_secret(&mut v, s),
        Object::Event(e) => {
            if e.involved_object.name.is_empty() {
                v.push("involvedObject.name", "Required value");
            }
        }
        Object::Image(i) => {
            v.check(
                "spec.reference",
                crate::image::ImageRef::parse(&i.spec.reference).map(|_| ()),
            );
            v.check("spec.digest", crate::image::validate_digest(&i.spec.digest));
        }
    }
    v.0
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: &str, msg: impl Into<String>) {
        self.0.push(FieldError::new(path, msg));
    }
    fn check<E: std::fmt::Display>(&mut self, path: &str, r: Result<(), E>) {
        if let Err(e) = r {
            self.push(path, e.to_string());
        }
    }
}

fn validate_meta(v: &mut Errors, kind: Kind, m: &ObjectMeta) {
    let name_rule: fn(&str) -> Result<(), NameError> = match kind {
        Kind::Namespace => names::dns1123_label,
        Kind::Service => names::dns1035_label,
        _ => names::dns1123_subdomain,
    };
    if m.name.is_empty() {
        if m.generate_name.is_empty() {
            v.push(
                "metadata.name",
                "Required value: name or generateName is required",
            );
        }
    } else {
        v.check("metadata.name", name_rule(&m.name));
    }
    if !m.namespace.is_empty() {
        if kind.namespaced() {
            v.check("metadata.namespace", names::dns1123_label(&m.namespace));
        } else {
            v.push(
                "metadata.namespace",
                format!("{} is not namespaced; remove the namespace", kind.name()),
            );
        }
    }
    for (k, val) in &m.labels {
        v.check("metadata.labels", names::label_key(k));
        v.check(&format!("metadata.labels[{k}]"), names::label_value(val));
    }
    let mut total = 0;
    for (k, val) in &m.annotations {
        v.check("metadata.annotations", names::label_key(k));
        total += k.len() + val.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        v.push(
            "metadata.annotations",
            format!("total size {total} bytes exceeds {MAX_ANNOTATIONS_BYTES}"),
        );
    }
}

fn validate_protocol(v: &mut Errors, path: &str, p: &str) {
    if !matches!(p, "" | "TCP" | "UDP" | "SCTP") {
        v.push(
            path,
            format!("unsupported value {p:?}: must be TCP, UDP or SCTP"),
        );
    }
}

fn validate_port_number(v: &mut Errors, path: &str, p: i32) {
    if !(1..=65535).contains(&p) {
        v.push(path, format!("must be between 1 and 65535, got {p}"));
    }
}

/// The largest user or group ID a container may run as (Kubernetes' limit).
const MAX_ID: i64 = i32::MAX as i64;

fn validate_id(v: &mut Errors, path: &str, id: Option<i64>) {
    if let Some(id) = id
        && !(0..=MAX_ID).contains(&id)
    {
        v.push(path, format!("must be between 0 and {MAX_ID}, got {id}"));
    }
}

fn validate_seccomp(v: &mut Errors, path: &str, p: &crate::pod::SeccompProfile) {
    match (p.type_.as_str(), &p.localhost_profile) {
        ("RuntimeDefault" | "Unconfined", None) => {}
        ("RuntimeDefault" | "Unconfined", Some(_)) => v.push(
            &format!("{path}.localhostProfile"),
            "Forbidden: only with type Localhost",
        ),
        ("Localhost", Some(f)) => {
            if f.is_empty() || f.starts_with('/') || f.split('/').any(|s| s == ".." || s.is_empty())
            {
                v.push(
                    &format!("{path}.localhostProfile"),
                    format!(
                        "must be a relative path under the board's seccomp directory, without '..', got {f:?}"
                    ),
                );
            }
        }
        ("Localhost", None) => v.push(
            &format!("{path}.localhostProfile"),
            "Required value: the profile's file, with type Localhost",
        ),
        (t, _) => v.push(
            &format!("{path}.type"),
            format!("unsupported value {t:?}: must be RuntimeDefault, Unconfined or Localhost"),
        ),
    }
}

fn validate_pod_security_context(v: &mut Errors, path: &str, sc: &crate::pod::PodSecurityContext) {
    validate_id(v, &format!("{path}.runAsUser"), sc.run_as_user);
    validate_id(v, &format!("{path}.runAsGroup"), sc.run_as_group);
    validate_id(v, &format!("{path}.fsGroup"), sc.fs_group);
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        validate_id(v, &format!("{path}.supplementalGroups[{i}]"), Some(*g));
    }
    if sc.supplemental_groups.len() > 32 {
        v.push(
            &format!("{path}.supplementalGroups"),
            format!("at most 32 groups, got {}", sc.supplemental_groups.len()),
        );
    }
    if let Some(p) = &sc.seccomp_profile {
        validate_seccomp(v, &format!("{path}.seccompProfile"), p);
    }
}

fn validate_security_context(v: &mut Errors, path: &str, sc: &crate::pod::SecurityContext) {
    validate_id(v, &format!("{path}.runAsUser"), sc.run_as_user);
    validate_id(v, &format!("{path}.runAsGroup"), sc.run_as_group);
    if let Some(p) = &sc.seccomp_profile {
        validate_seccomp(v, &format!("{path}.seccompProfile"), p);
    }
    if let Some(caps) = &sc.capabilities {
        for (field, list) in [("add", &caps.add), ("drop", &caps.drop)] {
            for (i, name) in list.iter().enumerate() {
                let bare = name.strip_prefix("CAP_").unwrap_or(name);
                let known = crate::pod::CAPABILITY_NAMES.contains(&bare)
                    || (field == "drop" && bare == "ALL");
                if !known {
                    v.push(
                        &format!("{path}.capabilities.{field}[{i}]"),
                        format!("unknown capability {name:?}"),
                    );
                }
            }
        }
    }
    if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
        v.push(
            &format!("{path}.allowPrivilegeEscalation"),
            "Invalid value: false: cannot be false when privileged is true",
        );
    }
}

/// What owns a pod spec: its restart policies depend on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A bare pod: Always, OnFailure or Never.
    Pod,
    /// A Deployment or DaemonSet: its pods always restart.
    Replicated,
    /// A Job: its pods run to completion (OnFailure or Never, required).
    Job,
}

fn validate_pod_spec(v: &mut Errors, spec: &PodSpec, path: &str, owner: Owner) {
    if let Some(sc) = &spec.security_context {
        validate_pod_security_context(v, &format!("{path}.securityContext"), sc);
    }
    validate_pod_dns(v, spec, path);
    if spec.containers.is_empty() {
        v.push(
            &format!("{path}.containers"),
            "Required value: a pod needs at least one container",
        );
    }
    let volume_names: BTreeSet<&str> = spec.volumes.iter().map(|vol| vol.name.as_str()).collect();
    let mut container_names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("initContainers", i, c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| ("containers", i, c)),
        );
    for (field, i, c) in all {
        let cp = format!("{path}.{field}[{i}]");
        let init = field == "initContainers";
        match (init, c.restart_policy.as_deref()) {
            (_, None) | (true, Some("Always")) => {}
            (true, Some(p)) => v.push(
                &format!("{cp}.restartPolicy"),
                format!(
                    "unsupported value {p:?}: an init container's may only be Always (a sidecar)"
                ),
            ),
            (false, Some(_)) => v.push(
                &format!("{cp}.restartPolicy"),
                "Forbidden: only init containers may set a restartPolicy (Always: a sidecar)",
            ),
        }
        if let Some(l) = &c.lifecycle {
            if init && !c.is_sidecar() {
                v.push(
                    &format!("{cp}.lifecycle"),
                    "Forbidden: may not be set for init containers without restartPolicy=Always",
                );
            }
            for (hook, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
                let Some(h) = h else { continue };
                let hp = format!("{cp}.lifecycle.{hook}");
                let n = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()]
                    .iter()
                    .filter(|b| **b)
                    .count();
                if n != 1 {
                    v.push(&hp, "must specify exactly one of exec, httpGet and sleep");
                }
                if let Some(e) = &h.exec
                    && e.command.is_empty()
                {
                    v.push(&format!("{hp}.exec.command"), "Required value");
                }
                if let Some(g) = &h.http_get {
                    match &g.port {
                        None => v.push(&format!("{hp}.httpGet.port"), "Required value"),
                        Some(port) if c.resolve_port(port).is_none() => v.push(
                            &format!("{hp}.httpGet.port"),
                            "must be a port number from 1 to 65535 or the name of a port of the container",
                        ),
                        Some(_) => {}
                    }
                }
                if let Some(sl) = &h.sleep
                    && !(0..=3600).contains(&sl.seconds)
                {
                    v.push(
                        &format!("{hp}.sleep.seconds"),
                        format!("must be between 0 and 3600, got {}", sl.seconds),
                    );
                }
            }
        }
        if init && !c.is_sidecar() {
            for (probe, set) in [
                ("livenessProbe", c.liveness_probe.is_some()),
                ("readinessProbe", c.readiness_probe.is_some()),
            ] {
                if set {
                    v.push(
                        &format!("{cp}.{probe}"),
                        "Forbidden: may not be set for init containers without restartPolicy=Always",
                    );
                }
            }
        }
        if c.name.is_empty() {
            v.push(&format!("{cp}.name"), "Required value");
        } else {
            v.check(&format!("{cp}.name"), names::dns1123_label(&c.name));
            if !container_names.insert(c.name.as_str()) {
                v.push(
                    &format!("{cp}.name"),
                    format!("Duplicate value: {:?}", c.name),
                );
            }
        }
        if c.image.trim().is_empty() {
            v.push(&format!("{cp}.image"), "Required value");
        } else if c.image.chars().any(char::is_whitespace) {
            v.push(
                &format!("{cp}.image"),
                format!("{:?} must not contain whitespace", c.image),
            );
        }
        if !matches!(
            c.image_pull_policy.as_str(),
            "" | "Always" | "IfNotPresent" | "Never"
        ) {
            v.push(
                &format!("{cp}.imagePullPolicy"),
                format!(
                    "unsupported value {:?}: must be Always, IfNotPresent or Never",
                    c.image_pull_policy
                ),
            );
        }
        for (j, port) in c.ports.iter().enumerate() {
            let pp = format!("{cp}.ports[{j}]");
            validate_port_number(v, &format!("{pp}.containerPort"), port.container_port);
            if let Some(h) = port.host_port {
                validate_port_number(v, &format!("{pp}.hostPort"), h);
            }
            validate_protocol(v, &format!("{pp}.protocol"), &port.protocol);
            if !port.name.is_empty() {
                v.check(&format!("{pp}.name"), names::port_name(&port.name));
                if !port_names.insert(port.name.as_str()) {
                    v.push(
                        &format!("{pp}.name"),
                        format!("Duplicate value: {:?}", port.name),
                    );
                }
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                v.push(&format!("{cp}.env[{j}].name"), "Required value");
            } else if e.name.contains('=') || e.name.chars().any(|ch| ch.is_control()) {
                v.push(
                    &format!("{cp}.env[{j}].name"),
                    format!("{:?} must not contain '=' or control characters", e.name),
                );
            }
        }
        config::validate_env(v, &cp, c, spec);
        validate_resources(
            v,
            &format!("{cp}.resources"),
            &c.resources.requests,
            &c.resources.limits,
        );
        for (field, probe, liveness) in [
            ("livenessProbe", &c.liveness_probe, true),
            ("readinessProbe", &c.readiness_probe, false),
        ] {
            if let Some(pr) = probe {
                validate_probe(v, &format!("{cp}.{field}"), pr, c, liveness);
            }
        }
        if let Some(sc) = &c.security_context {
            validate_security_context(v, &format!("{cp}.securityContext"), sc);
        }
        for (j, m) in c.volume_mounts.iter().enumerate() {
            let mp = format!("{cp}.volumeMounts[{j}]");
            if !volume_names.contains(m.name.as_str()) {
                v.push(
                    &format!("{mp}.name"),
                    format!("Not found: no volume named {:?} in {path}.volumes", m.name),
                );
            }
            if !m.mount_path.starts_with('/') {
                v.push(
                    &format!("{mp}.mountPath"),
                    format!("must be an absolute path, got {:?}", m.mount_path),
                );
            }
            if m.sub_path.starts_with('/') || m.sub_path.split('/').any(|s| s == "..") {
                v.push(
                    &format!("{mp}.subPath"),
                    "must be a relative path without '..'",
                );
            }
        }
    }
    let (valid_policies, allowed): (&[&str], &str) = match owner {
        Owner::Pod => (
            &["", "Always", "OnFailure", "Never"],
            "Always, OnFailure or Never",
        ),
        Owner::Replicated => (
            &["", "Always"],
            "Always (a Deployment's or DaemonSet's pods always restart)",
        ),
        Owner::Job => (
            &["OnFailure", "Never"],
            "OnFailure or Never (a Job's pods run to completion)",
        ),
    };
    if !valid_policies.contains(&spec.restart_policy.as_str()) {
        v.push(
            &format!("{path}.restartPolicy"),
            format!(
                "unsupported value {:?}: must be {allowed}",
                spec.restart_policy
            ),
        );
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        v.push(
            &format!("{path}.terminationGracePeriodSeconds"),
            format!("must be >= 0, got {g}"),
        );
    }
    if !spec.node_name.is_empty() {
        v.check(
            &format!("{path}.nodeName"),
            names::dns1123_subdomain(&spec.node_name),
        );
    }
    for (k, val) in &spec.node_selector {
        v.check(&format!("{path}.nodeSelector"), names::label_key(k));
        v.check(
            &format!("{path}.nodeSelector[{k}]"),
            names::label_value(val),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, vol) in spec.volumes.iter().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        v.check(&format!("{vp}.name"), names::dns1123_label(&vol.name));
        if !seen.insert(vol.name.as_str()) {
            v.push(
                &format!("{vp}.name"),
                format!("Duplicate value: {:?}", vol.name),
            );
        }
        config::validate_volume(v, &vp, vol, spec);
        if let Some(h) = &vol.host_path {
            if !h.path.starts_with('/') {
                v.push(
                    &format!("{vp}.hostPath.path"),
                    format!("must be an absolute path, got {:?}", h.path),
                );
            }
            let types = [
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if !types.contains(&h.type_.as_str()) {
                v.push(
                    &format!("{vp}.hostPath.type"),
                    format!("unsupported value {:?}", h.type_),
                );
            }
        }
        if let Some(size) = vol.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
            && size.is_negative()
        {
            v.push(&format!("{vp}.emptyDir.sizeLimit"), "must be >= 0");
        }
        if let Some(e) = &vol.empty_dir
            && !matches!(e.medium.as_str(), "" | "Memory")
        {
            v.push(
                &format!("{vp}.emptyDir.medium"),
                format!(
                    "unsupported value {:?}: must be \"\" (the node's disk) or Memory",
                    e.medium
                ),
            );
        }
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        validate_toleration(v, &format!("{path}.tolerations[{i}]"), t);
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(sel) = required {
        let base = format!(
            "{path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
        );
        if sel.node_selector_terms.is_empty() {
            v.push(&base, "Required value: at least one term");
        }
        for (i, t) in sel.node_selector_terms.iter().enumerate() {
            for (j, r) in t.match_expressions.iter().enumerate() {
                let rp = format!("{base}[{i}].matchExpressions[{j}]");
                v.check(&format!("{rp}.key"), names::label_key(&r.key));
                let n = r.values.len();
                let ok = match r.operator.as_str() {
                    "In" | "NotIn" => n > 0,
                    "Exists" | "DoesNotExist" => n == 0,
                    "Gt" | "Lt" => n == 1 && r.values[0].parse::<i64>().is_ok(),
                    other => {
                        v.push(&format!("{rp}.operator"), format!("unsupported operator {other:?}: must be In, NotIn, Exists, DoesNotExist, Gt or Lt"));
                        true
                    }
                };
                if !ok {
                    v.push(
                        &format!("{rp}.values"),
                        format!("wrong number or kind of values for operator {}", r.operator),
                    );
                }
            }
        }
    }
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        validate_spread(v, &format!("{path}.topologySpreadConstraints[{i}]"), c);
    }
}

fn validate_spread(v: &mut Errors, path: &str, c: &crate::pod::TopologySpreadConstraint) {
    if c.max_skew < 1 {
        v.push(
            &format!("{path}.maxSkew"),
            format!("must be greater than zero, got {}", c.max_skew),
        );
    }
    if c.topology_key.is_empty() {
        v.push(&format!("{path}.topologyKey"), "Required value");
    } else {
        v.check(
            &format!("{path}.topologyKey"),
            names::label_key(&c.topology_key),
        );
    }
    match c.when_unsatisfiable.as_str() {
        "DoNotSchedule" | "ScheduleAnyway" => {}
        "" => v.push(&format!("{path}.whenUnsatisfiable"), "Required value"),
        other => v.push(
            &format!("{path}.whenUnsatisfiable"),
            format!("unsupported value {other:?}: must be DoNotSchedule or ScheduleAnyway"),
        ),
    }
    if let Some(m) = c.min_domains {
        if m < 1 {
            v.push(
                &format!("{path}.minDomains"),
                format!("must be greater than zero, got {m}"),
            );
        } else if c.when_unsatisfiable != "DoNotSchedule" {
            v.push(
                &format!("{path}.minDomains"),
                "can only be set when whenUnsatisfiable is DoNotSchedule",
            );
        }
    }
    if let Some(sel) = &c.label_selector
        && let Err(e) = Selector::from_label_selector(sel, &format!("{path}.labelSelector"))
    {
        v.push(&e.path, e.source.to_string());
    }
    for (i, k) in c.match_label_keys.iter().enumerate() {
        v.check(&format!("{path}.matchLabelKeys[{i}]"), names::label_key(k));
    }
    for (field, value) in [
        ("nodeAffinityPolicy", &c.node_affinity_policy),
        ("nodeTaintsPolicy", &c.node_taints_policy),
    ] {
        if !matches!(value.as_str(), "" | "Honor" | "Ignore") {
            v.push(
                &format!("{path}.{field}"),
                format!("unsupported value {value:?}: must be Honor or Ignore"),
            );
        }
    }
}

fn validate_probe(
    v: &mut Errors,
    path: &str,
    p: &crate::pod::Probe,
    c: &crate::pod::Container,
    liveness: bool,
) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    if handlers != 1 {
        v.push(
            path,
            "must specify exactly one of exec, httpGet or tcpSocket",
        );
    }
    if let Some(e) = &p.exec
        && e.command.is_empty()
    {
        v.push(&format!("{path}.exec.command"), "Required value");
    }
    let check_port = |v: &mut Errors, field: &str, port: &Option<IntOrString>| {
        match port {
        None => v.push(&format!("{path}.{field}.port"), "Required value"),
        Some(port) if c.resolve_port(port).is_none() => v.push(
            &format!("{path}.{field}.port"),
            format!("{port} is neither a port number from 1 to 65535 nor the name of one of the container's ports"),
        ),
        Some(_) => {}
    }
    };
    if let Some(h) = &p.http_get {
        check_port(v, "httpGet", &h.port);
        if !matches!(h.scheme.as_str(), "" | "HTTP") {
            v.push(
                &format!("{path}.httpGet.scheme"),
                format!(
                    "unsupported value {:?}: Bramble probes plain HTTP",
                    h.scheme
                ),
            );
        }
    }
    if let Some(t) = &p.tcp_socket {
        check_port(v, "tcpSocket", &t.port);
    }
    for (field, value, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(x) = value.filter(|x| *x < min) {
            v.push(
                &format!("{path}.{field}"),
                format!("must be >= {min}, got {x}"),
            );
        }
    }
    if liveness && p.success_threshold.is_some_and(|s| s != 1) {
        v.push(
            &format!("{path}.successThreshold"),
            "must be 1 for a liveness probe",
        );
    }
}

fn validate_toleration(v: &mut Errors, path: &str, t: &Toleration) {
    match t.operator.as_str() {
        "" | "Equal" => {
            if t.key.is_empty() {
                v.push(
                    &format!("{path}.key"),
                    "Required value when operator is Equal",
                );
            }
        }
        "Exists" => {
            if !t.value.is_empty() {
                v.push(
                    &format!("{path}.value"),
                    "must be empty when operator is Exists",
                );
            }
        }
        o => v.push(
            &format!("{path}.operator"),
            format!("unsupported value {o:?}: must be Equal or Exists"),
        ),
    }
    if !matches!(
        t.effect.as_str(),
        "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute"
    ) {
        v.push(
            &format!("{path}.effect"),
            format!("unsupported value {:?}", t.effect),
        );
    }
}

fn validate_resources(
    v: &mut Errors,
    path: &str,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
) {
    for (section, map) in [("requests", requests), ("limits", limits)] {
        for (name, q) in map {
            let p = format!("{path}.{section}.{name}");
            if !(matches!(
                name.as_str(),
                "cpu" | "memory" | "ephemeral-storage" | "pods"
            ) || name.contains('/'))
            {
                v.push(&p, format!("unknown resource {name:?}: use cpu, memory, ephemeral-storage or a domain-prefixed extended resource"));
            }
            if q.is_negative() {
                v.push(&p, format!("must be >= 0, got {q}"));
            }
        }
    }
    for (name, req) in requests {
        if let Some(lim) = limits.get(name)
            && req.nanos() > lim.nanos()
        {
            v.push(
                &format!("{path}.requests.{name}"),
                format!("must be less than or equal to the {name} limit ({req} > {lim})"),
            );
        }
    }
}

fn validate_deployment(v: &mut Errors, d: &Deployment) {
    let s = &d.spec;
    if let Some(r) = s.replicas
        && r < 0
    {
        v.push("spec.replicas", format!("must be >= 0, got {r}"));
    }
    validate_selector_and_template(v, &s.selector, &s.template, "a Deployment");
    if let Some(st) = &s.strategy {
        match st.type_.as_str() {
            "" | "RollingUpdate" => {}
            "Recreate" => {
                if st.rolling_update.is_some() {
                    v.push(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy type is Recreate",
                    );
                }
            }
            t => v.push(
                "spec.strategy.type",
                format!("unsupported value {t:?}: must be RollingUpdate or Recreate"),
            ),
        }
        if let Some(ru) = &st.rolling_update {
            let surge = check_int_or_percent(
                v,
                "spec.strategy.rollingUpdate.maxSurge",
                ru.max_surge.as_ref(),
            );
            let unavail = check_int_or_percent(
                v,
                "spec.strategy.rollingUpdate.maxUnavailable",
                ru.max_unavailable.as_ref(),
            );
            if surge == Some(0) && unavail == Some(0) {
                v.push(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "may not be 0 when maxSurge is 0",
                );
            }
        }
    }
    for (p, val) in [
        ("spec.revisionHistoryLimit", s.revision_history_limit),
        ("spec.minReadySeconds", s.min_ready_seconds),
        ("spec.progressDeadlineSeconds", s.progress_deadline_seconds),
    ] {
        if let Some(x) = val
            && x < 0
        {
            v.push(p, format!("must be >= 0, got {x}"));
        }
    }
}

/// A workload's selector (non-empty, matching its template's labels) and its pod template.
fn validate_selector_and_template(
    v: &mut Errors,
    selector: &crate::meta::LabelSelector,
    template: &crate::pod::PodTemplateSpec,
    what: &str,
) {
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        v.push(
            "spec.selector",
            format!("Required value: {what} needs a non-empty selector"),
        );
    } else {
        match Selector::from_label_selector(selector, "spec.selector") {
            Ok(sel) => {
                if !sel.matches(&template.metadata.labels) {
                    v.push(
                        "spec.template.metadata.labels",
                        format!(
                            "Invalid value: `selector` ({sel}) does not match template `labels`"
                        ),
                    );
                }
            }
            Err(e) => v.push(&e.path, e.source.to_string()),
        }
    }
    for (k, val) in &template.metadata.labels {
        v.check("spec.template.metadata.labels", names::label_key(k));
        v.check(
            &format!("spec.template.metadata.labels[{k}]"),
            names::label_value(val),
        );
    }
    validate_pod_spec(v, &template.spec, "spec.template.spec", Owner::Replicated);
}

/// The most completions (and so indexes) a Job may ask for, as in Kubernetes.
const MAX_COMPLETIONS: i32 = 100_000;

fn validate_job(v: &mut Errors, j: &crate::job::Job) {
    validate_job_spec(v, &j.spec, "spec");
}

/// A Job's spec at `base` (`spec`, or a CronJob's `spec.jobTemplate.spec`).
fn validate_job_spec(v: &mut Errors, s: &crate::job::JobSpec, base: &str) {
    for (p, val) in [
        (format!("{base}.parallelism"), s.parallelism),
        (format!("{base}.completions"), s.completions),
        (format!("{base}.backoffLimit"), s.backoff_limit),
        (
            format!("{base}.ttlSecondsAfterFinished"),
            s.ttl_seconds_after_finished,
        ),
    ] {
        if let Some(x) = val
            && x < 0
        {
            v.push(&p, format!("must be >= 0, got {x}"));
        }
    }
    if let Some(d) = s.active_deadline_seconds
        && d <= 0
    {
        v.push(
            &format!("{base}.activeDeadlineSeconds"),
            format!("must be greater than 0, got {d}"),
        );
    }
    match s.completion_mode.as_str() {
        "" | "NonIndexed" => {}
        "Indexed" => match s.completions {
            None => v.push(
                &format!("{base}.completions"),
                "Required value: when completionMode is Indexed",
            ),
            Some(c) if c > MAX_COMPLETIONS => v.push(
                &format!("{base}.completions"),
                format!("must be at most {MAX_COMPLETIONS} when completionMode is Indexed"),
            ),
            _ => {}
        },
        m => v.push(
            &format!("{base}.completionMode"),
            format!("unsupported value {m:?}: must be NonIndexed or Indexed"),
        ),
    }
    if let Some(sel) = &s.selector {
        match Selector::from_label_selector(sel, &format!("{base}.selector")) {
            Ok(sel) if !sel.matches(&s.template.metadata.labels) => v.push(
                &format!("{base}.selector"),
                format!(
                    "Invalid value: `selector` ({sel}) does not match template `labels` (leave it out: Bramble ties a Job's pods to it by their owner)"
                ),
            ),
            Ok(_) => {}
            Err(e) => v.push(&e.path, e.source.to_string()),
        }
    }
    for (k, val) in &s.template.metadata.labels {
        v.check(
            &format!("{base}.template.metadata.labels"),
            names::label_key(k),
        );
        v.check(
            &format!("{base}.template.metadata.labels[{k}]"),
            names::label_value(val),
        );
    }
    validate_pod_spec(
        v,
        &s.template.spec,
        &format!("{base}.template.spec"),
        Owner::Job,
    );
}

fn validate_cronjob(v: &mut Errors, c: &crate::cronjob::CronJob) {
    let s = &c.spec;
    if s.schedule.trim().is_empty() {
        v.push("spec.schedule", "Required value");
    } else if let Err(e) = crate::cronjob::Schedule::parse(&s.schedule) {
        v.push(
            "spec.schedule",
            format!("invalid schedule {:?}: {e}", s.schedule),
        );
    }
    if let Some(tz) = &s.time_zone {
        let ok = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.split('/').any(|p| p == ".." || p.is_empty())
            && tz
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '/' | '_' | '-' | '+'));
        if !ok {
            v.push(
                "spec.timeZone",
                format!("{tz:?} is not a time zone name such as Europe/Berlin or Etc/UTC"),
            );
        }
    }
    if s.schedule.contains("TZ=") || s.schedule.contains("CRON_TZ=") {
        v.push(
            "spec.schedule",
            "use spec.timeZone rather than TZ= in the schedule",
        );
    }
    match s.concurrency_policy.as_str() {
        "" | "Allow" | "Forbid" | "Replace" => {}
        p => v.push(
            "spec.concurrencyPolicy",
            format!("unsupported value {p:?}: must be Allow, Forbid or Replace"),
        ),
    }
    for (p, val) in [
        (
            "spec.successfulJobsHistoryLimit",
            s.successful_jobs_history_limit,
        ),
        ("spec.failedJobsHistoryLimit", s.failed_jobs_history_limit),
    ] {
        if let Some(x) = val
            && x < 0
        {
            v.push(p, format!("must be >= 0, got {x}"));
        }
    }
    if let Some(d) = s.starting_deadline_seconds
        && d < 0
    {
        v.push(
            "spec.startingDeadlineSeconds",
            format!("must be >= 0, got {d}"),
        );
    }
    if c.metadata.name.len() > 52 {
        v.push(
            "metadata.name",
            "must be no more than 52 characters (its Jobs add 11)",
        );
    }
    validate_job_spec(v, &s.job_template.spec, "spec.jobTemplate.spec");
}

fn validate_daemonset(v: &mut Errors, d: &crate::daemonset::DaemonSet) {
    let s = &d.spec;
    validate_selector_and_template(v, &s.selector, &s.template, "a DaemonSet");
    if let Some(st) = &s.update_strategy {
        match st.type_.as_str() {
            "" | "RollingUpdate" => {}
            "OnDelete" => {
                if st.rolling_update.is_some() {
                    v.push(
                        "spec.updateStrategy.rollingUpdate",
                        "may not be specified when updateStrategy type is OnDelete",
                    );
                }
            }
            t => v.push(
                "spec.updateStrategy.type",
                format!("unsupported value {t:?}: must be RollingUpdate or OnDelete"),
            ),
        }
        if let Some(ru) = &st.rolling_update {
            let surge = check_int_or_percent(
                v,
                "spec.updateStrategy.rollingUpdate.maxSurge",
                ru.max_surge.as_ref(),
            );
            let unavail = check_int_or_percent(
                v,
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                ru.max_unavailable.as_ref(),
            );
            if surge.unwrap_or(0) == 0 && unavail == Some(0) {
                v.push(
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    "may not be 0 when maxSurge is 0",
                );
            }
            if surge.is_some_and(|x| x > 0) && unavail.is_some_and(|x| x > 0) {
                v.push(
                    "spec.updateStrategy.rollingUpdate",
                    "maxSurge and maxUnavailable may not both be non-zero",
                );
            }
        }
    }
    for (p, val) in [
        ("spec.revisionHistoryLimit", s.revision_history_limit),
        ("spec.minReadySeconds", s.min_ready_seconds),
    ] {
        if let Some(x) = val
            && x < 0
        {
            v.push(p, format!("must be >= 0, got {x}"));
        }
    }
}

/// Checks `N` or `N%`; returns the number (percent or count) when valid.
fn check_int_or_percent(v: &mut Errors, path: &str, val: Option<&IntOrString>) -> Option<i32> {
    match val? {
        IntOrString::Int(i) if *i >= 0 => Some(*i),
        IntOrString::Int(i) => {
            v.push(path, format!("must be >= 0, got {i}"));
            None
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i32>().ok()) {
            Some(n) if (0..=100).contains(&n) => Some(n),
            _ => {
                v.push(
                    path,
                    format!("{s:?} must be an integer or a percentage between 0% and 100%"),
                );
                None
            }
        },
    }
}

fn validate_service(v: &mut Errors, s: &Service) {
    let spec = &s.spec;
    match spec.type_.as_str() {
        "" | "ClusterIP" | "NodePort" | "LoadBalancer" => {
            if !spec.external_name.is_empty() {
                v.push(
                    "spec.externalName",
                    "may not be set unless type is ExternalName",
                );
            }
        }
        "ExternalName" => {
            let name = spec.external_name.trim_end_matches('.');
            if name.is_empty() {
                v.push(
                    "spec.externalName",
                    "Required value: an ExternalName Service names the DNS name it is an alias of",
                );
            } else {
                v.check("spec.externalName", names::dns1123_subdomain(name));
            }
            if !spec.cluster_ip.is_empty() {
                v.push(
                    "spec.clusterIP",
                    "may not be set for an ExternalName Service (it has no address)",
                );
            }
        }
        t => v.push(
            "spec.type",
            format!(
                "unsupported value {t:?}: must be ClusterIP, NodePort, LoadBalancer or ExternalName"
            ),
        ),
    }
    match spec.session_affinity.as_str() {
        "" | "None" => {}
        "ClientIP" => v.push(
            "spec.sessionAffinity",
            "ClientIP affinity is not supported by Bramble",
        ),
        a => v.push(
            "spec.sessionAffinity",
            format!("unsupported value {a:?}: must be None"),
        ),
    }
    if !spec.cluster_ip.is_empty()
        && spec.cluster_ip != "None"
        && spec.cluster_ip.parse::<Ipv4Addr>().is_err()
    {
        v.push(
            "spec.clusterIP",
            format!("{:?} must be an IPv4 address or None", spec.cluster_ip),
        );
    }
    if spec.ports.is_empty() && spec.type_ != "ExternalName" {
        v.push(
            "spec.ports",
            "Required value: a Service needs at least one port",
        );
    }
    let mut names_seen = BTreeSet::new();
    let mut ports_seen = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        validate_port_number(v, &format!("{pp}.port"), p.port);
        validate_protocol(v, &format!("{pp}.protocol"), &p.protocol);
        if spec.ports.len() > 1 && p.name.is_empty() {
            v.push(
                &format!("{pp}.name"),
                "Required value: every port needs a name when there is more than one",
            );
        }
        if !p.name.is_empty() {
            v.check(&format!("{pp}.name"), names::dns1123_label(&p.name));
            if !names_seen.insert(p.name.as_str()) {
                v.push(
                    &format!("{pp}.name"),
                    format!("Duplicate value: {:?}", p.name),
                );
            }
        }
        let proto = if p.protocol.is_empty() {
            "TCP"
        } else {
            p.protocol.as_str()
        };
        if !ports_seen.insert((p.port, proto)) {
            v.push(
                &format!("{pp}.port"),
                format!("Duplicate value: {}/{proto}", p.port),
            );
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => validate_port_number(v, &format!("{pp}.targetPort"), *t),
            Some(IntOrString::String(n)) => {
                v.check(&format!("{pp}.targetPort"), names::port_name(n))
            }
            None => {}
        }
        if let Some(np) = p.node_port {
            if spec.type_.is_empty() || spec.type_ == "ClusterIP" {
                v.push(
                    &format!("{pp}.nodePort"),
                    "may not be used when type is ClusterIP",
                );
            }
            validate_port_number(v, &format!("{pp}.nodePort"), np);
        }
    }
    for (k, val) in &spec.selector {
        v.check("spec.selector", names::label_key(k));
        v.check(&format!("spec.selector[{k}]"), names::label_value(val));
    }
}

fn validate_endpoints(v: &mut Errors, e: &Endpoints) {
    for (i, s) in e.subsets.iter().enumerate() {
        for (j, a) in s.addresses.iter().chain(&s.not_ready_addresses).enumerate() {
            if a.ip.parse::<Ipv4Addr>().is_err() {
                v.push(
                    &format!("subsets[{i}].addresses[{j}].ip"),
                    format!("{:?} must be an IPv4 address", a.ip),
                );
            }
        }
        for (j, p) in s.ports.iter().enumerate() {
            validate_port_number(v, &format!("subsets[{i}].ports[{j}].port"), p.port);
            validate_protocol(v, &format!("subsets[{i}].ports[{j}].protocol"), &p.protocol);
        }
    }
}

fn validate_node(v: &mut Errors, n: &Node) {
    for (i, t) in n.spec.taints.iter().enumerate() {
        v.check(&format!("spec.taints[{i}].key"), names::label_key(&t.key));
        if !matches!(
            t.effect.as_str(),
            "NoSchedule" | "PreferNoSchedule" | "NoExecute"
        ) {
            v.push(
                &format!("spec.taints[{i}].effect"),
                format!(
                    "unsupported value {:?}: must be NoSchedule, PreferNoSchedule or NoExecute",
                    t.effect
                ),
            );
        }
    }
}

/// `dnsPolicy`, `dnsConfig`, `hostAliases`, `subdomain`, with the kubelet's limits (three
/// nameservers, 32 search domains of at most 2,048 characters in all).
fn validate_pod_dns(v: &mut Errors, spec: &PodSpec, path: &str) {
    match spec.dns_policy.as_str() {
        "" | "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" => {}
        "None" if spec.dns_config.is_none() => v.push(
            &format!("{path}.dnsConfig"),
            "Required value: must be given when dnsPolicy is None",
        ),
        "None" => {}
        p => v.push(
            &format!("{path}.dnsPolicy"),
            format!(
                "unsupported value {p:?}: must be ClusterFirst, ClusterFirstWithHostNet, Default or None"
            ),
        ),
    }
    if !spec.subdomain.is_empty() {
        v.check(
            &format!("{path}.subdomain"),
            names::dns1123_label(&spec.subdomain),
        );
    }
    if let Some(c) = &spec.dns_config {
        let cp = format!("{path}.dnsConfig");
        if c.nameservers.len() > 3 {
            v.push(
                &format!("{cp}.nameservers"),
                format!("Too many: {} (at most 3)", c.nameservers.len()),
            );
        }
        for (i, n) in c.nameservers.iter().enumerate() {
            if n.parse::<std::net::IpAddr>().is_err() {
                v.push(
                    &format!("{cp}.nameservers[{i}]"),
                    format!("{n:?} must be an IP address"),
                );
            }
        }
        if spec.dns_policy == "None" && c.nameservers.is_empty() {
            v.push(
                &format!("{cp}.nameservers"),
                "Required value: dnsPolicy None needs at least one nameserver",
            );
        }
        if c.searches.len() > 32 {
            v.push(
                &format!("{cp}.searches"),
                format!("Too many: {} (at most 32)", c.searches.len()),
            );
        }
        if c.searches.iter().map(|s| s.len() + 1).sum::<usize>() > 2048 {
            v.push(
                &format!("{cp}.searches"),
                "must be at most 2048 characters in all",
            );
        }
        for (i, s) in c.searches.iter().enumerate() {
            v.check(
                &format!("{cp}.searches[{i}]"),
                names::dns1123_subdomain(s.trim_end_matches('.')),
            );
        }
        for (i, o) in c.options.iter().enumerate() {
            let ok = !o.name.is_empty()
                && o.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                v.push(
                    &format!("{cp}.options[{i}].name"),
                    format!("{:?} must be a resolver option name", o.name),
                );
            }
            if o.value
                .as_deref()
                .is_some_and(|x| x.chars().any(char::is_whitespace))
            {
                v.push(
                    &format!("{cp}.options[{i}].value"),
                    "must not contain whitespace",
                );
            }
        }
    }
    for (i, a) in spec.host_aliases.iter().enumerate() {
        let ap = format!("{path}.hostAliases[{i}]");
        if a.ip.parse::<std::net::IpAddr>().is_err() {
            v.push(
                &format!("{ap}.ip"),
                format!("{:?} must be an IP address", a.ip),
            );
        }
        for (j, h) in a.hostnames.iter().enumerate() {
            v.check(&format!("{ap}.hostnames[{j}]"), names::dns1123_subdomain(h));
        }
    }
}
