//! Deployments, rolling updates, node loss and eviction on a real master with hollow agents.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bramble_tests::{HollowProcess, MasterProcess, consistently, eventually, ok_stdout};

fn deployment(name: &str, replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  strategy: {{rollingUpdate: {{maxSurge: 2, maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: main
        image: {image}
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}}}
"#
    )
}

fn is_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn per_node(m: &MasterProcess) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in m.pods() {
        if p["metadata"]["deletionTimestamp"].is_null() {
            *out.entry(
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or("<none>")
                    .to_string(),
            )
            .or_default() += 1;
        }
    }
    out
}

fn all_ready(m: &MasterProcess, n: usize) -> bool {
    let ps = m.pods();
    ps.len() == n && ps.iter().all(is_ready)
}

#[test]
fn a_deployment_spreads_rolls_without_breaking_its_bounds_and_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "h", 3, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 3));
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&deployment("web", 10, "busybox:1")),
    ));
    assert!(
        eventually(Duration::from_secs(30), || all_ready(&m, 10)),
        "{:?}",
        per_node(&m)
    );
    let mut spread: Vec<usize> = per_node(&m).values().copied().collect();
    spread.sort();
    assert_eq!(spread, vec![3, 3, 4], "10 replicas over 3 nodes");
    let out = ok_stdout(&m.cli(&["rollout", "status", "deploy/web", "--timeout", "30"]));
    assert!(out.contains("successfully rolled out"), "{out}");

    // Roll to a new image, watching every pod change: never fewer than 10 - 1 ready,
    // never more than 10 + 2 pods.
    let rx = bramble_tests::watch_events(&m, "/api/v1/namespaces/default/pods?watch=true");
    let mut state: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    // The watch starts with every current pod as ADDED.
    while state.len() < 10 {
        let ev = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        state.insert(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
            ev["object"].clone(),
        );
    }
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&deployment("web", 10, "busybox:2")),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut max_total = 0;
    let mut min_ready = usize::MAX;
    let mut changes = 0;
    loop {
        assert!(Instant::now() < deadline, "the rollout did not finish");
        let Ok(ev) = rx.recv_timeout(Duration::from_millis(500)) else {
            // Quiet: done when every pod runs the new image and is ready.
            let done = state.len() == 10
                && state
                    .values()
                    .all(|p| p["spec"]["containers"][0]["image"] == "busybox:2" && is_ready(p));
            if done {
                break;
            }
            continue;
        };
        changes += 1;
        let name = ev["object"]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        if ev["type"] == "DELETED" || !ev["object"]["metadata"]["deletionTimestamp"].is_null() {
            state.remove(&name);
        } else {
            state.insert(name, ev["object"].clone());
        }
        let total = state.len();
        let ready = state.values().filter(|p| is_ready(p)).count();
        max_total = max_total.max(total);
        min_ready = min_ready.min(ready);
        assert!(total <= 12, "above replicas + maxSurge: {total} pods");
        assert!(ready >= 9, "below replicas - maxUnavailable: {ready} ready");
    }
    assert!(
        changes > 20,
        "the rollout should have gone through many steps ({changes})"
    );
    assert!(max_total > 10, "the rollout should have surged");
    let d = m
        .http()
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .unwrap()
        .json();
    assert_eq!(d["status"]["updatedReplicas"], 10);
    assert_eq!(d["status"]["readyReplicas"], 10);

    // Scale down, then delete: the pods go with the Deployment.
    ok_stdout(&m.cli(&["scale", "deploy/web", "--replicas", "4"]));
    assert!(eventually(Duration::from_secs(30), || all_ready(&m, 4)));
    ok_stdout(&m.cli(&["delete", "deploy", "web"]));
    assert!(
        eventually(Duration::from_secs(30), || m.pods().is_empty()),
        "owned pods were not collected"
    );
}

