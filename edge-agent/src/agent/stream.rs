//! Streams to pods, for `kubectl exec|port-forward` and `bramble exec|port-forward`: when
//! the master asks over MQTT ([`StreamOpen`]), the agent opens a connection back to the
//! master's API (TLS, the node's token), upgrades it to `bramble_support::stream`, and runs
//! the stream there: a command in the container, confined as its own process is
//! (`bramble-agent enter`, as exec probes run), with pipes or a terminal, or a TCP
//! connection made inside the pod's network namespace. The board needs no inbound port;
//! flow control is TCP's.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::wire::{StreamKind, StreamOpen};
use bramble_support::stream::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::pods::StreamTarget;
use crate::runtime::ExecTarget;

/// How the agent reaches the master's API.
pub struct Dial {
    pub server: String,
    /// The cluster CA (PEM); empty for a plaintext master.
    pub ca_pem: String,
    pub token: String,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How long connecting back and the upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a terminal exec waits for the client's terminal size before it starts.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(500);
/// How long an exec's output may still drain after its process ended (a background process
/// that keeps the pipes open does not hold the stream).
const DRAIN: Duration = Duration::from_secs(2);

/// Runs a stream the master asked for, on its own task; `target` is what the pod manager
/// resolved (or why it could not), reported to the client on the error channel.
pub fn spawn(dial: Arc<Dial>, open: StreamOpen, target: Result<StreamTarget, String>) {
    tokio::spawn(async move {
        let id = open.id.clone();
        if let Err(e) = run(&dial, open, target).await {
            tracing::warn!(stream = %id, error = %e, "stream to a pod ended with an error");
        }
    });
}

async fn run(
    dial: &Dial,
    open: StreamOpen,
    target: Result<StreamTarget, String>,
) -> std::io::Result<()> {
    let io = tokio::time::timeout(CONNECT_TIMEOUT, connect(dial, &open.id))
        .await
        .map_err(|_| std::io::Error::other("connecting back to the master timed out"))??;
    let target = match target {
        Ok(t) => t,
        Err(message) => return refuse(io, &open.kind, &message).await,
    };
    let kind = open.kind.clone();
    match open.kind {
        StreamKind::Exec {
            command,
            stdin,
            tty,
            ..
        } => match target.exec {
            Some(t) => exec(io, t, command, stdin, tty).await,
            None => refuse(io, &kind, "no container").await,
        },
        StreamKind::PortForward { port } => {
            let what = format!("pod {}/{}", open.namespace, open.pod);
            forward(io, target.netns, port, &what).await
        }
        StreamKind::Attach { .. } => match (target.exec, target.log) {
            (Some(t), Some(log)) => attach(io, t.pid, log).await,
            _ => refuse(io, &kind, "no container").await,
        },
    }
}

/// How often an attach looks for new output.
const ATTACH_POLL: Duration = Duration::from_millis(100);

/// Follows the container's log from its current end while its first process lives (its
/// output goes to the log through the shim), then ends with Success.
async fn attach(io: Box<dyn Io>, pid: i32, log: PathBuf) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let start = tokio::fs::metadata(&log)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let follow = async move {
        let mut offset = start;
        let alive = PathBuf::from(format!("/proc/{pid}"));
        loop {
            let (path, from) = (log.clone(), offset);
            let (data, next) = tokio::task::spawn_blocking(move || {
                crate::logs::read_from(&path, from, stream::MAX_FRAME as u64)
            })
            .await
            .map_err(std::io::Error::other)??;
            offset = next;
            if !data.is_empty() {
                stream::write(&mut wr, STDOUT, &data).await?;
                continue;
            }
            if !alive.exists() {
                break;
            }
            tokio::time::sleep(ATTACH_POLL).await;
        }
        stream::write(&mut wr, ERROR, &stream::exit_status(0)).await?;
        wr.shutdown().await
    };
    // The client's side carries nothing an attach reads; its end ends the attach.
    let client = async move { while let Ok(Some(_)) = stream::read(&mut rd).await {} };
    tokio::select! {
        r = follow => r,
        _ = client => Ok(()),
    }
}

