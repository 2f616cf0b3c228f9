//! `bramble-proxy`: the standalone service proxy. `--apply FILE` renders the Services and
//! Endpoints in a manifest file and applies them once; `--cleanup` removes every Bramble
//! chain and jump. Following the master's Services and Endpoints continuously arrives with
//! the rest of the networking issue.

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let Some(file) = &args.apply else {
        return Err(
            "following the master is not implemented yet; use --apply FILE or --cleanup".into(),
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
