//! `bramble-agent enter`: runs a command inside a running container with the container's own
//! confinement, for exec streams and exec probes.
//!
//! Entering only the namespaces (as `nsenter` does) would run the command as root with every
//! capability, no seccomp filter and no resource limits: a pod whose container runs as an
//! unprivileged user under the default profile would get a root shell with `CAP_SYS_ADMIN`
//! from `kubectl exec`. So the helper does what the container's init did, from the container's
//! `config.json`: it joins the init's cgroups and namespaces, forks (a PID namespace takes
//! effect in children), and the child takes the container's supplementary groups, uid and gid,
//! capability sets, rlimits, `no_new_privs` and seccomp filter, in libcontainer's order, before
//! it execs the command. The parent waits and exits with the command's status (128 + signal
//! when a signal ended it), so that exit codes reach the client.
//!
//! Single-threaded, like the shim: it is started as its own process by the agent, which hands
//! it the command's stdio (pipes or the container's terminal) and environment.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::create_syscall;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork};

/// What to enter and what to run.
#[derive(Debug, Clone, clap::Args)]
pub struct EnterArgs {
    /// The container's init pid (as the host sees it)
    #[arg(long)]
    pub pid: i32,
    /// The container's OCI config (its bundle's config.json)
    #[arg(long)]
    pub config: PathBuf,
    /// The command and its arguments; its environment is this process's
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// The exit code when the command could not be run (as runc and the kubelet report it):
/// 127 when it is not found, 126 when it cannot be executed, 128 for anything else.
const NOT_FOUND: i32 = 127;
const NOT_EXECUTABLE: i32 = 126;
const FAILED: i32 = 128;

/// Runs the helper; returns the process exit code.
pub fn run(args: &EnterArgs) -> i32 {
    match enter(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exec: {e}");
            FAILED
        }
    }
}

fn enter(args: &EnterArgs) -> Result<i32, String> {
    let spec = Spec::load(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    let pid = args.pid;
    // The namespace files first: after the mount namespace, /proc is the container's.
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(t), Ok(o)) => t.ino() == o.ino() && t.dev() == o.dev(),
            (Err(e), _) => return Err(format!("the container is not running ({theirs}: {e})")),
            // A kernel without this namespace type.
            (Ok(_), Err(_)) => true,
        };
        if !same {
            let f = std::fs::File::open(&theirs).map_err(|e| format!("{theirs}: {e}"))?;
            namespaces.push((name, flag, f));
        }
    }
    // The cgroups: the command counts against the container's limits, as its init does.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("the container's cgroups: {e}"))?;
    for path in cgroup_procs_files(&cgroups) {
        std::fs::write(&path, b"0").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for (name, flag, f) in &namespaces {
        setns(f.as_fd(), *flag).map_err(|e| format!("joining the {name} namespace: {e}"))?;
    }
    drop(namespaces);
    // SAFETY: this process is single-threaded (main() runs the helper before anything else
    // starts a thread), so the child may run arbitrary code.
    #[allow(unsafe_code)]
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = confine_and_exec(&spec, &args.command);
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            // The terminal's signals (Ctrl-C, Ctrl-\) reach this process too: it stays to
            // report the command's exit. A handler, not SIG_IGN, so nothing is inherited.
            extern "C" fn nothing(_: i32) {}
            for s in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTSTP] {
                // SAFETY: an empty handler is async-signal-safe.
                #[allow(unsafe_code)]
                let _ = unsafe { signal(s, SigHandler::Handler(nothing)) };
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("wait: {e}")),
                }
            }
        }
    }
}

/// The `cgroup.procs` files of the cgroups a process's `/proc/PID/cgroup` names (v2's single
/// hierarchy, or each v1 controller's), under `/sys/fs/cgroup`.
fn cgroup_procs_files(proc_cgroup: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if rel.contains("..") {
            continue;
        }
        let dir = if controllers.is_empty() {
            root.join(rel)
        } else {
            // v1: one hierarchy per mount; named ones ("name=systemd") mount as their name.
            let mount = controllers.strip_prefix("name=").unwrap_or(controllers);
            let d = root.join(mount);
            if !d.is_dir() {
                continue;
            }
            d.join(rel)
        };
        out.push(dir.join("cgroup.procs"));
    }
    out
}

