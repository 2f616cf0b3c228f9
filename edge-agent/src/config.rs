//! `bramble-agent` flags and config file, validated into one [`Config`] before anything is
//! started or written.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bramble/agent";

/// bramble-agent: runs a board's pods for a Bramble cluster.
#[derive(Debug, Parser)]
#[command(name = "bramble-agent", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Internal modes of the same binary.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// (internal) Own one container: started by the agent, not by people
    #[command(hide = true)]
    Shim(crate::runtime::shim::ShimArgs),
    /// (internal) Run a command in a running container, confined as the container is:
    /// exec streams and exec probes
    #[command(hide = true)]
    Enter(crate::runtime::enter::EnterArgs),
    /// (internal) PID 1 of a pod's shared PID namespace: started by the agent
    #[command(hide = true)]
    Pause {
        /// Where the pause process's pid is written.
        pidfile: std::path::PathBuf,
    },
    /// Run many simulated nodes in this process: the real agent code with in-memory containers
    Hollow(HollowArgs),
    /// Check this board for what the agent needs and explain each problem with its fix
    Doctor,
}

/// `bramble-agent hollow`: simulated nodes for scale tests and benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct HollowArgs {
    /// How many nodes
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Node names are <prefix>-<n>
    #[arg(long, default_value = "hollow")]
    pub prefix: String,
    /// CPUs each node reports
    #[arg(long, default_value_t = 4)]
    pub cpus: u32,
    /// Memory each node reports, in bytes
    #[arg(long, default_value_t = 4 << 30)]
    pub memory_bytes: u64,
    /// Extra labels for every node, e.g. zone=a
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
}

/// The agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where the agent keeps its credentials, cache, containers and logs [default: /var/lib/bramble/agent]
    #[arg(long, env = "BRAMBLE_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Master URL to join, e.g. http://192.168.1.10:6443 (needed only for the first start)
    #[arg(long)]
    pub server: Option<String>,
    /// Join token (`bramble token list`), needed only for the first start
    #[arg(long, env = "BRAMBLE_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file (mode 0600) holding the join token: unlike --token, not visible in `ps`
    #[arg(long, env = "BRAMBLE_JOIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Node name [default: the hostname]
    #[arg(long)]
    pub node_name: Option<String>,
    /// Extra node labels, e.g. zone=rack1,disk=ssd
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The address other boards and the master reach this node at [default: the route to the master]
    #[arg(long)]
    pub node_ip: Option<String>,
    /// YAML config file with the same settings in camelCase; flags win
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Board defaults: pi3b, pi3b-plus, pi4b (pi4), pi5, zero2w, cm4, generic-arm64,
    /// generic-armv7, or a board config file; the config file and flags win
    #[arg(long)]
    pub board: Option<String>,
    /// Heartbeat interval, e.g. 1s or 500ms [default: 1s]
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// How often the node's and its pods' CPU and memory use is reported (`kubectl top`),
    /// e.g. 15s [default: 15s]
    #[arg(long)]
    pub metrics_interval: Option<String>,
    /// First crash-loop back-off, doubling per restart [default: 10s]
    #[arg(long)]
    pub restart_backoff: Option<String>,
    /// Longest crash-loop back-off [default: 5m]
    #[arg(long)]
    pub restart_backoff_max: Option<String>,
    /// Rotate a container's log past this many bytes [default: 10485760]
    #[arg(long)]
    pub log_max_bytes: Option<u64>,
    /// The most processes and threads one container may have (0: no limit) [default: 1024]
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// The most bytes one image layer may decompress to (each layer is also bounded to 100
    /// times its compressed size, at least 256 MiB) [default: 8589934592]
    #[arg(long)]
    pub max_layer_bytes: Option<u64>,
    /// Keep setuid and setgid bits of image layers' files (cleared by default)
    #[arg(long)]
    pub allow_setid_layers: bool,
    /// A directory hostPath volumes may name, at or below it (repeatable); with none given,
    /// any path (pods with hostPath are admin-only at the API)
    #[arg(long)]
    pub host_path_allow: Vec<PathBuf>,
    /// Refuse pods with hostNetwork: true on this board
    #[arg(long)]
    pub deny_host_network: bool,
    /// Directory of unpacked images (<name>[_<tag>]/rootfs) [default: <data-dir>/images]
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// Collect unused images when the disk is fuller than this percentage [default: 85]
    #[arg(long)]
    pub image_gc_high_percent: Option<u8>,
    /// Collect down to this percentage [default: 80]
    #[arg(long)]
    pub image_gc_low_percent: Option<u8>,
    /// Collect unused images when the image cache holds more than this many bytes
    /// [default: no limit]
    #[arg(long)]
    pub image_cache_max_bytes: Option<u64>,
    /// Memory kept back from pods, in bytes [default: 134217728]
    #[arg(long)]
    pub reserved_memory: Option<u64>,
    /// CPU kept back from pods, in millicores [default: 100]
    #[arg(long)]
    pub reserved_cpu: Option<u64>,
    /// Do not give pods their own network (bridge, veth, pod IP, routes to other nodes):
    /// pods get only a loopback interface
    #[arg(long)]
    pub no_pod_network: bool,
    /// Do not run the service proxy in the agent (run `bramble-proxy` instead, or none)
    #[arg(long)]
    pub no_proxy: bool,
    /// The bridge pods are attached to
    #[arg(long, default_value = "bramble0")]
    pub pod_bridge: String,
    /// Do not answer DNS for pods on the bridge's address (pods with `dnsPolicy:
    /// ClusterFirst` then use the board's own resolvers, as with `Default`)
    #[arg(long)]
    pub no_dns: bool,
    /// The cluster's DNS domain
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The board's upstream DNS servers, in resolv.conf form [default: /etc/resolv.conf, or
    /// systemd-resolved's /run/systemd/resolve/resolv.conf when the host's names only its
    /// 127.0.0.53 stub]
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// `memory` simulates containers in memory (as hollow nodes do): for fleet tests of the
    /// real agent under qemu-user, where libcontainer cannot start containers. Implies
    /// --no-pod-network
    #[arg(long, default_value = "libcontainer", value_parser = ["libcontainer", "memory"])]
    pub runtime: String,
}

