//! ConfigMaps and Secrets for real, as root: a master, an agent running busybox through
//! libcontainer, a pod that reads a ConfigMap and a Secret through env and files. The Secret's
//! value must reach the container (env and a tmpfs file) and nowhere else: not the master's
//! redb file, not the agent's data dir, not a log line.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::Duration;

use bramble_tests::{
    AgentDirCleanup, AgentProcess, MasterProcess, eventually, mounts_under, ok_stdout, require_root,
};

const SECRET: &str = "hunter2-f00d-5ecr37-value";

/// md5 of the Secret's value, as busybox prints it: what the container reports instead of
/// the value (its log is on the agent's disk).
fn md5_hex(text: &str) -> String {
    let out = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("printf %s '{text}' | md5sum")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: reader, labels: {app: reader}}
spec:
  nodeName: board-a
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    resources: {limits: {memory: 64Mi}}
    env:
    - {name: LIVES, valueFrom: {configMapKeyRef: {name: game, key: lives}}}
    - {name: PW, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: MISSING_OK, valueFrom: {secretKeyRef: {name: db, key: nope, optional: true}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    envFrom:
    - {prefix: G_, configMapRef: {name: game}}
    command: [sh, -c, 'trap "exit 0" TERM; while true; do echo "env=$LIVES file=$(cat /cfg/lives) g=$G_greeting pod=$POD_NAME mem=$MEM_MI opt=${MISSING_OK:-unset} pwmd5=$(printf %s "$PW" | md5sum | cut -d" " -f1) filemd5=$(md5sum < /sec/password | cut -d" " -f1) app=$(cat /info/labels)"; sleep 0.3; done']
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
  volumes:
  - {name: cfg, configMap: {name: game}}
  - {name: sec, secret: {secretName: db, defaultMode: 0400}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: "metadata.labels['app']"}}]}}
"#;

fn waiting(m: &MasterProcess) -> (String, String) {
    let p = m.pod("reader").unwrap_or_default();
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or("").to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    )
}

fn last_line(m: &MasterProcess) -> String {
    let out = m.cli(&["logs", "reader"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// Whether any regular file under `dir`, on `dir`'s own filesystem (not the tmpfs mounts
/// inside it), holds `needle`; returns the first such file.
fn file_with(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                return Some(p);
            }
        }
    }
    None
}

#[test]
fn configmaps_and_secrets_reach_the_container_and_the_secret_nothing_else() {
    require_root();
    // This binary holds one test: nothing else reads the environment meanwhile.
    #[allow(unsafe_code)]
    // SAFETY: no other thread of this test binary runs while these are set.
    unsafe {
        std::env::set_var("RUST_LOG", "debug");
        std::env::set_var("BRAMBLE_TEST_AGENT_LOGS", "1");
    }
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _c = AgentDirCleanup(agent_dir.clone());
    let master_log = dir.path().join("master.log");
    let m = MasterProcess::start_limited(&dir.path().join("master"), &[], None, Some(&master_log))
        .unwrap();
    let _a = AgentProcess::start(&m, &agent_dir, "board-a", &[]).unwrap();
    assert!(eventually(Duration::from_secs(20), || m
        .node_ready("board-a")
        .is_some_and(|r| r.0 == "True")));

    ok_stdout(&m.cli(&[
        "create",
        "configmap",
        "game",
        "--from-literal",
        "lives=3",
        "--from-literal",
        "greeting=hello",
    ]));
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(POD)));
    // The Secret does not exist: the container waits, naming it.
    assert!(
        eventually(Duration::from_secs(20), || waiting(&m).0
            == "CreateContainerConfigError"),
        "{:?}",
        m.pod("reader")
    );
    assert!(
        waiting(&m).1.contains("secret \"db\" not found"),
        "{:?}",
        waiting(&m)
    );
    let get = ok_stdout(&m.cli(&["get", "pods"]));
    assert!(get.contains("CreateContainerConfigError"), "{get}");

    // Created: the pod starts (a change of its data retries at once, not after back-off).
    ok_stdout(&m.cli(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal",
        &format!("password={SECRET}"),
    ]));
    let md5 = md5_hex(SECRET);
    assert!(
        eventually(Duration::from_secs(20), || last_line(&m).contains("env=3")),
        "{:?} / {}",
        m.pod("reader"),
        last_line(&m)
    );
    let line = last_line(&m);
    for want in [
        "env=3",
        "file=3",
        "g=hello",
        "pod=reader",
        "mem=64",
        "opt=unset",
        &format!("pwmd5={md5}"),
        &format!("filemd5={md5}"),
        "app=reader",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }

    // The volumes are tmpfs mounts on the board; the Secret's file is there, read-only
    // to others (0400).
    let uid = m.pod_field("reader", &["metadata", "uid"]);
    let vols = agent_dir.join("pods").join(&uid).join("volumes");
    let mounts = mounts_under(&vols);
    for v in ["cfg", "sec", "info"] {
        let p = vols.join(v).display().to_string();
        assert!(mounts.contains(&p), "{p} is not a mount: {mounts:?}");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sec_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(vols.join("sec").to_str().unwrap()))
        .unwrap();
    assert!(sec_mount.contains(" - tmpfs "), "{sec_mount}");
    assert_eq!(
        std::fs::read_to_string(vols.join("sec/password")).unwrap(),
        SECRET
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(vols.join("sec/password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    // An update of the ConfigMap reaches the file within seconds; the env keeps its value.
    let updated = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"4\", greeting: hello}\n";
    ok_stdout(&m.cli_with_stdin(&["apply", "-f", "-"], Some(updated)));
    assert!(
        eventually(Duration::from_secs(10), || last_line(&m).contains("file=4")),
        "{}",
        last_line(&m)
    );
    assert!(last_line(&m).contains("env=3"), "{}", last_line(&m));

    // describe shows sizes, never values; the reader role cannot read Secrets at all.
    let described = ok_stdout(&m.cli(&["describe", "secret", "db"]));
    assert!(
        described.contains(&format!("password:  {} bytes", SECRET.len())),
        "{described}"
    );
    assert!(!described.contains(SECRET), "{described}");
    let reader = m.http_as(&m.reader_token());
    assert_eq!(
        reader
            .get("/api/v1/namespaces/default/secrets/db")
            .unwrap()
            .code,
        403
    );
    assert_eq!(
        reader
            .get("/api/v1/namespaces/default/configmaps/game")
            .unwrap()
            .code,
        200
    );

    // Nowhere on disk but the tmpfs: not the master's store (in clear or base64), not the
    // agent's data dir, not a log line of either.
    let b64 = bramble_api::config::encode(SECRET.as_bytes());
    for needle in [SECRET, b64.as_str()] {
        assert_eq!(
            file_with(&dir.path().join("master"), needle.as_bytes()),
            None,
            "{needle}"
        );
        assert_eq!(file_with(&agent_dir, needle.as_bytes()), None, "{needle}");
        for log in [master_log.clone(), agent_dir.with_extension("log")] {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(!text.is_empty(), "{} is empty", log.display());
            assert!(!text.contains(needle), "{needle} in {}", log.display());
        }
    }

    // The pod goes: its tmpfs volumes go with it.
    ok_stdout(&m.cli(&["delete", "pod", "reader"]));
    assert!(
        eventually(Duration::from_secs(20), || mounts_under(&vols).is_empty()),
        "{:?}",
        mounts_under(&vols)
    );
}
