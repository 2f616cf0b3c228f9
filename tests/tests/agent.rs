//! The first vertical slice, for real and as root: a real master (with its embedded broker)
//! and a real agent running busybox containers through libcontainer.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::{Duration, Instant};

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, consistently, container_pids, eventually,
    ok_stdout, pod_cgroups, pod_mounts_under, require_root, send_signal,
};

/// A pod that prints, then ticks; it exits at once on SIGTERM.
fn ticker(name: &str, node: &str, extra_container: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; echo hello from {name}; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done']
{extra_container}"#
    )
}

fn phase(m: &MasterProcess, pod: &str) -> String {
    m.pod(pod)
        .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn restarts(m: &MasterProcess, pod: &str) -> i64 {
    m.pod(pod)
        .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
        .unwrap_or(-1)
}

fn ready(m: &MasterProcess, pod: &str) -> bool {
    m.pod(pod)
        .is_some_and(|p| p["status"]["containerStatuses"][0]["ready"] == true)
}

#[test]
fn a_pod_runs_logs_restarts_and_is_cleaned_up() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _c = AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &dir.path().join("agent"), "board-a", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || m
            .node_ready("board-a")
            .is_some_and(|r| r.0 == "True")),
        "the node never became Ready"
    );
    // The data dir and the node's store (credential, desired pods) are root's alone,
    // whatever mode the directory was made with.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join("agent")), 0o700);
        assert_eq!(mode(dir.path().join("agent/agent.redb")), 0o600);
        assert_eq!(mode(dir.path().join("agent/credentials.json")), 0o600);
    }
    // The join token file (0600, from the harness) is gone once the agent has joined.
    assert!(
        !dir.path().join("agent.join-token").exists(),
        "the join token file is still on the board"
    );
    let nodes = ok_stdout(&m.cli(&["get", "nodes"]));
    assert!(
        nodes.contains("board-a") && nodes.contains("Ready"),
        "{nodes}"
    );
    let node = m.http().get("/api/v1/nodes/board-a").unwrap().json();
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        "board-a"
    );
    assert!(node["metadata"]["labels"]["kubernetes.io/arch"].is_string());
    let cgroup = node["metadata"]["labels"]["bramble.io/cgroup"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cgroup == "v1" || cgroup == "v2", "{cgroup}");
    assert!(
        node["status"]["nodeInfo"]["kernelVersion"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    assert!(node["status"]["allocatable"]["cpu"].is_string());
    assert!(node["status"]["capacity"]["memory"].is_string());

    let limits = "    resources: {limits: {memory: 48Mi, cpu: 250m}}\n";
    let manifest =
        ticker("web", "board-a", "").replace("    command:", &format!("{limits}    command:"));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manifest)));
    assert!(
        eventually(Duration::from_secs(30), || ready(&m, "web")),
        "pod never became ready: {:?}",
        m.pod("web")
    );
    assert_eq!(phase(&m, "web"), "Running");
    let uid = m.pod("web").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // Logs through the master and the agent.
    assert!(eventually(Duration::from_secs(10), || {
        let out = m.cli(&["logs", "web"]);
        String::from_utf8_lossy(&out.stdout).contains("hello from web")
    }));
    // Follow: new lines keep arriving on one stream.
    let mut follow = std::process::Command::new(bramble_tests::bin("bramble"))
        .args([
            "--server", &m.url, "--token", &m.token, "logs", "web", "-f", "--tail", "1",
        ])
        .args(m.ca_args())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .take(4)
            .collect::<Vec<_>>()
    });
    let got = eventually(Duration::from_secs(10), || lines.is_finished());
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(got, "bramble logs -f did not keep streaming");
    let lines = lines.join().unwrap();
    assert!(lines.iter().all(|l| l.starts_with("tick ")), "{lines:?}");
    let tail = ok_stdout(&m.cli(&["logs", "web", "--tail", "1"]));
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("tick "), "{tail:?}");

    // The memory limit is in the container's cgroup (v1 or v2).
    let limit_files: Vec<_> = pod_cgroups(&uid)
        .into_iter()
        .flat_map(|d| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
        })
        .flat_map(|c| [c.join("memory.limit_in_bytes"), c.join("memory.max")])
        .filter(|f| f.exists())
        .collect();
    assert!(
        !limit_files.is_empty(),
        "no memory cgroup for the container"
    );
    assert_eq!(
        std::fs::read_to_string(&limit_files[0]).unwrap().trim(),
        (48u64 << 20).to_string()
    );

    // Kill its process: it restarts, with back-off, and restartCount grows.
    let agent_dir = dir.path().join("agent");
    for round in 1..=2 {
        let pids = container_pids(&agent_dir);
        assert_eq!(
            pids.len(),
            1,
            "one running container expected, got {pids:?}"
        );
        send_signal(pids[0], libc::SIGKILL);
        assert!(
            eventually(Duration::from_secs(20), || restarts(&m, "web") >= round
                && ready(&m, "web")),
            "round {round}: no restart; {:?}",
            m.pod("web").map(|p| p["status"].clone())
        );
    }
    // The second crash backed off: the master recorded it as an Event.
    assert!(
        eventually(Duration::from_secs(10), || ok_stdout(
            &m.cli(&["get", "events"])
        )
        .contains("BackOff")),
        "{}",
        ok_stdout(&m.cli(&["get", "events"]))
    );
    let last =
        m.pod("web").unwrap()["status"]["containerStatuses"][0]["lastState"]["terminated"].clone();
    assert_eq!(last["exitCode"], 137, "{last}");
    assert!(ok_stdout(&m.cli(&["logs", "web", "--previous"])).contains("hello from web"));

    // Delete it: the agent stops it and nothing is left behind.
    ok_stdout(&m.cli(&["delete", "pod", "web"]));
    assert!(
        eventually(Duration::from_secs(30), || m.pod("web").is_none()),
        "the pod was never removed"
    );
    let containers = std::fs::read_dir(agent_dir.join("containers"))
        .unwrap()
        .count();
    assert_eq!(containers, 0, "container directories left behind");
    assert_eq!(
        std::fs::read_dir(agent_dir.join("netns")).unwrap().count(),
        0,
        "netns left behind"
    );
    assert!(
        !agent_dir.join("pods").join(&uid).exists(),
        "pod directory left behind"
    );
    assert!(
        pod_cgroups(&uid).is_empty(),
        "cgroups left behind: {:?}",
        pod_cgroups(&uid)
    );
    assert!(
        pod_mounts_under(&agent_dir).is_empty(),
        "mounts left behind: {:?}",
        pod_mounts_under(&agent_dir)
    );
    assert!(
        std::fs::read_dir(agent_dir.join("run")).unwrap().count() == 0,
        "libcontainer state left behind"
    );
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("shim --id {uid}")])
        .output()
        .unwrap();
    assert!(shims.stdout.is_empty(), "shim processes left behind");
}

