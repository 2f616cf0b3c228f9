//! `bramble token create|list`: join tokens for new nodes.

use anyhow::Result;
use serde_json::Value;

use crate::args::TokenCommand;
use crate::client::Client;
use crate::table;

pub fn run(client: &Client, cmd: &TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create => {
            let v = client.post_empty("/bramble/v1/tokens")?.ok()?.json()?;
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
                            vec![s("token"), s("created"), s("description")]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!(
                "{}",
                table::print(Some(&["TOKEN", "CREATED", "DESCRIPTION"]), &rows)
            );
        }
    }
    Ok(())
}
