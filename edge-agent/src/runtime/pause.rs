//! A pod's shared PID namespace (`shareProcessNamespace: true`): a pause process is its
//! PID 1, so that it outlives any one container (a PID namespace dies with its first
//! process) and reaps the processes its containers leave behind, as Kubernetes' pause
//! container does.
//!
//! The agent runs `bramble-agent pause PIDFILE` in a new PID namespace (`unshare` in the
//! child before exec: the namespace is for that process's children). It forks once: the
//! child is PID 1 of the namespace and waits on its children forever; the parent writes the
//! child's host pid and exits. The namespace is bind-mounted to a file so containers join
//! it by path; the pause process is detached (its own session), so it survives an agent
//! restart, as the containers do.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::{RuntimeError, SandboxError};

/// `bramble-agent pause PIDFILE`: call only from a single-threaded process (it forks).
#[allow(unsafe_code)]
pub fn run(pidfile: &Path) -> i32 {
    // SAFETY: the process is single-threaded here (main dispatches before any thread).
    match unsafe { libc::fork() } {
        -1 => 1,
        0 => reap_forever(),
        child => match std::fs::write(pidfile, child.to_string()) {
            Ok(()) => 0,
            Err(_) => {
                // SAFETY: plain kill(2) of the child just forked.
                unsafe { libc::kill(child, libc::SIGKILL) };
                1
            }
        },
    }
}

/// PID 1 of the pod: reaps every process that ends in the namespace. It has no signal
/// handlers, so the kernel drops any signal its pod's processes send it; only SIGKILL from
/// the agent (in the parent namespace) ends it, and with it every process in the pod.
#[allow(unsafe_code)]
fn reap_forever() -> ! {
    let _ = std::env::set_current_dir("/");
    loop {
        // SAFETY: waitpid with a null status pointer is allowed.
        if unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } < 0 {
            // No child yet: the containers' processes become ours when their parents end.
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

fn sandbox_err(uid: &str) -> impl Fn(SandboxError) -> RuntimeError + '_ {
    move |source| RuntimeError::Sandbox {
        uid: uid.to_string(),
        source,
    }
}

fn pidfile(path: &Path) -> PathBuf {
    path.with_extension("pid")
}

/// The pause process's pid, if it still runs and is PID 1 of the namespace at `path`.
fn pause_of(path: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let pid: i32 = std::fs::read_to_string(pidfile(path))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
    let mounted = std::fs::metadata(path).ok()?;
    (ns.ino() == mounted.ino() && ns.dev() == mounted.dev()).then_some(pid)
}

/// Makes the pod's PID namespace at `path` with its pause process (idempotent: one whose
/// pause process still runs is kept).
pub fn create(uid: &str, path: &Path, exe: &Path) -> Result<(), RuntimeError> {
    if super::sandbox::is_mounted(path) {
        if pause_of(path).is_some() {
            return Ok(());
        }
        // The pause process died (and every process of the pod with it): start over.
        remove(uid, path)?;
    }
    let err = sandbox_err(uid);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SandboxError::Io { path: p, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(io(dir))
            .map_err(&err)?;
    }
    let pidfile = pidfile(path);
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("pause")
        .arg(&pidfile)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, unshare) between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            unshare(CloneFlags::CLONE_NEWPID)?;
            Ok(())
        });
    }
    let status = cmd.status().map_err(io(exe)).map_err(&err)?;
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let Some(pid) = pid.filter(|_| status.success()) else {
        return Err(err(SandboxError::Pause(format!(
            "the pause process did not start ({status})"
        ))));
    };
    std::fs::File::create(path)
        .map_err(io(path))
        .map_err(&err)?;
    let ns = format!("/proc/{pid}/ns/pid");
    mount(
        Some(ns.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| {
        // SAFETY: plain kill(2) of the pause process just started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL)
        };
        err(SandboxError::BindMount {
            path: path.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

/// Ends the pause process (and with it every process left in the pod's namespace), then
/// unmounts and removes the namespace file (idempotent).
pub fn remove(uid: &str, path: &Path) -> Result<(), RuntimeError> {
    if let Some(pid) = pause_of(path) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_file(pidfile(path));
    super::sandbox::remove_ns_file(uid, path)
}
