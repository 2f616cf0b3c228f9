//! What a container may do: its user and groups, capabilities, seccomp filter, `no_new_privs`
//! and read-only root, resolved from the pod's and the container's `securityContext` over
//! hardened defaults (the ones containerd and Docker ship): Docker's default capability set,
//! a seccomp allow-list in the shape of Docker's default profile, `no_new_privs`, masked
//! `/proc` paths and a pids limit. Pure: the bundle writes what this decides.

use std::path::PathBuf;

use bramble_api::pod::{Container, PodSpec, SeccompProfile};
use serde_json::{Value, json};

/// Docker's default capability set (`CapEff` 00000000a80425fb).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The seccomp filter a container runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// The built-in profile ([`default_profile`]).
    RuntimeDefault,
    Unconfined,
    /// A profile file (OCI `linux.seccomp` JSON) on the board, relative to its seccomp
    /// directory (`<data-dir>/seccomp`).
    Localhost(PathBuf),
}

/// A container's effective security settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    /// `supplementalGroups` and `fsGroup`.
    pub extra_groups: Vec<u32>,
    pub privileged: bool,
    pub read_only_root: bool,
    /// The capabilities, `CAP_` names.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            run_as_user: None,
            run_as_group: None,
            run_as_non_root: false,
            extra_groups: Vec::new(),
            privileged: false,
            read_only_root: false,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            no_new_privileges: true,
            seccomp: Seccomp::RuntimeDefault,
        }
    }
}

/// Every capability Linux knows, `CAP_` names.
fn all_capabilities() -> Vec<String> {
    bramble_api::pod::CAPABILITY_NAMES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect()
}

fn cap_name(name: &str) -> String {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    format!("CAP_{bare}")
}

fn id(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

impl Security {
    /// The container's settings: its own `securityContext` over the pod's, over the
    /// defaults.
    pub fn of(pod: &PodSpec, c: &Container) -> Security {
        let p = pod.security_context.clone().unwrap_or_default();
        let s = c.security_context.clone().unwrap_or_default();
        let privileged = s.privileged == Some(true);
        let mut capabilities: Vec<String> = if privileged {
            all_capabilities()
        } else {
            Security::default().capabilities
        };
        if let Some(caps) = &s.capabilities
            && !privileged
        {
            for d in &caps.drop {
                if d == "ALL" || d == "CAP_ALL" {
                    capabilities.clear();
                } else {
                    let d = cap_name(d);
                    capabilities.retain(|c| *c != d);
                }
            }
            for a in &caps.add {
                let a = cap_name(a);
                if !capabilities.contains(&a) {
                    capabilities.push(a);
                }
            }
        }
        let profile = s.seccomp_profile.as_ref().or(p.seccomp_profile.as_ref());
        let seccomp = match profile {
            _ if privileged => Seccomp::Unconfined,
            Some(SeccompProfile { type_, .. }) if type_ == "Unconfined" => Seccomp::Unconfined,
            Some(SeccompProfile {
                type_,
                localhost_profile: Some(f),
            }) if type_ == "Localhost" => Seccomp::Localhost(PathBuf::from(f)),
            _ => Seccomp::RuntimeDefault,
        };
        let mut extra_groups: Vec<u32> = p
            .supplemental_groups
            .iter()
            .filter_map(|g| id(Some(*g)))
            .collect();
        if let Some(g) = id(p.fs_group)
            && !extra_groups.contains(&g)
        {
            extra_groups.push(g);
        }
        Security {
            run_as_user: id(s.run_as_user.or(p.run_as_user)),
            run_as_group: id(s.run_as_group.or(p.run_as_group)),
            run_as_non_root: s.run_as_non_root.or(p.run_as_non_root) == Some(true),
            extra_groups,
            privileged,
            read_only_root: s.read_only_root_filesystem == Some(true),
            capabilities,
            // Kubernetes' default lets processes gain privileges; containerd's and Docker's
            // hardened one does not, and is the one Bramble keeps unless asked.
            no_new_privileges: !privileged && s.allow_privilege_escalation != Some(true),
            seccomp,
        }
    }

    /// The user and group the container runs as, given the image's: `runAsUser` and
    /// `runAsGroup` win (a `runAsUser` without a group runs with group 0, as the kubelet
    /// does for a user the image does not name).
    pub fn user(&self, image: (u32, u32)) -> (u32, u32) {
        match (self.run_as_user, self.run_as_group) {
            (Some(u), Some(g)) => (u, g),
            (Some(u), None) => (u, if u == image.0 { image.1 } else { 0 }),
            (None, Some(g)) => (image.0, g),
            (None, None) => image,
        }
    }

    /// Why the container must not start, if `runAsNonRoot` forbids the user it would run as.
    pub fn refuse_root(&self, uid: u32) -> Option<String> {
        (self.run_as_non_root && uid == 0).then(|| {
            if self.run_as_user.is_some() {
                "container's runAsUser breaks non-root policy (runAsNonRoot and runAsUser 0)"
                    .to_string()
            } else {
                "container has runAsNonRoot and image will run as root (set runAsUser, or use an image with a non-root USER)".to_string()
            }
        })
    }
}

/// Syscalls every container may make: the allow-list of Docker's default profile (names a
/// kernel or an architecture lacks are skipped by the runtime).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Architecture-specific ones.
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// Syscalls allowed only with a capability, as in Docker's profile.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags of `clone` (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): without CAP_SYS_ADMIN a container clones only without them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values a container may set (Linux, 32-bit address space, their variants,
/// and a query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
/// AF_VSOCK: the one socket family Docker's profile refuses.
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp architectures of this build's target (and its 32-bit sibling).
fn architectures() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => &["SCMP_ARCH_ARM"],
        _ => &[],
    }
}