#[test]
fn a_restarted_agent_readopts_its_containers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _c = AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let a = AgentProcess::start(&m, &dir.path().join("agent"), "board-b", &[]).unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&ticker("keep", "board-b", ""))));
    assert!(eventually(Duration::from_secs(30), || ready(&m, "keep")));
    let before = a.container_pids();
    assert_eq!(a.terminate(), Some(0));
    let a = AgentProcess::restart(&dir.path().join("agent"), "board-b", &[]).unwrap();
    // Over the new agent's first rounds (500 ms each), nothing is restarted.
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("board-b")
        .is_some_and(|r| r.0 == "True")));
    assert!(
        consistently(Duration::from_secs(2), || a.container_pids() == before),
        "the container was restarted instead of re-adopted: {:?} -> {:?}",
        before,
        a.container_pids()
    );
    assert_eq!(restarts(&m, "keep"), 0);
    assert!(ready(&m, "keep"));
}

#[test]
fn a_killed_agent_is_reported_lost_in_time() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _c = AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start_with(&dir.path().join("master"), &["--node-lost-after", "3s"])
        .unwrap();
    let a = AgentProcess::start(&m, &dir.path().join("agent"), "board-c", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("board-c")
        .is_some_and(|r| r.0 == "True")));
    let t = Instant::now();
    a.kill9();
    assert!(
        eventually(Duration::from_secs(5), || m
            .node_ready("board-c")
            .is_some_and(|r| r.0 == "False" && r.1 == "NodeLost")),
        "node not reported lost: {:?}",
        m.node_ready("board-c")
    );
    // The last will makes this near-immediate; the heartbeat timeout bounds it at 3s.
    assert!(
        t.elapsed() <= Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    let out = ok_stdout(&m.cli(&["get", "nodes"]));
    assert!(out.contains("NotReady"), "{out}");
}

