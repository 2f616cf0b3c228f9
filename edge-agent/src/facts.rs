//! What the node is: architecture, OS, kernel, CPUs, memory, cgroup version, address.

use std::net::UdpSocket;

use bramble_api::wire::NodeFacts;

use crate::config::Config;

/// Kubernetes' name (GOARCH) for this machine's architecture.
pub fn architecture() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_string()
}

/// The ARM variant (`v6`, `v7`, `v8`) of this machine, empty elsewhere.
pub fn variant() -> String {
    let machine = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    match machine.as_str() {
        "aarch64" | "arm64" => "v8",
        m if m.starts_with("armv7") => "v7",
        m if m.starts_with("armv6") => "v6",
        m if m.starts_with("armv5") => "v5",
        _ => "",
    }
    .to_string()
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The board's memory, in bytes (0 when /proc/meminfo does not say).
pub fn memory_total() -> u64 {
    meminfo("MemTotal:").unwrap_or(0)
}

/// Memory in use (total minus available), in bytes.
pub fn memory_used() -> u64 {
    match (meminfo("MemTotal:"), meminfo("MemAvailable:")) {
        (Some(t), Some(a)) => t.saturating_sub(a),
        _ => 0,
    }
}

/// 2 on a unified cgroup hierarchy, 1 on a legacy or hybrid one.
pub fn cgroup_version() -> u8 {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if fs_type(&s) == CGROUP2_SUPER_MAGIC => 2,
        _ => 1,
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The local address used to reach `host:port` (a UDP connect sends nothing).
pub fn route_address(host: &str, port: u16) -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((host, port)).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

/// Gathers the node's facts; `master` is the host and port the agent talks to.
pub fn gather(config: &Config, master: Option<(&str, u16)>) -> NodeFacts {
    let uts = nix::sys::utsname::uname().ok();
    let kernel = uts
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let hostname = uts
        .as_ref()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default();
    let (cpus, memory) = config.capacity_override.unwrap_or_else(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        (cpus, meminfo("MemTotal:").unwrap_or(0))
    });
    let address = config
        .node_ip
        .clone()
        .or_else(|| master.and_then(|(h, p)| route_address(h, p)))
        .unwrap_or_default();
    let mut labels = config.labels.clone();
    labels.retain(|(k, _)| k != "kubernetes.io/hostname");
    NodeFacts {
        hostname,
        address,
        architecture: architecture(),
        operating_system: "linux".into(),
        os_image: os_image(),
        kernel_version: kernel,
        cpus,
        memory_bytes: memory,
        cgroup_version: cgroup_version(),
        allocatable_cpu_millis: (u64::from(cpus) * 1000).saturating_sub(config.reserved_cpu),
        allocatable_memory_bytes: memory.saturating_sub(config.reserved_memory),
        max_pods: 110,
        labels,
        agent_version: format!("bramble-{}", env!("CARGO_PKG_VERSION")),
    }
}

/// The statfs magic number; its integer type differs between targets (i64 on x86_64 glibc,
/// narrower on 32-bit ARM), hence the cast.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn fs_type(s: &nix::sys::statfs::Statfs) -> i64 {
    s.filesystem_type().0 as i64
}
