//! The API server's listener: a cap on open connections (one more is answered 503 and
//! closed, so a flood of sockets cannot starve the process of file descriptors or make
//! `/healthz` wait), a deadline for a new connection's first request (an idle socket that
//! never speaks is closed), and accept errors backed off and logged once per 10 s instead of
//! spinning. With TLS (the default), the handshake runs on the connection's own task, never
//! in the accept loop, and counts against the first-request deadline; a plain HTTP request
//! sent to the TLS port is answered 400 in plain text, as Go's servers do, and closed.

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
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// What a connection over the cap is told before it is closed.
const BUSY: &str = "too many connections; try again later\n";

/// What a plain HTTP request sent to the TLS port is told.
const PLAIN_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server: use https://\n";

/// A listener with a connection cap and a first-request deadline, serving TLS when given
/// an acceptor.
pub struct Guarded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    first_request: Duration,
    tls: Option<TlsAcceptor>,
    log: LogLimiter,
}

impl Guarded {
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        first_request: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Guarded {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            first_request,
            tls: tls.map(TlsAcceptor::from),
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
                    let inner = match &self.tls {
                        Some(acceptor) => Stream::Sniffing(acceptor.clone(), Some(stream)),
                        None => Stream::Plain(stream),
                    };
                    return (
                        Conn {
                            inner,
                            _permit: permit,
                            first_request: Some(deadline),
                            tail: HeadEnd::default(),
                        },
                        addr,
                    );
                }
                Err(_) => {
                    if self.log.due("busy", Instant::now()) {
                        tracing::warn!(%addr, "too many API connections: answering 503 (logged once per 10s)");
                    }
                    tokio::spawn(refuse(stream, self.tls.clone()));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers 503 (over TLS when the port speaks it) and closes, within a second whatever the
/// client does.
async fn refuse(stream: TcpStream, tls: Option<TlsAcceptor>) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match tls {
            Some(acceptor) => answer_and_close(acceptor.accept(stream).await?, &response).await,
            None => answer_and_close(stream, &response).await,
        }
    })
    .await;
}

async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    response: &str,
) -> io::Result<()> {
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Read what the client sent, so that closing does not reset the connection before it
    // has read the answer.
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A connection's transport.
enum Stream {
    Plain(TcpStream),
    /// TLS expected: waiting for the first byte, to tell a handshake from a plain request.
    Sniffing(TlsAcceptor, Option<TcpStream>),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl Stream {
    /// Drives the TLS set-up (sniff, then handshake) until the stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                Stream::Plain(_) | Stream::Tls(_) => return Poll::Ready(Ok(())),
                Stream::Sniffing(acceptor, tcp) => {
                    let Some(t) = tcp.as_mut() else {
                        return Poll::Ready(Err(io::Error::other("connection already failed")));
                    };
                    let mut first = [0u8; 1];
                    let mut buf = ReadBuf::new(&mut first);
                    match t.poll_peek(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        Poll::Ready(Ok(_)) if first[0] != TLS_HANDSHAKE => {
                            // A plain request: say so in its own language (the answer fits a
                            // fresh socket's send buffer), then close.
                            let _ = t.try_write(PLAIN_TO_TLS);
                            *tcp = None;
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "plain HTTP on the TLS port",
                            )));
                        }
                        Poll::Ready(Ok(_)) => {
                            let Some(t) = tcp.take() else {
                                return Poll::Ready(Err(io::Error::other("no connection")));
                            };
                            *self = Stream::Handshaking(Box::new(acceptor.accept(t)));
                        }
                    }
                }
                Stream::Handshaking(accept) => match Pin::new(accept.as_mut()).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(s)) => *self = Stream::Tls(Box::new(s)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                },
            }
        }
    }

    fn io(&mut self) -> Option<Pin<&mut dyn AsyncReadWrite>> {
        match self {
            Stream::Plain(t) => Some(Pin::new(t)),
            Stream::Tls(t) => Some(Pin::new(t.as_mut())),
            _ => None,
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// Polls `f` on the stream once its TLS set-up is done.
fn with_io<R>(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    f: impl FnOnce(Pin<&mut dyn AsyncReadWrite>, &mut Context<'_>) -> Poll<io::Result<R>>,
) -> Poll<io::Result<R>> {
    match stream.poll_ready(cx) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) => {}
    }
    match stream.io() {
        Some(io) => f(io, cx),
        None => Poll::Ready(Err(io::Error::other("TLS set-up unfinished"))),
    }
}

/// An accepted connection: holds its place under the cap until it is dropped, and fails
/// a read if its first request's head (through the blank line that ends it) has not arrived
/// before the deadline: an idle socket, and one that trickles its headers a byte at a time
/// (slowloris), is closed.
pub struct Conn {
    inner: Stream,
    _permit: OwnedSemaphorePermit,
    /// Until the first request's head is complete.
    first_request: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last bytes read, to find the head's end across reads.
    tail: HeadEnd,
}

/// Finds the end of an HTTP/1 request head (`\r\n\r\n`) in bytes that come in pieces.
#[derive(Debug, Default, Clone, Copy)]
struct HeadEnd {
    /// How much of `\r\n\r\n` the bytes so far end with.
    matched: usize,
}

impl HeadEnd {
    /// Whether the head ends within `bytes` (which follow the bytes seen before).
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return true;
            }
        }
        false
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match with_io(&mut this.inner, cx, |io, cx| io.poll_read(cx, buf)) {
            Poll::Ready(r) => {
                if this.first_request.is_some() && this.tail.feed(&buf.filled()[before..]) {
                    this.first_request = None;
                }
                if let Some(deadline) = this.first_request.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the first request's head did not arrive before the deadline",
                    )));
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
        with_io(&mut self.inner, cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with_io(&mut self.inner, cx, |io, cx| {
            io.poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(t) => t.is_write_vectored(),
            Stream::Tls(t) => t.is_write_vectored(),
            _ => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io(&mut self.inner, cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner {
            // Nothing was set up: nothing to say goodbye to.
            Stream::Sniffing(..) | Stream::Handshaking(_) => Poll::Ready(Ok(())),
            _ => with_io(&mut self.inner, cx, |io, cx| io.poll_shutdown(cx)),
        }
    }
}

/// The address a request came from, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Guarded>) -> Self {
        Peer(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::HeadEnd;

    #[test]
    fn the_end_of_a_head_is_found_across_pieces() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let mut h = HeadEnd::default();
            let (a, b) = head.split_at(split);
            let found = h.feed(a) || h.feed(b);
            assert!(found, "split at {split}");
        }
        let mut h = HeadEnd::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!h.feed(b"\r"));
        assert!(h.feed(b"\n"));
        let mut odd = HeadEnd::default();
        assert!(!odd.feed(b"a\r\n\r\r\nb\n\n"));
        assert!(odd.feed(b"\r\n\r\r\n\r\n"));
    }
}
