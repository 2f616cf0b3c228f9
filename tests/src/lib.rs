//! Harness for Bramble's integration, end-to-end and benchmark code: it starts the real
//! binaries (`bramble-master`, `bramble`) as child processes on loopback with temporary data
//! directories, and offers a bounded `eventually` for waiting on conditions.
//!
//! The binaries come from the same target directory as the test executable; the README's
//! test command builds them first (`cargo build --workspace`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub mod dns;
pub mod fuzz;
pub mod netlab;
pub mod oci;
pub mod qemufleet;
pub mod services;
pub mod vmfleet;

/// The path of a workspace binary built next to the running test or bench.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace` (or --release for benches)",
        p.display()
    );
    p
}

/// The events of a watch on `path` (`...?watch=true`), one JSON value each, read on a
/// thread of their own (the stream ends when the receiver is dropped).
pub fn watch_events(m: &MasterProcess, path: &str) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (code, reader) = m.http().watch(path).expect("watch");
    assert_eq!(code, 200, "watch {path}");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str(&line) else {
                break;
            };
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes; returns whether it became true.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks `cond` every 100 ms for the whole `window`; returns false at the first check that
/// fails. For asserting that something does not happen (a restart, an eviction) over the
/// time it would take to happen, instead of sleeping and looking once.
pub fn consistently(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    loop {
        if !cond() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `bramble-master` child process.
pub struct MasterProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub url: String,
    pub token: String,
    /// The MQTT broker's port (embedded, or the external one the master was pointed at).
    pub mqtt_port: u16,
    /// The cluster CA (PEM), when the master serves TLS (the default).
    pub ca_pem: Option<String>,
}

impl MasterProcess {
    /// Starts a master on 127.0.0.1 port 0 with `data_dir`, and waits until it listens.
    pub fn start(data_dir: &Path) -> Result<MasterProcess> {
        Self::start_with(data_dir, &[])
    }

    /// A master on `ip`'s fixed ports (6443 for the API, 1883 for MQTT), as on a board: for
    /// a master in a network namespace of its own, which can restart on the same address.
    pub fn start_on(data_dir: &Path, ip: &str, extra: &[&str]) -> Result<MasterProcess> {
        let (api, mqtt) = (format!("{ip}:6443"), format!("{ip}:1883"));
        let mut args = vec!["--listen", &api, "--mqtt-listen", &mqtt];
        args.extend_from_slice(extra);
        Self::start_with(data_dir, &args)
    }

    /// The read-only token the master wrote beside its admin token.
    pub fn reader_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("reader.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    /// As [`start`](Self::start), with extra flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Result<MasterProcess> {
        Self::start_limited(data_dir, extra, None, None)
    }

    /// As [`start_with`](Self::start_with), with at most `nofile` open files (as systemd's
    /// default 1,024 would give it) and its log written to `log` instead of the test's.
    pub fn start_limited(
        data_dir: &Path,
        extra: &[&str],
        nofile: Option<u64>,
        log: Option<&Path>,
    ) -> Result<MasterProcess> {
        let mut cmd = Command::new(bin("bramble-master"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            #[allow(unsafe_code)]
            // SAFETY: between fork and exec only setrlimit(2) runs, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::inherit(),
        };
        let mut child =
            cmd.arg("--data-dir")
                .arg(data_dir)
                .args(if extra.iter().any(|a| a.starts_with("--listen")) {
                    &[][..]
                } else {
                    &["--listen", "127.0.0.1:0"][..]
                })
                .args(
                    if extra.iter().any(|a| {
                        a.starts_with("--mqtt-listen") || a.starts_with("--external-broker")
                    }) {
                        &[][..]
                    } else {
                        &["--mqtt-listen", "127.0.0.1:0"][..]
                    },
                )
                .args(extra)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .context("spawning bramble-master")?;
        let stdout = child.stdout.take().context("master stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the master never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("bramble-master did not report its address (exit: {status:?})");
            }
        };
        let mut words = line.split_whitespace();
        let url = words
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .ok_or_else(|| anyhow!("unexpected first line from bramble-master: {line:?}"))?
            .to_string();
        let mqtt_port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mqtt://").or(w.strip_prefix("mqtts://")))
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no mqtt address in {line:?}"))?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_string();
        let ca_pem = if url.starts_with("https://") {
            Some(std::fs::read_to_string(data_dir.join("ca.crt")).context("the master's ca.crt")?)
        } else {
            None
        };
        Ok(MasterProcess {
            child,
            data_dir: data_dir.to_path_buf(),
            url,
            token,
            mqtt_port,
            ca_pem,
        })
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id() as i32, sig);
    }

    /// SIGKILLs the master (a power cut, as far as the process is concerned) and reaps it.
    pub fn kill9(mut self) {
        kill9_child(&mut self.child);
    }

    /// SIGTERMs the master and waits for it to exit; returns its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        terminate_child(&mut self.child)
    }

    /// Runs the real `bramble` CLI against this master.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Runs `bramble` with `stdin` as its standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("bramble"));
        cmd.args(["--server", &self.url, "--token", &self.token])
            .args(self.ca_args())
            .args(args)
            .env_remove("BRAMBLE_CONFIG")
            .env_remove("BRAMBLE_SERVER")
            .env_remove("BRAMBLE_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn bramble");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("bramble output")
    }

    /// An HTTP client for this master's API, with the admin token.
    pub fn http(&self) -> Http {
        self.http_as(&self.token)
    }

    /// An HTTP client for this master's API, with `token`, trusting its CA.
    pub fn http_as(&self, token: &str) -> Http {
        Http::with_ca(&self.url, token, self.ca_pem.as_deref())
    }

    /// `--certificate-authority DATA_DIR/ca.crt` when the master serves TLS: for `bramble`
    /// and `bramble-proxy`.
    pub fn ca_args(&self) -> Vec<String> {
        match self.ca_pem {
            Some(_) => vec![
                "--certificate-authority".into(),
                self.data_dir.join("ca.crt").display().to_string(),
            ],
            None => Vec::new(),
        }
    }

    /// rumqttc options for a raw client of this master's broker (TLS with its CA when it
    /// serves TLS): for tests that play a hostile board.
    pub fn mqtt_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.mqtt_port);
        if let Some(ca) = &self.ca_pem {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(rustls_client(ca)),
            ));
        }
        opts
    }
}

