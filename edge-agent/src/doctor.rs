//! `bramble-agent doctor`: a preflight that checks what the agent needs from the board and
//! explains each problem with its fix. The checks are a pure function of a [`HostView`]
//! (what was read from /proc, /sys and the data dir), so they are unit-tested against
//! Raspberry Pi situations this machine does not have. The agent runs the same checks at
//! start and refuses to start on a fatal one.

use std::path::Path;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fatal,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// What to do about it (empty when fine).
    pub fix: String,
}

/// What the checks look at.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// /proc/cmdline.
    pub cmdline: String,
    /// True on a unified (v2) cgroup hierarchy.
    pub cgroup_v2: bool,
    /// v2: /sys/fs/cgroup/cgroup.controllers; v1: /proc/cgroups.
    pub cgroup_controllers: String,
    /// /proc/filesystems.
    pub filesystems: String,
    /// Namespaces present under /proc/self/ns.
    pub namespaces: Vec<String>,
    /// Kernel modules loaded or built in (from /sys/module).
    pub modules: Vec<String>,
    /// The kernel's build configuration (/proc/config.gz or /boot/config-RELEASE), if
    /// readable: a feature built in (`=y`) or available as a module (`=m`) counts even when
    /// /sys/module does not list it.
    pub kernel_config: String,
    /// Seconds since the epoch.
    pub now: i64,
    /// Free bytes on the data dir's filesystem.
    pub free_bytes: u64,
    /// Mount options of the data dir's filesystem.
    pub mount_options: String,
    /// Whether the iptables commands exist: (nft, legacy).
    pub iptables: (bool, bool),
    /// The master's API and broker addresses and whether each answered a TCP connect; None
    /// before the node has joined without --server.
    pub master: Option<Vec<(String, bool)>>,
    /// /proc/net/{udp,tcp,udp6,tcp6} concatenated: who holds port 53.
    pub sockets: String,
}

/// Whether a socket holds port 53 on every address (0.0.0.0 or ::), which keeps the
/// agent's cluster DNS from binding the bridge's address: from /proc/net's tables (UDP
/// sockets in state 07, TCP listeners in 0A).
pub fn wildcard_dns(sockets: &str) -> bool {
    sockets.lines().any(|l| {
        let mut cols = l.split_whitespace();
        let local = cols.nth(1).unwrap_or("");
        let state = cols.nth(1).unwrap_or("");
        let Some((addr, port)) = local.split_once(':') else {
            return false;
        };
        port == "0035" && addr.bytes().all(|b| b == b'0') && matches!(state, "07" | "0A")
    })
}

/// 2024-01-01: a board whose clock is earlier has no RTC and no time from the network yet.
const SANE_TIME: i64 = 1_704_067_200;

/// Whether a kernel feature is there: its module is loaded (or built in with a /sys/module
/// entry), or the kernel's configuration builds it in or as a module.
fn available(h: &HostView, module: &str, config_key: &str) -> bool {
    h.modules.iter().any(|m| m == module)
        || h.kernel_config.lines().any(|l| {
            l.strip_prefix(config_key)
                .and_then(|r| r.strip_prefix('='))
                .is_some_and(|v| v == "y" || v == "m")
        })
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn finding(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn memory_cgroup(h: &HostView) -> bool {
    if h.cgroup_v2 {
        h.cgroup_controllers
            .split_whitespace()
            .any(|c| c == "memory")
    } else {
        h.cgroup_controllers.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"memory") && f.get(3) == Some(&"1")
        })
    }
}

