//! The store against a real redb file: revisions, conflicts, watch resume and compaction,
//! label selectors, graceful deletion, group commit and persistence across reopen.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_api::manifest::parse_manifests;
use bramble_api::{Kind, Object, Selector};
use bramble_master::store::{
    DeleteRequest, EventType, Op, Outcome, Store, StoreError, StoreOptions, Subresource,
    WatchFilter,
};

fn obj(yaml: &str) -> Object {
    parse_manifests(yaml)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
        .object
}

fn pod(name: &str, labels: &str) -> Object {
    obj(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n"
    ))
}

fn namespace(name: &str) -> Object {
    obj(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"
    ))
}

async fn open(dir: &std::path::Path, opts: StoreOptions) -> Store {
    let (store, _writer) = Store::open(&dir.join("store.redb"), opts).unwrap();
    if store.get(Kind::Namespace, "", "default").is_none() {
        store.create(namespace("default")).await.unwrap();
    }
    store
}

fn all_pods() -> WatchFilter {
    WatchFilter::all(Kind::Pod)
}

#[tokio::test]
async fn revisions_increase_and_resource_versions_follow() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let r0 = s.revision();
    let a = s.create(pod("a", "")).await.unwrap();
    let b = s.create(pod("b", "")).await.unwrap();
    assert_eq!(a.entry().revision, r0 + 1);
    assert_eq!(b.entry().revision, r0 + 2);
    assert_eq!(s.revision(), r0 + 2);
    let stored = s.get(Kind::Pod, "default", "a").unwrap().object().unwrap();
    assert_eq!(stored.meta().resource_version, (r0 + 1).to_string());
    assert!(!stored.meta().uid.is_empty());
    assert!(stored.meta().creation_timestamp.is_some());
    let Object::Pod(p) = stored else { panic!() };
    assert_eq!(p.status.unwrap().phase, "Pending");
}

#[tokio::test]
async fn create_twice_conflicts_and_missing_namespace_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "")).await.unwrap();
    assert!(matches!(
        s.create(pod("a", "")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut p = pod("b", "");
    p.meta_mut().namespace = "nowhere".into();
    assert!(matches!(s.create(p).await, Err(StoreError::NamespaceNotFound(ns)) if ns == "nowhere"));
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let created = s.create(pod("a", "app: x")).await.unwrap();
    let mut first = created.entry().object().unwrap();
    let mut second = first.clone();
    first.meta_mut().labels.insert("v".into(), "1".into());
    let updated = s.write(Op::Update(first, Subresource::Main)).await.unwrap();
    assert!(matches!(updated, Outcome::Updated(_)));
    second.meta_mut().labels.insert("v".into(), "2".into());
    let err = s
        .write(Op::Update(second, Subresource::Main))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("the object has been modified"));
    let now = s.get(Kind::Pod, "default", "a").unwrap();
    assert_eq!(now.labels.get("v").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn apply_creates_then_reports_unchanged_and_bumps_generation_on_spec_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: REPLICAS\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    let d1 = obj(&dep.replace("REPLICAS", "2"));
    assert!(matches!(
        s.write(Op::Apply(d1.clone())).await.unwrap(),
        Outcome::Created(_)
    ));
    let rev = s.revision();
    assert!(matches!(
        s.write(Op::Apply(d1)).await.unwrap(),
        Outcome::Unchanged(_)
    ));
    assert_eq!(s.revision(), rev, "an unchanged apply must not write");
    let out = s
        .write(Op::Apply(obj(&dep.replace("REPLICAS", "5"))))
        .await
        .unwrap();
    let Outcome::Updated(e) = out else {
        panic!("{out:?}")
    };
    assert_eq!(e.object().unwrap().meta().generation, 2);
}

#[tokio::test]
async fn status_updates_do_not_touch_spec_and_spec_updates_keep_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "")).await.unwrap();
    let mut p = s.get(Kind::Pod, "default", "a").unwrap().object().unwrap();
    if let Object::Pod(pp) = &mut p {
        pp.status.as_mut().unwrap().phase = "Running".into();
        pp.spec.containers[0].image = "ignored-by-status-update".into();
    }
    s.write(Op::Update(p, Subresource::Status)).await.unwrap();
    let Object::Pod(now) = s.get(Kind::Pod, "default", "a").unwrap().object().unwrap() else {
        panic!()
    };
    assert_eq!(now.status.as_ref().unwrap().phase, "Running");
    assert_eq!(now.spec.containers[0].image, "busybox");
    // An apply of the manifest (no status) keeps the status.
    s.write(Op::Apply(pod("a", "x: y"))).await.unwrap();
    let Object::Pod(now) = s.get(Kind::Pod, "default", "a").unwrap().object().unwrap() else {
        panic!()
    };
    assert_eq!(now.status.unwrap().phase, "Running");
}