/// A rustls client configuration trusting only `ca_pem`.
pub fn rustls_client(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    bramble_support::tls::client_config(ca_pem).expect("the cluster CA")
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MasterProcess {
    /// The first join token the master created, as it wrote it to `join-token` (pinned
    /// to the CA when the master serves TLS).
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("join-token"))
            .expect("the master's join-token file")
            .trim()
            .to_string()
    }

    /// A pod's JSON, or None when it does not exist.
    /// A string field of a pod (`["status", "podIP"]`); empty when absent.
    pub fn pod_field(&self, pod: &str, path: &[&str]) -> String {
        let Some(mut v) = self.pod(pod) else {
            return String::new();
        };
        for p in path {
            v = v[*p].clone();
        }
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        let r = self
            .http()
            .get(&format!("/api/v1/namespaces/default/pods/{name}"))
            .ok()?;
        (r.code == 200).then(|| r.json())
    }

    /// Every pod in the default namespace, as JSON.
    pub fn pods(&self) -> Vec<serde_json::Value> {
        self.http()
            .get("/api/v1/namespaces/default/pods")
            .map(|r| r.json()["items"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// How many nodes are Ready.
    pub fn ready_nodes(&self) -> usize {
        let Ok(r) = self.http().get("/api/v1/nodes") else {
            return 0;
        };
        let v = r.json();
        v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|n| {
                        n["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// A node's Ready condition: (status, reason).
    pub fn node_ready(&self, name: &str) -> Option<(String, String)> {
        let r = self.http().get(&format!("/api/v1/nodes/{name}")).ok()?;
        if r.code != 200 {
            return None;
        }
        let v = r.json();
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
        ))
    }
}

/// Fails (never skips) when the test is not root: containers, namespaces and cgroups need it.
pub fn require_root() {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs real containers and needs root (CI runs as root)"
    );
}

/// Fills `<images>/busybox/rootfs` from Debian's busybox-static.
pub fn busybox_image(images: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static (scripts/setup does)");
    }
    let root = images.join("busybox/rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "var"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
    }
    Ok(())
}

/// `bramble-agent --data-dir DIR` with the tests' logging and stdio (RUST_LOG, default warn);
/// with `BRAMBLE_TEST_AGENT_LOGS` set, its log goes to `DIR.log` instead of the test's.
fn agent_command(data_dir: &Path) -> Command {
    let mut c = Command::new(bin("bramble-agent"));
    let stderr = match std::env::var_os("BRAMBLE_TEST_AGENT_LOGS") {
        Some(_) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .map_or_else(|_| Stdio::inherit(), Stdio::from),
        None => Stdio::inherit(),
    };
    c.arg("--data-dir")
        .arg(data_dir)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    c
}

/// A `bramble-agent` child process.
pub struct AgentProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub node: String,
}

