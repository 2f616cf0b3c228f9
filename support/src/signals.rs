//! Shutdown on SIGTERM and SIGINT, the same way in every binary.

use tokio_util::sync::CancellationToken;

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
