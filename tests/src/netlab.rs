//! Network labs for the tests: "hosts" that are network namespaces on a test bridge (in a
//! namespace of its own), so that several agents, each with its own pod bridge, routes and
//! iptables rules, run side by side on this machine and nothing touches the host's own
//! namespace. Every namespace the lab made is deleted when it drops, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `f` on a thread that has joined the network namespace at `path`: its sockets and
/// the processes it spawns live there.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Moves the calling thread into the namespace at `path` (for a test's own thread).
pub fn enter_netns(path: &Path) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", path.display()))
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host on the lab's LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns`).
    pub ns: String,
    pub path: PathBuf,
    pub ip: String,
}

impl Host {
    /// Runs a command in this host's namespace and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["netns", "exec", &self.ns];
        v.extend_from_slice(args);
        ip(&v)
    }
}

/// A LAN: a bridge in its own namespace, and hosts attached to it.
pub struct Lan {
    prefix: String,
    tag: String,
    lan: String,
    namespaces: Vec<String>,
}

impl Lan {
    /// A new LAN `10.199.<n>.0/24` (n from the process id and a counter, so concurrent
    /// labs differ).
    pub fn new() -> Result<Lan> {
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("bl{}x{n}", pid % 100_000);
        let lan = format!("{tag}lan");
        let mut l = Lan {
            prefix: format!("10.199.{}", (pid + n * 37) % 250 + 1),
            tag,
            lan: lan.clone(),
            namespaces: Vec::new(),
        };
        ip(&["netns", "add", &lan])?;
        l.namespaces.push(lan.clone());
        ip(&["-n", &lan, "link", "add", "lan0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "lan0", "up"])?;
        Ok(l)
    }

    /// Adds host `name` with address `<prefix>.<n>`.
    pub fn host(&mut self, name: &str, n: u8) -> Result<Host> {
        let ns = format!("{}{name}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let port = format!("p{name}");
        ip(&[
            "-n", &self.lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&[
            "-n", &self.lan, "link", "set", &port, "master", "lan0", "up",
        ])?;
        let addr = format!("{}.{n}", self.prefix);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host {
            path: PathBuf::from("/run/netns").join(&ns),
            ns,
            ip: addr,
        })
    }

    /// The LAN's first three octets, e.g. `10.199.7`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the LAN's bridge `lan0`.
    pub fn lan_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.lan)
    }

    /// Runs `ip ARGS` in the LAN's namespace.
    pub fn run_in_lan(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["-n", &self.lan];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// Cuts (false) or restores (true) a host's link to the LAN.
    pub fn link(&self, host: &str, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.lan,
            "link",
            "set",
            &format!("p{host}"),
            if up { "up" } else { "down" },
        ])
        .map(|_| ())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
