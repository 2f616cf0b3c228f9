//! Agent benchmarks (as root, release binaries): pod apply → Running latency over 50 pods,
//! container start through the shim beside `runc run -d` of the same bundle, agent RSS with
//! 0 and 10 pods, and bytes written to disk by master and agent over an idle minute.
//!
//! Run with `scripts/bench`. `BRAMBLE_BENCH_IDLE_SECS` shortens the idle window.

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bramble_agent::runtime::container::LibcontainerRuntime;
use bramble_agent::runtime::{ContainerSpec, Runtime, bundle};
use bramble_tests::{
    AgentProcess, MasterProcess, bin, busybox_image, cleanup_agent_dir, eventually, percentile,
    require_root, rss_mb,
};

fn row(name: &str, value: String, baseline: String, ratio: String) {
    println!("| {name} | {value} | {baseline} | {ratio} |");
}

fn write_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn pod_manifest(name: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}
    })
}

fn ready(m: &MasterProcess, pod: &str) -> bool {
    m.pod(pod)
        .is_some_and(|p| p["status"]["containerStatuses"][0]["ready"] == true)
}

fn end_to_end(dir: &std::path::Path) {
    let m = MasterProcess::start(&dir.join("master")).unwrap();
    let agent_dir = dir.join("agent");
    let a = AgentProcess::start(&m, &agent_dir, "bench", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("bench")
        .is_some_and(|r| r.0 == "True")));
    std::thread::sleep(Duration::from_secs(1));
    let agent_pid = a.child.id();
    let rss0 = rss_mb(agent_pid);
    let h = m.http();
    let mut lat = Vec::new();
    for i in 0..50 {
        let name = format!("lat-{i}");
        let body = serde_json::to_vec(&pod_manifest(&name, "bench")).unwrap();
        let t = Instant::now();
        let r = h
            .request(
                "PATCH",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                Some("application/apply-patch+json"),
                &body,
                true,
            )
            .unwrap();
        assert_eq!(r.code, 201);
        while !ready(&m, &name) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "pod {name} never became ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if i >= 10 {
            // Keep 10 pods for the footprint figures; remove the rest as we go.
            let r = h
                .request(
                    "DELETE",
                    &format!("/api/v1/namespaces/default/pods/{name}"),
                    None,
                    b"",
                    true,
                )
                .unwrap();
            assert!(r.code == 200 || r.code == 202);
        }
    }
    row(
        "pod apply -> Running (API to ready status), 50 pods",
        format!(
            "p50 {:.0} ms, p99 {:.0} ms",
            percentile(lat.clone(), 0.5),
            percentile(lat, 0.99)
        ),
        "-".into(),
        "-".into(),
    );
    assert!(eventually(Duration::from_secs(60), || {
        let v = h.get("/api/v1/namespaces/default/pods").unwrap().json();
        v["items"].as_array().unwrap().len() == 10
    }));
    std::thread::sleep(Duration::from_secs(2));
    let rss10 = rss_mb(agent_pid);
    row(
        "agent RSS (agent process only)",
        format!("{rss0:.1} MB with 0 pods, {rss10:.1} MB with 10"),
        "-".into(),
        "-".into(),
    );

    let idle: u64 = std::env::var("BRAMBLE_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (mw0, aw0) = (write_bytes(m.child.id()), write_bytes(agent_pid));
    std::thread::sleep(Duration::from_secs(idle));
    let (mw1, aw1) = (write_bytes(m.child.id()), write_bytes(agent_pid));
    row(
        &format!("bytes written to disk over {idle} s idle, 10 pods"),
        format!("master {} B, agent {} B", mw1 - mw0, aw1 - aw0),
        "-".into(),
        "-".into(),
    );
    drop(a);
    drop(m);
    cleanup_agent_dir(&agent_dir);
}