impl AgentProcess {
    /// The node's wire secret, from the token in its credentials (the master keeps only the
    /// secret and the token's hash).
    pub fn secret(&self) -> bramble_support::wire_auth::NodeSecret {
        let creds: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data_dir.join("credentials.json")).expect("credentials.json"),
        )
        .expect("credentials.json is JSON");
        bramble_support::wire_auth::NodeSecret::from_token(
            creds["nodeToken"].as_str().expect("nodeToken"),
        )
    }

    /// Starts an agent that joins `master` as `node`, with test-friendly timings
    /// (restart back-off 500ms) and a busybox image in its images dir.
    pub fn start(
        master: &MasterProcess,
        data_dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        Self::join(&master.url, &master.join_token(), data_dir, node, extra)
    }

    /// As [`start`](Self::start), from the master's URL and a join token.
    pub fn join(
        url: &str,
        token: &str,
        data_dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        busybox_image(&data_dir.join("images"))?;
        // From a 0600 file, as install.sh sets it up; the agent deletes it once it has joined.
        let file = data_dir.with_extension("join-token");
        bramble_support::fs::write_atomic(&file, token.as_bytes(), 0o600)?;
        let join = [
            "--server".to_string(),
            url.to_string(),
            "--token-file".to_string(),
            file.display().to_string(),
        ];
        Self::spawn(data_dir, node, &join, extra, false)
    }

    /// As [`join`](Self::join), with the pod network (bridge, veths, routes, proxy): for an
    /// agent in a network namespace of its own (see [`netlab`]).
    pub fn join_with_pod_network(
        url: &str,
        token: &str,
        data_dir: &Path,
        node: &str,
    ) -> Result<AgentProcess> {
        Self::join_with_pod_network_args(url, token, data_dir, node, &[])
    }

    /// As [`join_with_pod_network`](Self::join_with_pod_network), with more arguments.
    pub fn join_with_pod_network_args(
        url: &str,
        token: &str,
        data_dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        busybox_image(&data_dir.join("images"))?;
        let join = ["--server", url, "--token", token].map(str::to_string);
        Self::spawn(data_dir, node, &join, extra, true)
    }

    /// Starts the agent again from its data dir alone (it has joined: no server or token).
    pub fn restart(data_dir: &Path, node: &str, extra: &[&str]) -> Result<AgentProcess> {
        Self::spawn(data_dir, node, &[], extra, false)
    }

    /// As [`restart`](Self::restart), with the pod network.
    pub fn restart_with_pod_network(data_dir: &Path, node: &str) -> Result<AgentProcess> {
        Self::spawn(data_dir, node, &[], &[], true)
    }

    /// Agents that share the host's network namespace run without the pod network (the
    /// bridges and routes of several agents would collide there).
    fn spawn(
        data_dir: &Path,
        node: &str,
        join: &[String],
        extra: &[&str],
        pod_network: bool,
    ) -> Result<AgentProcess> {
        let child = agent_command(data_dir)
            .args(join)
            .args(if pod_network {
                &[][..]
            } else {
                &["--no-pod-network"][..]
            })
            .args([
                "--node-name",
                node,
                "--restart-backoff",
                "500ms",
                "--restart-backoff-max",
                "2s",
            ])
            .args(extra)
            .spawn()
            .context("spawning bramble-agent")?;
        Ok(AgentProcess {
            child,
            data_dir: data_dir.to_path_buf(),
            node: node.to_string(),
        })
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id() as i32, sig);
    }

    /// SIGKILLs the agent and reaps it.
    pub fn kill9(mut self) {
        kill9_child(&mut self.child);
    }

    /// SIGTERMs the agent and waits for it (its containers keep running).
    pub fn terminate(mut self) -> Option<i32> {
        terminate_child(&mut self.child)
    }

    /// The init pids of this agent's running containers.
    pub fn container_pids(&self) -> Vec<i32> {
        container_pids(&self.data_dir)
    }
}

