//! Name and label syntax: DNS-1123 labels and subdomains, DNS-1035 labels, label keys and
//! values, IANA service names. Each check returns the reason in Kubernetes' words.

/// Checks a DNS-1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters, got {}",
            s.len()
        ));
    }
    if !label_chars_ok(s) {
        return Err(format!(
            "{s:?} must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
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
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s)?;
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(format!("{s:?} must start with a lower case letter"));
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters, got {}",
            s.len()
        ));
    }
    if !s.split('.').all(label_chars_ok) {
        return Err(format!(
            "{s:?} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
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
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix of key {s:?}: {e}"))?;
    }
    if !qualified_name_ok(name) {
        return Err(format!(
            "key {s:?}: name part must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_' or '.' with alphanumeric ends.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_name_ok(s) {
        Ok(())
    } else {
        Err(format!(
            "value {s:?} must be at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

/// Checks an IANA service name, the syntax of named ports: at most 15 characters,
/// lowercase alphanumerics and '-', at least one letter, no '--', no '-' at either end.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.len() > 15 {
        return Err(format!(
            "port name {s:?} must be no more than 15 characters"
        ));
    }
    let ok = label_chars_ok(s) && !s.contains("--") && s.bytes().any(|c| c.is_ascii_lowercase());
    if !ok {
        return Err(format!(
            "port name {s:?} must contain lower case alphanumerics or '-', at least one letter, and no '--' or '-' at either end"
        ));
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
}
