//! The API server's listener: a cap on open connections (one more is answered 503 and
//! closed, so a flood of sockets cannot starve the process of file descriptors or make
//! `/healthz` wait), a deadline for a new connection's first request (an idle socket that
//! never speaks is closed), and accept errors backed off and logged once per 10 s instead of
//! spinning.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bramble_support::LogLimiter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a connection over the cap is told before it is closed.
const BUSY: &str = "too many connections; try again later\n";

/// A listener with a connection cap and a first-request deadline.
pub struct Guarded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    first_request: Duration,
    log: LogLimiter,
}

impl Guarded {
    pub fn new(inner: TcpListener, max_connections: usize, first_request: Duration) -> Self {
        Guarded {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            first_request,
            log: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

impl axum::serve::Listener for Guarded {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or memory): wait for some to be freed rather
                    // than spin on the error.
                    if self.log.due("accept", Instant::now()) {
                        tracing::warn!(error = %e, "cannot accept an API connection; backing off (logged once per 10s)");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let deadline = Box::pin(tokio::time::sleep(self.first_request));
                    return (
                        Conn {
                            inner: stream,
                            _permit: permit,
                            first_request: Some(deadline),
                        },
                        addr,
                    );
                }
                Err(_) => {
                    if self.log.due("busy", Instant::now()) {
                        tracing::warn!(%addr, "too many API connections: answering 503 (logged once per 10s)");
                    }
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers 503 and closes, within a second whatever the client does.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the connection before
        // it has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// An accepted connection: holds its place under the cap until it is dropped, and fails
/// its first read if no byte arrives before the deadline.
pub struct Conn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte arrives.
    first_request: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.first_request = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let late = this
                    .first_request
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if late {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request before the deadline",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
