//! ReplicaSets under Deployments, for real (as root, a real agent running busybox): a
//! Deployment's pods belong to its ReplicaSet; a data dir written before ReplicaSets existed
//! (pods owned by the Deployment itself) is adopted at the master's start without restarting
//! a container; a rollout leaves the old ReplicaSet at 0 replicas for `rollout undo`.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_api::meta::OwnerReference;
use bramble_api::{Kind, Object, Selector};
use bramble_master::store::{DeleteRequest, Op, Store, StoreOptions, Subresource};
use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, ok_stdout, require_root,
};

fn deployment(version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  revisionHistoryLimit: 5
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 0.2; done']
        env: [{{name: VERSION, value: "{version}"}}]
"#
    )
}

fn ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Live pods as (name, uid, controller kind).
fn pods(m: &MasterProcess) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = m
        .pods()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["metadata"]["uid"].as_str().unwrap().to_string(),
                p["metadata"]["ownerReferences"][0]["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn broker_port(agent_dir: &std::path::Path) -> u16 {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent_dir.join("credentials.json")).unwrap())
            .unwrap();
    c["mqttPort"].as_u64().unwrap() as u16
}

/// Rewrites the stopped master's store as a Bramble without ReplicaSets left it: the pods
/// owned by their Deployment, no ReplicaSet objects.
fn make_legacy(master_dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, writer) =
            Store::open(&master_dir.join("store.redb"), StoreOptions::default()).unwrap();
        let d = store.get(Kind::Deployment, "default", "web").unwrap();
        let Object::Deployment(d) = d.object().unwrap() else {
            panic!()
        };
        let (_, list) = store.list(Kind::Pod, None, &Selector::everything());
        for e in list {
            let Object::Pod(mut p) = e.object().unwrap() else {
                continue;
            };
            p.metadata.owner_references = vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                uid: d.metadata.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }];
            p.metadata.resource_version.clear();
            store
                .write(Op::Update(Object::Pod(p), Subresource::Main))
                .await
                .unwrap();
        }
        let (_, sets) = store.list(Kind::ReplicaSet, None, &Selector::everything());
        for e in sets {
            store
                .write(Op::Delete(DeleteRequest {
                    kind: Kind::ReplicaSet,
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    grace_seconds: None,
                    resource_version: None,
                    orphan: false,
                }))
                .await
                .unwrap();
        }
        // As an older Bramble left it: no ReplicaSet, every pod the Deployment's own.
        assert!(
            store
                .list(Kind::ReplicaSet, None, &Selector::everything())
                .1
                .is_empty()
        );
        let (_, list) = store.list(Kind::Pod, None, &Selector::everything());
        assert_eq!(list.len(), 2);
        for e in list {
            let Object::Pod(p) = e.object().unwrap() else {
                panic!()
            };
            assert_eq!(p.metadata.owner_references[0].kind, "Deployment");
        }
        drop(store);
        writer.join();
    });
}

#[test]
fn deployments_own_replicasets_and_an_old_data_dir_is_adopted_without_restarts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let master_dir = dir.path().join("master");
    let m = MasterProcess::start(&master_dir).unwrap();
    let a = AgentProcess::start(&m, &agent_dir, "board-r", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&deployment("1"))));
    assert!(
        eventually(Duration::from_secs(30), || {
            let ps = m.pods();
            ps.len() == 2 && ps.iter().all(ready)
        }),
        "{:?}",
        pods(&m)
    );
    let before = pods(&m);
    assert!(before.iter().all(|p| p.2 == "ReplicaSet"), "{before:?}");
    let rs = ok_stdout(&m.cli(&["get", "rs"]));
    let row = rs
        .lines()
        .find(|l| l.starts_with("web-"))
        .unwrap()
        .to_string();
    assert_eq!(
        row.split_whitespace().take(4).skip(1).collect::<Vec<_>>(),
        ["2", "2", "2"],
        "{rs}"
    );
    let rs_name = row.split_whitespace().next().unwrap().to_string();
    let set = m
        .http()
        .get(&format!(
            "/apis/apps/v1/namespaces/default/replicasets/{rs_name}"
        ))
        .unwrap()
        .json();
    assert_eq!(
        set["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(set["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let pids = a.container_pids();
    assert_eq!(pids.len(), 2);

    // The master goes; its store is rewritten as an older Bramble left it; it comes back.
    let port = broker_port(&agent_dir);
    assert_eq!(m.terminate(), Some(0));
    make_legacy(&master_dir);
    let m = MasterProcess::start_with(
        &master_dir,
        &["--mqtt-listen", &format!("127.0.0.1:{port}")],
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let now = pods(&m);
            now.len() == 2 && now.iter().all(|p| p.2 == "ReplicaSet")
        }),
        "not adopted: {:?}",
        pods(&m)
    );
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 1));
    // The same pods (names and uids), the same containers, no restart.
    let after = pods(&m);
    assert_eq!(
        before.iter().map(|p| (&p.0, &p.1)).collect::<Vec<_>>(),
        after.iter().map(|p| (&p.0, &p.1)).collect::<Vec<_>>()
    );
    assert!(
        bramble_tests::consistently(Duration::from_secs(3), || a.container_pids() == pids),
        "containers were restarted: {pids:?} → {:?}",
        a.container_pids()
    );
    assert!(
        m.pods()
            .iter()
            .all(|p| p["status"]["containerStatuses"][0]["restartCount"] == 0)
    );
    let rs = ok_stdout(&m.cli(&["get", "rs"]));
    assert!(rs.contains(&rs_name), "{rs}");

    // A rollout: a second ReplicaSet takes over, the first stays at 0 for undo.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&deployment("2"))));
    let out = ok_stdout(&m.cli(&["rollout", "status", "deploy/web", "--timeout", "60"]));
    assert!(out.contains("successfully rolled out"), "{out}");
    let sets = m
        .http()
        .get("/apis/apps/v1/namespaces/default/replicasets")
        .unwrap()
        .json();
    let mut counts: Vec<(String, i64)> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                s["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    assert_eq!(counts, [("1".to_string(), 0), ("2".to_string(), 2)]);
    ok_stdout(&m.cli(&["rollout", "undo", "deploy/web"]));
    assert!(eventually(Duration::from_secs(60), || {
        m.http()
            .get(&format!(
                "/apis/apps/v1/namespaces/default/replicasets/{rs_name}"
            ))
            .unwrap()
            .json()["status"]["readyReplicas"]
            == 2
    }));

    // Deleting the Deployment deletes its ReplicaSets and their pods.
    ok_stdout(&m.cli(&["delete", "deploy", "web"]));
    assert!(
        eventually(Duration::from_secs(30), || m.pods().is_empty()
            && m.http()
                .get("/apis/apps/v1/namespaces/default/replicasets")
                .unwrap()
                .json()["items"]
                .as_array()
                .is_some_and(|a| a.is_empty())),
        "not collected"
    );
}
