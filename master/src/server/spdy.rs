//! SPDY/3.1 as kubectl speaks it for `exec`, `attach` and `port-forward` (every kubectl
//! before 1.30 for exec, and every kubectl for port-forward: newer ones fall back to it when
//! the server does not take their websocket). Only the server side of what Kubernetes' streams
//! use: the client opens streams (SYN_STREAM, headers naming the stream's type), the server
//! answers each (SYN_REPLY) and both send data frames, a FIN ending one direction; PING is
//! echoed; RST_STREAM and GOAWAY end streams or the session. No server push, no priorities,
//! no flow-control windows (the Go implementation kubectl uses sends none).
//!
//! Header blocks are zlib streams that last the connection, the client's compressed against
//! SPDY/3's preset dictionary ([`dictionary`]): they are inflated with miniz_oxide over a
//! window that starts with the dictionary. Ours are written as stored deflate blocks, which
//! any inflater reads without a dictionary.
//!
//! Bounds: a frame of at most [`MAX_FRAME`] bytes, a header block of at most
//! [`MAX_HEADERS`] bytes inflated and [`MAX_HEADER_PAIRS`] pairs (past any of them the
//! session ends); sessions reset streams past [`MAX_STREAMS`] open at once.

use std::collections::HashMap;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub const MAX_FRAME: usize = 1 << 20;
pub const MAX_HEADERS: usize = 64 << 10;
pub const MAX_HEADER_PAIRS: usize = 64;
pub const MAX_STREAMS: usize = 256;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// SPDY/3's header dictionary: its words, each with a big-endian `u32` length before it,
/// then a tail of common values (the protocol's constant; 1,423 bytes).
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// The client's header blocks: one zlib stream for the connection, with the dictionary.
struct Inflater {
    state: Box<DecompressorOxide>,
    /// The deflate window (a ring), primed with the dictionary.
    window: Vec<u8>,
    pos: usize,
    /// The zlib header (2 bytes, then 4 of dictionary id) not yet read.
    header_left: usize,
    dictionary_id: u32,
}

const WINDOW: usize = 32 << 10;

impl Inflater {
    fn new() -> Inflater {
        let dict = dictionary();
        let mut window = vec![0u8; WINDOW];
        window[..dict.len()].copy_from_slice(&dict);
        Inflater {
            state: Box::default(),
            window,
            pos: dict.len(),
            header_left: 6,
            dictionary_id: adler32(&dict),
        }
    }

    /// Inflates one frame's header block (the compressor flushed at its end).
    fn inflate(&mut self, mut input: &[u8]) -> std::io::Result<Vec<u8>> {
        if self.header_left > 0 {
            let take = self.header_left.min(input.len());
            let start = 6 - self.header_left;
            let head = &input[..take];
            // CMF/FLG must say deflate with a preset dictionary, and the id must be ours.
            for (i, &b) in head.iter().enumerate() {
                let at = start + i;
                if at == 0 && b & 0x0f != 8 {
                    return Err(invalid("a header block that is not deflate"));
                }
                if at == 1 && b & 0x20 == 0 {
                    return Err(invalid("a header block without SPDY's dictionary"));
                }
                if at >= 2 && b != self.dictionary_id.to_be_bytes()[at - 2] {
                    return Err(invalid("a header block compressed with another dictionary"));
                }
            }
            self.header_left -= take;
            input = &input[take..];
        }
        let mut out = Vec::new();
        loop {
            let (status, used, wrote) = decompress(
                &mut self.state,
                input,
                &mut self.window,
                self.pos,
                inflate_flags::TINFL_FLAG_HAS_MORE_INPUT,
            );
            out.extend_from_slice(&self.window[self.pos..self.pos + wrote]);
            self.pos = (self.pos + wrote) & (WINDOW - 1);
            input = &input[used..];
            if out.len() > MAX_HEADERS {
                return Err(invalid("a header block too large"));
            }
            match status {
                TINFLStatus::HasMoreOutput => continue,
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if input.is_empty() => {
                    return Ok(out);
                }
                TINFLStatus::NeedsMoreInput if used > 0 || wrote > 0 => continue,
                s => return Err(invalid(format!("a header block does not inflate: {s:?}"))),
            }
        }
    }
}

/// Our header blocks: stored deflate blocks in one zlib stream (no dictionary needed to
/// read them).
struct Deflater {
    started: bool,
}

