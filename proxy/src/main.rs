//! `bramble-proxy`: the standalone service proxy, for hosts that route Services but run no
//! agent (agents run the same code in-process). `--server URL --token-file FILE` follows the
//! master's Services and Endpoints through its API and keeps the rules in step;
//! `--apply FILE` renders the Services and Endpoints of a manifest file and applies them
//! once; `--cleanup` removes every Bramble chain and jump.

use std::process::ExitCode;

use bramble_api::Object;
use bramble_proxy::{NodeContext, iptables, render};
use clap::Parser;

/// bramble-proxy: programs iptables so that Services reach their pods.
#[derive(Debug, Parser)]
#[command(name = "bramble-proxy", version, about)]
struct Args {
    /// Remove Bramble's chains and jumps and exit
    #[arg(long)]
    cleanup: bool,
    /// Render the Services and Endpoints of this manifest file and apply them once
    #[arg(long, value_name = "FILE")]
    apply: Option<String>,
    /// The pod network (traffic to a ClusterIP from outside it is masqueraded)
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Print the ruleset instead of applying it (with --apply)
    #[arg(long)]
    dry_run: bool,
    /// Follow this master's Services and Endpoints, e.g. https://192.168.1.10:6443
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The API token (with --server); `-` reads it from standard input
    #[arg(long, value_name = "FILE", env = "BRAMBLE_TOKEN_FILE")]
    token_file: Option<String>,
    /// The cluster CA file (the master's ca.crt) its certificate must chain to (https)
    #[arg(long, value_name = "FILE")]
    certificate_authority: Option<String>,
    /// How often the whole ruleset is rewritten even without changes
    #[arg(long, default_value = "60s")]
    resync: String,
}

fn main() -> ExitCode {
    bramble_support::init_logging("info");
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bramble-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.cleanup {
        let b = iptables::detect().map_err(|e| e.to_string())?;
        return iptables::cleanup(b).map_err(|e| e.to_string());
    }
    if let Some(server) = &args.server {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(format!(
                "--server: {server:?} must be a URL such as https://192.168.1.10:6443"
            ));
        }
        let Some(tf) = &args.token_file else {
            return Err(
                "--server needs --token-file FILE (the master's reader.token, a read-only token)"
                    .into(),
            );
        };
        let token = if tf == "-" {
            let mut t = String::new();
            std::io::stdin()
                .read_line(&mut t)
                .map_err(|e| format!("--token-file -: {e}"))?;
            t
        } else {
            std::fs::read_to_string(tf).map_err(|e| format!("--token-file {tf}: {e}"))?
        };
        let ca_pem = match &args.certificate_authority {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("--certificate-authority {f}: {e}"))?,
            ),
            None if server.starts_with("https://") => {
                return Err(
                    "--server https://... needs --certificate-authority FILE (the master's ca.crt)"
                        .into(),
                );
            }
            None => None,
        };
        let resync = bramble_api::time::parse_duration(&args.resync)
            .filter(|d| *d >= std::time::Duration::from_secs(1))
            .ok_or_else(|| {
                format!(
                    "--resync: {:?} is not a duration of at least 1s",
                    args.resync
                )
            })?;
        let cfg = bramble_proxy::follow::FollowConfig {
            server: server.clone(),
            token: token.trim().to_string(),
            ca_pem,
            cluster_cidr: args.cluster_cidr.clone(),
            resync,
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        return bramble_proxy::follow::follow(cfg, stop).map_err(|e| e.to_string());
    }
    let Some(file) = &args.apply else {
        return Err(
            "say what to do: --server URL --token-file FILE, --apply FILE or --cleanup".into(),
        );
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let docs = bramble_api::manifest::parse_manifests(&text).map_err(|errs| {
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        format!("{file}: {}", all.join("; "))
    })?;
    let (mut services, mut endpoints) = (Vec::new(), Vec::new());
    for d in docs {
        match d.object {
            Object::Service(s) => services.push(s),
            Object::Endpoints(e) => endpoints.push(e),
            other => {
                return Err(format!(
                    "{file}: {} is not a Service or Endpoints",
                    other.describe()
                ));
            }
        }
    }
    let mut node = NodeContext {
        cluster_cidr: args.cluster_cidr.clone(),
        existing_chains: Vec::new(),
    };
    if args.dry_run {
        print!("{}", render(&services, &endpoints, &node));
        return Ok(());
    }
    let b = iptables::detect().map_err(|e| e.to_string())?;
    node.existing_chains = iptables::existing_chains(b).map_err(|e| e.to_string())?;
    iptables::apply(b, &render(&services, &endpoints, &node)).map_err(|e| e.to_string())
}