/// Ends a stream that cannot run with its reason on the error channel.
async fn refuse(mut io: Box<dyn Io>, kind: &StreamKind, message: &str) -> std::io::Result<()> {
    let body = match kind {
        StreamKind::Exec { .. } | StreamKind::Attach { .. } => stream::failure_status(message),
        StreamKind::PortForward { .. } => message.as_bytes().to_vec(),
    };
    stream::write(&mut io, ERROR, &body).await?;
    io.shutdown().await
}

/// Connects to the master's API and upgrades to the stream protocol for stream `id`.
async fn connect(dial: &Dial, id: &str) -> std::io::Result<Box<dyn Io>> {
    let (host, port) = crate::join::server_host(&dial.server);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = if dial.ca_pem.is_empty() {
        Box::new(tcp)
    } else {
        let config =
            bramble_support::tls::client_config(&dial.ca_pem).map_err(std::io::Error::other)?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(std::io::Error::other)?;
        Box::new(
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?,
        )
    };
    let request = format!(
        "GET /bramble/v1/streams/{id} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
        dial.token,
        stream::UPGRADE
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    // The answer's head, byte by byte: nothing of the stream after it may be read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8 << 10 {
            return Err(std::io::Error::other("the master's answer has no end"));
        }
        head.push(io.read_u8().await?);
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/1.1 101") {
        let line = text.lines().next().unwrap_or_default().to_string();
        return Err(std::io::Error::other(format!(
            "the master refused the stream: {line}"
        )));
    }
    Ok(io)
}

/// What the stream's reader hands the command's input thread.
enum Input {
    Data(Vec<u8>),
    Close,
    Resize(stream::TerminalSize),
}

