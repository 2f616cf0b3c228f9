//! `bramble-agent`: the node agent. The foundation ships its command line only; joining,
//! heartbeats and running pods arrive with the agent issue.

use std::process::ExitCode;

use clap::Parser;

/// bramble-agent: runs a board's pods for a Bramble cluster.
#[derive(Debug, Parser)]
#[command(name = "bramble-agent", version, about)]
struct Args {
    /// Master URL, e.g. http://192.168.1.10:6443
    #[arg(long)]
    server: Option<String>,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("bramble-agent: not implemented yet in this build");
    ExitCode::from(69)
}
