//! Tier-A fleets: boards that are network namespaces on a test LAN, each with its own UTS
//! namespace (hostname) and address, running the cross-compiled aarch64 `bramble-agent`
//! under `qemu-aarch64-static` with `--runtime memory` (libcontainer cannot start containers
//! under qemu-user; everything else — wire protocol, MQTT client, the agent's store,
//! reconnects — is the real aarch64 code). The master runs natively in a namespace of its
//! own with fixed ports, so that it can restart on the same address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netlab::{Host, Lan, enter_netns, in_netns};
use crate::{MasterProcess, eventually};

/// The cross-compiled aarch64 agent (`BRAMBLE_FLEET_AGENT`, or cross/build's output).
pub fn aarch64_agent() -> Result<PathBuf> {
    let p = match std::env::var_os("BRAMBLE_FLEET_AGENT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/aarch64-unknown-linux-musl/release/bramble-agent"),
    };
    if !p.exists() {
        bail!(
            "{} is missing: build it with `BRAMBLE_CROSS_BINS=bramble-agent cross/build aarch64-unknown-linux-musl` (scripts/test does)",
            p.display()
        );
    }
    if !Path::new("/usr/bin/qemu-aarch64-static").exists() {
        bail!("qemu-aarch64-static is missing (cross/setup installs qemu-user-static)");
    }
    Ok(p)
}

/// One emulated board.
pub struct Board {
    pub name: String,
    pub host: Host,
    pub data: PathBuf,
    /// The agent's log (RUST_LOG=info).
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Board {
    /// Starts the agent: a new UTS namespace named after the board, in the board's network
    /// namespace, the aarch64 binary under qemu.
    pub fn start(&mut self, agent: &Path, emulated: bool, url: &str, token: &str) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let script = format!(
            "hostname {} && exec {}{} --data-dir {} --server {url} --token {token} --runtime memory --restart-backoff 500ms --restart-backoff-max 2s",
            self.name,
            if emulated { "qemu-aarch64-static " } else { "" },
            agent.display(),
            self.data.display()
        );
        let child = in_netns(&self.host.path, move || {
            Command::new("unshare")
                .args(["--uts", "sh", "-c", &script])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
        })
        .context("starting an emulated board")?;
        self.child = Some(child);
        Ok(())
    }

    /// A power cut: SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master and N emulated boards on one LAN.
pub struct Fleet {
    pub boards: Vec<Board>,
    pub master: Option<MasterProcess>,
    /// The master's extra flags and address, to restart it the same way.
    pub master_args: Vec<String>,
    pub master_ip: String,
    pub master_dir: PathBuf,
    pub url: String,
    pub token: String,
    pub agent: PathBuf,
    /// Whether the agent runs under qemu (false: a native build, for baselines).
    pub emulated: bool,
    // Dropped last: the namespaces go after every process in them.
    pub lan: Lan,
}

impl Fleet {
    /// Makes the LAN, starts the master (the calling thread moves into its namespace, so
    /// `MasterProcess::cli` and `http` reach it) and `n` boards named `board-01`...
    pub fn start(dir: &Path, n: usize, master_extra: &[&str]) -> Result<Fleet> {
        Self::start_with(dir, n, master_extra, aarch64_agent()?, true)
    }

    /// As [`start`](Self::start) with a given agent binary, emulated or native.
    pub fn start_with(
        dir: &Path,
        n: usize,
        master_extra: &[&str],
        agent: PathBuf,
        emulated: bool,
    ) -> Result<Fleet> {
        let mut lan = Lan::new()?;
        let mhost = lan.host("m", 1)?;
        enter_netns(&mhost.path)?;
        let master_args: Vec<String> = master_extra.iter().map(|s| s.to_string()).collect();
        let master_dir = dir.join("master");
        let master = MasterProcess::start_on(&master_dir, &mhost.ip, master_extra)?;
        let (url, token) = (master.url.clone(), master.join_token());
        let mut boards = Vec::new();
        for i in 1..=n {
            let name = format!("board-{i:02}");
            let host = lan.host(&format!("{i:02}"), 10 + i as u8)?;
            boards.push(Board {
                data: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                host,
                child: None,
            });
        }
        let mut f = Fleet {
            boards,
            master: Some(master),
            master_args,
            master_ip: mhost.ip.clone(),
            master_dir,
            url,
            token,
            agent,
            emulated,
            lan,
        };
        for i in 0..n {
            let (agent, url, token) = (f.agent.clone(), f.url.clone(), f.token.clone());
            f.boards[i].start(&agent, emulated, &url, &token)?;
        }
        Ok(f)
    }

    pub fn master(&self) -> &MasterProcess {
        self.master.as_ref().expect("the master is running")
    }

    /// Restarts the master on the same address and data dir.
    pub fn restart_master(&mut self) -> Result<()> {
        if let Some(m) = self.master.take() {
            m.terminate();
        }
        let args: Vec<&str> = self.master_args.iter().map(String::as_str).collect();
        self.master = Some(MasterProcess::start_on(
            &self.master_dir,
            &self.master_ip,
            &args,
        )?);
        Ok(())
    }

    /// Restarts the master and waits (up to `timeout`) until every board has reconnected;
    /// returns the spread of their reconnect times in seconds (first to last).
    pub fn restart_master_and_measure(&mut self, timeout: Duration) -> Result<f64> {
        let seen: Vec<usize> = self
            .boards
            .iter()
            .map(|b| connect_times(&b.log).len())
            .collect();
        self.restart_master()?;
        let back = eventually(timeout, || {
            self.boards
                .iter()
                .zip(&seen)
                .all(|(b, k)| connect_times(&b.log).len() > *k)
        });
        if !back {
            bail!("not every board reconnected within {timeout:?}");
        }
        let firsts: Vec<f64> = self
            .boards
            .iter()
            .zip(&seen)
            .map(|(b, k)| connect_times(&b.log)[*k])
            .collect();
        let lo = firsts.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = firsts.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        Ok(hi - lo)
    }

    /// Starts a board's agent again (after a kill).
    pub fn restart_board(&mut self, i: usize) -> Result<()> {
        let (agent, url, token) = (self.agent.clone(), self.url.clone(), self.token.clone());
        self.boards[i].start(&agent, self.emulated, &url, &token)
    }

    /// Waits until `n` nodes are Ready.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        eventually(timeout, || self.master().ready_nodes() == n)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for b in &mut self.boards {
            b.kill();
        }
        self.master.take();
    }
}

/// Resident memory (KiB) and CPU time (clock ticks) of a process, from /proc.
pub fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// The times (seconds since midnight UTC) at which an agent log says it connected to the
/// broker.
pub fn connect_times(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("connected to the master's broker"))
        .filter_map(|l| {
            // 2026-11-27T20:18:22.069170Z ... (colour codes removed, if any)
            let mut plain = String::new();
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (false, c) => plain.push(c),
                    _ => {}
                }
            }
            let t = plain
                .split_whitespace()
                .next()?
                .split('T')
                .nth(1)?
                .to_string();
            let t = t.trim_end_matches('Z');
            let mut p = t.split(':');
            let h: f64 = p.next()?.parse().ok()?;
            let m: f64 = p.next()?.parse().ok()?;
            let s: f64 = p.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .collect()
}
