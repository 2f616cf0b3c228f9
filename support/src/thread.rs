//! A loop on a thread of its own, with a single-threaded tokio runtime: for work that wakes
//! often and should neither hand off between the main runtime's workers nor be starved by
//! them (the master's MQTT TLS front, the agent's cluster DNS).

use std::future::Future;

/// Runs the future `make` returns on a new thread named `name`, in a single-threaded
/// runtime (`make` runs inside it, so it may register sockets with it). Logs and returns
/// when the runtime cannot be made.
pub fn spawn_with_runtime<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let what = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async move { make().await }),
                Err(e) => tracing::error!(thread = what, error = %e, "cannot start a runtime"),
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_future_runs_on_its_own_named_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        super::spawn_with_runtime("bramble-test-rt", move || async move {
            tokio::task::yield_now().await;
            let name = std::thread::current().name().map(str::to_string);
            tx.send(name).unwrap();
        })
        .unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got.as_deref(), Some("bramble-test-rt"));
    }
}