impl Deflater {
    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 8);
        if !self.started {
            self.started = true;
            // Deflate, 32 KiB window, no dictionary, check bits.
            out.extend_from_slice(&[0x78, 0x01]);
        }
        // A non-final stored block (header bits 000, padded to the byte).
        out.push(0);
        let len = raw.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(&raw);
        // An empty stored block, as a sync flush ends: Go's inflater hands out a stored
        // block's bytes only when the next block starts, and must not read past the frame.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }
}

fn parse_headers(block: &[u8]) -> std::io::Result<HashMap<String, String>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        let s = block
            .get(at..at.checked_add(n).ok_or_else(|| invalid("header length"))?)
            .ok_or_else(|| invalid("a header block cut short"))?;
        at += n;
        Ok(s)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let n = u32_of(take(4)?);
    if n > MAX_HEADER_PAIRS {
        return Err(invalid(format!("{n} headers in one block")));
    }
    let mut out = HashMap::new();
    for _ in 0..n {
        let len = u32_of(take(4)?);
        let k = String::from_utf8_lossy(take(len)?).to_ascii_lowercase();
        let len = u32_of(take(4)?);
        let v = String::from_utf8_lossy(take(len)?).to_string();
        out.insert(k, v);
    }
    Ok(out)
}

/// What the client did.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A new stream and its headers (lower-case names).
    Open {
        id: u32,
        headers: HashMap<String, String>,
    },
    Data {
        id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    /// The client reset a stream.
    Reset {
        id: u32,
    },
}

/// What the server sends.
#[derive(Debug)]
pub enum Out {
    Reply(u32),
    Data { id: u32, data: Vec<u8>, fin: bool },
    Ping(u32),
    Reset(u32),
}

/// Reads the client's frames; answers its pings through the writer.
pub struct Reader<R> {
    r: R,
    inflater: Inflater,
    out: mpsc::Sender<Out>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R, out: mpsc::Sender<Out>) -> Self {
        Reader {
            r,
            inflater: Inflater::new(),
            out,
        }
    }

    /// The next stream event; None when the client ended the session (GOAWAY, or the
    /// connection closed). A frame that breaks the protocol or a bound is an error.
    pub async fn next(&mut self) -> std::io::Result<Option<Event>> {
        loop {
            let mut head = [0u8; 8];
            match self.r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            if len > MAX_FRAME {
                return Err(invalid(format!("a frame of {len} bytes")));
            }
            let mut body = vec![0u8; len];
            self.r.read_exact(&mut body).await?;
            if head[0] & 0x80 == 0 {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
                return Ok(Some(Event::Data {
                    id,
                    data: body,
                    fin: flags & FLAG_FIN != 0,
                }));
            }
            let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
            if version != VERSION {
                return Err(invalid(format!("SPDY version {version}")));
            }
            let id_at = |i: usize| -> std::io::Result<u32> {
                body.get(i..i + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
                    .ok_or_else(|| invalid("a control frame cut short"))
            };
            match u16::from_be_bytes([head[2], head[3]]) {
                SYN_STREAM => {
                    let id = id_at(0)?;
                    if body.len() < 10 {
                        return Err(invalid("a SYN_STREAM cut short"));
                    }
                    let block = self.inflater.inflate(&body[10..])?;
                    let headers = parse_headers(&block)?;
                    return Ok(Some(Event::Open { id, headers }));
                }
                RST_STREAM => return Ok(Some(Event::Reset { id: id_at(0)? })),
                PING => {
                    let _ = self.out.send(Out::Ping(id_at(0)?)).await;
                }
                GOAWAY => return Ok(None),
                // SETTINGS, WINDOW_UPDATE, HEADERS, NOOP: nothing to do.
                _ => {}
            }
        }
    }
}

/// Writes what the session sends, in order, until every sender is gone; then GOAWAY.
pub async fn write_all<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
) -> std::io::Result<()> {
    let mut deflater = Deflater { started: false };
    let control = |kind: u16, flags: u8, body: &[u8]| {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(body);
        f
    };
    while let Some(out) = rx.recv().await {
        let frame = match out {
            Out::Reply(id) => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&deflater.block(&[]));
                control(SYN_REPLY, 0, &body)
            }
            Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
            Out::Reset(id) => {
                let mut body = id.to_be_bytes().to_vec();
                // CANCEL
                body.extend_from_slice(&5u32.to_be_bytes());
                control(RST_STREAM, 0, &body)
            }
            Out::Data { id, data, fin } => {
                let mut f = Vec::with_capacity(8 + data.len());
                f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                f.push(if fin { FLAG_FIN } else { 0 });
                f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                f.extend_from_slice(&data);
                f
            }
        };
        w.write_all(&frame).await?;
        if rx.is_empty() {
            w.flush().await?;
        }
    }
    let mut body = 0u32.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    let _ = w.write_all(&control(GOAWAY, 0, &body)).await;
    let _ = w.flush().await;
    w.shutdown().await
}

