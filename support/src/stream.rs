//! The framing of a stream to a pod (exec, attach, port-forward) between the master and the
//! agent, and between `bramble` and the master: the agent opens the connection back to the
//! master's API when the master asks it to over MQTT (a board behind NAT or a firewall needs no
//! inbound port), the master upgrades it to this protocol ([`UPGRADE`]) and splices it to the
//! client's stream (Kubernetes' websocket channels or SPDY streams, or `bramble`'s own).
//!
//! A frame is a channel byte, a big-endian `u32` length and that many bytes. The channels
//! are Kubernetes' remote command channels: [`STDIN`], [`STDOUT`], [`STDERR`], [`ERROR`] (the
//! end: a `metav1.Status` as JSON for exec, a message for port-forward), [`RESIZE`] (a
//! `{"Width":W,"Height":H}` object) and [`CLOSE`] (its one byte names the channel that ended:
//! stdin's end, or a forwarded connection's write side). A port-forward carries its bytes on
//! [`STDIN`] (to the pod) and [`STDOUT`] (from it). Flow control is TCP's: a side that
//! cannot write stops reading.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HTTP `Upgrade` token of this protocol.
pub const UPGRADE: &str = "bramble-stream/1";
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;
/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 << 10;

/// A frame's header and bytes, ready to write.
pub fn encode(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + data.len());
    b.push(channel);
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Writes `data` on `channel`, split into frames of at most [`MAX_FRAME`] bytes.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    channel: u8,
    data: &[u8],
) -> std::io::Result<()> {
    if data.is_empty() {
        w.write_all(&encode(channel, data)).await?;
    }
    for chunk in data.chunks(MAX_FRAME) {
        w.write_all(&encode(channel, chunk)).await?;
    }
    w.flush().await
}

/// Reads one frame; None at a clean end of the stream (between frames). A frame larger
/// than [`MAX_FRAME`] is an error: the peer is broken or hostile.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a stream frame of {len} bytes (the limit is {MAX_FRAME})"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some((head[0], data)))
}

/// A terminal size from a [`RESIZE`] frame (Kubernetes' `TerminalSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The sizes in a resize channel's bytes (a sequence of JSON objects, as kubectl writes
/// them), and how many bytes they used; an unreadable object ends the sequence.
pub fn terminal_sizes(bytes: &[u8]) -> (Vec<TerminalSize>, usize) {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<TerminalSize>();
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(Ok(s)) = it.next() {
        out.push(s);
        used = it.byte_offset();
    }
    (out, used)
}

/// The `metav1.Status` that ends an exec: Success, or the exit code as Kubernetes reports
/// it (kubectl exits with that code).
pub fn exit_status(code: i32) -> Vec<u8> {
    let v = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    v.to_string().into_bytes()
}

/// The `metav1.Status` of an exec that could not run.
pub fn failure_status(message: &str) -> Vec<u8> {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
    .to_string()
    .into_bytes()
}

/// The exit code a final Status carries: 0 for Success, the `ExitCode` cause of a
/// non-zero exit, None for another failure.
pub fn exit_code_of(status: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v["status"] == "Success" {
        return Some(0);
    }
    v["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_large_data_is_split() {
        let mut buf = Vec::new();
        write(&mut buf, STDOUT, b"hello").await.unwrap();
        write(&mut buf, STDIN, &vec![7u8; MAX_FRAME + 10])
            .await
            .unwrap();
        write(&mut buf, CLOSE, &[STDIN]).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read(&mut r).await.unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        let (c, d) = read(&mut r).await.unwrap().unwrap();
        assert_eq!((c, d.len()), (STDIN, MAX_FRAME));
        let (c, d) = read(&mut r).await.unwrap().unwrap();
        assert_eq!((c, d.len()), (STDIN, 10));
        assert_eq!(read(&mut r).await.unwrap(), Some((CLOSE, vec![STDIN])));
        assert_eq!(read(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_huge_or_cut_frame_is_an_error() {
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read(&mut &huge[..]).await.is_err());
        let cut = encode(STDOUT, b"abcdef");
        assert!(read(&mut &cut[..8]).await.is_err());
        assert!(read(&mut &cut[..3]).await.is_err());
    }

    #[test]
    fn resize_objects_are_read_in_sequence_and_a_partial_one_waits() {
        let b = br#"{"Width":80,"Height":24}{"Width":100,"Height":40}{"Wid"#;
        let (sizes, used) = terminal_sizes(b);
        assert_eq!(
            sizes,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert_eq!(&b[used..], br#"{"Wid"#);
        // Hostile sizes do not parse (out of u16) and end the sequence.
        assert_eq!(
            terminal_sizes(br#"{"Width":99999999,"Height":1}"#).0,
            vec![]
        );
    }

    #[test]
    fn exit_statuses_carry_the_code() {
        assert_eq!(exit_code_of(&exit_status(0)), Some(0));
        assert_eq!(exit_code_of(&exit_status(3)), Some(3));
        assert_eq!(exit_code_of(&failure_status("no such pod")), None);
        assert_eq!(exit_code_of(b"not json"), None);
    }
}