fn container_start_vs_runc(dir: &std::path::Path) {
    let data = dir.join("rt");
    busybox_image(&data.join("images")).unwrap();
    let rt = LibcontainerRuntime::new(
        &data,
        bin("bramble-agent"),
        bramble_agent::runtime::container::Limits {
            max_log_bytes: 1 << 20,
            pids: Some(bramble_agent::config::DEFAULT_PIDS_LIMIT),
        },
    )
    .unwrap();
    let spec = |i: usize| ContainerSpec {
        id: format!("b{i}-c-0"),
        pod_uid: format!("b{i}"),
        pod_name: format!("b{i}"),
        namespace: "default".into(),
        container: serde_json::from_value(
            serde_json::json!({"name": "c", "image": "busybox", "command": ["sleep", "3600"]}),
        )
        .unwrap(),
        image: bramble_agent::images::PreparedImage {
            layers: vec![data.join("images/busybox/rootfs")],
            config: Default::default(),
        },
        netns: None,
        volumes: vec![],
        hostname: format!("b{i}"),
        log_path: data.join(format!("logs/{i}.log")),
        security: Default::default(),
        files: Vec::new(),
        service_env: Vec::new(),
        share_pids: false,
    };
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..30 {
        let s = spec(i);
        let t = Instant::now();
        rt.start(&s).unwrap();
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        rt.signal(&s.id, libc::SIGKILL).unwrap();
        assert!(eventually(Duration::from_secs(10), || matches!(
            rt.observe(&s.id),
            bramble_agent::runtime::Observed::Exited(_)
        )));
        rt.remove(&s.id).unwrap();
        rt.remove_sandbox(&s.pod_uid).unwrap();
        if let Some(runc) = runc {
            // The same config.json, on a read-only view of the same image rootfs.
            let b = data.join(format!("runc/{i}"));
            std::fs::create_dir_all(&b).unwrap();
            // With the same seccomp profile (the default one); runc reads SCMP_CMP_MASKED_EQ
            // as (arg & value) == valueTwo, libcontainer the other way round.
            let mut seccomp =
                bramble_agent::runtime::security::default_profile(&s.security.capabilities);
            for rule in seccomp["syscalls"].as_array_mut().unwrap() {
                for arg in rule["args"].as_array_mut().into_iter().flatten() {
                    if arg["op"] == "SCMP_CMP_MASKED_EQ" {
                        let v = arg["value"].take();
                        arg["value"] = arg["valueTwo"].take();
                        arg["valueTwo"] = v;
                    }
                }
            }
            let mut cfg = bundle::config(
                &s,
                &data.join("images/busybox/rootfs"),
                bundle::Confinement {
                    user: (0, 0),
                    seccomp: Some(seccomp),
                    pids_limit: Some(bramble_agent::config::DEFAULT_PIDS_LIMIT),
                    pidns: None,
                },
            );
            cfg["root"]["readonly"] = serde_json::json!(true);
            cfg["linux"]["cgroupsPath"] = serde_json::json!(format!("/bramble-bench/runc{i}"));
            std::fs::write(b.join("config.json"), cfg.to_string()).unwrap();
            let id = format!("bramble-bench-{i}");
            let t = Instant::now();
            let st = Command::new(runc)
                .args(["run", "-d", "--bundle"])
                .arg(&b)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            theirs.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(st.success(), "runc run failed");
            let _ = Command::new(runc).args(["delete", "-f", &id]).status();
        }
    }
    let o = percentile(ours, 0.5);
    if theirs.is_empty() {
        row(
            "container start (shim + libcontainer)",
            format!("p50 {o:.1} ms"),
            "runc missing".into(),
            "-".into(),
        );
    } else {
        let r = percentile(theirs, 0.5);
        row(
            "container start, default seccomp profile: shim + libcontainer vs `runc run -d` with the same profile, 30 each",
            format!("p50 {o:.1} ms"),
            format!("runc p50 {r:.1} ms"),
            format!("{:.2}x runc's time", o / r),
        );
    }
    for d in std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|e| e.ok())
    {
        let p = d.path().join("bramble-bench");
        if let Ok(rd) = std::fs::read_dir(&p) {
            for c in rd.filter_map(|e| e.ok()) {
                let _ = std::fs::remove_dir(c.path());
            }
            let _ = std::fs::remove_dir(&p);
        }
    }
}

fn main() {
    require_root();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!("| benchmark | median | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    container_start_vs_runc(dir.path());
    end_to_end(dir.path());
}
