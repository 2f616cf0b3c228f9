//! Pod spec → OCI runtime `config.json`: command and args, environment, working directory,
//! resource limits as cgroup settings, volumes as bind mounts, and the pod's namespaces.

use std::path::Path;

use bramble_api::image::ImageConfig;
use bramble_api::pod::Container;
use serde_json::{Value, json};

use super::ContainerSpec;

/// The CFS period; a CPU limit of N millicores is a quota of N * 100 µs per period.
const CPU_PERIOD_US: u64 = 100_000;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process's argv: `command` replaces the image's Entrypoint and `args` its Cmd, as in
/// Kubernetes (a `command` without `args` drops the image's Cmd too). A side-loaded rootfs
/// has no image config, so a container with nothing to run runs `sh`.
pub fn argv(c: &Container, image: &ImageConfig) -> Vec<String> {
    let mut v: Vec<String> = if c.command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        c.command.clone()
    };
    if !c.args.is_empty() {
        v.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        v.extend(image.cmd.clone().unwrap_or_default());
    }
    if v.is_empty() {
        v.push("sh".into());
    }
    v
}

/// An image's `User` names a user or group that its own rootfs does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} of the image is not in its /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} of the image is not in its /etc/group")]
    UnknownGroup(String),
}

/// The uid and gid of an image's `User` (`uid`, `uid:gid`, `name`, `name:group`), names
/// looked up in the container's own `/etc/passwd` and `/etc/group` under `rootfs`.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), UserError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| {
                let id = f[2].parse().ok()?;
                let gid = f.get(3).and_then(|x| x.parse().ok()).unwrap_or(id);
                Some((id, gid))
            })?
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_gid_of_uid(rootfs, n).unwrap_or(0)),
        Err(_) => lookup("etc/passwd", u).ok_or_else(|| UserError::UnknownUser(u.to_string()))?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    }
    Ok((uid, gid))
}

fn lookup_gid_of_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    })
}

/// The cgroup of a container, below Bramble's own parent.
pub fn cgroup_path(spec: &ContainerSpec) -> String {
    format!("/bramble/pod{}/{}", spec.pod_uid, spec.id)
}

/// Builds the OCI runtime config for a container whose rootfs is mounted at `rootfs`.
/// `user` is the process's uid and gid (from [`resolve_user`]).
/// What the runtime decided for one start, beside the container's own settings.
pub struct Confinement {
    /// The user and group it runs as.
    pub user: (u32, u32),
    /// The seccomp filter (OCI `linux.seccomp`); None: none.
    pub seccomp: Option<Value>,
    /// Processes and threads; None: no limit.
    pub pids_limit: Option<i64>,
    /// The pod's shared PID namespace to join; None: one of the container's own.
    pub pidns: Option<std::path::PathBuf>,
}