/// Runs `command` in the container's namespaces and carries its stdio over the stream.
async fn exec(
    io: Box<dyn Io>,
    target: ExecTarget,
    command: Vec<String>,
    stdin: bool,
    tty: bool,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    // Frames on a task of their own (a frame read is not cancel-safe), so that a terminal's
    // first size can be awaited for a moment: the command then starts at the client's size
    // (a shell or `stty size` reads it at once).
    let (frames_tx, mut frames) = mpsc::channel::<(u8, Vec<u8>)>(16);
    tokio::spawn(async move {
        while let Ok(Some(f)) = stream::read(&mut rd).await {
            if frames_tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut early = std::collections::VecDeque::new();
    let mut size = None;
    if tty {
        let deadline = tokio::time::Instant::now() + FIRST_SIZE_WAIT;
        // At most a few frames (a client that types before its size came) are held.
        while size.is_none() && early.len() < 16 {
            match tokio::time::timeout_at(deadline, frames.recv()).await {
                Ok(Some(f)) => {
                    if f.0 == RESIZE {
                        size = stream::terminal_sizes(&f.1).0.last().copied();
                    }
                    early.push_back(f);
                }
                _ => break,
            }
        }
    }
    let started = match start(&target, &command, stdin, tty, size) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot exec {command:?} in the container: {e}");
            stream::write(&mut wr, ERROR, &stream::failure_status(&msg)).await?;
            return wr.shutdown().await;
        }
    };
    let Started {
        mut child,
        input,
        outputs,
        pty,
    } = started;
    let pgid = child.id() as i32;
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    for (channel, f) in outputs {
        let tx = out_tx.clone();
        std::thread::spawn(move || pump_out(f, channel, tx));
    }
    drop(out_tx);
    let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel::<i32>();
    std::thread::spawn(move || {
        let code = match child.wait() {
            Ok(s) => s.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(9)
            }),
            Err(_) => 255,
        };
        let _ = exit_tx.send(code);
    });
    // Bounded: a command that does not read its input holds the stream back (TCP's flow
    // control reaches the client) instead of piling the input up in the agent.
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    std::thread::spawn(move || pump_in(input, pty, in_rx));

    let reader = async move {
        let mut resize = Vec::new();
        loop {
            let next = match early.pop_front() {
                Some(f) => Some(f),
                None => frames.recv().await,
            };
            let Some((channel, data)) = next else { break };
            let sent = match channel {
                STDIN => in_tx.send(Input::Data(data)).await.map_err(|_| ()),
                CLOSE if data.first() == Some(&STDIN) => {
                    in_tx.send(Input::Close).await.map_err(|_| ())
                }
                RESIZE => {
                    resize.extend_from_slice(&data);
                    let (sizes, used) = stream::terminal_sizes(&resize);
                    resize.drain(..used);
                    if resize.len() > 4096 {
                        resize.clear();
                    }
                    let mut sent = Ok(());
                    for s in sizes {
                        sent = in_tx.send(Input::Resize(s)).await.map_err(|_| ());
                    }
                    sent
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                // The command no longer reads its input.
                std::future::pending::<()>().await;
            }
        }
        std::io::Result::Ok(())
    };
    let writer = async move {
        let mut exited: Option<(i32, tokio::time::Instant)> = None;
        loop {
            let deadline = exited.map(|(_, at)| at + DRAIN);
            tokio::select! {
                frame = out_rx.recv() => match frame {
                    Some((channel, data)) => stream::write(&mut wr, channel, &data).await?,
                    None => break,
                },
                code = &mut exit_rx, if exited.is_none() => {
                    exited = Some((code.unwrap_or(255), tokio::time::Instant::now()));
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => break,
            }
        }
        let code = match exited {
            Some((c, _)) => c,
            None => exit_rx.await.unwrap_or(255),
        };
        stream::write(&mut wr, ERROR, &stream::exit_status(code)).await?;
        wr.shutdown().await
    };
    let result = tokio::select! {
        r = writer => r,
        // The client went away (or broke the protocol): the command ends with it.
        r = reader => r,
    };
    // Whatever is left of the command's session (it leads its own): gone.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    result
}

struct Started {
    child: std::process::Child,
    /// The command's stdin (a pipe or the terminal), if it reads one.
    input: Option<std::fs::File>,
    /// Its outputs and their channels.
    outputs: Vec<(u8, std::fs::File)>,
    /// The terminal's controlling side, for resizes.
    pty: Option<OwnedFd>,
}

/// Starts the command in the container, confined as the container's own process is
/// (`bramble-agent enter`: its namespaces, cgroups, user, capabilities and seccomp filter),
/// in its working directory and with its environment, leading a session of its own (so that
/// it and what it starts can be ended together).
#[allow(unsafe_code)]
fn start(
    target: &ExecTarget,
    command: &[String],
    stdin: bool,
    tty: bool,
    size: Option<stream::TerminalSize>,
) -> std::io::Result<Started> {
    if command.is_empty() {
        return Err(std::io::Error::other("no command"));
    }
    let mut cmd = target.command(command);
    let started = if tty {
        let (master, slave) = container_pty(target.pid)?;
        if let Some(s) = size {
            set_size(master.as_raw_fd(), s);
        }
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        if !target.env.iter().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm");
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Started {
            child,
            input: Some(master.try_clone()?),
            outputs: vec![(STDOUT, master.try_clone()?)],
            pty: Some(OwnedFd::from(master)),
        }
    } else {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let input = child
            .stdin
            .take()
            .map(|s| std::fs::File::from(OwnedFd::from(s)));
        let mut outputs = Vec::new();
        if let Some(o) = child.stdout.take() {
            outputs.push((STDOUT, std::fs::File::from(OwnedFd::from(o))));
        }
        if let Some(e) = child.stderr.take() {
            outputs.push((STDERR, std::fs::File::from(OwnedFd::from(e))));
        }
        Started {
            child,
            input,
            outputs,
            pty: None,
        }
    };
    // The parent's copies of the terminal's other side went with `cmd`.
    drop(cmd);
    Ok(started)
}

/// A terminal from the container's own `/dev/pts` (so that `tty` names it inside), or from
/// the node's when the container has none.
#[allow(unsafe_code)]
fn container_pty(pid: i32) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let root = PathBuf::from(format!("/proc/{pid}/root/dev"));
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(p)
    };
    let inside = open(&root.join("pts/ptmx"))
        .or_else(|_| open(&root.join("ptmx")))
        .and_then(|master| {
            let (mut n, unlock): (libc::c_uint, libc::c_int) = (0, 0);
            // SAFETY: a valid fd and integers that live across the calls.
            let ok = unsafe {
                libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) == 0
                    && libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) == 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            let slave = open(&root.join(format!("pts/{n}")))?;
            Ok((master, slave))
        });
    match inside {
        Ok(p) => Ok(p),
        Err(_) => {
            let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
            Ok((
                std::fs::File::from(pty.master),
                std::fs::File::from(pty.slave),
            ))
        }
    }
}