#[test]
fn pods_keep_running_and_come_back_without_the_master() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let a = AgentProcess::start(&m, &agent_dir, "board-d", &[]).unwrap();
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&ticker("solo", "board-d", ""))));
    assert!(eventually(Duration::from_secs(30), || ready(&m, "solo")));
    let master_dir = m.data_dir.clone();
    assert_eq!(m.terminate(), Some(0));

    // Without the master, a killed container is restarted...
    let pids = a.container_pids();
    send_signal(pids[0], libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || a
            .container_pids()
            .first()
            .is_some_and(|p| *p != pids[0])),
        "not restarted without the master"
    );
    // ...and after an agent restart (still no master) the pod comes back from the local cache.
    assert_eq!(a.terminate(), Some(0));
    for p in container_pids(&agent_dir) {
        send_signal(p, libc::SIGKILL);
    }
    let a = AgentProcess::restart(&agent_dir, "board-d", &[]).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || !a.container_pids().is_empty()),
        "the pod did not come back from the local cache"
    );
    // When the master returns, the status flows again.
    let m = MasterProcess::start_with(
        &master_dir,
        &[
            "--mqtt-listen",
            &format!("127.0.0.1:{}", broker_port(&agent_dir)),
        ],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(30), || ready(&m, "solo")
        && restarts(&m, "solo") >= 1));
}

fn broker_port(agent_dir: &std::path::Path) -> u16 {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent_dir.join("credentials.json")).unwrap())
            .unwrap();
    c["mqttPort"].as_u64().unwrap() as u16
}

#[test]
fn containers_of_a_pod_share_network_and_volumes_and_host_network_works() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-e", &[]).unwrap();
    let host_dir = dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("greeting"), "from the host\n").unwrap();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: duo}}
spec:
  nodeName: board-e
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}, type: Directory}}
  containers:
  - name: server
    image: busybox
    command: [sh, -c, 'echo written-by-server > /shared/note; while true; do echo pong | nc -l -p 7070; done']
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: host, mountPath: /host, readOnly: true}}]
  - name: client
    image: busybox
    command: [sh, -c, 'while true; do echo "net:$(nc 127.0.0.1 7070 </dev/null) vol:$(cat /shared/note) host:$(cat /host/greeting) if:$(ls /sys/class/net | tr "\n" ,)"; sleep 0.3; done']
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: host, mountPath: /host, readOnly: true}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  nodeName: board-e
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'while true; do echo "if:$(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " " | tr "\n" ,)"; sleep 0.3; done']
"#,
        host = host_dir.display()
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&manifest)));
    let logs = |pod: &str, c: &str| {
        String::from_utf8_lossy(&m.cli(&["logs", pod, "-c", c, "--tail", "1"]).stdout).to_string()
    };
    assert!(
        eventually(Duration::from_secs(30), || {
            let l = logs("duo", "client");
            l.contains("net:pong")
                && l.contains("vol:written-by-server")
                && l.contains("host:from the host")
        }),
        "the client did not reach the server over the pod's loopback, or the volumes are not shared: {:?}",
        logs("duo", "client")
    );
    // The pod's own namespace holds only its loopback.
    assert!(
        logs("duo", "client").contains("if:lo,"),
        "{}",
        logs("duo", "client")
    );
    let host_ifs = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert!(
        eventually(Duration::from_secs(30), || logs("hostnet", "main")
            .matches(',')
            .count()
            == host_ifs),
        "hostNetwork pod should see the host's {host_ifs} interfaces: {}",
        logs("hostnet", "main")
    );
    // A read-only hostPath cannot be written from the container.
    let names = ok_stdout(&m.cli(&["get", "pods", "-o", "name"]));
    assert!(names.contains("pod/duo") && names.contains("pod/hostnet"));
    assert_eq!(
        std::fs::read_to_string(host_dir.join("greeting")).unwrap(),
        "from the host\n"
    );
}

#[test]
fn share_process_namespace_puts_a_pods_containers_in_one_pid_namespace() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-p", &[]).unwrap();
    // `look` prints PID 1's command and every process it can see.
    let pod = |name: &str, share: bool| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: board-p
  shareProcessNamespace: {share}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: busy, image: busybox, command: [sleep, '3601']}}
  - name: look
    image: busybox
    command: [sh, -c, 'while true; do echo "pid1:$(tr "\0" " " < /proc/1/cmdline) all:$(for p in /proc/[0-9]*; do tr "\0" " " < $p/cmdline; echo -n ,; done)"; sleep 0.3; done']
