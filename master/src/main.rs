//! `bramble-master`: parse flags, validate the config, run the master until a signal.

use std::process::ExitCode;

use bramble_master::Master;
use bramble_master::config::{Args, Config};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// EX_USAGE: invalid flags or config.
const EXIT_USAGE: u8 = 64;

/// glibc gives every thread that allocates its own arena; on a board with a few hundred
/// MB that multiplies the master's resident memory for no gain. Two arenas are plenty.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bramble-master: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bramble-master: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let master = match Master::start(config).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bramble-master: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The address on stdout lets scripts and tests that pass port 0 find the server.
        println!(
            "bramble-master listening on http://{} mqtt://127.0.0.1:{}",
            master.addr(),
            master.mqtt_port()
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match master.serve(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bramble-master: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The first SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for n in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received; shutting down (send another to exit at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        }
    }
}
