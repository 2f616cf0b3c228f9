//! The real runtime: one `bramble-agent shim` process per container, libcontainer inside it.
//!
//! Per container, `<data>/bundles/<id>/config.json` is the OCI bundle, on a tmpfs the agent
//! mounts (the environment in it may hold a Secret's values, which never go to the SD card),
//! and `<data>/containers/<id>/` holds `rootfs/` (an overlay of the image's rootfs with
//! `upper/` and `work/`), `shim.log`, `shim.pid`,
//! `pid.json` (init pid and start time, once running) and `exit.json` (once ended). These
//! files are the whole protocol between agent and shim, so a restarted agent re-adopts
//! running containers by reading them.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::security::{self, Seccomp};
use super::{
    ContainerError, ContainerSpec, Exit, Observed, ProbeError, Runtime, RuntimeError, bundle,
    sandbox,
};

/// How long `start` waits for the shim to report the container running (or failed).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The board's limits on every container.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rotate a container's log past this many bytes.
    pub max_log_bytes: u64,
    /// Processes and threads per container; None: no limit.
    pub pids: Option<i64>,
}

/// Paths and settings of the libcontainer runtime.
pub struct LibcontainerRuntime {
    containers: PathBuf,
    /// The bundles' tmpfs.
    bundles: PathBuf,
    state_root: PathBuf,
    netns_dir: PathBuf,
    /// The PID namespaces of pods that share one (`shareProcessNamespace`).
    pidns_dir: PathBuf,
    /// The board's `Localhost` seccomp profiles (`<data-dir>/seccomp`).
    seccomp_dir: PathBuf,
    shim_exe: PathBuf,
    max_log_bytes: u64,
    pids_limit: Option<i64>,
    /// Shims this agent process spawned, reaped when they exit.
    shims: Mutex<HashMap<String, Child>>,
}