#[tokio::test]
async fn pod_spec_is_immutable_except_images() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "")).await.unwrap();
    let changed = obj(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: busybox, command: [sh]}]\n",
    );
    let err = s.write(Op::Apply(changed)).await.unwrap_err();
    assert!(err.to_string().contains("spec: Forbidden"), "{err}");
    let image = obj(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: busybox:2}]\n",
    );
    assert!(matches!(
        s.write(Op::Apply(image)).await.unwrap(),
        Outcome::Updated(_)
    ));
}

#[tokio::test]
async fn label_selectors_filter_lists() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "app: web, tier: fe")).await.unwrap();
    s.create(pod("b", "app: web, tier: be")).await.unwrap();
    s.create(pod("c", "app: db")).await.unwrap();
    let names = |sel: &str| -> Vec<String> {
        let (_, items) = s.list(Kind::Pod, Some("default"), &Selector::parse(sel).unwrap());
        items.iter().map(|e| e.name.clone()).collect()
    };
    assert_eq!(names(""), vec!["a", "b", "c"]);
    assert_eq!(names("app=web"), vec!["a", "b"]);
    assert_eq!(names("app=web,tier!=fe"), vec!["b"]);
    assert_eq!(names("tier"), vec!["a", "b"]);
    assert_eq!(names("!tier"), vec!["c"]);
    assert_eq!(names("app in (db,cache)"), vec!["c"]);
}

#[tokio::test]
async fn objects_with_the_same_labels_share_one_label_set_and_reopen_shared() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, writer) =
            Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap();
        s.create(namespace("default")).await.unwrap();
        s.create(pod("a", "app: web")).await.unwrap();
        s.create(pod("b", "app: web")).await.unwrap();
        s.create(pod("c", "app: db")).await.unwrap();
        // Written in one group too.
        let group: Vec<_> = (0..3)
            .map(|i| s.write(Op::Create(pod(&format!("g{i}"), "app: web"))))
            .collect();
        for r in futures_util::future::join_all(group).await {
            r.unwrap();
        }
        let labels = |n: &str| s.get(Kind::Pod, "default", n).unwrap().labels.clone();
        for n in ["b", "g0", "g1", "g2"] {
            assert!(std::sync::Arc::ptr_eq(&labels("a"), &labels(n)), "{n}");
        }
        assert!(!std::sync::Arc::ptr_eq(&labels("a"), &labels("c")));
        assert_eq!(labels("c").get("app").map(String::as_str), Some("db"));
        drop(s);
        writer.join();
    }
    let s = open(dir.path(), StoreOptions::default()).await;
    let labels = |n: &str| s.get(Kind::Pod, "default", n).unwrap().labels.clone();
    assert!(std::sync::Arc::ptr_eq(&labels("a"), &labels("b")));
    assert_eq!(labels("a").get("app").map(String::as_str), Some("web"));
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_sees_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "")).await.unwrap();
    let after_a = s.revision();
    s.create(pod("b", "")).await.unwrap();
    let mut w = s.watch(all_pods(), Some(after_a)).unwrap();
    s.write(Op::Delete(DeleteRequest {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: "a".into(),
        grace_seconds: None,
        resource_version: None,
        orphan: false,
    }))
    .await
    .unwrap();
    let e1 = w.next().await.unwrap();
    assert_eq!((e1.type_, e1.entry.name.as_str()), (EventType::Added, "b"));
    let e2 = w.next().await.unwrap();
    assert_eq!(
        (e2.type_, e2.entry.name.as_str()),
        (EventType::Deleted, "a")
    );
    assert!(e2.revision > e1.revision);
    let line: Vec<u8> = e2.line().concat();
    let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(line["type"], "DELETED");
    assert_eq!(line["object"]["metadata"]["name"], "a");
    assert!(e2.line().concat().ends_with(b"}\n"));
    let nothing = tokio::time::timeout(Duration::from_millis(100), w.next()).await;
    assert!(nothing.is_err(), "no further events expected");
}

