//! `bramble-master` flags and config file, validated into one [`Config`] before anything is
//! bound or written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bramble/master";
/// Default API listen address (the Kubernetes API port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:6443";
/// Default address of the embedded MQTT broker (MQTT over TLS).
pub const DEFAULT_MQTT_LISTEN: &str = "0.0.0.0:8883";
/// Default address of the embedded MQTT broker with `--insecure-plaintext`.
pub const DEFAULT_MQTT_LISTEN_PLAIN: &str = "0.0.0.0:1883";
/// Default largest request body, in bytes.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// bramble-master: the control plane of a Bramble cluster.
#[derive(Debug, Parser)]
#[command(name = "bramble-master", version, about)]
pub struct Args {
    /// Directory for the store, the admin token and the client config [default: /var/lib/bramble/master]
    #[arg(long, env = "BRAMBLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API server [default: 0.0.0.0:6443]
    #[arg(long)]
    pub listen: Option<String>,
    /// YAML config file with the same settings in camelCase (dataDir, listen, mqttListen, ...); flags win
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Largest accepted request body in bytes [default: 1048576]
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Changes kept in memory for watch resume [default: 4096]
    #[arg(long)]
    pub watch_change_log: Option<usize>,
    /// Address of the embedded MQTT broker that agents connect to [default: 0.0.0.0:1883]
    #[arg(long)]
    pub mqtt_listen: Option<String>,
    /// Use this external MQTT broker (mqtts://HOST:PORT, or HOST:PORT in plaintext, e.g.
    /// mosquitto) instead of the embedded one
    #[arg(long)]
    pub external_broker: Option<String>,
    /// The CA certificate (PEM file) that signed the external broker's certificate, for
    /// mqtts:// (the master and every agent verify the broker with it)
    #[arg(long)]
    pub external_broker_ca: Option<PathBuf>,
    /// The master's user name at the external broker [default: bramble-master]
    #[arg(long)]
    pub external_broker_user: Option<String>,
    /// A file holding the master's password at the external broker (without it the master
    /// connects anonymously)
    #[arg(long)]
    pub external_broker_password_file: Option<PathBuf>,
    /// A node is NotReady (NodeLost) after this much heartbeat silence, e.g. 3s or 1500ms [default: 3s]
    #[arg(long)]
    pub node_lost_after: Option<String>,
    /// Evict a lost node's pods after this long, e.g. 5s or 5m [default: 5s]
    #[arg(long)]
    pub pod_eviction_timeout: Option<String>,
    /// A Job's first back-off after a failed pod, doubling up to 6m [default: 10s]
    #[arg(long)]
    pub job_backoff: Option<String>,
    /// The pod network, cut into one CIDR per node [default: 10.42.0.0/16]
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's pod CIDR [default: 24]
    #[arg(long)]
    pub node_cidr_mask_size: Option<u8>,
    /// Services' ClusterIPs come from here [default: 10.43.0.0/16]
    #[arg(long)]
    pub service_cidr: Option<String>,
    /// Most API connections open at once; beyond it a new one is answered 503 and closed [default: 1024]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// A new API connection that sends no request within this long is closed, e.g. 10s [default: 10s]
    #[arg(long)]
    pub request_header_timeout: Option<String>,
    /// NodePorts come from this range [default: 30000-32767]
    #[arg(long)]
    pub service_node_port_range: Option<String>,
    /// Another name or address for the serving certificate (repeatable, or comma-separated);
    /// the host name, localhost and every address of this host are always in it
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Serve the API and the broker without TLS (tests and benches only: tokens and pod specs
    /// cross the network in clear)
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The config file's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    watch_change_log: Option<usize>,
    mqtt_listen: Option<String>,
    external_broker: Option<String>,
    external_broker_ca: Option<PathBuf>,
    external_broker_user: Option<String>,
    external_broker_password_file: Option<PathBuf>,
    node_lost_after: Option<String>,
    pod_eviction_timeout: Option<String>,
    job_backoff: Option<String>,
    cluster_cidr: Option<String>,
    node_cidr_mask_size: Option<u8>,
    service_cidr: Option<String>,
    service_node_port_range: Option<String>,
    max_connections: Option<usize>,
    request_header_timeout: Option<String>,
    #[serde(default)]
    tls_san: Vec<String>,
    #[serde(default)]
    insecure_plaintext: bool,
}

/// Where agents' MQTT traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The master runs rumqttd on this address.
    Embedded(SocketAddr),
    /// An external broker at `host:port`, with the master's user and password there (None:
    /// anonymous).
    External {
        host: String,
        port: u16,
        credentials: Option<(String, String)>,
        /// The CA (PEM) of the broker's certificate when it speaks TLS (mqtts://).
        tls_ca: Option<String>,
    },
}