/// The built-in profile (OCI `linux.seccomp`) for a container with `capabilities`: every
/// syscall is refused with EPERM but the allow-list, the capability-bound ones the
/// container holds, `clone` without namespace flags, `clone3` answered ENOSYS (so that libc
/// falls back to `clone`, whose flags the filter can see), `personality` with the usual
/// values and `socket` of any family but vsock.
pub fn default_profile(capabilities: &[String]) -> Value {
    let has = |c: &str| capabilities.iter().any(|x| x == c);
    let mut names: Vec<&str> = ALLOWED.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        if has(cap) {
            names.extend(calls.iter().copied());
        }
    }
    names.sort_unstable();
    names.dedup();
    let mut rules = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    if !has("CAP_SYS_ADMIN") {
        // libcontainer 0.7 reads SCMP_CMP_MASKED_EQ as (arg & valueTwo) == value (runc: the
        // other way round); the container tests see a fork work and `unshare -U` fail.
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0, "valueTwo": CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    for p in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]
        }));
    }
    rules.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]
    }));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> PodSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_hardened() {
        let p = pod("containers: [{name: c, image: busybox}]");
        let s = Security::of(&p, &p.containers[0]);
        assert_eq!(s, Security::default());
        assert!(s.no_new_privileges && !s.privileged && !s.read_only_root);
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        assert_eq!(s.user((0, 0)), (0, 0));
        assert_eq!(s.refuse_root(0), None);
    }

    #[test]
    fn the_container_wins_over_the_pod() {
        let p = pod(
            "securityContext: {runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, supplementalGroups: [4000], runAsNonRoot: true, seccompProfile: {type: Unconfined}}\ncontainers:\n- name: c\n  image: busybox\n  securityContext: {runAsUser: 1001, readOnlyRootFilesystem: true, allowPrivilegeEscalation: true, capabilities: {drop: [ALL], add: [NET_ADMIN, CAP_CHOWN]}, seccompProfile: {type: Localhost, localhostProfile: x/p.json}}\n",
        );
        let s = Security::of(&p, &p.containers[0]);
        assert_eq!(s.user((0, 0)), (1001, 3000));
        assert_eq!(s.extra_groups, vec![4000, 2000]);
        assert!(s.run_as_non_root && s.read_only_root && !s.no_new_privileges);
        assert_eq!(s.capabilities, vec!["CAP_NET_ADMIN", "CAP_CHOWN"]);
        assert_eq!(s.seccomp, Seccomp::Localhost("x/p.json".into()));
        // The pod's profile when the container names none.
        let p = pod(
            "securityContext: {seccompProfile: {type: Unconfined}}\ncontainers: [{name: c, image: i}]",
        );
        assert_eq!(
            Security::of(&p, &p.containers[0]).seccomp,
            Seccomp::Unconfined
        );
    }

    #[test]
    fn privileged_gets_everything_and_no_filter() {
        let p = pod(
            "containers: [{name: c, image: i, securityContext: {privileged: true, capabilities: {drop: [ALL]}}}]",
        );
        let s = Security::of(&p, &p.containers[0]);
        assert!(s.privileged && !s.no_new_privileges);
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert!(s.capabilities.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(
            s.capabilities.len(),
            bramble_api::pod::CAPABILITY_NAMES.len()
        );
    }

    #[test]
    fn run_as_non_root_refuses_uid_0_and_says_why() {
        let p = pod("securityContext: {runAsNonRoot: true}\ncontainers: [{name: c, image: i}]");
        let s = Security::of(&p, &p.containers[0]);
        assert!(s.refuse_root(0).unwrap().contains("image will run as root"));
        assert_eq!(s.refuse_root(1000), None);
        // A runAsUser without a group: group 0 unless it is the image's own user.
        let p = pod("containers: [{name: c, image: i, securityContext: {runAsUser: 7}}]");
        let s = Security::of(&p, &p.containers[0]);
        assert_eq!(s.user((0, 0)), (7, 0));
        assert_eq!(s.user((7, 70)), (7, 70));
    }

    #[test]
    fn the_default_profile_follows_the_capabilities() {
        let rules = |caps: &[&str]| {
            let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
            default_profile(&caps)
        };
        let allowed = |v: &Value| -> Vec<String> {
            v["syscalls"][0]["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        let plain = rules(DEFAULT_CAPABILITIES);
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        let names = allowed(&plain);
        for must in ["read", "execve", "chroot", "setuid"] {
            assert!(names.iter().any(|n| n == must), "{must}");
        }
        for never in [
            "mount", "unshare", "keyctl", "add_key", "ptrace", "reboot", "bpf",
        ] {
            assert!(!names.iter().any(|n| n == never), "{never}");
        }
        let clone = plain["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"][0] == "clone")
            .unwrap();
        assert_eq!(clone["args"][0]["valueTwo"], CLONE_NAMESPACE_FLAGS);
        // With CAP_SYS_ADMIN: mount, unshare, unconditioned clone.
        let admin = rules(&["CAP_SYS_ADMIN"]);
        let names = allowed(&admin);
        assert!(names.iter().any(|n| n == "mount") && names.iter().any(|n| n == "clone"));
        assert!(
            !names.iter().any(|n| n == "chroot"),
            "not without CAP_SYS_CHROOT"
        );
        assert!(
            !admin["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["names"][0] == "clone3")
        );
    }
}