"#
        )
    };
    let both = format!("{}---\n{}", pod("shared", true), pod("apart", false));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&both)));
    let logs = |pod: &str| {
        String::from_utf8_lossy(&m.cli(&["logs", pod, "-c", "look", "--tail", "1"]).stdout)
            .to_string()
    };
    // Shared: the pause process is PID 1 and the other container's process is visible.
    assert!(
        eventually(Duration::from_secs(30), || logs("shared")
            .contains("sleep 3601")),
        "the other container's process is not visible: {:?} {:?}",
        logs("shared"),
        m.pod("shared")
    );
    let shared = logs("shared");
    assert!(
        shared.starts_with("pid1:") && shared.contains(" pause "),
        "PID 1 should be the pod's pause process: {shared:?}"
    );
    // Apart: each container has its own namespace, its own command PID 1.
    assert!(eventually(Duration::from_secs(30), || logs("apart")
        .contains("pid1:sh -c")));
    let apart = logs("apart");
    assert!(!apart.contains("sleep 3601"), "{apart:?}");
    // On the host: one pause process for the pod, gone with the pod (and its containers).
    let pauses = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| {
                let c = String::from_utf8_lossy(c);
                c.contains("\0pause\0") && c.contains(&*agent_dir.to_string_lossy())
            })
            .count()
    };
    assert_eq!(pauses(), 1);
    ok_stdout(&m.cli(&["delete", "pod", "shared"]));
    assert!(
        eventually(Duration::from_secs(20), || m.pod("shared").is_none()
            && pauses() == 0),
        "the pause process outlived its pod"
    );
}

#[test]
fn invalid_agent_configuration_exits_64_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    for args in [
        vec!["--node-name", "Not_Valid"],
        vec!["--server", "ftp://nowhere"],
        vec!["--heartbeat-interval", "often"],
        vec!["--labels", "novalue"],
    ] {
        let out = std::process::Command::new(bramble_tests::bin("bramble-agent"))
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(args[0]),
            "{args:?}"
        );
        assert!(
            !data.exists(),
            "nothing may be written for an invalid config"
        );
    }
    // Without credentials and without --server/--token, the agent says how to join.
    let out = std::process::Command::new(bramble_tests::bin("bramble-agent"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_two_replica_deployment_survives_the_sigkill_of_one_of_two_agents() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (a1_dir, a2_dir) = (dir.path().join("agent1"), dir.path().join("agent2"));
    let _c1 = AgentDirCleanup(a1_dir.clone());
    let _c2 = AgentDirCleanup(a2_dir.clone());
    let m = MasterProcess::start_with(
        &dir.path().join("master"),
        &["--node-lost-after", "2s", "--pod-eviction-timeout", "2s"],
    )
    .unwrap();
    let a1 = AgentProcess::start(&m, &a1_dir, "real-1", &[]).unwrap();
    let _a2 = AgentProcess::start(&m, &a2_dir, "real-2", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        ["real-1", "real-2"]
            .iter()
            .all(|n| m.node_ready(n).is_some_and(|r| r.0 == "True"))
    }));
    let manifest = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: pair}
spec:
  replicas: 2
  selector: {matchLabels: {app: pair}}
  template:
    metadata: {labels: {app: pair}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 0.2; done']
        resources: {requests: {cpu: 100m, memory: 16Mi}}
"#;
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(manifest)));
    let ready_on = |m: &MasterProcess| -> Vec<String> {
        let v = m
            .http()
            .get("/api/v1/namespaces/default/pods")
            .unwrap()
            .json();
        let mut nodes: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["status"]["containerStatuses"][0]["ready"] == true
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .collect();
        nodes.sort();
        nodes
    };
    assert!(
        eventually(Duration::from_secs(30), || ready_on(&m)
            == ["real-1", "real-2"]),
        "{:?}",
        ready_on(&m)
    );
    a1.kill9();
    assert!(
        eventually(Duration::from_secs(20), || ready_on(&m)
            == ["real-2", "real-2"]),
        "the lost replica was not replaced on the surviving board: {:?}",
        ready_on(&m)
    );
    assert_eq!(
        container_pids(&a2_dir).len(),
        2,
        "two real containers run on the surviving board"
    );
}

#[test]
fn probes_drive_readiness_and_restart_unhealthy_containers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-p", &[]).unwrap();
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  nodeName: board-p
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sh, -c, 'mkdir -p /www; echo ok > /www/index.html; sleep 2; exec httpd -f -p 8080 -h /www']
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, initialDelaySeconds: 4, periodSeconds: 1}
  - name: flaky
    image: busybox
    command: [sh, -c, 'sleep 2; touch /tmp/die; exec sleep 3600']
    livenessProbe: {exec: {command: [sh, -c, 'test ! -f /tmp/die']}, periodSeconds: 1, failureThreshold: 2}