/// The validated master configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub watch_change_log: usize,
    pub broker: Broker,
    pub node_lost_after: std::time::Duration,
    pub pod_eviction_timeout: std::time::Duration,
    /// A Job's first back-off after a failed pod.
    pub job_backoff: std::time::Duration,
    /// Node pod CIDRs come from here.
    pub pod_cidrs: crate::controllers::ipam::CidrPool,
    /// Services' ClusterIPs and NodePorts come from here.
    pub services: crate::store::ServiceRanges,
    /// Most API connections open at once.
    pub max_connections: usize,
    /// How long a new API connection may stay silent before its first request.
    pub request_header_timeout: std::time::Duration,
    /// Extra names of the serving certificate.
    pub tls_sans: Vec<String>,
    /// No TLS on the API and the broker (tests and benches only).
    pub plaintext: bool,
}

/// Most API connections open at once (well under the units' LimitNOFILE of 65536, with
/// room for the broker's sockets and the store).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a new API connection may stay silent before its first request.
pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The pod network of a cluster, as k3s defaults it.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";

fn default_pool() -> crate::controllers::ipam::CidrPool {
    crate::controllers::ipam::CidrPool::DEFAULT
}

impl Config {
    /// A configuration for tests and benches: a data dir and an ephemeral loopback port.
    pub fn local(data_dir: &Path) -> Self {
        Config {
            data_dir: data_dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: DEFAULT_MAX_BODY,
            watch_change_log: 4096,
            broker: Broker::Embedded(SocketAddr::from(([127, 0, 0, 1], 0))),
            node_lost_after: std::time::Duration::from_secs(3),
            pod_eviction_timeout: std::time::Duration::from_secs(5),
            job_backoff: std::time::Duration::from_secs(10),
            pod_cidrs: default_pool(),
            services: crate::store::ServiceRanges::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_header_timeout: DEFAULT_HEADER_TIMEOUT,
            tls_sans: Vec::new(),
            plaintext: false,
        }
    }

    /// Store file path.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }
}

impl TryFrom<Args> for Config {
    type Error = String;

