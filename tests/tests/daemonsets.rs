//! DaemonSets on a real master: one pod per node on hollow boards and a real board running
//! busybox, a board that joins later gets its pod, and a rolling update never takes more
//! than `maxUnavailable` daemons down at once (watched event by event).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bramble_tests::{
    AgentDirCleanup, AgentProcess, HollowProcess, MasterProcess, eventually, ok_stdout,
    require_root,
};

fn daemonset(version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: collector}}
spec:
  selector: {{matchLabels: {{app: collector}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: collector}}}}
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

fn is_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn version(p: &serde_json::Value) -> &str {
    p["spec"]["containers"][0]["env"][0]["value"]
        .as_str()
        .unwrap_or("")
}

/// Live daemon pods by node.
fn by_node(m: &MasterProcess) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for p in m.pods() {
        if p["metadata"]["deletionTimestamp"].is_null() {
            let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            out.entry(node).or_default().push(p);
        }
    }
    out
}

/// One ready pod of `version` on each of `nodes`, and nothing else.
fn settled(m: &MasterProcess, nodes: usize, v: &str) -> bool {
    let b = by_node(m);
    b.len() == nodes
        && b.values()
            .all(|ps| ps.len() == 1 && is_ready(&ps[0]) && version(&ps[0]) == v)
}

#[test]
fn a_daemonset_covers_every_board_including_late_ones_and_rolls_within_max_unavailable() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _real = AgentProcess::start(&m, &agent_dir, "board-real", &[]).unwrap();
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "h", 2, &[]).unwrap();
    assert!(eventually(Duration::from_secs(30), || m.ready_nodes() == 3));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&daemonset("1"))));
    assert!(
        eventually(Duration::from_secs(30), || settled(&m, 3, "1")),
        "{:?}",
        by_node(&m).keys().collect::<Vec<_>>()
    );
    assert!(by_node(&m).contains_key("board-real"));
    let table = ok_stdout(&m.cli(&["get", "ds"]));
    assert!(
        table.contains("DESIRED") && table.contains("NODE SELECTOR"),
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("collector"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            let t = ok_stdout(&m.cli(&["get", "daemonsets"]));
            t.lines()
                .find(|l| l.starts_with("collector"))
                .is_some_and(|l| {
                    l.split_whitespace().take(6).collect::<Vec<_>>()
                        == ["collector", "3", "3", "3", "3", "3"]
                })
        }),
        "{row:?}"
    );

    // A board that joins later gets its daemon.
    let _late = HollowProcess::start(&m, &dir.path().join("late"), "late", 1, &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || settled(&m, 4, "1")),
        "{:?}",
        by_node(&m).keys().collect::<Vec<_>>()
    );

    // Roll: never more than one node without a ready daemon, never two daemons on a node.
    let rx = bramble_tests::watch_events(&m, "/api/v1/namespaces/default/pods?watch=true");
    let mut state: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    while state.len() < 4 {
        let ev = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let name = ev["object"]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        state.insert(name, ev["object"].clone());
    }
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&daemonset("2"))));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut changes = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish: {state:?}"
        );
        let Ok(ev) = rx.recv_timeout(Duration::from_millis(500)) else {
            if state.len() == 4 && state.values().all(|p| version(p) == "2" && is_ready(p)) {
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
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for p in state.values() {
            *per_node
                .entry(p["spec"]["nodeName"].as_str().unwrap_or(""))
                .or_default() += 1;
        }
        assert!(
            per_node.values().all(|n| *n <= 1),
            "two daemons on a node: {per_node:?}"
        );
        let ready = state.values().filter(|p| is_ready(p)).count();
        assert!(
            ready >= 3,
            "more than maxUnavailable down: {ready} of 4 ready"
        );
    }
    assert!(changes >= 8, "the rollout went through {changes} steps");
    let ds = m
        .http()
        .get("/apis/apps/v1/namespaces/default/daemonsets/collector")
        .unwrap()
        .json();
    assert!(
        eventually(Duration::from_secs(10), || {
            let d = m
                .http()
                .get("/apis/apps/v1/namespaces/default/daemonsets/collector")
                .unwrap()
                .json();
            d["status"]["updatedNumberScheduled"] == 4 && d["status"]["numberReady"] == 4
        }),
        "{ds}"
    );

    let out = ok_stdout(&m.cli(&["rollout", "status", "ds/collector", "--timeout", "30"]));
    assert!(
        out.contains("daemon set \"collector\" successfully rolled out"),
        "{out}"
    );

    // History and undo, as for Deployments: revision 1 (VERSION 1) comes back as revision 3.
    let out = ok_stdout(&m.cli(&["rollout", "history", "ds/collector"]));
    assert!(
        out.starts_with("daemonset.apps/collector\n")
            && out.contains("REVISION")
            && out.lines().any(|l| l.trim_start().starts_with('1'))
            && out.lines().any(|l| l.trim_start().starts_with('2')),
        "{out}"
    );
    let out = ok_stdout(&m.cli(&["rollout", "undo", "daemonset/collector"]));
    assert!(
        out.contains("daemonset.apps/collector rolled back to revision 1"),
        "{out}"
    );
    assert!(
        eventually(Duration::from_secs(60), || settled(&m, 4, "1")),
        "the undo did not roll the pods back: {:?}",
        by_node(&m)
    );
    let out = ok_stdout(&m.cli(&["rollout", "history", "ds/collector"]));
    let revisions: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["2", "3"], "{out}");

    // Deleting the DaemonSet collects its pods.
    ok_stdout(&m.cli(&["delete", "ds", "collector"]));
    assert!(
        eventually(Duration::from_secs(30), || m.pods().is_empty()),
        "daemon pods were not collected"
    );
}
