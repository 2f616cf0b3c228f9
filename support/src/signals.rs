//! Shutdown on SIGTERM and SIGINT, the same way in every binary.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// A binary's main loop: runs `main` on `runtime` with a token that the first SIGTERM or
/// SIGINT cancels (logging `first`; a second exits at once). Exits with success when `main`
/// returns Ok, else with failure after printing `program: error` (as when the runtime
/// could not be built).
pub fn run_until_signalled<F, E>(
    program: &str,
    runtime: std::io::Result<tokio::runtime::Runtime>,
    first: &'static str,
    main: impl FnOnce(CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(shutdown_on_signals(shutdown.clone(), first));
        match main(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Waits for SIGTERM or SIGINT: the first cancels `shutdown` (and logs `first`), a second
/// exits the process at once with status 130.
pub async fn shutdown_on_signals(shutdown: CancellationToken, first: &str) {
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
            tracing::info!("{first}");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        }
    }
}