/// Every check, in a fixed order.
pub fn checks(h: &HostView) -> Vec<Check> {
    let mut out = Vec::new();
    // Memory cgroup: Raspberry Pi OS kernels ship it disabled.
    if memory_cgroup(h) {
        out.push(ok("memory cgroup", "enabled"));
    } else {
        let disabled = h
            .cmdline
            .split_whitespace()
            .any(|w| w == "cgroup_disable=memory");
        let mut fix = "add `cgroup_enable=memory cgroup_memory=1` to the single line of \
                       /boot/firmware/cmdline.txt (/boot/cmdline.txt on older Raspberry Pi OS) \
                       and reboot"
            .to_string();
        if disabled {
            fix.push_str(
                "; this kernel's command line has `cgroup_disable=memory` (newer Pi kernels \
                 append it): the enable flags must come after it, or remove it",
            );
        }
        out.push(finding(
            "memory cgroup",
            Level::Fatal,
            "the memory cgroup controller is not enabled: memory limits and OOM reporting cannot work",
            fix,
        ));
    }
    out.push(ok(
        "cgroup version",
        if h.cgroup_v2 {
            "v2 (unified)"
        } else {
            "v1 (legacy or hybrid)"
        },
    ));
    let missing_ns: Vec<&str> = ["mnt", "pid", "net", "ipc", "uts"]
        .into_iter()
        .filter(|n| !h.namespaces.iter().any(|x| x == n))
        .collect();
    if missing_ns.is_empty() {
        out.push(ok("namespaces", "mnt, pid, net, ipc, uts"));
    } else {
        out.push(finding(
            "namespaces",
            Level::Fatal,
            format!("missing: {}", missing_ns.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES (every Raspberry Pi OS and Debian kernel is)",
        ));
    }
    if h.filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"))
        || h.modules.iter().any(|m| m == "overlay")
    {
        out.push(ok("overlayfs", "available"));
    } else {
        out.push(finding(
            "overlayfs",
            Level::Fatal,
            "overlayfs is not available: container root filesystems are overlays of image layers",
            "`modprobe overlay` (and add `overlay` to /etc/modules to load it at boot)",
        ));
    }
    let net_missing: Vec<&str> = [
        ("bridge", "CONFIG_BRIDGE"),
        ("veth", "CONFIG_VETH"),
        ("nf_nat", "CONFIG_NF_NAT"),
        ("br_netfilter", "CONFIG_BRIDGE_NETFILTER"),
    ]
    .into_iter()
    .filter(|(m, key)| !available(h, m, key))
    .map(|(m, _)| m)
    .collect();
    if net_missing.is_empty() {
        out.push(ok(
            "pod network modules",
            "bridge, veth, nf_nat, br_netfilter",
        ));
    } else {
        out.push(finding(
            "pod network modules",
            Level::Warn,
            format!("not loaded: {}", net_missing.join(", ")),
            format!(
                "`modprobe {}` (usually loaded on demand; needed by pod networking and Services)",
                net_missing.join(" ")
            ),
        ));
    }
    out.push(match h.iptables {
        (true, _) => ok(
            "iptables",
            "nf_tables backend available (the proxy uses the backend that holds the host's rules)",
        ),
        (false, true) => ok("iptables", "legacy backend only"),
        (false, false) => finding(
            "iptables",
            Level::Warn,
            "iptables is not installed: Services cannot be programmed",
            "apt-get install iptables",
        ),
    });
    if h.now < SANE_TIME {
        out.push(finding(
            "clock",
            Level::Warn,
            format!("the clock says {} (before 2024): the board has no RTC and has not synced yet", bramble_api::time::format_rfc3339(h.now)),
            "enable time sync (`timedatectl set-ntp true`, or systemd-timesyncd / chrony) and wait for it; certificates and logs need a sane clock",
        ));
    } else {
        out.push(ok("clock", bramble_api::time::format_rfc3339(h.now)));
    }
    let gib = h.free_bytes as f64 / (1u64 << 30) as f64;
    out.push(if h.free_bytes < 200 << 20 {
        finding(
            "free disk",
            Level::Fatal,
            format!(
                "{:.0} MiB free in the data dir",
                h.free_bytes as f64 / (1u64 << 20) as f64
            ),
            "free space or point --data-dir at a larger disk: images and logs need room",
        )
    } else if h.free_bytes < 2 << 30 {
        finding(
            "free disk",
            Level::Warn,
            format!("{gib:.1} GiB free in the data dir"),
            "images fill SD cards quickly; set --image-cache-max-bytes or use a USB SSD",
        )
    } else {
        ok("free disk", format!("{gib:.1} GiB free"))
    });
    match &h.master {
        None => out.push(ok("master", "not joined yet and no --server given")),
        Some(addrs) => {
            let down: Vec<&str> = addrs
                .iter()
                .filter(|(_, up)| !up)
                .map(|(a, _)| a.as_str())
                .collect();
            if down.is_empty() {
                let all: Vec<&str> = addrs.iter().map(|(a, _)| a.as_str()).collect();
                out.push(ok("master", format!("reachable at {}", all.join(" and "))));
            } else {
                out.push(finding(
                    "master",
                    Level::Warn,
                    format!("no answer from {}", down.join(" and ")),
                    "check the master is running and that the network and firewall let this \
                     board reach its API (6443) and MQTT (1883) ports; pods keep running meanwhile",
                ));
            }
        }
    }
    if wildcard_dns(&h.sockets) {
        out.push(finding(
            "cluster DNS",
            Level::Warn,
            "another DNS server listens on port 53 on every address (0.0.0.0:53 or [::]:53), so \
             the agent cannot answer pods' DNS on the bridge's address",
            "bind that server to its own addresses only (dnsmasq: `bind-interfaces` with \
             `listen-address=` or `except-interface=bramble0`; systemd-resolved's stub on \
             127.0.0.53 is fine), or run the agent with --no-dns",
        ));
    } else {
        out.push(ok("cluster DNS", "port 53 is free on the bridge's address"));
    }
    if h.mount_options.split(',').any(|o| o == "strictatime") {
        out.push(finding(
            "SD-card wear",
            Level::Warn,
            "the data dir's filesystem updates access times on every read (strictatime)",
            "mount it with `noatime` in /etc/fstab",
        ));
    } else {
        out.push(ok(
            "SD-card wear",
            "no strictatime; the agent writes only on change",
        ));
    }
    out
}

/// Whether a TCP connection to `host:port` opens within 3 s.
fn reachable(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    (host, port).to_socket_addrs().is_ok_and(|mut a| {
        a.any(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).is_ok()
        })
    })
}

