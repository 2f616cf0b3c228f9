//! The HTTP client of the master's registry endpoints (`/bramble/v1/images/resolve` and
//! `/bramble/v1/blobs/{digest}` with `Range`), authenticated with this node's credentials:
//! the real [`BlobSource`].

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bramble_api::image::{Image, ImageSpec};

use super::source::{BlobBody, BlobSource, SourceError};
use crate::images::ImageError;
use crate::join;

/// The master this node joined, with this node's credentials.
pub struct MasterSource {
    server: String,
    token: String,
    http: ureq::Agent,
}

impl MasterSource {
    /// The master named by the credentials in `data_dir`; an error for `image` if the node
    /// has not joined one.
    pub fn joined(data_dir: &Path, image: &str) -> Result<MasterSource, ImageError> {
        let creds = join::load(data_dir)
            .ok()
            .flatten()
            .ok_or_else(|| ImageError::Pull {
                image: image.to_string(),
                message: "this node has not joined a master to pull from".into(),
            })?;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)));
        if !creds.ca_pem.is_empty() {
            let tls =
                bramble_support::tls::ureq_tls(&creds.ca_pem).map_err(|e| ImageError::Pull {
                    image: image.to_string(),
                    message: format!("the cluster CA in the node's credentials: {e}"),
                })?;
            config = config.tls_config(tls);
        }
        let http: ureq::Agent = config.build().into();
        Ok(MasterSource {
            server: creds.server.trim_end_matches('/').to_string(),
            token: creds.node_token,
            http,
        })
    }

    fn unreachable(&self, e: ureq::Error) -> SourceError {
        SourceError::Failed(format!("cannot reach the master at {}: {e}", self.server))
    }
}

impl BlobSource for MasterSource {
    fn resolve(&self, reference: &str) -> Result<ImageSpec, SourceError> {
        let url = format!("{}/bramble/v1/images/resolve", self.server);
        let resp = self
            .http
            .get(&url)
            .query("reference", reference)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| SourceError::Failed(format!("reading the master's answer: {e}")))?;
        if code != 200 {
            return Err(SourceError::Failed(api_message(code, &body)));
        }
        let img: Image = serde_json::from_slice(&body)
            .map_err(|e| SourceError::Failed(format!("unreadable Image from the master: {e}")))?;
        Ok(img.spec)
    }

    fn blob(&self, digest: &str, offset: u64) -> Result<BlobBody, SourceError> {
        let url = format!("{}/bramble/v1/blobs/{digest}", self.server);
        let mut req = self
            .http
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token));
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        let code = resp.status().as_u16();
        let mut body = resp.into_body();
        match code {
            206 => Ok(BlobBody::Rest(stream(body))),
            200 => Ok(BlobBody::Whole(stream(body))),
            _ => {
                let body = body
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .unwrap_or_default();
                let message = format!("blob {digest}: {}", api_message(code, &body));
                Err(if code == 416 {
                    SourceError::OffsetPastEnd(message)
                } else {
                    SourceError::Failed(message)
                })
            }
        }
    }
}

/// A blob's body as a reader (blobs are verified by digest, not bounded by size here).
fn stream(body: ureq::Body) -> Box<dyn Read> {
    Box::new(body.into_with_config().limit(u64::MAX).reader())
}

/// The `message` of a Status body, or the code.
fn api_message(code: u16, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the master answered HTTP {code}"))
}
