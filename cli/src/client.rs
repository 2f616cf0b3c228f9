//! A small blocking HTTP client for the master's API.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bramble_api::status::Status;
use serde_json::Value;
use ureq::Agent;

use ureq::tls::{RootCerts, TlsConfig};

use crate::config::{Resolved, Trust};

/// Largest response body read into memory.
const MAX_RESPONSE: u64 = 256 << 20;

/// An API response: status code, headers of interest and body.
pub struct Reply {
    pub code: u16,
    pub warnings: Vec<String>,
    pub apply_result: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("the server's answer is not JSON")
    }

    /// Turns a failure into an error with the server's message.
    pub fn ok(self) -> Result<Reply> {
        if (200..300).contains(&self.code) {
            return Ok(self);
        }
        Err(anyhow!(self.error_message()))
    }

    /// The message of a `Status` body, or the raw body.
    pub fn error_message(&self) -> String {
        match serde_json::from_slice::<Status>(&self.body) {
            Ok(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.reason),
            _ => format!(
                "HTTP {}: {}",
                self.code,
                String::from_utf8_lossy(&self.body).trim()
            ),
        }
    }
}

/// The API client.
pub struct Client {
    agent: Agent,
    watch_agent: Agent,
    conn: Resolved,
}

impl Client {
    /// The server, token and trust this client uses.
    pub fn connection(&self) -> &Resolved {
        &self.conn
    }

    /// A client for a resolved server and token.
    pub fn new(conn: Resolved) -> Result<Client> {
        let tls = match &conn.trust {
            Trust::Ca(pem) => {
                let certs = ureq::tls::parse_pem(pem.as_bytes())
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if certs.is_empty() {
                    return Err(anyhow!("the CA holds no PEM certificate"));
                }
                Some(
                    TlsConfig::builder()
                        .root_certs(RootCerts::new_with_certs(&certs))
                        .build(),
                )
            }
            Trust::Nothing => Some(TlsConfig::builder().disable_verification(true).build()),
            Trust::Plain => None,
        };
        let build = |timeout: Option<Duration>| -> Agent {
            let mut b = Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_global(timeout);
            if let Some(tls) = &tls {
                b = b.tls_config(tls.clone());
            }
            b.build().into()
        };
        Ok(Client {
            agent: build(Some(Duration::from_secs(60))),
            watch_agent: build(None),
            conn,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.conn.server)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.conn.token)
    }

    fn finish(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply> {
        let resp =
            r.map_err(|e| anyhow!("cannot reach the master at {}: {e}", self.conn.server))?;
        let code = resp.status().as_u16();
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                // `299 - "text"`: keep the text.
                let t = v.splitn(3, ' ').nth(2).unwrap_or(v);
                t.trim_matches('"')
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\")
            })
            .collect();
        let apply_result = resp
            .headers()
            .get("bramble-apply-result")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .context("reading the answer")?;
        Ok(Reply {
            code,
            warnings,
            apply_result,
            body,
        })
    }

    /// GET a path.
    pub fn get(&self, path: &str) -> Result<Reply> {
        self.finish(
            self.agent
                .get(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )
    }

    /// PATCH with a server-side apply body.
    pub fn apply(&self, path: &str, body: &[u8]) -> Result<Reply> {
        self.finish(
            self.agent
                .patch(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/apply-patch+json")
                .send(body),
        )
    }

    /// DELETE with optional DeleteOptions.
    pub fn delete(&self, path: &str, options: &Value) -> Result<Reply> {
        let body = serde_json::to_vec(options)?;
        self.finish(
            self.agent
                .delete(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .force_send_body()
                .send(&body[..]),
        )
    }

    /// GETs a long-lived response (watch, follow) and returns its body as a reader.
    fn open_stream(&self, path: &str) -> Result<impl std::io::Read + use<>> {
        let resp = self
            .watch_agent
            .get(self.url(path))
            .header("Authorization", self.auth())
            .call()
            .map_err(|e| anyhow!("cannot reach the master at {}: {e}", self.conn.server))?;
        if resp.status().as_u16() != 200 {
            let code = resp.status().as_u16();
            let body = resp.into_body().read_to_vec().unwrap_or_default();
            return Err(anyhow!(
                Reply {
                    code,
                    warnings: vec![],
                    apply_result: None,
                    body
                }
                .error_message()
            ));
        }
        Ok(resp.into_body().into_reader())
    }

    /// PUT a JSON object (an update; a stale resourceVersion is a conflict).
    pub fn put_json(&self, path: &str, body: &Value) -> Result<Reply> {
        let bytes = serde_json::to_vec(body)?;
        self.finish(
            self.agent
                .put(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(&bytes[..]),
        )
    }

    /// POSTs a body streamed from `reader` (an image archive), with no overall timeout.
    pub fn post_stream(&self, path: &str, reader: &mut dyn std::io::Read) -> Result<Reply> {
        self.finish(
            self.watch_agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/x-tar")
                .send(ureq::SendBody::from_reader(reader)),
        )
    }

    /// DELETE with no body.
    pub fn delete_plain(&self, path: &str) -> Result<Reply> {
        self.finish(
            self.agent
                .delete(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )
    }

    /// POST a JSON object.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        let bytes = serde_json::to_vec(body)?;
        self.finish(
            self.agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(&bytes[..]),
        )
    }

    /// Streams a response body to `each` chunk by chunk (for `logs -f`).
    pub fn stream(&self, path: &str, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        use std::io::Read;
        let mut reader = self.open_stream(path)?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = reader.read(&mut buf).context("reading the stream")?;
            if n == 0 {
                return Ok(());
            }
            each(&buf[..n])?;
        }
    }

    /// Streams watch events to `each` until the server ends the stream or `each` says stop.
    pub fn watch(
        &self,
        path: &str,
        mut each: impl FnMut(&str, Value) -> Result<bool>,
    ) -> Result<()> {
        let reader = BufReader::new(self.open_stream(path)?);
        for line in reader.lines() {
            let line = line.context("reading the watch stream")?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).context("a watch event is not JSON")?;
            let t = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let obj = v.get("object").cloned().unwrap_or(Value::Null);
            if t == "ERROR" {
                let msg = obj
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("watch error");
                return Err(anyhow!("watch ended: {msg}"));
            }
            if !each(&t, obj)? {
                break;
            }
        }
        Ok(())
    }
}
