//! Pod spec → OCI runtime `config.json`: command and args, environment, working directory,
//! resource limits as cgroup settings, volumes as bind mounts, and the pod's namespaces.

use std::path::Path;

use bramble_api::pod::Container;
use serde_json::{Value, json};

use super::ContainerSpec;

/// The CFS period; a CPU limit of N millicores is a quota of N * 100 µs per period.
const CPU_PERIOD_US: u64 = 100_000;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a container gets, as Docker and containerd grant by default.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process's argv: `command` replaces the image entrypoint and `args` its cmd, as in
/// Kubernetes. A rootfs directory has no image config, so a container with neither runs `sh`.
pub fn argv(c: &Container) -> Vec<String> {
    let mut v: Vec<String> = c.command.clone();
    v.extend(c.args.iter().cloned());
    if v.is_empty() {
        v.push("sh".into());
    }
    v
}

/// The cgroup of a container, below Bramble's own parent.
pub fn cgroup_path(spec: &ContainerSpec) -> String {
    format!("/bramble/pod{}/{}", spec.pod_uid, spec.id)
}

/// Builds the OCI runtime config for a container whose rootfs is mounted at `rootfs`.
pub fn config(spec: &ContainerSpec, rootfs: &Path) -> Value {
    let c = &spec.container;
    let mut env: Vec<String> = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", spec.hostname),
    ];
    for e in &c.env {
        env.retain(|x| !x.starts_with(&format!("{}=", e.name)));
        env.push(format!("{}={}", e.name, e.value));
    }
    let cwd = if c.working_dir.is_empty() {
        "/".to_string()
    } else {
        c.working_dir.clone()
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &c.volume_mounts {
        let Some((_, host)) = spec.volumes.iter().find(|(n, _)| *n == m.name) else {
            continue;
        };
        let source = if m.sub_path.is_empty() {
            host.clone()
        } else {
            host.join(&m.sub_path)
        };
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.mount_path, "type": "bind", "source": source, "options": options}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &spec.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(mem) = c.resources.limits.get("memory") {
        resources["memory"] = json!({"limit": mem.value()});
    }
    let cpu_limit = c.resources.limits.get("cpu").map(|q| q.millis());
    let cpu_request = c
        .resources
        .requests
        .get("cpu")
        .map(|q| q.millis())
        .or(cpu_limit);
    let mut cpu = serde_json::Map::new();
    if let Some(m) = cpu_limit.filter(|m| *m > 0) {
        // At least 1 ms per period: the kernel's minimum quota.
        cpu.insert(
            "quota".into(),
            json!((m as u64 * CPU_PERIOD_US / 1000).max(1000)),
        );
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(m) = cpu_request.filter(|m| *m > 0) {
        // Kubernetes' shares: 1024 per CPU, at least 2.
        cpu.insert("shares".into(), json!((m as u64 * 1024 / 1000).max(2)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": argv(c),
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup_path(spec),
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(yaml: &str) -> ContainerSpec {
        let c: Container = serde_norway::from_str(yaml).unwrap();
        ContainerSpec {
            id: "uid1-main-0".into(),
            pod_uid: "uid1".into(),
            pod_name: "web".into(),
            namespace: "default".into(),
            container: c,
            image_rootfs: PathBuf::from("/images/busybox/rootfs"),
            netns: Some(PathBuf::from("/run/bramble/netns/uid1")),
            volumes: vec![(
                "data".into(),
                PathBuf::from("/var/lib/bramble/pods/uid1/volumes/data"),
            )],
            hostname: "web".into(),
            log_path: PathBuf::from("/tmp/log"),
        }
    }

    #[test]
    fn command_args_env_and_limits() {
        let s = spec(
            "name: main\nimage: busybox\ncommand: [sh, -c]\nargs: ['echo hi']\nenv: [{name: A, value: '1'}, {name: PATH, value: /bin}]\nworkingDir: /tmp\nresources: {limits: {memory: 64Mi, cpu: 250m}, requests: {cpu: 100m}}\nvolumeMounts: [{name: data, mountPath: /data, readOnly: true}]\n",
        );
        let v = config(&s, Path::new("/c/rootfs"));
        assert_eq!(v["process"]["args"], json!(["sh", "-c", "echo hi"]));
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"A=1") && env.contains(&"PATH=/bin") && env.contains(&"HOSTNAME=web")
        );
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert_eq!(v["process"]["cwd"], "/tmp");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 102);
        assert_eq!(v["linux"]["cgroupsPath"], "/bramble/poduid1/uid1-main-0");
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(net["path"], "/run/bramble/netns/uid1");
    }

    #[test]
    fn host_network_has_no_network_namespace_and_defaults_apply() {
        let mut s = spec("name: main\nimage: busybox\n");
        s.netns = None;
        let v = config(&s, Path::new("/c/rootfs"));
        assert!(
            !v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        );
        assert_eq!(v["process"]["args"], json!(["sh"]));
        assert!(v["linux"]["resources"].get("memory").is_none());
    }
}
