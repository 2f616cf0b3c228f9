//! Containers are hardened by default, and a pod's `securityContext` is honoured: a real
//! master and agent running busybox pods through libcontainer, as root.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::time::Duration;

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, ok_stdout, require_root,
};

fn pod(name: &str, script: &str, pod_sc: &str, container_sc: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: board-h
  terminationGracePeriodSeconds: 1
  {pod_sc}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, '{script}; echo DONE; exec sleep 3600']
    {container_sc}
"#
    )
}

/// The reason and message its first container waits with, if it waits.
fn waiting(m: &MasterProcess, name: &str) -> Option<(String, String)> {
    let p = m.pod(name)?;
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    Some((w["reason"].as_str()?.into(), w["message"].as_str()?.into()))
}

/// The pod's log once it printed DONE.
fn log_of(m: &MasterProcess, name: &str) -> String {
    let mut out = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            let o = m.cli(&["logs", name]);
            out = String::from_utf8_lossy(&o.stdout).to_string();
            out.contains("DONE")
        }),
        "{name} never finished: {out:?}, the previous instance's log {:?}; {:?}",
        String::from_utf8_lossy(&m.cli(&["logs", name, "-p"]).stdout),
        m.pod(name)
            .map(|p| p["status"]["containerStatuses"].clone())
    );
    out
}

/// A master and one agent (`board-h`, with `agent_args`) in a temporary directory. Fields
/// drop in order: the agent, then its directory's cleanup, then the master.
struct Board {
    _agent: AgentProcess,
    _cleanup: AgentDirCleanup,
    m: MasterProcess,
    agent_dir: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Board {
    fn start(agent_args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Board {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let agent_dir = dir.path().join("agent");
        let cleanup = AgentDirCleanup(agent_dir.clone());
        let m = MasterProcess::start(&dir.path().join("master")).unwrap();
        let args = agent_args(dir.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = AgentProcess::start(&m, &agent_dir, "board-h", &args).unwrap();
        Board {
            _agent: agent,
            _cleanup: cleanup,
            m,
            agent_dir,
            dir,
        }
    }
}

#[test]
fn containers_are_hardened_by_default_and_honour_their_security_context() {
    let b = Board::start(|d| {
        vec![
            "--pids-limit".into(),
            "64".into(),
            "--host-path-allow".into(),
            d.join("allowed").display().to_string(),
        ]
    });
    let (m, agent_dir, dir) = (&b.m, &b.agent_dir, &b.dir);
    // keyctl(2) (keyrings are not namespaced): busybox has no applet, so a static probe.
    let probe_c = dir.path().join("keyctl.c");
    std::fs::write(
        &probe_c,
        "#include <stdio.h>\n#include <errno.h>\n#include <unistd.h>\n#include <sys/syscall.h>\nint main(void) { long r = syscall(SYS_keyctl, 0, -3L, 0L); printf(\"keyctl=%ld errno=%d\\n\", r, r < 0 ? errno : 0); return 0; }\n",
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(agent_dir.join("images/busybox/rootfs/bin/keyctl-probe"))
        .arg(&probe_c)
        .status()
        .expect("cc is missing: apt-get install build-essential (scripts/setup does)");
    assert!(built.success(), "cannot build the keyctl probe");
    let pods = [
        pod(
            "plain",
            r#"grep -E "^(CapEff|Seccomp|NoNewPrivs):" /proc/self/status; unshare -U true; echo "unshare=$?"; mount -t tmpfs none /mnt; echo "mount=$?"; echo "kcore=$(cat /proc/kcore | wc -c)"; /bin/keyctl-probe; touch /written && echo "rootfs=rw""#,
            "",
            "",
        ),
        pod(
            "readonly",
            r#"touch /written; echo "touch=$?"; touch /tmp/x; echo "tmp=$?""#,
            "",
            "securityContext: {readOnlyRootFilesystem: true}",
        ),
        pod(
            "user",
            r#"echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"; touch /data/f && echo "data=$(stat -c %g /data) file=$(stat -c %g /data/f)""#,
            "securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}\n  volumes: [{name: data, emptyDir: {}}]",
            "volumeMounts: [{name: data, mountPath: /data}]",
        ),
        pod(
            "capable",
            r#"grep -E "^(CapEff|Seccomp|NoNewPrivs):" /proc/self/status; /bin/keyctl-probe"#,
            "",
            "securityContext: {allowPrivilegeEscalation: true, capabilities: {drop: [ALL], add: [NET_ADMIN]}, seccompProfile: {type: Unconfined}}",
        ),
        pod(
            "forkbomb",
            // A subshell forks: ash gives up at the first fork that fails, and the pod's own shell
            // must live to count.
            r#"(i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo "running=$#""#,
            "",
            "",
        ),
        pod(
            "nonroot",
            "true",
            "securityContext: {runAsNonRoot: true}",
            "",
        ),
    ];
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pods.join("---\n"))));

    // Docker's capability set, the seccomp filter and no_new_privs; what they forbid is
    // refused; /proc/kcore is masked; the root filesystem is writable by default.
    let plain = log_of(m, "plain");
    assert!(plain.contains("CapEff:\t00000000a80425fb"), "{plain}");
    assert!(plain.contains("Seccomp:\t2"), "{plain}");
    assert!(plain.contains("NoNewPrivs:\t1"), "{plain}");
    assert!(!plain.contains("unshare=0"), "{plain}");
    assert!(plain.contains("Operation not permitted"), "{plain}");
    assert!(!plain.contains("mount=0"), "{plain}");
    assert!(plain.contains("kcore=0"), "{plain}");
    assert!(
        plain.contains("keyctl=-1 errno=1"),
        "keyctl is refused with EPERM: {plain}"
    );
    assert!(plain.contains("rootfs=rw"), "{plain}");

    let ro = log_of(m, "readonly");
    assert!(
        !ro.contains("touch=0") && ro.contains("Read-only file system"),
        "{ro}"
    );
    assert!(
        ro.contains("tmp=1"),
        "/tmp is on the image's root too: {ro}"
    );

    let user = log_of(m, "user");
    assert!(user.contains("uid=1000 gid=3000"), "{user}");
    assert!(user.contains("4000") && user.contains("2000"), "{user}");
    // The emptyDir belongs to the fsGroup, and what the pod writes there too (setgid).
    assert!(user.contains("data=2000 file=2000"), "{user}");

    // Only NET_ADMIN (bit 12), no filter, privileges may be gained.
    let capable = log_of(m, "capable");
    assert!(capable.contains("CapEff:\t0000000000001000"), "{capable}");
    assert!(capable.contains("Seccomp:\t0"), "{capable}");
    assert!(capable.contains("NoNewPrivs:\t0"), "{capable}");
    assert!(
        capable.contains("keyctl=") && !capable.lines().any(|l| l.ends_with("errno=1")),
        "without the filter keyctl is not refused with EPERM: {capable}"
    );

    // The pids limit (64 on this board) stops a fork bomb well short of 200.
    let bomb = log_of(m, "forkbomb");
    let running: usize = bomb
        .lines()
        .find_map(|l| l.strip_prefix("running="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(running <= 64, "{bomb}");

    // A root image with runAsNonRoot does not start, and the status says why.
    assert!(
        eventually(Duration::from_secs(20), || waiting(m, "nonroot")
            .is_some_and(
                |(r, msg)| r == "CreateContainerConfigError" && msg.contains("runAsNonRoot")
            )),
        "{:?}",
        m.pod("nonroot").map(|p| p["status"].clone())
    );

    // The board's allow-list for hostPath: /etc is not on it.
    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: etc}\nspec:\n  nodeName: board-h\n  volumes: [{name: etc, hostPath: {path: /etc}}]\n  containers: [{name: main, image: busybox, command: [sleep, '3600'], volumeMounts: [{name: etc, mountPath: /host-etc}]}]\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(host)));
    assert!(
        eventually(Duration::from_secs(20), || waiting(m, "etc").is_some_and(
            |(r, msg)| r == "CreatePodSandboxError" && msg.contains("allow-list")
        )),
        "{:?}",
        m.pod("etc").map(|p| p["status"].clone())
    );

