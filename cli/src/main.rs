//! `bramble`: parse the command line, find the master, run the command.

mod args;
mod client;
mod cmd;
mod config;
mod manifests;
use bramble_api::table;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let conn = config::resolve(&cli.conn)?;
    let client = client::Client::new(conn)?;
    let ns = cli.namespace.as_deref();
    match &cli.command {
        Command::Apply(a) => cmd::apply::run(&client, ns, a),
        Command::Create(c) => cmd::create::run(&client, ns, c),
        Command::Secrets(c) => cmd::create::secrets(&client, c),
        Command::Get(a) => cmd::get::run(&client, ns, a),
        Command::Describe(a) => cmd::describe::run(&client, ns, a),
        Command::Delete(a) => cmd::delete::run(&client, ns, a),
        Command::Logs(a) => cmd::logs::run(&client, ns, a),
        Command::Exec(a) => cmd::exec::exec(&client, ns, a),
        Command::PortForward(a) => cmd::exec::port_forward(&client, ns, a),
        Command::Top(t) => cmd::top::run(&client, ns, t),
        Command::Token(t) => cmd::token::run(&client, t),
        Command::Kubeconfig(k) => cmd::kubeconfig::run(&client, k),
        Command::Image(i) => cmd::image::run(&client, i),
        Command::Scale(a) => cmd::rollout::scale(&client, ns, a),
        Command::Rollout(r) => cmd::rollout::run(&client, ns, r),
        Command::Cordon(a) => cmd::node::cordon(&client, &a.node, true),
        Command::Uncordon(a) => cmd::node::cordon(&client, &a.node, false),
        Command::Drain(a) => cmd::node::drain(&client, &a.node),
        Command::Node(c) => cmd::node::credential(&client, c),
    }
}