#[tokio::test]
async fn watch_without_revision_starts_with_current_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(pod("a", "app: x")).await.unwrap();
    s.create(pod("b", "app: y")).await.unwrap();
    let filter = WatchFilter {
        kind: Kind::Pod,
        also: Vec::new(),
        namespace: Some("default".into()),
        selector: Selector::parse("app=x").unwrap(),
    };
    let mut w = s.watch(filter, None).unwrap();
    let first = w.next().await.unwrap();
    assert_eq!(
        (first.type_, first.entry.name.as_str()),
        (EventType::Added, "a")
    );
    s.create(pod("c", "app: y")).await.unwrap();
    s.create(pod("d", "app: x")).await.unwrap();
    let next = w.next().await.unwrap();
    assert_eq!(next.entry.name, "d", "the selector filters live events");
}

#[tokio::test]
async fn compacted_revision_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        StoreOptions {
            change_log: 4,
            ..Default::default()
        },
    )
    .await;
    let start = s.revision();
    for i in 0..10 {
        s.create(pod(&format!("p{i}"), "")).await.unwrap();
    }
    match s.watch(all_pods(), Some(start)) {
        Err(StoreError::Gone { requested, oldest }) => {
            assert_eq!(requested, start);
            assert_eq!(oldest, s.revision() - 4);
        }
        other => panic!("expected gone, got {:?}", other.err()),
    }
    // The newest four revisions are still resumable.
    let mut w = s.watch(all_pods(), Some(s.revision() - 4)).unwrap();
    assert_eq!(w.next().await.unwrap().entry.name, "p6");
    assert!(matches!(
        s.watch(all_pods(), Some(s.revision() + 5)),
        Err(StoreError::Gone { .. })
    ));
}

#[tokio::test]
async fn a_watcher_that_falls_behind_catches_up_from_the_log_or_is_told_gone() {
    let dir = tempfile::tempdir().unwrap();
    // Broadcast buffer of 16 events, log of 64: 40 writes overflow the buffer, not the log.
    let s = open(
        dir.path(),
        StoreOptions {
            change_log: 64,
            watch_buffer: 16,
            ..Default::default()
        },
    )
    .await;
    let mut w = s.watch(all_pods(), Some(s.revision())).unwrap();
    for i in 0..40 {
        s.create(pod(&format!("p{i}"), "")).await.unwrap();
    }
    for i in 0..40 {
        assert_eq!(w.next().await.unwrap().entry.name, format!("p{i}"));
    }
    // Now overflow the log as well.
    for i in 40..140 {
        s.create(pod(&format!("p{i}"), "")).await.unwrap();
    }
    assert!(matches!(w.next().await, Err(StoreError::Gone { .. })));
}

#[tokio::test]
async fn graceful_deletion_of_a_bound_pod_then_completion() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let bound = obj(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  nodeName: pi1\n  terminationGracePeriodSeconds: 5\n  containers: [{name: c, image: busybox}]\n",
    );
    s.create(bound).await.unwrap();
    let del = |grace| DeleteRequest {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: "a".into(),
        grace_seconds: grace,
        resource_version: None,
        orphan: false,
    };
    let out = s.write(Op::Delete(del(None))).await.unwrap();
    let Outcome::Terminating(e) = out else {
        panic!("{out:?}")
    };
    let m = e.object().unwrap().meta().clone();
    assert!(m.deletion_timestamp.is_some());
    assert_eq!(m.deletion_grace_period_seconds, Some(5));
    assert!(s.get(Kind::Pod, "default", "a").is_some());
    // Deleting again while terminating changes nothing.
    let rev = s.revision();
    assert!(matches!(
        s.write(Op::Delete(del(None))).await.unwrap(),
        Outcome::Terminating(_)
    ));
    assert_eq!(s.revision(), rev);
    // The node confirms with grace 0.
    assert!(matches!(
        s.write(Op::Delete(del(Some(0)))).await.unwrap(),
        Outcome::Deleted(_)
    ));
    assert!(s.get(Kind::Pod, "default", "a").is_none());
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let p = obj(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, finalizers: [bramble.io/test]}\nspec:\n  containers: [{name: c, image: busybox}]\n",
    );
    s.create(p).await.unwrap();
    let out = s
        .write(Op::Delete(DeleteRequest {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "a".into(),
            grace_seconds: None,
            resource_version: None,
            orphan: false,
        }))
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Terminating(_)));
    let mut o = s.get(Kind::Pod, "default", "a").unwrap().object().unwrap();
    o.meta_mut().finalizers.clear();
    assert!(matches!(
        s.write(Op::Update(o, Subresource::Main)).await.unwrap(),
        Outcome::Deleted(_)
    ));
    assert!(s.get(Kind::Pod, "default", "a").is_none());
}