    fn try_from(a: Args) -> Result<Config, String> {
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
        if data_dir.as_os_str().is_empty() {
            return Err("--data-dir: must not be empty".into());
        }
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(format!(
                "--data-dir: {} exists and is not a directory",
                data_dir.display()
            ));
        }
        let listen_text = a
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("--listen: {listen_text:?} is not an address like 0.0.0.0:6443 or [::]:6443")
        })?;
        let max_body_bytes = a
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY);
        if !(4096..=64 << 20).contains(&max_body_bytes) {
            return Err(format!(
                "--max-body-bytes: must be between 4096 and 67108864, got {max_body_bytes}"
            ));
        }
        let watch_change_log = a.watch_change_log.or(file.watch_change_log).unwrap_or(4096);
        if watch_change_log == 0 {
            return Err("--watch-change-log: must be at least 1".into());
        }
        let plaintext = a.insecure_plaintext || file.insecure_plaintext;
        let mut tls_sans = a.tls_san.clone();
        tls_sans.extend(file.tls_san.iter().cloned());
        for san in &tls_sans {
            if san.parse::<std::net::IpAddr>().is_err() && !crate::pki::is_dns_name(san) {
                return Err(format!(
                    "--tls-san: {san:?} is neither an IP address nor a DNS name"
                ));
            }
        }
        let broker = match a.external_broker.or(file.external_broker) {
            Some(ext) => {
                let (tls, rest) = match ext.split_once("://") {
                    Some(("mqtts", rest)) => (true, rest),
                    Some(("mqtt", rest)) => (false, rest),
                    Some((scheme, _)) => {
                        return Err(format!(
                            "--external-broker: {scheme}:// is not a broker scheme (mqtts://HOST:PORT, or mqtt://HOST:PORT in plaintext)"
                        ));
                    }
                    None => (false, ext.as_str()),
                };
                let ca_file = a.external_broker_ca.or(file.external_broker_ca);
                let tls_ca = match (tls, ca_file) {
                    (true, Some(f)) => {
                        let pem = std::fs::read_to_string(&f)
                            .map_err(|e| format!("--external-broker-ca {}: {e}", f.display()))?;
                        if !pem.contains("-----BEGIN CERTIFICATE-----") {
                            return Err(format!(
                                "--external-broker-ca {}: no PEM certificate in the file",
                                f.display()
                            ));
                        }
                        Some(pem)
                    }
                    (true, None) => {
                        return Err(format!(
                            "--external-broker {ext}: give the CA that signed the broker's certificate with --external-broker-ca FILE (PEM)"
                        ));
                    }
                    (false, Some(_)) => {
                        return Err(
                            "--external-broker-ca: only with an mqtts:// broker".to_string()
                        );
                    }
                    (false, None) => None,
                };
                let (host, port) = rest
                    .rsplit_once(':')
                    .and_then(|(h, p)| {
                        Some((
                            h.trim_matches(['[', ']']).to_string(),
                            p.parse::<u16>().ok()?,
                        ))
                    })
                    .filter(|(h, p)| !h.is_empty() && *p > 0)
                    .ok_or_else(|| {
                        format!("--external-broker: {ext:?} is not [mqtts://]HOST:PORT")
                    })?;
                let user = a
                    .external_broker_user
                    .or(file.external_broker_user)
                    .unwrap_or_else(|| "bramble-master".into());
                let credentials = match a
                    .external_broker_password_file
                    .or(file.external_broker_password_file)
                {
                    Some(f) => {
                        let pass = std::fs::read_to_string(&f).map_err(|e| {
                            format!("--external-broker-password-file {}: {e}", f.display())
                        })?;
                        let pass = pass.trim_end_matches(['\n', '\r']).to_string();
                        if pass.is_empty() {
                            return Err(format!(
                                "--external-broker-password-file {}: the file is empty",
                                f.display()
                            ));
                        }
                        Some((user, pass))
                    }
                    None => None,
                };
                Broker::External {
                    host,
                    port,
                    credentials,
                    tls_ca,
                }
            }
            None => {
                let text = a.mqtt_listen.or(file.mqtt_listen).unwrap_or_else(|| {
                    if plaintext {
                        DEFAULT_MQTT_LISTEN_PLAIN.into()
                    } else {
                        DEFAULT_MQTT_LISTEN.into()
                    }
                });
                Broker::Embedded(text.parse().map_err(|_| {
                    format!("--mqtt-listen: {text:?} is not an address like 0.0.0.0:1883")
                })?)
            }
        };
        let lost_text = a
            .node_lost_after
            .or(file.node_lost_after)
            .unwrap_or_else(|| "3s".into());
        let node_lost_after = bramble_api::time::parse_duration(&lost_text)
            .filter(|d| *d >= std::time::Duration::from_millis(100))
            .ok_or_else(|| {
                format!(
                    "--node-lost-after: {lost_text:?} is not a duration of at least 100ms (e.g. 3s)"
                )
            })?;
        let max_connections = a
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=1 << 20).contains(&max_connections) {
            return Err(format!(
                "--max-connections: must be between 1 and 1048576, got {max_connections}"
            ));
        }
        let header_text = a
            .request_header_timeout
            .or(file.request_header_timeout)
            .unwrap_or_else(|| "10s".into());
        let request_header_timeout = bramble_api::time::parse_duration(&header_text)
            .filter(|d| (std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(3600)).contains(d))
            .ok_or_else(|| {
                format!(
                    "--request-header-timeout: {header_text:?} is not a duration from 100ms to 1h (e.g. 10s)"
                )
            })?;
        let evict_text = a
            .pod_eviction_timeout
            .or(file.pod_eviction_timeout)
            .unwrap_or_else(|| "5s".into());
        let pod_eviction_timeout =
            bramble_api::time::parse_duration(&evict_text).ok_or_else(|| {
                format!("--pod-eviction-timeout: {evict_text:?} is not a duration (e.g. 5s, 5m)")
            })?;
        let backoff_text = a
            .job_backoff
            .or(file.job_backoff)
            .unwrap_or_else(|| "10s".into());
        let job_backoff = bramble_api::time::parse_duration(&backoff_text)
            .filter(|d| (1..=3600).contains(&d.as_secs()))
            .ok_or_else(|| {
                format!(
                    "--job-backoff: {backoff_text:?} is not a duration from 1s to 1h (e.g. 10s)"
                )
            })?;
        let cluster_cidr = a
            .cluster_cidr
            .or(file.cluster_cidr)
            .unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.into());
        let mask = a
            .node_cidr_mask_size
            .or(file.node_cidr_mask_size)
            .unwrap_or(24);
        let pod_cidrs = crate::controllers::ipam::CidrPool::parse(&cluster_cidr, mask)
            .map_err(|e| format!("--cluster-cidr/--node-cidr-mask-size: {e}"))?;
        let service_cidr = a
            .service_cidr
            .or(file.service_cidr)
            .unwrap_or_else(|| "10.43.0.0/16".into());
        let node_port_range = a
            .service_node_port_range
            .or(file.service_node_port_range)
            .unwrap_or_else(|| "30000-32767".into());
        let services = crate::store::ServiceRanges::parse(&service_cidr, &node_port_range)
            .map_err(|e| format!("--service-cidr/--service-node-port-range: {e}"))?;
        Ok(Config {
            data_dir,
            listen,
            max_body_bytes,
            watch_change_log,
            broker,
            node_lost_after,
            pod_eviction_timeout,
            job_backoff,
            pod_cidrs,
            services,
            max_connections,
            request_header_timeout,
            tls_sans,
            plaintext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["bramble-master"];
        v.extend_from_slice(args);
        Config::try_from(Args::try_parse_from(v).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_and_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:6443");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c = parse(&["--listen", "127.0.0.1:0", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.listen.port(), 0);
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.request_header_timeout, DEFAULT_HEADER_TIMEOUT);
        let c = parse(&["--max-connections", "40", "--request-header-timeout", "1s"]).unwrap();
        assert_eq!(
            (c.max_connections, c.request_header_timeout),
            (40, std::time::Duration::from_secs(1))
        );
        for bad in [
            &["--max-connections", "0"][..],
            &["--request-header-timeout", "50ms"][..],
            &["--request-header-timeout", "2h"][..],
            &["--request-header-timeout", "soon"][..],
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(
            parse(&["--listen", "nowhere"])
                .unwrap_err()
                .contains("--listen")
        );
        assert!(
            parse(&["--max-body-bytes", "1"])
                .unwrap_err()
                .contains("--max-body-bytes")
        );
        let e = parse(&["--cluster-cidr", "10.42.0.0/33"]).unwrap_err();
        assert!(e.contains("--cluster-cidr"), "{e}");
        let e = parse(&["--node-cidr-mask-size", "8"]).unwrap_err();
        assert!(e.contains("must be longer"), "{e}");
        assert_eq!(parse(&[]).unwrap().pod_cidrs.nth(1), "10.42.1.0/24");
        let e = parse(&["--service-node-port-range", "40000-30000"]).unwrap_err();
        assert!(e.contains("not a port range"), "{e}");
        let e = parse(&["--service-cidr", "10.43.0.1/16"]).unwrap_err();
        assert!(e.contains("host bits"), "{e}");
        assert!(
            parse(&["--data-dir", "/etc/hostname"])
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn external_broker_credentials_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cret\n").unwrap();
        let ext = [
            "--external-broker",
            "mq:1883",
            "--external-broker-password-file",
        ];
        let with = |path: &str| {
            let mut v = ext.to_vec();
            v.push(path);
            parse(&v)
        };
        let c = with(f.to_str().unwrap()).unwrap();
        assert_eq!(
            c.broker,
            Broker::External {
                host: "mq".into(),
                port: 1883,
                credentials: Some(("bramble-master".into(), "s3cret".into())),
                tls_ca: None,
            }
        );
        let e = with("/nonexistent/secret").unwrap_err();
        assert!(e.contains("--external-broker-password-file"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(with(f.to_str().unwrap()).unwrap_err().contains("empty"));
        let anon = parse(&["--external-broker", "mq:1883"]).unwrap();
        assert!(matches!(
            anon.broker,
            Broker::External {
                credentials: None,
                ..
            }
        ));
    }

    #[test]
    fn an_external_broker_over_tls_needs_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca = ca.to_str().unwrap();
        let c = parse(&[
            "--external-broker",
            "mqtts://mq:8883",
            "--external-broker-ca",
            ca,
        ])
        .unwrap();
        assert!(matches!(
            c.broker,
            Broker::External { ref host, port: 8883, tls_ca: Some(_), .. } if host == "mq"
        ));
        let plain = parse(&["--external-broker", "mqtt://mq:1883"]).unwrap();
        assert!(matches!(
            plain.broker,
            Broker::External { tls_ca: None, .. }
        ));
        let e = parse(&["--external-broker", "mqtts://mq:8883"]).unwrap_err();
        assert!(e.contains("--external-broker-ca"), "{e}");
        let e = parse(&["--external-broker", "mq:1883", "--external-broker-ca", ca]).unwrap_err();
        assert!(e.contains("only with an mqtts://"), "{e}");
        let e = parse(&["--external-broker", "http://mq:1883"]).unwrap_err();
        assert!(e.contains("not a broker scheme"), "{e}");
        let not_pem = dir.path().join("x");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = parse(&[
            "--external-broker",
            "mqtts://mq:8883",
            "--external-broker-ca",
            not_pem.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn config_file_unknown_key_is_an_error_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.yaml");
        std::fs::write(&p, "listen: 127.0.0.1:7000\nlisten_port: 3\n").unwrap();
        let e = parse(&["-c", p.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        std::fs::write(&p, "listen: 127.0.0.1:7000\ndataDir: /tmp/y\n").unwrap();
        let c = parse(&["-c", p.to_str().unwrap(), "--listen", "127.0.0.1:7001"]).unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
    }
}
