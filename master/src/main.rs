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
    bramble_support::init_logging("info,rumqttd=warn");
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
    bramble_support::shutdown_on_signals(
        shutdown,
        "signal received; shutting down (send another to exit at once)",
    )
    .await;
}