/// The init pids of the running containers of an agent data dir.
pub fn container_pids(data_dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(data_dir.join("containers")) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.path().join("exit.json").exists() {
                continue;
            }
            if let Ok(t) = std::fs::read_to_string(e.path().join("pid.json"))
                && let Some(pid) = serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .and_then(|v| v["pid"].as_i64())
            {
                out.push(pid as i32);
            }
        }
    }
    out.sort();
    out
}

/// SIGKILLs a child process and reaps it.
fn kill9_child(child: &mut Child) {
    send_signal(child.id() as i32, libc::SIGKILL);
    let _ = child.wait();
}

/// SIGTERMs a child and waits (20 s at most, then kills it); returns its exit code.
fn terminate_child(child: &mut Child) -> Option<i32> {
    send_signal(child.id() as i32, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a process.
pub fn send_signal(pid: i32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `bramble-agent hollow` process: many simulated nodes (real agent code, in-memory
/// containers), each with its own MQTT connection.
pub struct HollowProcess {
    pub child: Child,
}

impl HollowProcess {
    /// Starts `count` hollow nodes named `<prefix>-<n>` joining `master`.
    pub fn start(
        master: &MasterProcess,
        data_dir: &Path,
        prefix: &str,
        count: usize,
        extra: &[&str],
    ) -> Result<HollowProcess> {
        let child = agent_command(data_dir)
            .args(["--server", &master.url, "--token", &master.join_token()])
            .args(["--restart-backoff", "500ms", "--restart-backoff-max", "2s"])
            .args(["hollow", "--count", &count.to_string(), "--prefix", prefix])
            .args(extra)
            .spawn()
            .context("spawning bramble-agent hollow")?;
        Ok(HollowProcess { child })
    }
}

impl HollowProcess {
    /// Starts hollow nodes again from their data dir (they have joined).
    pub fn restart_in(
        master: &MasterProcess,
        data_dir: &Path,
        prefix: &str,
        count: usize,
    ) -> Result<HollowProcess> {
        Self::start(master, data_dir, prefix, count, &[])
    }
}

impl Drop for HollowProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs [`cleanup_agent_dir`] when dropped: a test holds one per agent data dir, so the
/// cleanup happens also when the test fails.
pub struct AgentDirCleanup(pub PathBuf);

impl Drop for AgentDirCleanup {
    fn drop(&mut self) {
        cleanup_agent_dir(&self.0);
    }
}

/// Kills every container an agent data dir still runs and undoes its mounts (test cleanup,
/// also after a failure).
pub fn cleanup_agent_dir(data_dir: &Path) {
    // Kill until every shim is done: a shim may still be starting a container (and write its
    // pid later) when this runs.
    eventually(Duration::from_secs(15), || {
        for pid in container_pids(data_dir) {
            send_signal(pid, libc::SIGKILL);
        }
        let state_empty = std::fs::read_dir(data_dir.join("run"))
            .map(|rd| rd.count() == 0)
            .unwrap_or(true);
        state_empty && shims_of(data_dir).is_empty()
    });
    let prefix = data_dir.to_string_lossy().to_string();
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for m in info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
        {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
    // The pod-level cgroups are the agent's to remove; without it, the test removes them.
    if let Ok(rd) = std::fs::read_dir(data_dir.join("pods")) {
        for uid in rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
        {
            for d in pod_cgroups(&uid) {
                if let Ok(children) = std::fs::read_dir(&d) {
                    for c in children
                        .filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                    {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

/// Pids of shim processes working in an agent data dir.
pub fn shims_of(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(" shim ") && cmd.contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Mount points below `dir` (to assert nothing is left behind).
/// The mounts pods left under an agent's data dir: [`mounts_under`] but the agent's own
/// tmpfs for OCI bundles (`DIR/bundles`), which must be empty.
pub fn pod_mounts_under(dir: &Path) -> Vec<String> {
    let bundles = dir.join("bundles");
    let left: Vec<String> = std::fs::read_dir(&bundles)
        .map(|rd| {
            rd.flatten()
                .map(|e| format!("bundle {}", e.path().display()))
                .collect()
        })
        .unwrap_or_default();
    let own = bundles.to_string_lossy().to_string();
    mounts_under(dir)
        .into_iter()
        .filter(|m| *m != own)
        .chain(left)
        .collect()
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Cgroup directories of a pod (any controller, v1 or v2).
pub fn pod_cgroups(uid: &str) -> Vec<PathBuf> {
    let rel = format!("bramble/pod{uid}");
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    if root.join(&rel).exists() {
        out.push(root.join(&rel));
    }
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path().join(&rel);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

/// A minimal HTTP client for tests: answers (status, headers, body) and never treats a
/// 4xx/5xx as a transport error.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    tls: Option<ureq::tls::TlsConfig>,
    base: String,
    token: String,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    /// A client for `base` (e.g. `http://127.0.0.1:1234`) with a bearer token.
    pub fn new(base: &str, token: &str) -> Http {
        Self::with_ca(base, token, None)
    }

    /// As [`new`](Self::new), trusting only `ca_pem` for https.
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Http {
        let tls = ca_pem.map(ureq_tls);
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if let Some(t) = &tls {
            b = b.tls_config(t.clone());
        }
        Http {
            agent: b.build().into(),
            tls,
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    fn finish(
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply> {
        let resp = r.map_err(|e| anyhow!("request failed: {e}"))?;
        let code = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()?;
        Ok(Reply {
            code,
            headers,
            body,
        })
    }

    /// A request with any method, content type and body; `auth: false` omits the token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        auth: bool,
    ) -> Result<Reply> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if auth {
            req = req.header("Authorization", format!("Bearer {}", self.token));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let req = req.body(body.to_vec())?;
        Self::finish(self.agent.run(req))
    }

    /// A request with the token and extra headers (no body).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish(self.agent.run(req.body(Vec::new())?))
    }

    /// A request asking to upgrade to `upgrade` (for the refusals of stream endpoints).
    pub fn upgrade_request(&self, method: &str, path: &str, upgrade: &str) -> Result<Reply> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Connection", "Upgrade")
            .header("Upgrade", upgrade)
            .body(Vec::new())?;
        Self::finish(self.agent.run(req))
    }

    /// GET with the token.
    pub fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, None, b"", true)
    }

    /// POST JSON with the token.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        self.request(
            "POST",
            path,
            Some("application/json"),
            &serde_json::to_vec(body)?,
            true,
        )
    }

    /// PUT JSON with the token.
    pub fn put_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        self.request(
            "PUT",
            path,
            Some("application/json"),
            &serde_json::to_vec(body)?,
            true,
        )
    }

    /// Opens a watch stream and returns a line reader over it.
    pub fn watch(&self, path: &str) -> Result<(u16, Box<dyn BufRead + Send>)> {
        let mut b = ureq::Agent::config_builder().http_status_as_error(false);
        if let Some(t) = &self.tls {
            b = b.tls_config(t.clone());
        }
        let agent: ureq::Agent = b.build().into();
        let resp = agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| anyhow!("watch failed: {e}"))?;
        let code = resp.status().as_u16();
        Ok((
            code,
            Box::new(BufReader::new(resp.into_body().into_reader())),
        ))
    }
}

/// ureq's TLS settings trusting only `ca_pem`.
pub fn ureq_tls(ca_pem: &str) -> ureq::tls::TlsConfig {
    bramble_support::tls::ureq_tls(ca_pem).expect("the cluster CA")
}

/// A pod manifest (YAML) with one busybox container.
pub fn pod_yaml(name: &str, namespace: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{{labels}}}\nspec:\n  containers:\n  - name: main\n    image: busybox\n    command: [sleep, \"3600\"]\n"
    )
}

/// A pod as a JSON value.
pub fn pod_json(name: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"],
                 "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}
    })
}

/// The stdout of a CLI run, or a panic with its stderr.
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bramble failed ({:?}): stdout {} stderr {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A mosquitto broker child process, killed on drop.
pub struct Mosquitto(pub Child);
impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Debian's mosquitto on a free loopback port (anonymous, no persistence).
pub fn start_mosquitto(dir: &Path) -> Result<(Mosquitto, u16)> {
    start_mosquitto_with(dir, "allow_anonymous true\n")
}

/// As [`start_mosquitto`], with these configuration lines (authentication, ACLs).
pub fn start_mosquitto_with(dir: &Path, extra: &str) -> Result<(Mosquitto, u16)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("mosquitto is missing: apt-get install mosquitto (scripts/setup does)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\n{extra}persistence false\nlog_dest stderr\nlog_type error\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning mosquitto")?;
    let m = Mosquitto(child);
    if !eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        bail!("mosquitto did not start");
    }
    Ok((m, port))
}

/// A process's CPU time (user + system) in seconds, for the benches; 0 if it cannot be read.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After "pid (comm)", utime and stime (fields 14 and 15 of stat) are the 12th and 13th.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ on Linux
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; 0 for no values.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A process's resident memory (VmRSS) in MB, for the benches; 0 if it cannot be read.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// An echo pod pinned to `node`, labelled `app: APP`: answers each connection on port 8080
/// (named `http`) with its name, then echoes; ready once it listens. A YAML document with
/// its `---`.
pub fn echo_pod(name: &str, node: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [nc, -ll, -p, "8080", -e, /bin/sh, -c, "hostname; exec cat"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
"#
    )
}

/// The cumulative buckets of a Prometheus histogram in `metrics` (the text format), as
/// (upper bound in its unit, count).
pub fn histogram_buckets(metrics: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// What was observed between two readings of the same histogram.
pub fn histogram_window(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
            (*le, c.saturating_sub(b))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket as
/// Prometheus' `histogram_quantile` does (the highest finite bound if it is in +Inf).
pub fn histogram_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, c) in buckets {
        let c = c as f64;
        if c >= rank {
            if le.is_infinite() {
                return lo;
            }
            let inside = c - below;
            return if inside > 0.0 {
                lo + (le - lo) * (rank - below) / inside
            } else {
                le
            };
        }
        lo = le;
        below = c;
    }
    lo
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let text = "x_bucket{le=\"0.1\"} 50\nx_bucket{le=\"0.5\"} 90\nx_bucket{le=\"1\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_count 100\n";
        let b = histogram_buckets(text, "x");
        assert_eq!(b.len(), 4);
        assert!((histogram_quantile(&b, 0.5) - 0.1).abs() < 1e-9);
        assert!((histogram_quantile(&b, 0.7) - 0.3).abs() < 1e-9);
        assert!((histogram_quantile(&b, 0.99) - 0.95).abs() < 1e-9);
        let before = histogram_buckets("x_bucket{le=\"0.1\"} 40\nx_bucket{le=\"+Inf\"} 40\n", "x");
        assert_eq!(histogram_window(&before, &b)[0], (0.1, 10));
    }
}