"#;
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(manifest)));
    let status = |name: &str| -> Option<serde_json::Value> {
        m.pod("probed")?["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    // Running but not ready until the HTTP server answers.
    assert!(eventually(Duration::from_secs(20), || status("web")
        .is_some_and(|s| s["state"]["running"].is_object())));
    let early = status("web").unwrap();
    assert_eq!(
        early["ready"], false,
        "ready before its readiness probe passed: {early}"
    );
    assert!(
        eventually(Duration::from_secs(20), || status("web")
            .is_some_and(|s| s["ready"] == true)),
        "the HTTP readiness probe never passed: {:?}",
        status("web")
    );
    // The exec liveness probe fails once /tmp/die exists: the container is restarted.
    assert!(
        eventually(Duration::from_secs(30), || status("flaky")
            .is_some_and(|s| s["restartCount"].as_i64() >= Some(1))),
        "no restart after the liveness probe failed: {:?}",
        status("flaky")
    );
    assert_eq!(
        status("flaky").unwrap()["lastState"]["terminated"]["exitCode"],
        137
    );
    // The healthy container was never restarted (its TCP liveness probe passes).
    assert_eq!(status("web").unwrap()["restartCount"], 0);
}

#[test]
fn doctor_checks_this_board_and_explains() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bramble_tests::bin("bramble-agent"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // This machine runs containers: nothing required is missing.
    assert!(out.status.success(), "{text}");
    for check in [
        "memory cgroup: enabled",
        "namespaces:",
        "overlayfs: available",
        "free disk:",
        "clock:",
    ] {
        assert!(text.contains(check), "{check} missing from:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}

/// A log larger than one MQTT message: the read answers with the newest chunk that fits
/// (a chunk as large as the message limit itself was dropped on the wire, and the read
/// timed out with 503). The log is written by `yes | head`, which only ends because the
/// container's processes get SIGPIPE's default action (the agent's Rust runtime ignores it,
/// and an ignored signal used to be inherited: `yes` wrote to the closed pipe forever).
#[test]
fn a_log_larger_than_a_message_is_read() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _c = AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let _a = AgentProcess::start(&m, &dir.path().join("agent"), "board-a", &[]).unwrap();
    // 5 MiB of 100-byte lines (under the 10 MiB rotation), then a last line.
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  nodeName: board-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 52429 | cut -c1-99; grep SigIgn /proc/self/status; echo last line; exec sleep 3600']
"#;
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(manifest)));
    let path = "/api/v1/namespaces/default/pods/big/log";
    assert!(
        eventually(Duration::from_secs(60), || m
            .http()
            .get(path)
            .is_ok_and(|r| r.code == 200 && r.body.ends_with(b"last line\n"))),
        "the log never ended with its last line: {:?}",
        m.http().get(path).map(|r| (
            r.code,
            r.body.len(),
            String::from_utf8_lossy(&r.body[r.body.len().saturating_sub(300)..]).to_string()
        ))
    );
    let whole = m.http().get(path).unwrap();
    // No container process starts with SIGPIPE (signal 13, bit 12) ignored.
    let tail = String::from_utf8_lossy(&whole.body[whole.body.len() - 200..]).to_string();
    let ignored = tail
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line: {tail:?}"));
    assert_eq!(ignored & (1 << 12), 0, "SIGPIPE is ignored: {ignored:#x}");
    assert_eq!(
        whole.body.len() as u64,
        bramble_api::wire::MAX_LOG_CHUNK_BYTES,
        "a full chunk of the newest bytes"
    );
    // limitBytes above the chunk is capped to it; below, honoured.
    let capped = m.http().get(&format!("{path}?limitBytes=8388608")).unwrap();
    assert_eq!(capped.code, 200);
    assert_eq!(
        capped.body.len() as u64,
        bramble_api::wire::MAX_LOG_CHUNK_BYTES
    );
    let small = m.http().get(&format!("{path}?limitBytes=10")).unwrap();
    assert_eq!(small.body, b"last line\n");
    // The CLI reads the same.
    let out = m.cli(&["logs", "big"]);
    assert!(out.status.success());
    assert_eq!(
        out.stdout.len() as u64,
        bramble_api::wire::MAX_LOG_CHUNK_BYTES
    );
}