/// In the forked child, inside the container's namespaces: takes the container process's
/// identity and limits and execs the command. Returns only on failure, with the exit code.
fn confine_and_exec(spec: &Spec, command: &[OsString]) -> i32 {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("exec: {what}: {e}");
        FAILED
    };
    let Some(process) = spec.process() else {
        return fail("the container's config", &"it has no process");
    };
    let syscall = create_syscall();
    if let Some(rlimits) = process.rlimits() {
        for r in rlimits {
            if let Err(e) = syscall.set_rlimit(r) {
                return fail("rlimit", &e);
            }
        }
    }
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // A terminal the agent opened (as root) belongs to the user that works in it.
    if nix::unistd::isatty(0).unwrap_or(false) {
        let _ = nix::unistd::fchown(0, Some(Uid::from_raw(user.uid())), None);
    }
    if let Err(e) = syscall.set_groups(&groups) {
        return fail("supplementary groups", &e);
    }
    if let Err(e) = syscall.set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid())) {
        return fail("uid and gid", &e);
    }
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let no_new_privs = process.no_new_privileges() == Some(true);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: before the capabilities go.
    if let (Some(s), false) = (seccomp, no_new_privs)
        && let Err(e) = libcontainer::seccomp::initialize_seccomp(s)
    {
        return fail("seccomp", &e);
    }
    if let Err(e) = libcontainer::capabilities::reset_effective(&*syscall) {
        return fail("capabilities", &e);
    }
    if let Some(caps) = process.capabilities()
        && let Err(e) = libcontainer::capabilities::drop_privileges(caps, &*syscall)
    {
        return fail("capabilities", &e);
    }
    let cwd = process.cwd();
    if !cwd.as_os_str().is_empty()
        && let Err(e) = nix::unistd::chdir(cwd)
    {
        return fail(&format!("working directory {}", cwd.display()), &e);
    }
    if no_new_privs && let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return fail("no_new_privs", &e);
    }
    let program = match resolve(&command[0]) {
        Ok(p) => p,
        Err(code) => {
            let name = command[0].to_string_lossy();
            eprintln!(
                "exec: \"{name}\": {}",
                if code == NOT_FOUND {
                    "executable file not found in $PATH"
                } else {
                    "permission denied"
                }
            );
            return code;
        }
    };
    let Ok(path) = CString::new(program.as_os_str().as_bytes()) else {
        return fail("command", &"a NUL byte in the program's name");
    };
    let argv: Result<Vec<CString>, _> =
        command.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(argv) = argv else {
        return fail("command", &"a NUL byte in an argument");
    };
    let env: Result<Vec<CString>, _> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv)
        })
        .collect();
    let Ok(env) = env else {
        return fail("environment", &"a NUL byte");
    };
    // The filter as close to the exec as it can be (it may forbid what comes before).
    if let (Some(s), true) = (seccomp, no_new_privs)
        && let Err(e) = libcontainer::seccomp::initialize_seccomp(s)
    {
        return fail("seccomp", &e);
    }
    let e = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    eprintln!("exec: \"{}\": {e}", command[0].to_string_lossy());
    match e {
        nix::errno::Errno::ENOENT => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    }
}

/// The program a command names: a path as given, or the first executable of that name on
/// `$PATH` (the container's, which this process carries). Err is the exit code.
fn resolve(name: &OsStr) -> Result<PathBuf, i32> {
    if name.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(name));
    }
    if name.is_empty() {
        return Err(NOT_FOUND);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        match nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK) {
            Ok(()) if candidate.is_file() => return Ok(candidate),
            Ok(()) => {}
            Err(nix::errno::Errno::EACCES) if candidate.is_file() => denied = true,
            Err(_) => {}
        }
    }
    Err(if denied { NOT_EXECUTABLE } else { NOT_FOUND })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_for_v2_and_v1() {
        let v2 = cgroup_procs_files("0::/bramble/pod-a/c1\n");
        assert_eq!(
            v2,
            vec![PathBuf::from(
                "/sys/fs/cgroup/bramble/pod-a/c1/cgroup.procs"
            )]
        );
        // Odd lines and escapes are skipped, never followed.
        assert!(cgroup_procs_files("garbage\n0::/../../etc\n").is_empty());
    }
}