/// The board configs built into the binary (`board-configs/` in the repository).
pub const BOARDS: &[(&str, &str)] = &[
    ("pi3b", include_str!("../../board-configs/pi3b.yaml")),
    (
        "pi3b-plus",
        include_str!("../../board-configs/pi3b-plus.yaml"),
    ),
    ("pi4b", include_str!("../../board-configs/pi4b.yaml")),
    ("pi5", include_str!("../../board-configs/pi5.yaml")),
    ("zero2w", include_str!("../../board-configs/zero2w.yaml")),
    ("cm4", include_str!("../../board-configs/cm4.yaml")),
    (
        "generic-arm64",
        include_str!("../../board-configs/generic-arm64.yaml"),
    ),
    (
        "generic-armv7",
        include_str!("../../board-configs/generic-armv7.yaml"),
    ),
];

fn parse_file(text: &str, what: &str) -> Result<FileConfig, String> {
    serde_norway::from_str::<Option<FileConfig>>(text)
        .map_err(|e| format!("{what}: {e}"))
        .map(Option::unwrap_or_default)
}

/// A board config by name (built in) or path.
fn board(name: &str) -> Result<FileConfig, String> {
    let name = if name == "pi4" { "pi4b" } else { name };
    if let Some((_, text)) = BOARDS.iter().find(|(n, _)| *n == name) {
        return parse_file(text, &format!("board {name}"));
    }
    if name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml") {
        let text = std::fs::read_to_string(name).map_err(|e| format!("--board {name}: {e}"))?;
        return parse_file(&text, &format!("board config {name}"));
    }
    let known: Vec<&str> = BOARDS.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "--board: unknown board {name:?}; known: {} (or a path to a board config file)",
        known.join(", ")
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    server: Option<String>,
    token_file: Option<PathBuf>,
    node_name: Option<String>,
    labels: Option<Vec<String>>,
    node_ip: Option<String>,
    heartbeat_interval: Option<String>,
    metrics_interval: Option<String>,
    restart_backoff: Option<String>,
    restart_backoff_max: Option<String>,
    log_max_bytes: Option<u64>,
    pids_limit: Option<i64>,
    max_layer_bytes: Option<u64>,
    allow_setid_layers: Option<bool>,
    host_path_allow: Option<Vec<PathBuf>>,
    deny_host_network: Option<bool>,
    images_dir: Option<PathBuf>,
    image_gc_high_percent: Option<u8>,
    image_gc_low_percent: Option<u8>,
    image_cache_max_bytes: Option<u64>,
    reserved_memory: Option<u64>,
    reserved_cpu: Option<u64>,
}

