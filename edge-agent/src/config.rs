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
    /// Heartbeat interval, e.g. 1s or 500ms [default: 1s]
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// First crash-loop back-off, doubling per restart [default: 10s]
    #[arg(long)]
    pub restart_backoff: Option<String>,
    /// Longest crash-loop back-off [default: 5m]
    #[arg(long)]
    pub restart_backoff_max: Option<String>,
    /// Rotate a container's log past this many bytes [default: 10485760]
    #[arg(long)]
    pub log_max_bytes: Option<u64>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    server: Option<String>,
    node_name: Option<String>,
    labels: Option<Vec<String>>,
    node_ip: Option<String>,
    heartbeat_interval: Option<String>,
    restart_backoff: Option<String>,
    restart_backoff_max: Option<String>,
    log_max_bytes: Option<u64>,
    images_dir: Option<PathBuf>,
    image_gc_high_percent: Option<u8>,
    image_gc_low_percent: Option<u8>,
    image_cache_max_bytes: Option<u64>,
    reserved_memory: Option<u64>,
    reserved_cpu: Option<u64>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: Option<String>,
    pub token: Option<String>,
    pub node_name: String,
    pub labels: Vec<(String, String)>,
    pub node_ip: Option<String>,
    pub heartbeat_interval: Duration,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub log_max_bytes: u64,
    pub images_dir: PathBuf,
    pub image_cache: crate::images::oci::CacheLimits,
    pub reserved_memory: u64,
    pub reserved_cpu: u64,
    /// Reported CPUs and memory instead of the machine's (hollow nodes).
    pub capacity_override: Option<(u32, u64)>,
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
                serde_norway::from_str::<Option<FileConfig>>(&text)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?
                    .unwrap_or_default()
            }
            None => FileConfig::default(),
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
        let raw_labels = if a.labels.is_empty() {
            file.labels.unwrap_or_default()
        } else {
            a.labels
        };
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
        Ok(Config {
            data_dir,
            server,
            token: a.token,
            node_name,
            labels,
            node_ip,
            heartbeat_interval,
            restart_backoff,
            restart_backoff_max,
            log_max_bytes,
            images_dir,
            image_cache,
            reserved_memory: a
                .reserved_memory
                .or(file.reserved_memory)
                .unwrap_or(128 << 20),
            reserved_cpu: a.reserved_cpu.or(file.reserved_cpu).unwrap_or(100),
            capacity_override: None,
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
