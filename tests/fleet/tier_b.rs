//! Tier-B fleet test (as root): three boards that are real aarch64 kernels under
//! qemu-system-aarch64 (cortex-a72, 512 MiB), each booting Debian's arm64 kernel with an
//! initramfs of busybox and the cross-compiled agent, on a test LAN with a native master.
//! They boot, join as arm64 nodes, and each runs a pod from an imported arm64 image through
//! libcontainer, whose log the master reads back.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::{Duration, Instant};

use bramble_tests::netlab::{Lan, enter_netns};
use bramble_tests::oci::{archive, build_layout};
use bramble_tests::qemufleet::aarch64_agent;
use bramble_tests::vmfleet::{Vm, build_boot};
use bramble_tests::{MasterProcess, eventually, ok_stdout, require_root};

fn pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: demo:arm64
    command: [sh, -c, 'echo "hello from $(uname -m) on $(hostname)"; exec sleep 3600']
"#
    )
}

#[test]
fn real_aarch64_kernels_boot_join_and_run_a_pod() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent = aarch64_agent().unwrap();
    let boot = build_boot(dir.path(), &agent).unwrap();
    let layout = build_layout(&dir.path().join("image")).unwrap();
    let tar = dir.path().join("demo.tar");
    archive(&layout, &tar).unwrap();
    let mut lan = Lan::new().unwrap();
    let mhost = lan.host("m", 1).unwrap();
    enter_netns(&mhost.path).unwrap();
    let m = MasterProcess::start_on(&dir.path().join("master"), &mhost.ip, &[]).unwrap();
    ok_stdout(&m.cli(&["image", "import", tar.to_str().unwrap(), "--name", "demo"]));
    let t0 = Instant::now();
    let vms: Vec<Vm> = (1..=3)
        .map(|n| Vm::boot(&lan, n, &boot, &m.url, &m.join_token(), dir.path()).unwrap())
        .collect();
    let console = |vm: &Vm| std::fs::read_to_string(&vm.console).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(300), || m.ready_nodes() == 3),
        "{} of 3 VMs joined; consoles:\n{}",
        m.ready_nodes(),
        vms.iter()
            .map(&console)
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    println!("3 aarch64 VMs booted and joined in {:?}", t0.elapsed());
    for vm in &vms {
        let node = m
            .http()
            .get(&format!("/api/v1/nodes/{}", vm.name))
            .unwrap()
            .json();
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "arm64");
        assert_eq!(node["status"]["addresses"][0]["address"], vm.ip, "{node}");
        ok_stdout(&m.cli_with_stdin(
            &["apply", "-f", "-"],
            Some(&pod(&format!("hello-{}", vm.name), &vm.name)),
        ));
    }
    for vm in &vms {
        let p = format!("hello-{}", vm.name);
        let want = format!("hello from aarch64 on hello-{}", vm.name);
        let mut last = String::new();
        assert!(
            eventually(Duration::from_secs(300), || {
                let out = m.cli(&["logs", &p]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                last.contains(&want)
            }),
            "{p}: logs {last:?}; pod {:?}; console:\n{}",
            m.pod(&p).map(|p| p["status"].clone()),
            console(vm)
        );
    }
    println!(
        "a pod from the imported arm64 image ran on each VM; {:?} in all",
        t0.elapsed()
    );
    drop(vms);
    drop(m);
}
