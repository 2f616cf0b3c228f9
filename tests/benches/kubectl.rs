//! kubectl beside `bramble` against the same master (release binaries), in one run:
//! `get pods` of 1,000 pods (on hollow nodes), the round trip of an `exec -- true` into a
//! real busybox pod (kubectl 1.32 over a websocket, Debian's 1.20 over SPDY, `bramble` over
//! its own framing; all through the board's connection back to the master), and an exec
//! stream's throughput (100 MiB of the container's output to the client).
//!
//! Run with `scripts/bench` (as root: the exec part runs a real container).
//! `BRAMBLE_BENCH_KUBECTL_PODS` overrides the pod count, `BRAMBLE_BENCH_KUBECTL_RUNS` the
//! runs per figure (10).

#![allow(clippy::unwrap_used)] // a bench that cannot measure should stop loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bramble_tests::{
    AgentDirCleanup, AgentProcess, HollowProcess, MasterProcess, eventually, ok_stdout, percentile,
};

const DEBIAN_KUBECTL: &str = "/opt/bramble-test/kubectl-1.20";

/// The kubectls here: (label, path).
fn kubectls() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(path) = std::env::var("PATH")
        && let Some(k) = std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|k| k.is_file())
    {
        out.push(("kubectl (PATH)".to_string(), k));
    }
    if Path::new(DEBIAN_KUBECTL).exists() {
        out.push(("kubectl 1.20".to_string(), PathBuf::from(DEBIAN_KUBECTL)));
    }
    out
}

/// Median wall time (ms) of `runs` runs of a command that must succeed.
fn time_ms(runs: usize, mut make: impl FnMut() -> Command) -> f64 {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = make()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    percentile(v, 0.5)
}

/// MB/s of a command's stdout (at least `bytes` of it), median of `runs`.
fn throughput(runs: usize, bytes: u64, mut make: impl FnMut() -> Command) -> f64 {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = make()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = std::io::copy(&mut child.stdout.take().unwrap(), &mut std::io::sink()).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(n, bytes);
        v.push(n as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    percentile(v, 0.5)
}

fn kubectl(exe: &Path, kubeconfig: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env_remove("KUBECONFIG");
    c
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let pods = env("BRAMBLE_BENCH_KUBECTL_PODS", 1000);
    let runs = env("BRAMBLE_BENCH_KUBECTL_RUNS", 10).max(1);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let _c = AgentDirCleanup(dir.path().join("agent"));
    let m = MasterProcess::start(&dir.path().join("master")).unwrap();
    let kubeconfig = dir.path().join("master/kubeconfig.yaml");
    let client = dir.path().join("master/client.yaml");
    let bramble = |args: &[&str]| {
        let mut c = Command::new(bramble_tests::bin("bramble"));
        c.arg("--config").arg(&client).args(args);
        c
    };

    // 1,000 pods on hollow nodes (at most 100 a node).
    let nodes = pods.div_ceil(100).max(1);
    let _h = HollowProcess::start(&m, &dir.path().join("hollow"), "k", nodes, &[]).unwrap();
    assert!(eventually(Duration::from_secs(120), || m.ready_nodes() == nodes));
    let deploy = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: many}}\nspec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: many}}}}\n  template:\n    metadata: {{labels: {{app: many}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n"
    );
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&deploy)));
    assert!(
        eventually(Duration::from_secs(300), || m
            .http()
            .get("/apis/apps/v1/namespaces/default/deployments/many")
            .is_ok_and(|r| r.json()["status"]["readyReplicas"] == pods as u64)),
        "the {pods} pods never all ran"
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    let bramble_get = time_ms(runs, || bramble(&["get", "pods"]));
    rows.push((
        format!("`bramble get pods`, {pods} pods"),
        format!("{bramble_get:.0} ms"),
    ));
    for (label, exe) in kubectls() {
        let cache = tempfile::tempdir().unwrap();
        let ms = time_ms(runs, || {
            kubectl(&exe, &kubeconfig, cache.path(), &["get", "pods"])
        });
        rows.push((
            format!("`{label} get pods`, {pods} pods"),
            format!("{ms:.0} ms ({:.2}x bramble)", ms / bramble_get),
        ));
    }

    // A real pod for exec (root only).
    let euid = effective_uid();
    if euid == 0 {
        let _a = AgentProcess::start(&m, &dir.path().join("agent"), "board-a", &[]).unwrap();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: box}\nspec:\n  nodeName: board-a\n  terminationGracePeriodSeconds: 1\n  containers: [{name: main, image: busybox, command: [sleep, '3600']}]\n";
        ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(pod)));
        assert!(eventually(Duration::from_secs(60), || bramble(&[
            "exec", "box", "--", "true"
        ])
        .output()
        .is_ok_and(|o| o.status.success())));
        let b = time_ms(runs, || bramble(&["exec", "box", "--", "true"]));
        rows.push((
            "`bramble exec box -- true` round trip".into(),
            format!("{b:.0} ms"),
        ));
        for (label, exe) in kubectls() {
            let cache = tempfile::tempdir().unwrap();
            let ms = time_ms(runs, || {
                kubectl(
                    &exe,
                    &kubeconfig,
                    cache.path(),
                    &["exec", "box", "--", "true"],
                )
            });
            rows.push((
                format!("`{label} exec box -- true` round trip"),
                format!("{ms:.0} ms ({:.2}x bramble)", ms / b),
            ));
        }
        let bytes: u64 = 100 << 20;
        let cmd = ["exec", "box", "--", "head", "-c", "104857600", "/dev/zero"];
        let t = throughput(3, bytes, || bramble(&cmd));
        rows.push((
            "exec stream, 100 MiB of stdout: `bramble`".into(),
            format!("{t:.0} MB/s"),
        ));
        for (label, exe) in kubectls() {
            let cache = tempfile::tempdir().unwrap();
            let k = throughput(3, bytes, || kubectl(&exe, &kubeconfig, cache.path(), &cmd));
            rows.push((
                format!("exec stream, 100 MiB of stdout: `{label}`"),
                format!("{k:.0} MB/s ({:.2}x bramble)", k / t),
            ));
        }
    } else {
        eprintln!("not root: the exec figures need a real container, skipped");
    }
    println!("| benchmark (medians of {runs} runs; throughput of 3) | figure |");
    println!("|---|---|");
    for (name, figure) in rows {
        println!("| {name} | {figure} |");
    }
}

/// The effective uid, from /proc (no unsafe).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