impl FileConfig {
    /// This file's settings, with `lower`'s where this one has none; labels add up (lower
    /// first, so a later label with the same key wins).
    fn over(self, lower: FileConfig) -> FileConfig {
        let labels = match (lower.labels, self.labels) {
            (Some(mut l), Some(s)) => {
                l.extend(s);
                Some(l)
            }
            (l, s) => s.or(l),
        };
        FileConfig {
            data_dir: self.data_dir.or(lower.data_dir),
            server: self.server.or(lower.server),
            token_file: self.token_file.or(lower.token_file),
            node_name: self.node_name.or(lower.node_name),
            labels,
            node_ip: self.node_ip.or(lower.node_ip),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            metrics_interval: self.metrics_interval.or(lower.metrics_interval),
            restart_backoff: self.restart_backoff.or(lower.restart_backoff),
            restart_backoff_max: self.restart_backoff_max.or(lower.restart_backoff_max),
            log_max_bytes: self.log_max_bytes.or(lower.log_max_bytes),
            pids_limit: self.pids_limit.or(lower.pids_limit),
            max_layer_bytes: self.max_layer_bytes.or(lower.max_layer_bytes),
            allow_setid_layers: self.allow_setid_layers.or(lower.allow_setid_layers),
            host_path_allow: self.host_path_allow.or(lower.host_path_allow),
            deny_host_network: self.deny_host_network.or(lower.deny_host_network),
            images_dir: self.images_dir.or(lower.images_dir),
            image_gc_high_percent: self.image_gc_high_percent.or(lower.image_gc_high_percent),
            image_gc_low_percent: self.image_gc_low_percent.or(lower.image_gc_low_percent),
            image_cache_max_bytes: self.image_cache_max_bytes.or(lower.image_cache_max_bytes),
            reserved_memory: self.reserved_memory.or(lower.reserved_memory),
            reserved_cpu: self.reserved_cpu.or(lower.reserved_cpu),
        }
    }
}

/// The pids limit of a container unless the board says otherwise: a fork bomb stops there.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Where the join token came from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` (visible to every user in `ps`).
    Argument(String),
    /// `--token-file`: the token and the file, which the agent deletes once it has joined.
    File(String, PathBuf),
}

impl TokenSource {
    pub fn text(&self) -> &str {
        match self {
            TokenSource::Argument(t) | TokenSource::File(t, _) => t,
        }
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            TokenSource::Argument(_) => f.write_str("TokenSource::Argument(..)"),
            TokenSource::File(_, p) => write!(f, "TokenSource::File(.., {p:?})"),
        }
    }
}