#[test]
fn a_lost_node_s_pods_are_replaced_but_a_partition_evicts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &["--node-lost-after", "2s", "--pod-eviction-timeout", "2s"],
    )
    .unwrap();
    let _stay = HollowProcess::start(&m, &dir.path().join("stay"), "stay", 2, &[]).unwrap();
    let doomed = HollowProcess::start(&m, &dir.path().join("doomed"), "doomed", 1, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 3));
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&deployment("app", 6, "busybox")),
    ));
    assert!(eventually(Duration::from_secs(30), || all_ready(&m, 6)));
    assert_eq!(per_node(&m).get("doomed-0"), Some(&2));
    // Power cut on one board: its pods come back elsewhere.
    let t = Instant::now();
    let mut doomed = doomed;
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    assert!(
        eventually(Duration::from_secs(20), || {
            let p = per_node(&m);
            !p.contains_key("doomed-0") && all_ready(&m, 6)
        }),
        "{:?}",
        per_node(&m)
    );
    let took = t.elapsed();
    assert!(took <= Duration::from_secs(10), "replacement took {took:?}");
    let node = m.http().get("/api/v1/nodes/doomed-0").unwrap().json();
    assert!(
        node["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
    );
    let events = ok_stdout(&m.cli(&["get", "events"]));
    assert!(events.contains("TaintManagerEviction"), "{events}");

    // The board comes back: it reconciles to the master's view and runs none of the
    // replaced pods (its local cache still listed them).
    let back = HollowProcess::restart_in(&m, &dir.path().join("doomed"), "doomed", 1).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 3));
    let prom = dir.path().join("doomed/doomed-0/agent-metrics.prom");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&prom)
            .unwrap_or_default()
            .contains("bramble_agent_pods 0")),
        "the returning node still runs replaced pods: {}",
        std::fs::read_to_string(&prom).unwrap_or_default()
    );
    assert!(!per_node(&m).contains_key("doomed-0"));
    let node = m.http().get("/api/v1/nodes/doomed-0").unwrap().json();
    assert!(
        eventually(Duration::from_secs(5), || {
            let n = m.http().get("/api/v1/nodes/doomed-0").unwrap().json();
            n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty())
        }),
        "the unreachable taint stayed: {node}"
    );
    drop(back);

    // Now lose 2 of the 3 nodes at once (67% > 55%): nothing is evicted.
    drop(_stay);
    assert!(eventually(Duration::from_secs(10), || m.ready_nodes() == 0));
    // Past the eviction timeout, still nothing is evicted.
    assert!(
        consistently(Duration::from_secs(5), || m.pods().len() == 6),
        "a partition must not evict: {} pods left",
        m.pods().len()
    );
}

#[test]
fn rollout_history_and_undo_restore_the_previous_template() {
    let dir = tempfile::tempdir().unwrap();
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "u", 2, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 2));
    let image_of = |m: &MasterProcess| {
        let d = m
            .http()
            .get("/apis/apps/v1/namespaces/default/deployments/hist")
            .unwrap()
            .json();
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for img in ["busybox:1", "busybox:2", "busybox:3"] {
        ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&deployment("hist", 3, img))));
        assert!(eventually(Duration::from_secs(30), || {
            let ps = m.pods();
            ps.len() == 3
                && ps
                    .iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == img && is_ready(p))
        }));
    }
    let history = ok_stdout(&m.cli(&["rollout", "history", "deployment/hist"]));
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(revisions, ["1", "2", "3"], "{history}");
    ok_stdout(&m.cli(&["rollout", "undo", "deployment/hist"]));
    assert_eq!(image_of(&m), "busybox:2");
    assert!(eventually(Duration::from_secs(30), || {
        let ps = m.pods();
        ps.len() == 3
            && ps
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "busybox:2" && is_ready(p))
    }));
    // Undo made revision 2's template revision 4; --to-revision picks any.
    let history = ok_stdout(&m.cli(&["rollout", "history", "deploy", "hist"]));
    assert!(history.contains("\n4 "), "{history}");
    ok_stdout(&m.cli(&["rollout", "undo", "deployment/hist", "--to-revision", "1"]));
    assert_eq!(image_of(&m), "busybox:1");
    // Re-applying the manifest keeps the history (system annotations survive apply).
    ok_stdout(&m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&deployment("hist", 3, "busybox:3")),
    ));
    assert!(eventually(Duration::from_secs(10), || {
        let h = ok_stdout(&m.cli(&["rollout", "history", "deploy/hist"]));
        h.lines().count() >= 5
    }));
    let out = m.cli(&["rollout", "undo", "deployment/hist", "--to-revision", "99"]);
    assert!(!out.status.success());
}
