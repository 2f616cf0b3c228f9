//! `bramble-agent`: parse flags, validate the config, run the agent until a signal; or, as
//! `bramble-agent shim`, own one container.

use std::process::ExitCode;

use bramble_agent::config::{Args, Config, Sub};
use clap::Parser;

/// EX_USAGE: invalid flags or config.
const EXIT_USAGE: u8 = 64;
/// EX_CONFIG: the board lacks something the agent needs (see `bramble-agent doctor`).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    bramble_agent::runtime::sigpipe_default_for_children();
    let args = Args::parse();
    if let Some(Sub::Shim(shim)) = &args.command {
        // Single-threaded on purpose: libcontainer forks with a raw clone.
        return ExitCode::from(bramble_agent::runtime::shim::run(shim).clamp(0, 255) as u8);
    }
    if let Some(Sub::Enter(enter)) = &args.command {
        // Single-threaded on purpose: it joins a PID namespace and forks.
        return ExitCode::from(bramble_agent::runtime::enter::run(enter).clamp(0, 255) as u8);
    }
    if let Some(Sub::Pause { pidfile }) = &args.command {
        // Single-threaded on purpose: it forks.
        return ExitCode::from(bramble_agent::runtime::pause::run(pidfile).clamp(0, 255) as u8);
    }
    let doctor = matches!(args.command, Some(Sub::Doctor));
    let hollow = match args.command {
        Some(Sub::Hollow(h)) => Some(h),
        _ => None,
    };
    let config = match Config::try_from(args.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bramble-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // hickory logs every query at info.
    bramble_support::init_logging(
        "info,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn",
    );
    if let Some(h) = hollow {
        return run_hollow(config, h);
    }
    // The doctor probes the master; the agent's own start does not wait on the network.
    let probe = doctor.then_some(config.server.as_deref());
    let checks =
        bramble_agent::doctor::checks(&bramble_agent::doctor::read_host(&config.data_dir, probe));
    if doctor {
        return if bramble_agent::doctor::report(&checks) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(fatal) = checks
        .iter()
        .find(|c| c.level == bramble_agent::doctor::Level::Fatal)
    {
        eprintln!(
            "bramble-agent: cannot run on this board: {}: {}\n  fix: {}\n(`bramble-agent doctor` checks everything)",
            fatal.name, fatal.detail, fatal.fix
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    for w in checks
        .iter()
        .filter(|c| c.level == bramble_agent::doctor::Level::Warn)
    {
        tracing::warn!(check = w.name, detail = w.detail, fix = w.fix, "preflight");
    }
    // One worker thread keeps the agent small; container operations run on blocking threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build();
    bramble_support::run_until_signalled("bramble-agent", rt, STOPPING, |shutdown| {
        bramble_agent::run(config, shutdown)
    })
}

/// Many simulated nodes: a multi-threaded runtime, since they share the process.
fn run_hollow(config: Config, args: bramble_agent::config::HollowArgs) -> ExitCode {
    for n in 0..args.count.min(1) {
        if let Err(e) = bramble_agent::hollow::node_config(&config, &args, n) {
            eprintln!("bramble-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    bramble_support::run_until_signalled("bramble-agent", rt, STOPPING, |shutdown| {
        bramble_agent::hollow::run(config, args, shutdown)
    })
}

/// Logged at the first SIGTERM or SIGINT (a second exits at once).
const STOPPING: &str = "signal received; stopping (containers keep running)";