#[tokio::test]
async fn namespace_deletion_removes_its_objects_and_default_is_protected() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    s.create(namespace("edge")).await.unwrap();
    let mut p = pod("a", "");
    p.meta_mut().namespace = "edge".into();
    s.create(p).await.unwrap();
    s.create(pod("keep", "")).await.unwrap();
    let del = |name: &str| DeleteRequest {
        kind: Kind::Namespace,
        namespace: String::new(),
        name: name.into(),
        grace_seconds: None,
        resource_version: None,
        orphan: false,
    };
    s.write(Op::Delete(del("edge"))).await.unwrap();
    assert!(s.get(Kind::Pod, "edge", "a").is_none());
    assert!(s.get(Kind::Pod, "default", "keep").is_some());
    assert!(matches!(
        s.write(Op::Delete(del("default"))).await,
        Err(StoreError::Forbidden(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_in_groups_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rev;
    {
        let (s, writer) =
            Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap();
        s.create(namespace("default")).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    s.create(pod(&format!("t{t}-{i}"), "")).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rev = s.revision();
        drop(s);
        writer.join();
    }
    let (s, _w) = Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap();
    assert_eq!(s.revision(), rev, "the revision survives a reopen");
    let (_, items) = s.list(Kind::Pod, None, &Selector::everything());
    assert_eq!(items.len(), 400);
    // Revisions are unique across the concurrent writers.
    let mut revs: Vec<u64> = items.iter().map(|e| e.revision).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 400);
}

#[tokio::test]
async fn binding_assigns_a_pending_pod_once() {
    use bramble_master::store::Binding;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let created = s.create(pod("p", "")).await.unwrap();
    let uid = created.entry().object().unwrap().meta().uid.clone();
    let bind = |uid: &str, node: &str| {
        Op::Bind(Binding {
            namespace: "default".into(),
            name: "p".into(),
            uid: uid.into(),
            node: node.into(),
        })
    };
    // Another uid (the pod was replaced since the decision): conflict, nothing written.
    let e = s.write(bind("not-the-uid", "n1")).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let r = s.write(bind(&uid, "n1")).await.unwrap();
    assert!(matches!(r, Outcome::Updated(_)));
    let Object::Pod(p) = s.get(Kind::Pod, "default", "p").unwrap().object().unwrap() else {
        panic!()
    };
    assert_eq!(p.spec.node_name, "n1");
    assert_eq!(p.metadata.resource_version, s.revision().to_string());
    // Bound already: a second binding is a conflict that names the node.
    let e = s.write(bind(&uid, "n2")).await.unwrap_err();
    assert!(
        e.to_string().contains("already assigned to node \"n1\""),
        "{e}"
    );
    let e = s
        .write(Op::Bind(Binding {
            namespace: "default".into(),
            name: "gone".into(),
            uid: String::new(),
            node: "n1".into(),
        }))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }));
}

fn service(name: &str, extra: &str) -> Object {
    obj(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: x}}\n  ports: [{{name: http, port: 80}}]\n{extra}"
    ))
}

fn cluster_ip(o: &Outcome) -> (String, Vec<Option<i32>>) {
    match o.entry().object().unwrap() {
        Object::Service(s) => (
            s.spec.cluster_ip,
            s.spec.ports.iter().map(|p| p.node_port).collect(),
        ),
        _ => panic!(),
    }
}

