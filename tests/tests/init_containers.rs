//! Init containers for real (as root, a real agent running busybox): they run in order, each
//! to completion, before the app container; a sidecar (an init container with
//! `restartPolicy: Always`) keeps running beside it; a failing init container holds the pod
//! (`Init:` in `get pods`) and, with `restartPolicy: Never`, fails it.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, consistently, eventually, ok_stdout, require_root,
};

const ORDERED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  nodeName: board-i
  terminationGracePeriodSeconds: 2
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
  - name: first
    image: busybox
    command: [sh, -c, 'echo one >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: busybox
    command: [sh, -c, 'sleep 0.5; echo two >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: side
    image: busybox
    restartPolicy: Always
    command: [sh, -c, 'trap "exit 0" TERM; echo side >> /work/order; while true; do sleep 0.2; done']
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; cat /work/order; echo app-started; while true; do sleep 0.2; done']
    volumeMounts: [{name: work, mountPath: /work}]
"#;

fn failing(name: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: board-i
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: setup, image: busybox, command: [sh, -c, 'exit 3']}}
  containers:
  - {{name: app, image: busybox, command: [sh, -c, 'echo should-not-run; sleep 60']}}
"#
    )
}

fn status_of(m: &MasterProcess, pod: &str) -> String {
    ok_stdout(&m.cli(&["get", "pods"]))
        .lines()
        .find(|l| l.starts_with(pod))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

fn init_state(m: &MasterProcess, pod: &str, name: &str) -> serde_json::Value {
    m.pod(pod).unwrap_or_default()["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .map(|c| c["state"].clone())
        .unwrap_or_default()
}

#[test]
fn init_containers_run_in_order_before_the_app_and_a_sidecar_stays() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-i", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));

    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(ORDERED)));
    assert!(
        eventually(Duration::from_secs(40), || {
            let out = m.cli(&["logs", "ordered", "-c", "app"]);
            String::from_utf8_lossy(&out.stdout).contains("app-started")
        }),
        "{:?}",
        m.pod("ordered")
    );
    let log = ok_stdout(&m.cli(&["logs", "ordered", "-c", "app"]));
    assert!(log.starts_with("one\ntwo\nside\napp-started"), "{log:?}");
    assert!(eventually(Duration::from_secs(10), || status_of(
        &m, "ordered"
    ) == "Running"));
    for name in ["first", "second"] {
        assert_eq!(
            init_state(&m, "ordered", name)["terminated"]["exitCode"],
            0,
            "{name}"
        );
    }
    // The sidecar runs beside the app, and keeps running.
    assert!(
        consistently(Duration::from_secs(2), || init_state(&m, "ordered", "side")
            ["running"]
            .is_object()),
        "{}",
        init_state(&m, "ordered", "side")
    );
    let pod = m.pod("ordered").unwrap();
    assert!(
        pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Initialized" && c["status"] == "True"),
        "{pod}"
    );

    // A failing init container: restarted with back-off, the app never starts.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&failing("stuck", "Always"))));
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = status_of(&m, "stuck");
            s == "Init:CrashLoopBackOff" || s == "Init:Error"
        }),
        "{}",
        status_of(&m, "stuck")
    );
    let p = m.pod("stuck").unwrap();
    assert!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{p}"
    );
    assert_eq!(p["status"]["phase"], "Pending");
    // With restartPolicy Never, the pod fails.
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&failing("never", "Never"))));
    assert!(
        eventually(Duration::from_secs(30), || m
            .pod_field("never", &["status", "phase"])
            == "Failed"),
        "{:?}",
        m.pod("never")
    );
    let out = m.cli(&["logs", "never", "-c", "app"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("should-not-run"));
}

#[test]
fn lifecycle_hooks_run_after_start_and_before_the_stop_signal() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-h", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m.ready_nodes() == 1));
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  nodeName: board-h
  terminationGracePeriodSeconds: 10
  volumes: [{{name: out, hostPath: {{path: {}}}}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'trap "echo term >> /out/log; exit 0" TERM; while true; do sleep 0.1; done']
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, 'echo poststart >> /out/log']}}}}
      preStop: {{exec: {{command: [sh, -c, 'sleep 0.5; echo prestop >> /out/log']}}}}
"#,
        out.display()
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pod)));
    assert!(
        eventually(Duration::from_secs(30), || m
            .pod_field("hooked", &["status", "phase"])
            == "Running"),
        "{:?}",
        m.pod("hooked")
    );
    let log = || std::fs::read_to_string(out.join("log")).unwrap_or_default();
    assert_eq!(
        log(),
        "poststart\n",
        "the postStart hook ran once the container started"
    );
    ok_stdout(&m.cli(&["delete", "pod", "hooked"]));
    assert!(
        eventually(Duration::from_secs(30), || m.pod("hooked").is_none()),
        "{:?}",
        m.pod("hooked")
    );
    // The preStop hook's write lands before the container's TERM handler's.
    assert_eq!(log(), "poststart\nprestop\nterm\n");

    // A postStart hook that fails: the container is killed and started again.
    let failing = pod.replace("name: hooked", "name: failing").replace(
        "echo poststart >> /out/log",
        "echo tried >> /out/tries; exit 1",
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&failing)));
    assert!(
        eventually(Duration::from_secs(40), || std::fs::read_to_string(
            out.join("tries")
        )
        .is_ok_and(|t| t.lines().count() >= 2)),
        "{:?}",
        m.pod("failing")
    );
    assert_ne!(m.pod_field("failing", &["status", "phase"]), "Running");
}