/// The master's API and broker addresses for this node, and whether they answer.
fn master_status(data_dir: &Path, server: Option<&str>) -> Option<Vec<(String, bool)>> {
    let creds = crate::join::load(data_dir).ok().flatten();
    let server = creds
        .as_ref()
        .map(|c| c.server.clone())
        .or(server.map(str::to_string))?;
    let (host, port) = crate::join::server_host(&server);
    let mut out = vec![(format!("{host}:{port} (API)"), reachable(&host, port))];
    if let Some(c) = creds {
        let b = c.broker_host();
        out.push((
            format!("{b}:{} (MQTT)", c.mqtt_port),
            reachable(&b, c.mqtt_port),
        ));
    }
    Some(out)
}

/// Reads what the checks need from this host. `server` (or the node's credentials) names
/// the master to probe; None skips the probe (the agent's own start must not wait on it).
pub fn read_host(data_dir: &Path, server: Option<Option<&str>>) -> HostView {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cgroup_v2 = crate::facts::cgroup_version() == 2;
    let list = |p: &str| -> Vec<String> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The nearest existing ancestor of the data dir tells its filesystem.
    let mut probe = data_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    // statvfs fields are 32-bit on 32-bit ARM boards.
    #[allow(clippy::unnecessary_cast)]
    let free_bytes = nix::sys::statvfs::statvfs(&probe)
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64)
        .unwrap_or(0);
    let mount_options = mount_options_of(&probe, &read("/proc/self/mountinfo"));
    let exists = |c: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(c).exists())
    };
    HostView {
        cmdline: read("/proc/cmdline"),
        cgroup_v2,
        cgroup_controllers: if cgroup_v2 {
            read("/sys/fs/cgroup/cgroup.controllers")
        } else {
            read("/proc/cgroups")
        },
        filesystems: read("/proc/filesystems"),
        namespaces: list("/proc/self/ns"),
        modules: list("/sys/module"),
        kernel_config: kernel_config(),
        now: bramble_api::time::now_secs(),
        free_bytes,
        mount_options,
        iptables: (
            exists("iptables-nft-restore"),
            exists("iptables-legacy-restore"),
        ),
        master: server.and_then(|s| master_status(data_dir, s)),
        sockets: [
            "/proc/net/udp",
            "/proc/net/tcp",
            "/proc/net/udp6",
            "/proc/net/tcp6",
        ]
        .map(read)
        .concat(),
    }
}

