//! `bramble exec [-i] [-t] [-c C] POD -- CMD...` and `bramble port-forward POD
//! [LOCAL:]REMOTE...`: the master's `exec` and `portforward` endpoints, upgraded to Bramble's
//! stream framing (`bramble_support::stream`) and spliced by the master to the connection
//! the pod's agent opens back to it. `exec` exits with the command's exit code.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bramble_api::Kind;
use bramble_support::stream::{self, CLOSE, ERROR, STDERR, STDIN, STDOUT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::args::{ExecArgs, PortForwardArgs};
use crate::client::Client;
use crate::cmd::encode;
use crate::config::{Resolved, Trust};

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// Opens `path` on the master upgraded to the stream protocol; an refusal is the error
/// with the master's message.
async fn upgrade(conn: &Resolved, path: &str) -> Result<Box<dyn Io>> {
    let rest = conn
        .server
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(&conn.server);
    let authority = rest.split('/').next().unwrap_or(rest);
    let https = conn.server.starts_with("https://");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot reach the master at {}", conn.server))?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = match (&conn.trust, https) {
        (Trust::Ca(pem), true) => {
            let config = bramble_support::tls::client_config(pem).map_err(|e| anyhow!(e))?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())?;
            Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {}", conn.server))?,
            )
        }
        (Trust::Nothing, true) => bail!(
            "streams to pods verify the master's certificate: give the cluster CA (client.yaml or --certificate-authority) instead of --insecure-skip-tls-verify"
        ),
        _ => Box::new(tcp),
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: {}\r\nContent-Length: 0\r\n\r\n",
        conn.token,
        stream::UPGRADE
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            bail!("the master's answer has no end");
        }
        head.push(io.read_u8().await.context("reading the master's answer")?);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    if text.starts_with("HTTP/1.1 101") {
        return Ok(io);
    }
    // A refusal: its Status body says why.
    let len = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = vec![0u8; len];
    let _ = io.read_exact(&mut body).await;
    let reply = crate::client::Reply {
        code: text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        warnings: Vec::new(),
        apply_result: None,
        body,
    };
    Err(anyhow!(reply.error_message()))
}

/// `bramble exec`.
pub fn exec(client: &Client, ns_flag: Option<&str>, args: &ExecArgs) -> Result<()> {
    if args.command.is_empty() {
        bail!("give the command after --: bramble exec POD -- COMMAND [ARGS...]");
    }
    let ns = ns_flag.unwrap_or("default");
    let mut path = format!(
        "{}/exec?stdout=true&stderr={}&stdin={}&tty={}",
        Kind::Pod.path(Some(ns), Some(&args.pod)),
        !args.tty,
        args.stdin,
        args.tty
    );
    if let Some(c) = &args.container {
        path.push_str(&format!("&container={}", encode(c)));
    }
    for c in &args.command {
        path.push_str(&format!("&command={}", encode(c)));
    }
    let conn = client.connection().clone();
    let code = runtime()?.block_on(async move {
        let io = upgrade(&conn, &path).await?;
        let (mut rd, mut wr) = tokio::io::split(io);
        if args.stdin {
            // Standard input on a thread of its own (reads block), ended by CLOSE.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = vec![0u8; 32 << 10];
                let mut input = std::io::stdin().lock();
                while let Ok(n) = input.read(&mut buf) {
                    if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(d) = rx.recv().await {
                    if stream::write(&mut wr, STDIN, &d).await.is_err() {
                        return;
                    }
                }
                let _ = stream::write(&mut wr, CLOSE, &[STDIN]).await;
                // Keep the write side open until the command ends.
                std::future::pending::<()>().await;
            });
        }
        while let Some((channel, data)) = stream::read(&mut rd).await? {
            use std::io::Write;
            match channel {
                STDOUT => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                }
                STDERR => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&data)?;
                    err.flush()?;
                }
                ERROR => {
                    return match stream::exit_code_of(&data) {
                        Some(code) => Ok(code),
                        None => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&data).unwrap_or_default();
                            Err(anyhow!(
                                "{}",
                                v["message"]
                                    .as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| String::from_utf8_lossy(&data).into())
                            ))
                        }
                    };
                }
                _ => {}
            }
        }
        Err(anyhow!("the stream ended before the command's exit status"))
    })?;
    if code != 0 {
        // kubectl's message and exit code.
        eprintln!("command terminated with exit code {code}");
        std::process::exit(code.clamp(1, 255));
    }
    Ok(())
}

/// `bramble port-forward POD [LOCAL:]REMOTE...`: each local connection is one stream.
pub fn port_forward(client: &Client, ns_flag: Option<&str>, args: &PortForwardArgs) -> Result<()> {
    let ns = ns_flag.unwrap_or("default").to_string();
    let mut pairs = Vec::new();
    for p in &args.ports {
        let (local, remote) = p.split_once(':').unwrap_or((p, p));
        let remote: u16 = remote
            .parse()
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| anyhow!("{p:?}: the remote port must be a number in 1-65535"))?;
        let local: u16 = if local.is_empty() {
            0
        } else {
            local
                .parse()
                .map_err(|_| anyhow!("{p:?}: the local port must be a number in 0-65535"))?
        };
        pairs.push((local, remote));
    }
    if pairs.is_empty() {
        bail!("give at least one port: bramble port-forward POD [LOCAL:]REMOTE");
    }
    let conn = Arc::new(client.connection().clone());
    let pod = args.pod.clone();
    let address = args.address.clone();
    runtime()?.block_on(async move {
        let mut tasks = Vec::new();
        for (local, remote) in pairs {
            let listener = tokio::net::TcpListener::bind((address.as_str(), local))
                .await
                .with_context(|| format!("cannot listen on {address}:{local}"))?;
            println!("Forwarding from {} -> {remote}", listener.local_addr()?);
            let path = format!(
                "{}/portforward?ports={remote}",
                Kind::Pod.path(Some(&ns), Some(&pod))
            );
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    println!(
                        "Handling connection for {}",
                        listener.local_addr().map(|a| a.port()).unwrap_or(0)
                    );
                    let (conn, path) = (conn.clone(), path.clone());
                    tokio::spawn(async move {
                        if let Err(e) = forward(&conn, &path, tcp).await {
                            eprintln!("error forwarding to port {remote}: {e:#}");
                        }
                    });
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn forward(conn: &Resolved, path: &str, tcp: tokio::net::TcpStream) -> Result<()> {
    let io = upgrade(conn, path).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let (mut trd, mut twr) = tcp.into_split();
    let up = async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = trd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stream::write(&mut wr, STDIN, &buf[..n]).await?;
        }
        stream::write(&mut wr, CLOSE, &[STDIN]).await?;
        std::future::pending::<()>().await;
        Ok::<(), anyhow::Error>(())
    };
    let down = async move {
        while let Some((channel, data)) = stream::read(&mut rd).await? {
            match channel {
                STDOUT => twr.write_all(&data).await?,
                CLOSE => break,
                ERROR => return Err(anyhow!("{}", String::from_utf8_lossy(&data))),
                _ => {}
            }
        }
        twr.shutdown().await?;
        Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
