//! `bramble cordon|uncordon|drain NODE`.

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
