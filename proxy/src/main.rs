//! `bramble-proxy`: the standalone service proxy. The foundation ships its command line only.

use std::process::ExitCode;

use clap::Parser;

/// bramble-proxy: programs iptables so that Services reach their pods.
#[derive(Debug, Parser)]
#[command(name = "bramble-proxy", version, about)]
struct Args {
    /// Remove Bramble's chains and exit
    #[arg(long)]
    cleanup: bool,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("bramble-proxy: not implemented yet in this build");
    ExitCode::from(69)
}
