//! Running probes against a real container: TCP and HTTP from inside the pod's network
//! namespace (a short-lived thread joins it, as the sandbox is made), exec through
//! `bramble-agent enter`, confined as the container's own process is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use super::{ExecTarget, ProbeAction, ProbeError};

/// Runs `action` for a running container: an exec in the container that `target` finds
/// (asked only for an exec), TCP and HTTP from its pod's network namespace `netns`.
pub fn run(
    netns: Option<&Path>,
    action: &ProbeAction,
    timeout: Duration,
    target: impl FnOnce() -> Result<ExecTarget, ProbeError>,
) -> Result<(), ProbeError> {
    match action {
        ProbeAction::Exec(cmd) => exec(&target()?, cmd, timeout),
        ProbeAction::Tcp { host, port } => {
            in_netns(netns, host.clone(), *port, timeout, |_| Ok(()))
        }
        ProbeAction::Http { host, port, path } => {
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path.clone()
            };
            let h = host.clone();
            in_netns(netns, host.clone(), *port, timeout, move |mut s| {
                http_get(&mut s, &h, &path)
            })
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProbeError> {
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            host: host.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ProbeError::NoAddress {
            host: host.to_string(),
        })
}

/// Connects from inside `netns` (or the host's namespace) and runs `then` on the stream.
fn in_netns(
    netns: Option<&Path>,
    host: String,
    port: u16,
    timeout: Duration,
    then: impl FnOnce(TcpStream) -> Result<(), ProbeError> + Send + 'static,
) -> Result<(), ProbeError> {
    let ns: Option<PathBuf> = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let f = std::fs::File::open(&ns)
                .map_err(|source| ProbeError::OpenNetns { path: ns, source })?;
            // This thread only: it ends after the probe.
            setns(f, CloneFlags::CLONE_NEWNET).map_err(ProbeError::Setns)?;
        }
        let addr = resolve(&host, port)?;
        let s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ProbeError::Dial { addr, source })?;
        s.set_read_timeout(Some(timeout))
            .map_err(ProbeError::Stream)?;
        s.set_write_timeout(Some(timeout))
            .map_err(ProbeError::Stream)?;
        then(s)
    })
    .join()
    .map_err(|_| ProbeError::ThreadPanicked)?
}

fn http_get(s: &mut TcpStream, host: &str, path: &str) -> Result<(), ProbeError> {
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: bramble-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(ProbeError::Stream)?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(ProbeError::Stream)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::NotHttp(line.lines().next().unwrap_or("").to_string()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus(code))
    }
}

/// Runs `cmd` in the container, as its own process would run (`bramble-agent enter`).
fn exec(target: &ExecTarget, cmd: &[String], timeout: Duration) -> Result<(), ProbeError> {
    let mut child = target
        .command(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ProbeError::Enter)?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(ProbeError::Exited {
                    command: cmd.to_vec(),
                    status,
                });
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::TimedOut {
                    command: cmd.to_vec(),
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(ProbeError::Wait(e)),
        }
    }
}