/// The mount options of the longest mount point containing `path`.
fn mount_options_of(path: &Path, mountinfo: &str) -> String {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((*f.get(4)?, *f.get(5)?))
        })
        .filter(|(mp, _)| p.starts_with(mp))
        .max_by_key(|(mp, _)| mp.len())
        .map(|(_, o)| o.to_string())
        .unwrap_or_default()
}

/// Prints the findings; returns whether none is fatal.
pub fn report(checks: &[Check]) -> bool {
    for c in checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fatal => "FAIL",
        };
        println!("{mark}  {}: {}", c.name, c.detail);
        if !c.fix.is_empty() {
            println!("      fix: {}", c.fix);
        }
    }
    !checks.iter().any(|c| c.level == Level::Fatal)
}

/// The running kernel's configuration, or empty.
fn kernel_config() -> String {
    use std::io::Read;
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f)
            .take(4 << 20)
            .read_to_string(&mut text)
            .is_ok()
        {
            return text;
        }
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HostView {
        HostView {
            cmdline: "console=tty1 root=/dev/mmcblk0p2".into(),
            cgroup_v2: true,
            cgroup_controllers: "cpuset cpu io memory pids".into(),
            filesystems: "nodev\tproc\nnodev\toverlay\n".into(),
            namespaces: ["mnt", "pid", "net", "ipc", "uts", "user"]
                .map(String::from)
                .to_vec(),
            modules: ["bridge", "veth", "nf_nat", "br_netfilter", "overlay"]
                .map(String::from)
                .to_vec(),
            kernel_config: String::new(),
            now: 1_790_000_000,
            free_bytes: 20 << 30,
            mount_options: "rw,noatime".into(),
            iptables: (true, true),
            master: Some(vec![("10.0.0.1:6443 (API)".into(), true)]),
            sockets: "  sl  local_address rem_address   st\n   0: 3500007F:0035 00000000:0000 0A 00000000:00000000\n   1: 012A0A0A:0035 00000000:0000 07 00000000:00000000\n".into(),
        }
    }

    #[test]
    fn a_dns_server_on_every_address_is_named() {
        let mut h = healthy();
        assert!(
            !wildcard_dns(&h.sockets),
            "127.0.0.53 and a bridge address are fine"
        );
        h.sockets
            .push_str("   2: 00000000:0035 00000000:0000 07 00000000:00000000 00000000 0\n");
        let cs = checks(&h);
        assert_eq!(level(&cs, "cluster DNS"), Level::Warn);
        let c = cs.iter().find(|c| c.name == "cluster DNS").unwrap();
        assert!(c.fix.contains("--no-dns"), "{c:?}");
        // A TCP listener on [::]:53 too; a connected socket from port 53 is not a server.
        assert!(wildcard_dns(
            "   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 0A\n"
        ));
        assert!(!wildcard_dns("   0: 00000000:0035 0100007F:9C40 01\n"));
    }

    fn level(cs: &[Check], name: &str) -> Level {
        cs.iter().find(|c| c.name == name).unwrap().level
    }

    #[test]
    fn a_healthy_board_passes() {
        let cs = checks(&healthy());
        assert!(cs.iter().all(|c| c.level == Level::Ok), "{cs:?}");
    }

    #[test]
    fn a_pi_kernel_without_the_memory_cgroup_is_fatal_with_the_cmdline_fix() {
        let mut h = healthy();
        h.cgroup_controllers = "cpuset cpu io pids".into();
        h.cmdline = "console=serial0 root=PARTUUID=1 cgroup_disable=memory".into();
        let cs = checks(&h);
        let c = cs.iter().find(|c| c.name == "memory cgroup").unwrap();
        assert_eq!(c.level, Level::Fatal);
        assert!(c.fix.contains("cgroup_enable=memory cgroup_memory=1"));
        assert!(c.fix.contains("cgroup_disable=memory"), "{}", c.fix);
        // v1: /proc/cgroups with memory disabled.
        let mut v1 = healthy();
        v1.cgroup_v2 = false;
        v1.cgroup_controllers =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t0\n".into();
        assert_eq!(level(&checks(&v1), "memory cgroup"), Level::Fatal);
        v1.cgroup_controllers = "memory\t4\t80\t1\n".into();
        assert_eq!(level(&checks(&v1), "memory cgroup"), Level::Ok);
    }

    #[test]
    fn built_in_network_features_count_from_the_kernel_config() {
        let mut h = healthy();
        h.modules = vec!["overlay".into()];
        assert_eq!(level(&checks(&h), "pod network modules"), Level::Warn);
        h.kernel_config = "CONFIG_BRIDGE=y\nCONFIG_VETH=m\nCONFIG_NF_NAT=y\n# CONFIG_BRIDGE_NETFILTER is not set\n".into();
        let cs = checks(&h);
        let c = cs.iter().find(|c| c.name == "pod network modules").unwrap();
        assert_eq!(c.level, Level::Warn);
        assert!(
            c.detail.contains("br_netfilter") && !c.detail.contains("veth"),
            "{}",
            c.detail
        );
        h.kernel_config.push_str("CONFIG_BRIDGE_NETFILTER=m\n");
        assert_eq!(level(&checks(&h), "pod network modules"), Level::Ok);
    }

    #[test]
    fn other_problems_are_named_with_their_level() {
        let mut h = healthy();
        h.filesystems = "nodev\tproc\n".into();
        h.modules.retain(|m| m != "overlay" && m != "veth");
        h.now = 86_400;
        h.free_bytes = 1 << 30;
        h.mount_options = "rw,strictatime".into();
        h.iptables = (false, false);
        h.namespaces.retain(|n| n != "pid");
        h.master = Some(vec![
            ("10.0.0.1:6443 (API)".into(), true),
            ("10.0.0.1:1883 (MQTT)".into(), false),
        ]);
        let cs = checks(&h);
        let m = cs.iter().find(|c| c.name == "master").unwrap();
        assert_eq!(m.level, Level::Warn);
        assert!(
            m.detail.contains("1883") && !m.detail.contains("6443"),
            "{}",
            m.detail
        );
        assert_eq!(level(&cs, "overlayfs"), Level::Fatal);
        assert_eq!(level(&cs, "namespaces"), Level::Fatal);
        assert_eq!(level(&cs, "pod network modules"), Level::Warn);
        assert_eq!(level(&cs, "clock"), Level::Warn);
        assert_eq!(level(&cs, "free disk"), Level::Warn);
        assert_eq!(level(&cs, "SD-card wear"), Level::Warn);
        assert_eq!(level(&cs, "iptables"), Level::Warn);
        h.free_bytes = 50 << 20;
        assert_eq!(level(&checks(&h), "free disk"), Level::Fatal);
    }

    #[test]
    fn mount_options_come_from_the_closest_mount_point() {
        let mi = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                  30 22 8:2 / /var/lib rw,noatime shared:2 - ext4 /dev/sda2 rw\n";
        assert_eq!(
            mount_options_of(Path::new("/var/lib/bramble"), mi),
            "rw,noatime"
        );
        assert_eq!(mount_options_of(Path::new("/home"), mi), "rw,relatime");
    }

    #[test]
    fn this_machine_reads_and_passes_the_fatal_checks() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 9 of this machine's loopback.
        let h = read_host(dir.path(), Some(Some("http://127.0.0.1:9")));
        assert_eq!(
            h.master,
            Some(vec![("127.0.0.1:9 (API)".to_string(), false)])
        );
        let cs = checks(&h);
        let fatal: Vec<&Check> = cs.iter().filter(|c| c.level == Level::Fatal).collect();
        assert!(fatal.is_empty(), "{fatal:?}");
        assert!(h.free_bytes > 0 && !h.namespaces.is_empty());
    }
}