#[tokio::test]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let a = s.create(service("a", "")).await.unwrap();
    assert_eq!(cluster_ip(&a), ("10.43.0.1".into(), vec![None]));
    let b = s.create(service("b", "  type: NodePort\n")).await.unwrap();
    assert_eq!(cluster_ip(&b), ("10.43.0.2".into(), vec![Some(30000)]));
    // Explicit values are honoured when free and in range, refused otherwise.
    let c = s
        .create(service(
            "c",
            "  type: NodePort\n  clusterIP: 10.43.9.9\n  ports: [{port: 80, nodePort: 30500}]\n",
        ))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&c), ("10.43.9.9".into(), vec![Some(30500)]));
    for (extra, field, why) in [
        (
            "  clusterIP: 10.43.0.1\n",
            "spec.clusterIP",
            "already allocated",
        ),
        (
            "  clusterIP: 10.99.0.1\n",
            "spec.clusterIP",
            "not in the service CIDR",
        ),
        (
            "  type: NodePort\n  ports: [{port: 80, nodePort: 30500}]\n",
            "spec.ports[0].nodePort",
            "already allocated",
        ),
        (
            "  type: NodePort\n  ports: [{port: 80, nodePort: 80}]\n",
            "spec.ports[0].nodePort",
            "not in the node port range",
        ),
    ] {
        let e = s.create(service("d", extra)).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(field) && msg.contains(why), "{extra}: {msg}");
    }
    // Headless: no address.
    let h = s.create(service("h", "  clusterIP: None\n")).await.unwrap();
    assert_eq!(cluster_ip(&h).0, "None");
    // An apply without the allocated values keeps them; changing the ClusterIP is refused.
    let again = s
        .write(Op::Apply(service("b", "  type: NodePort\n")))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&again), ("10.43.0.2".into(), vec![Some(30000)]));
    let e = s
        .write(Op::Apply(service(
            "b",
            "  type: NodePort\n  clusterIP: 10.43.7.7\n",
        )))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("immutable"), "{e}");
    // Deleting frees the address and the port for the next Service.
    s.write(Op::Delete(DeleteRequest {
        kind: Kind::Service,
        namespace: "default".into(),
        name: "b".into(),
        grace_seconds: None,
        resource_version: None,
        orphan: false,
    }))
    .await
    .unwrap();
    let e2 = s.create(service("e", "  type: NodePort\n")).await.unwrap();
    assert_eq!(cluster_ip(&e2), ("10.43.0.2".into(), vec![Some(30000)]));
    // Concurrent creates (one group commit) never share an address.
    let writes = (0..40).map(|i| s.create(service(&format!("many-{i}"), "")));
    let ips: std::collections::BTreeSet<String> = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| cluster_ip(&r.unwrap()).0)
        .collect();
    assert_eq!(ips.len(), 40);
}

#[tokio::test]
async fn the_endpoints_controller_follows_ready_pods() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ctl = tokio::spawn(bramble_master::controllers::run(
        bramble_master::controllers::endpoints::EndpointsController,
        s.clone(),
        shutdown.clone(),
    ));
    s.create(service("web", "")).await.unwrap();
    // A pod becomes Running with an IP and Ready (as its agent reports).
    let set_status = |name: &str, ip: &str, ready: bool| {
        let mut p = match s.get(Kind::Pod, "default", name).unwrap().object().unwrap() {
            Object::Pod(p) => p,
            _ => unreachable!(),
        };
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = "Running".into();
        st.pod_ip = ip.into();
        st.conditions = vec![bramble_api::meta::Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }];
        p.metadata.resource_version.clear();
        s.write(Op::Update(Object::Pod(p), Subresource::Status))
    };
    s.create(pod("a", "app: x")).await.unwrap();
    s.create(pod("b", "app: x")).await.unwrap();
    s.create(pod("c", "app: other")).await.unwrap();
    set_status("a", "10.42.0.5", true).await.unwrap();
    set_status("b", "10.42.0.6", false).await.unwrap();
    set_status("c", "10.42.0.7", true).await.unwrap();
    let endpoints = || -> Option<(Vec<String>, Vec<String>)> {
        match s.get(Kind::Endpoints, "default", "web")?.object().ok()? {
            Object::Endpoints(e) => {
                let sub = e.subsets.first().cloned().unwrap_or_default();
                Some((
                    sub.addresses.iter().map(|a| a.ip.clone()).collect(),
                    sub.not_ready_addresses
                        .iter()
                        .map(|a| a.ip.clone())
                        .collect(),
                ))
            }
            _ => None,
        }
    };
    let wait = |want: Option<(Vec<String>, Vec<String>)>| async move {
        for _ in 0..200 {
            if endpoints() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("endpoints {:?}, wanted {want:?}", endpoints());
    };
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    wait(Some((v(&["10.42.0.5"]), v(&["10.42.0.6"])))).await;
    // b becomes ready; a is deleted.
    set_status("b", "10.42.0.6", true).await.unwrap();
    s.write(Op::Delete(DeleteRequest {
        kind: Kind::Pod,
        namespace: "default".into(),
        name: "a".into(),
        grace_seconds: Some(0),
        resource_version: None,
        orphan: false,
    }))
    .await
    .unwrap();
    wait(Some((v(&["10.42.0.6"]), v(&[])))).await;
    // The Service goes: so do its Endpoints.
    s.write(Op::Delete(DeleteRequest {
        kind: Kind::Service,
        namespace: "default".into(),
        name: "web".into(),
        grace_seconds: None,
        resource_version: None,
        orphan: false,
    }))
    .await
    .unwrap();
    wait(None).await;
    shutdown.cancel();
    ctl.await.unwrap();
}