/// Sends `data` on stream `id` in frames the client takes.
pub async fn send(out: &mpsc::Sender<Out>, id: u32, data: &[u8], fin: bool) -> bool {
    for chunk in data.chunks(32 << 10) {
        if out
            .send(Out::Data {
                id,
                data: chunk.to_vec(),
                fin: false,
            })
            .await
            .is_err()
        {
            return false;
        }
    }
    if fin {
        return out
            .send(Out::Data {
                id,
                data: Vec::new(),
                fin: true,
            })
            .await
            .is_ok();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    /// Deflates with a dictionary as a zlib writer does (fixed Huffman codes with
    /// back-references into the dictionary would need a compressor; stored blocks with the
    /// FDICT header exercise the header path, and literal-only data the window).
    fn zlib_with_dict_stored(raw: &[u8]) -> Vec<u8> {
        let id = adler32(&dictionary());
        // CMF 0x78, FLG with FDICT set and the check bits right.
        let cmf = 0x78u16;
        let mut flg = 0x20u16;
        flg += 31 - ((cmf << 8) | flg) % 31;
        let mut out = vec![cmf as u8, flg as u8];
        out.extend_from_slice(&id.to_be_bytes());
        out.push(0);
        let len = raw.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(raw);
        out
    }

    #[test]
    fn header_blocks_round_trip_through_our_deflater_and_the_inflater() {
        let mut d = Deflater { started: false };
        let first = d.block(&[("streamtype", "error"), ("port", "8080")]);
        let second = d.block(&[("streamtype", "data")]);
        // Our blocks carry no dictionary: prime an inflater that skips the check.
        let mut i = Inflater::new();
        i.header_left = 0;
        let h = parse_headers(&i.inflate(&first[2..]).unwrap()).unwrap();
        assert_eq!(h["streamtype"], "error");
        assert_eq!(h["port"], "8080");
        let h = parse_headers(&i.inflate(&second).unwrap()).unwrap();
        assert_eq!(h["streamtype"], "data");
    }

    #[test]
    fn a_block_with_the_dictionary_header_is_read_and_another_dictionary_refused() {
        let mut raw = 1u32.to_be_bytes().to_vec();
        for s in ["streamtype", "stdout"] {
            raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let block = zlib_with_dict_stored(&raw);
        let mut i = Inflater::new();
        let h = parse_headers(&i.inflate(&block).unwrap()).unwrap();
        assert_eq!(h["streamtype"], "stdout");
        let mut other = block.clone();
        other[5] ^= 1;
        assert!(Inflater::new().inflate(&other).is_err());
    }

    #[test]
    fn hostile_header_blocks_are_errors() {
        // Too many pairs, lengths past the end, an overflowing length.
        assert!(parse_headers(&1000u32.to_be_bytes()).is_err());
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_headers(&b).is_err());
        assert!(parse_headers(&[0, 0]).is_err());
        // Garbage that is not deflate.
        assert!(
            Inflater::new()
                .inflate(&[0x12, 0x34, 0, 0, 0, 0, 9])
                .is_err()
        );
    }

    #[tokio::test]
    async fn frames_are_read_and_pings_echoed_and_bounds_hold() {
        let (tx, mut rx) = mpsc::channel(8);
        // A PING, then a data frame with FIN, then GOAWAY.
        let mut bytes = vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7];
        bytes.extend_from_slice(&[0, 0, 0, 5, FLAG_FIN, 0, 0, 2, b'h', b'i']);
        bytes.extend_from_slice(&[0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut r = Reader::new(&bytes[..], tx.clone());
        assert_eq!(
            r.next().await.unwrap(),
            Some(Event::Data {
                id: 5,
                data: b"hi".to_vec(),
                fin: true
            })
        );
        assert!(matches!(rx.recv().await, Some(Out::Ping(7))));
        assert_eq!(r.next().await.unwrap(), None);
        // A frame past the limit, and another protocol version.
        let huge = [0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(Reader::new(&huge[..], tx.clone()).next().await.is_err());
        let v2 = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(Reader::new(&v2[..], tx).next().await.is_err());
    }
}