impl LibcontainerRuntime {
    /// A runtime keeping its files under `data_dir`; `shim_exe` is this agent's binary.
    pub fn new(data_dir: &Path, shim_exe: PathBuf, limits: Limits) -> Result<Self, RuntimeError> {
        let containers = data_dir.join("containers");
        let state_root = data_dir.join("run");
        let netns_dir = data_dir.join("netns");
        let bundles = data_dir.join("bundles");
        for d in [&containers, &state_root, &netns_dir, &bundles] {
            std::fs::create_dir_all(d).map_err(RuntimeError::io(d.display().to_string()))?;
        }
        if !sandbox::is_mount_point(&bundles) {
            // Memory only: a bundle carries the container's environment. A few KiB each.
            mount(
                Some("tmpfs"),
                &bundles,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700,size=16m"),
            )
            .map_err(|e| RuntimeError::io(format!("tmpfs on {}", bundles.display()))(e.into()))?;
        }
        Ok(LibcontainerRuntime {
            containers,
            bundles,
            state_root,
            netns_dir,
            pidns_dir: data_dir.join("pidns"),
            seccomp_dir: data_dir.join("seccomp"),
            shim_exe,
            max_log_bytes: limits.max_log_bytes,
            pids_limit: limits.pids,
            shims: Mutex::default(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.containers.join(id)
    }

    fn read_pid(&self, id: &str) -> Option<(i32, i64)> {
        let text = std::fs::read_to_string(self.dir(id).join("pid.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some((
            v["pid"].as_i64()? as i32,
            v["startedAt"].as_i64().unwrap_or(0),
        ))
    }

    fn read_exit(&self, id: &str) -> Option<Exit> {
        let text = std::fs::read(self.dir(id).join("exit.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether this container's shim process is alive.
    fn shim_alive(&self, id: &str) -> bool {
        if let Ok(mut shims) = self.shims.lock()
            && let Some(child) = shims.get_mut(id)
        {
            match child.try_wait() {
                Ok(None) => return true,
                _ => {
                    shims.remove(id);
                    return false;
                }
            }
        }
        // Spawned by an earlier agent process: look at the recorded pid.
        std::fs::read_to_string(self.dir(id).join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(|pid| process_alive(pid, "bramble-agent"))
    }

    fn remove_pod_cgroups(&self, uid: &str) {
        let rel = format!("bramble/pod{uid}");
        let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(&rel)];
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            dirs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path().join(&rel)));
        }
        for d in dirs {
            if d.is_dir() {
                // Leaf cgroups are removed by their shims; what is left is empty.
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.filter_map(|e| e.ok()) {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
                if let Err(e) = std::fs::remove_dir(&d) {
                    tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove a pod cgroup");
                }
            }
        }
    }
}

/// Whether `pid` is alive and its command line contains `name` (guards against pid reuse).
fn process_alive(pid: i32, name: &str) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is not alive.
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    if name.is_empty() {
        return true;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(name.len()).any(|w| w == name.as_bytes()))
        .unwrap_or(false)
}

/// CPU time (ns) and memory working set (bytes) of the cgroup at `rel` (v2, else v1).
fn cgroup_usage(rel: &str) -> Option<(u64, u64)> {
    let read = |p: String| std::fs::read_to_string(p).ok();
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    let v2 = format!("/sys/fs/cgroup/{rel}");
    if let Some(cpu) = read(format!("{v2}/cpu.stat")) {
        let cpu_ns = field(&cpu, "usage_usec ")? * 1000;
        let current: u64 = read(format!("{v2}/memory.current"))?.trim().parse().ok()?;
        let inactive = read(format!("{v2}/memory.stat"))
            .and_then(|t| field(&t, "inactive_file "))
            .unwrap_or(0);
        return Some((cpu_ns, current.saturating_sub(inactive)));
    }
    let cpu_ns: u64 = read(format!("/sys/fs/cgroup/cpuacct/{rel}/cpuacct.usage"))?
        .trim()
        .parse()
        .ok()?;
    let usage: u64 = read(format!("/sys/fs/cgroup/memory/{rel}/memory.usage_in_bytes"))?
        .trim()
        .parse()
        .ok()?;
    let inactive = read(format!("/sys/fs/cgroup/memory/{rel}/memory.stat"))
        .and_then(|t| field(&t, "total_inactive_file "))
        .unwrap_or(0);
    Some((cpu_ns, usage.saturating_sub(inactive)))
}

impl Runtime for LibcontainerRuntime {
    fn probe(
        &self,
        id: &str,
        netns: Option<&Path>,
        action: &super::ProbeAction,
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        if self.read_pid(id).is_none() {
            return Err(ProbeError::NotRunning);
        }
        super::probe::run(netns, action, timeout, || self.exec_target(id))
    }
    fn usage(&self, id: &str) -> Option<(u64, u64)> {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.bundles.join(id).join("config.json")).ok()?)
                .ok()?;
        let rel = config
            .pointer("/linux/cgroupsPath")?
            .as_str()?
            .trim_start_matches('/')
            .to_string();
        cgroup_usage(&rel)
    }

    fn exec_target(&self, id: &str) -> Result<super::ExecTarget, ProbeError> {
        let pid = self
            .read_pid(id)
            .map(|(p, _)| p)
            .ok_or(ProbeError::NotRunning)?;
        if self.read_exit(id).is_some() {
            return Err(ProbeError::NotRunning);
        }
        let config_path = self.bundles.join(id).join("config.json");
        let config: serde_json::Value = std::fs::read(&config_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(ProbeError::NotRunning)?;
        let env = config["process"]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(super::ExecTarget {
            pid,
            env,
            config: config_path,
            helper: self.shim_exe.clone(),
        })
    }
    fn create_sandbox(
        &self,
        pod_uid: &str,
        host_network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        if host_network {
            return Ok(None);
        }
        let p = self.netns_dir.join(pod_uid);
        sandbox::create_netns(pod_uid, &p)?;
        Ok(Some(p))
    }

    fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        sandbox::remove_ns_file(pod_uid, &self.netns_dir.join(pod_uid))?;
        super::pause::remove(pod_uid, &self.pidns_dir.join(pod_uid))?;
        self.remove_pod_cgroups(pod_uid);
        Ok(())
    }

    fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let dir = self.dir(&spec.id);
        if dir.join("exit.json").exists() || dir.join("pid.json").exists() {
            return Ok(());
        }
        let rootfs = dir.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(RuntimeError::io(d.display().to_string()))?;
        }
        let cerr = |source: ContainerError| RuntimeError::Container {
            id: spec.id.clone(),
            source,
        };
        if let Some(missing) = spec.image.layers.iter().find(|l| !l.is_dir()) {
            return Err(cerr(ContainerError::LayerMissing(missing.clone())));
        }
        if spec.image.layers.is_empty() {
            return Err(cerr(ContainerError::NoLayers));
        }
        if !sandbox::is_mount_point(&rootfs) {
            // overlayfs lists lower directories top first.
            let lowers: Vec<String> = spec
                .image
                .layers
                .iter()
                .rev()
                .map(|l| l.display().to_string())
                .collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lowers.join(":"),
                upper.display(),
                work.display()
            );
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| cerr(ContainerError::MountRootfs(e)))?;
        }
        let image_user =
            bundle::resolve_user(&spec.image.config.user, &rootfs).map_err(|e| cerr(e.into()))?;
        let user = spec.security.user(image_user);
        if let Some(why) = spec.security.refuse_root(user.0) {
            return Err(cerr(ContainerError::Config(why)));
        }
        let seccomp = match &spec.security.seccomp {
            Seccomp::RuntimeDefault => Some(security::default_profile(&spec.security.capabilities)),
            Seccomp::Unconfined => None,
            Seccomp::Localhost(rel) => {
                let path = self.seccomp_dir.join(rel);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    cerr(ContainerError::Config(format!(
                        "seccomp profile {}: {e}",
                        path.display()
                    )))
                })?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    cerr(ContainerError::Config(format!(
                        "seccomp profile {}: not a seccomp profile: {e}",
                        path.display()
                    )))
                })?)
            }
        };
        let pidns = if spec.share_pids {
            let path = self.pidns_dir.join(&spec.pod_uid);
            super::pause::create(&spec.pod_uid, &path, &self.shim_exe)?;
            Some(path)
        } else {
            None
        };
        let config = bundle::config(
            spec,
            &rootfs,
            bundle::Confinement {
                user,
                seccomp,
                pids_limit: self.pids_limit,
                pidns,
            },
        );
        let bundle_dir = self.bundles.join(&spec.id);
        std::fs::create_dir_all(&bundle_dir)
            .and_then(|()| std::fs::write(bundle_dir.join("config.json"), config.to_string()))
            .map_err(RuntimeError::io(format!(
                "{}/config.json",
                bundle_dir.display()
            )))?;
        let shim_log =
            std::fs::File::create(dir.join("shim.log")).map_err(RuntimeError::io("shim.log"))?;
        let shim_err = shim_log.try_clone().map_err(RuntimeError::io("shim.log"))?;
        let child = Command::new(&self.shim_exe)
            .arg("shim")
            .args(["--id", &spec.id])
            .arg("--state-root")
            .arg(&self.state_root)
            .arg("--bundle")
            .arg(&bundle_dir)
            .arg("--log")
            .arg(&spec.log_path)
            .args(["--max-log-bytes", &self.max_log_bytes.to_string()])
            .arg("--pid-file")
            .arg(dir.join("pid.json"))
            .arg("--exit-file")
            .arg(dir.join("exit.json"))
            // Its own process group: a Ctrl-C or a stop of the agent does not reach it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(shim_log)
            .stderr(shim_err)
            .spawn()
            .map_err(|e| cerr(ContainerError::SpawnShim(e)))?;
        let _ = std::fs::write(dir.join("shim.pid"), child.id().to_string());
        if let Ok(mut shims) = self.shims.lock() {
            shims.insert(spec.id.clone(), child);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if dir.join("pid.json").exists() || dir.join("exit.json").exists() {
                return Ok(());
            }
            if !self.shim_alive(&spec.id) {
                let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                return Err(cerr(ContainerError::ShimExited {
                    log: log.trim().to_string(),
                }));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(cerr(ContainerError::StartTimeout))
    }

    fn observe(&self, id: &str) -> Observed {
        if let Some(exit) = self.read_exit(id) {
            // Reap the shim if it was ours.
            self.shim_alive(id);
            return Observed::Exited(exit);
        }
        let shim = self.shim_alive(id);
        match self.read_pid(id) {
            Some((pid, started_at)) if process_alive(pid, "") => Observed::Running { started_at },
            _ if shim => Observed::Starting,
            // The shim may have written exit.json between the two reads.
            _ => self
                .read_exit(id)
                .map_or(Observed::Missing, Observed::Exited),
        }
    }

    fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let Some((pid, _)) = self.read_pid(id) else {
            return Ok(());
        };
        let sig = Signal::try_from(signal).map_err(|e| RuntimeError::Container {
            id: id.into(),
            source: ContainerError::Signal(e),
        })?;
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(source) => Err(RuntimeError::Container {
                id: id.into(),
                source: ContainerError::Kill { pid, source },
            }),
        }
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        if sandbox::is_mount_point(&rootfs) {
            umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|e| RuntimeError::Container {
                id: id.into(),
                source: ContainerError::UnmountRootfs(e),
            })?;
        }
        let _ = std::fs::remove_dir_all(self.bundles.join(id));
        // A shim that died mid-way may leave libcontainer's state behind.
        let state = self.state_root.join(id);
        if state.exists() {
            let _ = std::fs::remove_dir_all(&state);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(dir.display().to_string())(e)),
        }
    }
}