pub fn config(spec: &ContainerSpec, rootfs: &Path, confine: Confinement) -> Value {
    let user = confine.user;
    let sec = &spec.security;
    let c = &spec.container;
    let image = &spec.image.config;
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env.retain(|x| !x.starts_with("HOSTNAME="));
    env.push(format!("HOSTNAME={}", spec.hostname));
    for (k, v) in &spec.service_env {
        env.retain(|x| !x.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    for e in &c.env {
        env.retain(|x| !x.starts_with(&format!("{}=", e.name)));
        env.push(format!("{}={}", e.name, e.value));
    }
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": if sec.privileged { json!(["nosuid", "noexec", "nodev"]) } else { json!(["nosuid", "noexec", "nodev", "ro"]) }}),
    ];
    for (dest, file) in &spec.files {
        mounts.push(json!({"destination": dest, "type": "bind", "source": file, "options": ["bind", "rprivate"]}));
    }
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
    let pid = match &confine.pidns {
        Some(path) => json!({"type": "pid", "path": path}),
        None => json!({"type": "pid"}),
    };
    let mut namespaces = vec![
        pid,
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
    if let Some(n) = confine.pids_limit {
        resources["pids"] = json!({"limit": n});
    }
    let caps = &sec.capabilities;
    let mut linux = json!({
        "cgroupsPath": cgroup_path(spec),
        "resources": resources,
        "namespaces": namespaces,
    });
    if !sec.privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    if let Some(filter) = confine.seccomp {
        linux["seccomp"] = filter;
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.0, "gid": user.1, "additionalGids": sec.extra_groups},
            "args": argv(c, image),
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": sec.no_new_privileges
        },
        "root": {"path": rootfs, "readonly": sec.read_only_root},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": linux
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env_of(v: &Value) -> Vec<&str> {
        v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect()
    }

    fn spec(yaml: &str) -> ContainerSpec {
        let c: Container = serde_norway::from_str(yaml).unwrap();
        ContainerSpec {
            id: "uid1-main-0".into(),
            pod_uid: "uid1".into(),
            pod_name: "web".into(),
            namespace: "default".into(),
            container: c,
            image: Default::default(),
            netns: Some(PathBuf::from("/run/bramble/netns/uid1")),
            volumes: vec![(
                "data".into(),
                PathBuf::from("/var/lib/bramble/pods/uid1/volumes/data"),
            )],
            hostname: "web".into(),
            log_path: PathBuf::from("/tmp/log"),
            security: Default::default(),
            files: vec![(
                "/etc/resolv.conf".into(),
                PathBuf::from("/var/lib/bramble/pods/uid1/etc/resolv.conf"),
            )],
            service_env: vec![
                ("WEB_SERVICE_HOST".into(), "10.43.0.9".into()),
                ("A".into(), "from-service".into()),
            ],
            share_pids: false,
        }
    }

    fn confine(user: (u32, u32)) -> Confinement {
        Confinement {
            user,
            seccomp: None,
            pids_limit: None,
            pidns: None,
        }
    }

    #[test]
    fn command_args_env_and_limits() {
        let s = spec(
            "name: main\nimage: busybox\ncommand: [sh, -c]\nargs: ['echo hi']\nenv: [{name: A, value: '1'}, {name: PATH, value: /bin}]\nworkingDir: /tmp\nresources: {limits: {memory: 64Mi, cpu: 250m}, requests: {cpu: 100m}}\nvolumeMounts: [{name: data, mountPath: /data, readOnly: true}]\n",
        );
        let v = config(&s, Path::new("/c/rootfs"), confine((0, 0)));
        assert_eq!(v["process"]["args"], json!(["sh", "-c", "echo hi"]));
        let env = env_of(&v);
        assert!(
            env.contains(&"A=1") && env.contains(&"PATH=/bin") && env.contains(&"HOSTNAME=web")
        );
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        // Service links are there; the container's own env wins over them.
        assert!(env.contains(&"WEB_SERVICE_HOST=10.43.0.9"), "{env:?}");
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
        let resolv = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .unwrap();
        assert_eq!(
            resolv["source"],
            "/var/lib/bramble/pods/uid1/etc/resolv.conf"
        );
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
        let v = config(&s, Path::new("/c/rootfs"), confine((0, 0)));
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

    #[test]
    fn image_config_gives_defaults_with_kubernetes_semantics() {
        let img = ImageConfig {
            user: String::new(),
            env: Some(vec!["PATH=/opt/bin".into(), "MODE=prod".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into(), "--port=80".into()]),
            working_dir: "/srv".into(),
        };
        let argv_of = |yaml: &str| argv(&serde_norway::from_str(yaml).unwrap(), &img);
        assert_eq!(
            argv_of("name: a\nimage: x\n"),
            ["/entry", "serve", "--port=80"]
        );
        assert_eq!(
            argv_of("name: a\nimage: x\nargs: [check]\n"),
            ["/entry", "check"]
        );
        assert_eq!(argv_of("name: a\nimage: x\ncommand: [sh]\n"), ["sh"]);
        assert_eq!(
            argv_of("name: a\nimage: x\ncommand: [sh]\nargs: [-c, x]\n"),
            ["sh", "-c", "x"]
        );
        let mut s = spec("name: main\nimage: busybox\nenv: [{name: MODE, value: dev}]\n");
        s.image.config = img.clone();
        let v = config(&s, Path::new("/c/rootfs"), confine((1000, 100)));
        let env = env_of(&v);
        assert!(
            env.contains(&"PATH=/opt/bin")
                && env.contains(&"MODE=dev")
                && !env.contains(&"MODE=prod"),
            "{env:?}"
        );
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 100, "additionalGids": []})
        );
    }

    #[test]
    fn the_security_context_reaches_the_bundle() {
        use crate::runtime::security::{Security, default_profile};
        let mut s = spec("name: main\nimage: busybox\n");
        let hardened = config(
            &s,
            Path::new("/r"),
            Confinement {
                user: (0, 0),
                seccomp: Some(default_profile(&Security::default().capabilities)),
                pids_limit: Some(1024),
                pidns: None,
            },
        );
        assert_eq!(hardened["process"]["noNewPrivileges"], true);
        assert_eq!(hardened["root"]["readonly"], false);
        assert_eq!(hardened["linux"]["resources"]["pids"]["limit"], 1024);
        assert_eq!(
            hardened["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert!(
            hardened["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
        assert_eq!(
            hardened["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        s.security = Security {
            privileged: true,
            read_only_root: true,
            no_new_privileges: false,
            extra_groups: vec![2000],
            capabilities: vec!["CAP_SYS_ADMIN".into()],
            ..Security::default()
        };
        let v = config(&s, Path::new("/r"), confine((5, 6)));
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(v["root"]["readonly"], true);
        assert!(v["linux"].get("maskedPaths").is_none() && v["linux"].get("seccomp").is_none());
        assert_eq!(v["process"]["user"]["additionalGids"], json!([2000]));
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            json!(["CAP_SYS_ADMIN"])
        );
        assert!(v["linux"]["resources"].get("pids").is_none());
    }

    #[test]
    fn users_resolve_by_number_and_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |u: &str| resolve_user(u, dir.path());
        assert_eq!(r(""), Ok((0, 0)));
        assert_eq!(r("web"), Ok((1000, 1001)));
        assert_eq!(r("1000"), Ok((1000, 1001)));
        assert_eq!(r("4242"), Ok((4242, 0)));
        assert_eq!(r("web:staff"), Ok((1000, 50)));
        assert_eq!(r("7:8"), Ok((7, 8)));
        assert_eq!(
            r("nobody-here").unwrap_err().to_string(),
            r#"user "nobody-here" of the image is not in its /etc/passwd"#
        );
        assert_eq!(
            r("web:nogroup"),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }
}
