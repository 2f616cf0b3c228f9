//! A pod's sandbox: the network namespace its containers share. Until pod networking, it
//! holds only a loopback interface (which is brought up).
//!
//! The namespace is made on a short-lived thread (`unshare(CLONE_NEWNET)` changes only the
//! calling thread) and kept alive by bind-mounting it to a file, so containers join it by
//! path and it outlives any one of them.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::{RuntimeError, SandboxError};

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether something is mounted exactly at `path` (from /proc/self/mountinfo; a statfs
/// would be fooled when the data dir itself is on overlayfs).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `path` is a mounted namespace file.
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| crate::facts::fs_type(&s) == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates the network namespace file at `path` (idempotent).
pub fn create_netns(uid: &str, path: &Path) -> Result<(), RuntimeError> {
    if is_mounted(path) {
        return Ok(());
    }
    make_netns(path).map_err(|source| RuntimeError::Sandbox {
        uid: uid.to_string(),
        source,
    })
}

fn make_netns(path: &Path) -> Result<(), SandboxError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::File::create(path).map_err(io(path))?;
    let target: PathBuf = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), SandboxError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(SandboxError::Unshare)?;
        loopback_up().map_err(SandboxError::LoopbackUp)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| SandboxError::BindMount {
            path: target,
            source,
        })
    })
    .join()
    .map_err(|_| SandboxError::ThreadPanicked)?;
    made.inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Unmounts and removes a namespace file (the network one, or a pod's PID namespace) (idempotent).
pub fn remove_ns_file(uid: &str, path: &Path) -> Result<(), RuntimeError> {
    let err = |source| RuntimeError::Sandbox {
        uid: uid.to_string(),
        source,
    };
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|source| {
            err(SandboxError::Unmount {
                path: path.to_path_buf(),
                source,
            })
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(err(SandboxError::Io {
            path: path.to_path_buf(),
            source,
        })),
    }
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    lo_flags(true).map(|_| ())
}

/// The flags of `lo` in the calling thread's network namespace, after setting IFF_UP if
/// `set_up`.
#[allow(unsafe_code)]
fn lo_flags(set_up: bool) -> std::io::Result<libc::c_short> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) returns a new descriptor or -1; ownership passes to OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a valid, owned descriptor from the call above.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the descriptor is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS filled in.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if !set_up {
        return Ok(flags);
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own; the descriptor is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags | libc::IFF_UP as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CI runs as root): a real namespace, then nothing left behind.
    #[test]
    fn creates_and_removes_a_network_namespace() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("netns/pod1");
        create_netns("pod1", &p).unwrap();
        assert!(is_mounted(&p));
        create_netns("pod1", &p).unwrap();
        // lo is up inside: join the namespace on a thread and look at its flags.
        let p2 = p.clone();
        let up = std::thread::spawn(move || {
            let f = std::fs::File::open(&p2).unwrap();
            nix::sched::setns(f, CloneFlags::CLONE_NEWNET).unwrap();
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            let ifs: Vec<String> = dev
                .lines()
                .skip(2)
                .map(|l| l.split(':').next().unwrap().trim().to_string())
                .collect();
            (ifs, lo_flags(false).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(
            up.0,
            vec!["lo".to_string()],
            "a fresh namespace holds only lo"
        );
        assert!(up.1 & libc::IFF_UP as libc::c_short != 0, "lo must be up");
        remove_ns_file("pod1", &p).unwrap();
        assert!(!p.exists());
        remove_ns_file("pod1", &p).unwrap();
    }
}