/// Reads a join token file, refusing one that others may read (as ssh refuses a key).
fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let what = || format!("--token-file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", what()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: readable by others (mode {mode:04o}); `chmod 600 {}`",
            what(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", what()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{}: the file is empty", what()));
    }
    Ok(t.to_string())
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: Option<String>,
    pub token: Option<TokenSource>,
    pub node_name: String,
    pub labels: Vec<(String, String)>,
    pub node_ip: Option<String>,
    pub heartbeat_interval: Duration,
    pub metrics_interval: Duration,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub log_max_bytes: u64,
    /// The pids limit of each container; None: no limit.
    pub pids_limit: Option<i64>,
    /// What image layers may unpack to.
    pub layer_policy: crate::images::unpack::Policy,
    /// What of the board pods may reach.
    pub host_access: crate::pods::layout::HostAccess,
    pub images_dir: PathBuf,
    pub image_cache: crate::images::oci::CacheLimits,
    pub reserved_memory: u64,
    pub reserved_cpu: u64,
    /// Reported CPUs and memory instead of the machine's (hollow nodes).
    pub capacity_override: Option<(u32, u64)>,
    /// Pods get their own network, and the agent follows the cluster's network stream.
    pub pod_network: bool,
    /// The agent programs Services (needs the pod network).
    pub proxy: bool,
    pub pod_bridge: String,
    /// Pods' name resolution: the cluster domain, the upstream servers, and whether the
    /// agent answers DNS on the bridge.
    pub dns: crate::network::dns::DnsSettings,
    /// Containers are simulated in memory (`--runtime memory`).
    pub memory_runtime: bool,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl TryFrom<RunArgs> for Config {
    type Error = String;

    fn try_from(a: RunArgs) -> Result<Config, String> {
        let file = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?;
                parse_file(&text, &format!("config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let file = match &a.board {
            Some(b) => file.over(board(b)?),
            None => file,
        };
        let data_dir = a
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(format!(
                "--data-dir: {} is not a directory",
                data_dir.display()
            ));
        }
        let server = a.server.or(file.server);
        if let Some(s) = &server
            && !(s.starts_with("http://") || s.starts_with("https://"))
        {
            return Err(format!(
                "--server: {s:?} must be a URL such as http://192.168.1.10:6443"
            ));
        }
        let node_name = a
            .node_name
            .or(file.node_name)
            .unwrap_or_else(hostname)
            .to_lowercase();
        bramble_api::names::dns1123_subdomain(&node_name)
            .map_err(|e| format!("--node-name: {e}"))?;
        let mut labels = Vec::new();
        let mut raw_labels = file.labels.unwrap_or_default();
        raw_labels.extend(a.labels);
        for l in raw_labels.iter().filter(|l| !l.is_empty()) {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--labels: {l:?} is not key=value"))?;
            bramble_api::names::label_key(k).map_err(|e| format!("--labels: {e}"))?;
            bramble_api::names::label_value(v).map_err(|e| format!("--labels: {e}"))?;
            labels.push((k.to_string(), v.to_string()));
        }
        let node_ip = a.node_ip.or(file.node_ip);
        if let Some(ip) = &node_ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("--node-ip: {ip:?} is not an IP address"))?;
        }
        let dur =
            |flag: &str,
             v: Option<String>,
             default: &str,
             min: Duration|
             -> Result<Duration, String> {
                let text = v.unwrap_or_else(|| default.to_string());
                bramble_api::time::parse_duration(&text).filter(|d| *d >= min).ok_or_else(|| {
                format!("--{flag}: {text:?} is not a duration of at least {min:?} (e.g. 1s, 500ms)")
            })
            };
        let heartbeat_interval = dur(
            "heartbeat-interval",
            a.heartbeat_interval.or(file.heartbeat_interval),
            "1s",
            Duration::from_millis(50),
        )?;
        let metrics_interval = dur(
            "metrics-interval",
            a.metrics_interval.or(file.metrics_interval),
            "15s",
            Duration::from_secs(1),
        )?;
        let restart_backoff = dur(
            "restart-backoff",
            a.restart_backoff.or(file.restart_backoff),
            "10s",
            Duration::from_millis(10),
        )?;
        let restart_backoff_max = dur(
            "restart-backoff-max",
            a.restart_backoff_max.or(file.restart_backoff_max),
            "5m",
            restart_backoff,
        )?;
        let log_max_bytes = a.log_max_bytes.or(file.log_max_bytes).unwrap_or(10 << 20);
        if log_max_bytes < 4096 {
            return Err(format!(
                "--log-max-bytes: must be at least 4096, got {log_max_bytes}"
            ));
        }
        let pids_limit = match a
            .pids_limit
            .or(file.pids_limit)
            .unwrap_or(DEFAULT_PIDS_LIMIT)
        {
            0 => None,
            n if n < 0 => {
                return Err(format!(
                    "--pids-limit: must be 0 (no limit) or more, got {n}"
                ));
            }
            n => Some(n),
        };
        if let Some(n) = a.max_layer_bytes.or(file.max_layer_bytes)
            && n < 1 << 20
        {
            return Err(format!(
                "--max-layer-bytes: must be at least 1048576, got {n}"
            ));
        }
        let images_dir = a
            .images_dir
            .or(file.images_dir)
            .unwrap_or_else(|| data_dir.join("images"));
        let high = a
            .image_gc_high_percent
            .or(file.image_gc_high_percent)
            .unwrap_or(85);
        let low = a
            .image_gc_low_percent
            .or(file.image_gc_low_percent)
            .unwrap_or(80.min(high));
        if high > 100 || low > high {
            return Err(format!(
                "--image-gc-high-percent ({high}) must be at most 100 and at least \
                 --image-gc-low-percent ({low})"
            ));
        }
        let image_cache = crate::images::oci::CacheLimits {
            high_percent: high,
            low_percent: low,
            max_bytes: a.image_cache_max_bytes.or(file.image_cache_max_bytes),
        };
        let token = match (a.token, a.token_file.or(file.token_file)) {
            (Some(_), Some(_)) => {
                return Err("--token and --token-file: give one of them".into());
            }
            (Some(t), None) => Some(TokenSource::Argument(t)),
            (None, Some(f)) => Some(TokenSource::File(read_token_file(&f)?, f)),
            (None, None) => None,
        };
        Ok(Config {
            data_dir,
            server,
            token,
            node_name,
            labels,
            node_ip,
            heartbeat_interval,
            metrics_interval,
            restart_backoff,
            restart_backoff_max,
            log_max_bytes,
            pids_limit,
            layer_policy: crate::images::unpack::Policy {
                max_bytes: a
                    .max_layer_bytes
                    .or(file.max_layer_bytes)
                    .unwrap_or(crate::images::unpack::DEFAULT_MAX_LAYER_BYTES),
                keep_setid: a.allow_setid_layers || file.allow_setid_layers == Some(true),
            },
            host_access: {
                let paths = if a.host_path_allow.is_empty() {
                    file.host_path_allow
                } else {
                    Some(a.host_path_allow)
                };
                if let Some(p) = paths.iter().flatten().find(|p| !p.is_absolute()) {
                    return Err(format!(
                        "--host-path-allow: {} is not an absolute path",
                        p.display()
                    ));
                }
                crate::pods::layout::HostAccess {
                    host_paths: paths,
                    deny_host_network: a.deny_host_network || file.deny_host_network == Some(true),
                }
            },
            images_dir,
            image_cache,
            reserved_memory: a
                .reserved_memory
                .or(file.reserved_memory)
                .unwrap_or(128 << 20),
            reserved_cpu: a.reserved_cpu.or(file.reserved_cpu).unwrap_or(100),
            capacity_override: None,
            pod_network: !a.no_pod_network && a.runtime != "memory",
            proxy: !a.no_pod_network && !a.no_proxy && a.runtime != "memory",
            memory_runtime: a.runtime == "memory",
            dns: {
                let domain = a.cluster_domain.trim_end_matches('.').to_ascii_lowercase();
                let valid = !domain.is_empty()
                    && domain.len() <= 253
                    && domain.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    });
                if !valid {
                    return Err(format!(
                        "--cluster-domain: {:?} is not a DNS domain (labels of letters, digits and '-')",
                        a.cluster_domain
                    ));
                }
                crate::network::dns::DnsSettings {
                    domain,
                    upstream: crate::network::dns::upstream_conf(a.resolv_conf.as_deref()),
                    port: 53,
                    serve: !a.no_dns && !a.no_pod_network && a.runtime != "memory",
                }
            },
            pod_bridge: {
                let b = a.pod_bridge;
                if b.is_empty() || b.len() > 15 || b.contains(['/', ' ']) {
                    return Err(format!(
                        "--pod-bridge: {b:?} is not an interface name (1-15 characters, no '/' or spaces)"
                    ));
                }
                b
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["bramble-agent"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::try_from(a.run)
    }

    #[test]
    fn the_join_token_comes_from_a_private_file_or_the_command_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "B10abc::secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = f.to_str().unwrap();
        let e = parse(&["--token-file", path]).unwrap_err();
        assert!(
            e.contains("readable by others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&["--token-file", path]).unwrap();
        assert_eq!(
            c.token,
            Some(TokenSource::File("B10abc::secret".into(), f.clone()))
        );
        assert!(
            !format!("{c:?}").contains("secret"),
            "the token is never printed"
        );
        let e = parse(&["--token-file", path, "--token", "t"]).unwrap_err();
        assert!(e.contains("one of them"), "{e}");
        assert_eq!(
            parse(&["--token", "t"]).unwrap().token,
            Some(TokenSource::Argument("t".into()))
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(
            parse(&["--token-file", path])
                .unwrap_err()
                .contains("empty")
        );
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&["--node-name", "Pi-1", "--labels", "zone=a,disk=ssd"]).unwrap();
        assert_eq!(c.node_name, "pi-1");
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.restart_backoff_max, Duration::from_secs(300));
        for (args, flag) in [
            (&["--server", "ftp://x"][..], "--server"),
            (&["--labels", "novalue"][..], "--labels"),
            (&["--node-name", "bad_name"][..], "--node-name"),
            (
                &["--heartbeat-interval", "fast"][..],
                "--heartbeat-interval",
            ),
            (&["--node-ip", "999.1.1.1"][..], "--node-ip"),
            (&["--log-max-bytes", "10"][..], "--log-max-bytes"),
            (
                &[
                    "--image-gc-high-percent",
                    "50",
                    "--image-gc-low-percent",
                    "60",
                ][..],
                "--image-gc-high-percent",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn boards_give_defaults_that_files_and_flags_override() {
        for (name, _) in BOARDS {
            let c = parse(&["--board", name]).unwrap();
            assert!(
                c.labels
                    .contains(&("bramble.io/board".to_string(), name.to_string())),
                "{name}: {:?}",
                c.labels
            );
        }
        let c = parse(&["--board", "pi4", "--labels", "zone=a"]).unwrap();
        assert_eq!(c.reserved_memory, 256 << 20);
        assert_eq!(c.image_cache.max_bytes, Some(8 << 30));
        assert!(c.labels.contains(&("zone".into(), "a".into())));
        let z = parse(&["--board", "zero2w"]).unwrap();
        assert_eq!(
            (z.heartbeat_interval, z.log_max_bytes),
            (Duration::from_secs(2), 1 << 20)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "reservedMemory: 1000000\n").unwrap();
        let c = parse(&["--board", "pi4", "-c", file.to_str().unwrap()]).unwrap();
        assert_eq!((c.reserved_memory, c.reserved_cpu), (1_000_000, 250));
        let c = parse(&["--board", "pi4", "--reserved-memory", "5"]).unwrap();
        assert_eq!(c.reserved_memory, 5);
        // A board file's unknown key is an error naming it; so is an unknown board.
        let bad = dir.path().join("myboard.yaml");
        std::fs::write(&bad, "labels: [a=b]\nreservedMemroy: 1\n").unwrap();
        let e = parse(&["--board", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("reservedMemroy"), "{e}");
        let e = parse(&["--board", "pi9"]).unwrap_err();
        assert!(e.contains("unknown board") && e.contains("zero2w"), "{e}");
    }

    #[test]
    fn shim_is_a_hidden_subcommand() {
        let a = Args::try_parse_from([
            "bramble-agent",
            "shim",
            "--id",
            "x",
            "--state-root",
            "/r",
            "--bundle",
            "/b",
            "--log",
            "/l",
            "--pid-file",
            "/p",
            "--exit-file",
            "/e",
        ])
        .unwrap();
        assert!(matches!(a.command, Some(Sub::Shim(_))));
    }
}
