//! `bramble token create|list|delete`: join tokens for new nodes.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::args::TokenCommand;
use crate::client::Client;
use crate::table;

/// A `--ttl` in seconds: `0` is never, else a duration such as `1h`, `30m` or `7d`.
fn ttl_seconds(text: &str) -> Result<u64> {
    if text.trim() == "0" {
        return Ok(0);
    }
    let days = text.strip_suffix('d').and_then(|d| d.parse::<u64>().ok());
    let secs = match days {
        Some(d) => d.checked_mul(24 * 3600),
        None => bramble_api::time::parse_duration(text).map(|d| d.as_secs()),
    };
    match secs {
        Some(s) if s > 0 => Ok(s),
        _ => bail!("--ttl: {text:?} is not a duration such as 1h, 30m or 7d (or 0 for never)"),
    }
}

pub fn run(client: &Client, cmd: &TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            ttl,
            uses,
            reusable,
            nodes,
            description,
            user,
            role,
        } => {
            let mut body = json!({});
            if let Some(t) = ttl {
                body["ttlSeconds"] = json!(ttl_seconds(t)?);
            }
            if let Some(n) = uses {
                if *n == 0 {
                    bail!("--uses: must be at least 1 (--reusable for any number)");
                }
                body["uses"] = json!(n);
            }
            if *reusable {
                body["reusable"] = json!(true);
            }
            if let Some(n) = nodes {
                body["nodes"] = json!(n);
            }
            if !description.is_empty() {
                body["description"] = json!(description);
            }
            if let (Some(u), Some(r)) = (user, role) {
                body["user"] = json!(u);
                body["role"] = json!(r);
            }
            let v = client
                .post_json("/bramble/v1/tokens", &body)?
                .ok()?
                .json()?;
            println!("{}", v["token"].as_str().unwrap_or(""));
            eprintln!("(shown once: the master keeps only its hash)");
        }
        TokenCommand::List => {
            let v = client.get("/bramble/v1/tokens")?.ok()?.json()?;
            let text = |o: &Value, k: &str, none: &str| {
                o.get(k).and_then(Value::as_str).unwrap_or(none).to_string()
            };
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            let uses = t
                                .get("usesLeft")
                                .and_then(Value::as_u64)
                                .map_or_else(|| "any".to_string(), |n| n.to_string());
                            vec![
                                text(t, "id", ""),
                                text(t, "created", ""),
                                text(t, "expires", "never"),
                                uses,
                                text(t, "nodes", "any"),
                                text(t, "description", ""),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!(
                "{}",
                table::print(
                    Some(&[
                        "ID",
                        "CREATED",
                        "EXPIRES",
                        "USES LEFT",
                        "NODES",
                        "DESCRIPTION"
                    ]),
                    &rows
                )
            );
            let users: Vec<Vec<String>> = v["users"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|u| {
                            vec![
                                text(u, "user", ""),
                                text(u, "role", ""),
                                text(u, "created", ""),
                                text(u, "expires", "never"),
                                text(u, "lastUsed", "-"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !users.is_empty() {
                println!();
                print!(
                    "{}",
                    table::print(
                        Some(&["USER", "ROLE", "CREATED", "EXPIRES", "LAST USED"]),
                        &users
                    )
                );
            }
        }
        TokenCommand::RevokeNode { nodes } => {
            for n in nodes {
                let v = client
                    .post_json(
                        &format!("/bramble/v1/nodes/{}/revoke", percent(n)),
                        &json!({}),
                    )?
                    .ok()?
                    .json()?;
                println!(
                    "node {n}: credential revoked, {} connection(s) cut",
                    v["connectionsCut"].as_u64().unwrap_or(0)
                );
            }
        }
        TokenCommand::Delete { tokens, user } => {
            if let Some(u) = user {
                client
                    .delete_plain(&format!("/bramble/v1/users/{}", percent(u)))?
                    .ok()?;
                println!("token of user {u} revoked");
            }
            for t in tokens {
                let path = format!("/bramble/v1/tokens/{}", percent(t));
                client.delete_plain(&path)?.ok()?;
                println!("token deleted");
            }
        }
    }
    Ok(())
}

/// Percent-encodes what a path segment cannot carry as is.
pub(crate) fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_seconds("0").unwrap(), 0);
        assert_eq!(ttl_seconds("1h").unwrap(), 3600);
        assert_eq!(ttl_seconds("7d").unwrap(), 7 * 24 * 3600);
        assert!(ttl_seconds("soon").is_err());
        assert!(ttl_seconds("99999999999999999d").is_err());
    }
}
