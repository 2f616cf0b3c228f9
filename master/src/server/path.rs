//! Parsing of Kubernetes-style resource paths.

use bramble_api::Kind;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// The namespace in the path (`/namespaces/{ns}/...`), if any.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `/status` subresource.
    pub status: bool,
    /// `/log` subresource (pods).
    pub log: bool,
    /// `/scale` subresource (Deployments, ReplicaSets).
    pub scale: bool,
}

/// Parses `/api/v1/...` and `/apis/{group}/v1/...`; None for anything else.
pub fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return None,
    };
    let kind_of = |plural: &str| Kind::from_path(group, plural);
    let t = |kind: Kind, namespace: Option<&str>, name: Option<&str>, status: bool| {
        Some(Target {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            status,
            log: false,
            scale: false,
        })
    };
    match rest {
        [plural] => t(kind_of(plural)?, None, None, false),
        [plural, name] => t(cluster_kind(kind_of(plural)?)?, None, Some(name), false),
        [plural, name, "status"] => t(cluster_kind(kind_of(plural)?)?, None, Some(name), true),
        ["namespaces", ns, plural] => ns_target(kind_of(plural)?, ns, None, false),
        ["namespaces", ns, plural, name] => ns_target(kind_of(plural)?, ns, Some(name), false),
        ["namespaces", ns, plural, name, "status"] => {
            ns_target(kind_of(plural)?, ns, Some(name), true)
        }
        ["namespaces", ns, "pods", name, "log"] if group.is_empty() => {
            ns_target(Kind::Pod, ns, Some(name), false).map(|t| Target { log: true, ..t })
        }
        ["namespaces", ns, plural, name, "scale"] => {
            let kind = kind_of(plural).filter(|k| k.scalable())?;
            ns_target(kind, ns, Some(name), false).map(|t| Target { scale: true, ..t })
        }
        _ => None,
    }
}

fn cluster_kind(kind: Kind) -> Option<Kind> {
    (!kind.namespaced()).then_some(kind)
}

fn ns_target(kind: Kind, ns: &str, name: Option<&str>, status: bool) -> Option<Target> {
    if !kind.namespaced() || name.is_some_and(str::is_empty) || ns.is_empty() {
        return None;
    }
    Some(Target {
        kind,
        namespace: Some(ns.to_string()),
        name: name.map(str::to_string),
        status,
        log: false,
        scale: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_paths() {
        let p = parse("/api/v1/namespaces/default/pods/web").unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_deref(), p.name.as_deref(), p.status),
            (Kind::Pod, Some("default"), Some("web"), false)
        );
        let p = parse("/api/v1/namespaces/default").unwrap();
        assert_eq!(
            (p.kind, p.name.as_deref()),
            (Kind::Namespace, Some("default"))
        );
        let p = parse("/api/v1/namespaces/default/status").unwrap();
        assert!(p.status && p.kind == Kind::Namespace);
        let p = parse("/apis/apps/v1/namespaces/a/deployments").unwrap();
        assert_eq!((p.kind, p.name), (Kind::Deployment, None));
        let p = parse("/api/v1/nodes/pi-1/status").unwrap();
        assert!(p.status && p.kind == Kind::Node);
        assert_eq!(parse("/api/v1/pods").unwrap().namespace, None);
        assert!(parse("/api/v1/namespaces/a/nodes").is_none());
        assert!(parse("/apis/apps/v1/pods").is_none());
        assert!(parse("/api/v2/pods").is_none());
        assert!(parse("/api/v1/widgets").is_none());
        assert!(parse("/").is_none());
        assert!(parse("/api/v1/pods/web").is_none());
        let p = parse("/api/v1/namespaces/default/pods/web/log").unwrap();
        assert!(p.log && !p.status && p.kind == Kind::Pod);
        assert!(parse("/api/v1/namespaces/default/services/web/log").is_none());
        let p = parse("/apis/apps/v1/namespaces/default/deployments/web/scale").unwrap();
        assert!(p.scale && p.kind == Kind::Deployment);
        assert!(parse("/apis/apps/v1/namespaces/default/daemonsets/x/scale").is_none());
    }
}
