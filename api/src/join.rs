//! The join token's text: `B10<sha256 of the cluster CA, 64 hex digits>::<secret>`, in the
//! spirit of k3s's `K10<hash>::…` and kubeadm's `--discovery-token-ca-cert-hash`. The hash
//! lets a new board verify the master on first contact with no CA file and no trust on
//! first use; the secret is what the master checks.

/// The prefix of a token that pins the CA.
pub const PREFIX: &str = "B10";

/// A join token, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA certificate's SHA-256 (lower-case hex), when the token pins it.
    pub ca_hash: Option<String>,
    /// What the master checks.
    pub secret: String,
}

impl JoinToken {
    /// Parses a token: a pinned one (`B10<hash>::<secret>`) or a bare secret.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the join token is empty".into());
        }
        let Some((head, secret)) = text.split_once("::") else {
            return Ok(JoinToken {
                ca_hash: None,
                secret: text.to_string(),
            });
        };
        let hash = head.strip_prefix(PREFIX).ok_or_else(|| {
            format!("the join token does not start with {PREFIX}<CA hash>:: (as `bramble token list` prints it)")
        })?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the join token's CA hash must be 64 hex digits (a SHA-256), not {} characters",
                hash.len()
            ));
        }
        if secret.is_empty() {
            return Err("the join token has a CA hash but no secret after `::`".into());
        }
        Ok(JoinToken {
            ca_hash: Some(hash.to_ascii_lowercase()),
            secret: secret.to_string(),
        })
    }

    /// The token's text.
    pub fn render(&self) -> String {
        match &self.ca_hash {
            Some(h) => format!("{PREFIX}{h}::{}", self.secret),
            None => self.secret.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_render() {
        let h = "ab".repeat(32);
        let t = JoinToken::parse(&format!("B10{h}::s3cret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(h.as_str()));
        assert_eq!(t.secret, "s3cret");
        assert_eq!(t.render(), format!("B10{h}::s3cret"));
        let bare = JoinToken::parse("s3cret").unwrap();
        assert_eq!(bare.ca_hash, None);
        assert_eq!(bare.render(), "s3cret");
        for bad in [
            "",
            "K10abc::x",
            "B10abc::x",
            &format!("B10{h}::"),
            &format!("B10{}::x", "zz".repeat(32)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
