//! `bramble cordon|uncordon|drain NODE`, `bramble node approve|reset NODE`.

use anyhow::{Result, bail};
use bramble_api::Kind;
use serde_json::json;

use crate::client::Client;

pub fn cordon(client: &Client, node: &str, on: bool) -> Result<()> {
    let path = Kind::Node.path(None, Some(node));
    for _ in 0..5 {
        let mut n = client.get(&path)?.ok()?.json()?;
        n["spec"]["unschedulable"] = json!(on);
        let r = client.put_json(&path, &n)?;
        if r.code == 409 {
            continue;
        }
        r.ok()?;
        println!("node/{node} {}", if on { "cordoned" } else { "uncordoned" });
        return Ok(());
    }
    bail!("node {node:?} kept changing; try again")
}

pub fn drain(client: &Client, node: &str) -> Result<()> {
    cordon(client, node, true)?;
    let pods = client.get("/api/v1/pods")?.ok()?.json()?;
    let mut evicted = 0;
    for p in pods["items"].as_array().into_iter().flatten() {
        if p["spec"]["nodeName"].as_str() != Some(node) {
            continue;
        }
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let r = client.delete(&Kind::Pod.path(Some(ns), Some(name)), &json!({}))?;
        if r.code < 300 || r.code == 404 {
            println!("evicting pod {ns}/{name}");
            evicted += 1;
        } else {
            eprintln!("error: pod {ns}/{name}: {}", r.error_message());
        }
    }
    println!("node/{node} drained ({evicted} pods)");
    Ok(())
}

/// `bramble node approve|reset NODE`.
pub fn credential(client: &Client, c: &crate::args::NodeCommand) -> Result<()> {
    use crate::args::NodeCommand;
    match c {
        NodeCommand::Approve(a) => {
            let v = client
                .post_json(
                    &format!(
                        "/bramble/v1/nodes/{}/approve",
                        super::token::percent(&a.node)
                    ),
                    &json!({}),
                )?
                .ok()?
                .json()?;
            println!(
                "node/{}: a join token may replace its credential until {}",
                a.node,
                v["until"].as_str().unwrap_or("?")
            );
        }
        NodeCommand::Reset(a) => {
            let v = client
                .post_json(
                    &format!(
                        "/bramble/v1/nodes/{}/revoke",
                        super::token::percent(&a.node)
                    ),
                    &json!({}),
                )?
                .ok()?
                .json()?;
            println!(
                "node/{}: credential revoked, {} connection(s) cut; a board may join under this name",
                a.node,
                v["connectionsCut"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}
