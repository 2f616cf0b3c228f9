//! `bramble-agent shim`: the single-threaded helper that owns one container.
//!
//! It creates and starts the container with libcontainer (the container's init becomes this
//! process's child), writes the init pid, pumps stdout and stderr into the rotating log,
//! reaps init, records the exit (code, OOM kill, times) in the exit file, deletes the
//! container (cgroup and state) and exits. It must stay single-threaded until the container
//! is started: no tokio, no logging threads.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Exit;
use crate::logs::RotatingWriter;

/// Where a shim finds and leaves things.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// Container id
    #[arg(long)]
    pub id: String,
    /// libcontainer's state directory
    #[arg(long)]
    pub state_root: PathBuf,
    /// The OCI bundle (holds config.json)
    #[arg(long)]
    pub bundle: PathBuf,
    /// The container's log file
    #[arg(long)]
    pub log: PathBuf,
    /// Rotate the log past this size
    #[arg(long, default_value_t = 10 << 20)]
    pub max_log_bytes: u64,
    /// The init pid and start time are written here once the container runs
    #[arg(long)]
    pub pid_file: PathBuf,
    /// The exit status is written here when the container ends
    #[arg(long)]
    pub exit_file: PathBuf,
}

fn now() -> i64 {
    bramble_api::time::now_secs()
}

/// Writes a record atomically. Not synced: a container's pid and exit mean nothing after a
/// power cut (the agent then finds the container gone), and every start writes one.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    bramble_support::fs::replace(path, data, 0o644)
}

/// Runs the shim; returns the process exit code.
pub fn run(args: &ShimArgs) -> i32 {
    let started = now();
    let fail = |error: String| {
        eprintln!("shim {}: {error}", args.id);
        let exit = Exit {
            code: 128,
            oom_killed: false,
            started_at: started,
            finished_at: now(),
            error,
        };
        let _ = write_atomic(
            &args.exit_file,
            &serde_json::to_vec(&exit).unwrap_or_default(),
        );
        1
    };
    let mut log = match RotatingWriter::open(&args.log, args.max_log_bytes) {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot open log {}: {e}", args.log.display())),
    };
    let (out_r, out_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let (err_r, err_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_stdout(out_w)
        .with_stderr(err_w)
        .with_root_path(&args.state_root)
        .and_then(|b| b.validate_id())
        .and_then(|b| {
            b.as_init(&args.bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
        });
    let mut container = match built {
        Ok(c) => c,
        Err(e) => return fail(format!("create: {e}")),
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return fail(format!("start: {e}"));
    }
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return fail("the container has no pid after start".into());
    };
    let running_since = now();
    let pid_info = serde_json::json!({"pid": pid.as_raw(), "startedAt": running_since});
    if let Err(e) = write_atomic(&args.pid_file, pid_info.to_string().as_bytes()) {
        eprintln!("shim {}: cannot write the pid file: {e}", args.id);
    }
    let status = pump_until_exit(pid, out_r, err_r, &mut log);
    let code = match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 255,
    };
    let oom_killed = code == 137 && oom_kills(&args.bundle) > 0;
    if let Err(e) = container
        .refresh_status()
        .and_then(|_| container.delete(true))
    {
        eprintln!("shim {}: delete: {e}", args.id);
        // Retry from the state on disk: the cgroup must not be left behind.
        if let Ok(mut c) = Container::load(args.state_root.join(&args.id)) {
            let _ = c.delete(true);
        }
    }
    let exit = Exit {
        code,
        oom_killed,
        started_at: running_since,
        finished_at: now(),
        error: String::new(),
    };
    if let Err(e) = write_atomic(
        &args.exit_file,
        &serde_json::to_vec(&exit).unwrap_or_default(),
    ) {
        eprintln!("shim {}: cannot write the exit file: {e}", args.id);
        return 1;
    }
    0
}

/// Copies the container's output into the log until init exits and the pipes close.
fn pump_until_exit(pid: Pid, out: OwnedFd, err: OwnedFd, log: &mut RotatingWriter) -> WaitStatus {
    let mut open = [
        Some(std::fs::File::from(out)),
        Some(std::fs::File::from(err)),
    ];
    let mut exited: Option<(WaitStatus, Instant)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exited.is_none() {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(s) => exited = Some((s, Instant::now())),
                // ECHILD: someone else reaped it; report an unknown failure.
                Err(_) => exited = Some((WaitStatus::Exited(pid, 255), Instant::now())),
            }
        }
        if let Some((s, at)) = exited {
            // Everything in the container died with its init; give the pipes a moment to drain.
            if open.iter().all(Option::is_none) || at.elapsed() > Duration::from_secs(2) {
                return s;
            }
        }
        let readable: Vec<usize> = {
            let mut fds = Vec::new();
            let mut idx = Vec::new();
            for (i, f) in open.iter().enumerate() {
                if let Some(f) = f {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                    idx.push(i);
                }
            }
            if fds.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(n) if n > 0 => idx
                    .into_iter()
                    .zip(fds.iter())
                    .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i)
                    .collect(),
                _ => Vec::new(),
            }
        };
        for i in readable {
            let Some(f) = open[i].as_mut() else { continue };
            match f.read(&mut buf) {
                Ok(0) | Err(_) => open[i] = None,
                Ok(n) => {
                    if let Err(e) = log.write(&buf[..n]) {
                        eprintln!("log write failed: {e}");
                    }
                }
            }
        }
    }
}

/// The OOM-kill count of the container's memory cgroup (v1 or v2), 0 if unknown.
fn oom_kills(bundle: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(bundle.join("config.json")) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    let Some(cg) = v.pointer("/linux/cgroupsPath").and_then(|p| p.as_str()) else {
        return 0;
    };
    let rel = cg.trim_start_matches('/');
    let candidates = [
        (
            format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"),
            "oom_kill ",
        ),
        (format!("/sys/fs/cgroup/{rel}/memory.events"), "oom_kill "),
    ];
    for (file, key) in candidates {
        if let Ok(t) = std::fs::read_to_string(&file)
            && let Some(n) = t
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|n| n.trim().parse().ok())
        {
            return n;
        }
    }
    0
}