    // What Bramble does not implement under securityContext is refused by path.
    let out = m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod(
            "selinux",
            "true",
            "",
            "securityContext: {seLinuxOptions: {level: 's0:c1'}}",
        )),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("securityContext.seLinuxOptions"), "{err}");
    let out = m.cli_with_stdin(
        &["apply", "-f", "-"],
        Some(&pod(
            "badcap",
            "true",
            "",
            "securityContext: {capabilities: {add: [SYS_WIZARD]}}",
        )),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capabilities.add[0]"));
}

/// The fields of `/proc/PID/status` that say what a process may do.
const CONFINEMENT: [&str; 10] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
];

/// An exec (`bramble exec`, the path `kubectl exec` takes too) and an exec probe run as the
/// container's own process does: its user and groups, capabilities, seccomp filter,
/// no_new_privs and cgroup, never with the agent's root privileges.
#[test]
fn exec_runs_confined_as_the_container_is() {
    let b = Board::start(|_| Vec::new());
    let m = &b.m;
    let pods = [
        pod("plain", "true", "", ""),
        pod(
            "user",
            "true",
            "securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000]}",
            // Ready only if the probe runs as the container's user.
            "readinessProbe: {exec: {command: [sh, -c, 'test $(id -u) = 1000']}, periodSeconds: 1}",
        ),
        pod(
            "capable",
            "true",
            "",
            "securityContext: {allowPrivilegeEscalation: true, capabilities: {drop: [ALL], add: [NET_ADMIN]}, seccompProfile: {type: Unconfined}}",
        ),
    ];
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(&pods.join("---\n"))));
    for name in ["plain", "user", "capable"] {
        log_of(m, name);
        // PID 1 is the container's own process (sleep, exec'd by its shell).
        let out = m.cli(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "cat /proc/1/status; echo ====; cat /proc/self/status; echo ====; cat /proc/1/cgroup; echo ====; cat /proc/self/cgroup",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{name}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parts: Vec<&str> = text.split("====\n").collect();
        assert_eq!(parts.len(), 4, "{name}: {text}");
        let field = |status: &str, f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:")))
                .map(str::trim)
                .map(String::from)
        };
        for f in CONFINEMENT {
            let (init, exec) = (field(parts[0], f), field(parts[1], f));
            assert!(init.is_some(), "{name}: no {f} in {}", parts[0]);
            assert_eq!(
                exec, init,
                "{name}: the exec's {f} differs from the container's"
            );
        }
        assert_eq!(parts[3], parts[2], "{name}: the exec is in another cgroup");
        // And what that means, spelled out for the default profile.
        if name == "plain" {
            assert_eq!(
                field(parts[1], "CapEff").as_deref(),
                Some("00000000a80425fb")
            );
            assert_eq!(field(parts[1], "Seccomp").as_deref(), Some("2"));
        }
        if name == "user" {
            assert!(
                field(parts[1], "Uid").is_some_and(|u| u.starts_with("1000\t")),
                "{text}"
            );
            assert_eq!(
                field(parts[1], "CapEff").as_deref(),
                Some("0000000000000000")
            );
        }
    }
    // The exec probe ran as uid 1000: the pod is Ready.
    assert!(
        eventually(Duration::from_secs(20), || m.pod("user").is_some_and(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })),
        "{:?}",
        m.pod("user").map(|p| p["status"].clone())
    );
    // Exit codes: the command's own, and 127 for a command the image does not have.
    let out = m.cli(&["exec", "plain", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = m.cli(&["exec", "plain", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
}

/// `emptyDir.medium: Memory` is a tmpfs of `sizeLimit`, never the SD card, and goes with
/// the pod.
#[test]
fn a_memory_empty_dir_is_a_bounded_tmpfs_that_leaves_with_its_pod() {
    let b = Board::start(|_| Vec::new());
    let (m, agent_dir) = (&b.m, &b.agent_dir);
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: ram}
spec:
  nodeName: board-h
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 1Mi}}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'grep " /scratch " /proc/mounts; dd if=/dev/zero of=/scratch/big bs=1024 count=2048; echo "dd=$?"; echo DONE; exec sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
"#;
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(manifest)));
    let out = log_of(m, "ram");
    assert!(out.contains("tmpfs /scratch tmpfs"), "{out}");
    assert!(
        out.contains("No space left on device") && !out.contains("dd=0"),
        "{out}"
    );
    let uid = m.pod("ram").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!("pods/{uid}/volumes")))
    };
    assert!(mounted(), "the volume is a mount on the board");
    ok_stdout(&m.cli(&["delete", "pod", "ram"]));
    assert!(
        eventually(Duration::from_secs(20), || !mounted()
            && !agent_dir.join("pods").join(&uid).exists()),
        "the tmpfs or the pod's directory stayed after the pod"
    );
}

