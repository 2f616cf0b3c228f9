//! Name and label syntax: DNS-1123 labels and subdomains, DNS-1035 labels, label keys and
//! values, IANA service names. Each check returns the reason in Kubernetes' words.

/// Why a name, label key, label value or port name is malformed (the text is what the API
/// reports after the field path, in Kubernetes' words).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be no more than {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error(
        "{0:?} must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    )]
    Dns1123Label(String),
    #[error("{0:?} must start with a lower case letter")]
    Dns1035Label(String),
    #[error(
        "{0:?} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    )]
    Dns1123Subdomain(String),
    /// The DNS subdomain before the '/' of a label key.
    #[error("prefix of key {key:?}: {source}")]
    KeyPrefix {
        key: String,
        #[source]
        source: Box<NameError>,
    },
    #[error(
        "key {0:?}: name part must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
    )]
    KeyName(String),
    #[error(
        "value {0:?} must be at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
    )]
    LabelValue(String),
    #[error("port name {0:?} must be no more than 15 characters")]
    PortNameTooLong(String),
    #[error(
        "port name {0:?} must contain lower case alphanumerics or '-', at least one letter, and no '--' or '-' at either end"
    )]
    PortName(String),
}

/// Checks a DNS-1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn dns1123_label(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong {
            max: 63,
            len: s.len(),
        });
    }
    if !label_chars_ok(s) {
        return Err(NameError::Dns1123Label(s.to_string()));
    }
    Ok(())
}

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&c| alnum(c) || c == b'-')
}

/// Checks a DNS-1035 label (a DNS-1123 label that starts with a letter), as Service names need.
pub fn dns1035_label(s: &str) -> Result<(), NameError> {
    dns1123_label(s)?;
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(NameError::Dns1035Label(s.to_string()));
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 253 {
        return Err(NameError::TooLong {
            max: 253,
            len: s.len(),
        });
    }
    if !s.split('.').all(label_chars_ok) {
        return Err(NameError::Dns1123Subdomain(s.to_string()));
    }
    Ok(())
}

fn qualified_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && b.len() <= 63
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// Checks a label or annotation key: an optional DNS subdomain prefix and '/', then a name of
/// at most 63 alphanumerics, '-', '_' or '.'.
pub fn label_key(s: &str) -> Result<(), NameError> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| NameError::KeyPrefix {
            key: s.to_string(),
            source: Box::new(e),
        })?;
    }
    if !qualified_name_ok(name) {
        return Err(NameError::KeyName(s.to_string()));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_' or '.' with alphanumeric ends.
pub fn label_value(s: &str) -> Result<(), NameError> {
    if s.is_empty() || qualified_name_ok(s) {
        Ok(())
    } else {
        Err(NameError::LabelValue(s.to_string()))
    }
}

/// Checks an IANA service name, the syntax of named ports: at most 15 characters,
/// lowercase alphanumerics and '-', at least one letter, no '--', no '-' at either end.
pub fn port_name(s: &str) -> Result<(), NameError> {
    if s.len() > 15 {
        return Err(NameError::PortNameTooLong(s.to_string()));
    }
    let ok = label_chars_ok(s) && !s.contains("--") && s.bytes().any(|c| c.is_ascii_lowercase());
    if !ok {
        return Err(NameError::PortName(s.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("Web").is_err());
        assert!(dns1123_label("-web").is_err());
        assert!(dns1123_label("web-").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1035_label("1web").is_err());
        assert!(dns1035_label("web1").is_ok());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("kubernetes.io/arch").is_ok());
        assert!(label_key("Bad_Prefix/x").is_err());
        assert!(label_key("/x").is_err());
        assert!(label_key("a/").is_err());
        assert!(label_key("has space").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("MyApp").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("-x").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn port_names() {
        assert!(port_name("http").is_ok());
        assert!(port_name("http-alt").is_ok());
        assert!(port_name("8080").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("averyveryverylongname").is_err());
    }

    /// The API reports these texts after the field path; clients and tests match on them.
    #[test]
    fn messages_keep_kubernetes_wording() {
        let msg = |r: Result<(), NameError>| r.unwrap_err().to_string();
        assert_eq!(msg(dns1123_label("")), "must not be empty");
        assert_eq!(
            msg(dns1123_label(&"a".repeat(64))),
            "must be no more than 63 characters, got 64"
        );
        assert_eq!(
            msg(label_key("Bad_Prefix/x")),
            "prefix of key \"Bad_Prefix/x\": \"Bad_Prefix\" must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
        assert_eq!(
            msg(dns1035_label("1web")),
            "\"1web\" must start with a lower case letter"
        );
        assert_eq!(
            msg(port_name("averyveryverylongname")),
            "port name \"averyveryverylongname\" must be no more than 15 characters"
        );
    }
}
