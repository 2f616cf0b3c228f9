//! `bramble-master`: parse flags, validate the config, run the master until a signal.

use std::process::ExitCode;

use bramble_master::Master;
use bramble_master::config::{Args, Config};
use clap::Parser;

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    bramble_support::run_until_signalled(
        "bramble-master",
        rt,
        "signal received; shutting down (send another to exit at once)",
        |shutdown| async move {
            let master = Master::start(config).await?;
            // The address on stdout lets scripts and tests that pass port 0 find the server.
            let (http, mqtt) = if master.tls() {
                ("https", "mqtts")
            } else {
                ("http", "mqtt")
            };
            println!(
                "bramble-master listening on {http}://{} {mqtt}://127.0.0.1:{}",
                master.addr(),
                master.mqtt_port()
            );
            master.serve(shutdown).await?;
            Ok::<(), Box<dyn std::error::Error>>(())
        },
    )
}