/// A disk-backed emptyDir past its sizeLimit gets its pod evicted, as the kubelet does:
/// Failed, reason Evicted, its container stopped and not started again.
#[test]
fn a_pod_whose_empty_dir_outgrows_its_size_limit_is_evicted() {
    let b = Board::start(|_| Vec::new());
    let m = &b.m;
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  nodeName: board-h
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: scratch, emptyDir: {sizeLimit: 1Mi}}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'dd if=/dev/zero of=/scratch/big bs=1024 count=3072; echo DONE; exec sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
"#;
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(manifest)));
    assert!(
        eventually(Duration::from_secs(30), || m.pod("hog").is_some_and(|p| {
            p["status"]["phase"] == "Failed"
                && p["status"]["reason"] == "Evicted"
                && p["status"]["message"]
                    .as_str()
                    .is_some_and(|s| s.contains("scratch") && s.contains("1Mi"))
                && p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()
        })),
        "{:?}",
        m.pod("hog").map(|p| p["status"].clone())
    );
    // Not started again.
    assert!(bramble_tests::consistently(Duration::from_secs(3), || m
        .pod("hog")
        .is_some_and(|p| p["status"]["phase"] == "Failed"
            && p["status"]["containerStatuses"][0]["state"]["running"]
                .is_null())));
}
