//! A small DNS client for the tests and the DNS bench (hickory's message codec; the
//! sockets are ours): one question over UDP, the answer's code and records as text.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// An answer: its response code and its answer records' data, as text, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: ResponseCode,
    pub records: Vec<String>,
}

/// The wire form of a query for `name` and `qtype` with `id`.
pub fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    let mut n = Name::from_ascii(name).expect("a DNS name");
    n.set_fqdn(true);
    m.add_query(Query::query(n, qtype));
    m.to_vec().expect("a DNS query encodes")
}

/// Reads an answer to `id`; None when it is not one.
pub fn parse_reply(id: u16, bytes: &[u8]) -> Option<Reply> {
    let m = Message::from_vec(bytes).ok()?;
    if m.id() != id || m.message_type() != MessageType::Response {
        return None;
    }
    let mut records: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
    records.sort();
    Some(Reply {
        code: m.response_code(),
        records,
    })
}

/// Asks `server` over UDP; None when no answer came within `timeout`.
pub fn ask(server: SocketAddr, name: &str, qtype: RecordType, timeout: Duration) -> Option<Reply> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let id = (std::process::id() as u16) ^ (name.len() as u16).rotate_left(7);
    sock.send_to(&query_bytes(id, name, qtype), server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if from == server
            && let Some(r) = parse_reply(id, &buf[..n])
        {
            return Some(r);
        }
    }
    None
}

/// Asks `server` over TCP (two-byte length prefix).
pub fn ask_tcp(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Option<Reply> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&server, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let q = query_bytes(7, name, qtype);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    parse_reply(7, &body)
}

pub use hickory_proto::op::ResponseCode as Code;
pub use hickory_proto::rr::RecordType as Type;
