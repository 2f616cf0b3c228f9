//! `client.yaml`: where the CLI finds the master and its token. The master writes it next to
//! its data; `bramble` reads it (or `~/.bramble/config`, the same format).

use serde::{Deserialize, Serialize};

/// The client config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConfig {
    /// The API's URL, e.g. `https://127.0.0.1:6443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster CA the server's certificate must chain to (PEM), as kubeconfig's field
    /// of the same name (there base64 of the PEM, here the PEM itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
}

impl ClientConfig {
    /// The file's text, with a comment saying who wrote it.
    pub fn render(&self, writer: &str) -> String {
        // A struct of optional strings always serializes.
        let body = serde_norway::to_string(self).unwrap_or_default();
        format!("# Written by {writer}; read by `bramble`.\n{body}")
    }

    /// The same connection as a kubeconfig (for kubectl and the Kubernetes client
    /// libraries): one cluster, one user with the bearer token, one context, current.
    /// `insecure` skips the server's certificate check (no CA to give).
    pub fn kubeconfig(&self, name: &str, user: &str, insecure: bool) -> String {
        use base64::Engine;
        let mut cluster = serde_json::json!({"server": self.server.clone().unwrap_or_default()});
        if let Some(ca) = &self.certificate_authority_data {
            cluster["certificate-authority-data"] =
                base64::engine::general_purpose::STANDARD.encode(ca).into();
        } else if insecure {
            cluster["insecure-skip-tls-verify"] = true.into();
        }
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": cluster}],
            "users": [{"name": user, "user": {"token": self.token.clone().unwrap_or_default()}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
        });
        serde_norway::to_string(&config).unwrap_or_default()
    }

    /// Parses the file's text (an empty file is an empty config).
    pub fn parse(text: &str) -> Result<ClientConfig, serde_norway::Error> {
        Ok(serde_norway::from_str::<Option<ClientConfig>>(text)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_master_writes_the_cli_reads() {
        let c = ClientConfig {
            server: Some("https://[::1]:6443".into()),
            token: Some("0a1b: #not a comment".into()),
            certificate_authority_data: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
        };
        let text = c.render("bramble-master");
        assert!(text.starts_with("# Written by bramble-master"), "{text}");
        assert_eq!(ClientConfig::parse(&text).unwrap(), c);
        assert_eq!(ClientConfig::parse("").unwrap(), ClientConfig::default());
        assert!(ClientConfig::parse("server: x\nsurprise: 1\n").is_err());
        // The kubeconfig carries the same server, token and CA (base64 of the PEM).
        let k: serde_json::Value =
            serde_norway::from_str(&c.kubeconfig("bramble", "admin", false)).unwrap();
        assert_eq!(k["current-context"], "bramble");
        assert_eq!(k["clusters"][0]["cluster"]["server"], "https://[::1]:6443");
        assert_eq!(k["users"][0]["user"]["token"], "0a1b: #not a comment");
        assert_eq!(k["contexts"][0]["context"]["user"], "admin");
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(
                k["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(ca, c.certificate_authority_data.unwrap().as_bytes());
    }
}