/// Copies one of the command's outputs to the stream until it ends (a terminal ends with
/// EIO once the command and its children closed it).
fn pump_out(mut f: std::fs::File, channel: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.blocking_send((channel, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Sets a terminal's size (on its controlling side).
#[allow(unsafe_code)]
fn set_size(fd: std::os::fd::RawFd, s: stream::TerminalSize) {
    let ws = libc::winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and a winsize that lives across the call.
    unsafe {
        libc::ioctl(fd, libc::TIOCSWINSZ, &ws);
    }
}

/// Feeds the command's input: data, its end, and the terminal's size.
fn pump_in(mut input: Option<std::fs::File>, pty: Option<OwnedFd>, mut rx: mpsc::Receiver<Input>) {
    while let Some(i) = rx.blocking_recv() {
        match i {
            Input::Data(d) => {
                if let Some(f) = input.as_mut()
                    && f.write_all(&d).is_err()
                {
                    input = None;
                }
            }
            Input::Close => {
                if pty.is_some() {
                    // A terminal's end of input is its EOF character.
                    if let Some(f) = input.as_mut() {
                        let _ = f.write_all(&[4]);
                    }
                } else {
                    input = None;
                }
            }
            Input::Resize(s) => {
                if let Some(p) = &pty {
                    set_size(p.as_raw_fd(), s);
                }
            }
        }
    }
}

/// Connects to `port` on the pod's loopback (inside its network namespace, as the kubelet
/// does) and carries the connection's bytes over the stream.
async fn forward(
    io: Box<dyn Io>,
    netns: Option<PathBuf>,
    port: u16,
    what: &str,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let dialed = tokio::task::spawn_blocking(move || dial_in(netns, port))
        .await
        .map_err(std::io::Error::other)?;
    let tcp = match dialed {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to {what}: failed to connect to localhost:{port} inside the pod's network namespace: {e}"
            );
            stream::write(&mut wr, ERROR, msg.as_bytes()).await?;
            return wr.shutdown().await;
        }
    };
    let (mut trd, mut twr) = tcp.into_split();
    let to_pod = async move {
        while let Some((channel, data)) = stream::read(&mut rd).await? {
            match channel {
                STDIN => twr.write_all(&data).await?,
                CLOSE => break,
                _ => {}
            }
        }
        twr.shutdown().await
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = trd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stream::write(&mut wr, STDOUT, &buf[..n]).await?;
        }
        stream::write(&mut wr, CLOSE, &[STDOUT]).await?;
        wr.shutdown().await
    };
    // The pod's side may close first and the client still write, or the other way round;
    // an error on either side ends both.
    tokio::try_join!(to_pod, from_pod).map(|_| ())
}

/// A connection to 127.0.0.1:`port` made from inside `netns` (a thread of its own joins
/// it; the socket stays in that namespace).
fn dial_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
        }
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), CONNECT_TIMEOUT)
    })
    .join()
    .map_err(|_| std::io::Error::other("the dialing thread panicked"))??;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(s)
}
