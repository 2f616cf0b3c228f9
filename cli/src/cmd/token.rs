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
            description,
        } => {
            let mut body = json!({ "ttlSeconds": ttl_seconds(ttl)? });
            if let Some(n) = uses {
                if *n == 0 {
                    bail!("--uses: must be at least 1");
                }
                body["uses"] = json!(n);
            }
            if !description.is_empty() {
                body["description"] = json!(description);
            }
            let v = client
                .post_json("/bramble/v1/tokens", &body)?
                .ok()?
                .json()?;
            println!("{}", v["token"].as_str().unwrap_or(""));
        }
        TokenCommand::List => {
            let v = client.get("/bramble/v1/tokens")?.ok()?.json()?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            let s = |k: &str| {
                                t.get(k).and_then(Value::as_str).unwrap_or("").to_string()
                            };
                            let expires = t
                                .get("expires")
                                .and_then(Value::as_str)
                                .unwrap_or("never")
                                .to_string();
                            let uses = t
                                .get("usesLeft")
                                .and_then(Value::as_u64)
                                .map_or_else(|| "any".to_string(), |n| n.to_string());
                            vec![s("token"), s("created"), expires, uses, s("description")]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!(
                "{}",
                table::print(
                    Some(&["TOKEN", "CREATED", "EXPIRES", "USES LEFT", "DESCRIPTION"]),
                    &rows
                )
            );
        }
        TokenCommand::Delete { tokens } => {
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
fn percent(s: &str) -> String {
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