/// Every byte of a file, to look for a value in it.
fn raw_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle)
}

#[tokio::test]
async fn secrets_are_sealed_in_the_file_and_a_rotation_reseals_them() {
    use bramble_master::store::sealed::{KEY_FILE, SecretsKey};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.redb");
    let secret = |name: &str, value: &str| {
        obj(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{password: {value}}}\n"
        ))
    };
    let config = obj(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\ndata: {k: visible-config-value}\n",
    );
    // A store written before sealing existed: its Secret is in clear.
    {
        let (s, writer) = Store::open(&db, StoreOptions::default()).unwrap();
        s.create(namespace("default")).await.unwrap();
        s.create(secret("old", "legacy-cleartext-value"))
            .await
            .unwrap();
        drop(s);
        writer.join();
    }
    let legacy = bramble_api::config::encode(b"legacy-cleartext-value");
    assert!(raw_contains(&db, legacy.as_bytes()));
    let key = || Arc::new(SecretsKey::load_or_create(&dir.path().join(KEY_FILE)).unwrap());
    let opts = || StoreOptions {
        secrets: Some(key()),
        ..Default::default()
    };
    {
        let (s, writer) = Store::open(&db, opts()).unwrap();
        // stringData is merged into data on the way in, as base64.
        let out = s.create(secret("db", "hunter2-at-rest")).await.unwrap();
        let Object::Secret(stored) = out.entry().object().unwrap() else {
            panic!()
        };
        assert!(stored.string_data.is_empty());
        assert_eq!(
            stored.data["password"],
            bramble_api::config::encode(b"hunter2-at-rest")
        );
        assert_eq!(stored.type_, "Opaque");
        s.create(config.clone()).await.unwrap();
        drop(s);
        writer.join();
    }
    // Neither the value nor its base64 is in the file; the ConfigMap is not sealed.
    for needle in ["hunter2-at-rest", "legacy-cleartext-value"] {
        assert!(!raw_contains(&db, needle.as_bytes()), "{needle}");
        let b64 = bramble_api::config::encode(needle.as_bytes());
        assert!(!raw_contains(&db, b64.as_bytes()), "{needle} as base64");
    }
    assert!(raw_contains(&db, b"visible-config-value"));
    // Reopened with the key, both read back; a rotation re-seals both under key 2 and
    // drops key 1, after which they still read back.
    let sealed_before = std::fs::read(&db).unwrap();
    {
        let (s, writer) = Store::open(&db, opts()).unwrap();
        let read =
            |s: &Store, n: &str| match s.get(Kind::Secret, "default", n).unwrap().object().unwrap()
            {
                Object::Secret(x) => x.entries()["password"].clone(),
                _ => panic!(),
            };
        assert_eq!(read(&s, "db"), b"hunter2-at-rest");
        assert_eq!(read(&s, "old"), b"legacy-cleartext-value");
        assert_eq!(s.rotate_secrets_key().await.unwrap(), 2);
        drop(s);
        writer.join();
    }
    let k = key();
    assert_eq!(k.current(), 2);
    assert_ne!(std::fs::read(&db).unwrap(), sealed_before);
    {
        let (s, writer) = Store::open(&db, opts()).unwrap();
        assert_eq!(
            s.list(Kind::Secret, None, &Selector::everything()).1.len(),
            2
        );
        drop(s);
        writer.join();
    }
    // Without the key the Secrets are not readable (left out, never served as garbage).
    let (s, _w) = Store::open(&db, StoreOptions::default()).unwrap();
    assert!(s.get(Kind::Secret, "default", "db").is_none());
    assert!(s.get(Kind::ConfigMap, "default", "plain").is_some());
}

#[tokio::test]
async fn immutable_configmaps_and_secrets_keep_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StoreOptions::default()).await;
    let cm = |v: &str, immutable: bool| {
        obj(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: \"{v}\"}}\nimmutable: {immutable}\n"
        ))
    };
    s.create(cm("1", true)).await.unwrap();
    for change in [cm("2", true), cm("1", false)] {
        let err = s
            .write(Op::Update(change, Subresource::Main))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("immutable"), "{err}");
    }
    let secret = |t: &str| {
        obj(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ntype: {t}\nstringData: {{username: u}}\n"
        ))
    };
    s.create(secret("kubernetes.io/basic-auth")).await.unwrap();
    let err = s
        .write(Op::Update(secret("Opaque"), Subresource::Main))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("type"), "{err}");
}
